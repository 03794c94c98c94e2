/*
 * test_hmap.c - hmap.h: put/get/replace/del, growth to 100k keys, and
 * iteration (each entry exactly once, deleting the current entry allowed).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/hmap.h"

#define NKEYS 100000

typedef struct item {
    char key[16];
    int n;
    int seen;
} item_t;

static item_t *make_items(int n)
{
    item_t *it = calloc((size_t)n, sizeof(*it));
    assert_non_null(it);
    for (int i = 0; i < n; i++) {
        snprintf(it[i].key, sizeof(it[i].key), "key-%d", i);
        it[i].n = i;
    }
    return it;
}

static void test_empty(void **state)
{
    (void)state;
    hmap_t m;
    hmap_init(&m);
    assert_null(hmap_get(&m, "x"));
    assert_null(hmap_del(&m, "x"));
    assert_int_equal(m.count, 0);
    int visits = 0;
    for (hmap_iter_t it = {0}; hmap_next(&m, &it);)
        visits++;
    assert_int_equal(visits, 0);
    hmap_free(&m);
    hmap_free(&m); /* free of a freed (re-inited) map is fine */
}

static void test_put_get_replace_del(void **state)
{
    (void)state;
    hmap_t m;
    hmap_init(&m);
    int a = 1, b = 2, c = 3;
    assert_int_equal(hmap_put(&m, "alpha", &a), 0);
    assert_int_equal(hmap_put(&m, "beta", &b), 0);
    assert_int_equal(m.count, 2);
    assert_ptr_equal(hmap_get(&m, "alpha"), &a);
    assert_ptr_equal(hmap_get(&m, "beta"), &b);
    assert_null(hmap_get(&m, "gamma"));
    assert_null(hmap_get(&m, "alph"));
    assert_null(hmap_get(&m, "alphaa"));
    assert_null(hmap_get(&m, ""));

    /* replace: same count, new value; the key pointer may change (a value
     * owns its key, so a replacement brings its own copy) */
    char key2[] = "alpha";
    assert_int_equal(hmap_put(&m, key2, &c), 0);
    assert_int_equal(m.count, 2);
    assert_ptr_equal(hmap_get(&m, "alpha"), &c);
    int found = 0;
    for (hmap_iter_t it = {0}; hmap_next(&m, &it);)
        if (it.value == &c) {
            assert_ptr_equal(it.e->key, key2);
            found++;
        }
    assert_int_equal(found, 1);

    /* the empty string is a key like any other */
    assert_int_equal(hmap_put(&m, "", &a), 0);
    assert_ptr_equal(hmap_get(&m, ""), &a);
    assert_int_equal(m.count, 3);

    /* del returns the value, then the key is gone */
    assert_ptr_equal(hmap_del(&m, "alpha"), &c);
    assert_int_equal(m.count, 2);
    assert_null(hmap_get(&m, "alpha"));
    assert_null(hmap_del(&m, "alpha"));
    assert_int_equal(m.count, 2);
    assert_ptr_equal(hmap_get(&m, "beta"), &b);
    assert_ptr_equal(hmap_del(&m, ""), &a);
    assert_ptr_equal(hmap_del(&m, "beta"), &b);
    assert_int_equal(m.count, 0);
    /* re-insert after delete */
    assert_int_equal(hmap_put(&m, "beta", &c), 0);
    assert_ptr_equal(hmap_get(&m, "beta"), &c);
    /* NULL values are stored (get cannot tell them from absence) */
    assert_int_equal(hmap_put(&m, "nil", NULL), 0);
    assert_int_equal(m.count, 2);
    hmap_free(&m);
    assert_int_equal(m.count, 0);
    assert_null(m.buckets);
}

