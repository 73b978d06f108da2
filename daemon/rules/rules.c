/* rules.c - rule files -> an immutable ruleset, indexed by event name.
 *
 * Loading never stops at the first problem: every file is parsed to the end
 * and every located error goes to the diag list, so an operator fixes a
 * directory in one pass. Any error makes the whole set refused (the caller
 * keeps the set it already runs). */
#include "rules.h"
#include "../core/util.h"
#include "../core/yamlnode.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* One open-addressing slot: event name -> the rules it triggers. */
typedef struct ev_slot {
    const char *name;         /* NULL = empty; points into a rule's events */
    rule_list_t list;
} ev_slot;

struct ruleset {
    rule_t **rules;           /* load order: files by name, then position in file */
    size_t n;
    rule_t **by_id;           /* sorted by id, for ruleset_find */
    ev_slot *slots;           /* capacity is a power of two, at most half full */
    size_t cap;
    char version[17];
    uint64_t generation;      /* unique per loaded set (ruleset_generation) */
    int uses_profile;         /* some rule reads user.* */
};

static const rule_list_t EMPTY_LIST = {NULL, 0};

/* A parsed rule plus what only the loader needs (the id's position, for the
 * duplicate message, and load order, to know which definition came first). */
typedef struct loaded {
    rule_t *r;
    int id_line, id_col;
    size_t seq;
} loaded;

typedef struct loader {
    const char *file;
    const char *tz;
    unsigned flags;           /* RULES_ALLOW_* */
    diag_t *d;
    loaded *items;
    size_t n, cap;
} loader;

static const char *const RULE_KEYS[] = {"id", "description", "enabled", "mode", "priority", "group",
                                        "active", "audience", "trigger", "wait", "cancel_on", "grant",
                                        "limits", "variants", "attribution_window", NULL};
static const char *const TRIGGER_KEYS[] = {"event", "where", "count", "within", "inactive_for", "events", "resolution", NULL};
static const char *const GRANT_KEYS[] = {"benefit", "sku", "value", "expires_in", "channel",
                                         "message", "to", "pool", NULL};
static const char *const LIMIT_KEYS[] = {"per_user", "per_device", "per_ip", "budget", "daily_budget", NULL};
static const char *const VARIANT_KEYS[] = {"name", "weight", "holdout", "grant", NULL};
static const char *const ACTIVE_KEYS[] = {"from", "until", NULL};

/* ---- small helpers -------------------------------------------------------- */

