/* tiers.c - benefitd plugin "tiers": a membership tier ladder (plugin API 1).
 *
 * A member climbs a ladder of levels by a measure summed over a rolling
 * window (spend, or points), and keeps a level while the measure stays at or
 * above keep_ratio x its threshold; below that the member is warned once and,
 * if still below when the grace period is over, moved down.
 *
 * Config (plugins.load.tiers; JSON of the YAML block; a key set to null takes
 * its default; any other key fails init naming it):
 *   measure     spend | points          default spend (names the measure in
 *                                       log lines only)
 *   events      name or list of names   default [Order Completed]: the events
 *                                       whose amount adds to the measure
 *   amount      path                    default properties.total (event_get);
 *                                       a missing, non-numeric or negative
 *                                       amount adds nothing
 *   window      duration                default 365d (rolling, > 0)
 *   levels      [{name, threshold}, ...] required: names unique, the first
 *                                       threshold 0, thresholds strictly
 *                                       ascending ("levels: thresholds must
 *                                       ascend")
 *   keep_ratio  number, 0 < r <= 1      default 0.8
 *   grace       duration                default 30d (>= 0)
 *
 * The window rule, per UTC day: an amount goes into the bucket of its event's
 * UTC day d (event time; the decision time when the event has none), and the
 * bucket counts while now < (d + 1) * 1d + window, i.e. an amount counts for
 * the whole window after the end of its day (at least `window`, at most
 * `window` + 1d). Buckets that have left are dropped. The measure M is the
 * sum of the remaining buckets, rounded to 6 decimals.
 *
 * Evaluation, on every event of the member (on_event) and on on_revisit:
 * add the event's amount if its name is in `events`, recompute M, then with
 * T = the trait `tier` when it names a level (else levels[0], set silently
 * with tier_since = now: a member seen first) and U = the highest level whose
 * threshold <= M:
 *   U above T           upgrade at once: tier = U, tier_since = now, warning
 *                       cleared; emit "Tier Changed" {"from":T,"to":U,
 *                       "direction":"up","measure":M}, tag "tier:T>U:<now>"
 *   M >= keep(T)        keep (keep(L) = keep_ratio x threshold(L)); a warning
 *                       is cleared
 *   below keep, not warned   tier_warned_at = now; emit "Tier Warning"
 *                       {"tier":T,"measure":M,"keep":keep(T),
 *                       "downgrade_at":now+grace}, tag "tierwarn:T:<now>"
 *   below keep, warned, now >= tier_warned_at + grace   downgrade to the
 *                       highest level L below T with M >= keep(L) (levels[0]
 *                       always qualifies): tier = L, tier_since = now,
 *                       warning cleared; emit "Tier Changed" {...,
 *                       "direction":"down"}, tag "tier:T>L:<now>"
 * Then, when the member is above levels[0] or warned, it asks for a revisit
 * at the earliest time something can change without events: tier_warned_at +
 * grace when warned, else when the oldest bucket leaves the window.
 *
 * Traits set: tier (str), tier_measure (num), tier_since (num, ms),
 *   tier_warned_at (num, ms; null once cleared), _tiers (private state: JSON
 *   text {"b":[[day,sum],...]}, one entry per UTC day with an amount).
 * Events emitted: Tier Changed, Tier Warning (above).
 * Functions: tier_rank(name) -> the level's 0-based index (number), missing
 *   for an unknown level or a non-string. Functions get no self pointer, so
 *   they read the levels of the plugin instance last initialised, kept in a
 *   static of this .so: one instance per process (the host loads a plugin
 *   once).
 * Log lines (plugin=tiers): config (INFO, at init), tier_changed and
 *   tier_warning (INFO), amount_ignored (DEBUG), state_reset (WARN: a
 *   private state that does not parse is dropped). */
#include "../plugin_util.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>

#define MAX_LEVELS 32
#define STATE_TRAIT "_tiers"

typedef struct level {
    char *name;
    double threshold;
} level_t;

typedef struct tiers {
    const bd_host *host;
    const char *measure;                /* "spend" or "points" */
    char **events;
    int nevents;
    char *amount;
    long long window_ms;
    char window_text[32];
    level_t *levels;
    int nlevels;
    double keep_ratio;
    long long grace_ms;
    char grace_text[32];
} tiers_t;

