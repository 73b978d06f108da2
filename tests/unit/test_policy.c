/* Policy in the grant step, on the in-memory store (replay's): per_user,
 * per_device, per_ip limits, budget, daily budget across a local midnight,
 * code pools (order, empty, audit, reload), the blocklist, and that limits
 * are checked when a wait fires. docs/policy.md is the contract; the Redis
 * store is held to the same outcomes by tests/integration/test_policy.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../daemon/core/clock.h"
#include "../../daemon/core/util.h"
#include "../../daemon/decode/event.h"
#include "../../daemon/policy/engine.h"
#include "../../daemon/policy/policy.h"
#include "../../daemon/policy/state.h"
#include "../../daemon/rules/rules.h"

#define MAXOUT 64
#define MIN (60 * 1000LL)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)

static const int64_t T0 = 1795514400000LL; /* 2026-11-24T10:00:00Z */

typedef struct out {
    out_kind kind;
    int64_t at;
    char reason[32];
    char code[64];
    char user[32];
    int64_t deliver_after;
    char gid[48];
} out;

typedef struct world {
    ruleset_t *rs;
    engine_t eng;
    store_t *st;
    bd_clock_t clk;
    decoder_t dec;
    out o[MAXOUT];
    int n;
} world;

static void on_out(void *ud, const store_out_t *o) {
    world *w = ud;
    assert_true(w->n < MAXOUT);
    out *x = &w->o[w->n++];
    memset(x, 0, sizeof *x);
    x->kind = o->kind;
    x->at = o->at;
    snprintf(x->reason, sizeof x->reason, "%s", o->reason ? o->reason : "");
    snprintf(x->user, sizeof x->user, "%s", o->user);
    x->deliver_after = o->deliver_after;
    snprintf(x->gid, sizeof x->gid, "%s", o->grant_id ? o->grant_id : "");
    if (o->kind == OUT_GRANT) {
        cJSON *root = cJSON_ParseWithLength(o->json, o->len);
        assert_non_null(root);
        const cJSON *code = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "benefit"), "code");
        snprintf(x->code, sizeof x->code, "%s", cJSON_IsString(code) ? code->valuestring : "null");
        cJSON_Delete(root);
    }
}

static void on_intent(void *ud, const event_t *ev, const intent_t *in) {
    world *w = ud;
    store_apply(w->st, w->rs, in, on_out, w);
}

static void world_init(world *w, const char *yaml, const char *tz) {
    memset(w, 0, sizeof *w);
    diag_t d;
    diag_init(&d);
    w->rs = ruleset_load_string_ex("t.yaml", yaml, strlen(yaml), tz, RULES_ALLOW_TIME, &d);
    if (!w->rs) diag_print(&d, stderr);
    diag_free(&d);
    assert_non_null(w->rs);
    engine_init(&w->eng);
    w->st = store_mem_new();
    store_mem_set_timezone(w->st, tz);
    clock_init_virtual(&w->clk, 0);
    decoder_init_default(&w->dec);
}

static void world_free(world *w) {
    store_free(w->st);
    engine_free(&w->eng);
    ruleset_free(w->rs);
}

/* One order; device / ip NULL = absent from context. */
static void order(world *w, const char *user, const char *msgid, int64_t ts, const char *device, const char *ip) {
    char ts_s[32], ctx[256] = "{}", json[768];
    format_iso8601_ms(ts, ts_s, sizeof ts_s);
    if (device && ip) snprintf(ctx, sizeof ctx, "{\"device\":{\"id\":\"%s\"},\"ip\":\"%s\"}", device, ip);
    else if (device) snprintf(ctx, sizeof ctx, "{\"device\":{\"id\":\"%s\"}}", device);
    else if (ip) snprintf(ctx, sizeof ctx, "{\"ip\":\"%s\"}", ip);
    snprintf(json, sizeof json,
             "{\"type\":\"track\",\"event\":\"Order Completed\",\"userId\":\"%s\",\"messageId\":\"%s\","
             "\"timestamp\":\"%s\",\"context\":%s}",
             user, msgid, ts_s, ctx);
    event_t ev;
    char reason[128];
    assert_int_equal(decode_event(&w->dec, json, strlen(json), ts, &ev, reason, sizeof reason), 0);
    store_advance(w->st, w->rs, &w->eng, ts - 1, on_out, w);
    clock_set(&w->clk, ts);
    engine_run(&w->eng, w->rs, &ev, &w->clk, on_intent, w);
    event_clear(&ev);
}

/* The last output: a grant ("" reason) or the reason of a suppression. */
static const char *last(const world *w) {
    assert_true(w->n > 0);
    const out *o = &w->o[w->n - 1];
    return o->kind == OUT_GRANT ? "granted" : o->kind == OUT_REPEAT ? "repeat" : o->reason;
}

