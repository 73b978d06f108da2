/* risk.c - benefitd plugin "risk": velocity checks against coupon farming
 * (plugin API 1).
 *
 * Config (plugins.load.risk; JSON of the YAML block; any other key fails init
 * naming it; a check set to null is disabled; another key set to null takes
 * its default):
 *   accounts_per_device     {window: 24h, medium: 3, high: 5}
 *   accounts_per_ip         {window: 1h, medium: 5, high: 10}
 *   redemptions_per_device  {window: 24h, medium: 5, high: 10}
 *       a check's keys: window (duration > 0), medium, high (integers >= 1,
 *       medium <= high); a key left out takes the default above
 *   redemption_events  name or list    default [Coupon Redeemed, Benefit Redeemed]
 *   device             path            default context.device.id
 *   ip                 path            default context.ip
 *   hold               duration >= 0   default 24h: how long a raised level
 *                                      stays without new evidence
 *   block              medium | high | never   default high: at that level or
 *                                      above, block the member and the
 *                                      offending device / ip
 * (device, ip and grant ids are read as strings; a number is taken in its
 * decimal form; anything else is absent.)
 *
 * On each event of the member, with ts = the event's time:
 *   a device:  n = window_add("accounts_per_device", device, member, ts, window)
 *   an ip:     n = window_add("accounts_per_ip", ip, member, ts, window)
 *   a redemption event with a device and properties.grant_id:
 *              n = window_add("redemptions_per_device", device, grant_id, ts, window)
 * Each check's level: n >= high -> high, n >= medium -> medium, else low; the
 * event's level c is the highest. With p = the trait `risk` (low when absent):
 *   c > p                       raised: risk = c, risk_at = now
 *   c = p > low                 the same evidence again: risk_at = now (the
 *                               hold starts over)
 *   c < p, now < risk_at + hold held: nothing changes
 *   c < p, hold over            lowered: risk = c (risk_at = now when c > low)
 * risk_reason is the evidence of the level (the first check at it), e.g.
 * "accounts_per_device=6 >= 5 on device d1 in 24h"; null once low again.
 * When the level is above low, a revisit is asked for at risk_at + hold; the
 * revisit (no event, so no evidence) lowers an expired level to low.
 *
 * Blocking: while the level is at or above `block`, every device / ip whose
 * check reached `block` and the member are blocked once (host->block, reason
 * = the evidence); what was blocked is remembered in _risk and forgotten when
 * the level falls below `block`, so each raise blocks once, not every event.
 *
 * Log lines (plugin=risk, event=risk_decision): WARN for every raise (one line
 * per check at the new level) and every block, with the evidence:
 *   user=u5 level=high check=accounts_per_device key=d1 count=5 threshold=5
 *   window=24h [previous=medium] [blocked=device:d1] [blocked_user=u5]
 * INFO when a level is lowered (user=.. level=low previous=high). Repeated
 * evidence at an unchanged level logs nothing. Also config (INFO, at init).
 *
 * Traits set: risk ("low" | "medium" | "high"), risk_at (num, ms),
 *   risk_reason (str, null when low), _risk (private state, only once
 *   something was blocked: {"blocked":["user","device:d1",...]}).
 * Events emitted: none.
 * Functions: risk_rank(level) -> low 0, medium 1, high 2; missing otherwise
 *   (stateless). */
#include "../plugin_util.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>

#define MAX_BLOCKED 16
#define STATE_TRAIT "_risk"

enum { LOW = 0, MEDIUM = 1, HIGH = 2, NEVER = 3 };
static const char *const LEVEL_NAMES[] = {"low", "medium", "high", "never"};

enum { CK_ACCOUNTS_DEVICE, CK_ACCOUNTS_IP, CK_REDEMPTIONS_DEVICE, NCHECKS };
static const char *const CHECK_NAMES[NCHECKS] = {"accounts_per_device", "accounts_per_ip", "redemptions_per_device"};
static const char *const CHECK_KINDS[NCHECKS] = {"device", "ip", "device"};
static const struct {
    const char *window;
    long long medium, high;
} CHECK_DEFAULTS[NCHECKS] = {{"24h", 3, 5}, {"1h", 5, 10}, {"24h", 5, 10}};