/* The instance the expression functions read (see the header comment). */
static const tiers_t *g_active;

/* --- small helpers --------------------------------------------------------- */

/* --- config ----------------------------------------------------------------- */

static const char *const DEFAULT_EVENTS[] = {"Order Completed"};
static const char *const KNOWN_KEYS[] = {"measure", "events", "amount", "window", "levels", "keep_ratio", "grace",
                                         NULL};

static int cfg_duration(const bd_host *h, const cJSON *root, const char *key, const char *def, int allow_zero,
                        long long *out, char *text, size_t textlen, char *err, size_t errlen) {
    const cJSON *j = bdp_opt(root, key);
    const char *s = def;
    if (j) {
        if (!cJSON_IsString(j)) return bdp_fail(err, errlen, "%s: must be a duration such as \"%s\"", key, def);
        s = j->valuestring;
    }
    long long ms = h->parse_duration_ms(s);
    if (ms < 0) return bdp_fail(err, errlen, "%s: \"%s\" is not a duration (use e.g. \"%s\")", key, s, def);
    if (ms == 0 && !allow_zero) return bdp_fail(err, errlen, "%s: must be longer than 0", key);
    *out = ms;
    snprintf(text, textlen, "%s", s);
    return 0;
}

static int cfg_levels(tiers_t *t, const cJSON *root, char *err, size_t errlen) {
    const cJSON *j = bdp_opt(root, "levels");
    if (!j) return bdp_fail(err, errlen, "levels: required (a list of {name, threshold}, the first threshold 0)");
    if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) == 0)
        return bdp_fail(err, errlen, "levels: must be a non-empty list of {name, threshold}");
    int n = cJSON_GetArraySize(j);
    if (n > MAX_LEVELS) return bdp_fail(err, errlen, "levels: at most %d levels", MAX_LEVELS);
    t->levels = calloc((size_t)n, sizeof *t->levels);
    if (!t->levels) return bdp_fail(err, errlen, "out of memory");
    t->nlevels = n;
    for (int i = 0; i < n; i++) {
        const cJSON *lv = cJSON_GetArrayItem(j, i);
        if (!cJSON_IsObject(lv)) return bdp_fail(err, errlen, "levels[%d]: must be a mapping {name, threshold}", i);
        for (const cJSON *k = lv->child; k; k = k->next)
            if (strcmp(k->string, "name") != 0 && strcmp(k->string, "threshold") != 0)
                return bdp_fail(err, errlen, "levels[%d]: unknown key '%s' (known: name, threshold)", i, k->string);
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(lv, "name");
        const cJSON *thr = cJSON_GetObjectItemCaseSensitive(lv, "threshold");
        if (!cJSON_IsString(name) || !*name->valuestring)
            return bdp_fail(err, errlen, "levels[%d]: name must be a non-empty string", i);
        if (!cJSON_IsNumber(thr) || !isfinite(thr->valuedouble) || thr->valuedouble < 0)
            return bdp_fail(err, errlen, "levels[%d] (%s): threshold must be a number >= 0", i, name->valuestring);
        for (int k = 0; k < i; k++)
            if (strcmp(t->levels[k].name, name->valuestring) == 0)
                return bdp_fail(err, errlen, "levels: duplicate name '%s'", name->valuestring);
        if (!(t->levels[i].name = bdp_dupstr(name->valuestring))) return bdp_fail(err, errlen, "out of memory");
        t->levels[i].threshold = thr->valuedouble;
        if (i == 0 && thr->valuedouble != 0)
            return bdp_fail(err, errlen, "levels: the first level's threshold must be 0 (%s has %g)", name->valuestring,
                        thr->valuedouble);
        if (i > 0 && !(thr->valuedouble > t->levels[i - 1].threshold))
            return bdp_fail(err, errlen, "levels: thresholds must ascend (%s %g, then %s %g)", t->levels[i - 1].name,
                        t->levels[i - 1].threshold, name->valuestring, thr->valuedouble);
    }
    return 0;
}

