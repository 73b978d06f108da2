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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_per_user),    cmocka_unit_test(test_per_device_and_ip),
        cmocka_unit_test(test_budget),      cmocka_unit_test(test_daily_budget_local_midnight),
        cmocka_unit_test(test_pool),        cmocka_unit_test(test_blocklist),
        cmocka_unit_test(test_wait_checked_at_fire), cmocka_unit_test(test_subject),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
