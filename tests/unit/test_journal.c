/*
 * test_journal.c - journal.h: records survive into the next open in order,
 * a torn or garbage tail ends replay at the last whole record, released
 * segments are removed or truncated, this run never touches the previous
 * run's files until they are dropped. Real files in a temporary directory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/journal.h"

typedef struct fix {
    char dir[64];
    char prefix[96];
} fix_t;

static int setup(void **state)
{
    fix_t *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/hp-journal-XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    snprintf(f->prefix, sizeof(f->prefix), "%s/db.journal", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fix_t *f = *state;
    DIR *d = opendir(f->dir);
    struct dirent *de;
    char p[512];
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        snprintf(p, sizeof(p), "%s/%s", f->dir, de->d_name);
        unlink(p);
    }
    if (d) closedir(d);
    rmdir(f->dir);
    free(f);
    return 0;
}

static int count_files(const fix_t *f)
{
    int n = 0;
    DIR *d = opendir(f->dir);
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.' && !strstr(de->d_name, ".lock")) n++;
    closedir(d);
    return n;
}

static uint64_t add_str(journal_t *j, uint8_t kind, const char *a, const char *b)
{
    const void *parts[2] = {a, b};
    size_t lens[2] = {strlen(a), b ? strlen(b) : 0};
    return journal_add(j, kind, parts, lens, b ? 2 : 1);
}

typedef struct seen {
    int n;
    uint8_t kinds[64];
    char text[64][128];
    int stop_at; /* return 7 at this record (1-based), 0 = never */
} seen_t;

static int on_record(void *arg, uint8_t kind, const uint8_t *p, size_t len)
{
    seen_t *s = arg;
    if (s->n < 64) {
        s->kinds[s->n] = kind;
        snprintf(s->text[s->n], sizeof(s->text[0]), "%.*s", (int)len, (const char *)p);
    }
    s->n++;
    return s->stop_at && s->n == s->stop_at ? 7 : 0;
}

static void reopen_replay(fix_t *f, seen_t *s, uint64_t *nrec)
{
    journal_t *j;
    char err[256];
    assert_int_equal(journal_open(&j, f->prefix, err, sizeof(err)), 0);
    assert_int_equal(journal_replay(j, on_record, s, nrec), 0);
    journal_drop_replayed(j);
    journal_close(j, true);
}

static void test_records_survive_in_order(void **state)
{
    fix_t *f = *state;
    journal_t *j;
    char err[256];
    assert_int_equal(journal_open(&j, f->prefix, err, sizeof(err)), 0);
    uint64_t p1 = add_str(j, 1, "alpha", NULL);
    uint64_t p2 = add_str(j, 2, "be", "ta"); /* parts are concatenated */
    assert_true(p1 > 0 && p2 > p1);
    assert_true(journal_pending(j) == p2);
    assert_int_equal(journal_flush(j), 0);
    assert_int_equal(journal_pending(j), 0);
    add_str(j, 3, "", NULL); /* empty payload */
    add_str(j, 4, "gamma", NULL); /* never flushed explicitly: close flushes */
    journal_close(j, false);      /* a crash-like stop: files kept */

    seen_t s = {0};
    uint64_t n = 0;
    reopen_replay(f, &s, &n);
    assert_int_equal(n, 4);
    assert_int_equal(s.n, 4);
    assert_int_equal(s.kinds[0], 1);
    assert_string_equal(s.text[0], "alpha");
    assert_int_equal(s.kinds[1], 2);
    assert_string_equal(s.text[1], "beta");
    assert_int_equal(s.kinds[2], 3);
    assert_string_equal(s.text[2], "");
    assert_string_equal(s.text[3], "gamma");
    /* dropped and closed clean: nothing left, and nothing replays again */
    assert_int_equal(count_files(f), 0);
    seen_t s2 = {0};
    reopen_replay(f, &s2, &n);
    assert_int_equal(s2.n, 0);
}

