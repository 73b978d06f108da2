/* config.c - etc/benefitd.yaml read over the built-in defaults.
 * Every string in a config_t is owned by it, defaults included, so
 * config_free never has to know where a value came from. */
#include "config.h"
#include "http.h"
#include "util.h"
#include "yamlnode.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#ifndef BENEFITD_PLUGIN_DIR
#define BENEFITD_PLUGIN_DIR "/usr/local/lib/benefitd/plugins"
#endif
#define DEFAULT_DEAD_LETTER_KEY "{prefix}deadletter"

static const char *const TOP_KEYS[] = {"kafka",  "redis",         "rules",       "output", "dead_letter",
                                       "decode", "daemon",        "http",        "timezone", "frequency_cap",
                                       "quiet_hours", "pools",    "loop",    "plugins", "profiles", NULL};
static const char *const PLUGINS_KEYS[] = {"dir", "load", NULL};
static const char *const PROFILES_KEYS[] = {"cache_mb", NULL};
static const char *const LOOP_KEYS[] = {"redemption_events", "conversion_events", "attribution_window", NULL};
static const char *const POOL_KEYS[] = {"low_stock", NULL};
static const char *const KAFKA_KEYS[] = {"brokers", "topics", "group_id", "properties", NULL};
static const char *const REDIS_KEYS[] = {"host",      "port",       "password",  "password_file", "password_env",
                                         "db",        "key_prefix", "claim_ttl", "max_inflight",  NULL};
static const char *const RULES_KEYS[] = {"dir", "timezone", NULL};
static const char *const OUTPUT_KEYS[] = {"default", "channels", NULL};
static const char *const CHANNEL_KEYS[] = {"kind", "key", "maxlen", NULL};
static const char *const DEAD_LETTER_KEYS[] = {"key", "maxlen", NULL};
static const char *const DECODE_KEYS[] = {"max_event_bytes", "max_depth", "default_type", "fields", NULL};
static const char *const DAEMON_KEYS[] = {"allow_root", "shutdown_timeout", NULL};
static const char *const HTTP_KEYS[] = {"enabled", "bind", "port", "allow_remote", NULL};

/* decode.fields keys, in the order of config_t.decode_strs; slot 9 is
 * default_type. The offsets say which decode_map_t member each one sets. */
static const struct {
    const char *key;
    size_t off;
} FIELDS[] = {
    {"type", offsetof(decode_map_t, type)},
    {"event", offsetof(decode_map_t, event)},
    {"user_id", offsetof(decode_map_t, user_id)},
    {"anonymous_id", offsetof(decode_map_t, anonymous_id)},
    {"message_id", offsetof(decode_map_t, message_id)},
    {"timestamp", offsetof(decode_map_t, timestamp)},
    {"properties", offsetof(decode_map_t, properties)},
    {"context", offsetof(decode_map_t, context)},
    {"traits", offsetof(decode_map_t, traits)},
};
#define N_FIELDS (sizeof FIELDS / sizeof FIELDS[0])
#define DEFAULT_TYPE_SLOT N_FIELDS

typedef struct cload {
    const char *file;
    char *dir;              /* the config file's directory, for relative paths */
    diag_t *d;
    config_t *c;
} cload;

static void set_str(char **field, const char *v) {
    free(*field);
    *field = v ? xstrdup(v) : NULL;
}

