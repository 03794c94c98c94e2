/*
 * main.c - the `hotplex` command line: `serve` runs the gateway; `version`.
 * `serve` owns start-up order (config, store, listener) and shutdown order
 * (stop accepting, close clients 1001, stop agents, flush the store, exit 0).
 */
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/gateway.h"
#include "net/server.h"
#include "util/clock.h"
#include "util/config.h"
#include "util/log.h"

static const char usage_serve[] =
    "usage: hotplex serve [--listen HOST:PORT] [--data-dir DIR] [--set KEY=VALUE ...]\n"
    "                     [--log-level debug|info|warn|error] [--log-json]\n"
    "\n"
    "Runs the gateway: AEP v1 WebSocket at ws://HOST:PORT/ws, health at /health.\n"
    "  --listen HOST:PORT  where to listen (default 127.0.0.1:8888; port 0 picks a free port)\n"
    "  --data-dir DIR      where the SQLite store lives (default .data)\n"
    "  --set KEY=VALUE     any setting, e.g. --set server.max_frame_size=65536\n"
    "                      (docs/configuration.md lists every key)\n"
    "The first line on stdout is `listening on HOST:PORT`.\n";

static const char usage_main[] = "usage: hotplex <command> [options]\n"
                                 "\n"
                                 "commands:\n"
                                 "  serve     run the gateway\n"
                                 "  version   print the version\n"
                                 "\n"
                                 "`hotplex <command> --help` describes a command.\n";

typedef struct app {
    gateway_t gw;
    server_t *srv;
    uv_signal_t sigint, sigterm;
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
    server_stop(app->srv);
    app->srv = NULL;
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

static int cmd_serve(int argc, char **argv)
{
    static hp_config_t cfg;
    config_defaults(&cfg);
    char err[512];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage_serve, stdout);
            return 0;
        } else if (strcmp(a, "--listen") == 0 && next) {
            rc = config_set(&cfg, "server.listen", next, err, sizeof(err));
            i++;
        } else if (strcmp(a, "--data-dir") == 0 && next) {
            rc = config_set(&cfg, "server.data_dir", next, err, sizeof(err));
            i++;
        } else if (strcmp(a, "--set") == 0 && next) {
            char *eq = strchr(next, '=');
            if (!eq) {
                snprintf(err, sizeof(err), "--set wants KEY=VALUE, got \"%s\"", next);
                rc = -1;
            } else {
                *eq = '\0';
                rc = config_set(&cfg, next, eq + 1, err, sizeof(err));
            }
            i++;
        } else if (strcmp(a, "--log-level") == 0 && next) {
            int lv = log_level_parse(next);
            if (lv < 0) {
                snprintf(err, sizeof(err), "--log-level: unknown level \"%s\"", next);
                rc = -1;
            } else {
                log_set_level(lv);
            }
            i++;
        } else if (strcmp(a, "--log-json") == 0) {
            log_set_json(1);
        } else {
            fprintf(stderr, "hotplex serve: unknown or incomplete option \"%s\"\n\n%s", a,
                    usage_serve);
            return 2;
        }
        if (rc < 0) {
            fprintf(stderr, "hotplex serve: %s\n", err);
            return 2;
        }
    }

    if (!cfg.keys_file[0] && !is_loopback(cfg.listen_host)) {
        fprintf(stderr, "hotplex serve: refusing dev mode (no credentials configured) on "
                        "non-loopback address %s; configure keys or listen on 127.0.0.1\n",
                cfg.listen_host);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    static app_t app;
    uv_loop_t *loop = uv_default_loop();
    if (gw_init(&app.gw, &cfg, loop, err, sizeof(err)) < 0) {
        log_error("%s", err);
        return 1;
    }
    app.srv = server_start(&app.gw, err, sizeof(err));
    if (!app.srv) {
        log_error("%s", err);
        gw_free(&app.gw);
        uv_run(loop, UV_RUN_DEFAULT);
        return 1;
    }
    printf("listening on %s:%d\n", cfg.listen_host, server_port(app.srv));
    fflush(stdout);
    log_info("hotplex %s serving ws://%s:%d/ws (data dir %s, %d sessions)", HOTPLEX_VERSION,
             cfg.listen_host, server_port(app.srv), cfg.data_dir, gw_session_count(&app.gw));
    if (!cfg.keys_file[0])
        log_warn("dev mode: no credentials configured, every client is user \"anonymous\" "
                 "(loopback only)");

    uv_signal_init(loop, &app.sigint);
    uv_signal_init(loop, &app.sigterm);
    app.sigint.data = app.sigterm.data = &app;
    uv_signal_start(&app.sigint, on_signal, SIGINT);
    uv_signal_start(&app.sigterm, on_signal, SIGTERM);
    uv_timer_init(loop, &app.shutdown_timer);
    app.shutdown_timer.data = &app;

    uv_run(loop, UV_RUN_DEFAULT);
    /* lws may need further loop turns to close its handles */
    uv_run(loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(loop);
    if (rc != 0) log_debug("loop closed with handles left: %s", uv_strerror(rc));
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