typedef struct check {
    int enabled;
    long long window_ms;
    char window_text[32];
    long long medium, high;
} check_t;

typedef struct risk {
    const bd_host *host;
    check_t ck[NCHECKS];
    char **redemption_events;
    int nredemption;
    char *device_path, *ip_path;
    long long hold_ms;
    char hold_text[32];
    int block_level;                   /* MEDIUM, HIGH or NEVER */
} risk_t;

/* --- small helpers --------------------------------------------------------- */

static int level_of(bd_value v) {
    if (v.kind != BD_STR || !v.str) return -1;
    for (int i = LOW; i <= HIGH; i++)
        if (strcmp(v.str, LEVEL_NAMES[i]) == 0) return i;
    return -1;
}

/* A string or a number as text, copied into buf (a host may hand several
 * values out of one scratch buffer); NULL when absent or empty. */
static const char *text_of(bd_value v, char *buf, size_t n) {
    if (v.kind == BD_STR && v.str && *v.str) snprintf(buf, n, "%s", v.str);
    else if (v.kind == BD_NUM && isfinite(v.num)) snprintf(buf, n, "%.17g", v.num);
    else return NULL;
    return buf;
}

/* --- config ----------------------------------------------------------------- */

#define RISK_LOG(h, level, ...) bdp_log(h, level, "risk", "risk_decision", __VA_ARGS__)

static const char *const REDEMPTION_DEFAULTS[] = {"Coupon Redeemed", "Benefit Redeemed"};
static const char *const KNOWN_KEYS[] = {"accounts_per_device", "accounts_per_ip", "redemptions_per_device",
                                         "redemption_events", "device", "ip", "hold", "block", NULL};

static int cfg_count(const cJSON *obj, const char *check, const char *key, long long def, long long *out, char *err,
                     size_t errlen) {
    const cJSON *j = bdp_opt(obj, key);
    *out = def;
    if (!j) return 0;
    if (!cJSON_IsNumber(j) || !bdp_as_int(j->valuedouble, out) || (double)*out != j->valuedouble || *out < 1)
        return bdp_fail(err, errlen, "%s.%s: must be an integer >= 1", check, key);
    return 0;
}

static int cfg_check(risk_t *r, const cJSON *root, int i, char *err, size_t errlen) {
    const char *name = CHECK_NAMES[i];
    check_t *ck = &r->ck[i];
    const cJSON *j = root ? cJSON_GetObjectItemCaseSensitive(root, name) : NULL;
    if (j && cJSON_IsNull(j)) return 0;   /* disabled */
    if (j && !cJSON_IsObject(j))
        return bdp_fail(err, errlen, "%s: must be a mapping {window, medium, high} or null (disabled)", name);
    for (const cJSON *k = j ? j->child : NULL; k; k = k->next)
        if (strcmp(k->string, "window") && strcmp(k->string, "medium") && strcmp(k->string, "high"))
            return bdp_fail(err, errlen, "%s: unknown key '%s' (known: window, medium, high)", name, k->string);
    const cJSON *w = bdp_opt(j, "window");
    const char *wt = CHECK_DEFAULTS[i].window;
    if (w && !cJSON_IsString(w)) return bdp_fail(err, errlen, "%s.window: must be a duration such as \"%s\"", name, wt);
    if (w) wt = w->valuestring;
    ck->window_ms = r->host->parse_duration_ms(wt);
    if (ck->window_ms <= 0)
        return bdp_fail(err, errlen, "%s.window: \"%s\" is not a duration above 0 (use e.g. \"%s\")", name, wt,
                    CHECK_DEFAULTS[i].window);
    snprintf(ck->window_text, sizeof ck->window_text, "%s", wt);
    if (cfg_count(j, name, "medium", CHECK_DEFAULTS[i].medium, &ck->medium, err, errlen)) return -1;
    if (cfg_count(j, name, "high", CHECK_DEFAULTS[i].high, &ck->high, err, errlen)) return -1;
    if (ck->medium > ck->high)
        return bdp_fail(err, errlen, "%s: medium (%lld) must not exceed high (%lld)", name, ck->medium, ck->high);
    ck->enabled = 1;
    return 0;
}

