#include "policy.h"
#include "../core/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static int64_t floor_div(int64_t a, int64_t b) { return a / b - (a % b != 0 && (a < 0) != (b < 0)); }

const char *policy_day(policy_day_cache *c, const char *tz, int64_t at) {
    const char *zone = tz && *tz ? tz : "UTC";
    if (c->end > c->start && at >= c->start && at < c->end && !strcmp(c->tz, zone)) return c->day;
    snprintf(c->tz, sizeof c->tz, "%s", zone);
    if (!strcmp(zone, "UTC")) {
        int64_t d = floor_div(at, 86400000);
        time_t secs = (time_t)(d * 86400);
        struct tm tm;
        gmtime_r(&secs, &tm);
        snprintf(c->day, sizeof c->day, "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
        c->start = d * 86400000;
        c->end = c->start + 86400000;
        return c->day;
    }
    /* An IANA zone: switch TZ around localtime/mktime (only when the day
     * changes, never per grant). Day bounds come from mktime of local
     * midnights, so a 23- or 25-hour DST day is right. */
    tz_saved saved = tz_switch(zone);
    time_t secs = (time_t)floor_div(at, 1000);
    struct tm tm;
    localtime_r(&secs, &tm);
    snprintf(c->day, sizeof c->day, "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
    struct tm s = {0}, e = {0};
    s.tm_year = e.tm_year = tm.tm_year;
    s.tm_mon = e.tm_mon = tm.tm_mon;
    s.tm_mday = tm.tm_mday;
    e.tm_mday = tm.tm_mday + 1;
    s.tm_isdst = e.tm_isdst = -1;
    time_t ts = mktime(&s), te = mktime(&e);
    tz_restore(saved);
    c->start = (int64_t)ts * 1000;
    c->end = (int64_t)te * 1000;
    if (ts == (time_t)-1 || te == (time_t)-1 || at < c->start || at >= c->end) c->start = c->end = 0; /* no cache */
    return c->day;
}

void policy_subject(const cJSON *context, const char *path1, const char *path2, char out[160]) {
    const cJSON *v = context ? cJSON_GetObjectItemCaseSensitive(context, path1) : NULL;
    if (v && path2) v = cJSON_IsObject(v) ? cJSON_GetObjectItemCaseSensitive(v, path2) : NULL;
    policy_subject_value(v, out);
}

void policy_subject_value(const cJSON *v, char out[160]) {
    out[0] = '\0';
    if (!v) return;
    char num[64];
    const char *s;
    if (cJSON_IsString(v) && v->valuestring) {
        s = v->valuestring;
    } else if (cJSON_IsNumber(v)) {
        snprintf(num, sizeof num, "%.17g", v->valuedouble);
        s = num;
    } else {
        return;
    }
    size_t n = strlen(s);
    int odd = n > 128;
    /* two of these per event (device, ip): 8 bytes a step (SWAR: a byte
     * below 0x20, or a zero byte of v ^ 0x7f..) */
    size_t i = 0;
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    for (; !odd && i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, s + i, 8);
        uint64_t d = v ^ (ones * 0x7f);
        odd = ((((v - ones * 0x20) & ~v) | ((d - ones) & ~d)) & highs) != 0;
    }
    for (; !odd && i < n; i++) odd = (unsigned char)s[i] < 0x20 || s[i] == 0x7f;
    if (!odd) {
        memcpy(out, s, n + 1);
        return;
    }
    snprintf(out, 160, "h%016llx%016llx", (unsigned long long)hash64(s, n, 31), (unsigned long long)hash64(s, n, 32));
}

int policy_code_ok(const char *s, size_t n) {
    if (n == 0 || n > 128) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == '"' || ch == '\\') return 0;
    }
    return 1;
}

int policy_tz_ok(const char *tz) {
    if (!tz || !*tz || strlen(tz) >= 64) return 0;
    if (!strcmp(tz, "UTC")) return 1;
    if (strstr(tz, "..") || tz[0] == '/') return 0;
    for (const char *p = tz; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f) return 0;
    const char *dir = getenv("TZDIR");
    if (!dir || !*dir) dir = "/usr/share/zoneinfo";
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, tz);
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Epoch ms of local time day+add_days at minute `min` (mktime normalizes). */
static int64_t local_at(const struct tm *day, int add_days, int min) {
    struct tm t = {0};
    t.tm_year = day->tm_year;
    t.tm_mon = day->tm_mon;
    t.tm_mday = day->tm_mday + add_days;
    t.tm_hour = min / 60;
    t.tm_min = min % 60;
    t.tm_isdst = -1;
    return (int64_t)mktime(&t) * 1000;
}

int64_t policy_quiet_until(policy_quiet_cache *c, const char *tz, int start_min, int end_min, int64_t at) {
    if (start_min < 0 || end_min < 0 || start_min == end_min) return at;
    const char *zone = tz && *tz ? tz : "UTC";
    unsigned k = 0;
    for (; k < POLICY_QUIET_ZONES; k++)
        if (c->z[k].end > c->z[k].start && at >= c->z[k].start && at < c->z[k].end && !strcmp(c->z[k].tz, zone))
            break;
    if (k == POLICY_QUIET_ZONES) {
        k = c->next++ % POLICY_QUIET_ZONES;
        tz_saved saved = tz_switch(zone);
        time_t secs = (time_t)floor_div(at, 1000);
        struct tm tm;
        localtime_r(&secs, &tm);
        snprintf(c->z[k].tz, sizeof c->z[k].tz, "%s", zone);
        c->z[k].start = local_at(&tm, 0, 0);
        c->z[k].end = local_at(&tm, 1, 0);
        c->z[k].q_start_today = local_at(&tm, 0, start_min);
        c->z[k].q_end_today = local_at(&tm, 0, end_min);
        c->z[k].q_end_next = local_at(&tm, 1, end_min);
        tz_restore(saved);
        if (at < c->z[k].start || at >= c->z[k].end) { /* not cacheable (a gap): answer, forget */
            int64_t s0 = c->z[k].q_start_today, e0 = c->z[k].q_end_today, e1 = c->z[k].q_end_next;
            c->z[k].start = c->z[k].end = 0;
            if (start_min < end_min) return at >= s0 && at < e0 ? e0 : at;
            return at < e0 ? e0 : at >= s0 ? e1 : at;
        }
    }
    if (start_min < end_min) /* inside one day, e.g. 01:00-06:00 */
        return at >= c->z[k].q_start_today && at < c->z[k].q_end_today ? c->z[k].q_end_today : at;
    /* crossing midnight, e.g. 22:00-08:00: the morning part, or the evening part until tomorrow's end */
    if (at < c->z[k].q_end_today) return c->z[k].q_end_today;
    if (at >= c->z[k].q_start_today) return c->z[k].q_end_next;
    return at;
}
