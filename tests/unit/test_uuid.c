/*
 * test_uuid.c - util/uuid: v5 against known vectors (DNS namespace), v4
 * format, version and variant bits, uniqueness, pool refills, threads, fork,
 * and the strict canonical parser.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "util/uuid.h"

static void v5(const char *name, char out[UUID_STR_LEN])
{
    uuid_v5(out, UUID_NS_DNS, name, strlen(name));
}

static void test_v5_vectors(void **state)
{
    (void)state;
    char u[UUID_STR_LEN];
    v5("anonymous|claude_code||/tmp/hotplex/workspace", u);
    assert_string_equal(u, "61a1af77-1368-5a70-a246-d5c7e0a9aada");
    v5("api_user|claude_code|sess_tab-abc|/tmp", u);
    assert_string_equal(u, "21d0a072-0304-5225-bac9-486901333464");
    v5("test-user|claude_code||/tmp", u);
    assert_string_equal(u, "9e8426d7-53dd-52f2-a375-83e0b44e433d");
    /* RFC 4122 appendix / Python uuid.uuid5(NAMESPACE_DNS, "python.org") */
    v5("python.org", u);
    assert_string_equal(u, "886313e1-3b8a-5372-9b90-0c9aee199e5d");
    /* deterministic; empty name allowed */
    char a[UUID_STR_LEN], b[UUID_STR_LEN];
    uuid_v5(a, UUID_NS_DNS, "", 0);
    uuid_v5(b, UUID_NS_DNS, NULL, 0);
    assert_string_equal(a, b);
    assert_string_equal(a, "4ebd0208-8328-5d69-8c44-ec50939c0967");
    assert_true(uuid_is_valid(a));
    assert_int_equal(a[14], '5');
    assert_int_equal(uuid_v5_r(a, UUID_NS_DNS, "x", 1), 0);
}

static void check_v4(const char *u)
{
    assert_int_equal(strlen(u), 36);
    assert_true(uuid_is_valid(u));
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            assert_int_equal(u[i], '-');
        } else {
            assert_true((u[i] >= '0' && u[i] <= '9') || (u[i] >= 'a' && u[i] <= 'f'));
        }
    }
    assert_int_equal(u[14], '4');           /* version */
    assert_non_null(strchr("89ab", u[19])); /* variant 10xx */
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

static void test_v4_format_and_uniqueness(void **state)
{
    (void)state;
    enum { N = 10000 };
    char(*ids)[UUID_STR_LEN] = malloc(sizeof *ids * N);
    assert_non_null(ids);
    int seen19[4] = {0};
    for (int i = 0; i < N; i++) { /* crosses many 4 KiB pool refills */
        uuid_v4(ids[i]);
        check_v4(ids[i]);
        seen19[strchr("89ab", ids[i][19]) - "89ab"]++;
    }
    for (int k = 0; k < 4; k++)
        assert_true(seen19[k] > N / 8); /* the 2 free variant bits vary */
    qsort(ids, N, sizeof *ids, cmp_str);
    for (int i = 1; i < N; i++)
        assert_true(strcmp(ids[i - 1], ids[i]) != 0);
    free(ids);
}

static void *thread_ids(void *arg)
{
    char(*ids)[UUID_STR_LEN] = arg;
    for (int i = 0; i < 1000; i++)
        uuid_v4(ids[i]);
    return NULL;
}

static void test_v4_threads(void **state)
{
    (void)state;
    enum { T = 4 };
    static char ids[T * 1000][UUID_STR_LEN];
    pthread_t th[T];
    for (int t = 0; t < T; t++)
        assert_int_equal(pthread_create(&th[t], NULL, thread_ids, ids[t * 1000]), 0);
    for (int t = 0; t < T; t++)
        pthread_join(th[t], NULL);
    qsort(ids, T * 1000, UUID_STR_LEN, cmp_str);
    for (int i = 0; i < T * 1000; i++)
        check_v4(ids[i]);
    for (int i = 1; i < T * 1000; i++)
        assert_true(strcmp(ids[i - 1], ids[i]) != 0);
}

/* A forked child must not replay the parent's pool. */
static void test_v4_fork(void **state)
{
    (void)state;
    char parent_first[UUID_STR_LEN], child_first[UUID_STR_LEN], parent_next[UUID_STR_LEN];
    uuid_v4(parent_first); /* pool now filled */
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char u[UUID_STR_LEN];
        uuid_v4(u);
        ssize_t wr = write(fds[1], u, UUID_STR_LEN);
        _exit(wr == UUID_STR_LEN ? 0 : 1);
    }
    close(fds[1]);
    assert_int_equal(read(fds[0], child_first, UUID_STR_LEN), UUID_STR_LEN);
    close(fds[0]);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    uuid_v4(parent_next);
    check_v4(child_first);
    assert_string_not_equal(child_first, parent_next);
}

static void test_parse(void **state)
{
    (void)state;
    unsigned char u[16];
    assert_true(uuid_parse("6ba7b810-9dad-11d1-80b4-00c04fd430c8", u));
    assert_memory_equal(u, UUID_NS_DNS, 16);
    assert_true(uuid_parse("6BA7B810-9DAD-11D1-80B4-00C04FD430C8", u)); /* upper case ok */
    assert_memory_equal(u, UUID_NS_DNS, 16);
    char s[UUID_STR_LEN];
    uuid_format(s, UUID_NS_DNS);
    assert_string_equal(s, "6ba7b810-9dad-11d1-80b4-00c04fd430c8");
    /* round trip */
    char v[UUID_STR_LEN], w[UUID_STR_LEN];
    uuid_v4(v);
    assert_true(uuid_parse(v, u));
    uuid_format(w, u);
    assert_string_equal(v, w);

    assert_true(uuid_is_valid("00000000-0000-0000-0000-000000000000"));
    assert_false(uuid_is_valid(""));
    assert_false(uuid_is_valid(NULL));
    assert_false(uuid_is_valid("6ba7b810-9dad-11d1-80b4-00c04fd430c"));   /* short */
    assert_false(uuid_is_valid("6ba7b810-9dad-11d1-80b4-00c04fd430c8a")); /* long */
    assert_false(uuid_is_valid("6ba7b8109dad11d180b400c04fd430c8"));      /* no dashes */
    assert_false(uuid_is_valid("{6ba7b810-9dad-11d1-80b4-00c04fd430c8}"));
    assert_false(uuid_is_valid("urn:uuid:6ba7b810-9dad-11d1-80b4-00c04fd430c8"));
    assert_false(uuid_is_valid("6ba7b810-9dad-11d1-80b4_00c04fd430c8"));
    assert_false(uuid_is_valid("6ba7b81-09dad-11d1-80b4-00c04fd430c8")); /* dash misplaced */
    assert_false(uuid_is_valid("6ba7b810-9dad-11d1-80b4-00c04fd430cg"));
    assert_false(uuid_is_valid(" 6ba7b810-9dad-11d1-80b4-00c04fd430c8"));
    assert_false(uuid_is_valid("6ba7b810-9dad-11d1-80b4-00c04fd430c8 "));
    assert_false(uuid_is_valid("6ba7b810-9dad-11d1-80b4-00c04fd4\0c8"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v5_vectors), cmocka_unit_test(test_v4_format_and_uniqueness),
        cmocka_unit_test(test_v4_threads), cmocka_unit_test(test_v4_fork),
        cmocka_unit_test(test_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