#define RULE(limits, grant) \
    "id: r\ntrigger: {event: Order Completed}\n" limits "grant: " grant "\n"
#define COUPON "{benefit: coupon, sku: C, value: 1}"

static void test_per_user(void **state) {
    world w;
    world_init(&w, RULE("limits: {per_user: 2/1d}\n", COUPON), "UTC");
    order(&w, "u1", "m1", T0, NULL, NULL);
    assert_string_equal(last(&w), "granted");
    order(&w, "u1", "m2", T0 + HOUR, NULL, NULL);
    assert_string_equal(last(&w), "granted");
    order(&w, "u1", "m3", T0 + 2 * HOUR, NULL, NULL);
    assert_string_equal(last(&w), "limit per_user");
    order(&w, "u2", "m4", T0 + 2 * HOUR, NULL, NULL); /* another member: its own counter */
    assert_string_equal(last(&w), "granted");
    /* a suppression takes no claim and spends nothing; a redelivered granted
     * trigger is a repeat, not a limit */
    order(&w, "u1", "m1", T0 + 3 * HOUR, NULL, NULL);
    assert_string_equal(last(&w), "repeat");
    /* a grant exactly one period old no longer counts */
    order(&w, "u1", "m5", T0 + DAY, NULL, NULL);
    assert_string_equal(last(&w), "granted");
    order(&w, "u1", "m6", T0 + DAY + 1, NULL, NULL);
    assert_string_equal(last(&w), "limit per_user");
    world_free(&w);
}

static void test_per_device_and_ip(void **state) {
    world w;
    world_init(&w, RULE("limits: {per_device: 2/1h, per_ip: 3/1h}\n", COUPON), "UTC");
    order(&w, "a", "m1", T0, "d1", "10.0.0.1");
    order(&w, "b", "m2", T0 + 1, "d1", "10.0.0.1");
    assert_string_equal(last(&w), "granted");
    order(&w, "c", "m3", T0 + 2, "d1", "10.0.0.2");
    assert_string_equal(last(&w), "limit per_device");
    order(&w, "d", "m4", T0 + 3, "d2", "10.0.0.1");
    assert_string_equal(last(&w), "granted");
    order(&w, "e", "m5", T0 + 4, "d3", "10.0.0.1");
    assert_string_equal(last(&w), "limit per_ip");
    /* no device, no IP: those limits do not apply */
    for (int i = 0; i < 5; i++) {
        char u[16], m[16];
        snprintf(u, sizeof u, "n%d", i);
        snprintf(m, sizeof m, "n%d", i);
        order(&w, u, m, T0 + 10 + i, NULL, NULL);
        assert_string_equal(last(&w), "granted");
    }
    /* after the hour the device may earn again */
    order(&w, "c", "m6", T0 + HOUR, "d1", "10.0.0.9");
    assert_string_equal(last(&w), "granted");
    world_free(&w);
}

static void test_budget(void **state) {
    world w;
    world_init(&w, RULE("limits: {budget: 3}\n", COUPON), "UTC");
    for (int i = 0; i < 5; i++) {
        char u[16];
        snprintf(u, sizeof u, "u%d", i);
        order(&w, u, u, T0 + i * DAY, NULL, NULL);
        assert_string_equal(last(&w), i < 3 ? "granted" : "budget");
    }
    world_free(&w);
}

/* A group goes to the first rule whose grant passes policy: when the top
 * rule's budget runs out, the runner-up grants (once per trigger, also on
 * redelivery), and a winner that grants leaves the runner-up `group lost`. */
static void test_group_fallback(void **state) {
    world w;
    world_init(&w,
               "rules:\n"
               "  - {id: top, group: g, priority: 20, trigger: {event: Order Completed},\n"
               "     limits: {budget: 2}, grant: {benefit: coupon, sku: TOP, value: 20}}\n"
               "  - {id: next, group: g, priority: 10, trigger: {event: Order Completed},\n"
               "     grant: {benefit: coupon, sku: NEXT, value: 5}}\n",
               "UTC");
    char u[16];
    for (int i = 0; i < 4; i++) {
        snprintf(u, sizeof u, "u%d", i);
        size_t before = w.n;
        order(&w, u, u, T0 + i * HOUR, NULL, NULL);
        assert_int_equal(w.n - before, 2);
        if (i < 2) {
            /* top grants; next loses the group in the grant step */
            assert_int_equal(w.o[before].kind, OUT_GRANT);
            assert_string_equal(w.o[before + 1].reason, "group lost");
        } else {
            /* top is out of budget: next takes the group */
            assert_string_equal(w.o[before].reason, "budget");
            assert_int_equal(w.o[before + 1].kind, OUT_GRANT);
        }
    }
    /* a redelivered trigger: nothing new, the group stays with its grant */
    size_t before = w.n;
    order(&w, "u3", "u3", T0 + 3 * HOUR, NULL, NULL);
    assert_string_equal(w.o[before].reason, "group lost"); /* next holds the group now */
    assert_int_equal(w.o[before + 1].kind, OUT_REPEAT);
    before = w.n;
    order(&w, "u1", "u1", T0 + 1 * HOUR, NULL, NULL);
    assert_int_equal(w.o[before].kind, OUT_REPEAT);
    assert_string_equal(w.o[before + 1].reason, "group lost");
    world_free(&w);
}

