/* rfm.c - benefitd plugin "rfm": recency / frequency / monetary scores and a
 * segment per member (plugin API 1).
 *
 * Config (plugins.load.rfm; JSON of the YAML block; a key set to null takes
 * its default; any other key fails init naming it):
 *   events     name or list of names   default [Order Completed]: the orders
 *   amount     path                    default properties.total (event_get); a
 *                                      missing, non-numeric or negative amount
 *                                      adds 0 to M (the order still counts for
 *                                      R and F)
 *   window     duration                default 365d (> 0): F and M look back
 *                                      this far
 *   recency    4 durations, ascending  default [7d, 30d, 90d, 180d]
 *   frequency  4 integers >= 1, ascending   default [2, 4, 8, 16]
 *   monetary   4 numbers >= 0, ascending    default [100, 500, 1000, 5000]
 *
 * Scores, 1..5, judged at the decision time `now`:
 *   R  age of the last order (now - its event time): <= recency[0] -> 5,
 *      <= [1] -> 4, <= [2] -> 3, <= [3] -> 2, else 1 (an order in the future
 *      is age 0)
 *   F  orders in the window: >= frequency[3] -> 5, >= [2] -> 4, >= [1] -> 3,
 *      >= [0] -> 2, else 1
 *   M  sum of the amounts in the window, the same scheme with monetary
 * Segment: champion (R>=4, F>=4), loyal (R=3, F>=4), new (R>=4, F=1),
 *   promising (R>=4, F 2..3), need_attention (R=3, F<=3), at_risk (R<=2,
 *   F>=3), hibernating (R<=2, F<=2).
 * The window is kept in UTC-day buckets: an order goes into the bucket of its
 * event's UTC day d and counts while now < (d + 1) * 1d + window (at least
 * `window` after it, at most `window` + 1d).
 *
 * Evaluated on every event of the member (an order in `events` is recorded
 * first) and on on_revisit. The traits are set only once the member has had
 * an order (before that, nothing is set). Then a revisit is asked for at the
 * first moment a score can drop without events: the first millisecond the
 * last order's age passes the next recency boundary, or when the oldest
 * bucket leaves the window, whichever is first.
 *
 * Traits set: rfm_r, rfm_f, rfm_m (num 1..5), rfm_segment (str), _rfm
 *   (private state: JSON text {"last":ms,"b":[[day,orders,sum],...]}).
 * Events emitted: none.
 * Functions: rfm_score(r, f, m) -> r*100 + f*10 + m when all three are
 *   integers 1..5, else missing (stateless: no instance needed).
 * Log lines (plugin=rfm): config (INFO, at init), amount_ignored (DEBUG),
 *   state_reset (WARN: a private state that does not parse is dropped). */
#include "../plugin_util.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>

#define DAY_MS BDP_DAY_MS
#define STATE_TRAIT "_rfm"

typedef struct rfm {
    const bd_host *host;
    char **events;
    int nevents;
    char *amount;
    long long window_ms;
    char window_text[32];
    long long recency[4];
    double frequency[4];
    double monetary[4];
} rfm_t;

/* --- small helpers --------------------------------------------------------- */

/* --- config ----------------------------------------------------------------- */

static const char *const DEFAULT_EVENTS[] = {"Order Completed"};
static const char *const KNOWN_KEYS[] = {"events", "amount", "window", "recency", "frequency", "monetary", NULL};

