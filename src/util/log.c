/*
 * log.c - the logging sink. One line per call, written with a single
 * write(2) so lines from the store thread and the loop never interleave.
 */
#include "util/log.h"

#include "util/buf.h"
#include "util/json.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int g_level = LOG_INFO;
static int g_json;
static const char *const names[] = {"debug", "info", "warn", "error"};

void log_set_level(int level)
{
    g_level = level;
}

int log_get_level(void)
{
    return g_level;
}

void log_set_json(int on)
{
    g_json = on;
}

int log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, names[i]) == 0) return i;
    return -1;
}

void log_msg(int level, const char *fmt, ...)
{
    if (level < g_level) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[64];
    snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (long)(tv.tv_usec / 1000));

    char line[4608];
    size_t n;
    if (g_json) {
        buf_t b;
        buf_init(&b);
        jw_t w;
        jw_init(&w, &b);
        jw_obj_begin(&w);
        jw_kstr(&w, "ts", ts);
        jw_kstr(&w, "level", names[level]);
        jw_kstr(&w, "msg", msg);
        jw_obj_end(&w);
        buf_puts(&b, "\n");
        ssize_t wr = jw_error(&w) == 0 ? write(STDERR_FILENO, b.p, b.len) : 0;
        (void)wr;
        buf_free(&b);
        return;
    } else {
        n = (size_t)snprintf(line, sizeof(line), "%s %-5s %s\n", ts, names[level], msg);
        if (n >= sizeof(line)) {
            n = sizeof(line) - 1;
            line[n - 1] = '\n';
        }
    }
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}