/* Asia/Tokyo is UTC+9: the local day turns at 15:00 UTC. */
static void test_daily_budget_local_midnight(void **state) {
    world w;
    world_init(&w, RULE("limits: {daily_budget: 2}\n", COUPON), "Asia/Tokyo");
    const int64_t tokyo_2359 = 1795532340000LL; /* 2026-11-24T14:59:00Z = 23:59 in Tokyo */
    order(&w, "a", "m1", tokyo_2359 - 10 * HOUR, NULL, NULL); /* 13:59 Tokyo, same local day */
    order(&w, "b", "m2", tokyo_2359, NULL, NULL);
    assert_string_equal(last(&w), "granted");
    order(&w, "c", "m3", tokyo_2359 + 59999, NULL, NULL); /* 23:59:59.999 */
    assert_string_equal(last(&w), "daily budget");
    order(&w, "d", "m4", tokyo_2359 + MIN, NULL, NULL); /* 00:00 the next local day */
    assert_string_equal(last(&w), "granted");
    order(&w, "e", "m5", tokyo_2359 + MIN + 1, NULL, NULL);
    assert_string_equal(last(&w), "granted");
    order(&w, "f", "m6", tokyo_2359 + 9 * HOUR + 2 * MIN, NULL, NULL); /* past UTC midnight: same Tokyo day */
    assert_string_equal(last(&w), "daily budget");
    policy_day_cache c = {0};
    assert_string_equal(policy_day(&c, "Asia/Tokyo", tokyo_2359), "2026-11-24");
    assert_string_equal(policy_day(&c, "Asia/Tokyo", tokyo_2359 + MIN), "2026-11-25");
    assert_string_equal(policy_day(&c, "UTC", tokyo_2359 + MIN), "2026-11-24");
    world_free(&w);
}

static void test_pool(void **state) {
    world w;
    world_init(&w, RULE("", "{benefit: code, pool: vip, sku: V}"), "UTC");
    assert_int_equal(store_mem_pool_add(w.st, "vip", "A-1"), 1);
    assert_int_equal(store_mem_pool_add(w.st, "vip", "A-2"), 1);
    assert_int_equal(store_mem_pool_add(w.st, "vip", "A-1"), 0);
    assert_int_equal(store_mem_pool_add(w.st, "vip", "bad code"), -2);
    assert_int_equal(store_mem_pool_add(w.st, "vip", "q\"uote"), -2);
    order(&w, "u1", "m1", T0, NULL, NULL);
    assert_string_equal(last(&w), "granted");
    assert_string_equal(w.o[w.n - 1].code, "A-1"); /* load order */
    order(&w, "u2", "m2", T0 + 1, NULL, NULL);
    assert_string_equal(w.o[w.n - 1].code, "A-2");
    order(&w, "u3", "m3", T0 + 2, NULL, NULL);
    assert_string_equal(last(&w), "pool empty");
    order(&w, "u2", "m2", T0 + 3, NULL, NULL); /* a redelivery pops nothing */
    assert_string_equal(last(&w), "repeat");
    size_t avail, issued;
    store_mem_pool_status(w.st, "vip", &avail, &issued);
    assert_int_equal(avail, 0);
    assert_int_equal(issued, 2);
    const char *audit = store_mem_pool_issued(w.st, "vip", "A-1");
    assert_non_null(audit);
    assert_non_null(strstr(audit, "\"user_id\":\"u1\""));
    assert_non_null(strstr(audit, "\"rule\":\"r\""));
    assert_non_null(strstr(audit, "\"issued_at\":\"2026-11-24T10:00:00.000Z\""));
    assert_int_equal(store_mem_pool_add(w.st, "vip", "A-1"), -1); /* issued: never back in */
    assert_int_equal(store_mem_pool_add(w.st, "vip", "A-3"), 1);
    order(&w, "u3", "m3", T0 + 4, NULL, NULL); /* the suppressed trigger took no claim */
    assert_string_equal(last(&w), "granted");
    assert_string_equal(w.o[w.n - 1].code, "A-3");
    world_free(&w);
}