static int cfg_path(const cJSON *root, const char *key, const char *def, char **out, char *err, size_t errlen) {
    const cJSON *j = bdp_opt(root, key);
    if (j && (!cJSON_IsString(j) || !*j->valuestring))
        return bdp_fail(err, errlen, "%s: must be a path such as %s", key, def);
    if (!(*out = bdp_dupstr(j ? j->valuestring : def))) return bdp_fail(err, errlen, "out of memory");
    return 0;
}

static int parse_config(risk_t *r, const cJSON *root, char *err, size_t errlen) {
    if (bdp_check_keys(root, KNOWN_KEYS, err, errlen)) return -1;
    for (int i = 0; i < NCHECKS; i++)
        if (cfg_check(r, root, i, err, errlen)) return -1;
    if (bdp_cfg_events(root, "redemption_events", REDEMPTION_DEFAULTS, 2, &r->redemption_events, &r->nredemption,
                       err, errlen))
        return -1;
    if (cfg_path(root, "device", "context.device.id", &r->device_path, err, errlen)) return -1;
    if (cfg_path(root, "ip", "context.ip", &r->ip_path, err, errlen)) return -1;
    const cJSON *j = bdp_opt(root, "hold");
    const char *ht = "24h";
    if (j && !cJSON_IsString(j)) return bdp_fail(err, errlen, "hold: must be a duration such as \"24h\"");
    if (j) ht = j->valuestring;
    r->hold_ms = r->host->parse_duration_ms(ht);
    if (r->hold_ms < 0) return bdp_fail(err, errlen, "hold: \"%s\" is not a duration (use e.g. \"24h\")", ht);
    snprintf(r->hold_text, sizeof r->hold_text, "%s", ht);
    j = bdp_opt(root, "block");
    r->block_level = HIGH;
    if (j) {
        r->block_level = -1;
        for (int i = MEDIUM; i <= NEVER && cJSON_IsString(j); i++)
            if (strcmp(j->valuestring, LEVEL_NAMES[i]) == 0) r->block_level = i;
        if (r->block_level < 0) return bdp_fail(err, errlen, "block: must be medium, high or never");
    }
    return 0;
}

static void risk_free(risk_t *r) {
    if (!r) return;
    for (int i = 0; i < r->nredemption; i++) free(r->redemption_events[i]);
    free(r->redemption_events);
    free(r->device_path);
    free(r->ip_path);
    free(r);
}

/* --- private state: what this raise blocked --------------------------------- */

typedef struct blocked {
    char *item[MAX_BLOCKED];           /* "user", "device:<id>", "ip:<id>" */
    int n;
    int changed;
} blocked_t;

static void blocked_load(blocked_t *b, const char *text) {
    cJSON *j = cJSON_Parse(text);
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "blocked");
    for (const cJSON *e = cJSON_IsArray(arr) ? arr->child : NULL; e && b->n < MAX_BLOCKED; e = e->next)
        if (cJSON_IsString(e) && (b->item[b->n] = bdp_dupstr(e->valuestring)) != NULL) b->n++;
    cJSON_Delete(j);
}

static int blocked_has(const blocked_t *b, const char *item) {
    for (int i = 0; i < b->n; i++)
        if (strcmp(b->item[i], item) == 0) return 1;
    return 0;
}

static void blocked_add(blocked_t *b, const char *item) {
    char *d = bdp_dupstr(item);
    if (!d) return;
    if (b->n == MAX_BLOCKED) {         /* forget the oldest: at worst it is blocked again */
        free(b->item[0]);
        memmove(b->item, b->item + 1, (MAX_BLOCKED - 1) * sizeof *b->item);
        b->n--;
    }
    b->item[b->n++] = d;
    b->changed = 1;
}

