/*
 * journal.c - see journal.h.
 *
 * Positions are byte counts over everything this run buffered (headers
 * included), independent of files: a segment covers [start, end) of them.
 * Truncating the current segment moves its start up to the write position.
 */
#include "store/journal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/buf.h"
#include "util/log.h"

#define JOURNAL_VERSION 1
#define JOURNAL_HEADER 16
#define JOURNAL_TRUNCATE_BYTES (1u << 20) /* reuse the current segment past this */
#define JOURNAL_KEEP_BUF (1u << 20)       /* give back a write buffer grown past this */

typedef struct journal_seg {
    uint64_t no;
    int fd;
    uint64_t start, end; /* positions; end is past the last byte written */
} journal_seg_t;

struct journal {
    char *prefix;
    int lock_fd;       /* `<prefix>.lock`, flock()ed while open */
    buf_t buf;         /* records buffered since the last flush */
    uint64_t pos;      /* position past the last buffered record */
    uint64_t written;  /* position past the last flushed record */
    uint64_t released; /* records up to here are in the store */
    journal_seg_t *segs; /* this run's segments, oldest first; the last is written to */
    size_t nsegs, capsegs;
    uint64_t next_no;
    uint64_t *old; /* the previous run's segment numbers, ascending */
    size_t nold;
    journal_stats_t st;
};

static void journal__path(const journal_t *j, uint64_t no, char *out, size_t cap)
{
    snprintf(out, cap, "%s.%08" PRIu64, j->prefix, no);
}

/* A cheap 64-bit check, word at a time: it is there to tell a torn or
 * garbage tail from a record, not to resist an attacker (the journal is as
 * trusted as the database next to it). */
static uint64_t journal__check(uint8_t kind, uint32_t len, const uint8_t *p)
{
    const uint64_t m = 0xff51afd7ed558ccdull;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ ((uint64_t)kind << 40) ^ len;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * m;
        h ^= h >> 29;
    }
    uint64_t w = 0;
    memcpy(&w, p + i, len - i);
    h = (h ^ w ^ (uint64_t)(len - i)) * m;
    h ^= h >> 32;
    return h;
}

static int journal__cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The previous run's segments: `<base>.<8 digits>` in the prefix's dir. */
static int journal__scan(journal_t *j, char *err, size_t cap)
{
    char dir[4096];
    const char *slash = strrchr(j->prefix, '/');
    const char *base = slash ? slash + 1 : j->prefix;
    if (slash)
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - j->prefix) ? (int)(slash - j->prefix) : 1,
                 j->prefix);
    else
        snprintf(dir, sizeof(dir), ".");
    DIR *d = opendir(dir);
    if (!d) {
        int e = errno;
        snprintf(err, cap, "journal: cannot list %s: %s", dir, strerror(e));
        return -e;
    }
    size_t blen = strlen(base), capold = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *n = de->d_name;
        if (strncmp(n, base, blen) != 0 || n[blen] != '.' || strlen(n + blen + 1) != 8) continue;
        uint64_t no = 0;
        bool digits = true;
        for (const char *c = n + blen + 1; *c; c++) {
            if (*c < '0' || *c > '9') digits = false;
            no = no * 10 + (uint64_t)(*c - '0');
        }
        if (!digits) continue;
        if (j->nold == capold) {
            size_t nc = capold ? capold * 2 : 8;
            uint64_t *o = realloc(j->old, nc * sizeof(*o));
            if (!o) {
                closedir(d);
                snprintf(err, cap, "journal: out of memory");
                return -ENOMEM;
            }
            j->old = o;
            capold = nc;
        }
        j->old[j->nold++] = no;
    }
    closedir(d);
    if (j->nold) qsort(j->old, j->nold, sizeof(*j->old), journal__cmp_u64);
    j->next_no = j->nold ? j->old[j->nold - 1] + 1 : 1;
    return 0;
}

static int journal__new_segment(journal_t *j)
{
    if (j->nsegs == j->capsegs) {
        size_t nc = j->capsegs ? j->capsegs * 2 : 4;
        journal_seg_t *s = realloc(j->segs, nc * sizeof(*s));
        if (!s) return -ENOMEM;
        j->segs = s;
        j->capsegs = nc;
    }
    char path[4200];
    journal__path(j, j->next_no, path, sizeof(path));
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) return -errno;
    j->segs[j->nsegs++] = (journal_seg_t){.no = j->next_no, .fd = fd, .start = j->written,
                                          .end = j->written};
    j->next_no++;
    return 0;
}