static int parse_config(tiers_t *t, const cJSON *root, char *err, size_t errlen) {
    if (bdp_check_keys(root, KNOWN_KEYS, err, errlen)) return -1;
    const cJSON *j = bdp_opt(root, "measure");
    t->measure = "spend";
    if (j) {
        if (!cJSON_IsString(j) || (strcmp(j->valuestring, "spend") && strcmp(j->valuestring, "points")))
            return bdp_fail(err, errlen, "measure: must be spend or points");
        t->measure = strcmp(j->valuestring, "spend") == 0 ? "spend" : "points";
    }
    if (bdp_cfg_events(root, "events", DEFAULT_EVENTS, 1, &t->events, &t->nevents, err, errlen)) return -1;
    j = bdp_opt(root, "amount");
    if (j && (!cJSON_IsString(j) || !*j->valuestring))
        return bdp_fail(err, errlen, "amount: must be a path such as properties.total");
    if (!(t->amount = bdp_dupstr(j ? j->valuestring : "properties.total")))
        return bdp_fail(err, errlen, "out of memory");
    if (cfg_duration(t->host, root, "window", "365d", 0, &t->window_ms, t->window_text, sizeof t->window_text, err,
                     errlen))
        return -1;
    if (cfg_levels(t, root, err, errlen)) return -1;
    j = bdp_opt(root, "keep_ratio");
    t->keep_ratio = 0.8;
    if (j) {
        if (!cJSON_IsNumber(j) || !(j->valuedouble > 0 && j->valuedouble <= 1))
            return bdp_fail(err, errlen, "keep_ratio: must be a number with 0 < keep_ratio <= 1");
        t->keep_ratio = j->valuedouble;
    }
    return cfg_duration(t->host, root, "grace", "30d", 1, &t->grace_ms, t->grace_text, sizeof t->grace_text, err,
                        errlen);
}

static void tiers_free(tiers_t *t) {
    if (!t) return;
    for (int i = 0; i < t->nevents; i++) free(t->events[i]);
    free(t->events);
    free(t->amount);
    for (int i = 0; i < t->nlevels; i++) free(t->levels[i].name);
    free(t->levels);
    free(t);
}

/* --- private state: daily buckets ------------------------------------------ */

typedef bdp_buckets state_t;   /* count unused: amounts only */

/* When the bucket of day leaves the window (see the header comment). */
static long long leaves_at(const tiers_t *t, long long day) { return bdp_bucket_leaves_at(day, t->window_ms); }

/* 0, or -1 when the text is not a state (the caller starts afresh). */
static int state_load(state_t *s, const char *text) {
    cJSON *j = cJSON_Parse(text);
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "b");
    int rc = cJSON_IsArray(b) ? 0 : -1;
    for (const cJSON *e = rc == 0 ? b->child : NULL; e; e = e->next) {
        const cJSON *d = cJSON_GetArrayItem(e, 0), *v = cJSON_GetArrayItem(e, 1);
        long long day;
        if (!cJSON_IsArray(e) || !cJSON_IsNumber(d) || !bdp_as_int(d->valuedouble, &day) || !cJSON_IsNumber(v) ||
            !isfinite(v->valuedouble) || v->valuedouble < 0 || bdp_buckets_add(s, day, 0, v->valuedouble) != 0) {
            rc = -1;
            break;
        }
    }
    cJSON_Delete(j);
    if (rc != 0) s->n = 0;
    return rc;
}

/* The state as text (malloc'd), or NULL on out of memory. */
static char *state_text(const state_t *s) {
    cJSON *j = cJSON_CreateObject(), *b = cJSON_AddArrayToObject(j, "b");
    for (int i = 0; b && i < s->n; i++) {
        cJSON *e = cJSON_CreateArray();
        cJSON_AddItemToArray(e, cJSON_CreateNumber((double)s->b[i].day));
        cJSON_AddItemToArray(e, cJSON_CreateNumber(s->b[i].sum));
        cJSON_AddItemToArray(b, e);
    }
    char *text = b ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    return text;
}

/* --- evaluation ------------------------------------------------------------- */

static int in_events(const tiers_t *t, const char *name) {
    for (int i = 0; name && i < t->nevents; i++)
        if (strcmp(t->events[i], name) == 0) return 1;
    return 0;
}

static double keep_of(const tiers_t *t, int level) { return bdp_round6(t->keep_ratio * t->levels[level].threshold); }

static int level_index(const tiers_t *t, bd_value v) {
    if (v.kind != BD_STR || !v.str) return -1;
    for (int i = 0; i < t->nlevels; i++)
        if (strcmp(t->levels[i].name, v.str) == 0) return i;
    return -1;
}