/* Four ascending entries: durations (out_ms) or numbers (out_num). */
static int cfg_four(const bd_host *h, const cJSON *root, const char *key, long long *out_ms, double *out_num,
                    int integers, char *err, size_t errlen) {
    const cJSON *j = bdp_opt(root, key);
    if (!j) return 0;   /* defaults already in place */
    if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) != 4)
        return bdp_fail(err, errlen, "%s: must be a list of exactly 4 ascending %s", key,
                    out_ms ? "durations" : "numbers");
    for (int i = 0; i < 4; i++) {
        const cJSON *it = cJSON_GetArrayItem(j, i);
        double x;
        if (out_ms) {
            long long ms = cJSON_IsString(it) ? h->parse_duration_ms(it->valuestring) : -1;
            if (ms <= 0)
                return bdp_fail(err, errlen, "%s: entry %d is not a duration above 0 (use e.g. \"30d\")", key, i + 1);
            out_ms[i] = ms;
            x = (double)ms;
        } else {
            if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || it->valuedouble < (integers ? 1 : 0) ||
                (integers && it->valuedouble != floor(it->valuedouble)))
                return bdp_fail(err, errlen, "%s: entry %d must be %s", key, i + 1,
                            integers ? "an integer >= 1" : "a number >= 0");
            x = out_num[i] = it->valuedouble;
        }
        double prev = i == 0 ? 0 : out_ms ? (double)out_ms[i - 1] : out_num[i - 1];
        if (i > 0 && !(x > prev))
            return bdp_fail(err, errlen, "%s: entries must ascend (entry %d is not above entry %d)", key, i + 1, i);
    }
    return 0;
}

static int parse_config(rfm_t *r, const cJSON *root, char *err, size_t errlen) {
    if (bdp_check_keys(root, KNOWN_KEYS, err, errlen)) return -1;
    if (bdp_cfg_events(root, "events", DEFAULT_EVENTS, 1, &r->events, &r->nevents, err, errlen)) return -1;
    const cJSON *j = bdp_opt(root, "amount");
    if (j && (!cJSON_IsString(j) || !*j->valuestring))
        return bdp_fail(err, errlen, "amount: must be a path such as properties.total");
    if (!(r->amount = bdp_dupstr(j ? j->valuestring : "properties.total")))
        return bdp_fail(err, errlen, "out of memory");
    j = bdp_opt(root, "window");
    const char *w = "365d";
    if (j && !cJSON_IsString(j)) return bdp_fail(err, errlen, "window: must be a duration such as \"365d\"");
    if (j) w = j->valuestring;
    r->window_ms = r->host->parse_duration_ms(w);
    if (r->window_ms <= 0)
        return bdp_fail(err, errlen, "window: \"%s\" is not a duration above 0 (use e.g. \"365d\")", w);
    snprintf(r->window_text, sizeof r->window_text, "%s", w);
    static const long long rec[4] = {7 * DAY_MS, 30 * DAY_MS, 90 * DAY_MS, 180 * DAY_MS};
    static const double fr[4] = {2, 4, 8, 16}, mo[4] = {100, 500, 1000, 5000};
    memcpy(r->recency, rec, sizeof rec);
    memcpy(r->frequency, fr, sizeof fr);
    memcpy(r->monetary, mo, sizeof mo);
    if (cfg_four(r->host, root, "recency", r->recency, NULL, 0, err, errlen)) return -1;
    if (cfg_four(r->host, root, "frequency", NULL, r->frequency, 1, err, errlen)) return -1;
    return cfg_four(r->host, root, "monetary", NULL, r->monetary, 0, err, errlen);
}

static void rfm_free(rfm_t *r) {
    if (!r) return;
    for (int i = 0; i < r->nevents; i++) free(r->events[i]);
    free(r->events);
    free(r->amount);
    free(r);
}

/* --- private state ---------------------------------------------------------- */

typedef struct state {
    int has_last;
    long long last;          /* event time of the latest order */
    bdp_buckets days;        /* count = orders that day */
} state_t;

static long long leaves_at(const rfm_t *r, long long day) { return bdp_bucket_leaves_at(day, r->window_ms); }