static void blocked_clear(blocked_t *b) {
    for (int i = 0; i < b->n; i++) free(b->item[i]);
    b->changed |= b->n > 0;
    b->n = 0;
}

static void blocked_save(const bd_host *h, bd_ctx *c, blocked_t *b) {
    if (b->changed) {
        cJSON *j = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(j, "blocked");
        for (int i = 0; arr && i < b->n; i++) cJSON_AddItemToArray(arr, cJSON_CreateString(b->item[i]));
        char *text = arr ? cJSON_PrintUnformatted(j) : NULL;
        if (text) bdp_set_str(h, c, STATE_TRAIT, text);
        free(text);
        cJSON_Delete(j);
    }
    for (int i = 0; i < b->n; i++) free(b->item[i]);
    b->n = 0;
}

/* --- evaluation ------------------------------------------------------------- */

typedef struct hit {
    const char *key;
    long long n;
    int level;
    long long threshold;
    int blocked_now;
    int logged;
} hit_t;

static void hit_reason(const risk_t *r, int i, const hit_t *x, char *buf, size_t n) {
    snprintf(buf, n, "%s=%lld >= %lld on %s %s in %s", CHECK_NAMES[i], x->n, x->threshold, CHECK_KINDS[i], x->key,
             r->ck[i].window_text);
}

static void judge(const risk_t *r, int i, hit_t *x) {
    const check_t *ck = &r->ck[i];
    x->level = x->n >= ck->high ? HIGH : x->n >= ck->medium ? MEDIUM : LOW;
    x->threshold = x->level == HIGH ? ck->high : ck->medium;
}

static int in_list(char *const *list, int n, const char *name) {
    for (int i = 0; name && i < n; i++)
        if (strcmp(list[i], name) == 0) return 1;
    return 0;
}

/* Lowers the member to level `to` (below the stored one). */
static void lower(const risk_t *r, bd_ctx *c, int from, int to) {
    const bd_host *h = r->host;
    bdp_set_str(h, c, "risk", LEVEL_NAMES[to]);
    if (to == LOW) bdp_clear_trait(h, c, "risk_reason");
    RISK_LOG(h, BD_LOG_INFO, "user=%s level=%s previous=%s hold=%s", h->user_id(c), LEVEL_NAMES[to], LEVEL_NAMES[from],
             r->hold_text);
}

