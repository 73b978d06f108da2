#include "log.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static log_level min_level = LOG_INFO;
static const char *names[] = {"debug", "info", "warn", "error"};

/* Rate limit: at most this many records of one event name per second; the
 * rest are counted and reported once the second is over, so a flood of bad
 * events cannot fill the journal but is never silent. */
#define LOG_BURST 20
static char last_event[48];
static long long window_sec = -1;
static int in_window, suppressed;

void log_set_level(log_level l) { min_level = l; }

void log_msg(log_level l, const char *event, const char *fmt, ...) {
    if (l < min_level) return;
    int64_t now = now_wall_ms();
    long long sec = now / 1000;
    if (strcmp(last_event, event) != 0 || sec != window_sec) {
        if (suppressed) {
            char ts[32];
            format_iso8601_ms(now, ts, sizeof ts);
            fprintf(stderr, "ts=%s level=warn event=log_suppressed name=%s count=%d\n", ts, last_event, suppressed);
        }
        snprintf(last_event, sizeof last_event, "%s", event);
        window_sec = sec;
        in_window = 0;
        suppressed = 0;
    }
    if (++in_window > LOG_BURST) {
        suppressed++;
        return;
    }
    char ts[32];
    format_iso8601_ms(now, ts, sizeof ts);
    char line[2048];
    int n = snprintf(line, sizeof line, "ts=%s level=%s event=%s", ts, names[l], event);
    if (fmt && n > 0 && (size_t)n < sizeof line - 2) {
        line[n++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
        va_end(ap);
    }
    fprintf(stderr, "%s\n", line);
}