static int state_load(state_t *s, const char *text) {
    cJSON *j = cJSON_Parse(text);
    const cJSON *last = cJSON_GetObjectItemCaseSensitive(j, "last");
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "b");
    int rc = cJSON_IsArray(b) && (!last || (cJSON_IsNumber(last) && bdp_as_int(last->valuedouble, &s->last))) ? 0 : -1;
    s->has_last = rc == 0 && last != NULL;
    for (const cJSON *e = rc == 0 ? b->child : NULL; e; e = e->next) {
        const cJSON *d = cJSON_GetArrayItem(e, 0), *o = cJSON_GetArrayItem(e, 1), *v = cJSON_GetArrayItem(e, 2);
        long long day, orders;
        if (!cJSON_IsArray(e) || !cJSON_IsNumber(d) || !bdp_as_int(d->valuedouble, &day) || !cJSON_IsNumber(o) ||
            !bdp_as_int(o->valuedouble, &orders) || orders < 0 || !cJSON_IsNumber(v) || !isfinite(v->valuedouble) ||
            v->valuedouble < 0 || bdp_buckets_add(&s->days, day, orders, v->valuedouble) != 0) {
            rc = -1;
            break;
        }
    }
    cJSON_Delete(j);
    if (rc != 0) {
        s->days.n = 0;
        s->has_last = 0;
    }
    return rc;
}

static char *state_text(const state_t *s) {
    cJSON *j = cJSON_CreateObject();
    if (s->has_last) cJSON_AddNumberToObject(j, "last", (double)s->last);
    cJSON *b = cJSON_AddArrayToObject(j, "b");
    for (int i = 0; b && i < s->days.n; i++) {
        cJSON *e = cJSON_CreateArray();
        cJSON_AddItemToArray(e, cJSON_CreateNumber((double)s->days.b[i].day));
        cJSON_AddItemToArray(e, cJSON_CreateNumber((double)s->days.b[i].count));
        cJSON_AddItemToArray(e, cJSON_CreateNumber(s->days.b[i].sum));
        cJSON_AddItemToArray(b, e);
    }
    char *text = b ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    return text;
}

/* --- evaluation ------------------------------------------------------------- */

static int in_events(const rfm_t *r, const char *name) {
    for (int i = 0; name && i < r->nevents; i++)
        if (strcmp(r->events[i], name) == 0) return 1;
    return 0;
}

/* >= th[3] -> 5, >= th[2] -> 4, >= th[1] -> 3, >= th[0] -> 2, else 1 */
static int score_up(double x, const double th[4]) {
    int s = 1;
    for (int i = 0; i < 4; i++)
        if (x >= th[i]) s = i + 2;
    return s;
}

static const char *segment(int r, int f) {
    if (r >= 4) return f >= 4 ? "champion" : f == 1 ? "new" : "promising";
    if (r == 3) return f >= 4 ? "loyal" : "need_attention";
    return f >= 3 ? "at_risk" : "hibernating";
}

static int evaluate(rfm_t *r, bd_ctx *c, int with_event) {
    const bd_host *h = r->host;
    long long now = h->now_ms(c);
    const char *user = h->user_id(c);
    state_t st = {0};
    bd_value sv = h->trait_get(c, STATE_TRAIT);
    const char *old_text = sv.kind == BD_STR ? sv.str : NULL;
    if (old_text && state_load(&st, old_text) != 0)
        bdp_log(h, BD_LOG_WARN, "rfm", "state_reset", "user=%s %s does not parse; starting afresh", user, STATE_TRAIT);

    if (with_event && in_events(r, h->event_name(c))) {
        long long ts = h->event_time_ms(c);
        if (ts <= 0) ts = now;
        if (!st.has_last || ts > st.last) st.last = ts;
        st.has_last = 1;
        bd_value a = h->event_get(c, r->amount);
        double amount = 0;
        if (a.kind == BD_NUM && isfinite(a.num) && a.num >= 0) amount = a.num;
        else bdp_log(h, BD_LOG_DEBUG, "rfm", "amount_ignored", "user=%s event=\"%s\" path=%s", user,
                     h->event_name(c), r->amount);
        if (leaves_at(r, bdp_day_of(ts)) > now && bdp_buckets_add(&st.days, bdp_day_of(ts), 1, amount) != 0) {
            free(st.days.b);
            return -1;
        }
    }
    bdp_buckets_expire(&st.days, r->window_ms, now);
    if (st.has_last || old_text) {
        char *text = state_text(&st);
        if (!text) {
            free(st.days.b);
            return -1;
        }
        if (!old_text || strcmp(old_text, text) != 0) bdp_set_str(h, c, STATE_TRAIT, text);
        free(text);
    }
    if (!st.has_last) {   /* never ordered: nothing to say */
        free(st.days.b);
        return 0;
    }

    long long orders = 0;
    double sum = 0;
    for (int i = 0; i < st.days.n; i++) {
        orders += st.days.b[i].count;
        sum += st.days.b[i].sum;
    }
    sum = bdp_round6(sum);
    long long age = now > st.last ? now - st.last : 0;
    int rs = 1;
    long long r_drops = -1;   /* when R next drops, if it can */
    for (int i = 3; i >= 0; i--)
        if (age <= r->recency[i]) {
            rs = 5 - i;
            r_drops = st.last + r->recency[i] + 1;
        }
    int fs = score_up((double)orders, r->frequency);
    int ms = score_up(sum, r->monetary);
    bdp_set_num(h, c, "rfm_r", rs);
    bdp_set_num(h, c, "rfm_f", fs);
    bdp_set_num(h, c, "rfm_m", ms);
    bdp_set_str(h, c, "rfm_segment", segment(rs, fs));

    long long due = r_drops;
    if (st.days.n > 0 && (due < 0 || leaves_at(r, st.days.b[0].day) < due)) due = leaves_at(r, st.days.b[0].day);
    if (due > now) h->revisit_at(c, due);
    free(st.days.b);
    return 0;
}

