// What sched_yield costs when nothing else waits for the core (docs/decisions.md, "A connection yields its
// core when a consumer's prefetch window fills"): 1 M calls, the mean per call.
//   cc -O2 -o /tmp/yield scripts/c/yield.c && /tmp/yield
#include <sched.h>
#include <stdio.h>
#include <time.h>

int main(void) {
    const int n = 1000000;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) sched_yield();
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("%.1f ns per sched_yield\n", ns / n);
    return 0;
}
