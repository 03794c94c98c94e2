/*
 * policy.c - see policy.h. The system-directory list is checked against the
 * resolved path, so `..` and symlinks cannot reach a forbidden place.
 */
#include "auth/policy.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *const forbidden[] = {"/",     "/bin",  "/boot", "/dev",  "/etc", "/lib",
                                        "/lib32", "/lib64", "/proc", "/root", "/sbin", "/sys",
                                        "/usr",  "/var",  "/run",  "/srv",  "/opt", "/home",
                                        "/tmp",  NULL};
/* Prefixes nothing may live under (the tree itself is system-owned). */
static const char *const forbidden_trees[] = {"/bin",  "/boot", "/dev", "/etc",  "/lib",
                                              "/lib32", "/lib64", "/proc", "/sbin", "/sys",
                                              "/usr",  "/run",  NULL};

static int mkdir_p(const char *path)
{
    char tmp[PATH_MAX];
    size_t n = strlen(path);
    if (n >= sizeof(tmp)) return -ENAMETOOLONG;
    memcpy(tmp, path, n + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, 0755) < 0 && errno != EEXIST) return -errno;
        *p = '/';
    }
    if (mkdir(tmp, 0755) < 0 && errno != EEXIST) return -errno;
    return 0;
}

static int under(const char *path, const char *base)
{
    size_t n = strlen(base);
    if (n == 1 && base[0] == '/') return 1;
    return strncmp(path, base, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

int policy_work_dir(const hp_config_t *cfg, const char *requested, char *out, size_t cap,
                    const char **why)
{
    const char *req = requested && requested[0] ? requested : cfg->default_work_dir;
    if (req[0] != '/') {
        *why = "work_dir must be an absolute path";
        return -1;
    }
    if (strlen(req) >= PATH_MAX) {
        *why = "work_dir too long";
        return -1;
    }
    /* Refuse before creating anything: a lexical check on the request. */
    for (int i = 0; forbidden_trees[i]; i++)
        if (under(req, forbidden_trees[i])) {
            *why = "work_dir is a system directory";
            return -1;
        }
    if (mkdir_p(req) < 0) {
        *why = "work_dir cannot be created";
        return -1;
    }
    char real[PATH_MAX];
    if (!realpath(req, real)) {
        *why = "work_dir cannot be resolved";
        return -1;
    }
    struct stat st;
    if (stat(real, &st) < 0 || !S_ISDIR(st.st_mode)) {
        *why = "work_dir is not a directory";
        return -1;
    }
    for (int i = 0; forbidden[i]; i++)
        if (strcmp(real, forbidden[i]) == 0) {
            *why = "work_dir is a system directory";
            return -1;
        }
    for (int i = 0; forbidden_trees[i]; i++)
        if (under(real, forbidden_trees[i])) {
            *why = "work_dir is a system directory";
            return -1;
        }
    if (cfg->n_work_bases > 0) {
        int ok = 0;
        for (int i = 0; i < cfg->n_work_bases && !ok; i++) ok = under(real, cfg->work_bases[i]);
        if (!ok) {
            *why = "work_dir is outside the allowed directories";
            return -1;
        }
    }
    if (strlen(real) >= cap) {
        *why = "work_dir too long";
        return -1;
    }
    memcpy(out, real, strlen(real) + 1);
    return 0;
}