static void test_unflushed_records_are_not_on_disk(void **state)
{
    fix_t *f = *state;
    journal_t *j;
    char err[256];
    assert_int_equal(journal_open(&j, f->prefix, err, sizeof(err)), 0);
    add_str(j, 1, "written", NULL);
    assert_int_equal(journal_flush(j), 0);
    add_str(j, 1, "buffered", NULL);
    /* What the file holds now (the state a SIGKILL would leave). */
    char path[256];
    snprintf(path, sizeof(path), "%s.00000001", f->prefix);
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    uint8_t buf[512];
    size_t n = fread(buf, 1, sizeof(buf), fp);
    fclose(fp);
    seen_t s = {0};
    size_t used;
    uint64_t k;
    assert_int_equal(journal_parse(buf, n, on_record, &s, &used, &k), 0);
    assert_true(k == 1 && used == n);
    assert_string_equal(s.text[0], "written");
    journal_close(j, false);
}

/* One process per journal: a second open is refused with a clear reason
 * (it would re-apply and remove what the first is writing); closing, or the
 * holder dying, frees it. */
static void test_second_open_is_refused(void **state)
{
    fix_t *f = *state;
    journal_t *j, *j2 = (journal_t *)1;
    char err[256] = "";
    assert_int_equal(journal_open(&j, f->prefix, err, sizeof(err)), 0);
    assert_int_equal(journal_open(&j2, f->prefix, err, sizeof(err)), -EBUSY);
    assert_null(j2);
    assert_non_null(strstr(err, "another gateway using the same data dir"));
    journal_close(j, false);
    assert_int_equal(journal_open(&j2, f->prefix, err, sizeof(err)), 0);
    journal_close(j2, true);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        journal_t *c;
        char e[256];
        if (journal_open(&c, f->prefix, e, sizeof(e)) != 0) _exit(1);
        kill(getpid(), SIGKILL);
        _exit(2);
    }
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(journal_open(&j2, f->prefix, err, sizeof(err)), 0);
    journal_close(j2, true);
}

/* A crash during a write leaves part of a record: replay ends before it,
 * and a later run appends to new segments without tripping over it. */
static void test_torn_tail_is_ignored(void **state)
{
    fix_t *f = *state;
    journal_t *j;
    char err[256];
    assert_int_equal(journal_open(&j, f->prefix, err, sizeof(err)), 0);
    add_str(j, 1, "one", NULL);
    add_str(j, 1, "two-two-two-two-two", NULL);
    assert_int_equal(journal_flush(j), 0);
    journal_close(j, false);
    char path[256];
    snprintf(path, sizeof(path), "%s.00000001", f->prefix);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    for (off_t cut = sb.st_size - 1; cut > 16 + 3; cut -= 5) {
        assert_int_equal(truncate(path, cut), 0);
        seen_t s = {0};
        journal_t *r;
        assert_int_equal(journal_open(&r, f->prefix, err, sizeof(err)), 0);
        assert_int_equal(journal_replay(r, on_record, &s, NULL), 0);
        assert_int_equal(s.n, 1);
        assert_string_equal(s.text[0], "one");
        journal_close(r, true);
    }
}

static void test_garbage_and_flipped_bits_end_replay(void **state)
{
    fix_t *f = *state;
    journal_t *j;
    char err[256];
    assert_int_equal(journal_open(&j, f->prefix, err, sizeof(err)), 0);
    add_str(j, 1, "first", NULL);
    add_str(j, 1, "second", NULL);
    add_str(j, 1, "third", NULL);
    journal_close(j, false);
    char path[256];
    snprintf(path, sizeof(path), "%s.00000001", f->prefix);
    /* flip one payload byte of the second record */
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    off_t at = 16 + 5 + 16 + 2;
    char c;
    assert_int_equal(pread(fd, &c, 1, at), 1);
    c ^= 0x20;
    assert_int_equal(pwrite(fd, &c, 1, at), 1);
    /* and garbage past the end */
    assert_int_equal(pwrite(fd, "\x01\x01\0\0\xff\xff\xff\x7f", 8, 200), 8);
    close(fd);
    seen_t s = {0};
    uint64_t n;
    reopen_replay(f, &s, &n);
    assert_int_equal(n, 1);
    assert_string_equal(s.text[0], "first");
}