static void test_100k_growth(void **state)
{
    (void)state;
    item_t *items = make_items(NKEYS);
    hmap_t m;
    hmap_init(&m);
    size_t nb = 0;
    int grew = 0;
    for (int i = 0; i < NKEYS; i++) {
        assert_int_equal(hmap_put(&m, items[i].key, &items[i]), 0);
        if (m.nbuckets != nb) {
            if (nb) assert_int_equal(m.nbuckets, nb * 2);
            nb = m.nbuckets;
            grew++;
            /* everything inserted so far survives the rehash */
            for (int j = 0; j <= i; j += (i / 64) + 1)
                assert_ptr_equal(hmap_get(&m, items[j].key), &items[j]);
        }
        /* load factor kept at most 3/4 */
        assert_true(m.count * 4 <= m.nbuckets * 3);
    }
    assert_int_equal(m.count, NKEYS);
    assert_true(grew >= 10);
    assert_true((m.nbuckets & (m.nbuckets - 1)) == 0);
    for (int i = 0; i < NKEYS; i++) {
        item_t *v = hmap_get(&m, items[i].key);
        assert_non_null(v);
        assert_int_equal(v->n, i);
    }
    /* lookups by an equal string at a different address */
    char k[16];
    snprintf(k, sizeof(k), "key-%d", 77777);
    assert_ptr_equal(hmap_get(&m, k), &items[77777]);
    snprintf(k, sizeof(k), "key-%d", NKEYS);
    assert_null(hmap_get(&m, k));
    /* replace every 10th */
    for (int i = 0; i < NKEYS; i += 10)
        assert_int_equal(hmap_put(&m, items[i].key, &items[i + 1]), 0);
    assert_int_equal(m.count, NKEYS);
    for (int i = 0; i < NKEYS; i++)
        assert_ptr_equal(hmap_get(&m, items[i].key), i % 10 ? &items[i] : &items[i + 1]);
    /* delete the odd ones */
    for (int i = 1; i < NKEYS; i += 2)
        assert_ptr_equal(hmap_del(&m, items[i].key), &items[i]);
    assert_int_equal(m.count, NKEYS / 2);
    for (int i = 0; i < NKEYS; i++) {
        if (i % 2)
            assert_null(hmap_get(&m, items[i].key));
        else
            assert_non_null(hmap_get(&m, items[i].key));
    }
    hmap_free(&m);
    free(items);
}

static void test_iterate_each_once(void **state)
{
    (void)state;
    item_t *items = make_items(NKEYS);
    hmap_t m;
    hmap_init(&m);
    for (int i = 0; i < NKEYS; i++)
        assert_int_equal(hmap_put(&m, items[i].key, &items[i]), 0);
    int visits = 0;
    for (hmap_iter_t it = {0}; hmap_next(&m, &it);) {
        item_t *v = it.value;
        assert_ptr_equal(it.e->value, v);
        assert_ptr_equal(it.e->key, v->key);
        v->seen++;
        visits++;
    }
    assert_int_equal(visits, NKEYS);
    for (int i = 0; i < NKEYS; i++)
        assert_int_equal(items[i].seen, 1);
    hmap_free(&m);

    /* a single entry */
    hmap_init(&m);
    assert_int_equal(hmap_put(&m, "only", &items[0]), 0);
    visits = 0;
    for (hmap_iter_t it = {0}; hmap_next(&m, &it);) {
        assert_ptr_equal(it.value, &items[0]);
        visits++;
    }
    assert_int_equal(visits, 1);
    hmap_free(&m);
    free(items);
}

static void test_iterate_delete_current(void **state)
{
    (void)state;
    item_t *items = make_items(NKEYS);
    hmap_t m;
    hmap_init(&m);
    for (int i = 0; i < NKEYS; i++)
        assert_int_equal(hmap_put(&m, items[i].key, &items[i]), 0);

    /* delete every entry whose number is divisible by 3, while iterating */
    int visits = 0, deleted = 0;
    for (hmap_iter_t it = {0}; hmap_next(&m, &it);) {
        item_t *v = it.value;
        v->seen++;
        visits++;
        if (v->n % 3 == 0) {
            assert_ptr_equal(hmap_del(&m, v->key), v);
            deleted++;
        }
    }
    assert_int_equal(visits, NKEYS);
    for (int i = 0; i < NKEYS; i++)
        assert_int_equal(items[i].seen, 1);
    assert_int_equal(m.count, (size_t)(NKEYS - deleted));
    for (int i = 0; i < NKEYS; i++) {
        if (i % 3 == 0)
            assert_null(hmap_get(&m, items[i].key));
        else
            assert_ptr_equal(hmap_get(&m, items[i].key), &items[i]);
    }

    /* delete everything while iterating (the gateway frees sessions this way) */
    for (int i = 0; i < NKEYS; i++)
        items[i].seen = 0;
    visits = 0;
    for (hmap_iter_t it = {0}; hmap_next(&m, &it);) {
        item_t *v = it.value;
        v->seen++;
        visits++;
        assert_ptr_equal(hmap_del(&m, v->key), v);
    }
    assert_int_equal(visits, NKEYS - deleted);
    assert_int_equal(m.count, 0);
    for (int i = 0; i < NKEYS; i++)
        assert_int_equal(items[i].seen, i % 3 ? 1 : 0);
    visits = 0;
    for (hmap_iter_t it = {0}; hmap_next(&m, &it);)
        visits++;
    assert_int_equal(visits, 0);
    hmap_free(&m);
    free(items);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_put_get_replace_del),
        cmocka_unit_test(test_100k_growth),
        cmocka_unit_test(test_iterate_each_once),
        cmocka_unit_test(test_iterate_delete_current),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
