/* The time shapes on a virtual clock: waits, cancels, counts in a sliding
 * window, inactivity, grant ids. Each test drives engine_run + the in-memory
 * store exactly as replay does (advance to t-1, then decide the event at t),
 * and checks every output with its time. */
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
#include "../../daemon/policy/state.h"
#include "../../daemon/rules/rules.h"

#define MAXOUT 32
#define MIN (60 * 1000LL)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)

static const int64_t T0 = 1795514400000LL; /* 2026-11-24T10:00:00Z */

typedef struct out {
    out_kind kind;
    int64_t at;
    char reason[32];
    char rule[32];
    char grant_id[40];
    char *json;
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
    x->kind = o->kind;
    x->at = o->at;
    snprintf(x->reason, sizeof x->reason, "%s", o->reason ? o->reason : "");
    snprintf(x->rule, sizeof x->rule, "%s", o->rule_id);
    snprintf(x->grant_id, sizeof x->grant_id, "%s", o->grant_id);
    x->json = xstrndup(o->json, o->len);
}

static void on_intent(void *ud, const event_t *ev, const intent_t *in) {
    world *w = ud;
    store_apply(w->st, w->rs, in, on_out, w);
}

static ruleset_t *load(const char *yaml) {
    diag_t d;
    diag_init(&d);
    ruleset_t *rs = ruleset_load_string_ex("t.yaml", yaml, strlen(yaml), "UTC", RULES_ALLOW_TIME, &d);
    if (!rs) diag_print(&d, stderr);
    diag_free(&d);
    assert_non_null(rs);
    return rs;
}

static void clear(world *w) {
    for (int i = 0; i < w->n; i++) free(w->o[i].json);
    w->n = 0;
}

static void world_init(world *w, const char *yaml) {
    memset(w, 0, sizeof *w);
    w->rs = load(yaml);
    engine_init(&w->eng);
    w->st = store_mem_new();
    clock_init_virtual(&w->clk, 0);
    decoder_init_default(&w->dec);
}

static void world_free(world *w) {
    clear(w);
    store_free(w->st);
    engine_free(&w->eng);
    ruleset_free(w->rs);
}

static void advance(world *w, int64_t now) { store_advance(w->st, w->rs, &w->eng, now, on_out, w); }

/* Nothing until at - 1, then exactly one grant, made at `at`. */
static void expect_grant_at(world *w, int64_t at) {
    int n = w->n;
    advance(w, at - 1);
    assert_int_equal(w->n, n);
    advance(w, at);
    assert_int_equal(w->n, n + 1);
    assert_int_equal(w->o[n].kind, OUT_GRANT);
    assert_int_equal(w->o[n].at, at);
}

/* One event, as replay feeds it: timers due before t fire, then the event. */
static void event_at(world *w, const char *name, const char *user, const char *msgid, int64_t ts, const char *props) {
    char ts_s[32], json[512];
    format_iso8601_ms(ts, ts_s, sizeof ts_s);
    snprintf(json, sizeof json,
             "{\"type\":\"track\",\"event\":\"%s\",\"userId\":\"%s\",\"messageId\":\"%s\",\"timestamp\":\"%s\","
             "\"properties\":%s}",
             name, user, msgid, ts_s, props ? props : "{}");
    event_t ev;
    char reason[128];
    assert_int_equal(decode_event(&w->dec, json, strlen(json), ts, &ev, reason, sizeof reason), 0);
    advance(w, ts - 1);
    clock_set(&w->clk, ts);
    engine_run(&w->eng, w->rs, &ev, &w->clk, on_intent, w);
    event_clear(&ev);
}

static int count_kind(const world *w, out_kind k) {
    int n = 0;
    for (int i = 0; i < w->n; i++) n += w->o[i].kind == k;
    return n;
}

static const char *jget(const char *json, const char *path, char *buf, size_t len) {
    cJSON *root = cJSON_Parse(json);
    assert_non_null(root);
    char p[128];
    snprintf(p, sizeof p, "%s", path);
    cJSON *cur = root;
    for (char *tok = strtok(p, "."); tok && cur; tok = strtok(NULL, ".")) cur = cJSON_GetObjectItem(cur, tok);
    if (cJSON_IsString(cur)) snprintf(buf, len, "%s", cur->valuestring);
    else if (cJSON_IsNull(cur)) snprintf(buf, len, "null");
    else if (cJSON_IsNumber(cur)) snprintf(buf, len, "%g", cur->valuedouble);
    else snprintf(buf, len, "<absent>");
    cJSON_Delete(root);
    return buf;
}

