/*
 * histogram.h - fixed-bucket latency histograms for the Prometheus
 * exposition (admin/metrics.c).
 *
 * Owns: bucket counts, the sum and the count of observed durations, all in
 * integer nanoseconds, so observing on the hot path is a short scan of a
 * static bound table and three integer adds: no float, no allocation, no
 * clock read (the caller passes the duration).
 * Must never: lock (the loop thread is the only writer and the only reader)
 * or grow.
 *
 * A zeroed hist_t is ready to use with the default latency bounds (so a
 * memset gateway needs no init call); hist_init picks other bounds.
 *
 * Buckets are cumulative only when rendered: counts[i] holds the
 * observations with bounds[i-1] < v <= bounds[i]; counts[nbounds] holds those
 * above the last bound (+Inf).
 */
#ifndef HOTPLEX_HISTOGRAM_H
#define HOTPLEX_HISTOGRAM_H

#include <stddef.h>
#include <stdint.h>

#define HIST_MAX_BOUNDS 24

typedef struct hist {
    const uint64_t *bounds_ns; /* ascending upper bounds, static storage; NULL: default */
    uint32_t nbounds;          /* <= HIST_MAX_BOUNDS (ignored when bounds_ns is NULL) */
    uint64_t counts[HIST_MAX_BOUNDS + 1];
    uint64_t sum_ns;
    uint64_t count;
} hist_t;

/* The default bounds: 100 us .. 10 s in 1-2.5-5 steps, then 30 s (17 bounds). */
extern const uint64_t hist_latency_bounds_ns[];
extern const uint32_t hist_latency_nbounds;

/* bounds NULL: the default latency bounds. nbounds is clamped to
 * HIST_MAX_BOUNDS. */
void hist_init(hist_t *h, const uint64_t *bounds_ns, uint32_t nbounds);
void hist_observe(hist_t *h, uint64_t ns);
/* The bounds in force (the default ones for a zeroed histogram). */
const uint64_t *hist_bounds(const hist_t *h, uint32_t *nbounds);
/* Observations <= bounds[i] (cumulative), i < nbounds; i == nbounds: count. */
uint64_t hist_cumulative(const hist_t *h, uint32_t i);

#endif