static int risk_on_event(void *self, bd_ctx *c) {
    risk_t *r = self;
    const bd_host *h = r->host;
    long long now = h->now_ms(c);
    long long ts = h->event_time_ms(c);
    if (ts <= 0) ts = now;
    const char *user = h->user_id(c);
    char dbuf[256], ibuf[256], gbuf[256];
    const char *device = text_of(h->event_get(c, r->device_path), dbuf, sizeof dbuf);
    const char *ip = text_of(h->event_get(c, r->ip_path), ibuf, sizeof ibuf);

    hit_t hits[NCHECKS];
    memset(hits, 0, sizeof hits);
    int active[NCHECKS] = {0};
    if (device && r->ck[CK_ACCOUNTS_DEVICE].enabled) {
        active[CK_ACCOUNTS_DEVICE] = 1;
        hits[CK_ACCOUNTS_DEVICE].key = device;
        hits[CK_ACCOUNTS_DEVICE].n =
            h->window_add(c, CHECK_NAMES[CK_ACCOUNTS_DEVICE], device, user, ts, r->ck[CK_ACCOUNTS_DEVICE].window_ms);
    }
    if (ip && r->ck[CK_ACCOUNTS_IP].enabled) {
        active[CK_ACCOUNTS_IP] = 1;
        hits[CK_ACCOUNTS_IP].key = ip;
        hits[CK_ACCOUNTS_IP].n =
            h->window_add(c, CHECK_NAMES[CK_ACCOUNTS_IP], ip, user, ts, r->ck[CK_ACCOUNTS_IP].window_ms);
    }
    if (device && r->ck[CK_REDEMPTIONS_DEVICE].enabled &&
        in_list(r->redemption_events, r->nredemption, h->event_name(c))) {
        const char *grant = text_of(h->event_get(c, "properties.grant_id"), gbuf, sizeof gbuf);
        if (grant) {
            active[CK_REDEMPTIONS_DEVICE] = 1;
            hits[CK_REDEMPTIONS_DEVICE].key = device;
            hits[CK_REDEMPTIONS_DEVICE].n = h->window_add(c, CHECK_NAMES[CK_REDEMPTIONS_DEVICE], device, grant, ts,
                                                          r->ck[CK_REDEMPTIONS_DEVICE].window_ms);
        }
    }
    int cur = LOW, best = -1;
    for (int i = 0; i < NCHECKS; i++) {
        if (!active[i]) continue;
        judge(r, i, &hits[i]);
        if (hits[i].level > cur) {
            cur = hits[i].level;
            best = i;
        }
    }

    bd_value pv = h->trait_get(c, "risk");
    int prev = level_of(pv);
    int had_level = prev >= 0;
    if (prev < 0) prev = LOW;
    long long prev_at = 0;
    bd_value av = h->trait_get(c, "risk_at");
    int held = av.kind == BD_NUM && bdp_as_int(av.num, &prev_at) && now < prev_at + r->hold_ms;

    int level = cur > prev || !held ? cur : prev;
    int raised = level > prev;
    char reason[768] = "";
    if (best >= 0) hit_reason(r, best, &hits[best], reason, sizeof reason);
    if (level < prev) lower(r, c, prev, level);
    else if (level != prev || !had_level) bdp_set_str(h, c, "risk", LEVEL_NAMES[level]);
    if (cur > LOW && cur == level) {   /* fresh evidence for the level: raised, confirmed or lowered to it */
        bdp_set_num(h, c, "risk_at", (double)now);
        bdp_set_str(h, c, "risk_reason", reason);
        prev_at = now;
    }

    /* Blocks: once per raise for the member and each offending key. */
    blocked_t b;
    memset(&b, 0, sizeof b);
    bd_value sv = h->trait_get(c, STATE_TRAIT);
    if (sv.kind == BD_STR) blocked_load(&b, sv.str);
    int user_blocked_now = 0;
    if (level >= r->block_level) {
        for (int i = 0; i < NCHECKS; i++) {
            if (!active[i] || hits[i].level < r->block_level) continue;
            char item[300], why[768];
            snprintf(item, sizeof item, "%s:%s", CHECK_KINDS[i], hits[i].key);
            if (blocked_has(&b, item)) continue;
            hit_reason(r, i, &hits[i], why, sizeof why);
            h->block(c, CHECK_KINDS[i], hits[i].key, why);
            blocked_add(&b, item);
            hits[i].blocked_now = 1;
        }
        if (!blocked_has(&b, "user")) {
            bd_value rv = h->trait_get(c, "risk_reason");
            const char *why = best >= 0 && cur == level ? reason : rv.kind == BD_STR ? rv.str : LEVEL_NAMES[level];
            h->block(c, "user", user, why);
            blocked_add(&b, "user");
            user_blocked_now = 1;
        }
    } else {
        blocked_clear(&b);
    }

    /* The evidence of every raise and block. */
    int lines = 0;
    for (int i = 0; i < NCHECKS; i++) {
        if (!active[i] || !((raised && hits[i].level == level) || hits[i].blocked_now)) continue;
        char extra[256] = "";
        size_t off = 0;
        if (raised && had_level && prev > LOW)
            off += (size_t)snprintf(extra + off, sizeof extra - off, " previous=%s", LEVEL_NAMES[prev]);
        if (hits[i].blocked_now && off < sizeof extra)
            off += (size_t)snprintf(extra + off, sizeof extra - off, " blocked=%s:%s", CHECK_KINDS[i], hits[i].key);
        if (user_blocked_now && lines == 0 && off < sizeof extra)
            snprintf(extra + off, sizeof extra - off, " blocked_user=%s", user);
        RISK_LOG(h, BD_LOG_WARN, "user=%s level=%s check=%s key=%s count=%lld threshold=%lld window=%s%s", user,
                 LEVEL_NAMES[hits[i].level], CHECK_NAMES[i], hits[i].key, hits[i].n, hits[i].threshold,
                 r->ck[i].window_text, extra);
        lines++;
    }
    if (user_blocked_now && lines == 0)
        RISK_LOG(h, BD_LOG_WARN, "user=%s level=%s blocked_user=%s", user, LEVEL_NAMES[level], user);
    blocked_save(h, c, &b);

    if (level > LOW && prev_at + r->hold_ms > now) h->revisit_at(c, prev_at + r->hold_ms);
    return 0;
}

