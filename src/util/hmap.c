/*
 * hmap.c - see hmap.h. FNV-1a hashing; iteration tolerates deleting the
 * current entry (the next one is fetched before yielding).
 */
#include "util/hmap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static unsigned hash_str(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

void hmap_init(hmap_t *m)
{
    memset(m, 0, sizeof(*m));
}

void hmap_free(hmap_t *m)
{
    for (size_t i = 0; i < m->nbuckets; i++) {
        hmap_entry_t *e = m->buckets[i];
        while (e) {
            hmap_entry_t *n = e->next;
            free(e);
            e = n;
        }
    }
    free(m->buckets);
    memset(m, 0, sizeof(*m));
}

static int grow(hmap_t *m)
{
    size_t nb = m->nbuckets ? m->nbuckets * 2 : 64;
    hmap_entry_t **b = calloc(nb, sizeof(*b));
    if (!b) return -ENOMEM;
    for (size_t i = 0; i < m->nbuckets; i++) {
        hmap_entry_t *e = m->buckets[i];
        while (e) {
            hmap_entry_t *n = e->next;
            e->next = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
            e = n;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = nb;
    return 0;
}

void *hmap_get(const hmap_t *m, const char *key)
{
    if (!m->nbuckets) return NULL;
    unsigned h = hash_str(key);
    for (hmap_entry_t *e = m->buckets[h & (m->nbuckets - 1)]; e; e = e->next)
        if (e->hash == h && strcmp(e->key, key) == 0) return e->value;
    return NULL;
}

int hmap_put(hmap_t *m, const char *key, void *value)
{
    unsigned h = hash_str(key);
    if (m->nbuckets) {
        for (hmap_entry_t *e = m->buckets[h & (m->nbuckets - 1)]; e; e = e->next)
            if (e->hash == h && strcmp(e->key, key) == 0) {
                e->key = key;
                e->value = value;
                return 0;
            }
    }
    if (m->count + 1 > m->nbuckets * 3 / 4 && grow(m) < 0) return -ENOMEM;
    hmap_entry_t *e = malloc(sizeof(*e));
    if (!e) return -ENOMEM;
    e->key = key;
    e->hash = h;
    e->value = value;
    e->next = m->buckets[h & (m->nbuckets - 1)];
    m->buckets[h & (m->nbuckets - 1)] = e;
    m->count++;
    return 0;
}

void *hmap_del(hmap_t *m, const char *key)
{
    if (!m->nbuckets) return NULL;
    unsigned h = hash_str(key);
    hmap_entry_t **pp = &m->buckets[h & (m->nbuckets - 1)];
    for (; *pp; pp = &(*pp)->next) {
        hmap_entry_t *e = *pp;
        if (e->hash == h && strcmp(e->key, key) == 0) {
            void *v = e->value;
            *pp = e->next;
            free(e);
            m->count--;
            return v;
        }
    }
    return NULL;
}

int hmap_next(const hmap_t *m, hmap_iter_t *it)
{
    hmap_entry_t *e = it->e ? it->next : NULL;
    if (!it->e) it->bucket = 0;
    else if (!e) it->bucket++;
    while (!e && it->bucket < m->nbuckets) {
        e = m->buckets[it->bucket];
        if (!e) it->bucket++;
    }
    if (!e) return 0;
    it->e = e;
    it->next = e->next;
    it->value = e->value;
    return 1;
}
