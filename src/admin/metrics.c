/*
 * metrics.c - see metrics.h.
 *
 * Naming follows the Prometheus conventions: hotplex_ prefix, base units in
 * the name (_seconds, _bytes), counters end in _total, one label at most
 * per family, and label values only from fixed tables (event types, state
 * names, error codes). promtool check metrics accepts the output; the e2e
 * test runs it when it is installed, and a strict checker otherwise.
 */
#include "admin/metrics.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "aep/aep.h"
#include "core/session.h"
#include "util/clock.h"

static int g_oom; /* sticky for one render: the loop thread is the only caller */

static void put(buf_t *b, const char *s)
{
    if (buf_puts(b, s) < 0) g_oom = 1;
}

static void putn(buf_t *b, const char *s, size_t n)
{
    if (buf_append(b, s, n) < 0) g_oom = 1;
}

void mx_fmt_double(char *out, size_t cap, double v)
{
    if (isnan(v)) {
        snprintf(out, cap, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(out, cap, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(out, cap, "%.*g", prec, v);
        if (strtod(out, NULL) == v) return;
    }
}

/* Escapes per the text format: in help \\ and \n, in label values also \". */
static void put_escaped(buf_t *b, const char *s, int quote)
{
    const char *run = s;
    for (; *s; s++) {
        const char *rep = *s == '\\'           ? "\\\\"
                          : *s == '\n'         ? "\\n"
                          : quote && *s == '"' ? "\\\""
                                               : NULL;
        if (!rep) continue;
        putn(b, run, (size_t)(s - run));
        put(b, rep);
        run = s + 1;
    }
    putn(b, run, (size_t)(s - run));
}

void mx_family(buf_t *b, const char *name, const char *type, const char *help)
{
    put(b, "# HELP ");
    put(b, name);
    put(b, " ");
    put_escaped(b, help, 0);
    put(b, "\n# TYPE ");
    put(b, name);
    put(b, " ");
    put(b, type);
    put(b, "\n");
}

static void put_name(buf_t *b, const char *name, const char *lkey, const char *lval)
{
    put(b, name);
    if (lkey) {
        put(b, "{");
        put(b, lkey);
        put(b, "=\"");
        put_escaped(b, lval ? lval : "", 1);
        put(b, "\"}");
    }
    put(b, " ");
}

void mx_u64(buf_t *b, const char *name, const char *lkey, const char *lval, uint64_t v)
{
    char num[32];
    put_name(b, name, lkey, lval);
    snprintf(num, sizeof(num), "%llu\n", (unsigned long long)v);
    put(b, num);
}

void mx_f64(buf_t *b, const char *name, const char *lkey, const char *lval, double v)
{
    char num[40];
    put_name(b, name, lkey, lval);
    mx_fmt_double(num, sizeof(num) - 1, v);
    put(b, num);
    put(b, "\n");
}

void mx_hist(buf_t *b, const char *name, const char *help, const hist_t *h)
{
    char series[160], le[40];
    uint32_t n;
    const uint64_t *bounds = hist_bounds(h, &n);
    mx_family(b, name, "histogram", help);
    snprintf(series, sizeof(series), "%s_bucket", name);
    uint64_t cum = 0;
    for (uint32_t i = 0; i <= n; i++) {
        cum += h->counts[i];
        if (i < n)
            mx_fmt_double(le, sizeof(le), (double)bounds[i] / 1e9);
        else
            snprintf(le, sizeof(le), "+Inf");
        mx_u64(b, series, "le", le, i < n ? cum : h->count);
    }
    snprintf(series, sizeof(series), "%s_sum", name);
    mx_f64(b, series, NULL, NULL, (double)h->sum_ns / 1e9);
    snprintf(series, sizeof(series), "%s_count", name);
    mx_u64(b, series, NULL, NULL, h->count);
}

void metrics_process(uint64_t *rss_bytes, uint64_t *open_fds)
{
    *rss_bytes = *open_fds = 0;
    FILE *f = fopen("/proc/self/statm", "re");
    if (f) {
        unsigned long long size, resident;
        if (fscanf(f, "%llu %llu", &size, &resident) == 2)
            *rss_bytes = resident * (uint64_t)sysconf(_SC_PAGESIZE);
        fclose(f);
    }
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        uint64_t n = 0;
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.') n++;
        closedir(d);
        *open_fds = n ? n - 1 : 0; /* not the directory's own descriptor */
    }
}

/* Simple one-sample families. */
static void counter(buf_t *b, const char *name, const char *help, uint64_t v)
{
    mx_family(b, name, "counter", help);
    mx_u64(b, name, NULL, NULL, v);
}

static void gauge(buf_t *b, const char *name, const char *help, double v)
{
    mx_family(b, name, "gauge", help);
    mx_f64(b, name, NULL, NULL, v);
}

int metrics_render(gateway_t *gw, buf_t *b)
{
    const gw_counters_t *c = &gw->ctr;
    g_oom = 0;

    mx_family(b, "hotplex_build_info", "gauge", "Version of the running gateway (always 1).");
    mx_u64(b, "hotplex_build_info", "version", HOTPLEX_VERSION, 1);
    gauge(b, "hotplex_uptime_seconds", "Seconds since the gateway started.",
          (double)(clock_unix_ms() - gw->started_ms) / 1000.0);

    /* connections and sessions */
    gauge(b, "hotplex_connections", "Open WebSocket connections.", gw->nclients);
    counter(b, "hotplex_connections_total", "WebSocket connections accepted.", c->conns_total);
    mx_family(b, "hotplex_init_total", "counter",
              "Handshakes (init) answered, by result (ok: init_ack with a session).");
    mx_u64(b, "hotplex_init_total", "result", "ok", c->init_ok);
    mx_u64(b, "hotplex_init_total", "result", "failed", c->init_failed);

    uint64_t by_state[5] = {0};
    for (hmap_iter_t it = {0}; hmap_next(&gw->sessions, &it);) {
        const sess_t *s = it.value;
        if ((unsigned)s->state < 5) by_state[s->state]++;
    }
    mx_family(b, "hotplex_sessions", "gauge",
              "Sessions known to the gateway, by state (deleted: tombstones kept until "
              "retention purges them).");
    for (int i = 0; i < 5; i++)
        mx_u64(b, "hotplex_sessions", "state", sess_state_name((sess_state_t)i), by_state[i]);
    gauge(b, "hotplex_agents", "Live agent processes.", gw->nagents);
    uint64_t users = 0;
    for (hmap_iter_t it = {0}; hmap_next(&gw->users, &it);) {
        const gw_user_t *u = it.value;
        if (u->sessions > 0 || u->agents > 0) users++;
    }
    gauge(b, "hotplex_users", "Users owning at least one session that is not deleted.",
          (double)users);

    /* stream */
    mx_family(b, "hotplex_events_committed_total", "counter",
              "Events committed to session streams, by event type.");
    for (int i = 0; i < GW_EVT_TYPES; i++)
        mx_u64(b, "hotplex_events_committed_total", "type", gw_event_type_names[i],
               c->events_by_type[i]);
    counter(b, "hotplex_frames_in_total", "WebSocket messages received from clients.",
            c->frames_in);
    counter(b, "hotplex_frames_out_total", "WebSocket messages written to clients.", c->frames_out);
    counter(b, "hotplex_bytes_out_total", "Bytes of WebSocket message payload written to clients.",
            c->bytes_out);
    counter(b, "hotplex_merged_deltas_total",
            "message.delta events folded into a merged delta for a lagging connection.",
            c->merged_deltas);
    counter(b, "hotplex_slow_client_disconnects_total",
            "Connections closed (1013) because their backlog passed session.out_hard_limit.",
            c->slow_closes);
    mx_family(b, "hotplex_errors_total", "counter",
              "AEP error events and error replies sent, by error code.");
    for (int i = 1; i < AEP_CODE_COUNT; i++)
        mx_u64(b, "hotplex_errors_total", "code", aep_code_name((aep_code_t)i), c->errors[i]);

    /* security */
    mx_family(b, "hotplex_auth_failures_total", "counter",
              "Requests refused for invalid credentials, by listener.");
    mx_u64(b, "hotplex_auth_failures_total", "listener", "public", c->auth_failed);
    mx_u64(b, "hotplex_auth_failures_total", "listener", "admin", c->admin_auth_failed);
    mx_family(b, "hotplex_rate_limited_total", "counter",
              "Requests and inputs refused by a rate limit, by listener.");
    mx_u64(b, "hotplex_rate_limited_total", "listener", "public", c->rate_limited);
    mx_u64(b, "hotplex_rate_limited_total", "listener", "admin", c->admin_rate_limited);

    /* latency */
    mx_hist(b, "hotplex_init_duration_seconds",
            "Time from a connection's opening to its init_ack being queued.", &c->init_latency);
    mx_hist(b, "hotplex_agent_start_duration_seconds",
            "Time from an agent's start (or its first input, if later) to its first output.",
            &c->agent_start);
    mx_hist(b, "hotplex_event_latency_seconds",
            "Time from an event's commit to its frame being written to a client socket "
            "(includes the journal write that makes it durable).",
            &c->event_latency);

    /* store */
    store_stats_t st;
    memset(&st, 0, sizeof(st));
    if (gw->store) store_get_stats(gw->store, &st);
    counter(b, "hotplex_store_batches_total", "Store transactions committed (group commits).",
            st.batches);
    counter(b, "hotplex_store_events_total", "Events written to the store.", st.events);
    mx_family(b, "hotplex_store_batch_duration_seconds", "summary",
              "Time the store thread spent per batch (count: batches).");
    mx_f64(b, "hotplex_store_batch_duration_seconds_sum", NULL, NULL,
           (double)st.batch_ns_total / 1e9);
    mx_u64(b, "hotplex_store_batch_duration_seconds_count", NULL, NULL, st.batches);
    gauge(b, "hotplex_store_batch_max_ops", "Largest number of operations in one batch so far.",
          (double)st.max_batch);
    counter(b, "hotplex_store_failed_batches_total", "Store transactions rolled back.",
            st.failed_batches);
    counter(b, "hotplex_store_lost_events_total", "Events the store could not write at all.",
            st.lost_events);
    counter(b, "hotplex_store_journal_writes_total",
            "Journal writes (one per loop iteration with writes to make durable).",
            st.journal_writes);
    counter(b, "hotplex_store_journal_bytes_total", "Bytes written to the journal.",
            st.journal_bytes);
    counter(b, "hotplex_store_journal_errors_total",
            "Failed journal writes (events delivered without crash protection).",
            st.journal_errors);

    /* process */
    uint64_t rss, fds;
    metrics_process(&rss, &fds);
    gauge(b, "hotplex_process_resident_memory_bytes", "Resident set size of the gateway.",
          (double)rss);
    gauge(b, "hotplex_process_open_fds", "Open file descriptors of the gateway.", (double)fds);
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                     (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
        mx_family(b, "hotplex_process_cpu_seconds_total", "counter",
                  "User and system CPU time of the gateway (not its agents).");
        mx_f64(b, "hotplex_process_cpu_seconds_total", NULL, NULL, cpu);
    }
    return g_oom ? -ENOMEM : 0;
}