/* --- the plugin ------------------------------------------------------------- */

static int rfm_init(const bd_host *host, const char *config_json, void **self, char *err, size_t errlen) {
    cJSON *root;
    if (bdp_config_root(host, config_json, &root, err, errlen)) return -1;
    rfm_t *r = calloc(1, sizeof *r);
    if (!r) {
        cJSON_Delete(root);
        return bdp_fail(err, errlen, "out of memory");
    }
    r->host = host;
    int rc = parse_config(r, root, err, errlen);
    cJSON_Delete(root);
    if (rc != 0) {
        rfm_free(r);
        return -1;
    }
    bdp_log(host, BD_LOG_INFO, "rfm", "config",
            "events=%d amount=%s window=%s recency_ms=%lld,%lld,%lld,%lld frequency=%g,%g,%g,%g "
            "monetary=%g,%g,%g,%g",
            r->nevents, r->amount, r->window_text, r->recency[0], r->recency[1], r->recency[2], r->recency[3],
            r->frequency[0], r->frequency[1], r->frequency[2], r->frequency[3], r->monetary[0], r->monetary[1],
            r->monetary[2], r->monetary[3]);
    *self = r;
    return 0;
}

static int rfm_on_event(void *self, bd_ctx *c) { return evaluate(self, c, 1); }
static int rfm_on_revisit(void *self, bd_ctx *c) { return evaluate(self, c, 0); }
static void rfm_on_grant(void *self, bd_ctx *c, const char *grant_json) {}
static void rfm_fini(void *self) { rfm_free(self); }

static int score_arg(bd_value v) {
    return v.kind == BD_NUM && v.num >= 1 && v.num <= 5 && v.num == floor(v.num) ? (int)v.num : 0;
}

static int fn_rfm_score(const bd_value *args, int nargs, bd_value *out) {
    out->kind = BD_MISSING;
    if (nargs != 3) return 0;
    int r = score_arg(args[0]), f = score_arg(args[1]), m = score_arg(args[2]);
    if (r && f && m) {
        out->kind = BD_NUM;
        out->num = r * 100 + f * 10 + m;
    }
    return 0;
}

static const bd_function rfm_functions[] = {
    {"rfm_score", 3, 3, fn_rfm_score},
    {NULL, 0, 0, NULL},
};

BD_PLUGIN_DEFINE({
    .api_version = BD_PLUGIN_API_VERSION,
    .name = "rfm",
    .version = "1.0.0",
    .description = "recency/frequency/monetary scores (1..5) and a segment per member",
    .init = rfm_init,
    .on_event = rfm_on_event,
    .on_revisit = rfm_on_revisit,
    .on_grant = rfm_on_grant,
    .fini = rfm_fini,
    .functions = rfm_functions,
});
