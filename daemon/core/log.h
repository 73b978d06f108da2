/* log.h - one line per record, key=value, to stderr (journald splits on lines).
 *   ts=2026-11-24T10:30:00.000Z level=info event=assigned partitions=4
 * `event` is a stable machine name tests and operators can grep for; the
 * rest are fields. Floods of one event are rate-limited per second. */
#ifndef BENEFITD_LOG_H
#define BENEFITD_LOG_H

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;

void log_set_level(log_level l);
/* fmt formats the fields after event=NAME (may be NULL). */
void log_msg(log_level l, const char *event, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define log_info(ev, ...) log_msg(LOG_INFO, ev, __VA_ARGS__)
#define log_warn(ev, ...) log_msg(LOG_WARN, ev, __VA_ARGS__)
#define log_error(ev, ...) log_msg(LOG_ERROR, ev, __VA_ARGS__)
#define log_debug(ev, ...) log_msg(LOG_DEBUG, ev, __VA_ARGS__)

#endif
