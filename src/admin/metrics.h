/*
 * metrics.h - the Prometheus text exposition (format 0.0.4) of the
 * gateway's counters, gauges and histograms, served at GET /metrics on the
 * admin listener.
 *
 * Owns: metric names, help texts and the text format. The numbers live
 * where they change (gateway_t.ctr, the session registry, the store's
 * statistics, /proc): rendering reads them, it never keeps state.
 * Must never: block (the store statistics are a mutex-guarded copy; /proc
 * reads are local), or print a value that could hold a user's text (label
 * values come from fixed tables only).
 *
 * The mx_* writers are the format itself, exposed for the unit test: one
 * family header (# HELP, # TYPE) followed by its samples.
 */
#ifndef HOTPLEX_METRICS_H
#define HOTPLEX_METRICS_H

#include <stdint.h>

#include "admin/histogram.h"
#include "core/gateway.h"
#include "util/buf.h"

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* "# HELP name help\n# TYPE name type\n"; type is counter, gauge, histogram
 * or summary. Newlines and backslashes in help are escaped. */
void mx_family(buf_t *b, const char *name, const char *type, const char *help);
/* One sample: name{lkey="lval"} v, or name v when lkey is NULL. The label
 * value is escaped (backslash, double quote, newline). */
void mx_u64(buf_t *b, const char *name, const char *lkey, const char *lval, uint64_t v);
void mx_f64(buf_t *b, const char *name, const char *lkey, const char *lval, double v);
/* A whole histogram family: header, cumulative _bucket{le=...} lines
 * ending with +Inf, _sum (seconds) and _count. */
void mx_hist(buf_t *b, const char *name, const char *help, const hist_t *h);
/* A value as Prometheus reads it: shortest text that round-trips, +Inf,
 * -Inf, NaN. out needs 32 bytes. */
void mx_fmt_double(char *out, size_t cap, double v);

/* Resident set size in bytes and open file descriptors of this process
 * (from /proc/self); 0 when unavailable. */
void metrics_process(uint64_t *rss_bytes, uint64_t *open_fds);

/* The whole exposition. 0, or -ENOMEM (out then holds a partial text). */
int metrics_render(gateway_t *gw, buf_t *out);

#endif
