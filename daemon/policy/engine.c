#include "engine.h"
#include "policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void engine_init(engine_t *e) {
    memset(e, 0, sizeof *e);
    sb_init(&e->json);
    sb_init(&e->text);
    sb_init(&e->target);
    sb_init(&e->rec);
    sb_init(&e->xbody);
}

void engine_set_loop(engine_t *e, char *const *redeem, size_t n_redeem, char *const *convert, size_t n_convert,
                     long long window_ms) {
    e->loop_redeem = redeem;
    e->n_loop_redeem = n_redeem;
    e->loop_convert = convert;
    e->n_loop_convert = n_convert;
    e->loop_window_ms = window_ms;
}

static int in_list(char *const *v, size_t n, const char *name) {
    for (size_t i = 0; name && i < n; i++)
        if (v[i][0] == name[0] && !strcmp(v[i], name)) return 1; /* the first byte settles most, without a call */
    return 0;
}

/* properties.grant_id of a redemption: a string of 1..LOOP_GID_MAX printable
 * bytes, else "" (counted as unknown); NULL when the event carries none. */
static const char *loop_gid(engine_t *e, const event_t *ev) {
    const cJSON *v = ev->properties ? cJSON_GetObjectItemCaseSensitive(ev->properties, "grant_id") : NULL;
    if (!v || cJSON_IsNull(v)) return NULL;
    e->loop_gid[0] = '\0';
    if (!cJSON_IsString(v) || !v->valuestring) return e->loop_gid;
    size_t n = strlen(v->valuestring);
    if (n == 0 || n > LOOP_GID_MAX) return e->loop_gid;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v->valuestring[i] <= ' ' || (unsigned char)v->valuestring[i] == 0x7f) return e->loop_gid;
    memcpy(e->loop_gid, v->valuestring, n + 1);
    return e->loop_gid;
}