static void test_blocklist(void **state) {
    world w;
    world_init(&w, RULE("limits: {budget: 10}\n", COUPON), "UTC");
    store_mem_block(w.st, "user", "bad");
    store_mem_block(w.st, "device", "d-bad");
    store_mem_block(w.st, "ip", "192.0.2.1");
    order(&w, "bad", "m1", T0, NULL, NULL);
    assert_string_equal(last(&w), "blocklist");
    order(&w, "u1", "m2", T0, "d-bad", NULL);
    assert_string_equal(last(&w), "blocklist");
    order(&w, "u2", "m3", T0, NULL, "192.0.2.1");
    assert_string_equal(last(&w), "blocklist");
    order(&w, "u3", "m4", T0, "d-ok", "192.0.2.2");
    assert_string_equal(last(&w), "granted");
    world_free(&w);
}

/* Limits are checked when a wait fires, with the rule's limits then. */
static void test_wait_checked_at_fire(void **state) {
    world w;
    world_init(&w, "id: r\ntrigger: {event: Order Completed}\nwait: 30m\nlimits: {budget: 1}\n"
                   "grant: {benefit: code, pool: p, sku: S}\n", "UTC");
    assert_int_equal(store_mem_pool_add(w.st, "p", "P-1"), 1);
    assert_int_equal(store_mem_pool_add(w.st, "p", "P-2"), 1);
    order(&w, "a", "m1", T0, NULL, NULL);
    order(&w, "b", "m2", T0 + MIN, NULL, NULL);
    assert_int_equal(w.n, 0); /* both scheduled: nothing spent yet */
    store_advance(w.st, w.rs, &w.eng, T0 + HOUR, on_out, &w);
    assert_int_equal(w.n, 2);
    assert_int_equal(w.o[0].kind, OUT_GRANT);
    assert_int_equal(w.o[0].at, T0 + 30 * MIN);
    assert_string_equal(w.o[0].code, "P-1");
    assert_string_equal(w.o[1].reason, "budget");
    assert_int_equal(w.o[1].at, T0 + 31 * MIN);
    size_t avail, issued;
    store_mem_pool_status(w.st, "p", &avail, &issued);
    assert_int_equal(avail, 1);
    world_free(&w);
}

/* frequency_cap: grants per recipient across all rules, in the grant step
 * after the rule's own limits; a suppression spends nothing. */
static void test_frequency_cap(void **state) {
    world w;
    world_init(&w, "rules:\n"
                   "  - {id: a, priority: 2, trigger: {event: Order Completed}, grant: " COUPON "}\n"
                   "  - {id: b, priority: 1, trigger: {event: Order Completed}, grant: " COUPON "}\n",
               "UTC");
    store_mem_set_policy(w.st, 3, DAY, -1, -1);
    order(&w, "u1", "m1", T0, NULL, NULL); /* a, b */
    assert_int_equal(w.n, 2);
    assert_int_equal(w.o[0].kind, OUT_GRANT);
    assert_int_equal(w.o[1].kind, OUT_GRANT);
    order(&w, "u1", "m2", T0 + HOUR, NULL, NULL); /* a granted (3rd), b capped */
    assert_int_equal(w.o[2].kind, OUT_GRANT);
    assert_string_equal(w.o[3].reason, "frequency cap");
    order(&w, "u2", "m3", T0 + HOUR, NULL, NULL); /* another member: own cap */
    assert_int_equal(w.o[4].kind, OUT_GRANT);
    /* the first two grants leave the window exactly one day later */
    order(&w, "u1", "m4", T0 + DAY, NULL, NULL);
    assert_int_equal(w.o[6].kind, OUT_GRANT);
    assert_int_equal(w.o[7].kind, OUT_GRANT);
    order(&w, "u1", "m5", T0 + DAY + 1, NULL, NULL);
    assert_string_equal(w.o[8].reason, "frequency cap");
    assert_string_equal(w.o[9].reason, "frequency cap");
    world_free(&w);
}

static void event_tz(world *w, const char *user, const char *msgid, int64_t ts, const char *tz) {
    char ts_s[32], json[768];
    format_iso8601_ms(ts, ts_s, sizeof ts_s);
    snprintf(json, sizeof json,
             "{\"type\":\"track\",\"event\":\"Order Completed\",\"userId\":\"%s\",\"messageId\":\"%s\","
             "\"timestamp\":\"%s\",\"context\":{\"timezone\":\"%s\"}}",
             user, msgid, ts_s, tz);
    event_t ev;
    char reason[128];
    assert_int_equal(decode_event(&w->dec, json, strlen(json), ts, &ev, reason, sizeof reason), 0);
    store_advance(w->st, w->rs, &w->eng, ts - 1, on_out, w);
    clock_set(&w->clk, ts);
    engine_run(&w->eng, w->rs, &ev, &w->clk, on_intent, w);
    event_clear(&ev);
}

