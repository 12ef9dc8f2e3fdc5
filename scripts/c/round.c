// Flush rounds on one file, as the stream flusher does them: ROUNDS x (pwrite 45 KiB + fdatasync), with
// the zeros ahead written in different ways. Build: gcc -O2 round.c -o round; run in the data dir: ./round MODE
// MODE 0: file zeroed and synced beforehand; 1: zeros 64 KiB-4 MiB ahead, refilled in the round that
// uses half (as storage/src/stream/mod.rs PREFILL); 2: as 1, the zeros then sync_file_range-d in the round;
// 3: no zeros (each round extends the file);
// 6: fallocate 4 MiB ahead; 7: fallocate(FALLOC_FL_WRITE_ZEROES) 4 MiB ahead (Linux 6.17+).
// docs/performance.md, "Session 9: what the prefill costs a round".
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>
#include <string.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
// mode 0: file pre-zeroed & synced up front; 1: prefill 2MiB zeros every time half used (as broker); 2: prefill with sync_file_range write+wait of the zeros before data round; 3: no prefill (append extends file)
int main(int c,char**v){ int mode=atoi(v[1]); size_t sz=45*1024; int rounds=4000;
 static char z[4<<20]; char*buf=malloc(sz); memset(buf,7,sz);
 unlink("p.dat"); int fd=open("p.dat",O_RDWR|O_CREAT,0644);
 if(mode==0){ for(int i=0;i<50;i++) write(fd,z,4<<20); fsync(fd);} else fsync(fd);
 off_t w=0, filled=0; double s=now(), mx=0;
 for(int r=0;r<rounds;r++){ double t0=now();
   pwrite(fd,buf,sz,w); w+=sz;
   if(mode==7){ if(filled < w + (2<<20)){ if(fallocate(fd,0x80,filled,4<<20)) {perror("fallocate WRITE_ZEROES"); exit(1);} filled+= (4<<20);} }
   if(mode==6){ if(filled < w + (2<<20)){ fallocate(fd,0,filled,4<<20); filled+= (4<<20);} }
   if(mode==1||mode==2){ off_t ahead=w<(64<<10)?(64<<10):(w>(4<<20)?(4<<20):w); if(filled < w+ahead/2){ off_t at=filled>w?filled:w, to=w+ahead; pwrite(fd,z,to-at,at); if(mode==2) sync_file_range(fd,at,to-at,SYNC_FILE_RANGE_WAIT_BEFORE|SYNC_FILE_RANGE_WRITE|SYNC_FILE_RANGE_WAIT_AFTER); filled=to; } }
   fdatasync(fd); double d=now()-t0; if(d>mx) mx=d; }
 double e=now()-s; printf("mode %d: %.1f us/round, max %.0f us\n",mode,e/rounds,mx); }