static void free_names(char **v, size_t n) {
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

void engine_free(engine_t *e) {
    sb_free(&e->json);
    sb_free(&e->text);
    sb_free(&e->target);
    sb_free(&e->rec);
    sb_free(&e->xbody);
    expr_arena_free(&e->arena);
    free_names(e->cancel_names, e->n_cancel);
    free_names(e->touch_names, e->n_touch);
}

void engine_grant_id(const char *rule_id, const char *user_id, const char *occurrence, char out[40]) {
    /* NUL separators keep ("ab","c") and ("a","bc") apart. Built on the stack:
     * this runs for every matching rule of every event. */
    char small[512];
    size_t a = strlen(rule_id) + 1, b = strlen(user_id) + 1, c = strlen(occurrence);
    char *buf = a + b + c <= sizeof small ? small : xmalloc(a + b + c);
    memcpy(buf, rule_id, a);
    memcpy(buf + a, user_id, b);
    memcpy(buf + a + b, occurrence, c);
    uint64_t h1, h2;
    hash64x2(buf, a + b + c, 11, 12, &h1, &h2);
    out[0] = 'g';
    put_hex16(out + 1, h1);
    put_hex16(out + 17, h2);
    out[33] = '\0';
    if (buf != small) free(buf);
}

int64_t engine_activity_mark(long long resolution_ms, const char *user, int64_t ts) {
    int64_t res = resolution_ms;
    if (res <= 1) return ts;
    uint64_t h = 1469598103934665603ull; /* FNV-1a: the same member, the same shift, on every build */
    for (const unsigned char *p = (const unsigned char *)user; *p; p++) h = (h ^ *p) * 1099511628211ull;
    int64_t off = (int64_t)(h % (uint64_t)res), d = ts - off;
    int64_t q = d / res - (d % res < 0); /* floor */
    int64_t end = off + q * res;
    return end == ts ? ts : end + res;
}

void engine_inactivity_occurrence(int64_t last_ms, char out[40]) {
    snprintf(out, 40, "inactive:%lld", (long long)last_ms);
}

/* Sticky per member: the same (rule, member) always lands in the same bucket,
 * whatever the event, so a member never flips between arms. */
static const variant_t *pick_variant(const rule_t *r, const char *user_id) {
    if (r->n_variants == 0 || r->total_weight <= 0) return NULL;
    /* on the stack: this runs for every rule with variants of every event */
    char small[512];
    size_t a = strlen(r->id) + 1, u = strlen(user_id);
    char *buf = a + u <= sizeof small ? small : xmalloc(a + u);
    memcpy(buf, r->id, a);
    memcpy(buf + a, user_id, u);
    uint64_t h = hash64(buf, a + u, 7);
    if (buf != small) free(buf);
    uint64_t slot = h % (uint64_t)r->total_weight;
    for (size_t i = 0; i < r->n_variants; i++) {
        if (slot < (uint64_t)r->variants[i].weight) return &r->variants[i];
        slot -= (uint64_t)r->variants[i].weight;
    }
    return &r->variants[r->n_variants - 1];
}

const char *engine_variant_name(const rule_t *r, const char *user) {
    const variant_t *v = pick_variant(r, user);
    return v ? v->name : NULL;
}

static void put_time(strbuf *b, int64_t ms) {
    char ts[32];
    format_iso8601_ms(ms, ts, sizeof ts);
    sb_putc(b, '"');
    sb_puts(b, ts);
    sb_putc(b, '"');
}

static void put_str_or_null(strbuf *b, const char *s) {
    if (s) sb_json_str(b, s, strlen(s));
    else sb_puts(b, "null");
}

/* An inactivity trigger has no event: name and message id are null, the
 * timestamp is the last activity, the start of the silence. */
/* holes (may be NULL): where message_id, user_id and timestamp went */
static void put_trigger(strbuf *b, const event_t *ev, size_t (*holes)[2]) {
    sb_puts(b, "\"trigger\":{\"event\":");
    put_str_or_null(b, ev->name);
    sb_puts(b, ",\"message_id\":");
    size_t at = b->len;
    put_str_or_null(b, ev->message_id[0] ? ev->message_id : NULL);
    if (holes) holes[REC_TMSGID][0] = at, holes[REC_TMSGID][1] = b->len;
    sb_puts(b, ",\"user_id\":");
    at = b->len;
    sb_json_str(b, ev->user_id, strlen(ev->user_id));
    if (holes) holes[REC_TUSER][0] = at, holes[REC_TUSER][1] = b->len;
    sb_puts(b, ",\"timestamp\":");
    at = b->len;
    put_time(b, ev->ts_ms);
    if (holes) holes[REC_TTS][0] = at, holes[REC_TTS][1] = b->len;
    sb_putc(b, '}');
}

/* The explain body: what a suppressed line says besides its reason and time.
 * Kept apart so a store can report a reason decided later (cancelled, already
 * pending, a count below N) for the same trigger. */
static void build_xbody(strbuf *b, const rule_t *r, const char *variant, const event_t *ev) {
    sb_reset(b);
    sb_puts(b, ",\"rule\":");
    sb_json_str(b, r->id, strlen(r->id));
    sb_puts(b, ",\"rule_version\":");
    sb_json_str(b, r->version, strlen(r->version));
    sb_puts(b, ",\"variant\":");
    put_str_or_null(b, variant);
    sb_puts(b, ",\"user_id\":");
    sb_json_str(b, ev->user_id, strlen(ev->user_id));
    sb_putc(b, ',');
    put_trigger(b, ev, NULL);
}

const char *engine_intent_xbody(const intent_t *in, strbuf *scratch, size_t *len) {
    if (in->xbody || !in->trigger) {
        *len = in->xbody_len;
        return in->xbody;
    }
    build_xbody(scratch, in->rule, in->variant, in->trigger);
    *len = scratch->len;
    return scratch->s;
}

void engine_finish_explain(const char *reason, const char *xbody, size_t len, const char *extra, int64_t at,
                           strbuf *out) {
    sb_puts(out, "{\"outcome\":\"suppressed\",\"reason\":");
    sb_json_str(out, reason, strlen(reason));
    sb_append(out, xbody, len);
    if (extra) sb_puts(out, extra);
    sb_puts(out, ",\"decided_at\":");
    put_time(out, at);
    sb_putc(out, '}');
}

void engine_finish_grant(const char *rec, size_t len, size_t cut, long long expires_in_ms, int64_t at, strbuf *out) {
    engine_finish_grant_at(rec, len, cut, expires_in_ms, at, at, out);
}

void engine_finish_grant_at(const char *rec, size_t len, size_t cut, long long expires_in_ms, int64_t at,
                            int64_t deliver_after, strbuf *out) {
    sb_append(out, rec, cut);
    if (expires_in_ms >= 0) put_time(out, at + expires_in_ms);
    else sb_puts(out, "null");
    sb_append(out, rec + cut, len - cut);
    sb_puts(out, ",\"issued_at\":");
    put_time(out, at);
    /* Quiet hours are the only thing that delays delivery. */
    sb_puts(out, ",\"deliver_after\":");
    put_time(out, deliver_after > at ? deliver_after : at);
    sb_putc(out, '}');
}

#define PICK(field, unset) (v && v->grant.field != (unset) ? v->grant.field : r->grant.field)

/* What one rule decided for one trigger, before it becomes a decision_t (the
 * daemon's) or an intent (a store's). */
typedef struct rule_dec {
    const rule_t *r;
    const variant_t *v;
    const char *channel;
    const char *reason;
    int soft;                 /* holdout / shadow: a grant that would have been made */
    int have_rec;             /* e->rec holds the open grant record */
    const char *pool;         /* the code pool of the grant (variant over base), or NULL */
    size_t cut;
    size_t holes[REC_N_HOLES][2]; /* state.h intent_t.rec_holes */
    long long expires_in;
    char grant_id[40];
    const char *group_claim;  /* the group this grant competes for in the grant step (see groups) */
} rule_dec;

/* Builds the open grant record into e->rec (everything but expires_at's value
 * and the trailing issued_at/deliver_after). Returns NULL or the reason it
 * cannot be granted (a value or recipient that the event does not provide). */
static const char *build_grant(engine_t *e, rule_dec *d, const event_t *ev, const eval_ctx_t *ctx) {
    const rule_t *r = d->r;
    const variant_t *v = d->v;

    sb_reset(&e->target);
    const expr_t *to = PICK(to, NULL);
    if (to) {
        value_t tv = expr_eval(to, ctx);
        value_to_text(&tv, &e->target);
        if ((tv.k != V_STR && tv.k != V_NUM) || e->target.len == 0) return "no recipient";
    } else {
        sb_puts(&e->target, ev->user_id);
    }

    strbuf *b = &e->rec;
    sb_reset(b);
    sb_puts(b, "{\"grant_id\":");
    d->holes[REC_GID][0] = b->len;
    sb_putc(b, '"');
    sb_puts(b, d->grant_id);
    sb_putc(b, '"');
    d->holes[REC_GID][1] = b->len;
    sb_puts(b, ",\"rule\":");
    sb_json_str(b, r->id, strlen(r->id));
    sb_puts(b, ",\"rule_version\":\"");
    sb_puts(b, r->version);
    sb_puts(b, "\",\"variant\":");
    put_str_or_null(b, v ? v->name : NULL);
    sb_puts(b, ",\"user_id\":");
    d->holes[REC_TARGET][0] = b->len;
    sb_json_str(b, e->target.s, e->target.len);
    d->holes[REC_TARGET][1] = b->len;

    sb_puts(b, ",\"benefit\":{\"type\":");
    put_str_or_null(b, PICK(benefit, NULL));
    sb_puts(b, ",\"sku\":");
    put_str_or_null(b, PICK(sku, NULL));
    sb_puts(b, ",\"value\":");
    d->holes[REC_VALUE][0] = b->len;
    const expr_t *val = PICK(value, NULL);
    if (val) {
        value_t vv = expr_eval(val, ctx);
        if (vv.k == V_MISSING) return "no value";
        value_to_json(&vv, b);
    } else {
        sb_puts(b, "null");
    }
    d->holes[REC_VALUE][1] = b->len;
    sb_puts(b, ",\"code\":null,\"expires_at\":");
    d->cut = b->len;
    d->expires_in = PICK(expires_in_ms, -1);
    d->pool = PICK(pool, NULL);
    sb_putc(b, '}');

    sb_puts(b, ",\"channel\":");
    sb_json_str(b, d->channel, strlen(d->channel));
    sb_puts(b, ",\"message\":");
    d->holes[REC_MESSAGE][0] = b->len;
    const template_t *msg = PICK(message, NULL);
    if (msg) {
        sb_reset(&e->text);
        template_render(msg, ctx, &e->text);
        sb_json_str(b, e->text.s ? e->text.s : "", e->text.len);
    } else {
        sb_puts(b, "null");
    }
    d->holes[REC_MESSAGE][1] = b->len;
    sb_putc(b, ',');
    put_trigger(b, ev, d->holes);
    d->have_rec = 1;
    return NULL;
}

/* Groups of this event; rules sharing a group see each other in priority
 * order because the per-event list is sorted that way.
 *
 * A group goes to the first rule that would grant, but a plain immediate
 * grant (an event trigger with no wait, neither holdout nor shadow) only
 * *claims* it: whether it really grants is known in the grant step (a
 * limit, a budget, an empty pool, the blocklist may suppress it). So the
 * group's later plain grants are sent too, in priority order, and the store's
 * grant step lets the first one that passes policy take the group (an
 * atomic group claim per trigger, docs/policy.md "Groups"): the runner-up
 * is granted when the winner runs out. Decisions that are not plain grants
 * (a wait, a holdout or shadow, which stand for a grant) take the group
 * outright, here, as before; after a claim they are `group lost`. */
#define MAX_GROUPS 64

typedef struct groups {
    const char *taken[MAX_GROUPS];    /* decided here: later rules are `group lost` */
    size_t n;
    const char *claimed[MAX_GROUPS];  /* claimed by a plain grant: later plain grants compete in the store */
    size_t nclaimed;
} groups;

static int group_in(const char *const *v, size_t n, const char *group) {
    for (size_t k = 0; k < n; k++)
        if (strcmp(v[k], group) == 0) return 1;
    return 0;
}

/* The stateless policy of one rule for one trigger. occurrence names the
 * trigger for the grant id. g may be NULL (no group exclusivity: inactivity
 * has no trigger event to be exclusive about). */
static void decide_rule(engine_t *e, rule_dec *d, const rule_t *r, const event_t *ev, const char *occurrence,
                        const eval_ctx_t *ctx, int64_t now_ms, groups *g) {
    memset(d, 0, sizeof *d);
    d->r = r;
    d->expires_in = -1;
    engine_grant_id(r->id, ev->user_id, occurrence, d->grant_id);
    d->v = pick_variant(r, ev->user_id);
    const variant_t *v = d->v;
    d->channel = PICK(channel, NULL);
    if (!d->channel) d->channel = "default";

    /* a plain immediate grant: competes for the group in the grant step */
    int plain = r->kind == TRIG_EVENT && r->wait_ms == 0 && !r->shadow && !(v && v->holdout);
    int group_lost = 0;
    if (g && r->group)
        group_lost = group_in(g->taken, g->n, r->group) || (!plain && group_in(g->claimed, g->nclaimed, r->group));
    if ((r->active_from_ms && now_ms < r->active_from_ms) || (r->active_until_ms && now_ms >= r->active_until_ms))
        d->reason = "not active";
    else if (r->audience && !expr_test(r->audience, ctx))
        d->reason = "audience";
    else if (group_lost)
        d->reason = "group lost";
    else if (v && v->holdout)
        d->reason = "holdout", d->soft = 1;
    else
        d->reason = build_grant(e, d, ev, ctx);
    /* soft is set where the reason is chosen: build_grant's reasons are
     * never soft, so there is nothing to compare afterwards */
    if (!d->reason && r->shadow) d->reason = "shadow", d->soft = 1;

    /* Holdout and shadow decisions stand for a grant that would have been
     * made, so they take the group slot: otherwise the control group would
     * receive the runner-up benefit and the comparison would be void. A count
     * rule takes no slot: whether this event lifts its window to N is known
     * only to the store (docs/time.md, "Groups"). */
    if (g && r->group && !group_lost && r->kind != TRIG_COUNT && (!d->reason || d->soft)) {
        if (plain && !d->reason) {
            d->group_claim = r->group;
            if (!group_in(g->claimed, g->nclaimed, r->group) && g->nclaimed < MAX_GROUPS)
                g->claimed[g->nclaimed++] = r->group;
        } else if (g->n < MAX_GROUPS) {
            g->taken[g->n++] = r->group;
        }
    }
}

void engine_decide(engine_t *e, const ruleset_t *rs, const event_t *ev, int64_t now_ms, decision_cb cb, void *ud) {
    const rule_list_t *list = ruleset_for_event(rs, ev->name);
    if (list->n == 0) return;
    expr_arena_reset(&e->arena);
    e->memo.n = 0;
    eval_ctx_t ctx = {.ev = ev, .arena = &e->arena, .memo = &e->memo};
    groups g; /* only the first n / nclaimed entries are read */
    g.n = g.nclaimed = 0;

    for (size_t i = 0; i < list->n; i++) {
        const rule_t *r = list->rules[i];
        if (!r->enabled || r->kind != TRIG_EVENT) continue;
        if (r->where && !expr_test(r->where, &ctx)) continue;
        e->matched++;

        rule_dec rd;
        decide_rule(e, &rd, r, ev, ev->message_id, &ctx, now_ms, &g);
        decision_t d = {.rule = r, .variant = rd.v, .reason = rd.reason, .channel = rd.channel,
                        .issued_at = now_ms, .json = &e->json};
        memcpy(d.grant_id, rd.grant_id, sizeof d.grant_id);
        sb_reset(&e->json);
        if (d.reason) {
            d.granted = 0;
            d.target_user = ev->user_id;
            build_xbody(&e->xbody, r, rd.v ? rd.v->name : NULL, ev);
            engine_finish_explain(d.reason, e->xbody.s, e->xbody.len, NULL, now_ms, &e->json);
            e->suppressed++;
        } else {
            d.granted = 1;
            d.target_user = e->target.s;
            engine_finish_grant(e->rec.s, e->rec.len, rd.cut, rd.expires_in, now_ms, &e->json);
            e->granted++;
        }
        cb(ud, ev, &d);
    }
}

/* ---- the derived index: which names cancel, which names are activity ---- */

static int cmp_cstr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void add_unique(char ***v, size_t *n, size_t *cap, const char *s) {
    for (size_t i = 0; i < *n; i++)
        if (!strcmp((*v)[i], s)) return;
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 8;
        *v = xrealloc(*v, *cap * sizeof **v);
    }
    (*v)[(*n)++] = xstrdup(s);
}