/* quiet_hours 22:00-08:00 crosses midnight: granted at once, delivered at the
 * end; in the member's context.timezone when it names a zone. */
static void test_quiet_hours(void **state) {
    world w;
    world_init(&w, RULE("", COUPON), "UTC");
    store_mem_set_policy(w.st, 0, 0, 22 * 60, 8 * 60);
    const int64_t d0 = 1795478400000LL; /* 2026-11-24T00:00:00Z */
    order(&w, "a", "m1", d0 + 23 * HOUR, NULL, NULL); /* 23:00 UTC: until 08:00 the next day */
    assert_int_equal(w.o[0].kind, OUT_GRANT);
    assert_int_equal(w.o[0].deliver_after, d0 + DAY + 8 * HOUR);
    order(&w, "b", "m2", d0 + DAY + 7 * HOUR + 59 * MIN, NULL, NULL); /* 07:59: until 08:00 */
    assert_int_equal(w.o[1].deliver_after, d0 + DAY + 8 * HOUR);
    order(&w, "c", "m3", d0 + DAY + 8 * HOUR, NULL, NULL); /* 08:00: the end is not quiet */
    assert_int_equal(w.o[2].deliver_after, d0 + DAY + 8 * HOUR);
    order(&w, "c", "m4", d0 + DAY + 22 * HOUR - 1, NULL, NULL); /* 21:59:59.999 */
    assert_int_equal(w.o[3].deliver_after, d0 + DAY + 22 * HOUR - 1);
    /* 12:00 UTC is 21:00 in Tokyo (UTC+9): not quiet; 14:00 UTC is 23:00 there:
     * quiet until 08:00 Tokyo = 23:00 UTC */
    event_tz(&w, "t", "m5", d0 + 12 * HOUR, "Asia/Tokyo");
    assert_int_equal(w.o[4].deliver_after, d0 + 12 * HOUR);
    event_tz(&w, "t", "m6", d0 + 14 * HOUR, "Asia/Tokyo");
    assert_int_equal(w.o[5].deliver_after, d0 + 23 * HOUR);
    /* an unknown zone falls back to the configured one (UTC: 14:00 is not quiet) */
    event_tz(&w, "t", "m7", d0 + 14 * HOUR, "Mars/Olympus");
    assert_int_equal(w.o[6].deliver_after, d0 + 14 * HOUR);
    world_free(&w);
    /* a period inside one day, in the configured zone */
    world_init(&w, RULE("", COUPON), "Europe/Paris");
    store_mem_set_policy(w.st, 0, 0, 1 * 60, 6 * 60); /* 01:00-06:00 Paris = 00:00-05:00 UTC in November */
    order(&w, "a", "m1", d0 + 4 * HOUR, NULL, NULL);
    assert_int_equal(w.o[0].deliver_after, d0 + 5 * HOUR);
    order(&w, "a", "m2", d0 + 5 * HOUR, NULL, NULL);
    assert_int_equal(w.o[1].deliver_after, d0 + 5 * HOUR);
    world_free(&w);
}

typedef struct statrow {
    char key[96];
    long long v;
} statrow;
typedef struct statset {
    statrow r[64];
    int n;
} statset;

static void collect_stat(void *ud, const char *rule, const char *variant, const char *field, long long v) {
    statset *s = ud;
    assert_true(s->n < 64);
    snprintf(s->r[s->n].key, sizeof s->r[s->n].key, "%s/%s/%s", rule, variant, field);
    s->r[s->n++].v = v;
}

static long long stat(const statset *s, const char *key) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->r[i].key, key)) return s->r[i].v;
    return 0;
}

/* Every decision is counted by rule, variant and reason; holdout size counts
 * distinct members; quiet hours count delayed grants. */
