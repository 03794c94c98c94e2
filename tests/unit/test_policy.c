/*
 * test_policy.c - policy_work_dir: absolute paths only, normalised, created
 * when missing, never a system directory (also not through `..` or a
 * symlink), inside the allowed bases when configured.
 *
 * Works in a mkdtemp directory. Some cases request paths that resolve into
 * /etc: they must be refused without creating anything there; the test
 * removes what a broken implementation would have created.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth/policy.h"
#include "util/config.h"

/* snprintf into an array, failing the test on truncation. */
#define FMT(buf, ...)                                                                              \
    do {                                                                                           \
        int n_ = snprintf((buf), sizeof(buf), __VA_ARGS__);                                        \
        assert_true(n_ >= 0 && (size_t)n_ < sizeof(buf));                                          \
    } while (0)

typedef struct fx {
    char dir[512]; /* resolved temp dir */
    hp_config_t cfg;
} fx_t;

static int fx_setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    char tmpl[256];
    const char *tmp = getenv("TMPDIR");
    FMT(tmpl, "%s/hotplex-policy-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(tmpl));
    char real[PATH_MAX];
    assert_non_null(realpath(tmpl, real));
    assert_true(strlen(real) < sizeof(f->dir));
    memcpy(f->dir, real, strlen(real) + 1);
    config_defaults(&f->cfg);
    *state = f;
    return 0;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int fx_teardown(void **state)
{
    fx_t *f = *state;
    nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static const char *refused(fx_t *f, const char *req)
{
    char out[PATH_MAX] = "untouched";
    const char *why = NULL;
    int rc = policy_work_dir(&f->cfg, req, out, sizeof(out), &why);
    if (rc != -1) fail_msg("accepted %s as %s", req, out);
    assert_non_null(why);
    assert_true(strlen(why) > 0);
    return why;
}

static void accepted(fx_t *f, const char *req, const char *want)
{
    char out[PATH_MAX] = "";
    const char *why = NULL;
    int rc = policy_work_dir(&f->cfg, req, out, sizeof(out), &why);
    if (rc != 0) fail_msg("refused %s: %s", req, why ? why : "(null)");
    assert_string_equal(out, want);
    struct stat st;
    assert_int_equal(stat(out, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
}

static bool exists(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0;
}

static void test_relative_refused(void **state)
{
    fx_t *f = *state;
    assert_non_null(strstr(refused(f, "work"), "absolute"));
    refused(f, "./work");
    refused(f, "../tmp");
    refused(f, "~/work");
    assert_false(exists("work"));
}

static void test_system_dirs_refused(void **state)
{
    fx_t *f = *state;
    static const char *sys[] = {"/",
                                "/etc",
                                "/etc/",
                                "/usr",
                                "/usr/lib",
                                "/usr/local",
                                "/proc",
                                "/proc/self",
                                "/root",
                                "/root/",
                                "/bin",
                                "/sbin",
                                "/dev",
                                "/sys",
                                "/boot",
                                "/var",
                                "/run",
                                "/tmp",
                                "/home",
                                "/lib",
                                "//etc",
                                "/etc/ssh",
                                "/usr/bin/../lib",
                                "/./etc"};
    for (size_t i = 0; i < sizeof(sys) / sizeof(sys[0]); i++) {
        const char *why = refused(f, sys[i]);
        if (!strstr(why, "system")) fail_msg("%s refused for: %s", sys[i], why);
    }
    /* the request is checked, not only what it resolves to: a new dir in a
     * system tree is not created */
    char p[PATH_MAX];
    FMT(p, "/etc/hotplex-policy-test-%d", (int)getpid());
    refused(f, p);
    bool created = exists(p);
    if (created) rmdir(p);
    assert_false(created);
}

static void test_dotdot_into_etc_refused(void **state)
{
    fx_t *f = *state;
    char p[PATH_MAX];
    /* resolves to /etc itself */
    FMT(p, "%s/a/../../../../../../../../etc", f->dir);
    assert_non_null(strstr(refused(f, p), "system"));
    /* resolves to a new directory under /etc: refused, and nothing created there */
    char victim[128];
    FMT(victim, "/etc/hotplex-dotdot-%d", (int)getpid());
    FMT(p, "%s/../../../../../../../..%s", f->dir, victim);
    refused(f, p);
    bool created = exists(victim);
    if (created) rmdir(victim);
    if (created) fail_msg("refused %s but created %s first", p, victim);
}

static void test_symlink_to_etc_refused(void **state)
{
    fx_t *f = *state;
    char link[PATH_MAX], p[PATH_MAX];
    FMT(link, "%s/evil", f->dir);
    assert_int_equal(symlink("/etc", link), 0);
    assert_non_null(strstr(refused(f, link), "system"));
    FMT(p, "%s/evil/", f->dir);
    refused(f, p);
    /* an existing dir behind the link */
    FMT(p, "%s/evil/ssh", f->dir);
    if (exists("/etc/ssh")) refused(f, p);
    /* a new dir behind the link: refused and not created in /etc */
    char victim[128];
    FMT(victim, "/etc/hotplex-symlink-%d", (int)getpid());
    FMT(p, "%s/evil/%s", f->dir, victim + 5);
    refused(f, p);
    bool created = exists(victim);
    if (created) rmdir(victim);
    if (created) fail_msg("refused %s but created %s first", p, victim);
    /* a symlink chain to / */
    char link2[PATH_MAX];
    FMT(link2, "%s/root", f->dir);
    assert_int_equal(symlink("/", link2), 0);
    refused(f, link2);
}

static void test_missing_dir_created(void **state)
{
    fx_t *f = *state;
    char p[PATH_MAX];
    FMT(p, "%s/a/b/c", f->dir);
    assert_false(exists(p));
    accepted(f, p, p);
    /* again: already there, same answer */
    accepted(f, p, p);
    /* a dir created mode 0755 */
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    mode_t mask = umask(0);
    umask(mask);
    assert_int_equal(st.st_mode & 0777, 0755 & ~mask);
}

static void test_normalised(void **state)
{
    fx_t *f = *state;
    char p[PATH_MAX], want[PATH_MAX];
    FMT(p, "%s//x/./y/../z/", f->dir);
    FMT(want, "%s/x/z", f->dir);
    accepted(f, p, want);
    /* a symlink to an allowed place resolves to that place */
    char link[PATH_MAX];
    FMT(link, "%s/ln", f->dir);
    assert_int_equal(symlink(want, link), 0);
    accepted(f, link, want);
    /* the temp dir itself */
    accepted(f, f->dir, f->dir);
}

static void test_default_work_dir(void **state)
{
    fx_t *f = *state;
    char want[PATH_MAX];
    FMT(want, "%s/default", f->dir);
    FMT(f->cfg.default_work_dir, "%s", want);
    accepted(f, "", want);
    accepted(f, NULL, want);
}

static void test_not_a_directory(void **state)
{
    fx_t *f = *state;
    char p[PATH_MAX];
    FMT(p, "%s/file", f->dir);
    FILE *fp = fopen(p, "w");
    assert_non_null(fp);
    fclose(fp);
    refused(f, p);
    FMT(p, "%s/file/sub", f->dir);
    refused(f, p);
}

static void test_out_too_small(void **state)
{
    fx_t *f = *state;
    char out[8];
    const char *why = NULL;
    assert_int_equal(policy_work_dir(&f->cfg, f->dir, out, sizeof(out), &why), -1);
    assert_non_null(why);
    /* a request longer than PATH_MAX */
    char *big = malloc(PATH_MAX + 16);
    assert_non_null(big);
    big[0] = '/';
    memset(big + 1, 'a', PATH_MAX + 10);
    big[PATH_MAX + 11] = '\0';
    assert_non_null(strstr(refused(f, big), "long"));
    free(big);
}

static void test_allowed_bases(void **state)
{
    fx_t *f = *state;
    char base[PATH_MAX], other[PATH_MAX], p[PATH_MAX];
    FMT(base, "%s/base", f->dir);
    assert_int_equal(mkdir(base, 0755), 0);
    char err[256];
    assert_int_equal(config_set(&f->cfg, "worker.work_bases", base, err, sizeof(err)), 0);
    assert_int_equal(f->cfg.n_work_bases, 1);

    accepted(f, base, base);
    FMT(p, "%s/proj/one", base);
    accepted(f, p, p);
    /* outside */
    FMT(other, "%s/other", f->dir);
    assert_non_null(strstr(refused(f, other), "outside"));
    /* a sibling sharing the prefix is not inside */
    FMT(p, "%s/base2", f->dir);
    refused(f, p);
    FMT(p, "%sx", base);
    refused(f, p);
    /* escaping with .. */
    FMT(p, "%s/../other2", base);
    refused(f, p);
    /* escaping with a symlink inside the base */
    char link[PATH_MAX];
    FMT(link, "%s/out", base);
    assert_int_equal(symlink(f->dir, link), 0);
    refused(f, link);
    /* a second base */
    char base3[PATH_MAX];
    FMT(base3, "%s/third", f->dir);
    assert_int_equal(config_set(&f->cfg, "worker.work_bases", base3, err, sizeof(err)), 0);
    FMT(p, "%s/x", base3);
    accepted(f, p, p);
    /* the default work dir is subject to the same rule */
    FMT(f->cfg.default_work_dir, "%s/dflt", f->dir);
    refused(f, "");
    /* system dirs stay refused even when a base would contain them */
    assert_int_equal(config_set(&f->cfg, "worker.work_bases", "/", err, sizeof(err)), 0);
    refused(f, "/etc");
    FMT(p, "%s/anywhere", f->dir);
    accepted(f, p, p);
}

/* A refused request leaves no trace: nothing is created outside the bases. */
static void test_outside_bases_not_created(void **state)
{
    fx_t *f = *state;
    char base[PATH_MAX], other[PATH_MAX];
    FMT(base, "%s/base", f->dir);
    assert_int_equal(mkdir(base, 0755), 0);
    char err[256];
    assert_int_equal(config_set(&f->cfg, "worker.work_bases", base, err, sizeof(err)), 0);
    FMT(other, "%s/other/deep", f->dir);
    refused(f, other);
    FMT(other, "%s/other", f->dir);
    assert_false(exists(other));
}

static void test_model_and_tool_allow_lists(void **state)
{
    fx_t *f = *state;
    const char *why = NULL;
    char err[256];
    /* no lists: anything goes */
    assert_int_equal(policy_agent_options(&f->cfg, "any-model", "Bash,Read", &why), 0);
    assert_int_equal(config_set(&f->cfg, "worker.allowed_models", "m-ok", err, sizeof(err)), 0);
    assert_int_equal(config_set(&f->cfg, "worker.allowed_tools", "Read", err, sizeof(err)), 0);
    assert_int_equal(config_set(&f->cfg, "worker.allowed_tools", "Grep", err, sizeof(err)), 0);
    assert_int_equal(policy_agent_options(&f->cfg, "m-ok", "Read,Grep", &why), 0);
    assert_int_equal(policy_agent_options(&f->cfg, "", "", &why), 0); /* agent defaults */
    assert_int_equal(policy_agent_options(&f->cfg, "m-other", "", &why), -1);
    assert_non_null(strstr(why, "worker.allowed_models"));
    assert_int_equal(policy_agent_options(&f->cfg, "m-ok", "Read,Bash", &why), -1);
    assert_non_null(strstr(why, "worker.allowed_tools"));
    /* a prefix of an allowed name is not that name */
    assert_int_equal(policy_agent_options(&f->cfg, "m-o", "", &why), -1);
    assert_int_equal(policy_agent_options(&f->cfg, "", "Rea", &why), -1);
}

static void test_agent_bin_allow_list(void **state)
{
    fx_t *f = *state;
    const char *why = NULL;
    char err[256], link[PATH_MAX];
    assert_int_equal(policy_agent_bin(&f->cfg, "/bin/true", &why), 0); /* no list */
    assert_int_equal(config_set(&f->cfg, "worker.allowed_bins", "/bin/true", err, sizeof(err)), 0);
    assert_int_equal(policy_agent_bin(&f->cfg, "/bin/true", &why), 0);
    assert_int_equal(policy_agent_bin(&f->cfg, "true", &why), 0); /* through PATH */
    assert_int_equal(policy_agent_bin(&f->cfg, "/bin/false", &why), -1);
    assert_non_null(strstr(why, "worker.allowed_bins"));
    assert_int_equal(policy_agent_bin(&f->cfg, "/nonexistent/agent", &why), -1);
    /* a symlink to an allowed binary is that binary; one to another is not */
    FMT(link, "%s/to_true", f->dir);
    assert_int_equal(symlink("/bin/true", link), 0);
    assert_int_equal(policy_agent_bin(&f->cfg, link, &why), 0);
    FMT(link, "%s/to_false", f->dir);
    assert_int_equal(symlink("/bin/false", link), 0);
    assert_int_equal(policy_agent_bin(&f->cfg, link, &why), -1);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)
    const struct CMUnitTest tests[] = {
        T(test_relative_refused),
        T(test_system_dirs_refused),
        T(test_dotdot_into_etc_refused),
        T(test_symlink_to_etc_refused),
        T(test_missing_dir_created),
        T(test_normalised),
        T(test_default_work_dir),
        T(test_not_a_directory),
        T(test_out_too_small),
        T(test_allowed_bases),
        T(test_outside_bases_not_created),
        T(test_model_and_tool_allow_lists),
        T(test_agent_bin_allow_list),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