#define ASSERT_FIELD(json, path, want)                                   \
    do {                                                                 \
        char b_[128];                                                    \
        assert_string_equal(jget((json), (path), b_, sizeof b_), (want)); \
    } while (0)

static void iso(int64_t ms, char *out) { format_iso8601_ms(ms, out, 32); }

#define CART                                                      \
    "id: cart\n"                                                  \
    "trigger: {event: Product Added}\n"                           \
    "wait: 30m\n"                                                 \
    "cancel_on: [Order Completed]\n"                              \
    "grant: {benefit: coupon, sku: CART, value: 10, expires_in: 72h, message: \"{{properties.name}} waits\"}\n"

static void test_wait_fires_at_due(void **state) {
    world w;
    world_init(&w, CART);
    event_at(&w, "Product Added", "u1", "m1", T0, "{\"name\":\"Lamp\"}");
    assert_int_equal(w.n, 0);
    assert_int_equal(store_pending_waits(w.st), 1);
    advance(&w, T0 + 30 * MIN - 1);
    assert_int_equal(w.n, 0);
    advance(&w, T0 + 30 * MIN);
    assert_int_equal(w.n, 1);
    assert_int_equal(w.o[0].kind, OUT_GRANT);
    assert_int_equal(w.o[0].at, T0 + 30 * MIN);
    char id[40];
    engine_grant_id("cart", "u1", "m1", id);
    assert_string_equal(w.o[0].grant_id, id);
    ASSERT_FIELD(w.o[0].json, "grant_id", id);
    ASSERT_FIELD(w.o[0].json, "issued_at", "2026-11-24T10:30:00.000Z");
    ASSERT_FIELD(w.o[0].json, "deliver_after", "2026-11-24T10:30:00.000Z");
    ASSERT_FIELD(w.o[0].json, "benefit.expires_at", "2026-11-27T10:30:00.000Z");
    ASSERT_FIELD(w.o[0].json, "trigger.timestamp", "2026-11-24T10:00:00.000Z");
    ASSERT_FIELD(w.o[0].json, "trigger.message_id", "m1");
    ASSERT_FIELD(w.o[0].json, "message", "Lamp waits"); /* rendered at decision time */
    assert_int_equal(store_pending_waits(w.st), 0);
    advance(&w, T0 + DAY);
    assert_int_equal(w.n, 1);
    world_free(&w);
}

static void test_cancel_before_due(void **state) {
    world w;
    world_init(&w, CART);
    event_at(&w, "Product Added", "u1", "m1", T0, NULL);
    event_at(&w, "Order Completed", "u2", "o0", T0 + 5 * MIN, NULL); /* another member: no effect */
    event_at(&w, "Order Completed", "u1", "o1", T0 + 10 * MIN, NULL);
    assert_int_equal(w.n, 1);
    assert_int_equal(w.o[0].kind, OUT_EXPLAIN);
    assert_string_equal(w.o[0].reason, "cancelled");
    assert_int_equal(w.o[0].at, T0 + 10 * MIN);
    ASSERT_FIELD(w.o[0].json, "outcome", "suppressed");
    ASSERT_FIELD(w.o[0].json, "grant_id", "<absent>");
    ASSERT_FIELD(w.o[0].json, "trigger.message_id", "m1");
    ASSERT_FIELD(w.o[0].json, "cancelled_by.event", "Order Completed");
    ASSERT_FIELD(w.o[0].json, "cancelled_by.message_id", "o1");
    ASSERT_FIELD(w.o[0].json, "decided_at", "2026-11-24T10:10:00.000Z");
    assert_int_equal(store_pending_waits(w.st), 0);
    advance(&w, T0 + DAY);
    assert_int_equal(w.n, 1);
    /* a second order cancels nothing more */
    event_at(&w, "Order Completed", "u1", "o2", T0 + 2 * DAY, NULL);
    assert_int_equal(w.n, 1);
    world_free(&w);
}

/* Events at t are applied before timers due at t: the order wins the tie;
 * one millisecond later the grant has already gone. */
