/*
 * main.c - the `hotplex` command line: `serve` runs the gateway; `version`;
 * the client commands (chat, token, sessions, doctor, config) live in cli/.
 * `serve` owns start-up order (config, store, listener) and shutdown order
 * (stop accepting, close clients 1001, stop agents, flush the store, exit 0).
 */
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "admin/admin.h"
#include "auth/auth.h"
#include "cli/cli.h"
#include "core/gateway.h"
#include "net/server.h"
#include "util/clock.h"
#include "util/config.h"
#include "util/log.h"

static const char usage_serve[] =
    "usage: hotplex serve [--config FILE] [--listen HOST:PORT] [--data-dir DIR] [--keys FILE]\n"
    "                     [--set KEY=VALUE ...] [--log-level debug|info|warn|error] [--log-json]\n"
    "\n"
    "Runs the gateway: AEP v1 WebSocket at ws://HOST:PORT/ws, health at /health.\n"
    "  --listen HOST:PORT  where to listen (default 127.0.0.1:8888; port 0 picks a free port)\n"
    "  --data-dir DIR      where the SQLite store lives (default .data)\n"
    "  --config FILE       YAML configuration (also $HOTPLEX_CONFIG); HOTPLEX_<SECTION>_<KEY>\n"
    "                      environment variables override it, command-line options override both\n"
    "  --keys FILE         API keys, one user:key per line (auth.keys_file)\n"
    "  --set KEY=VALUE     any setting, e.g. --set server.max_frame_size=65536\n"
    "                      (docs/configuration.md lists every key)\n"
    "Without keys or a JWT key the gateway runs in dev mode (loopback only, user anonymous).\n"
    "SIGHUP reloads the configuration and credentials. The first line on stdout is\n"
    "`listening on HOST:PORT`, the second `admin listening on HOST:PORT` (the admin API and\n"
    "/metrics, admin.listen, default 127.0.0.1:9999; docs/operations.md).\n";

static const char usage_main[] = "usage: hotplex <command> [options]\n"
                                 "\n"
                                 "commands:\n"
                                 "  serve     run the gateway\n"
                                 "  chat      talk to an agent through a gateway (interactive or -p)\n"
                                 "  token     mint a JWT the gateway accepts\n"
                                 "  sessions  list, show, terminate or delete sessions (admin API)\n"
                                 "  doctor    check the setup and say what to fix\n"
                                 "  config    check a configuration file, show the effective one\n"
                                 "  version   print the version\n"
                                 "\n"
                                 "`hotplex <command> --help` describes a command.\n";

typedef struct app {
    gateway_t gw; /* first: reload() gets &app->gw and finds the app */
    server_t *srv;
    admin_t *admin;
    uv_signal_t sigint, sigterm, sighup;
    uv_timer_t shutdown_timer;
    int64_t shutdown_deadline;
} app_t;

static void close_noop(uv_handle_t *h)
{
    (void)h;
}

static void finish(app_t *app)
{
    uv_timer_stop(&app->shutdown_timer);
    uv_close((uv_handle_t *)&app->shutdown_timer, close_noop);
    uv_close((uv_handle_t *)&app->sigint, close_noop);
    uv_close((uv_handle_t *)&app->sigterm, close_noop);
    uv_close((uv_handle_t *)&app->sighup, close_noop);
    server_stop(app->srv);
    app->srv = NULL;
    admin_free(app->admin); /* its vhost went with the lws context */
    app->admin = NULL;
    gw_free(&app->gw);
}

/* Poll until clients are closed and agents are gone, or the grace expires. */
static void on_shutdown_tick(uv_timer_t *t)
{
    app_t *app = t->data;
    gateway_t *gw = &app->gw;
    bool done = gw->nclients == 0 && gw->nagents == 0;
    if (!done && clock_unix_ms() < app->shutdown_deadline) return;
    if (!done)
        log_warn("shutdown grace expired with %d connections and %d agents left", gw->nclients,
                 gw->nagents);
    finish(app);
}

static void on_signal(uv_signal_t *h, int signo)
{
    app_t *app = h->data;
    if (app->gw.shutting_down) {
        log_warn("second signal %d: exiting now", signo);
        exit(1);
    }
    log_info("signal %d: graceful shutdown", signo);
    gw_shutdown_begin(&app->gw);
    app->shutdown_deadline = clock_unix_ms() + app->gw.cfg->shutdown_grace_ms +
                             app->gw.cfg->agent_stop_grace_ms + 1000;
    uv_timer_start(&app->shutdown_timer, on_shutdown_tick, 20, 20);
}

static bool is_loopback(const char *host)
{
    return strncmp(host, "127.", 4) == 0 || strcmp(host, "localhost") == 0 ||
           strcmp(host, "::1") == 0;
}