static void refresh_index(engine_t *e, const ruleset_t *rs) {
    uint64_t gen = ruleset_generation(rs);
    if (e->idx_gen == gen) return;
    free_names(e->cancel_names, e->n_cancel);
    free_names(e->touch_names, e->n_touch);
    e->cancel_names = e->touch_names = NULL;
    e->n_cancel = e->n_touch = 0;
    e->touch_any = 0;
    size_t ccap = 0, tcap = 0;
    for (size_t i = 0; i < ruleset_count(rs); i++) {
        const rule_t *r = ruleset_rule(rs, i);
        if (!r->enabled) continue;
        for (size_t j = 0; j < r->n_cancel_on; j++) add_unique(&e->cancel_names, &e->n_cancel, &ccap, r->cancel_on[j]);
        if (r->kind != TRIG_INACTIVITY) continue;
        if (r->n_events == 0) e->touch_any = 1;
        for (size_t j = 0; j < r->n_events; j++) add_unique(&e->touch_names, &e->n_touch, &tcap, r->events[j]);
    }
    if (e->n_cancel) qsort(e->cancel_names, e->n_cancel, sizeof *e->cancel_names, cmp_cstr);
    if (e->n_touch) qsort(e->touch_names, e->n_touch, sizeof *e->touch_names, cmp_cstr);
    e->idx_gen = gen;
}