static void test_reasons_counted(void **state) {
    world w;
    world_init(&w, "id: r\ntrigger: {event: Order Completed}\nlimits: {per_user: 1/1d}\n"
                   "grant: {benefit: coupon, sku: C, value: 1}\n"
                   "variants:\n  - {name: on, weight: 50}\n  - {name: off, weight: 50, holdout: true}\n",
               "UTC");
    store_mem_set_policy(w.st, 0, 0, 22 * 60, 8 * 60);
    long long want_on = 0, limited = 0, held_events = 0;
    int nheld = 0;
    for (int i = 0; i < 8; i++) {
        char u[16], m[16];
        snprintf(u, sizeof u, "u%d", i);
        for (int k = 0; k < 2; k++) {
            snprintf(m, sizeof m, "m%d-%d", i, k);
            order(&w, u, m, T0 + i * MIN + k, NULL, NULL);
            const char *v = engine_variant_name(ruleset_find(w.rs, "r"), u);
            if (!strcmp(v, "on")) {
                if (k == 0) want_on++;
                else limited++;
            } else {
                held_events++;
                if (k == 0) nheld++;
            }
        }
    }
    assert_true(want_on > 0 && nheld > 0);
    order(&w, "late", "mq", T0 + 13 * HOUR, NULL, NULL); /* 23:00 UTC: quiet */
    const char *vl = engine_variant_name(ruleset_find(w.rs, "r"), "late");
    statset s = {.n = 0};
    store_mem_stats_each(w.st, collect_stat, &s);
    assert_int_equal(stat(&s, "r/on/triggered"), 2 * want_on + !strcmp(vl, "on"));
    assert_int_equal(stat(&s, "r/on/granted"), want_on + !strcmp(vl, "on"));
    assert_int_equal(stat(&s, "r/on/limit per_user"), limited);
    assert_int_equal(stat(&s, "r/on/quiet hours"), !strcmp(vl, "on"));
    assert_int_equal(stat(&s, "r/off/holdout"), held_events + !strcmp(vl, "off"));
    assert_int_equal(stat(&s, "r/off/holdout size"), nheld + !strcmp(vl, "off"));
    assert_int_equal(stat(&s, "r/off/granted"), 0);
    world_free(&w);
}

static void test_subject(void **state) {
    char out[160];
    cJSON *ctx = cJSON_Parse("{\"device\":{\"id\":42},\"ip\":\"a\\u001eb\"}");
    policy_subject(ctx, "device", "id", out);
    assert_string_equal(out, "42");
    policy_subject(ctx, "ip", NULL, out);
    assert_int_equal(out[0], 'h'); /* a control byte: hashed */
    assert_int_equal(strlen(out), 33);
    policy_subject(ctx, "nope", NULL, out);
    assert_string_equal(out, "");
    cJSON_Delete(ctx);
}

/* ---- the closed loop (docs/policy.md "The closed loop") ---------------- */

static char *LOOP_R[] = {"Coupon Redeemed", "Benefit Redeemed"};
static char *LOOP_C[] = {"Order Completed"};

static void loop_on(world *w) {
    engine_set_loop(&w->eng, LOOP_R, 2, LOOP_C, 1, 7 * DAY);
    store_mem_set_loop(w->st, 7 * DAY);
}

/* Any event; props is a JSON object or NULL. */
static void track(world *w, const char *name, const char *user, const char *msgid, int64_t ts, const char *props) {
    char ts_s[32], json[768];
    format_iso8601_ms(ts, ts_s, sizeof ts_s);
    snprintf(json, sizeof json,
             "{\"type\":\"track\",\"event\":\"%s\",\"userId\":\"%s\",\"messageId\":\"%s\","
             "\"timestamp\":\"%s\",\"properties\":%s}",
             name, user, msgid, ts_s, props ? props : "{}");
    event_t ev;
    char reason[128];
    assert_int_equal(decode_event(&w->dec, json, strlen(json), ts, &ev, reason, sizeof reason), 0);
    store_advance(w->st, w->rs, &w->eng, ts - 1, on_out, w);
    clock_set(&w->clk, ts);
    engine_run(&w->eng, w->rs, &ev, &w->clk, on_intent, w);
    event_clear(&ev);
}

static void redeem(world *w, const char *user, const char *msgid, int64_t ts, const char *gid) {
    char props[128];
    snprintf(props, sizeof props, "{\"grant_id\":\"%s\"}", gid);
    track(w, "Coupon Redeemed", user, msgid, ts, props);
}

static long long loop_stat(world *w, const char *key) {
    statset s = {.n = 0};
    store_mem_stats_each(w->st, collect_stat, &s);
    return stat(&s, key);
}

#define SIGNUP_RULE "id: r\ntrigger: {event: Signed Up}\ngrant: {benefit: coupon, sku: C, value: 1}\n"

/* A redemption counts once per grant id (redelivery, a second redemption
 * event), under the grant's rule and variant; an unknown grant id, or one
 * redeemed by another member than its recipient, counts redemption_unknown;
 * an event without grant_id counts nothing. */
