/*
 * histogram.c - see histogram.h. A linear scan from the lowest bound: most
 * observations (event latency, init) land in the first few buckets.
 */
#include "admin/histogram.h"

#include <string.h>

#define US 1000ull
#define MS 1000000ull
#define S 1000000000ull

const uint64_t hist_latency_bounds_ns[] = {
    100 * US, 250 * US, 500 * US, 1 * MS, 2500 * US, 5 * MS, 10 * MS, 25 * MS, 50 * MS,
    100 * MS, 250 * MS, 500 * MS, 1 * S,  2500 * MS, 5 * S,  10 * S,  30 * S,
};
const uint32_t hist_latency_nbounds =
    (uint32_t)(sizeof(hist_latency_bounds_ns) / sizeof(hist_latency_bounds_ns[0]));

void hist_init(hist_t *h, const uint64_t *bounds_ns, uint32_t nbounds)
{
    memset(h, 0, sizeof(*h));
    if (!bounds_ns) return; /* the default bounds */
    h->bounds_ns = bounds_ns;
    h->nbounds = nbounds > HIST_MAX_BOUNDS ? HIST_MAX_BOUNDS : nbounds;
}

const uint64_t *hist_bounds(const hist_t *h, uint32_t *nbounds)
{
    if (!h->bounds_ns) {
        *nbounds = hist_latency_nbounds;
        return hist_latency_bounds_ns;
    }
    *nbounds = h->nbounds;
    return h->bounds_ns;
}

void hist_observe(hist_t *h, uint64_t ns)
{
    uint32_t n, i = 0;
    const uint64_t *b = hist_bounds(h, &n);
    while (i < n && ns > b[i])
        i++;
    h->counts[i]++;
    h->sum_ns += ns;
    h->count++;
}

uint64_t hist_cumulative(const hist_t *h, uint32_t i)
{
    uint32_t nb;
    hist_bounds(h, &nb);
    if (i >= nb) return h->count;
    uint64_t n = 0;
    for (uint32_t k = 0; k <= i; k++)
        n += h->counts[k];
    return n;
}
