/*
 * fuzz_config.c - libFuzzer target for util/config (config_load_buffer and
 * config_load_env).
 *
 * Owns: the properties every input must satisfy: a load either succeeds or
 * fails with a message that starts with the file name and leaves the config
 * byte for byte unchanged (all or nothing); a loaded config's every value
 * prints as text that config_set accepts back, giving the same config (diff
 * 0); config_validate, config_diff and config_apply_reloadable are safe on
 * whatever loaded; config_free releases everything (LeakSanitizer). The
 * input is also read as an environment, one "NAME=value" per line, with the
 * same all-or-nothing rule.
 * Must never: keep state between inputs or accept a property failure silently
 * (every check aborts).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/config.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct copy_ctx {
    hp_config_t *into;
} copy_ctx_t;

/* Scalars go back through config_set; lists are copied below. */
static void on_key(void *arg, const char *key, const char *value, const char *desc, bool secret)
{
    copy_ctx_t *x = arg;
    config_key_meta_t m;
    CHECK(config_key_meta(key, &m) == 0);
    CHECK(desc && desc[0]);
    CHECK(secret == m.secret);
    if (m.list) return;
    char err[512];
    if (config_set(x->into, key, value, err, sizeof(err)) != 0) {
        fprintf(stderr, "round trip %s=\"%s\": %s\n", key, value, err);
        abort();
    }
}

static void fuzz_file(const uint8_t *data, size_t size)
{
    static hp_config_t c, before, copy;
    config_defaults(&c);
    before = c;
    char err[512] = "";
    int rc = config_load_buffer(&c, "fuzz.yaml", (const char *)data, size, err, sizeof(err));
    if (rc != 0) {
        CHECK(rc == -1);
        CHECK(strncmp(err, "fuzz.yaml", 9) == 0);
        CHECK(memcmp(&c, &before, sizeof(c)) == 0);
        return;
    }
    char verr[512];
    (void)config_validate(&c, verr, sizeof(verr));

    /* print, parse back, compare */
    config_defaults(&copy);
    copy_ctx_t x = {&copy};
    CHECK(config_foreach(&c, on_key, &x) == 0);
    for (size_t i = 0; i < config_key_count(); i++) { /* lists: start empty, copy */
        config_key_meta_t m;
        CHECK(config_key_meta(config_key_name(i), &m) == 0);
        if (m.list) {
            CHECK(m.reloadable);
            CHECK(config__list_clear(&copy, config_key_name(i)) == 0);
        }
    }
    CHECK(config_apply_reloadable(&copy, &c) >= 0);
    CHECK(config_diff(&c, &copy, NULL, NULL) == 0);
    CHECK(config_apply_reloadable(&copy, &c) == 0);

    /* the copy owns its own strings: freeing the original leaves it intact */
    config_free(&c);
    hp_config_t d;
    config_defaults(&d);
    (void)config_diff(&d, &copy, NULL, NULL);
    config_free(&copy);
}

static void fuzz_env(const uint8_t *data, size_t size)
{
    /* each line "NAME=value"; names get the HOTPLEX_ prefix half the time */
    char *text = malloc(size + 1);
    CHECK(text);
    memcpy(text, data, size);
    text[size] = '\0';
    char *vars[64];
    char *owned[64];
    int n = 0, no = 0;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line && n < 63;
         line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '+') { /* "+SERVER_LISTEN=..." means HOTPLEX_SERVER_LISTEN=... */
            size_t l = strlen(line);
            char *v = malloc(l + 8);
            CHECK(v);
            memcpy(v, "HOTPLEX_", 8);
            memcpy(v + 8, line + 1, l);
            vars[n++] = owned[no++] = v;
        } else {
            vars[n++] = line;
        }
    }
    vars[n] = NULL;
    static hp_config_t c, before;
    config_defaults(&c);
    before = c;
    char err[512] = "";
    int rc = config_load_env(&c, vars, err, sizeof(err));
    if (rc != 0) {
        CHECK(rc == -1);
        CHECK(strncmp(err, "HOTPLEX_", 8) == 0 || strstr(err, "out of memory"));
        CHECK(memcmp(&c, &before, sizeof(c)) == 0);
    } else {
        /* owned: wiping the environment leaves the config intact */
        for (int i = 0; i < no; i++)
            memset(owned[i], 'X', strlen(owned[i]));
        memset(text, 'X', size);
        const char *const *lists[] = {c.allowed_origins, c.work_bases, c.env_extra, c.env_pass};
        const int counts[] = {c.n_allowed_origins, c.n_work_bases, c.n_env_extra, c.n_env_pass};
        for (int l = 0; l < 4; l++) {
            for (int i = 0; i < counts[l]; i++) {
                const char *p = lists[l][i];
                CHECK(!(p >= text && p <= text + size));
                for (int j = 0; j < no; j++)
                    CHECK(!(p >= owned[j] && p <= owned[j] + strlen(owned[j])));
            }
        }
        char verr[512];
        (void)config_validate(&c, verr, sizeof(verr));
    }
    config_free(&c);
    for (int i = 0; i < no; i++)
        free(owned[i]);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a leading "#env\n" selects the environment reader */
    if (size >= 5 && memcmp(data, "#env\n", 5) == 0)
        fuzz_env(data + 5, size - 5);
    else
        fuzz_file(data, size);
    return 0;
}