/* No event, no evidence: a level whose hold is over goes back to low. */
static int risk_on_revisit(void *self, bd_ctx *c) {
    risk_t *r = self;
    const bd_host *h = r->host;
    long long now = h->now_ms(c), at = 0;
    int prev = level_of(h->trait_get(c, "risk"));
    if (prev <= LOW) return 0;
    bd_value av = h->trait_get(c, "risk_at");
    if (av.kind == BD_NUM && bdp_as_int(av.num, &at) && now < at + r->hold_ms) {
        h->revisit_at(c, at + r->hold_ms);
        return 0;
    }
    lower(r, c, prev, LOW);
    blocked_t b;
    memset(&b, 0, sizeof b);
    bd_value sv = h->trait_get(c, STATE_TRAIT);
    if (sv.kind == BD_STR) blocked_load(&b, sv.str);
    blocked_clear(&b);
    blocked_save(h, c, &b);
    return 0;
}

/* --- the plugin ------------------------------------------------------------- */

static int risk_init(const bd_host *host, const char *config_json, void **self, char *err, size_t errlen) {
    cJSON *root;
    if (bdp_config_root(host, config_json, &root, err, errlen)) return -1;
    risk_t *r = calloc(1, sizeof *r);
    if (!r) {
        cJSON_Delete(root);
        return bdp_fail(err, errlen, "out of memory");
    }
    r->host = host;
    int rc = parse_config(r, root, err, errlen);
    cJSON_Delete(root);
    if (rc != 0) {
        risk_free(r);
        return -1;
    }
    char checks[256] = "";
    size_t off = 0;
    for (int i = 0; i < NCHECKS && off < sizeof checks; i++) {
        if (r->ck[i].enabled)
            off += (size_t)snprintf(checks + off, sizeof checks - off, " %s=%lld/%lld/%s", CHECK_NAMES[i],
                                    r->ck[i].medium, r->ck[i].high, r->ck[i].window_text);
        else
            off += (size_t)snprintf(checks + off, sizeof checks - off, " %s=off", CHECK_NAMES[i]);
    }
    host->log(BD_LOG_INFO, "risk", "config", checks + 1);
    char rest[256];
    snprintf(rest, sizeof rest, "device=%s ip=%s hold=%s block=%s redemption_events=%d", r->device_path, r->ip_path,
             r->hold_text, LEVEL_NAMES[r->block_level], r->nredemption);
    host->log(BD_LOG_INFO, "risk", "config", rest);
    *self = r;
    return 0;
}

static void risk_on_grant(void *self, bd_ctx *c, const char *grant_json) {}
static void risk_fini(void *self) { risk_free(self); }

static int fn_risk_rank(const bd_value *args, int nargs, bd_value *out) {
    out->kind = BD_MISSING;
    int l = nargs >= 1 ? level_of(args[0]) : -1;
    if (l >= 0) {
        out->kind = BD_NUM;
        out->num = l;
    }
    return 0;
}

static const bd_function risk_functions[] = {
    {"risk_rank", 1, 1, fn_risk_rank},
    {NULL, 0, 0, NULL},
};

BD_PLUGIN_DEFINE({
    .api_version = BD_PLUGIN_API_VERSION,
    .name = "risk",
    .version = "1.0.0",
    .description = "velocity checks (accounts per device/ip, redemptions per device) against coupon farming",
    .init = risk_init,
    .on_event = risk_on_event,
    .on_revisit = risk_on_revisit,
    .on_grant = risk_on_grant,
    .fini = risk_fini,
    .functions = risk_functions,
});
