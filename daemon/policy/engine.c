#include "engine.h"

#include <stdio.h>
#include <string.h>

void engine_init(engine_t *e) {
    memset(e, 0, sizeof *e);
    sb_init(&e->json);
    sb_init(&e->text);
    sb_init(&e->target);
}

void engine_free(engine_t *e) {
    sb_free(&e->json);
    sb_free(&e->text);
    sb_free(&e->target);
    expr_arena_free(&e->arena);
}

void engine_grant_id(const char *rule_id, const char *user_id, const char *occurrence, char out[40]) {
    strbuf b;
    sb_init(&b);
    /* NUL separators keep ("ab","c") and ("a","bc") apart. */
    sb_append(&b, rule_id, strlen(rule_id) + 1);
    sb_append(&b, user_id, strlen(user_id) + 1);
    sb_append(&b, occurrence, strlen(occurrence));
    snprintf(out, 40, "g%016llx%016llx", (unsigned long long)hash64(b.s, b.len, 11),
             (unsigned long long)hash64(b.s, b.len, 12));
    sb_free(&b);
}

/* Sticky per member: the same (rule, member) always lands in the same bucket,
 * whatever the event, so a member never flips between arms. */
static const variant_t *pick_variant(const rule_t *r, const char *user_id) {
    if (r->n_variants == 0 || r->total_weight <= 0) return NULL;
    strbuf b;
    sb_init(&b);
    sb_append(&b, r->id, strlen(r->id) + 1);
    sb_puts(&b, user_id);
    uint64_t h = hash64(b.s, b.len, 7);
    sb_free(&b);
    uint64_t slot = h % (uint64_t)r->total_weight;
    for (size_t i = 0; i < r->n_variants; i++) {
        if (slot < (uint64_t)r->variants[i].weight) return &r->variants[i];
        slot -= (uint64_t)r->variants[i].weight;
    }
    return &r->variants[r->n_variants - 1];
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

static void put_trigger(strbuf *b, const event_t *ev) {
    sb_puts(b, "\"trigger\":{\"event\":");
    sb_json_str(b, ev->name, strlen(ev->name));
    sb_puts(b, ",\"message_id\":");
    sb_json_str(b, ev->message_id, strlen(ev->message_id));
    sb_puts(b, ",\"user_id\":");
    sb_json_str(b, ev->user_id, strlen(ev->user_id));
    sb_puts(b, ",\"timestamp\":");
    put_time(b, ev->ts_ms);
    sb_putc(b, '}');
}

/* The explain record for a decision that granted nothing (no grant_id: it
 * was never a grant). */
static void build_explain(strbuf *b, const decision_t *d, const event_t *ev) {
    sb_reset(b);
    sb_puts(b, "{\"outcome\":\"suppressed\",\"reason\":");
    sb_json_str(b, d->reason, strlen(d->reason));
    sb_puts(b, ",\"rule\":");
    sb_json_str(b, d->rule->id, strlen(d->rule->id));
    sb_puts(b, ",\"rule_version\":");
    sb_json_str(b, d->rule->version, strlen(d->rule->version));
    sb_puts(b, ",\"variant\":");
    put_str_or_null(b, d->variant ? d->variant->name : NULL);
    sb_puts(b, ",\"user_id\":");
    sb_json_str(b, ev->user_id, strlen(ev->user_id));
    sb_putc(b, ',');
    put_trigger(b, ev);
    sb_puts(b, ",\"decided_at\":");
    put_time(b, d->issued_at);
    sb_putc(b, '}');
}

#define PICK(field, unset) (v && v->grant.field != (unset) ? v->grant.field : r->grant.field)

/* Builds the grant JSON into e->json. Returns NULL or the reason it cannot
 * be granted (a value or recipient that the event does not provide). */
static const char *build_grant(engine_t *e, decision_t *d, const event_t *ev, const eval_ctx_t *ctx) {
    const rule_t *r = d->rule;
    const variant_t *v = d->variant;
    const grant_spec_t *g = &r->grant;

    sb_reset(&e->target);
    const expr_t *to = PICK(to, NULL);
    if (to) {
        value_t tv = expr_eval(to, ctx);
        value_to_text(&tv, &e->target);
        if ((tv.k != V_STR && tv.k != V_NUM) || e->target.len == 0) return "no recipient";
    } else {
        sb_puts(&e->target, ev->user_id);
    }
    d->target_user = e->target.s;

    strbuf *b = &e->json;
    sb_reset(b);
    sb_puts(b, "{\"grant_id\":\"");
    sb_puts(b, d->grant_id);
    sb_puts(b, "\",\"rule\":");
    sb_json_str(b, r->id, strlen(r->id));
    sb_puts(b, ",\"rule_version\":\"");
    sb_puts(b, r->version);
    sb_puts(b, "\",\"variant\":");
    put_str_or_null(b, v ? v->name : NULL);
    sb_puts(b, ",\"user_id\":");
    sb_json_str(b, e->target.s, e->target.len);

    sb_puts(b, ",\"benefit\":{\"type\":");
    put_str_or_null(b, PICK(benefit, NULL));
    sb_puts(b, ",\"sku\":");
    put_str_or_null(b, PICK(sku, NULL));
    sb_puts(b, ",\"value\":");
    const expr_t *val = PICK(value, NULL);
    if (val) {
        value_t vv = expr_eval(val, ctx);
        if (vv.k == V_MISSING) return "no value";
        value_to_json(&vv, b);
    } else {
        sb_puts(b, "null");
    }
    sb_puts(b, ",\"code\":null,\"expires_at\":");
    long long exp = PICK(expires_in_ms, -1);
    if (exp >= 0) put_time(b, d->issued_at + exp);
    else sb_puts(b, "null");
    sb_putc(b, '}');

    sb_puts(b, ",\"channel\":");
    sb_json_str(b, d->channel, strlen(d->channel));
    sb_puts(b, ",\"message\":");
    const template_t *msg = PICK(message, NULL);
    if (msg) {
        sb_reset(&e->text);
        template_render(msg, ctx, &e->text);
        sb_json_str(b, e->text.s ? e->text.s : "", e->text.len);
    } else {
        sb_puts(b, "null");
    }
    sb_putc(b, ',');
    put_trigger(b, ev);
    sb_puts(b, ",\"issued_at\":");
    put_time(b, d->issued_at);
    /* Quiet hours (not in this build) are the only thing that delays delivery. */
    sb_puts(b, ",\"deliver_after\":");
    put_time(b, d->issued_at);
    sb_putc(b, '}');
    (void)g;
    return NULL;
}

/* Groups already taken by this event; rules sharing a group see each other in
 * priority order because the per-event list is sorted that way. */
#define MAX_GROUPS 64

void engine_decide(engine_t *e, const ruleset_t *rs, const event_t *ev, int64_t now_ms, decision_cb cb, void *ud) {
    const rule_list_t *list = ruleset_for_event(rs, ev->name);
    if (list->n == 0) return;
    expr_arena_reset(&e->arena);
    eval_ctx_t ctx = {.ev = ev, .arena = &e->arena};
    const char *taken[MAX_GROUPS];
    size_t ntaken = 0;

    for (size_t i = 0; i < list->n; i++) {
        const rule_t *r = list->rules[i];
        if (!r->enabled || r->kind != TRIG_EVENT) continue;
        if (r->where && !expr_test(r->where, &ctx)) continue;
        e->matched++;

        decision_t d = {.rule = r, .issued_at = now_ms, .json = &e->json};
        engine_grant_id(r->id, ev->user_id, ev->message_id, d.grant_id);
        d.variant = pick_variant(r, ev->user_id);
        const variant_t *v = d.variant;
        d.channel = PICK(channel, NULL);
        if (!d.channel) d.channel = "default";

        int group_lost = 0;
        if (r->group) {
            for (size_t k = 0; k < ntaken; k++)
                if (strcmp(taken[k], r->group) == 0) group_lost = 1;
        }
        if ((r->active_from_ms && now_ms < r->active_from_ms) || (r->active_until_ms && now_ms >= r->active_until_ms))
            d.reason = "not active";
        else if (group_lost)
            d.reason = "group lost";
        else if (v && v->holdout)
            d.reason = "holdout";
        else
            d.reason = build_grant(e, &d, ev, &ctx);
        if (!d.reason && r->shadow) d.reason = "shadow";

        /* Holdout and shadow decisions stand for a grant that would have been
         * made, so they take the group slot: otherwise the control group would
         * receive the runner-up benefit and the comparison would be void. */
        if (r->group && !group_lost && ntaken < MAX_GROUPS &&
            (!d.reason || !strcmp(d.reason, "holdout") || !strcmp(d.reason, "shadow")))
            taken[ntaken++] = r->group;

        if (d.reason) {
            d.granted = 0;
            d.target_user = ev->user_id;
            build_explain(&e->json, &d, ev);
            e->suppressed++;
        } else {
            d.granted = 1;
            e->granted++;
        }
        cb(ud, ev, &d);
    }
}