static void test_cancel_at_the_due_millisecond(void **state) {
    world w;
    world_init(&w, CART);
    event_at(&w, "Product Added", "u1", "m1", T0, NULL);
    event_at(&w, "Order Completed", "u1", "o1", T0 + 30 * MIN, NULL);
    advance(&w, T0 + DAY);
    assert_int_equal(w.n, 1);
    assert_string_equal(w.o[0].reason, "cancelled");
    world_free(&w);

    world_init(&w, CART);
    event_at(&w, "Product Added", "u2", "m2", T0, NULL);
    event_at(&w, "Order Completed", "u2", "o2", T0 + 30 * MIN + 1, NULL);
    assert_int_equal(w.n, 1);
    assert_int_equal(w.o[0].kind, OUT_GRANT);
    assert_int_equal(w.o[0].at, T0 + 30 * MIN);
    world_free(&w);
}

static void test_second_trigger_while_pending(void **state) {
    world w;
    world_init(&w, CART);
    event_at(&w, "Product Added", "u1", "m1", T0, NULL);
    event_at(&w, "Product Added", "u1", "m2", T0 + 5 * MIN, NULL);
    assert_int_equal(w.n, 1);
    assert_string_equal(w.o[0].reason, "already pending");
    ASSERT_FIELD(w.o[0].json, "trigger.message_id", "m2");
    assert_int_equal(store_pending_waits(w.st), 1);
    advance(&w, T0 + 35 * MIN);
    assert_int_equal(w.n, 2);
    assert_int_equal(w.o[1].kind, OUT_GRANT);
    assert_int_equal(w.o[1].at, T0 + 30 * MIN); /* the first trigger's clock, not restarted */
    char id[40];
    engine_grant_id("cart", "u1", "m1", id);
    assert_string_equal(w.o[1].grant_id, id);
    /* after it fired, a new trigger starts a new wait */
    event_at(&w, "Product Added", "u1", "m3", T0 + 40 * MIN, NULL);
    advance(&w, T0 + 70 * MIN);
    assert_int_equal(w.n, 3);
    assert_int_equal(w.o[2].kind, OUT_GRANT);
    assert_int_equal(w.o[2].at, T0 + 70 * MIN);
    /* the same trigger delivered again after its wait fired: a repeat, nothing pushed */
    event_at(&w, "Product Added", "u1", "m3", T0 + 80 * MIN, NULL);
    advance(&w, T0 + DAY);
    assert_int_equal(count_kind(&w, OUT_GRANT), 2);
    assert_int_equal(count_kind(&w, OUT_REPEAT), 1);
    world_free(&w);
}

/* Listing the trigger in cancel_on turns "keep the first" into "restart". */
static void test_restart_by_listing_trigger_in_cancel_on(void **state) {
    world w;
    world_init(&w, "id: cart\n"
                   "trigger: {event: Product Added}\n"
                   "wait: 30m\n"
                   "cancel_on: [Product Added, Order Completed]\n"
                   "grant: {benefit: coupon}\n");
    event_at(&w, "Product Added", "u1", "m1", T0, NULL);
    event_at(&w, "Product Added", "u1", "m2", T0 + 5 * MIN, NULL);
    assert_int_equal(w.n, 1);
    assert_string_equal(w.o[0].reason, "cancelled");
    ASSERT_FIELD(w.o[0].json, "trigger.message_id", "m1");
    advance(&w, T0 + DAY);
    assert_int_equal(w.n, 2);
    assert_int_equal(w.o[1].kind, OUT_GRANT);
    assert_int_equal(w.o[1].at, T0 + 35 * MIN);
    char id[40];
    engine_grant_id("cart", "u1", "m2", id);
    assert_string_equal(w.o[1].grant_id, id);
    world_free(&w);
}

#define THIRD                                      \
    "id: third\n"                                  \
    "trigger: {event: Order Completed, count: 3, within: 30d}\n" \
    "grant: {benefit: points, value: 300}\n"

static void expect_progress(world *w, int i, const char *reason) {
    assert_true(i < w->n);
    assert_int_equal(w->o[i].kind, OUT_PROGRESS);
    assert_string_equal(w->o[i].reason, reason);
}