/* Two of these per event: a binary search without bsearch's call through
 * the comparator for each probe. */
static int has_name(char **v, size_t n, const char *name) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(v[mid], name);
        if (c == 0) return 1;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return 0;
}

/* Turns a rule's decision into its intent. */
static void fill_intent(engine_t *e, intent_t *in, const rule_dec *d, const event_t *ev, int64_t now_ms) {
    const rule_t *r = d->r;
    in->user = ev->user_id;
    in->ts = now_ms;
    in->rule = r;
    in->grant_id = d->grant_id;
    in->target_user = d->have_rec ? e->target.s : ev->user_id;
    in->channel = d->channel;
    in->reason = d->reason;
    in->reason_soft = d->soft;
    in->rec = d->have_rec ? e->rec.s : NULL;
    in->rec_len = d->have_rec ? e->rec.len : 0;
    in->rec_cut = d->cut;
    memcpy(in->rec_holes, d->holes, sizeof in->rec_holes);
    in->expires_in_ms = d->expires_in;
    in->trigger = ev; /* the body is built by whoever reports it */
    in->wait_ms = r->wait_ms;
    in->cancel_on = r->cancel_on;
    in->n_cancel_on = r->n_cancel_on;
    in->device = e->device;
    in->ip = e->ip;
    in->pool = d->have_rec ? d->pool : NULL;
    in->tz = e->tz[0] ? e->tz : NULL;
    in->variant = d->v ? d->v->name : NULL;
    in->group = d->group_claim;
    in->group_occ = ev->message_id;
    if (r->kind == TRIG_COUNT) {
        in->kind = INTENT_COUNT_GRANT;
        in->occurrence = ev->message_id;
        in->count = r->count;
        in->within_ms = r->within_ms;
    } else if (d->reason && !d->soft) {
        in->kind = INTENT_EXPLAIN;      /* cannot be granted: nothing to wait for */
    } else if (r->wait_ms > 0) {
        in->kind = INTENT_SCHEDULE;     /* holdout/shadow wait too: reported only if the wait runs out */
    } else {
        in->kind = d->reason ? INTENT_EXPLAIN : INTENT_GRANT;
    }
}

