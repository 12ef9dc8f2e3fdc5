// Flush rounds on one file: ROUNDS x pwrite 45 KiB, then
//   mode 1: zeros ahead refilled in the round (as storage/src/stream/mod.rs PREFILL) and fdatasync (as shipped);
//   mode 9: the file zeroed beforehand; the round syncs only its range (sync_file_range WAIT_BEFORE|WRITE|
//           WAIT_AFTER) and flushes the device cache with fdatasync of a clean second file;
//   mode 8: as 9, with the zeros written and fdatasync-ed 16 MiB ahead by a second thread.
// Build: gcc -O2 round-range.c -o round-range -lpthread; run in the data dir: ./round-range MODE
// docs/performance.md, "Session 10".
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#include <stdatomic.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
static int fd; static atomic_long synced_zero; static atomic_long wpos; static atomic_int stop;
static char z[4<<20];
static void* bg(void*a){ long filled=0; while(!stop){ long w=wpos; if(filled < w + (16<<20)){ pwrite(fd,z,4<<20,filled); fdatasync(fd); filled+=4<<20; synced_zero=filled; } else usleep(200);} return 0;}
int main(int c,char**v){ int mode=atoi(v[1]); size_t sz=45*1024; int rounds=4000;
 char*buf=malloc(sz); memset(buf,7,sz);
 unlink("p.dat"); fd=open("p.dat",O_RDWR|O_CREAT,0644);
 int ffd=open("flush.dat",O_RDWR|O_CREAT,0644); write(ffd,"x",1); fsync(ffd);
 if(mode==9){ for(int i=0;i<50;i++) write(fd,z,4<<20); fsync(fd);} else fsync(fd);
 pthread_t th; if(mode==8){ pthread_create(&th,0,bg,0); while(synced_zero < (16<<20)) usleep(100);} 
 off_t w=0, filled=0; double s=now(), mx=0; long waits=0;
 for(int r=0;r<rounds;r++){ double t0=now();
   if(mode==8){ while(synced_zero < w+(long)sz){ waits++; usleep(20);} }
   pwrite(fd,buf,sz,w);
   if(mode==1){ off_t ww=w+sz; off_t ahead=ww<(64<<10)?(64<<10):(ww>(4<<20)?(4<<20):ww); if(filled < ww+ahead/2){ off_t at=filled>ww?filled:ww, to=ww+ahead; pwrite(fd,z,to-at,at); filled=to; } fdatasync(fd);} 
   else { sync_file_range(fd,w,sz,SYNC_FILE_RANGE_WAIT_BEFORE|SYNC_FILE_RANGE_WRITE|SYNC_FILE_RANGE_WAIT_AFTER); fdatasync(ffd);} 
   w+=sz; wpos=w;
   double d=now()-t0; if(d>mx) mx=d; }
 double e=now()-s; stop=1; if(mode==8) pthread_join(th,0);
 printf("mode %d: %.1f us/round, max %.0f us, waits %ld\n",mode,e/rounds,mx,waits); }