static void test_count_crosses_once_then_again_after_slide(void **state) {
    world w;
    world_init(&w, THIRD);
    event_at(&w, "Order Completed", "u1", "o1", T0, NULL);
    event_at(&w, "Order Completed", "u1", "o2", T0 + 1 * DAY, NULL);
    event_at(&w, "Order Completed", "u1", "o2", T0 + 1 * DAY, NULL); /* redelivered: counted once */
    expect_progress(&w, 0, "count 1/3");
    expect_progress(&w, 1, "count 2/3");
    expect_progress(&w, 2, "count 2/3");
    event_at(&w, "Order Completed", "u1", "o3", T0 + 2 * DAY, NULL);
    assert_int_equal(w.o[3].kind, OUT_GRANT);
    assert_int_equal(w.o[3].at, T0 + 2 * DAY);
    char id[40];
    engine_grant_id("third", "u1", "o3", id);
    assert_string_equal(w.o[3].grant_id, id);
    ASSERT_FIELD(w.o[3].json, "issued_at", "2026-11-26T10:00:00.000Z");
    /* a fourth inside the window does not cross again */
    event_at(&w, "Order Completed", "u1", "o4", T0 + 3 * DAY, NULL);
    expect_progress(&w, 4, "count 4/3");
    /* the window slides: at day 40 everything before day 10 is gone */
    event_at(&w, "Order Completed", "u1", "o5", T0 + 40 * DAY, NULL);
    event_at(&w, "Order Completed", "u1", "o6", T0 + 41 * DAY, NULL);
    expect_progress(&w, 5, "count 1/3");
    expect_progress(&w, 6, "count 2/3");
    event_at(&w, "Order Completed", "u1", "o7", T0 + 42 * DAY, NULL);
    assert_int_equal(w.o[7].kind, OUT_GRANT);
    engine_grant_id("third", "u1", "o7", id);
    assert_string_equal(w.o[7].grant_id, id);
    assert_int_equal(count_kind(&w, OUT_GRANT), 2);
    /* other members have their own windows */
    event_at(&w, "Order Completed", "u2", "p1", T0 + 42 * DAY, NULL);
    expect_progress(&w, 8, "count 1/3");
    world_free(&w);
}

/* The window is [t - within, t]: exactly `within` old still counts. */
static void test_count_window_edge(void **state) {
    world w;
    world_init(&w, THIRD);
    event_at(&w, "Order Completed", "u1", "a1", T0, NULL);
    event_at(&w, "Order Completed", "u1", "a2", T0 + 15 * DAY, NULL);
    event_at(&w, "Order Completed", "u1", "a3", T0 + 30 * DAY, NULL);
    assert_int_equal(w.o[2].kind, OUT_GRANT);
    event_at(&w, "Order Completed", "u2", "b1", T0, NULL);
    event_at(&w, "Order Completed", "u2", "b2", T0 + 15 * DAY, NULL);
    event_at(&w, "Order Completed", "u2", "b3", T0 + 30 * DAY + 1, NULL);
    expect_progress(&w, 5, "count 2/3");
    world_free(&w);
}

/* A count that also waits: crossing N schedules; the wait runs from the crossing. */
static void test_count_then_wait(void **state) {
    world w;
    world_init(&w, "id: twice\n"
                   "trigger: {event: Order Completed, count: 2, within: 1d}\n"
                   "wait: 1h\n"
                   "grant: {benefit: coupon}\n");
    event_at(&w, "Order Completed", "u1", "o1", T0, NULL);
    event_at(&w, "Order Completed", "u1", "o2", T0 + HOUR, NULL);
    assert_int_equal(w.n, 1); /* progress 1/2 only; the crossing scheduled */
    advance(&w, T0 + 2 * HOUR);
    assert_int_equal(w.n, 2);
    assert_int_equal(w.o[1].kind, OUT_GRANT);
    assert_int_equal(w.o[1].at, T0 + 2 * HOUR);
    char id[40];
    engine_grant_id("twice", "u1", "o2", id);
    assert_string_equal(w.o[1].grant_id, id);
    world_free(&w);
}

#define WINBACK                                   \
    "id: winback\n"                               \
    "trigger: {inactive_for: 7d}\n"               \
    "grant: {benefit: coupon, sku: BACK, expires_in: 1d, message: \"we miss you {{user_id}}\"}\n"