/* context.timezone (v) when it names a zone the database knows (remembering
 * the last good and bad names, so a stream of one zone costs no lookups). */
static void event_tz(engine_t *e, const cJSON *v) {
    e->tz[0] = '\0';
    if (!cJSON_IsString(v) || !v->valuestring || !*v->valuestring || strlen(v->valuestring) >= sizeof e->tz) return;
    const char *z = v->valuestring;
    size_t n = strlen(z);
    size_t slot = (size_t)(hash64(z, n, 0x7a) & (sizeof e->tz_cache / sizeof e->tz_cache[0] - 1));
    if (e->tz_cache[slot].ok == 0 || strcmp(e->tz_cache[slot].name, z) != 0) {
        memcpy(e->tz_cache[slot].name, z, n + 1);
        e->tz_cache[slot].ok = policy_tz_ok(z) ? 1 : -1;
    }
    if (e->tz_cache[slot].ok > 0) memcpy(e->tz, z, n + 1);
}

/* The event's device, ip and timezone into e->device, e->ip, e->tz. */
static void event_subjects(engine_t *e, const event_t *ev) {
    /* the context's device, ip and timezone in one pass over its members
     * (a lookup each was three scans); the first of a name, as a lookup finds */
    const cJSON *dev = NULL, *ip = NULL, *tz = NULL;
    for (const cJSON *c = ev->context ? ev->context->child : NULL; c && !(dev && ip && tz); c = c->next) {
        const char *k = c->string;
        if (!k) continue;
        if (k[0] == 'd' && !dev && !strcmp(k, "device")) dev = c;
        else if (k[0] == 'i' && !ip && !strcmp(k, "ip")) ip = c;
        else if (k[0] == 't' && !tz && !strcmp(k, "timezone")) tz = c;
    }
    policy_subject_value(cJSON_IsObject(dev) ? cJSON_GetObjectItemCaseSensitive(dev, "id") : NULL, e->device);
    policy_subject_value(ip, e->ip);
    event_tz(e, tz);
}