/* The command line of `serve`, kept so SIGHUP can rebuild the same layers. */
typedef struct serve_args {
    const char *config_file;
    const char *sets[256]; /* "key=value" (copies), applied last */
    int nsets;
} serve_args_t;

static serve_args_t g_args;

/* defaults < config file < HOTPLEX_* environment < command line */
static int serve_config_build(hp_config_t *cfg, const serve_args_t *a, char *err, size_t cap)
{
    extern char **environ;
    return config_build(cfg, a->config_file, a->sets, a->nsets, environ, true, err, cap);
}

static int auth_build(const hp_config_t *cfg, auth_t **out, char *err, size_t cap)
{
    extern char **environ;
    char secret[1024];
    int have = config_jwt_secret(cfg, environ, secret, sizeof(secret), err, cap);
    if (have < 0) return -1;
    auth_opts_t o = {
        .keys_file = cfg->keys_file,
        .jwt_secret = have ? secret : NULL,
        .jwt_public_key_file = cfg->jwt_public_key_file,
        .jwt_audience = cfg->jwt_audience,
        .jwt_issuer = cfg->jwt_issuer,
        .bot_id = cfg->bot_id,
        .clock_skew_s = cfg->jwt_clock_skew_s,
    };
    int rc = auth_new(out, &o, err, cap);
    memset(secret, 0, sizeof(secret));
    return rc;
}

static void log_reload_key(void *arg, const char *key, bool reloadable)
{
    (void)arg;
    if (reloadable) log_info("reload: %s changed", key);
    else log_warn("reload: %s changed but needs a restart to take effect", key);
}

/* SIGHUP and POST /admin/reload: rebuild every layer, check it, load the
 * credentials and admin tokens, and only then apply. The number of
 * settings that differed, or -1 with the reason in err (nothing changed). */
static int app_reload(gateway_t *gw, char *err, size_t cap)
{
    app_t *app = (app_t *)(void *)gw; /* gw is the first member */
    static hp_config_t next;
    if (serve_config_build(&next, &g_args, err, cap) < 0) {
        log_error("reload refused, configuration unchanged: %s", err);
        config_free(&next);
        return -1;
    }
    auth_t *auth = NULL;
    if (auth_build(&next, &auth, err, cap) < 0) {
        log_error("reload refused, credentials unchanged: %s", err);
        config_free(&next);
        return -1;
    }
    if (app->admin && admin_reload(app->admin, &next, err, cap) < 0) {
        log_error("reload refused, admin tokens unchanged: %s", err);
        auth_free(auth);
        config_free(&next);
        return -1;
    }
    int n = config_diff(gw->cfg, &next, log_reload_key, NULL);
    config_apply_reloadable(gw->cfg, &next);
    config_free(&next);
    auth_free(gw->auth);
    gw->auth = auth;
    if (gw_apply_limits(gw) < 0) log_error("reload: out of memory rebuilding the throttles");
    log_set_level(gw->cfg->log_level);
    log_set_json(gw->cfg->log_json);
    log_info("reload: %d setting(s) differed; credentials reloaded", n);
    return n < 0 ? 0 : n;
}

static void on_sighup(uv_signal_t *h, int signo)
{
    (void)signo;
    app_t *app = h->data;
    char err[512];
    app_reload(&app->gw, err, sizeof(err));
}