static void test_inactivity_once_per_silence_and_rearm(void **state) {
    world w;
    world_init(&w, WINBACK);
    event_at(&w, "Page Viewed", "u1", "v1", T0, NULL);
    event_at(&w, "Page Viewed", "u1", "v2", T0 + 2 * DAY, NULL); /* moves the deadline to day 9 */
    expect_grant_at(&w, T0 + 9 * DAY);
    char id[40], occ[40], ts[32];
    engine_inactivity_occurrence(T0 + 2 * DAY, occ);
    assert_string_equal(occ, "inactive:1795687200000");
    engine_grant_id("winback", "u1", occ, id);
    assert_string_equal(w.o[0].grant_id, id);
    iso(T0 + 2 * DAY, ts);
    ASSERT_FIELD(w.o[0].json, "trigger.timestamp", ts);
    ASSERT_FIELD(w.o[0].json, "trigger.event", "null");
    ASSERT_FIELD(w.o[0].json, "trigger.message_id", "null");
    ASSERT_FIELD(w.o[0].json, "message", "we miss you u1");
    ASSERT_FIELD(w.o[0].json, "issued_at", "2026-12-03T10:00:00.000Z");
    ASSERT_FIELD(w.o[0].json, "benefit.expires_at", "2026-12-04T10:00:00.000Z");
    /* the same silence never fires twice */
    advance(&w, T0 + 60 * DAY);
    assert_int_equal(w.n, 1);
    /* the next activity re-arms: a new silence, a new grant id */
    event_at(&w, "Page Viewed", "u1", "v3", T0 + 61 * DAY, NULL);
    advance(&w, T0 + 68 * DAY);
    assert_int_equal(w.n, 2);
    assert_int_equal(w.o[1].at, T0 + 68 * DAY);
    assert_string_not_equal(w.o[1].grant_id, w.o[0].grant_id);
    /* activity at the deadline's millisecond comes first: no fire */
    event_at(&w, "Page Viewed", "u1", "v4", T0 + 70 * DAY, NULL);
    event_at(&w, "Page Viewed", "u1", "v5", T0 + 77 * DAY, NULL);
    assert_int_equal(w.n, 2);
    advance(&w, T0 + 84 * DAY);
    assert_int_equal(w.n, 3);
    assert_int_equal(w.o[2].at, T0 + 84 * DAY);
    /* a member never seen is never inactive */
    assert_int_equal(count_kind(&w, OUT_GRANT), 3);
    world_free(&w);
}

/* With a resolution, `last` is the end of the member's step holding the
 * activity: never before it, less than a step after, the same for every
 * event of the step, and steps shifted per member. */
static void test_activity_mark(void **state) {
    const long long R = HOUR;
    int64_t t = T0 + 5 * HOUR + 7;
    int64_t m = engine_activity_mark(R, "u1", t);
    assert_true(m >= t && m < t + R);
    /* every time in (m - R, m] has the mark m; m + 1 starts the next step */
    assert_int_equal(engine_activity_mark(R, "u1", m), m);
    assert_int_equal(engine_activity_mark(R, "u1", m - R + 1), m);
    assert_int_equal(engine_activity_mark(R, "u1", m + 1), m + R);
    /* no resolution: the time itself */
    assert_int_equal(engine_activity_mark(0, "u1", t), t);
    /* members' steps are shifted: of 20 members, not all end where u1's does */
    int other = 0;
    char u[16];
    for (int i = 2; i < 22; i++) {
        snprintf(u, sizeof u, "u%d", i);
        int64_t k = engine_activity_mark(R, u, t);
        assert_true(k >= t && k < t + R);
        other += k != m;
    }
    assert_true(other > 0);
}

static void test_inactivity_resolution(void **state) {
    world w;
    world_init(&w, "id: winback\n"
                   "trigger: {inactive_for: 7d, resolution: 1d}\n"
                   "grant: {benefit: coupon, sku: BACK}\n");
    int64_t m = engine_activity_mark(DAY, "u1", T0);
    /* events of the same step do not move the silence's start */
    event_at(&w, "Page Viewed", "u1", "v1", T0, NULL);
    if (m - T0 > 1) event_at(&w, "Page Viewed", "u1", "v2", m - 1, NULL);
    expect_grant_at(&w, m + 7 * DAY);
    char id[40], occ[40], ts[32];
    engine_inactivity_occurrence(m, occ);
    engine_grant_id("winback", "u1", occ, id);
    assert_string_equal(w.o[0].grant_id, id);
    iso(m, ts);
    ASSERT_FIELD(w.o[0].json, "trigger.timestamp", ts);
    /* an event of the next step moves it by one step */
    event_at(&w, "Page Viewed", "u1", "v3", m + 8 * DAY, NULL);
    int64_t m2 = engine_activity_mark(DAY, "u1", m + 8 * DAY);
    assert_int_equal(m2, m + 8 * DAY);
    event_at(&w, "Page Viewed", "u1", "v4", m2 + 1, NULL);
    expect_grant_at(&w, m2 + DAY + 7 * DAY);
    world_free(&w);
}

