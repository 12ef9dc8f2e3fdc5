// Flush rounds (pwrite 45 KiB + fdatasync) while a second thread zero-fills 16 MiB ahead in 4 MiB steps.
// Build: gcc -O2 -pthread bg-zero.c -o bg-zero; ./bg-zero 4 (zeros then sync_file_range) or 5 (zeros then
// fdatasync). docs/performance.md, "Session 9: what the prefill costs a round".
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
static char z[4<<20]; int fd; int mode; atomic_long w, filled; atomic_int stop;
#define STEP (4L<<20)
#define AHEAD (16L<<20)
void* bg(void*a){ while(!stop){ long f=filled; if(f < w + AHEAD){ pwrite(fd,z,STEP,f); if(mode==4) sync_file_range(fd,f,STEP,SYNC_FILE_RANGE_WRITE|SYNC_FILE_RANGE_WAIT_AFTER); else if(mode==5) fdatasync(fd); filled=f+STEP; } else usleep(200);} return 0;}
int main(int c,char**v){ mode=atoi(v[1]); size_t sz=45*1024; int rounds=8000;
 char*buf=malloc(sz); memset(buf,7,sz);
 unlink("q.dat"); fd=open("q.dat",O_RDWR|O_CREAT,0644); fsync(fd);
 pthread_t t; pthread_create(&t,0,bg,0); while(filled<AHEAD) usleep(100);
 double s=now(), mx=0; int behind=0;
 for(int r=0;r<rounds;r++){ double t0=now();
   if(w+sz>filled) behind++;
   pwrite(fd,buf,sz,w); w+=sz;
   fdatasync(fd); double d=now()-t0; if(d>mx) mx=d; }
 double e=now()-s; stop=1; pthread_join(t,0); printf("mode %d: %.1f us/round, max %.0f us, behind %d\n",mode,e/rounds,mx,behind); }