void engine_run(engine_t *e, const ruleset_t *rs, const event_t *ev, const bd_clock_t *clk, intent_cb cb, void *ud) {
    int64_t now_ms = clock_now_ms(clk);
    refresh_index(e, rs);
    if (e->touch_any || has_name(e->touch_names, e->n_touch, ev->name)) {
        intent_t in = {.kind = INTENT_TOUCH, .user = ev->user_id, .ts = now_ms, .event = ev->name};
        cb(ud, ev, &in);
    }
    if (has_name(e->cancel_names, e->n_cancel, ev->name)) {
        intent_t in = {.kind = INTENT_CANCEL, .user = ev->user_id, .ts = now_ms, .event = ev->name,
                       .message_id = ev->message_id};
        cb(ud, ev, &in);
    }
    /* The closed loop, before the rules: a grant this very event makes is
     * not converted by it. */
    if (e->loop_window_ms > 0 && in_list(e->loop_redeem, e->n_loop_redeem, ev->name)) {
        const char *gid = loop_gid(e, ev);
        if (gid) {
            intent_t in = {.kind = INTENT_LOOP, .loop_kind = 'r', .user = ev->user_id, .ts = now_ms,
                           .grant_id = gid, .within_ms = e->loop_window_ms, .event = ev->name};
            cb(ud, ev, &in);
        }
    }
    if (e->loop_window_ms > 0 && in_list(e->loop_convert, e->n_loop_convert, ev->name)) {
        intent_t in = {.kind = INTENT_LOOP, .loop_kind = 'c', .user = ev->user_id, .ts = now_ms,
                       .within_ms = e->loop_window_ms, .event = ev->name};
        cb(ud, ev, &in);
    }
    const rule_list_t *list = ruleset_for_event(rs, ev->name);
    if (list->n == 0) return;
    expr_arena_reset(&e->arena);
    e->memo.n = 0;
    eval_ctx_t ctx = {.ev = ev, .arena = &e->arena, .memo = &e->memo};
    groups g; /* only the first n / nclaimed entries are read: no 1 KiB memset per event */
    g.n = g.nclaimed = 0;
    int have_subjects = 0;
    for (size_t i = 0; i < list->n; i++) {
        const rule_t *r = list->rules[i];
        if (!r->enabled || r->kind == TRIG_INACTIVITY) continue;
        if (r->where && !expr_test(r->where, &ctx)) continue;
        e->matched++;
        /* Only intents read the subjects, and most events match no rule:
         * they are worked out at the first rule that matches. */
        if (!have_subjects) {
            event_subjects(e, ev);
            have_subjects = 1;
        }
        rule_dec rd;
        decide_rule(e, &rd, r, ev, ev->message_id, &ctx, now_ms, &g);
        intent_t in = {0};
        fill_intent(e, &in, &rd, ev, now_ms);
        cb(ud, ev, &in);
    }
}

