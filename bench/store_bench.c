/*
 * store_bench.c - micro-benchmark of the event store (store.h), through its
 * public API only, so the same file measures any backend revision.
 *
 * The loop thread plays the gateway: it appends events of S sessions
 * round-robin (interleaved, as concurrent agents produce them), each
 * session allowed at most W events not yet reported durable (the gateway
 * pauses an agent once 256 KiB wait for the store: W = 256 KiB / size),
 * and runs the uv loop to receive durable reports. Envelopes look like the
 * gateway's (AEP v1, message.delta, --size bytes) and are a pure function
 * of (session, seq), so --verify can replay every session afterwards and
 * compare each event byte for byte.
 *
 * Output: one line of figures: events/s (wall, first append to last durable
 * report) and CPU microseconds per event of the whole process, split into
 * the loop thread and the rest (the store thread), plus the store's batch
 * statistics. With --verify, also the replay rate.
 *
 * Build (not part of the CMake build, so that it can be compiled against
 * any revision's library, e.g. the one before a change, for comparison):
 *   cc -O2 -I src bench/store_bench.c BUILD/libhotplex_core.a \
 *      $(pkg-config --libs libuv sqlite3) -lm -lpthread -o store_bench
 * Run: store_bench --sessions 1000 --events 2000000 [--size 380] [--window W]
 *      [--dir DIR] [--verify]
 *   --window 0: no limit (everything is queued at once, so batches are as
 *   big as they get: the store's cost per event at saturation);
 *   --window 2 with 1,000 sessions: ~1,000 sessions with one event each
 *   per batch (the worst case for pages touched per event).
 * The figures vary with whatever else runs on the machine: compare runs
 * made back to back, several of each.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <uv.h>

#include "store/store.h"

typedef struct sess {
    char id[37];
    int64_t appended, durable;
} sess_t;

typedef struct bench {
    uv_loop_t loop;
    store_t *store;
    sess_t *ss;
    int nsess;
    int64_t events, window;
    size_t size;
    int64_t durable_total;
    /* replay */
    int64_t read_next, read_events, bad;
    int read_sess, read_limit;
    bool read_done;
} bench_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double process_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static char *put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}
#define PUT(p, lit) put(p, lit, sizeof(lit) - 1)

static char *put_u64(char *p, uint64_t v, int base, int width)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = "0123456789abcdef"[v % (unsigned)base];
        v /= (unsigned)base;
    } while (v);
    while (n < width)
        tmp[n++] = '0';
    while (n)
        *p++ = tmp[--n];
    return p;
}

/* The envelope of (session k, seq): the gateway's shape, padded with text
 * to `size` bytes. Deterministic, so a replay can be checked. Built without
 * printf: the producer must cost little next to the store it measures. */
static size_t envelope(const bench_t *b, int k, int64_t seq, char *out, size_t cap)
{
    static char filler[4096 + 32];
    if (!filler[0])
        for (size_t i = 0; i < sizeof(filler); i++)
            filler[i] = (char)('a' + i % 26);
    char *p = out;
    p = PUT(p, "{\"version\":\"aep/v1\",\"id\":\"evt_");
    p = put_u64(p, (uint64_t)k, 16, 8);
    p = PUT(p, "-0000-4000-8000-");
    p = put_u64(p, (uint64_t)seq, 16, 12);
    p = PUT(p, "\",\"seq\":");
    p = put_u64(p, (uint64_t)seq, 10, 1);
    p = PUT(p, ",\"session_id\":\"");
    p = put(p, b->ss[k].id, 36);
    p = PUT(p, "\",\"timestamp\":");
    p = put_u64(p, 1700000000000u + (uint64_t)seq, 10, 1);
    p = PUT(p, ",\"event\":{\"type\":\"message.delta\",\"data\":{\"message_id\":\"msg_");
    p = put_u64(p, (uint64_t)k, 10, 1);
    p = PUT(p, "\",\"content\":\"");
    size_t len = (size_t)(p - out);
    const char tail[] = "\"}}}";
    size_t want = b->size > len + sizeof(tail) ? b->size : len + sizeof(tail);
    if (want >= cap) want = cap - 1;
    size_t fill = want - (sizeof(tail) - 1) - len;
    memcpy(p, filler + (uint64_t)seq % 26, fill);
    memcpy(p + fill, tail, sizeof(tail));
    return want;
}

