/*
 * log.h - one logging function for the whole daemon. Lines go to stderr as
 * text (`ts level msg key=value...`) or JSON; the format and level are
 * process-wide. Never log secrets or message content at info level.
 */
#ifndef HOTPLEX_LOG_H
#define HOTPLEX_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_set_level(int level);
int log_get_level(void);
void log_set_json(int on);
int log_level_parse(const char *s); /* -1 if unknown */
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_get_level() <= LOG_DEBUG) log_msg(LOG_DEBUG, __VA_ARGS__);                         \
    } while (0)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
