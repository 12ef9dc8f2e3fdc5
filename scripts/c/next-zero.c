// Build: gcc -O2 -pthread next-zero.c -o next-zero; ./next-zero MODE KIB ROUNDS (e.g. ./next-zero 9 45 4000), run in a
// directory on the disk under test. docs/performance.md, "Hot path: session 14".
// Rounds (pwrite SZ + fdatasync) on file A; modes:
// 0: A zeroed & synced beforehand, nothing else
// 1: A prefilled in the rounds (2 MiB when half of the reach is used; as the broker ships)
// 8: A zeroed beforehand; a second thread zero-fills another file B, keeping pace with the
//    rounds' bytes (4 MiB steps, fdatasync of B after each)
// 9: as 8 but sync_file_range(WRITE) on B's steps, fdatasync of B every 64 MiB
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
static char z[4<<20]; int fa, fb, mode; atomic_long w, bfilled; atomic_int stop;
#define STEP (4L<<20)
void* bg(void*a){ while(!stop){ long f=bfilled; if(f < w + STEP){ pwrite(fb,z,STEP,f); if(mode==8) fdatasync(fb); else { sync_file_range(fb,f,STEP,SYNC_FILE_RANGE_WRITE); if(((f+STEP)%(64L<<20))==0) fdatasync(fb);} bfilled=f+STEP; } else usleep(200);} return 0;}
int main(int c,char**v){ mode=atoi(v[1]); size_t sz=atoi(v[2])*1024; int rounds=atoi(v[3]);
 char*buf=malloc(sz); memset(buf,7,sz);
 unlink("a.dat"); unlink("b.dat"); fa=open("a.dat",O_RDWR|O_CREAT,0644); fb=open("b.dat",O_RDWR|O_CREAT,0644);
 long need = (long)sz*rounds + (8<<20);
 if(mode!=1){ for(long o=0;o<need;o+=STEP) pwrite(fa,z,STEP,o); fsync(fa);} else fsync(fa);
 pthread_t t; if(mode>=8) pthread_create(&t,0,bg,0);
 long filled=0; double s=now(), mx=0;
 for(int r=0;r<rounds;r++){ double t0=now();
   if(mode==1){ long ahead=w<(64<<10)?(64<<10):(w>(4<<20)?(4<<20):w); if(filled < w+ahead/2){ long at=filled>w?filled:w, to=w+ahead; pwrite(fa,z,to-at,at); filled=to; } }
   pwrite(fa,buf,sz,w); w+=sz;
   fdatasync(fa); double d=now()-t0; if(d>mx) mx=d; }
 double e=now()-s; stop=1; if(mode>=8) pthread_join(t,0); printf("mode %d, %zu KiB: %.1f us/round, max %.0f us, %.0f MB/s\n",mode,sz/1024,e/rounds,mx, (double)sz*rounds/e);
 unlink("a.dat"); unlink("b.dat"); }
