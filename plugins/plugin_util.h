/* plugin_util.h - helpers the bundled plugins share (tiers, rfm, risk).
 *
 * Header-only on purpose: each plugin stays one self-contained .so with no
 * library of ours to link, yet the config reading, trait writing and error
 * formatting exist once. `static inline`, so a plugin that does not use a
 * helper gets no unused-function warning. Not part of the plugin API:
 * outside plugins may copy it, the daemon does not depend on it. */
#ifndef BENEFITD_PLUGIN_UTIL_H
#define BENEFITD_PLUGIN_UTIL_H

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "benefitd_plugin.h"

#define BDP_DAY_MS 86400000LL
#define BDP_MAX_EVENTS 64

/* Writes a message into err (when there is room) and returns -1. */
static inline int bdp_fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static inline int bdp_fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static inline char *bdp_dupstr(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* Sums kept to 6 decimals, so a measure read back from JSON compares equal. */
static inline double bdp_round6(double x) { return round(x * 1e6) / 1e6; }

/* A number read back from a trait or the state as a time or day; 0 when out of range. */
static inline int bdp_as_int(double x, long long *out) {
    if (!isfinite(x) || x < -1e15 || x > 1e15) return 0;
    *out = (long long)x;
    return 1;
}

/* The UTC day of an epoch-ms time (floor, also before 1970). */
static inline long long bdp_day_of(long long ms) {
    return ms >= 0 ? ms / BDP_DAY_MS : -((-ms + BDP_DAY_MS - 1) / BDP_DAY_MS);
}

static inline void bdp_log(const bd_host *h, int level, const char *plugin, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static inline void bdp_log(const bd_host *h, int level, const char *plugin, const char *event, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    h->log(level, plugin, event, buf);
}

/* Trait writes that skip an unchanged value: no profile write when nothing moved. */
static inline void bdp_set_num(const bd_host *h, bd_ctx *c, const char *name, double x) {
    bd_value o = h->trait_get(c, name);
    if (o.kind == BD_NUM && o.num == x) return;
    bd_value v = {.kind = BD_NUM, .num = x};
    h->trait_set(c, name, v);
}

static inline void bdp_set_str(const bd_host *h, bd_ctx *c, const char *name, const char *s) {
    bd_value o = h->trait_get(c, name);
    if (o.kind == BD_STR && o.str && strcmp(o.str, s) == 0) return;
    bd_value v = {.kind = BD_STR, .str = s};
    h->trait_set(c, name, v);
}

static inline void bdp_clear_trait(const bd_host *h, bd_ctx *c, const char *name) {
    bd_value o = h->trait_get(c, name);
    if (o.kind == BD_MISSING || o.kind == BD_NULL) return;
    bd_value v = {.kind = BD_NULL};
    h->trait_set(c, name, v);
}

/* The value of key, or NULL when absent or null (the default applies). */
static inline const cJSON *bdp_opt(const cJSON *root, const char *key) {
    const cJSON *j = root ? cJSON_GetObjectItemCaseSensitive(root, key) : NULL;
    return j && !cJSON_IsNull(j) ? j : NULL;
}

/* Refuses a key of root not in known (NULL-terminated), naming the known ones. */
static inline int bdp_check_keys(const cJSON *root, const char *const *known, char *err, size_t errlen) {
    for (const cJSON *k = root ? root->child : NULL; k; k = k->next) {
        int ok = 0;
        for (int i = 0; known[i]; i++) ok |= strcmp(k->string, known[i]) == 0;
        if (ok) continue;
        char list[512] = "";
        size_t off = 0;
        for (int i = 0; known[i] && off < sizeof list; i++)
            off += (size_t)snprintf(list + off, sizeof list - off, "%s%s", i ? ", " : "", known[i]);
        return bdp_fail(err, errlen, "unknown key '%s' (known: %s)", k->string, list);
    }
    return 0;
}

/* An event name or a list of names (defs: the ndefs defaults when absent),
 * copied into *out (free each and the array). */
static inline int bdp_cfg_events(const cJSON *root, const char *key, const char *const *defs, int ndefs, char ***out,
                                 int *n, char *err, size_t errlen) {
    const cJSON *j = bdp_opt(root, key);
    int count = !j ? ndefs : cJSON_IsString(j) ? 1 : cJSON_IsArray(j) ? cJSON_GetArraySize(j) : -1;
    if (count < 0) return bdp_fail(err, errlen, "%s: must be an event name or a list of event names", key);
    if (count == 0) return bdp_fail(err, errlen, "%s: must name at least one event", key);
    if (count > BDP_MAX_EVENTS) return bdp_fail(err, errlen, "%s: at most %d events", key, BDP_MAX_EVENTS);
    char **v = calloc((size_t)count, sizeof *v);
    if (!v) return bdp_fail(err, errlen, "out of memory");
    *out = v;
    *n = count;
    for (int i = 0; i < count; i++) {
        const cJSON *it = !j ? NULL : cJSON_IsString(j) ? j : cJSON_GetArrayItem(j, i);
        const char *s = it ? (cJSON_IsString(it) ? it->valuestring : NULL) : defs[i];
        if (!s || !*s) return bdp_fail(err, errlen, "%s: entry %d is not an event name", key, i + 1);
        if (!(v[i] = bdp_dupstr(s))) return bdp_fail(err, errlen, "out of memory");
    }
    return 0;
}

/* Daily buckets of a rolling window, ascending by UTC day: the private
 * state of the plugins that sum events over a window (count and sum per
 * day, not per event, so the state stays small). A bucket of day d counts
 * while now < (d + 1) * 1d + window. */
typedef struct bdp_bucket {
    long long day;
    long long count;
    double sum;
} bdp_bucket;

typedef struct bdp_buckets {
    bdp_bucket *b;
    int n, cap;
} bdp_buckets;

static inline long long bdp_bucket_leaves_at(long long day, long long window_ms) {
    return (day + 1) * BDP_DAY_MS + window_ms;
}

/* Adds count and sum to day's bucket (made in order when new). 0 or -1 (memory). */
static inline int bdp_buckets_add(bdp_buckets *s, long long day, long long count, double sum) {
    int i = 0;
    while (i < s->n && s->b[i].day < day) i++;
    if (i < s->n && s->b[i].day == day) {
        s->b[i].count += count;
        s->b[i].sum = bdp_round6(s->b[i].sum + sum);
        return 0;
    }
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 8;
        bdp_bucket *nb = realloc(s->b, (size_t)cap * sizeof *nb);
        if (!nb) return -1;
        s->b = nb;
        s->cap = cap;
    }
    memmove(&s->b[i + 1], &s->b[i], (size_t)(s->n - i) * sizeof *s->b);
    s->b[i].day = day;
    s->b[i].count = count;
    s->b[i].sum = bdp_round6(sum);
    s->n++;
    return 0;
}

/* Drops the buckets that have left the window at now. */
static inline void bdp_buckets_expire(bdp_buckets *s, long long window_ms, long long now) {
    int drop = 0;
    while (drop < s->n && bdp_bucket_leaves_at(s->b[drop].day, window_ms) <= now) drop++;
    if (drop > 0) memmove(s->b, s->b + drop, (size_t)(s->n - drop) * sizeof *s->b);
    s->n -= drop;
}

/* init's first steps: the host's API version, then the config JSON, which
 * must be a mapping (or empty/null: every default). *root is the object or
 * NULL; the caller cJSON_Deletes it. */
static inline int bdp_config_root(const bd_host *host, const char *config_json, cJSON **root, char *err,
                                  size_t errlen) {
    *root = NULL;
    if (!host || host->api_version != BD_PLUGIN_API_VERSION)
        return bdp_fail(err, errlen, "host speaks plugin API %d, this plugin %d", host ? host->api_version : -1,
                        BD_PLUGIN_API_VERSION);
    if (!config_json || !*config_json) return 0;
    cJSON *j = cJSON_Parse(config_json);
    if (!j) return bdp_fail(err, errlen, "config is not valid JSON");
    if (cJSON_IsNull(j)) {
        cJSON_Delete(j);
        return 0;
    }
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return bdp_fail(err, errlen, "config must be a mapping");
    }
    *root = j;
    return 0;
}

#endif
