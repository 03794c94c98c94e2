/*
 * clock.h - the two clocks hotplex reads.
 *
 * Owns: wall-clock milliseconds (timestamps that leave the process) and
 * monotonic nanoseconds (timeouts, durations, benchmarks).
 * Must never: be used the other way round (never measure durations with the
 * wall clock, never put monotonic values on the wire).
 */
#ifndef HOTPLEX_UTIL_CLOCK_H
#define HOTPLEX_UTIL_CLOCK_H

#include <stdint.h>

int64_t clock_unix_ms(void);  /* CLOCK_REALTIME, milliseconds since the Unix epoch */
uint64_t clock_mono_ns(void); /* CLOCK_MONOTONIC, nanoseconds from an arbitrary origin */

#endif /* HOTPLEX_UTIL_CLOCK_H */