static void err_at(cload *L, const ynode *n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void err_at(cload *L, const ynode *n, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    diag_add(L->d, L->file, n->line, n->col, "%s", msg);
}

/* The section's mapping with its keys checked; NULL when absent or bad. */
static const ynode *section(cload *L, const ynode *parent, const char *key, const char *const *allowed) {
    const ynode *m = yn_get(parent, key);
    if (!m) return NULL;
    if (m->kind != YN_MAP) {
        err_at(L, m, "'%s' must be a mapping", key);
        return NULL;
    }
    yn_check_keys(m, L->file, allowed, L->d);
    return m;
}

/* YAML's spellings of "no value", unquoted. */
static int is_null(const ynode *n) {
    return n->kind == YN_SCALAR && !n->quoted &&
           (!n->str[0] || !strcmp(n->str, "~") || !strcmp(n->str, "null") || !strcmp(n->str, "Null") ||
            !strcmp(n->str, "NULL"));
}

static void get_str(cload *L, const ynode *m, const char *key, int allow_empty, char **field) {
    const ynode *n = yn_get(m, key);
    const char *s;
    if (!n || yn_str(n, L->file, key, &s, L->d) != 0) return;
    if (!allow_empty && !*s) {
        err_at(L, n, "'%s' must not be empty", key);
        return;
    }
    set_str(field, s);
}

static void get_int(cload *L, const ynode *m, const char *key, long long lo, long long hi, long long *out) {
    const ynode *n = yn_get(m, key);
    long long v;
    if (!n || yn_int(n, L->file, key, &v, L->d) != 0) return;
    if (v < lo || v > hi) {
        err_at(L, n, "'%s' must be between %lld and %lld", key, lo, hi);
        return;
    }
    *out = v;
}

static void get_duration(cload *L, const ynode *m, const char *key, long long *out) {
    const ynode *n = yn_get(m, key);
    long long ms;
    if (!n || yn_duration(n, L->file, key, &ms, L->d) != 0) return;
    if (ms <= 0) {
        err_at(L, n, "'%s' must be longer than 0", key);
        return;
    }
    *out = ms;
}

/* A path from the config file is relative to the file's directory, so the
 * daemon finds its rules whatever directory it was started from. */
static char *resolve_path(const cload *L, const char *p) {
    if (p[0] == '/' || !L->dir) return xstrdup(p);
    strbuf b;
    sb_init(&b);
    sb_printf(&b, "%s/%s", L->dir, p);
    return b.s;
}

/* Key templates know {prefix} (and {channel} for channel keys); anything else
 * in braces is a typo that would silently become part of a Redis key. */
static int check_template(cload *L, const ynode *n, const char *s, int with_channel) {
    for (const char *p = strchr(s, '{'); p; p = strchr(p + 1, '{')) {
        const char *end = strchr(p, '}');
        size_t len = end ? (size_t)(end - p - 1) : strlen(p + 1);
        if (end && ((len == 6 && !strncmp(p + 1, "prefix", 6)) ||
                    (with_channel && len == 7 && !strncmp(p + 1, "channel", 7))))
            continue;
        err_at(L, n, "unknown placeholder '%.*s' in 'key' (known: {prefix}%s)", (int)(end ? len + 2 : len + 1), p,
               with_channel ? ", {channel}" : "");
        return -1;
    }
    return 0;
}

static void expand(const char *tmpl, const char *prefix, const char *channel, strbuf *out) {
    for (const char *p = tmpl; *p;) {
        if (!strncmp(p, "{prefix}", 8)) {
            sb_puts(out, prefix ? prefix : "");
            p += 8;
        } else if (channel && !strncmp(p, "{channel}", 9)) {
            sb_puts(out, channel);
            p += 9;
        } else {
            sb_putc(out, *p++);
        }
    }
}

/* ---- defaults -------------------------------------------------------------- */

static void channel_set(channel_cfg_t *ch, const char *name, output_kind kind, const char *key, long long maxlen) {
    ch->name = xstrdup(name);
    ch->kind = kind;
    ch->key = xstrdup(key);
    ch->maxlen = maxlen;
}

void config_init_default(config_t *c) {
    memset(c, 0, sizeof *c);
    c->brokers = xstrdup("127.0.0.1:9092");
    c->topics = xmalloc(sizeof(char *));
    c->topics[0] = xstrdup("events");
    c->n_topics = 1;
    c->group_id = xstrdup("benefitd");
    /* a new consumer group reads what is already in the topic, so events sent
     * before the first start are not lost */
    c->kafka_props = xmalloc(sizeof(kv_t));
    c->kafka_props[0] = (kv_t){xstrdup("auto.offset.reset"), xstrdup("earliest")};
    c->n_kafka_props = 1;
    c->redis_host = xstrdup("127.0.0.1");
    c->redis_port = 6379;
    c->key_prefix = xstrdup("bd:");
    c->claim_ttl_ms = 30LL * 86400000;
    c->max_inflight = 10000;
    c->rules_dir = xstrdup("rules");
    c->timezone = xstrdup("UTC");
    c->channels = xcalloc(1, sizeof(channel_cfg_t));
    channel_set(&c->channels[0], "*", OUT_STREAM, "{prefix}grants:{channel}", 0);
    c->n_channels = 1;
    strbuf b;
    sb_init(&b);
    expand(DEFAULT_DEAD_LETTER_KEY, c->key_prefix, NULL, &b);
    c->dead_letter_key = b.s;
    c->dead_letter_maxlen = 100000;
    decoder_init_default(&c->decoder);
    c->shutdown_timeout_ms = 10000;
    c->http_enabled = 1;
    c->http_bind = xstrdup(HTTP_DEFAULT_BIND);
    c->http_port = HTTP_DEFAULT_PORT;
    c->quiet_start_min = c->quiet_end_min = -1;
    c->pool_low_stock_default = 100;
    c->loop_redeem = xmalloc(2 * sizeof(char *));
    c->loop_redeem[0] = xstrdup("Coupon Redeemed");
    c->loop_redeem[1] = xstrdup("Benefit Redeemed");
    c->n_loop_redeem = 2;
    c->loop_convert = xmalloc(sizeof(char *));
    c->loop_convert[0] = xstrdup("Order Completed");
    c->n_loop_convert = 1;
    c->loop_window_ms = 7LL * 24 * 3600 * 1000;
    c->plugin_dir = xstrdup(BENEFITD_PLUGIN_DIR);
    c->profile_cache_bytes = 64LL << 20;
}

void config_free(config_t *c) {
    free(c->path);
    free(c->brokers);
    for (size_t i = 0; i < c->n_topics; i++) free(c->topics[i]);
    free(c->topics);
    free(c->group_id);
    for (size_t i = 0; i < c->n_kafka_props; i++) {
        free(c->kafka_props[i].key);
        free(c->kafka_props[i].value);
    }
    free(c->kafka_props);
    free(c->redis_host);
    free(c->redis_password);
    free(c->key_prefix);
    free(c->rules_dir);
    free(c->timezone);
    for (size_t i = 0; i < c->n_channels; i++) {
        free(c->channels[i].name);
        free(c->channels[i].key);
    }
    free(c->channels);
    free(c->dead_letter_key);
    free(c->http_bind);
    for (size_t i = 0; i < c->n_pool_low; i++) {
        free(c->pool_low[i].key);
        free(c->pool_low[i].value);
    }
    free(c->pool_low);
    for (size_t i = 0; i < c->n_loop_redeem; i++) free(c->loop_redeem[i]);
    free(c->loop_redeem);
    for (size_t i = 0; i < c->n_loop_convert; i++) free(c->loop_convert[i]);
    free(c->loop_convert);
    free(c->plugin_dir);
    for (size_t i = 0; i < c->n_plugins; i++) {
        free(c->plugins[i].name);
        free(c->plugins[i].json);
    }
    free(c->plugins);
    for (size_t i = 0; i < sizeof c->decode_strs / sizeof c->decode_strs[0]; i++) free(c->decode_strs[i]);
    memset(c, 0, sizeof *c);
}

/* ---- sections ---------------------------------------------------------------- */

/* librdkafka properties: any key goes through, as written; librdkafka itself
 * rejects the ones it does not know when the consumer is created. */
static void load_kafka_props(cload *L, const ynode *m) {
    config_t *c = L->c;
    if (m->kind != YN_MAP) {
        err_at(L, m, "'properties' must be a mapping");
        return;
    }
    for (size_t i = 0; i < m->n; i++) {
        const ynode *v = m->items[i];
        if (v->kind != YN_SCALAR) {
            err_at(L, v, "kafka property '%s' must be a string, number or boolean", m->keys[i]->str);
            continue;
        }
        size_t j = 0;
        while (j < c->n_kafka_props && strcmp(c->kafka_props[j].key, m->keys[i]->str) != 0) j++;
        if (j == c->n_kafka_props) {
            c->kafka_props = xrealloc(c->kafka_props, (j + 1) * sizeof(kv_t));
            c->kafka_props[j].key = xstrdup(m->keys[i]->str);
            c->kafka_props[j].value = NULL;
            c->n_kafka_props++;
        }
        set_str(&c->kafka_props[j].value, v->str);
    }
}

static void load_kafka(cload *L, const ynode *top) {
    config_t *c = L->c;
    const ynode *m = section(L, top, "kafka", KAFKA_KEYS);
    if (!m) return;
    get_str(L, m, "brokers", 0, &c->brokers);
    get_str(L, m, "group_id", 0, &c->group_id);
    const ynode *t = yn_get(m, "topics");
    if (t) {
        const ynode *const *items = t->kind == YN_SEQ ? (const ynode *const *)t->items : &t;
        size_t n = t->kind == YN_SEQ ? t->n : 1;
        int ok = t->kind != YN_MAP && n > 0;
        for (size_t i = 0; ok && i < n; i++) ok = items[i]->kind == YN_SCALAR && items[i]->str[0];
        if (!ok) {
            err_at(L, t, "'topics' must be a topic name or a list of topic names");
        } else {
            for (size_t i = 0; i < c->n_topics; i++) free(c->topics[i]);
            c->topics = xrealloc(c->topics, n * sizeof(char *));
            for (size_t i = 0; i < n; i++) c->topics[i] = xstrdup(items[i]->str);
            c->n_topics = n;
        }
    }
    const ynode *p = yn_get(m, "properties");
    if (p) load_kafka_props(L, p);
}

/* First line of a secret file, trimmed (editors add a newline). */
static char *read_first_line(const char *path, int *err) {
    FILE *f = fopen(path, "r");
    if (!f) {
        *err = errno;
        return NULL;
    }
    char buf[4096];
    char *line = fgets(buf, sizeof buf, f);
    fclose(f);
    if (!line) {
        *err = 0;
        return NULL;
    }
    char *s = buf;
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strcspn(s, "\r\n");
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
    return xstrndup(s, n);
}

static void load_redis(cload *L, const ynode *top) {
    config_t *c = L->c;
    const ynode *m = section(L, top, "redis", REDIS_KEYS);
    if (!m) return;
    long long v;
    get_str(L, m, "host", 0, &c->redis_host);
    v = c->redis_port;
    get_int(L, m, "port", 1, 65535, &v);
    c->redis_port = (int)v;
    v = c->redis_db;
    get_int(L, m, "db", 0, INT_MAX, &v);
    c->redis_db = (int)v;
    get_str(L, m, "key_prefix", 1, &c->key_prefix);
    get_duration(L, m, "claim_ttl", &c->claim_ttl_ms);
    get_int(L, m, "max_inflight", 1, LLONG_MAX, &c->max_inflight);

    static const char *const pw_keys[] = {"password", "password_file", "password_env"};
    const ynode *pw = NULL;
    int which = -1;
    for (int i = 0; i < 3; i++) {
        int k = yn_key_index(m, pw_keys[i]);
        if (k < 0) continue;
        if (pw) {
            err_at(L, m->keys[k], "use only one of 'password', 'password_file' and 'password_env'");
            return;
        }
        pw = m->items[k];
        which = i;
    }
    if (!pw) return;
    const char *s;
    if (which == 0) {
        /* "" is how the sample spells "no password": AUTH with it would fail */
        if (is_null(pw)) set_str(&c->redis_password, NULL);
        else if (yn_str(pw, L->file, "password", &s, L->d) == 0) set_str(&c->redis_password, *s ? s : NULL);
        return;
    }
    if (yn_str(pw, L->file, pw_keys[which], &s, L->d) != 0) return;
    if (which == 1) {
        char *path = resolve_path(L, s);
        int e = 0;
        char *secret = read_first_line(path, &e);
        if (!secret)
            err_at(L, pw, "cannot read password_file '%s': %s", path, e ? strerror(e) : "empty file");
        else if (!*secret)
            err_at(L, pw, "password_file '%s' starts with an empty line", path);
        else
            set_str(&c->redis_password, secret);
        free(secret);
        free(path);
    } else {
        const char *env = getenv(s);
        if (!env) err_at(L, pw, "environment variable '%s' (password_env) is not set", s);
        else set_str(&c->redis_password, *env ? env : NULL);
    }
}

/* A zone name the C library does not know silently becomes UTC, which would
 * move every `active` window; check the zone database when it is installed. */
static int known_timezone(const char *tz) {
    if (!strcmp(tz, "UTC")) return 1;
    if (strstr(tz, "..") || tz[0] == '/') return 0;
    const char *dir = getenv("TZDIR");
    if (!dir || !*dir) dir = "/usr/share/zoneinfo";
    struct stat st;
    if (stat(dir, &st) != 0) return 1; /* no database to check against */
    strbuf p;
    sb_init(&p);
    sb_printf(&p, "%s/%s", dir, tz);
    int ok = stat(p.s, &st) == 0 && S_ISREG(st.st_mode);
    sb_free(&p);
    return ok;
}

static void load_timezone(cload *L, const ynode *tz) {
    const char *s;
    if (tz && yn_str(tz, L->file, "timezone", &s, L->d) == 0) {
        if (!*s || !known_timezone(s)) err_at(L, tz, "unknown timezone '%s' (use an IANA name like Europe/Paris)", s);
        else set_str(&L->c->timezone, s);
    }
}

static void load_rules(cload *L, const ynode *top) {
    config_t *c = L->c;
    /* top-level `timezone` (rules-format.md, "daemon-wide policy") is an
     * alias of rules.timezone; both at once is an error */
    const ynode *top_tz = yn_get(top, "timezone");
    load_timezone(L, top_tz);
    const ynode *m = section(L, top, "rules", RULES_KEYS);
    if (!m) return;
    get_str(L, m, "dir", 0, &c->rules_dir);
    const ynode *tz = yn_get(m, "timezone");
    if (tz && top_tz) err_at(L, tz, "'timezone' is set twice (top level and rules.timezone): keep one");
    else load_timezone(L, tz);
}

/* "HH:MM" -> minutes of the day, or -1. */
static int parse_hhmm(const char *s, size_t n) {
    if (n != 5 || s[2] != ':') return -1;
    for (size_t i = 0; i < 5; i++)
        if (i != 2 && (s[i] < '0' || s[i] > '9')) return -1;
    int h = (s[0] - '0') * 10 + (s[1] - '0'), m = (s[3] - '0') * 10 + (s[4] - '0');
    if (h > 23 || m > 59) return -1;
    return h * 60 + m;
}

/* frequency_cap: N/period, quiet_hours: HH:MM-HH:MM, pools: {NAME: {low_stock: N}}. */
static void load_policy(cload *L, const ynode *top) {
    config_t *c = L->c;
    const ynode *n = yn_get(top, "frequency_cap");
    if (n && !is_null(n)) {
        int64_t count, period;
        if (n->kind != YN_SCALAR || parse_rate(n->str, &count, &period) != 0 || count <= 0 || period <= 0)
            err_at(L, n, "'frequency_cap' must be a rate N/duration, e.g. 3/1d");
        else {
            c->fcap_count = count;
            c->fcap_period_ms = period;
        }
    }
    n = yn_get(top, "quiet_hours");
    if (n && !is_null(n)) {
        const char *s = n->kind == YN_SCALAR ? n->str : "";
        const char *dash = strchr(s, '-');
        int a = dash ? parse_hhmm(s, (size_t)(dash - s)) : -1, b = dash ? parse_hhmm(dash + 1, strlen(dash + 1)) : -1;
        if (a < 0 || b < 0)
            err_at(L, n, "'quiet_hours' must be HH:MM-HH:MM, e.g. 22:00-08:00");
        else if (a == b)
            err_at(L, n, "'quiet_hours' starts and ends at the same time");
        else {
            c->quiet_start_min = a;
            c->quiet_end_min = b;
        }
    }
    const ynode *p = yn_get(top, "pools");
    if (!p || is_null(p)) return;
    if (p->kind != YN_MAP) {
        err_at(L, p, "'pools' must be a mapping of pool name to settings");
        return;
    }
    for (size_t i = 0; i < p->n; i++) {
        const ynode *k = p->keys[i], *v = p->items[i];
        if (v->kind != YN_MAP) {
            err_at(L, v, "pool '%s' must be a mapping", k->str);
            continue;
        }
        yn_check_keys(v, L->file, POOL_KEYS, L->d);
        long long low = -1;
        get_int(L, v, "low_stock", 0, LLONG_MAX, &low);
        if (low < 0) continue;
        if (!strcmp(k->str, "*")) {
            c->pool_low_stock_default = low;
            continue;
        }
        char num[32];
        snprintf(num, sizeof num, "%lld", low);
        c->pool_low = xrealloc(c->pool_low, (c->n_pool_low + 1) * sizeof *c->pool_low);
        c->pool_low[c->n_pool_low++] = (kv_t){xstrdup(k->str), xstrdup(num)};
    }
}

/* A list of event names (a single name is a list of one; [] or null = none). */
static void get_names(cload *L, const ynode *m, const char *key, char ***v, size_t *n) {
    const ynode *t = yn_get(m, key);
    if (!t) return;
    size_t k = 0;
    const ynode *const *items = NULL;
    if (is_null(t)) {
        k = 0;
    } else if (t->kind == YN_SEQ) {
        items = (const ynode *const *)t->items;
        k = t->n;
    } else {
        items = &t;
        k = 1;
    }
    int ok = t->kind != YN_MAP;
    for (size_t i = 0; ok && i < k; i++) ok = items[i]->kind == YN_SCALAR && items[i]->str[0];
    if (!ok) {
        err_at(L, t, "'%s' must be an event name or a list of event names", key);
        return;
    }
    for (size_t i = 0; i < *n; i++) free((*v)[i]);
    free(*v);
    *v = k ? xmalloc(k * sizeof(char *)) : NULL;
    for (size_t i = 0; i < k; i++) (*v)[i] = xstrdup(items[i]->str);
    *n = k;
}

/* loop: {redemption_events, conversion_events, attribution_window}. */
static void load_loop(cload *L, const ynode *top) {
    config_t *c = L->c;
    const ynode *m = section(L, top, "loop", LOOP_KEYS);
    if (!m) return;
    get_names(L, m, "redemption_events", &c->loop_redeem, &c->n_loop_redeem);
    get_names(L, m, "conversion_events", &c->loop_convert, &c->n_loop_convert);
    get_duration(L, m, "attribution_window", &c->loop_window_ms);
}

/* A YAML node as JSON for a plugin: plain scalars that read as numbers,
 * booleans or null become those; quoted ones stay strings. */
static void yaml_to_json(const ynode *n, strbuf *b) {
    if (n->kind == YN_MAP) {
        sb_putc(b, '{');
        for (size_t i = 0; i < n->n; i++) {
            if (i) sb_putc(b, ',');
            sb_json_str(b, n->keys[i]->str, strlen(n->keys[i]->str));
            sb_putc(b, ':');
            yaml_to_json(n->items[i], b);
        }
        sb_putc(b, '}');
    } else if (n->kind == YN_SEQ) {
        sb_putc(b, '[');
        for (size_t i = 0; i < n->n; i++) {
            if (i) sb_putc(b, ',');
            yaml_to_json(n->items[i], b);
        }
        sb_putc(b, ']');
    } else {
        const char *s = n->str;
        if (!n->quoted) {
            if (!strcmp(s, "true") || !strcmp(s, "false")) { sb_puts(b, s); return; }
            if (!strcmp(s, "null") || !strcmp(s, "~") || !s[0]) { sb_puts(b, "null"); return; }
            char *end;
            errno = 0;
            double v = strtod(s, &end);
            if (*s && !*end && errno == 0 && v == v && v - v == 0 && strspn(s, "+-0123456789.eE") == strlen(s)) {
                sb_printf(b, "%.17g", v);
                return;
            }
        }
        sb_json_str(b, s, strlen(s));
    }
}

/* plugins: {dir, load: {NAME: block}}. The blocks are the plugins' to check
 * (their init reports what is wrong); here only their shape. */
static void load_plugins(cload *L, const ynode *top) {
    config_t *c = L->c;
    const ynode *m = section(L, top, "plugins", PLUGINS_KEYS);
    if (!m) return;
    const ynode *d = yn_get(m, "dir");
    if (d) {
        get_str(L, m, "dir", 0, &c->plugin_dir);
        c->plugin_dir_line = d->line;
        c->plugin_dir_col = d->col;
        char *r = resolve_path(L, c->plugin_dir);
        free(c->plugin_dir);
        c->plugin_dir = r;
    }
    const ynode *ld = yn_get(m, "load");
    if (!ld) return;
    if (ld->kind != YN_MAP) {
        err_at(L, ld, "'load' must map plugin names to their settings ({} for none)");
        return;
    }
    c->plugins = ld->n ? xcalloc(ld->n, sizeof *c->plugins) : NULL;
    for (size_t i = 0; i < ld->n; i++) {
        const ynode *k = ld->keys[i], *v = ld->items[i];
        const char *name = k->str;
        int ok = name[0] != 0;
        for (const char *p = name; *p && ok; p++) ok = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-';
        if (!ok) {
            err_at(L, k, "plugin name '%s' must be [a-z0-9_-]+ (the file is NAME.so)", name);
            continue;
        }
        if (v->kind == YN_SEQ || (v->kind == YN_SCALAR && (v->quoted || (v->str[0] && strcmp(v->str, "null") && strcmp(v->str, "~"))))) {
            err_at(L, v, "plugin '%s': its settings must be a mapping ({} for none)", name);
            continue;
        }
        plugin_cfg_t *pc = &c->plugins[c->n_plugins++];
        pc->name = xstrdup(name);
        pc->line = k->line;
        pc->col = k->col;
        strbuf b;
        sb_init(&b);
        if (v->kind == YN_MAP) yaml_to_json(v, &b);
        else sb_puts(&b, "{}");
        pc->json = b.s;
    }
}

static void load_profiles(cload *L, const ynode *top) {
    config_t *c = L->c;
    const ynode *m = section(L, top, "profiles", PROFILES_KEYS);
    if (!m) return;
    const ynode *n = yn_get(m, "cache_mb");
    long long mb;
    if (n && yn_int(n, L->file, "cache_mb", &mb, L->d) == 0) {
        if (mb < 1 || mb > 1048576) err_at(L, n, "'cache_mb' must be 1 to 1048576");
        else c->profile_cache_bytes = mb << 20;
    }
}

static void load_channel(cload *L, const ynode *m, channel_cfg_t *ch) {
    yn_check_keys(m, L->file, CHANNEL_KEYS, L->d);
    const ynode *n = yn_get(m, "kind");
    const char *s;
    if (n && yn_str(n, L->file, "kind", &s, L->d) == 0) {
        if (!strcmp(s, "stream")) ch->kind = OUT_STREAM;
        else if (!strcmp(s, "list")) ch->kind = OUT_LIST;
        else err_at(L, n, "'kind' must be stream or list");
    }
    n = yn_get(m, "key");
    if (n && yn_str(n, L->file, "key", &s, L->d) == 0) {
        if (!*s) err_at(L, n, "'key' must not be empty");
        else if (check_template(L, n, s, 1) == 0) set_str(&ch->key, s);
    }
    get_int(L, m, "maxlen", 0, LLONG_MAX, &ch->maxlen);
}

static void load_output(cload *L, const ynode *top) {
    config_t *c = L->c;
    const ynode *m = section(L, top, "output", OUTPUT_KEYS);
    if (!m) return;
    /* the default first: channels inherit what they do not set from it,
     * wherever it appears in the file */
    const ynode *def = yn_get(m, "default");
    if (def) {
        if (def->kind != YN_MAP) err_at(L, def, "'default' must be a mapping");
        else load_channel(L, def, &c->channels[0]);
    }
    const ynode *chs = yn_get(m, "channels");
    if (!chs) return;
    if (chs->kind != YN_MAP) {
        err_at(L, chs, "'channels' must be a mapping of channel name to settings");
        return;
    }
    for (size_t i = 0; i < chs->n; i++) {
        const ynode *k = chs->keys[i], *v = chs->items[i];
        if (!strcmp(k->str, "*")) {
            err_at(L, k, "the default channel is set under 'output.default'");
            continue;
        }
        if (v->kind != YN_MAP) {
            err_at(L, v, "channel '%s' must be a mapping", k->str);
            continue;
        }
        const channel_cfg_t *d = config_channel(c, "*");
        channel_cfg_t ch;
        channel_set(&ch, k->str, d->kind, d->key, d->maxlen);
        load_channel(L, v, &ch);
        c->channels = xrealloc(c->channels, (c->n_channels + 1) * sizeof *c->channels);
        c->channels[c->n_channels++] = ch;
    }
}

static void load_dead_letter(cload *L, const ynode *top, char **tmpl) {
    config_t *c = L->c;
    const ynode *m = section(L, top, "dead_letter", DEAD_LETTER_KEYS);
    if (!m) return;
    const ynode *n = yn_get(m, "key");
    const char *s;
    if (n && yn_str(n, L->file, "key", &s, L->d) == 0) {
        if (!*s) err_at(L, n, "'key' must not be empty");
        else if (check_template(L, n, s, 0) == 0) set_str(tmpl, s);
    }
    get_int(L, m, "maxlen", 0, LLONG_MAX, &c->dead_letter_maxlen);
}

static void load_decode(cload *L, const ynode *top) {
    config_t *c = L->c;
    const ynode *m = section(L, top, "decode", DECODE_KEYS);
    if (!m) return;
    long long v = (long long)c->decoder.max_bytes;
    get_int(L, m, "max_event_bytes", 1, 1LL << 30, &v);
    c->decoder.max_bytes = (size_t)v;
    v = c->decoder.max_depth;
    get_int(L, m, "max_depth", 1, 1000, &v);
    c->decoder.max_depth = (int)v;
    const ynode *n = yn_get(m, "default_type");
    const char *s;
    if (n && is_null(n)) set_str(&c->decode_strs[DEFAULT_TYPE_SLOT], NULL);
    else if (n && yn_str(n, L->file, "default_type", &s, L->d) == 0) set_str(&c->decode_strs[DEFAULT_TYPE_SLOT], s);
    if (n) c->decoder.map.default_type = c->decode_strs[DEFAULT_TYPE_SLOT];

    const char *keys[N_FIELDS + 1];
    for (size_t i = 0; i < N_FIELDS; i++) keys[i] = FIELDS[i].key;
    keys[N_FIELDS] = NULL;
    const ynode *f = section(L, m, "fields", keys);
    for (size_t i = 0; f && i < N_FIELDS; i++) {
        get_str(L, f, FIELDS[i].key, 0, &c->decode_strs[i]);
        if (c->decode_strs[i]) *(const char **)((char *)&c->decoder.map + FIELDS[i].off) = c->decode_strs[i];
    }
}

static void load_daemon(cload *L, const ynode *top) {
    config_t *c = L->c;
    const ynode *m = section(L, top, "daemon", DAEMON_KEYS);
    if (!m) return;
    const ynode *n = yn_get(m, "allow_root");
    if (n) yn_bool(n, L->file, "allow_root", &c->allow_root, L->d);
    get_duration(L, m, "shutdown_timeout", &c->shutdown_timeout_ms);
}

/* The listener is checked here, so `benefitd check` refuses what the daemon
 * would refuse: a bind address that is not loopback needs allow_remote. */
static void load_http(cload *L, const ynode *top) {
    config_t *c = L->c;
    const ynode *m = section(L, top, "http", HTTP_KEYS);
    if (!m) return;
    const ynode *n = yn_get(m, "enabled");
    if (n) yn_bool(n, L->file, "enabled", &c->http_enabled, L->d);
    n = yn_get(m, "allow_remote");
    if (n) yn_bool(n, L->file, "allow_remote", &c->http_allow_remote, L->d);
    long long v = c->http_port;
    get_int(L, m, "port", 0, 65535, &v);
    c->http_port = (int)v;
    const ynode *b = yn_get(m, "bind");
    size_t before = L->d->n;
    get_str(L, m, "bind", 0, &c->http_bind);
    if (!c->http_enabled || L->d->n > before) return;
    char err[300];
    if (http_check_bind(c->http_bind, c->http_allow_remote, err, sizeof err) != 0)
        err_at(L, b ? b : m, "%s", err);
}

/* ---- public ---------------------------------------------------------------- */

int config_load(config_t *c, const char *path, diag_t *diag) {
    size_t before = diag->n;
    ynode *root = yn_load_file(path, diag);
    if (!root) return -1;
    set_str(&c->path, path);
    const char *slash = strrchr(path, '/');
    cload L = {.file = path, .dir = slash ? xstrndup(path, slash == path ? 1 : (size_t)(slash - path)) : NULL,
               .d = diag, .c = c};
    if (root->kind != YN_MAP) {
        err_at(&L, root, "the configuration must be a mapping");
    } else {
        yn_check_keys(root, path, TOP_KEYS, diag);
        char *dl_tmpl = xstrdup(DEFAULT_DEAD_LETTER_KEY);
        load_kafka(&L, root);
        load_redis(&L, root);
        load_rules(&L, root);
        load_output(&L, root);
        load_dead_letter(&L, root, &dl_tmpl);
        load_decode(&L, root);
        load_daemon(&L, root);
        load_http(&L, root);
        load_policy(&L, root);
        load_loop(&L, root);
        load_plugins(&L, root);
        load_profiles(&L, root);
        /* after every section: the prefix may be set after dead_letter.key */
        strbuf b;
        sb_init(&b);
        expand(dl_tmpl, c->key_prefix, NULL, &b);
        free(c->dead_letter_key);
        c->dead_letter_key = b.s;
        free(dl_tmpl);
        char *dir = resolve_path(&L, c->rules_dir);
        free(c->rules_dir);
        c->rules_dir = dir;
    }
    free(L.dir);
    yn_free(root);
    return diag->n > before ? -1 : 0;
}

long long config_pool_low_stock(const config_t *c, const char *pool) {
    for (size_t i = 0; i < c->n_pool_low; i++)
        if (!strcmp(c->pool_low[i].key, pool)) return atoll(c->pool_low[i].value);
    return c->pool_low_stock_default;
}

const channel_cfg_t *config_channel(const config_t *c, const char *channel) {
    const channel_cfg_t *def = NULL;
    for (size_t i = 0; i < c->n_channels; i++) {
        if (channel && !strcmp(c->channels[i].name, channel)) return &c->channels[i];
        if (!strcmp(c->channels[i].name, "*")) def = &c->channels[i];
    }
    return def;
}

void config_channel_key(const config_t *c, const channel_cfg_t *ch, const char *channel, strbuf *out) {
    expand(ch->key, c->key_prefix, channel ? channel : "default", out);
}