static void test_replay_stops_when_the_callback_says(void **state)
{
    fix_t *f = *state;
    journal_t *j;
    char err[256];
    assert_int_equal(journal_open(&j, f->prefix, err, sizeof(err)), 0);
    for (int i = 0; i < 5; i++) add_str(j, 1, "x", NULL);
    journal_close(j, false);
    seen_t s = {.stop_at = 3};
    assert_int_equal(journal_open(&j, f->prefix, err, sizeof(err)), 0);
    assert_int_equal(journal_replay(j, on_record, &s, NULL), 7);
    assert_int_equal(s.n, 3);
    journal_close(j, false); /* not dropped: the records stay for next time */
    seen_t s2 = {0};
    uint64_t n;
    reopen_replay(f, &s2, &n);
    assert_int_equal(n, 5);
}

/* Segments rotate past JOURNAL_SEGMENT_BYTES; releasing removes the old
 * ones; a wholly released current segment is truncated, not left to grow. */
static void test_release_removes_and_truncates(void **state)
{
    fix_t *f = *state;
    journal_t *j;
    char err[256];
    assert_int_equal(journal_open(&j, f->prefix, err, sizeof(err)), 0);
    static char big[64 * 1024];
    memset(big, 'b', sizeof(big) - 1);
    uint64_t pos = 0;
    int per_seg = (int)(JOURNAL_SEGMENT_BYTES / (sizeof(big) - 1)) + 1;
    for (int i = 0; i < per_seg * 2 + 20; i++) {
        pos = add_str(j, 9, big, NULL);
        assert_true(pos > 0);
        assert_int_equal(journal_flush(j), 0);
    }
    assert_int_equal(count_files(f), 3);
    journal_release(j, pos / 2); /* the first segment only */
    assert_int_equal(count_files(f), 2);
    journal_release(j, pos);
    assert_int_equal(count_files(f), 1);
    char path[256];
    snprintf(path, sizeof(path), "%s.00000003", f->prefix);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_true(sb.st_size == 0); /* truncated: its records are all in the store */
    /* and it is written to again from offset 0 */
    uint64_t p2 = add_str(j, 1, "after", NULL);
    assert_true(p2 > pos);
    assert_int_equal(journal_flush(j), 0);
    journal_stats_t st;
    journal_get_stats(j, &st);
    assert_true(st.segments_removed == 2);
    assert_true(st.errors == 0);
    journal_close(j, false);
    seen_t s = {0};
    uint64_t n;
    reopen_replay(f, &s, &n);
    assert_int_equal(n, 1);
    assert_string_equal(s.text[0], "after");
}

static void test_small_release_keeps_the_segment(void **state)
{
    fix_t *f = *state;
    journal_t *j;
    char err[256];
    assert_int_equal(journal_open(&j, f->prefix, err, sizeof(err)), 0);
    uint64_t p = add_str(j, 1, "kept", NULL);
    assert_int_equal(journal_flush(j), 0);
    journal_release(j, p); /* small: not worth a truncate */
    journal_close(j, false);
    seen_t s = {0};
    uint64_t n;
    reopen_replay(f, &s, &n);
    assert_int_equal(n, 1); /* replaying an applied record again is the store's job to absorb */
}

static void test_open_fails_clearly(void **state)
{
    (void)state;
    journal_t *j = (journal_t *)1;
    char err[256] = "";
    assert_true(journal_open(&j, "/nonexistent-dir-hp/x.journal", err, sizeof(err)) < 0);
    assert_null(j);
    assert_non_null(strstr(err, "/nonexistent-dir-hp"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_records_survive_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unflushed_records_are_not_on_disk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_open_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_is_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_and_flipped_bits_end_replay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay_stops_when_the_callback_says, setup, teardown),
        cmocka_unit_test_setup_teardown(test_release_removes_and_truncates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_small_release_keeps_the_segment, setup, teardown),
        cmocka_unit_test(test_open_fails_clearly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