static void test_inactivity_events_filter(void **state) {
    world w;
    world_init(&w, "id: no-orders\n"
                   "trigger: {inactive_for: 30d, events: [Order Completed]}\n"
                   "grant: {benefit: coupon}\n");
    event_at(&w, "Order Completed", "u1", "o1", T0, NULL);
    event_at(&w, "Page Viewed", "u1", "v1", T0 + 20 * DAY, NULL); /* not activity for this rule */
    event_at(&w, "Page Viewed", "u2", "v2", T0, NULL);            /* u2 never ordered: never armed */
    advance(&w, T0 + 30 * DAY);
    assert_int_equal(w.n, 1);
    assert_int_equal(w.o[0].kind, OUT_GRANT);
    assert_int_equal(w.o[0].at, T0 + 30 * DAY);
    advance(&w, T0 + 100 * DAY);
    assert_int_equal(w.n, 1);
    world_free(&w);
}

/* Holdout and shadow waits report when the wait runs out, not at the trigger,
 * so the control group counts only members who really abandoned. */
static void test_shadow_wait_reports_at_due(void **state) {
    world w;
    world_init(&w, "id: cart\n"
                   "mode: shadow\n"
                   "trigger: {event: Product Added}\n"
                   "wait: 30m\n"
                   "cancel_on: [Order Completed]\n"
                   "grant: {benefit: coupon}\n");
    event_at(&w, "Product Added", "u1", "m1", T0, NULL);
    event_at(&w, "Product Added", "u2", "m2", T0, NULL);
    event_at(&w, "Order Completed", "u2", "o2", T0 + MIN, NULL);
    advance(&w, T0 + HOUR);
    assert_int_equal(w.n, 2);
    assert_string_equal(w.o[0].reason, "cancelled");
    assert_string_equal(w.o[1].reason, "shadow");
    assert_int_equal(w.o[1].at, T0 + 30 * MIN);
    assert_int_equal(count_kind(&w, OUT_GRANT), 0);
    world_free(&w);
}

/* A wait outlives the rules it was decided with: removed or disabled rules
 * never grant; a changed rule keeps the grant built at decision time. */
static void test_wait_of_removed_disabled_changed_rule(void **state) {
    world w;
    const char *sets[3] = {"id: other\ntrigger: {event: X}\ngrant: {benefit: coupon}\n",
                           "id: cart\nenabled: false\ntrigger: {event: Product Added}\ngrant: {benefit: coupon}\n",
                           "id: cart\ntrigger: {event: Product Added}\nwait: 1h\ngrant: {benefit: coupon, sku: NEW}\n"};
    const char *want[3] = {"rule removed", "rule disabled", ""};
    for (int i = 0; i < 3; i++) {
        world_init(&w, CART);
        event_at(&w, "Product Added", "u1", "m1", T0, "{\"name\":\"Lamp\"}");
        ruleset_t *next = load(sets[i]);
        store_advance(w.st, next, &w.eng, T0 + 30 * MIN, on_out, &w);
        assert_int_equal(w.n, 1);
        assert_int_equal(w.o[0].at, T0 + 30 * MIN);
        if (want[i][0]) {
            assert_int_equal(w.o[0].kind, OUT_EXPLAIN);
            assert_string_equal(w.o[0].reason, want[i]);
        } else {
            assert_int_equal(w.o[0].kind, OUT_GRANT);
            ASSERT_FIELD(w.o[0].json, "benefit.sku", "CART");      /* built at decision time */
            ASSERT_FIELD(w.o[0].json, "message", "Lamp waits");
            ASSERT_FIELD(w.o[0].json, "rule_version", ruleset_find(w.rs, "cart")->version);
        }
        ruleset_free(next);
        world_free(&w);
    }
}

