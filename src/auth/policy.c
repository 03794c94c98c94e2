/*
 * policy.c - see policy.h. The system-directory list is checked against the
 * resolved path, so `..` and symlinks cannot reach a forbidden place.
 */
#include "auth/policy.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* Where `req` would land, resolved the way the kernel would: existing
 * components through realpath (symlinks followed), "." skipped, ".." taken
 * from the real parent; components that do not exist yet are appended. */
static int resolve_future(const char *req, char *out, size_t cap)
{
    char cur[PATH_MAX] = "/";
    bool exists = true;
    const char *p = req;
    while (*p) {
        while (*p == '/') p++;
        if (!*p) break;
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 1 && p[0] == '.') {
            /* nothing */
        } else if (len == 2 && p[0] == '.' && p[1] == '.') {
            char *slash = strrchr(cur, '/');
            if (slash == cur) cur[1] = '\0';
            else if (slash) *slash = '\0';
            exists = access(cur, F_OK) == 0; /* back on real ground: follow links again */
        } else {
            size_t n = strlen(cur);
            if (n + 1 + len >= sizeof(cur)) return -1;
            if (n > 1) cur[n++] = '/';
            memcpy(cur + n, p, len);
            cur[n + len] = '\0';
            if (exists) {
                char real[PATH_MAX];
                if (realpath(cur, real)) memcpy(cur, real, strlen(real) + 1);
                else exists = false;
            }
        }
        p += len;
    }
    if (strlen(cur) >= cap) return -1;
    memcpy(out, cur, strlen(cur) + 1);
    return 0;
}

static const char *check_path(const hp_config_t *cfg, const char *path)
{
    for (int i = 0; forbidden[i]; i++)
        if (strcmp(path, forbidden[i]) == 0) return "work_dir is a system directory";
    for (int i = 0; forbidden_trees[i]; i++)
        if (under(path, forbidden_trees[i])) return "work_dir is a system directory";
    if (cfg->n_work_bases > 0) {
        int ok = 0;
        for (int i = 0; i < cfg->n_work_bases && !ok; i++) ok = under(path, cfg->work_bases[i]);
        if (!ok) return "work_dir is outside the allowed directories";
    }
    return NULL;
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
    /* Check where the path really leads before creating anything, so `..`
     * and symlinks cannot make us create directories in forbidden places. */
    char future[PATH_MAX];
    if (resolve_future(req, future, sizeof(future)) < 0) {
        *why = "work_dir cannot be resolved";
        return -1;
    }
    if ((*why = check_path(cfg, future))) return -1;
    /* never create a new top-level directory (an existing one, say /srv or
     * /work, is fine): "/anything" must not become a work dir by accident */
    if (strchr(future + 1, '/') == NULL && access(future, F_OK) != 0) {
        *why = "work_dir would create a new top-level directory";
        return -1;
    }
    if (mkdir_p(future) < 0) {
        *why = "work_dir cannot be created";
        return -1;
    }
    /* and again on the real result (something may have changed meanwhile) */
    char real[PATH_MAX];
    struct stat st;
    if (!realpath(future, real) || stat(real, &st) < 0 || !S_ISDIR(st.st_mode)) {
        *why = "work_dir is not a directory";
        return -1;
    }
    if ((*why = check_path(cfg, real))) return -1;
    if (strlen(real) >= cap) {
        *why = "work_dir too long";
        return -1;
    }
    memcpy(out, real, strlen(real) + 1);
    return 0;
}

static bool listed(const char *const *list, int n, const char *v, size_t len)
{
    for (int i = 0; i < n; i++)
        if (strlen(list[i]) == len && memcmp(list[i], v, len) == 0) return true;
    return false;
}

int policy_agent_options(const hp_config_t *cfg, const char *model, const char *tools,
                         const char **why)
{
    if (cfg->n_allowed_models > 0 && model && model[0] &&
        !listed(cfg->allowed_models, cfg->n_allowed_models, model, strlen(model))) {
        *why = "config.model is not allowed (worker.allowed_models)";
        return -1;
    }
    if (cfg->n_allowed_tools > 0 && tools) {
        for (const char *p = tools; *p;) {
            const char *e = strchr(p, ',');
            size_t len = e ? (size_t)(e - p) : strlen(p);
            if (len && !listed(cfg->allowed_tools, cfg->n_allowed_tools, p, len)) {
                *why = "config.allowed_tools names a tool that is not allowed (worker.allowed_tools)";
                return -1;
            }
            p += len + (e ? 1 : 0);
        }
    }
    return 0;
}

/* `bin` as the kernel would run it: a path as given, a bare name through PATH;
 * then symlinks resolved. */
static bool resolve_bin(const char *bin, char out[PATH_MAX])
{
    if (strchr(bin, '/')) return realpath(bin, out) != NULL;
    const char *path = getenv("PATH");
    if (!path) return false;
    char cand[PATH_MAX];
    for (const char *p = path; *p;) {
        const char *e = strchr(p, ':');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len && len + strlen(bin) + 2 < sizeof(cand)) {
            snprintf(cand, sizeof(cand), "%.*s/%s", (int)len, p, bin);
            if (access(cand, X_OK) == 0 && realpath(cand, out)) return true;
        }
        p += len + (e ? 1 : 0);
    }
    return false;
}

int policy_agent_bin(const hp_config_t *cfg, const char *bin, const char **why)
{
    if (cfg->n_allowed_bins == 0) return 0;
    char real[PATH_MAX], allowed[PATH_MAX];
    if (!resolve_bin(bin, real)) {
        *why = "agent executable not found";
        return -1;
    }
    for (int i = 0; i < cfg->n_allowed_bins; i++)
        if (resolve_bin(cfg->allowed_bins[i], allowed) && strcmp(real, allowed) == 0) return 0;
    *why = "agent executable is not in worker.allowed_bins";
    return -1;
}