static int sess_index(const char *sid)
{
    /* ids are "00000000-0000-4000-8000-%012d" */
    return atoi(sid + 24);
}

static void on_durable(void *ctx, const char *sid, int64_t seq)
{
    bench_t *b = ctx;
    sess_t *s = &b->ss[sess_index(sid)];
    if (seq > s->durable) {
        b->durable_total += seq - s->durable;
        s->durable = seq;
    }
}

static void produce(bench_t *b)
{
    char *buf = malloc(b->size + 512);
    int64_t produced = 0;
    int k = 0;
    /* One loop iteration appends a burst (the gateway, too, handles many
     * events per iteration: an agent's read holds many lines), round-robin
     * over the sessions that may append, then polls for durable reports. */
    int burst = b->nsess > 64 ? b->nsess : 64;
    while (b->durable_total < b->events) {
        int blocked = 0, done = 0;
        for (int i = 0; done < burst && blocked < b->nsess && produced < b->events;
             i++, k = (k + 1) % b->nsess) {
            sess_t *s = &b->ss[k];
            if (b->window > 0 && s->appended - s->durable >= b->window) {
                blocked++;
                continue;
            }
            blocked = 0;
            size_t len = envelope(b, k, s->appended + 1, buf, b->size + 512);
            store_event_append(b->store, s->id, s->appended + 1, "message.delta", buf, len);
            s->appended++;
            produced++;
            done++;
        }
        if (done == 0)
            uv_run(&b->loop, UV_RUN_ONCE); /* wait for durable reports */
        else
            uv_run(&b->loop, UV_RUN_NOWAIT);
    }
    free(buf);
}

static void read_next_page(bench_t *b);

static void on_read(void *ctx, int rc, int n, const int64_t *seqs, const char *const *json,
                    const size_t *lens, int64_t oldest)
{
    bench_t *b = ctx;
    char want[8192];
    if (rc != 0 || (n > 0 && oldest != 1)) b->bad++;
    for (int i = 0; i < n; i++) {
        size_t wl = envelope(b, b->read_sess, b->read_next, want, sizeof(want));
        if (seqs[i] != b->read_next || lens[i] != wl || memcmp(json[i], want, wl) != 0) b->bad++;
        b->read_next++;
        b->read_events++;
    }
    if (n == 0 || rc != 0) {
        if (b->read_next - 1 != b->ss[b->read_sess].appended) b->bad++;
        b->read_sess++;
        b->read_next = 1;
        if (b->read_sess == b->nsess) {
            b->read_done = true;
            return;
        }
    }
    read_next_page(b);
}