/* The same input gives the same output, byte for byte, on a fresh store. */
static void run_script(world *w) {
    event_at(w, "Product Added", "u1", "m1", T0, NULL);
    event_at(w, "Product Added", "u2", "m2", T0 + MIN, NULL);
    event_at(w, "Order Completed", "u2", "o1", T0 + 2 * MIN, NULL);
    event_at(w, "Order Completed", "u3", "o2", T0 + 3 * MIN, NULL);
    event_at(w, "Order Completed", "u3", "o3", T0 + 4 * MIN, NULL);
    event_at(w, "Order Completed", "u3", "o4", T0 + 5 * MIN, NULL);
    advance(w, T0 + 60 * DAY);
}

static void test_deterministic(void **state) {
    const char *yaml = "rules:\n"
                       "  - id: cart\n"
                       "    trigger: {event: Product Added}\n"
                       "    wait: 30m\n"
                       "    cancel_on: [Order Completed]\n"
                       "    grant: {benefit: coupon}\n"
                       "  - id: third\n"
                       "    trigger: {event: Order Completed, count: 3, within: 30d}\n"
                       "    grant: {benefit: points}\n"
                       "  - id: winback\n"
                       "    trigger: {inactive_for: 7d}\n"
                       "    grant: {benefit: coupon}\n";
    world a, b;
    world_init(&a, yaml);
    world_init(&b, yaml);
    run_script(&a);
    run_script(&b);
    assert_int_equal(a.n, b.n);
    /* cart u1 (30m), third u3, winback for u1, u2, u3 */
    assert_int_equal(count_kind(&a, OUT_GRANT), 5);
    for (int i = 0; i < a.n; i++) {
        assert_string_equal(a.o[i].json, b.o[i].json);
        assert_int_equal(a.o[i].at, b.o[i].at);
        if (i) assert_true(a.o[i].at >= a.o[i - 1].at);
    }
    world_free(&a);
    world_free(&b);
}

/* The gate: replay's flag admits the time shapes; audience loads everywhere
 * (member profiles, issue 5), and says the set reads profiles. */
static void test_gate(void **state) {
    const char *timed = "id: a\ntrigger: {event: E}\nwait: 30m\ncancel_on: [F]\ngrant: {benefit: coupon}\n";
    diag_t d;
    diag_init(&d);
    assert_null(ruleset_load_string("t.yaml", timed, strlen(timed), "UTC", &d));
    assert_int_equal(d.n, 2);
    assert_string_equal(d.msgs[0], "t.yaml:3:1: 'wait' is not supported yet by this build of benefitd");
    diag_free(&d);
    diag_init(&d);
    ruleset_t *rs = ruleset_load_string_ex("t.yaml", timed, strlen(timed), "UTC", RULES_ALLOW_TIME, &d);
    assert_non_null(rs);
    ruleset_free(rs);
    const char *rest = "id: a\naudience: user.x == 1\ntrigger: {event: E, count: 2, within: 1d}\n"
                       "grant: {benefit: code, pool: p}\nlimits: {budget: 5}\n";
    rs = ruleset_load_string_ex("t.yaml", rest, strlen(rest), "UTC", RULES_ALLOW_TIME, &d);
    assert_non_null(rs);
    assert_int_equal(d.n, 0);
    assert_true(ruleset_uses_profile(rs));
    ruleset_free(rs);
    rs = ruleset_load_string_ex("t.yaml", timed, strlen(timed), "UTC", RULES_ALLOW_TIME, &d);
    assert_false(ruleset_uses_profile(rs));
    ruleset_free(rs);
    diag_free(&d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wait_fires_at_due),
        cmocka_unit_test(test_cancel_before_due),
        cmocka_unit_test(test_cancel_at_the_due_millisecond),
        cmocka_unit_test(test_second_trigger_while_pending),
        cmocka_unit_test(test_restart_by_listing_trigger_in_cancel_on),
        cmocka_unit_test(test_count_crosses_once_then_again_after_slide),
        cmocka_unit_test(test_count_window_edge),
        cmocka_unit_test(test_count_then_wait),
        cmocka_unit_test(test_inactivity_once_per_silence_and_rearm),
        cmocka_unit_test(test_inactivity_events_filter),
        cmocka_unit_test(test_activity_mark),
        cmocka_unit_test(test_inactivity_resolution),
        cmocka_unit_test(test_shadow_wait_reports_at_due),
        cmocka_unit_test(test_wait_of_removed_disabled_changed_rule),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_gate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