static int cmd_serve(int argc, char **argv)
{
    static hp_config_t cfg;
    char err[512];
    serve_args_t *a = &g_args;
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        const char *key = NULL;
        if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) {
            fputs(usage_serve, stdout);
            return 0;
        } else if (strcmp(o, "--config") == 0 && next) {
            a->config_file = next;
            i++;
            continue;
        } else if (strcmp(o, "--listen") == 0) key = "server.listen";
        else if (strcmp(o, "--data-dir") == 0) key = "server.data_dir";
        else if (strcmp(o, "--keys") == 0) key = "auth.keys_file";
        else if (strcmp(o, "--log-level") == 0) key = "log.level";
        else if (strcmp(o, "--set") == 0) key = "";
        else if (strcmp(o, "--log-json") == 0) {
            a->sets[a->nsets++] = "log.format=json";
            continue;
        }
        if (!key || !next || a->nsets >= 250) {
            fprintf(stderr, "hotplex serve: unknown or incomplete option \"%s\"\n\n%s", o,
                    usage_serve);
            return 2;
        }
        char *kv = malloc(strlen(key) + strlen(next) + 2);
        if (!kv) return 1;
        if (key[0]) sprintf(kv, "%s=%s", key, next);
        else strcpy(kv, next);
        a->sets[a->nsets++] = kv;
        i++;
    }
    if (!a->config_file) a->config_file = getenv("HOTPLEX_CONFIG");
    if (serve_config_build(&cfg, a, err, sizeof(err)) < 0) {
        fprintf(stderr, "hotplex serve: %s\n", err);
        return 2;
    }
    log_set_level(cfg.log_level);
    log_set_json(cfg.log_json);

    if (!cfg.admin_tokens_file[0] && !admin_is_loopback(cfg.admin_listen_host)) {
        log_error("refusing an open admin API on non-loopback address %s", cfg.admin_listen_host);
        fprintf(stderr, "hotplex serve: refusing an open admin API (no admin.tokens_file) on "
                        "non-loopback address %s; configure admin.tokens_file or set "
                        "admin.listen to 127.0.0.1:PORT\n",
                cfg.admin_listen_host);
        return 2;
    }
    static app_t app;
    auth_t *auth = NULL;
    if (auth_build(&cfg, &auth, err, sizeof(err)) < 0) {
        fprintf(stderr, "hotplex serve: %s\n", err);
        return 2;
    }
    bool dev = auth_dev_mode(auth);
    if (dev && !is_loopback(cfg.listen_host)) {
        fprintf(stderr, "hotplex serve: refusing dev mode (no credentials configured) on "
                        "non-loopback address %s; configure auth.keys_file or a JWT key, or "
                        "listen on 127.0.0.1\n",
                cfg.listen_host);
        auth_free(auth);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    uv_loop_t *loop = uv_default_loop();
    if (gw_init(&app.gw, &cfg, loop, err, sizeof(err)) < 0) {
        log_error("%s", err);
        auth_free(auth);
        gw_free(&app.gw);
        uv_run(loop, UV_RUN_DEFAULT);
        return 1;
    }
    app.gw.auth = auth;
    app.gw.reload = app_reload;
    app.srv = server_start(&app.gw, err, sizeof(err));
    if (app.srv) {
        /* the admin API: a second vhost on the same lws context and loop */
        app.admin = admin_start(&app.gw, server_lws_context(app.srv), err, sizeof(err));
        if (!app.admin) {
            server_stop(app.srv);
            app.srv = NULL;
        }
    }
    if (!app.srv) {
        log_error("%s", err);
        gw_free(&app.gw);
        uv_run(loop, UV_RUN_DEFAULT);
        auth_free(app.gw.auth);
        return 1;
    }
    /* signals first: whoever reads the address below may signal at once */
    uv_signal_init(loop, &app.sigint);
    uv_signal_init(loop, &app.sigterm);
    uv_signal_init(loop, &app.sighup);
    app.sigint.data = app.sigterm.data = app.sighup.data = &app;
    uv_signal_start(&app.sigint, on_signal, SIGINT);
    uv_signal_start(&app.sigterm, on_signal, SIGTERM);
    uv_signal_start(&app.sighup, on_sighup, SIGHUP);
    uv_timer_init(loop, &app.shutdown_timer);
    app.shutdown_timer.data = &app;

    printf("listening on %s:%d\n", cfg.listen_host, server_port(app.srv));
    printf("admin listening on %s:%d\n", cfg.admin_listen_host, admin_port(app.admin));
    fflush(stdout);
    log_info("hotplex %s serving %s://%s:%d/ws (data dir %s, %d sessions)", HOTPLEX_VERSION,
             cfg.tls_cert_file[0] ? "wss" : "ws", cfg.listen_host, server_port(app.srv),
             cfg.data_dir, gw_session_count(&app.gw));
    if (dev)
        log_warn("dev mode: no credentials configured, every client is user \"anonymous\" "
                 "(loopback only)");
    else
        log_info("auth: %zu API key(s)%s", auth_key_count(app.gw.auth),
                 cfg.jwt_public_key_file[0] || getenv("HOTPLEX_JWT_SECRET") || cfg.jwt_secret_file[0]
                     ? ", JWT"
                     : "");

    uv_run(loop, UV_RUN_DEFAULT);
    /* lws may need further loop turns to close its handles */
    uv_run(loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(loop);
    if (rc != 0) log_debug("loop closed with handles left: %s", uv_strerror(rc));
    auth_free(app.gw.auth);
    config_free(&cfg);
    log_info("bye");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage_main, stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0) return cmd_serve(argc, argv);
    if (strcmp(cmd, "chat") == 0) return cmd_chat(argc, argv);
    if (strcmp(cmd, "token") == 0) return cmd_token(argc, argv);
    if (strcmp(cmd, "sessions") == 0) return cmd_sessions(argc, argv);
    if (strcmp(cmd, "doctor") == 0) return cmd_doctor(argc, argv);
    if (strcmp(cmd, "config") == 0) return cmd_config(argc, argv);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("hotplex %s\n", HOTPLEX_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        fputs(usage_main, stdout);
        return 0;
    }
    fprintf(stderr, "hotplex: unknown command \"%s\"\n\n%s", cmd, usage_main);
    return 2;
}