void engine_decide_inactivity(engine_t *e, const rule_t *r, const char *user, int64_t last_ms, int64_t now_ms,
                              intent_t *out) {
    /* No event: expressions see the member id and the silence's start as
     * `timestamp`; properties and context are missing. */
    event_t ev;
    memset(&ev, 0, sizeof ev);
    ev.user_id = user;
    ev.ts_ms = last_ms;
    ev.partition = -1;
    if (e->profile_of) ev.user = e->profile_of(e->profile_ud, user);
    char occ[40];
    engine_inactivity_occurrence(last_ms, occ);
    expr_arena_reset(&e->arena);
    e->memo.n = 0;
    eval_ctx_t ctx = {.ev = &ev, .arena = &e->arena, .memo = &e->memo};
    e->device[0] = e->ip[0] = e->tz[0] = '\0'; /* no event: no device, no IP, no member zone */
    e->matched++;
    rule_dec rd;
    decide_rule(e, &rd, r, &ev, occ, &ctx, now_ms, NULL);
    memset(out, 0, sizeof *out);
    fill_intent(e, out, &rd, &ev, now_ms);
    /* ev is a local: the body is built now, not on demand */
    build_xbody(&e->xbody, r, out->variant, &ev);
    out->xbody = e->xbody.s;
    out->xbody_len = e->xbody.len;
    out->trigger = NULL;
    /* fill_intent points at rd (a local) and ev.user_id: repoint at what outlives this call. */
    out->user = user;
    if (!rd.have_rec) out->target_user = user;
    memcpy(e->fire_grant_id, rd.grant_id, sizeof e->fire_grant_id);
    out->grant_id = e->fire_grant_id;
}