static void err_at(loader *L, const ynode *n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void err_at(loader *L, const ynode *n, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    diag_add(L->d, L->file, n ? n->line : 0, n ? n->col : 0, "%s", msg);
}

/* The key node of map[key] (errors about a key point at the key, not its value). */
static const ynode *key_node(const ynode *map, const char *key) {
    int i = yn_key_index(map, key);
    return i < 0 ? NULL : map->keys[i];
}

static int is_map(loader *L, const ynode *n, const char *what) {
    if (n->kind == YN_MAP) return 1;
    err_at(L, n, "'%s' must be a mapping", what);
    return 0;
}

/* A non-empty string value, owned; NULL (with an error) otherwise. */
static char *dup_str(loader *L, const ynode *n, const char *what) {
    const char *s;
    if (yn_str(n, L->file, what, &s, L->d) != 0) return NULL;
    if (!*s) {
        err_at(L, n, "'%s' must not be empty", what);
        return NULL;
    }
    return xstrdup(s);
}

/* An integer in [lo, hi]; returns 0 on success. */
static int int_in(loader *L, const ynode *n, const char *what, long long lo, long long hi, long long *out) {
    long long v;
    if (yn_int(n, L->file, what, &v, L->d) != 0) return -1;
    if (v < lo || v > hi) {
        if (lo == 1 && hi == LLONG_MAX)
            err_at(L, n, "'%s' must be a positive integer", what);
        else
            err_at(L, n, "'%s' must be between %lld and %lld", what, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

/* Where inside a scalar's source an offset into its value lands. Only exact
 * for single-line scalars; a block scalar's text does not map column for
 * column onto the file, so its errors point at the scalar itself. */
static void err_in_scalar(loader *L, const ynode *n, size_t off, const char *msg) {
    int col = n->col;
    if (!strchr(n->str, '\n')) col = n->str_col + (int)off;
    diag_add(L->d, L->file, n->line, col, "%s", msg[0] ? msg : "invalid expression");
}

static expr_t *compile_expr(loader *L, const ynode *n, const char *what) {
    if (n->kind != YN_SCALAR) {
        err_at(L, n, "'%s' must be an expression", what);
        return NULL;
    }
    char msg[256] = "";
    size_t off = 0;
    expr_t *e = expr_compile(n->str, &off, msg, sizeof msg);
    if (!e) err_in_scalar(L, n, off, msg);
    return e;
}

static template_t *compile_template(loader *L, const ynode *n, const char *what) {
    if (n->kind != YN_SCALAR) {
        err_at(L, n, "'%s' must be a string", what);
        return NULL;
    }
    char msg[256] = "";
    size_t off = 0;
    template_t *t = template_compile(n->str, &off, msg, sizeof msg);
    if (!t) err_in_scalar(L, n, off, msg);
    return t;
}

/* `event: A` or `event: [A, B]`: the names, owned. */
static void parse_names(loader *L, const ynode *n, const char *what, char ***out, size_t *nout) {
    if (n->kind == YN_SCALAR) {
        char *s = dup_str(L, n, what);
        if (!s) return;
        *out = xmalloc(sizeof(char *));
        (*out)[0] = s;
        *nout = 1;
        return;
    }
    if (n->kind != YN_SEQ || n->n == 0) {
        err_at(L, n, "'%s' must be an event name or a list of event names", what);
        return;
    }
    *out = xcalloc(n->n, sizeof(char *));
    for (size_t i = 0; i < n->n; i++) {
        char *s = dup_str(L, n->items[i], what);
        if (s) (*out)[(*nout)++] = s;
    }
}

static int is_bare_date(const char *s) {
    if (strlen(s) != 10) return 0;
    for (int i = 0; i < 10; i++) {
        if (i == 4 || i == 7) {
            if (s[i] != '-') return 0;
        } else if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
    }
    return 1;
}

/* `from`/`until` in the configured zone. A bare `until` date includes that
 * whole day, so the bound becomes the next local midnight (computed as a
 * calendar date, not +24h, so DST days stay right). */
static int parse_when(loader *L, const ynode *n, const char *what, int end_of_day, int64_t *out) {
    int64_t ms;
    if (n->kind != YN_SCALAR || parse_local_time_ms(n->str, L->tz, &ms) != 0) {
        err_at(L, n, "'%s' must be a date like 2026-12-31 or an ISO-8601 time", what);
        return -1;
    }
    if (end_of_day && is_bare_date(n->str)) {
        struct tm tm = {0};
        tm.tm_year = atoi(n->str) - 1900;
        tm.tm_mon = atoi(n->str + 5) - 1;
        tm.tm_mday = atoi(n->str + 8) + 1;
        time_t t = timegm(&tm); /* normalises the day overflow */
        gmtime_r(&t, &tm);
        char next[32];
        snprintf(next, sizeof next, "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
        if (parse_local_time_ms(next, L->tz, &ms) != 0) {
            err_at(L, n, "'%s' must be a date like 2026-12-31 or an ISO-8601 time", what);
            return -1;
        }
    }
    *out = ms;
    return 0;
}

/* ---- freeing -------------------------------------------------------------- */

static void grant_free(grant_spec_t *g) {
    free(g->benefit);
    free(g->sku);
    if (g->value) expr_free(g->value);
    free(g->channel);
    if (g->message) template_free(g->message);
    if (g->to) expr_free(g->to);
    free(g->pool);
}

static void free_names(char **v, size_t n) {
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

static void rule_free(rule_t *r) {
    if (!r) return;
    free(r->id);
    free(r->description);
    free(r->file);
    free(r->group);
    if (r->audience) expr_free(r->audience);
    free_names(r->events, r->n_events);
    if (r->where) expr_free(r->where);
    free_names(r->cancel_on, r->n_cancel_on);
    grant_free(&r->grant);
    for (size_t i = 0; i < r->n_variants; i++) {
        free(r->variants[i].name);
        grant_free(&r->variants[i].grant);
    }
    free(r->variants);
    free(r);
}

/* ---- parsing one rule ----------------------------------------------------- */

static void grant_init(grant_spec_t *g) {
    memset(g, 0, sizeof *g);
    g->expires_in_ms = -1;
}

/* base: the rule's own grant (needs `benefit`); else a variant's partial grant. */
static void parse_grant(loader *L, const ynode *m, grant_spec_t *g, int base) {
    if (!is_map(L, m, "grant")) return;
    yn_check_keys(m, L->file, GRANT_KEYS, L->d);
    const ynode *n;
    if ((n = yn_get(m, "benefit"))) g->benefit = dup_str(L, n, "benefit");
    else if (base) err_at(L, m, "missing required key 'benefit'");
    if ((n = yn_get(m, "sku"))) g->sku = dup_str(L, n, "sku");
    if ((n = yn_get(m, "value"))) {
        if (n->kind != YN_SCALAR) err_at(L, n, "'value' must be a number or an expression");
        else g->value = compile_expr(L, n, "value"); /* a YAML number compiles to a constant */
    }
    if ((n = yn_get(m, "expires_in"))) {
        long long ms;
        if (yn_duration(n, L->file, "expires_in", &ms, L->d) == 0) g->expires_in_ms = ms;
    }
    if ((n = yn_get(m, "channel"))) g->channel = dup_str(L, n, "channel");
    if ((n = yn_get(m, "message"))) g->message = compile_template(L, n, "message");
    if ((n = yn_get(m, "to"))) g->to = compile_expr(L, n, "to");
    if ((n = yn_get(m, "pool"))) g->pool = dup_str(L, n, "pool");
}

static void parse_limit(loader *L, const ynode *m, const char *key, limit_t *out) {
    const ynode *n = yn_get(m, key);
    if (!n) return;
    int64_t count, period;
    if (n->kind != YN_SCALAR || parse_rate(n->str, &count, &period) != 0) {
        diag_add(L->d, L->file, n->line, n->kind == YN_SCALAR ? n->str_col : n->col,
                 "'%s' must be a rate like 1/7d", key);
        return;
    }
    out->count = count;
    out->period_ms = period;
}

static void parse_limits(loader *L, const ynode *m, rule_t *r) {
    if (!is_map(L, m, "limits")) return;
    yn_check_keys(m, L->file, LIMIT_KEYS, L->d);
    parse_limit(L, m, "per_user", &r->per_user);
    parse_limit(L, m, "per_device", &r->per_device);
    parse_limit(L, m, "per_ip", &r->per_ip);
    const ynode *n;
    if ((n = yn_get(m, "budget"))) int_in(L, n, "budget", 1, LLONG_MAX, &r->budget);
    if ((n = yn_get(m, "daily_budget"))) int_in(L, n, "daily_budget", 1, LLONG_MAX, &r->daily_budget);
}

static void parse_trigger(loader *L, const ynode *m, rule_t *r) {
    if (!is_map(L, m, "trigger")) return;
    yn_check_keys(m, L->file, TRIGGER_KEYS, L->d);
    const ynode *event = yn_get(m, "event"), *where = yn_get(m, "where"), *count = yn_get(m, "count"),
                *within = yn_get(m, "within"), *inactive = yn_get(m, "inactive_for"),
                *events = yn_get(m, "events"), *resolution = yn_get(m, "resolution");

    if (inactive) {
        r->kind = TRIG_INACTIVITY;
        if (count || within)
            err_at(L, key_node(m, count ? "count" : "within"),
                   "'%s' does not go with 'inactive_for': a trigger counts events or waits for silence, not both",
                   count ? "count" : "within");
        if (event)
            err_at(L, key_node(m, "event"),
                   "'event' does not go with 'inactive_for' (list what counts as activity under 'events')");
        if (where) err_at(L, key_node(m, "where"), "'where' does not go with 'inactive_for'");
        long long ms;
        if (yn_duration(inactive, L->file, "inactive_for", &ms, L->d) == 0) {
            if (ms <= 0) err_at(L, inactive, "'inactive_for' must be longer than 0");
            r->inactive_ms = ms;
        }
        if (resolution && yn_duration(resolution, L->file, "resolution", &ms, L->d) == 0) {
            /* a step longer than the silence would let a member who was never
             * silent that long count as gone */
            if (ms <= 0 || (r->inactive_ms > 0 && ms > r->inactive_ms))
                err_at(L, resolution, "'resolution' must be longer than 0 and at most 'inactive_for'");
            else r->resolution_ms = ms;
        }
        if (events) parse_names(L, events, "events", &r->events, &r->n_events);
        return;
    }
    if (resolution) err_at(L, key_node(m, "resolution"), "'resolution' goes with 'inactive_for' only");

    if (events) err_at(L, key_node(m, "events"), "'events' goes with 'inactive_for' only (use 'event')");
    if (event) parse_names(L, event, "event", &r->events, &r->n_events);
    else err_at(L, m, "missing required key 'event'");
    if (where) r->where = compile_expr(L, where, "where");
    if (count || within) {
        r->kind = TRIG_COUNT;
        if (!count) err_at(L, key_node(m, "within"), "'within' needs 'count' beside it");
        if (!within) err_at(L, key_node(m, "count"), "'count' needs 'within' beside it");
        if (count) int_in(L, count, "count", 1, LLONG_MAX, &r->count);
        long long ms;
        if (within && yn_duration(within, L->file, "within", &ms, L->d) == 0) {
            if (ms <= 0) err_at(L, within, "'within' must be longer than 0");
            r->within_ms = ms;
        }
    } else {
        r->kind = TRIG_EVENT;
    }
}

#define MAX_WEIGHT 1000000 /* keeps the sum of weights far from INT_MAX */

static void parse_variants(loader *L, const ynode *s, rule_t *r) {
    if (s->kind != YN_SEQ || s->n == 0) {
        err_at(L, s, "'variants' must be a list of variants");
        return;
    }
    r->variants = xcalloc(s->n, sizeof *r->variants);
    r->n_variants = s->n;
    for (size_t i = 0; i < s->n; i++) {
        const ynode *m = s->items[i];
        variant_t *v = &r->variants[i];
        grant_init(&v->grant);
        if (m->kind != YN_MAP) {
            err_at(L, m, "each variant must be a mapping");
            continue;
        }
        yn_check_keys(m, L->file, VARIANT_KEYS, L->d);
        const ynode *n;
        if ((n = yn_get(m, "name"))) {
            v->name = dup_str(L, n, "name");
            for (size_t j = 0; v->name && j < i; j++)
                if (r->variants[j].name && strcmp(r->variants[j].name, v->name) == 0)
                    err_at(L, n, "duplicate variant name '%s'", v->name);
        } else {
            err_at(L, m, "missing required key 'name'");
        }
        long long w;
        if ((n = yn_get(m, "weight"))) {
            if (int_in(L, n, "weight", 1, MAX_WEIGHT, &w) == 0) {
                v->weight = (int)w;
                r->total_weight += v->weight;
            }
        } else {
            err_at(L, m, "missing required key 'weight'");
        }
        if ((n = yn_get(m, "holdout"))) yn_bool(n, L->file, "holdout", &v->holdout, L->d);
        if ((n = yn_get(m, "grant"))) parse_grant(L, n, &v->grant, 0);
    }
}

/* A code is handed out from a pool, so a grant whose effective benefit is
 * `code` (variant over base) must name one. */
static void check_code_pools(loader *L, const ynode *rm, const rule_t *r) {
    const ynode *gm = yn_get(rm, "grant");
    if (r->grant.benefit && !strcmp(r->grant.benefit, "code") && !r->grant.pool)
        err_at(L, yn_get(gm, "benefit"), "'benefit: code' needs a 'pool' to take codes from");
    const ynode *vs = yn_get(rm, "variants");
    for (size_t i = 0; i < r->n_variants; i++) {
        const grant_spec_t *g = &r->variants[i].grant;
        if (r->variants[i].holdout || (!g->benefit && !g->pool)) continue;
        const char *benefit = g->benefit ? g->benefit : r->grant.benefit;
        const char *pool = g->pool ? g->pool : r->grant.pool;
        if (benefit && !strcmp(benefit, "code") && !pool)
            err_at(L, vs->items[i], "'benefit: code' needs a 'pool' to take codes from");
    }
}

static int grant_uses_profile(const grant_spec_t *g) {
    return expr_uses_user(g->value) || expr_uses_user(g->to) || template_uses_user(g->message);
}

/* Whether deciding r reads the member's profile: the daemon then loads
 * profiles before deciding (docs/profiles.md). */
static int rule_uses_profile(const rule_t *r) {
    if (r->audience || expr_uses_user(r->where) || grant_uses_profile(&r->grant)) return 1;
    for (size_t i = 0; i < r->n_variants; i++)
        if (grant_uses_profile(&r->variants[i].grant)) return 1;
    return 0;
}

/* ==== NOT YET IMPLEMENTED DOWNSTREAM =========================================
 * The keys below are parsed and fully checked above (so a file is valid the
 * day they land), then refused here so nobody believes a key is enforced
 * when it is not (`limits` and `pool` landed with issue 4: docs/policy.md;
 * `audience` with member profiles, issue 5). Delete a row when its feature ships everywhere;
 * `allowed_by` names the load flag under which a row's feature works (every
 * command now loads with RULES_ALLOW_TIME; see rules.h).
 * section NULL = the rule itself; "grant" also covers every variant's grant. */
static const struct {
    const char *section;
    const char *key;
    unsigned allowed_by;
} UNSUPPORTED[] = {
    {NULL, "wait", RULES_ALLOW_TIME},
    {NULL, "cancel_on", RULES_ALLOW_TIME},
    {"trigger", "count", RULES_ALLOW_TIME},
    {"trigger", "within", RULES_ALLOW_TIME},
    {"trigger", "inactive_for", RULES_ALLOW_TIME},
};

static void reject_in(loader *L, const ynode *m, const char *key) {
    const ynode *k = key_node(m, key);
    if (k) err_at(L, k, "'%s' is not supported yet by this build of benefitd", key);
}

static void reject_unsupported(loader *L, const ynode *rm) {
    for (size_t i = 0; i < sizeof UNSUPPORTED / sizeof UNSUPPORTED[0]; i++) {
        const char *sec = UNSUPPORTED[i].section, *key = UNSUPPORTED[i].key;
        if (UNSUPPORTED[i].allowed_by & L->flags) continue;
        if (!sec) {
            reject_in(L, rm, key);
            continue;
        }
        const ynode *m = yn_get(rm, sec);
        if (m && m->kind == YN_MAP) reject_in(L, m, key);
        if (strcmp(sec, "grant") != 0) continue;
        const ynode *vs = yn_get(rm, "variants");
        for (size_t j = 0; vs && vs->kind == YN_SEQ && j < vs->n; j++) {
            const ynode *vg = yn_get(vs->items[j], "grant");
            if (vg && vg->kind == YN_MAP) reject_in(L, vg, key);
        }
    }
}
/* ==== end of not yet implemented ========================================== */

static int valid_id(const char *s) {
    if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9'))) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-')) return 0;
    return 1;
}

static void parse_rule(loader *L, const ynode *m) {
    if (m->kind != YN_MAP) {
        err_at(L, m, "a rule must be a mapping");
        return;
    }
    yn_check_keys(m, L->file, RULE_KEYS, L->d);
    rule_t *r = xcalloc(1, sizeof *r);
    r->file = xstrdup(L->file);
    r->line = m->line;
    r->enabled = 1;
    grant_init(&r->grant);

    loaded it = {r, 0, 0, L->n};
    const ynode *n;
    if ((n = yn_get(m, "id"))) {
        r->id = dup_str(L, n, "id");
        if (r->id && !valid_id(r->id)) err_at(L, n, "rule id '%s' must match [a-z0-9][a-z0-9-]*", r->id);
        it.id_line = n->line;
        it.id_col = n->col;
    } else {
        err_at(L, m, "missing required key 'id'");
    }
    if ((n = yn_get(m, "description"))) {
        const char *s;
        if (yn_str(n, L->file, "description", &s, L->d) == 0) r->description = xstrdup(s);
    }
    if ((n = yn_get(m, "enabled"))) yn_bool(n, L->file, "enabled", &r->enabled, L->d);
    if ((n = yn_get(m, "mode"))) {
        const char *s;
        if (yn_str(n, L->file, "mode", &s, L->d) == 0) {
            if (!strcmp(s, "shadow")) r->shadow = 1;
            else if (strcmp(s, "live") != 0) err_at(L, n, "'mode' must be live or shadow");
        }
    }
    if ((n = yn_get(m, "priority"))) {
        long long p;
        if (int_in(L, n, "priority", INT_MIN, INT_MAX, &p) == 0) r->priority = (int)p;
    }
    if ((n = yn_get(m, "group"))) r->group = dup_str(L, n, "group");
    if ((n = yn_get(m, "active")) && is_map(L, n, "active")) {
        yn_check_keys(n, L->file, ACTIVE_KEYS, L->d);
        const ynode *from = yn_get(n, "from"), *until = yn_get(n, "until");
        int ok = 1;
        if (from) ok &= parse_when(L, from, "from", 0, &r->active_from_ms) == 0;
        if (until) ok &= parse_when(L, until, "until", 1, &r->active_until_ms) == 0;
        if (ok && from && until && r->active_from_ms >= r->active_until_ms)
            err_at(L, n, "'active' window is empty: 'from' must come before 'until'");
    }
    if ((n = yn_get(m, "audience"))) r->audience = compile_expr(L, n, "audience");
    if ((n = yn_get(m, "trigger"))) parse_trigger(L, n, r);
    else err_at(L, m, "missing required key 'trigger'");
    if ((n = yn_get(m, "wait"))) {
        long long ms;
        if (yn_duration(n, L->file, "wait", &ms, L->d) == 0) r->wait_ms = ms;
    }
    if ((n = yn_get(m, "cancel_on"))) parse_names(L, n, "cancel_on", &r->cancel_on, &r->n_cancel_on);
    if ((n = yn_get(m, "attribution_window"))) {
        long long ms;
        if (yn_duration(n, L->file, "attribution_window", &ms, L->d) == 0) {
            if (ms <= 0) err_at(L, n, "'attribution_window' must be longer than 0");
            else r->attribution_ms = ms;
        }
    }
    if ((n = yn_get(m, "grant"))) parse_grant(L, n, &r->grant, 1);
    else err_at(L, m, "missing required key 'grant'");
    if ((n = yn_get(m, "limits"))) parse_limits(L, n, r);
    if ((n = yn_get(m, "variants"))) parse_variants(L, n, r);
    check_code_pools(L, m, r);
    reject_unsupported(L, m);

    strbuf canon;
    sb_init(&canon);
    yn_canonical(m, &canon);
    snprintf(r->version, sizeof r->version, "%016" PRIx64, hash64(canon.s, canon.len, 0));
    sb_free(&canon);

    if (L->n == L->cap) {
        L->cap = L->cap ? L->cap * 2 : 16;
        L->items = xrealloc(L->items, L->cap * sizeof *L->items);
    }
    L->items[L->n++] = it;
}

/* Position of a "file:line:col: ..." message of this file, for sorting. */
static void msg_pos(const char *msg, const char *file, size_t flen, long *line, long *col) {
    *line = *col = 0;
    if (strncmp(msg, file, flen) != 0 || msg[flen] != ':') return;
    char *end;
    *line = strtol(msg + flen + 1, &end, 10);
    if (*end == ':') *col = strtol(end + 1, NULL, 10);
}

/* Checks run section by section, not line by line; an operator reads the
 * errors of a file top to bottom, so put them in file order (stable). */
static void sort_file_errors(diag_t *d, size_t from, const char *file) {
    size_t flen = strlen(file);
    for (size_t i = from + 1; i < d->n; i++) {
        char *m = d->msgs[i];
        long l, c;
        msg_pos(m, file, flen, &l, &c);
        size_t j = i;
        for (; j > from; j--) {
            long pl, pc;
            msg_pos(d->msgs[j - 1], file, flen, &pl, &pc);
            if (pl < l || (pl == l && pc <= c)) break;
            d->msgs[j] = d->msgs[j - 1];
        }
        d->msgs[j] = m;
    }
}

/* A file holds one rule, or several under a lone `rules:` key. */
static void parse_file_items(loader *L, const ynode *root) {
    if (root->kind != YN_MAP) {
        err_at(L, root, "a rule file holds one rule (a mapping) or several under 'rules:'");
        return;
    }
    if (root->n == 0) return; /* an empty file: nothing to load */
    const ynode *list = yn_get(root, "rules");
    if (list && !yn_get(root, "id")) {
        if (root->n != 1) {
            err_at(L, key_node(root, "rules"), "'rules' must be the only key of a file that lists several rules");
            return;
        }
        if (list->kind != YN_SEQ) {
            err_at(L, list, "'rules' must be a list of rules");
            return;
        }
        for (size_t i = 0; i < list->n; i++) parse_rule(L, list->items[i]);
        return;
    }
    parse_rule(L, root);
}

static void parse_file(loader *L, const ynode *root) {
    size_t before = L->d->n;
    parse_file_items(L, root);
    sort_file_errors(L->d, before, L->file);
}

/* ---- the set and its index ------------------------------------------------ */

static int cmp_loaded_id(const void *a, const void *b) {
    const loaded *x = *(const loaded *const *)a, *y = *(const loaded *const *)b;
    int c = strcmp(x->r->id, y->r->id);
    if (c) return c;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Ids are unique across the directory; the later definition is the error. */
static void check_duplicates(loader *L) {
    loaded **v = xcalloc(L->n ? L->n : 1, sizeof *v);
    size_t n = 0;
    for (size_t i = 0; i < L->n; i++)
        if (L->items[i].r->id) v[n++] = &L->items[i];
    qsort(v, n, sizeof *v, cmp_loaded_id);
    for (size_t i = 1, first = 0; i < n; i++) {
        if (strcmp(v[i]->r->id, v[first]->r->id) != 0) {
            first = i;
            continue;
        }
        diag_add(L->d, v[i]->r->file, v[i]->id_line, v[i]->id_col, "duplicate rule id '%s' (first defined at %s:%d)",
                 v[i]->r->id, v[first]->r->file, v[first]->r->line);
    }
    free(v);
}

typedef struct ev_pair {
    const char *name;
    const rule_t *rule;
} ev_pair;

static int cmp_rank(const rule_t *x, const rule_t *y) {
    if (x->priority != y->priority) return x->priority > y->priority ? -1 : 1;
    return strcmp(x->id, y->id);
}

static int cmp_pair(const void *a, const void *b) {
    const ev_pair *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : cmp_rank(x->rule, y->rule);
}

static int cmp_rule_id(const void *a, const void *b) {
    return strcmp((*(const rule_t *const *)a)->id, (*(const rule_t *const *)b)->id);
}

static size_t slot_of(const ruleset_t *rs, const char *name) {
    size_t mask = rs->cap - 1;
    size_t i = (size_t)hash_words(name, strlen(name)) & mask; /* lists keep rule order whatever the slots */
    while (rs->slots[i].name && strcmp(rs->slots[i].name, name) != 0) i = (i + 1) & mask;
    return i;
}

/* Disabled and inactivity rules stay out: the first never fires, the second
 * fires on silence, not on a named event. */
static void build_index(ruleset_t *rs) {
    size_t np = 0;
    for (size_t i = 0; i < rs->n; i++)
        if (rs->rules[i]->enabled && rs->rules[i]->kind != TRIG_INACTIVITY) np += rs->rules[i]->n_events;
    if (np == 0) return;
    ev_pair *p = xmalloc(np * sizeof *p);
    np = 0;
    for (size_t i = 0; i < rs->n; i++) {
        const rule_t *r = rs->rules[i];
        if (!r->enabled || r->kind == TRIG_INACTIVITY) continue;
        for (size_t j = 0; j < r->n_events; j++) p[np++] = (ev_pair){r->events[j], r};
    }
    qsort(p, np, sizeof *p, cmp_pair);
    size_t distinct = 0;
    for (size_t i = 0; i < np; i++)
        if (i == 0 || strcmp(p[i].name, p[i - 1].name) != 0) distinct++;
    rs->cap = 8;
    while (rs->cap < distinct * 2) rs->cap *= 2;
    rs->slots = xcalloc(rs->cap, sizeof *rs->slots);
    for (size_t i = 0; i < np;) {
        size_t j = i;
        while (j < np && strcmp(p[j].name, p[i].name) == 0) j++;
        ev_slot *s = &rs->slots[slot_of(rs, p[i].name)];
        s->name = p[i].name;
        s->list.rules = xmalloc((j - i) * sizeof(rule_t *));
        for (size_t k = i; k < j; k++) /* `event: [A, A]` lists a rule once */
            if (s->list.n == 0 || s->list.rules[s->list.n - 1] != p[k].rule) s->list.rules[s->list.n++] = p[k].rule;
        i = j;
    }
    free(p);
}

static ruleset_t *finish(loader *L, size_t errors_before) {
    check_duplicates(L);
    if (L->d->n > errors_before) {
        for (size_t i = 0; i < L->n; i++) rule_free(L->items[i].r);
        free(L->items);
        return NULL;
    }
    ruleset_t *rs = xcalloc(1, sizeof *rs);
    static _Atomic uint64_t generations;
    rs->generation = ++generations;
    rs->n = L->n;
    rs->rules = xcalloc(L->n ? L->n : 1, sizeof *rs->rules);
    rs->by_id = xcalloc(L->n ? L->n : 1, sizeof *rs->by_id);
    strbuf all;
    sb_init(&all);
    for (size_t i = 0; i < L->n; i++) {
        rs->rules[i] = rs->by_id[i] = L->items[i].r;
        sb_puts(&all, L->items[i].r->version);
        if (rule_uses_profile(L->items[i].r)) rs->uses_profile = 1;
    }
    free(L->items);
    qsort(rs->by_id, rs->n, sizeof *rs->by_id, cmp_rule_id);
    snprintf(rs->version, sizeof rs->version, "%016" PRIx64, hash64(all.s ? all.s : "", all.len, 0));
    sb_free(&all);
    build_index(rs);
    return rs;
}

/* ---- public API ----------------------------------------------------------- */

ruleset_t *ruleset_load_string(const char *name, const char *text, size_t len, const char *timezone, diag_t *diag) {
    return ruleset_load_string_ex(name, text, len, timezone, 0, diag);
}

ruleset_t *ruleset_load_string_ex(const char *name, const char *text, size_t len, const char *timezone,
                                  unsigned flags, diag_t *diag) {
    size_t before = diag->n;
    loader L = {.file = name, .tz = timezone, .flags = flags, .d = diag};
    ynode *root = yn_load_string(name, text, len, diag);
    if (root) parse_file(&L, root);
    yn_free(root);
    return finish(&L, before);
}

static int has_rule_suffix(const char *s) {
    size_t n = strlen(s);
    return (n > 5 && !strcmp(s + n - 5, ".yaml")) || (n > 4 && !strcmp(s + n - 4, ".yml"));
}

static int cmp_cstr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

ruleset_t *ruleset_load_dir(const char *dir, const char *timezone, diag_t *diag) {
    return ruleset_load_dir_ex(dir, timezone, 0, diag);
}

ruleset_t *ruleset_load_dir_ex(const char *dir, const char *timezone, unsigned flags, diag_t *diag) {
    size_t before = diag->n;
    DIR *dp = opendir(dir);
    if (!dp) {
        diag_add(diag, dir, 0, 0, "cannot open rules directory: %s", strerror(errno));
        return NULL;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    const char *sep = dir[0] && dir[strlen(dir) - 1] == '/' ? "" : "/";
    struct dirent *de;
    while ((de = readdir(dp))) {
        /* dot files are editor locks and backups, never rules */
        if (de->d_name[0] == '.' || !has_rule_suffix(de->d_name)) continue;
        strbuf path;
        sb_init(&path);
        sb_printf(&path, "%s%s%s", dir, sep, de->d_name);
        struct stat st;
        if (stat(path.s, &st) != 0 || !S_ISREG(st.st_mode)) {
            sb_free(&path);
            continue;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            names = xrealloc(names, cap * sizeof *names);
        }
        names[n++] = path.s;
    }
    closedir(dp);
    qsort(names, n, sizeof *names, cmp_cstr);

    loader L = {.tz = timezone, .flags = flags, .d = diag};
    for (size_t i = 0; i < n; i++) {
        L.file = names[i];
        ynode *root = yn_load_file(names[i], diag);
        if (root) parse_file(&L, root);
        yn_free(root);
    }
    ruleset_t *rs = finish(&L, before);
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return rs;
}

void ruleset_free(ruleset_t *rs) {
    if (!rs) return;
    for (size_t i = 0; i < rs->cap; i++) free(rs->slots[i].list.rules);
    free(rs->slots);
    for (size_t i = 0; i < rs->n; i++) rule_free(rs->rules[i]);
    free(rs->rules);
    free(rs->by_id);
    free(rs);
}

size_t ruleset_count(const ruleset_t *rs) { return rs ? rs->n : 0; }

const rule_t *ruleset_rule(const ruleset_t *rs, size_t i) { return rs && i < rs->n ? rs->rules[i] : NULL; }

const rule_t *ruleset_find(const ruleset_t *rs, const char *id) {
    if (!rs || !id) return NULL;
    size_t lo = 0, hi = rs->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(id, rs->by_id[mid]->id);
        if (c == 0) return rs->by_id[mid];
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

const rule_list_t *ruleset_for_event(const ruleset_t *rs, const char *event_name) {
    if (!rs || !rs->cap || !event_name) return &EMPTY_LIST;
    ev_slot *s = &rs->slots[slot_of(rs, event_name)];
    return s->name ? &s->list : &EMPTY_LIST;
}

const char *ruleset_version(const ruleset_t *rs) { return rs ? rs->version : ""; }

uint64_t ruleset_generation(const ruleset_t *rs) { return rs ? rs->generation : 0; }

int ruleset_uses_profile(const ruleset_t *rs) { return rs && rs->uses_profile; }