static void test_loop_redemption_once(void **state) {
    world w;
    world_init(&w, SIGNUP_RULE, "UTC");
    loop_on(&w);
    track(&w, "Signed Up", "u1", "s1", T0, NULL);
    assert_string_equal(last(&w), "granted");
    char gid[48];
    snprintf(gid, sizeof gid, "%s", w.o[w.n - 1].gid);
    redeem(&w, "u1", "c1", T0 + HOUR, gid);
    redeem(&w, "u1", "c1", T0 + HOUR, gid);  /* redelivered */
    track(&w, "Benefit Redeemed", "u1", "c2", T0 + 2 * HOUR, "{\"grant_id\":\"x\"}"); /* unknown */
    char props[128];
    snprintf(props, sizeof props, "{\"grant_id\":\"%s\"}", gid);
    track(&w, "Benefit Redeemed", "u1", "c3", T0 + 3 * HOUR, props); /* the same grant again */
    redeem(&w, "u2", "c4", T0 + 3 * HOUR, gid);                       /* not u2's grant */
    track(&w, "Coupon Redeemed", "u1", "c5", T0 + 3 * HOUR, NULL);      /* no grant_id: nothing */
    assert_int_equal(loop_stat(&w, "r/-/redeemed"), 1);
    assert_int_equal(loop_stat(&w, "/-/redemption_unknown"), 2);
    assert_int_equal(loop_stat(&w, "r/-/granted"), 1);
    assert_int_equal(loop_stat(&w, "r/-/triggered"), 1);
    world_free(&w);
}

/* A conversion counts once per grant inside the window before it (a second
 * order does not count again); a grant exactly one window old, or made after
 * the order, does not count; with the loop off nothing is recorded. */
static void test_loop_conversion_window(void **state) {
    world w;
    world_init(&w, SIGNUP_RULE, "UTC");
    loop_on(&w);
    track(&w, "Signed Up", "u1", "s1", T0, NULL);
    track(&w, "Signed Up", "u2", "s2", T0, NULL);
    track(&w, "Signed Up", "u3", "s3", T0, NULL);
    track(&w, "Order Completed", "u1", "o1", T0 + HOUR, NULL);
    track(&w, "Order Completed", "u1", "o2", T0 + 2 * HOUR, NULL); /* again: not counted */
    assert_int_equal(loop_stat(&w, "r/-/converted"), 1);
    track(&w, "Order Completed", "u2", "o3", T0 + 7 * DAY, NULL);     /* exactly a window later: outside */
    assert_int_equal(loop_stat(&w, "r/-/converted"), 1);
    track(&w, "Order Completed", "u3", "o4", T0 + 7 * DAY - 1, NULL); /* just inside */
    assert_int_equal(loop_stat(&w, "r/-/converted"), 2);
    track(&w, "Order Completed", "u4", "o5", T0 + HOUR, NULL);        /* no grant */
    track(&w, "Signed Up", "u4", "s4", T0 + 2 * HOUR, NULL);          /* granted after the order */
    assert_int_equal(loop_stat(&w, "r/-/converted"), 2);
    /* a second grant of the rule to u1: its own conversion */
    track(&w, "Signed Up", "u1", "s5", T0 + 3 * HOUR, NULL);
    track(&w, "Order Completed", "u1", "o6", T0 + 4 * HOUR, NULL);
    assert_int_equal(loop_stat(&w, "r/-/converted"), 3);
    world_free(&w);

    world_init(&w, SIGNUP_RULE, "UTC");
    track(&w, "Signed Up", "u1", "s1", T0, NULL);
    track(&w, "Order Completed", "u1", "o1", T0 + HOUR, NULL);
    assert_int_equal(loop_stat(&w, "r/-/converted"), 0);
    world_free(&w);
}

/* Members held out convert too (once per member): the holdout arm's
 * conversions are what the uplift compares against. */
