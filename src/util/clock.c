/*
 * clock.c - the two clocks hotplex reads.
 *
 * Owns: clock_gettime() calls. Must never: fail visibly (both clocks exist
 * on every Linux we run on; a failed call yields 0).
 */
#include "util/clock.h"

#include <time.h>

int64_t clock_unix_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t clock_mono_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
