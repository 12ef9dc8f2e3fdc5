// Build: gcc -O2 -pthread overlap.c -o overlap; ./overlap MODE KIB ROUNDS, in a directory on the disk under test.
// MODE 0: one thread, rounds of pwrite KIB + fdatasync (the flusher today).
// MODE 1: a writer thread pwrites round N+1 while a syncer thread runs fdatasync of round N: one fdatasync in
//         flight, the write of the next round off its critical path. Prints us/round. File pre-zeroed and synced.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
static char z[4<<20]; static size_t sz; static int rounds, fd; static char *buf;
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER; static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int written = 0, synced = 0;
static void* writer(void* a){ (void)a;
  for(int r=0;r<rounds;r++){
    pthread_mutex_lock(&m); while(r > synced + 1) pthread_cond_wait(&cv,&m); pthread_mutex_unlock(&m);
    pwrite(fd,buf,sz,(long)r*sz);
    pthread_mutex_lock(&m); written = r+1; pthread_cond_broadcast(&cv); pthread_mutex_unlock(&m);
  } return 0; }
int main(int c,char**v){ (void)c; int mode=atoi(v[1]); sz=atoi(v[2])*1024; rounds=atoi(v[3]);
  unlink("ov.dat"); fd=open("ov.dat",O_RDWR|O_CREAT,0644); long need=(long)sz*rounds+(4<<20);
  for(long o=0;o<need;o+=sizeof z) pwrite(fd,z,sizeof z,o);
  fsync(fd); buf=malloc(sz); memset(buf,7,sz);
  double s=now();
  if(mode==0){ for(int r=0;r<rounds;r++){ pwrite(fd,buf,sz,(long)r*sz); fdatasync(fd);} }
  else { pthread_t t; pthread_create(&t,0,writer,0);
    for(int r=0;r<rounds;r++){
      pthread_mutex_lock(&m); while(written < r+1) pthread_cond_wait(&cv,&m); pthread_mutex_unlock(&m);
      fdatasync(fd);
      pthread_mutex_lock(&m); synced = r+1; pthread_cond_broadcast(&cv); pthread_mutex_unlock(&m);
    } pthread_join(t,0); }
  printf("mode %d %zu KiB: %.1f us/round\n", mode, sz/1024, (now()-s)/rounds); unlink("ov.dat"); return 0; }