static void test_loop_holdout_conversions(void **state) {
    world w;
    world_init(&w, "id: r\ntrigger: {event: Signed Up}\ngrant: {benefit: coupon, sku: C, value: 1}\n"
                   "variants:\n  - {name: on, weight: 50}\n  - {name: off, weight: 50, holdout: true}\n",
               "UTC");
    loop_on(&w);
    long long on = 0, off = 0, on_conv = 0, off_conv = 0;
    for (int i = 0; i < 12; i++) {
        char u[16], m[32];
        snprintf(u, sizeof u, "u%d", i);
        snprintf(m, sizeof m, "s%d", i);
        track(&w, "Signed Up", u, m, T0 + i, NULL);
        int is_on = !strcmp(engine_variant_name(ruleset_find(w.rs, "r"), u), "on");
        on += is_on;
        off += !is_on;
        if (i % 3 == 0) continue; /* no order */
        for (int k = 0; k < 2; k++) { /* two orders: one conversion */
            snprintf(m, sizeof m, "o%d-%d", i, k);
            track(&w, "Order Completed", u, m, T0 + HOUR + i * MIN + k, NULL);
        }
        on_conv += is_on;
        off_conv += !is_on;
    }
    /* a held-out member held out again converts no more than once */
    for (int i = 0; i < 12; i++) {
        char u[16];
        snprintf(u, sizeof u, "u%d", i);
        if (!strcmp(engine_variant_name(ruleset_find(w.rs, "r"), u), "off") && i % 3) {
            track(&w, "Signed Up", u, "again", T0 + 2 * HOUR, NULL);
            track(&w, "Order Completed", u, "again-o", T0 + 3 * HOUR, NULL);
            break;
        }
    }
    assert_true(on > 0 && off > 0 && off_conv > 0);
    assert_int_equal(loop_stat(&w, "r/on/granted"), on);
    assert_int_equal(loop_stat(&w, "r/on/converted"), on_conv);
    assert_int_equal(loop_stat(&w, "r/off/holdout size"), off);
    assert_int_equal(loop_stat(&w, "r/off/converted"), off_conv);
    world_free(&w);
}

/* attribution_window per rule: each grant and holdout assignment converts
 * within its own rule's window (the loop's window is the default); a
 * redemption counts within that window plus the margin. */
static void test_loop_attribution_per_rule(void **state) {
    world w;
    world_init(&w,
               "rules:\n"
               "  - id: fast\n    attribution_window: 1d\n    trigger: {event: Signed Up}\n"
               "    grant: {benefit: coupon, sku: F, value: 1}\n"
               "    variants: [{name: on, weight: 1}, {name: off, weight: 1, holdout: true}]\n"
               "  - id: slow\n    trigger: {event: Signed Up}\n    grant: {benefit: coupon, sku: S, value: 1}\n",
               "UTC");
    assert_int_equal(ruleset_count(w.rs), 2);
    assert_int_equal(ruleset_find(w.rs, "fast")->attribution_ms, DAY);
    assert_int_equal(rule_attribution_ms(ruleset_find(w.rs, "fast"), 7 * DAY), DAY);
    assert_int_equal(rule_attribution_ms(ruleset_find(w.rs, "slow"), 7 * DAY), 7 * DAY);
    assert_int_equal(rule_attribution_ms(ruleset_find(w.rs, "fast"), 0), 0); /* the loop off wins */
    loop_on(&w);
    char u[16], m[16];
    for (int i = 0; i < 20; i++) {
        snprintf(u, sizeof u, "u%d", i);
        snprintf(m, sizeof m, "s%d", i);
        track(&w, "Signed Up", u, m, T0, NULL);
    }
    /* half the members order 2 days later: outside fast's 1d, inside slow's 7d */
    for (int i = 0; i < 20; i += 2) {
        snprintf(u, sizeof u, "u%d", i);
        snprintf(m, sizeof m, "o%d", i);
        track(&w, "Order Completed", u, m, T0 + 2 * DAY, NULL);
    }
    assert_int_equal(loop_stat(&w, "fast/on/converted"), 0);
    assert_int_equal(loop_stat(&w, "fast/off/converted"), 0);
    assert_int_equal(loop_stat(&w, "slow/-/converted"), 10);
    /* the other half orders within the day: both rules convert */
    for (int i = 1; i < 20; i += 2) {
        snprintf(u, sizeof u, "u%d", i);
        snprintf(m, sizeof m, "p%d", i);
        track(&w, "Order Completed", u, m, T0 + DAY - 1, NULL);
    }
    long long on = loop_stat(&w, "fast/on/converted"), off = loop_stat(&w, "fast/off/converted");
    assert_int_equal(on + off, 10);
    assert_true(on > 0 && off > 0);
    assert_int_equal(loop_stat(&w, "slow/-/converted"), 20);
    world_free(&w);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_per_user),    cmocka_unit_test(test_per_device_and_ip),
        cmocka_unit_test(test_budget),      cmocka_unit_test(test_daily_budget_local_midnight),
        cmocka_unit_test(test_group_fallback),
        cmocka_unit_test(test_pool),        cmocka_unit_test(test_blocklist),
        cmocka_unit_test(test_wait_checked_at_fire), cmocka_unit_test(test_subject),
        cmocka_unit_test(test_frequency_cap), cmocka_unit_test(test_quiet_hours),
        cmocka_unit_test(test_reasons_counted),
        cmocka_unit_test(test_loop_redemption_once), cmocka_unit_test(test_loop_conversion_window),
        cmocka_unit_test(test_loop_holdout_conversions), cmocka_unit_test(test_loop_attribution_per_rule),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