/* One process per journal: a second one would re-apply and remove segments
 * the first is still writing. The lock goes with the process (also on a
 * crash), so a restart after SIGKILL is never refused. */
static int journal__lock(journal_t *j, char *err, size_t cap)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s.lock", j->prefix);
    j->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (j->lock_fd < 0) {
        int e = errno;
        snprintf(err, cap, "journal: cannot open %s: %s", path, strerror(e));
        return -e;
    }
    if (flock(j->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        if (e == EWOULDBLOCK)
            snprintf(err, cap,
                     "journal: %s is locked by another process (another gateway using the same "
                     "data dir?)",
                     path);
        else
            snprintf(err, cap, "journal: cannot lock %s: %s", path, strerror(e));
        return e == EWOULDBLOCK ? -EBUSY : -e;
    }
    return 0;
}

int journal_open(journal_t **out, const char *prefix, char *err, size_t cap)
{
    *out = NULL;
    journal_t *j = calloc(1, sizeof(*j));
    if (!j || !(j->prefix = strdup(prefix))) {
        free(j);
        snprintf(err, cap, "journal: out of memory");
        return -ENOMEM;
    }
    j->lock_fd = -1;
    buf_init(&j->buf);
    int rc = journal__lock(j, err, cap);
    if (rc == 0) rc = journal__scan(j, err, cap);
    if (rc == 0 && (rc = journal__new_segment(j)) < 0) {
        char path[4200];
        journal__path(j, j->next_no, path, sizeof(path));
        snprintf(err, cap, "journal: cannot create %s: %s", path, strerror(-rc));
    }
    if (rc < 0) {
        journal_close(j, false);
        return rc;
    }
    *out = j;
    return 0;
}

static void journal__remove_seg(journal_t *j, size_t i)
{
    char path[4200];
    journal__path(j, j->segs[i].no, path, sizeof(path));
    close(j->segs[i].fd);
    if (unlink(path) < 0 && errno != ENOENT)
        log_warn("journal: cannot remove %s: %s", path, strerror(errno));
    j->st.segments_removed++;
    memmove(&j->segs[i], &j->segs[i + 1], (j->nsegs - i - 1) * sizeof(*j->segs));
    j->nsegs--;
}

void journal_close(journal_t *j, bool clean)
{
    if (!j) return;
    if (j->buf.len) {
        int rc = journal_flush(j);
        if (rc < 0) log_error("journal: final write failed: %s", strerror(-rc));
    }
    while (j->nsegs) {
        if (clean) {
            journal__remove_seg(j, 0);
        } else {
            close(j->segs[0].fd);
            memmove(&j->segs[0], &j->segs[1], (j->nsegs - 1) * sizeof(*j->segs));
            j->nsegs--;
        }
    }
    free(j->segs);
    free(j->old);
    buf_free(&j->buf);
    if (j->lock_fd >= 0) close(j->lock_fd); /* releases the lock */
    free(j->prefix);
    free(j);
}

uint64_t journal_add(journal_t *j, uint8_t kind, const void *const *parts, const size_t *lens,
                     int nparts)
{
    size_t total = 0;
    for (int i = 0; i < nparts; i++) total += lens[i];
    if (total > UINT32_MAX || buf_reserve(&j->buf, JOURNAL_HEADER + total) < 0) return 0;
    size_t at = j->buf.len;
    uint8_t *h = (uint8_t *)j->buf.p + at;
    uint8_t *p = h + JOURNAL_HEADER;
    for (int i = 0; i < nparts; i++) {
        if (lens[i]) memcpy(p, parts[i], lens[i]);
        p += lens[i];
    }
    uint32_t len = (uint32_t)total;
    uint64_t check = journal__check(kind, len, h + JOURNAL_HEADER);
    h[0] = kind;
    h[1] = JOURNAL_VERSION;
    h[2] = h[3] = 0;
    memcpy(h + 4, &len, 4); /* host byte order: a journal never leaves its machine */
    memcpy(h + 8, &check, 8);
    j->buf.len = at + JOURNAL_HEADER + total;
    j->buf.p[j->buf.len] = '\0';
    j->pos += JOURNAL_HEADER + total;
    return j->pos;
}

size_t journal_pending(const journal_t *j)
{
    return j->buf.len;
}

