// Build: gcc -O2 -pthread two-files.c -o two-files; ./two-files THREADS KIB ROUNDS (e.g. ./two-files 2 45 4000), run in a
// directory on the disk under test. docs/performance.md, "Session 14: five runs, every round over 3×".
// N threads, each: pwrite SZ + fdatasync rounds on its own pre-zeroed file. Prints us/round per thread.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
static char z[4<<20]; size_t sz; int rounds;
void* run(void*a){ long id=(long)a; char name[32]; sprintf(name,"f%ld.dat",id); unlink(name);
 int fd=open(name,O_RDWR|O_CREAT,0644); long need=(long)sz*rounds+(4<<20);
 for(long o=0;o<need;o+=sizeof z) pwrite(fd,z,sizeof z,o);
 fsync(fd);
 char*buf=malloc(sz); memset(buf,7,sz); long w=0; double s=now();
 for(int r=0;r<rounds;r++){ pwrite(fd,buf,sz,w); w+=sz; fdatasync(fd);} 
 double e=now()-s; printf("thread %ld: %.1f us/round\n",id,e/rounds); unlink(name); return 0;}
int main(int c,char**v){ int n=atoi(v[1]); sz=atoi(v[2])*1024; rounds=atoi(v[3]); pthread_t t[8];
 for(long i=0;i<n;i++) pthread_create(&t[i],0,run,(void*)i);
 for(int i=0;i<n;i++) pthread_join(t[i],0);
}