static void emit_json(const bd_host *h, bd_ctx *c, const char *event, cJSON *props, const char *tag) {
    char *text = props ? cJSON_PrintUnformatted(props) : NULL;
    if (text) h->emit(c, event, text, tag);
    else bdp_log(h, BD_LOG_ERROR, "tiers", "emit_failed", "user=%s event=\"%s\" out of memory", h->user_id(c), event);
    free(text);
    cJSON_Delete(props);
}

static void change_tier(const tiers_t *t, bd_ctx *c, int from, int to, double m, long long now) {
    const bd_host *h = t->host;
    const char *dir = to > from ? "up" : "down";
    bdp_set_str(h, c, "tier", t->levels[to].name);
    bdp_set_num(h, c, "tier_since", (double)now);
    bdp_clear_trait(h, c, "tier_warned_at");
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "from", t->levels[from].name);
    cJSON_AddStringToObject(p, "to", t->levels[to].name);
    cJSON_AddStringToObject(p, "direction", dir);
    cJSON_AddNumberToObject(p, "measure", m);
    char tag[256];
    snprintf(tag, sizeof tag, "tier:%s>%s:%lld", t->levels[from].name, t->levels[to].name, now);
    emit_json(h, c, "Tier Changed", p, tag);
    bdp_log(h, BD_LOG_INFO, "tiers", "tier_changed", "user=%s from=%s to=%s direction=%s %s=%.15g", h->user_id(c),
            t->levels[from].name, t->levels[to].name, dir, t->measure, m);
}

static void warn_tier(const tiers_t *t, bd_ctx *c, int tier, double m, long long now) {
    const bd_host *h = t->host;
    bdp_set_num(h, c, "tier_warned_at", (double)now);
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "tier", t->levels[tier].name);
    cJSON_AddNumberToObject(p, "measure", m);
    cJSON_AddNumberToObject(p, "keep", keep_of(t, tier));
    cJSON_AddNumberToObject(p, "downgrade_at", (double)(now + t->grace_ms));
    char tag[256];
    snprintf(tag, sizeof tag, "tierwarn:%s:%lld", t->levels[tier].name, now);
    emit_json(h, c, "Tier Warning", p, tag);
    bdp_log(h, BD_LOG_INFO, "tiers", "tier_warning", "user=%s tier=%s %s=%.15g keep=%.15g downgrade_at=%lld",
            h->user_id(c), t->levels[tier].name, t->measure, m, keep_of(t, tier), now + t->grace_ms);
}

static int evaluate(tiers_t *t, bd_ctx *c, int with_event) {
    const bd_host *h = t->host;
    long long now = h->now_ms(c);
    const char *user = h->user_id(c);
    state_t st = {0};
    bd_value sv = h->trait_get(c, STATE_TRAIT);
    const char *old_text = sv.kind == BD_STR ? sv.str : NULL;
    if (old_text && state_load(&st, old_text) != 0)
        bdp_log(h, BD_LOG_WARN, "tiers", "state_reset", "user=%s %s does not parse; starting afresh", user,
                STATE_TRAIT);

    if (with_event && in_events(t, h->event_name(c))) {
        bd_value a = h->event_get(c, t->amount);
        long long ts = h->event_time_ms(c);
        if (ts <= 0) ts = now;
        if (a.kind != BD_NUM || !isfinite(a.num) || a.num < 0)
            bdp_log(h, BD_LOG_DEBUG, "tiers", "amount_ignored", "user=%s event=\"%s\" path=%s", user, h->event_name(c),
                    t->amount);
        else if (leaves_at(t, bdp_day_of(ts)) > now && bdp_buckets_add(&st, bdp_day_of(ts), 0, a.num) != 0) {
            free(st.b);
            return -1;
        }
    }
    /* Drop the buckets that have left the window; sum the rest. */
    bdp_buckets_expire(&st, t->window_ms, now);
    double m = 0;
    for (int i = 0; i < st.n; i++) m += st.b[i].sum;
    m = bdp_round6(m);
    if (st.n > 0 || old_text) {
        char *text = state_text(&st);
        if (!text) {
            free(st.b);
            return -1;
        }
        if (!old_text || strcmp(old_text, text) != 0) bdp_set_str(h, c, STATE_TRAIT, text);
        free(text);
    }

    int tier = level_index(t, h->trait_get(c, "tier"));
    if (tier < 0) {
        bd_value tv = h->trait_get(c, "tier");
        if (tv.kind == BD_STR)
            bdp_log(h, BD_LOG_WARN, "tiers", "tier_unknown", "user=%s tier=\"%s\" is not a level; set to %s", user,
                    tv.str, t->levels[0].name);
        tier = 0;
        bdp_set_str(h, c, "tier", t->levels[0].name);
        bdp_set_num(h, c, "tier_since", (double)now);
    }
    bd_value wv = h->trait_get(c, "tier_warned_at");
    long long warned_at = 0;
    int warned = wv.kind == BD_NUM && bdp_as_int(wv.num, &warned_at);
    int target = 0;
    for (int i = 0; i < t->nlevels; i++)
        if (t->levels[i].threshold <= m) target = i;

    if (target > tier) {
        change_tier(t, c, tier, target, m, now);
        tier = target;
        warned = 0;
    } else if (m >= keep_of(t, tier)) {
        if (warned) bdp_clear_trait(h, c, "tier_warned_at");
        warned = 0;
    } else if (!warned) {
        warn_tier(t, c, tier, m, now);
        warned = 1;
        warned_at = now;
    } else if (now >= warned_at + t->grace_ms) {
        int to = tier - 1;
        while (to > 0 && m < keep_of(t, to)) to--;
        change_tier(t, c, tier, to, m, now);
        tier = to;
        warned = 0;
    }
    bdp_set_num(h, c, "tier_measure", m);

    if (tier > 0 || warned) {
        long long due = warned ? warned_at + t->grace_ms : st.n > 0 ? leaves_at(t, st.b[0].day) : -1;
        if (due > now) h->revisit_at(c, due);
    }
    free(st.b);
    return 0;
}