int journal_flush(journal_t *j)
{
    if (!j->buf.len) return 0;
    journal_seg_t *cur = &j->segs[j->nsegs - 1];
    int rc = 0;
    size_t off = 0;
    while (off < j->buf.len) {
        ssize_t n = write(cur->fd, j->buf.p + off, j->buf.len - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            rc = n < 0 ? -errno : -EIO;
            break;
        }
        off += (size_t)n;
    }
    j->st.writes++;
    if (rc < 0) {
        /* A segment with a hole is still readable up to the hole: replay
         * stops at the first bad record. Records after it in this segment
         * are lost to a crash, as the caller's log says. Start a new one. */
        j->st.errors++;
    } else {
        j->st.bytes += j->buf.len;
    }
    j->written = j->pos;
    cur->end = j->written;
    if (j->buf.cap > JOURNAL_KEEP_BUF)
        buf_free(&j->buf);
    else
        buf_reset(&j->buf);
    if (rc < 0 || cur->end - cur->start >= JOURNAL_SEGMENT_BYTES) {
        int nrc = journal__new_segment(j);
        if (nrc < 0) log_warn("journal: cannot start a new segment: %s", strerror(-nrc));
    }
    return rc;
}

void journal_release(journal_t *j, uint64_t pos)
{
    if (pos > j->released) j->released = pos;
    while (j->nsegs > 1 && j->segs[0].end <= j->released) journal__remove_seg(j, 0);
    journal_seg_t *cur = &j->segs[j->nsegs - 1];
    if (j->nsegs == 1 && !j->buf.len && j->released >= j->written &&
        cur->end - cur->start >= JOURNAL_TRUNCATE_BYTES) {
        if (ftruncate(cur->fd, 0) == 0) {
            cur->start = cur->end = j->written;
        } else {
            log_warn("journal: cannot truncate segment %" PRIu64 ": %s", cur->no, strerror(errno));
        }
    }
}

static int journal__read_file(const char *path, uint8_t **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    size_t n = (size_t)sb.st_size, off = 0;
    uint8_t *p = malloc(n ? n : 1);
    if (!p) {
        close(fd);
        return -ENOMEM;
    }
    while (off < n) {
        ssize_t r = read(fd, p + off, n - off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break; /* shorter than fstat said: parse what is there */
        off += (size_t)r;
    }
    close(fd);
    *out = p;
    *len = off;
    return 0;
}

int journal_parse(const uint8_t *p, size_t n, journal_record_cb cb, void *arg, size_t *used,
                  uint64_t *nrecords)
{
    size_t off = 0;
    uint64_t count = 0;
    int rc = 0;
    while (rc == 0 && off + JOURNAL_HEADER <= n) {
        const uint8_t *h = p + off;
        uint32_t len;
        uint64_t check;
        memcpy(&len, h + 4, 4);
        memcpy(&check, h + 8, 8);
        if (h[1] != JOURNAL_VERSION || h[2] || h[3] || len > n - off - JOURNAL_HEADER ||
            journal__check(h[0], len, h + JOURNAL_HEADER) != check)
            break;
        rc = cb(arg, h[0], h + JOURNAL_HEADER, len);
        count++;
        off += JOURNAL_HEADER + len;
    }
    *used = off;
    *nrecords = count;
    return rc;
}

int journal_replay(journal_t *j, journal_record_cb cb, void *arg, uint64_t *nrecords)
{
    uint64_t count = 0;
    int rc = 0;
    for (size_t i = 0; i < j->nold && rc == 0; i++) {
        char path[4200];
        journal__path(j, j->old[i], path, sizeof(path));
        uint8_t *p = NULL;
        size_t n = 0;
        int r = journal__read_file(path, &p, &n);
        if (r < 0) {
            log_error("journal: cannot read %s: %s", path, strerror(-r));
            rc = r;
            break;
        }
        size_t off = 0;
        uint64_t k = 0;
        rc = journal_parse(p, n, cb, arg, &off, &k);
        count += k;
        if (rc == 0 && off < n)
            log_warn("journal: %s: %zu bytes after offset %zu are not a whole record (a crash "
                     "during a write); ignored",
                     path, n - off, off);
        free(p);
    }
    if (nrecords) *nrecords = count;
    return rc;
}

void journal_drop_replayed(journal_t *j)
{
    for (size_t i = 0; i < j->nold; i++) {
        char path[4200];
        journal__path(j, j->old[i], path, sizeof(path));
        if (unlink(path) < 0 && errno != ENOENT)
            log_warn("journal: cannot remove %s: %s", path, strerror(errno));
    }
    j->nold = 0;
}

void journal_get_stats(const journal_t *j, journal_stats_t *out)
{
    *out = j->st;
}