static void read_next_page(bench_t *b)
{
    store_events_read(b->store, b->ss[b->read_sess].id, b->read_next - 1, b->read_limit, on_read,
                      b);
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

int main(int argc, char **argv)
{
    bench_t b;
    memset(&b, 0, sizeof(b));
    b.nsess = 1;
    b.events = 200000;
    b.size = 380;
    b.window = -1;
    b.read_limit = 256;
    const char *dir = NULL;
    bool verify = false;
    static const struct option opts[] = {
        {"sessions", required_argument, NULL, 's'},
        {"events", required_argument, NULL, 'n'},
        {"size", required_argument, NULL, 'z'},
        {"window", required_argument, NULL, 'w'},
        {"dir", required_argument, NULL, 'd'},
        {"verify", no_argument, NULL, 'v'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            b.nsess = atoi(optarg);
            break;
        case 'n':
            b.events = atoll(optarg);
            break;
        case 'z':
            b.size = (size_t)atol(optarg);
            break;
        case 'w':
            b.window = atoll(optarg);
            break;
        case 'd':
            dir = optarg;
            break;
        case 'v':
            verify = true;
            break;
        default:
            fprintf(stderr,
                    "usage: %s [--sessions N] [--events N] [--size B] [--window W] "
                    "[--dir DIR] [--verify]\n",
                    argv[0]);
            return 2;
        }
    }
    if (b.nsess < 1 || b.events < 1 || b.size < 64 || b.size > 4096) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    if (b.window < 0) b.window = (int64_t)((256u << 10) / b.size); /* the gateway's pause */

    char tmp[256];
    if (!dir) {
        snprintf(tmp, sizeof(tmp), "/tmp/store-bench-XXXXXX");
        if (!mkdtemp(tmp)) {
            perror("mkdtemp");
            return 1;
        }
    } else {
        snprintf(tmp, sizeof(tmp), "%s", dir);
    }
    char path[512];
    snprintf(path, sizeof(path), "%s/store.db", tmp);

    b.ss = calloc((size_t)b.nsess, sizeof(*b.ss));
    for (int k = 0; k < b.nsess; k++)
        snprintf(b.ss[k].id, sizeof(b.ss[k].id), "00000000-0000-4000-8000-%012d", k);
    uv_loop_init(&b.loop);
    char err[512];
    if (store_open(&b.store, &b.loop, path, &(store_hooks_t){.on_stored = on_durable, .ctx = &b}, err,
                   sizeof(err)) != 0) {
        fprintf(stderr, "store_open: %s\n", err);
        return 1;
    }

    double t0 = now_s(), c0 = process_cpu_s(), m0 = thread_cpu_s();
    produce(&b);
    double t1 = now_s(), c1 = process_cpu_s(), m1 = thread_cpu_s();
    store_stats_t st;
    store_get_stats(b.store, &st);

    double wall = t1 - t0, cpu = c1 - c0, main_cpu = m1 - m0;
    double ev = (double)b.events;
    printf("sessions=%d events=%" PRId64 " size=%zu window=%" PRId64
           " | %.0f events/s, cpu %.2f us/event (loop %.2f, store %.2f), "
           "%" PRIu64 " batches, avg %.0f max %" PRIu64 " ops/batch, %.1f us/batch\n",
           b.nsess, b.events, b.size, b.window, ev / wall, cpu * 1e6 / ev, main_cpu * 1e6 / ev,
           (cpu - main_cpu) * 1e6 / ev, st.batches, st.batches ? ev / (double)st.batches : 0.0,
           st.max_batch, st.batches ? (double)st.batch_ns_total / 1e3 / (double)st.batches : 0.0);
    if (st.lost_events || st.failed_batches)
        printf("  lost %" PRIu64 " failed batches %" PRIu64 "\n", st.lost_events,
               st.failed_batches);

    int rc = 0;
    if (verify) {
        b.read_next = 1;
        double r0 = now_s(), rc0 = process_cpu_s();
        read_next_page(&b);
        while (!b.read_done)
            uv_run(&b.loop, UV_RUN_ONCE);
        double r1 = now_s(), rc1 = process_cpu_s();
        printf("  replay (limit %d): %.0f events/s, cpu %.2f us/event, %" PRId64 " events, %s\n",
               b.read_limit, (double)b.read_events / (r1 - r0),
               (rc1 - rc0) * 1e6 / (double)b.read_events, b.read_events,
               b.bad ? "MISMATCH" : "all identical");
        if (b.bad || b.read_events != b.events) rc = 1;
    }

    store_close(b.store);
    uv_run(&b.loop, UV_RUN_DEFAULT);
    uv_loop_close(&b.loop);
    free(b.ss);
    if (!dir) nftw(tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return rc;
}
