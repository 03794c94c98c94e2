/*
 * hmap.h - string-keyed hash map of pointers (open chaining, grows by
 * doubling). Keys are not copied: the value must own its key and keep it
 * unchanged while in the map. Single-threaded.
 */
#ifndef HOTPLEX_HMAP_H
#define HOTPLEX_HMAP_H

#include <stddef.h>

typedef struct hmap_entry {
    struct hmap_entry *next;
    const char *key;
    unsigned hash;
    void *value;
} hmap_entry_t;

typedef struct hmap {
    hmap_entry_t **buckets;
    size_t nbuckets, count;
} hmap_t;

void hmap_init(hmap_t *m);
void hmap_free(hmap_t *m);
void *hmap_get(const hmap_t *m, const char *key);
int hmap_put(hmap_t *m, const char *key, void *value); /* replaces; 0 or -ENOMEM */
void *hmap_del(hmap_t *m, const char *key);           /* returns removed value */
/* Iterate: for (hmap_iter_t it = {0}; hmap_next(m, &it);) use it.value */
typedef struct hmap_iter {
    size_t bucket;
    hmap_entry_t *e, *next;
    void *value;
} hmap_iter_t;
int hmap_next(const hmap_t *m, hmap_iter_t *it);

#endif