/* --- the plugin ------------------------------------------------------------- */

static int tiers_init(const bd_host *host, const char *config_json, void **self, char *err, size_t errlen) {
    cJSON *root;
    if (bdp_config_root(host, config_json, &root, err, errlen)) return -1;
    tiers_t *t = calloc(1, sizeof *t);
    if (!t) {
        cJSON_Delete(root);
        return bdp_fail(err, errlen, "out of memory");
    }
    t->host = host;
    int rc = parse_config(t, root, err, errlen);
    cJSON_Delete(root);
    if (rc != 0) {
        tiers_free(t);
        return -1;
    }
    char lv[512] = "";
    size_t off = 0;
    for (int i = 0; i < t->nlevels && off < sizeof lv; i++)
        off += (size_t)snprintf(lv + off, sizeof lv - off, "%s%s:%g", i ? "," : "", t->levels[i].name,
                                t->levels[i].threshold);
    bdp_log(host, BD_LOG_INFO, "tiers", "config", "measure=%s window=%s levels=%s keep_ratio=%g grace=%s", t->measure,
            t->window_text, lv, t->keep_ratio, t->grace_text);
    g_active = t;
    *self = t;
    return 0;
}

static int tiers_on_event(void *self, bd_ctx *c) { return evaluate(self, c, 1); }
static int tiers_on_revisit(void *self, bd_ctx *c) { return evaluate(self, c, 0); }
static void tiers_on_grant(void *self, bd_ctx *c, const char *grant_json) {}

static void tiers_fini(void *self) {
    if (g_active == self) g_active = NULL;
    tiers_free(self);
}

static int fn_tier_rank(const bd_value *args, int nargs, bd_value *out) {
    out->kind = BD_MISSING;
    if (!g_active || nargs < 1) return 0;
    int i = level_index(g_active, args[0]);
    if (i >= 0) {
        out->kind = BD_NUM;
        out->num = i;
    }
    return 0;
}

static const bd_function tiers_functions[] = {
    {"tier_rank", 1, 1, fn_tier_rank},
    {NULL, 0, 0, NULL},
};

BD_PLUGIN_DEFINE({
    .api_version = BD_PLUGIN_API_VERSION,
    .name = "tiers",
    .version = "1.0.0",
    .description = "membership tier ladder over a rolling measure, with keep ratio and grace",
    .init = tiers_init,
    .on_event = tiers_on_event,
    .on_revisit = tiers_on_revisit,
    .on_grant = tiers_on_grant,
    .fini = tiers_fini,
    .functions = tiers_functions,
});
