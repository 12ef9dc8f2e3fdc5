// The floor for L1 on a machine: one-way latency through a relay process at 10 k msg/s of 1 KiB.
// Build: gcc -O2 -pthread relay.c -o relay; run: ./relay relay & ./relay client
// docs/performance.md, "Session 9: where S1's and S2's latency sits, and L1's floor".
// paced one-way latency through a relay process: A -> R -> B, A and B in one process (two threads), R another. 10k msg/s.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
#include <pthread.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
static long now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1000000000L+t.tv_nsec;}
int lis(int port){int s=socket(AF_INET,SOCK_STREAM,0);int one=1;setsockopt(s,SOL_SOCKET,SO_REUSEADDR,&one,4);struct sockaddr_in a={.sin_family=AF_INET,.sin_port=htons(port),.sin_addr.s_addr=htonl(0x7f000001)};bind(s,(void*)&a,sizeof a);listen(s,4);return s;}
int con(int port){int s=socket(AF_INET,SOCK_STREAM,0);struct sockaddr_in a={.sin_family=AF_INET,.sin_port=htons(port),.sin_addr.s_addr=htonl(0x7f000001)};while(connect(s,(void*)&a,sizeof a)){usleep(1000);} int one=1; setsockopt(s,IPPROTO_TCP,TCP_NODELAY,&one,4); return s;}
#define N 50000
long lat[N];
int rb;
void* reader(void*x){ char buf[1024]; for(int i=0;i<N;i++){ int got=0; while(got<1024){int r=read(rb,buf+got,1024-got); if(r<=0) exit(1); got+=r;} long t; memcpy(&t,buf,8); lat[i]=now()-t;} return 0;}
int cmp(const void*a,const void*b){long x=*(long*)a,y=*(long*)b;return x<y?-1:x>y;}
int main(int c,char**v){
 if(!strcmp(v[1],"relay")){ int l1=lis(7001), l2=lis(7002); int a=accept(l1,0,0), b=accept(l2,0,0); int one=1; setsockopt(b,IPPROTO_TCP,TCP_NODELAY,&one,4); char buf[65536]; for(;;){int r=read(a,buf,sizeof buf); if(r<=0) return 0; write(b,buf,r);} }
 int wa=con(7001); rb=con(7002); pthread_t t; pthread_create(&t,0,reader,0);
 char msg[1024]={0}; long start=now();
 for(int i=0;i<N;i++){ long due=start+i*100000L; while(now()<due){ long d=due-now(); if(d>60000){struct timespec ts={0,d-50000}; nanosleep(&ts,0);} } long t=now(); memcpy(msg,&t,8); write(wa,msg,1024);} 
 pthread_join(t,0); qsort(lat,N,sizeof(long),cmp); printf("relay one-way: p50 %ld us p99 %ld us p99.9 %ld\n",lat[N/2]/1000,lat[N*99/100]/1000,lat[N*999/1000]/1000);}
