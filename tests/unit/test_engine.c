/* The decision step: what a rule set decides for one event, granted or not. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "../../daemon/core/clock.h"
#include "../../daemon/core/util.h"
#include "../../daemon/decode/event.h"
#include "../../daemon/policy/engine.h"
#include "../../daemon/rules/rules.h"

typedef struct seen {
    int n;
    char reasons[8][32];
    char rules[8][64];
    cJSON *json[8];
    char ids[8][40];
    int granted[8];
} seen;

static void collect(void *ud, const event_t *ev, const decision_t *d) {
    seen *s = ud;
    assert_true(s->n < 8);
    snprintf(s->rules[s->n], 64, "%s", d->rule->id);
    snprintf(s->reasons[s->n], 32, "%s", d->reason ? d->reason : "");
    snprintf(s->ids[s->n], 40, "%s", d->grant_id);
    s->granted[s->n] = d->granted;
    s->json[s->n] = cJSON_ParseWithLength(d->json->s, d->json->len);
    assert_non_null(s->json[s->n]);
    s->n++;
}

static void seen_free(seen *s) {
    for (int i = 0; i < s->n; i++) cJSON_Delete(s->json[i]);
    memset(s, 0, sizeof *s);
}

static ruleset_t *load_with(const char *yaml, int flags) {
    diag_t d;
    diag_init(&d);
    ruleset_t *rs = ruleset_load_string_ex("t.yaml", yaml, strlen(yaml), "UTC", flags, &d);
    if (!rs) diag_print(&d, stderr);
    diag_free(&d);
    assert_non_null(rs);
    return rs;
}

static ruleset_t *load(const char *yaml) { return load_with(yaml, 0); }

static void decide(ruleset_t *rs, const char *json, int64_t now, seen *s) {
    decoder_t dec;
    decoder_init_default(&dec);
    event_t ev;
    char reason[128];
    assert_int_equal(decode_event(&dec, json, strlen(json), now, &ev, reason, sizeof reason), 0);
    engine_t e;
    engine_init(&e);
    engine_decide(&e, rs, &ev, now, collect, s);
    engine_free(&e);
    event_clear(&ev);
}

static const char *jstr(cJSON *o, const char *path) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    cJSON *cur = o;
    for (char *tok = strtok(buf, "."); tok && cur; tok = strtok(NULL, ".")) cur = cJSON_GetObjectItem(cur, tok);
    return cJSON_IsString(cur) ? cur->valuestring : NULL;
}

static double jnum(cJSON *o, const char *a, const char *b) {
    cJSON *x = cJSON_GetObjectItem(o, a);
    if (b) x = cJSON_GetObjectItem(x, b);
    assert_true(cJSON_IsNumber(x));
    return x->valuedouble;
}

#define ORDER(total) \
    "{\"type\":\"track\",\"event\":\"Order Completed\",\"userId\":\"u1\",\"messageId\":\"m1\"," \
    "\"timestamp\":\"2026-11-24T10:00:00Z\",\"properties\":{\"total\":" #total ",\"order_id\":\"o-9\",\"ref\":\"u7\"}}"

static const int64_t T0 = 1795514400000LL; /* 2026-11-24T10:00:00Z */

static void test_grant_fields(void **state) {
    ruleset_t *rs = load("id: thanks\n"
                         "trigger: {event: Order Completed, where: properties.total >= 200}\n"
                         "grant:\n"
                         "  benefit: points\n"
                         "  sku: PTS\n"
                         "  value: \"floor(properties.total * 0.1)\"\n"
                         "  expires_in: 1h\n"
                         "  channel: email\n"
                         "  message: \"Order {{properties.order_id}}: {{floor(properties.total*0.1)}} points\"\n");
    seen s = {0};
    decide(rs, ORDER(250), T0, &s);
    assert_int_equal(s.n, 1);
    assert_true(s.granted[0]);
    cJSON *g = s.json[0];
    assert_string_equal(jstr(g, "rule"), "thanks");
    assert_string_equal(jstr(g, "user_id"), "u1");
    assert_string_equal(jstr(g, "benefit.type"), "points");
    assert_string_equal(jstr(g, "benefit.sku"), "PTS");
    assert_true(jnum(g, "benefit", "value") == 25);
    assert_string_equal(jstr(g, "benefit.expires_at"), "2026-11-24T11:00:00.000Z");
    assert_string_equal(jstr(g, "channel"), "email");
    assert_string_equal(jstr(g, "message"), "Order o-9: 25 points");
    assert_string_equal(jstr(g, "trigger.event"), "Order Completed");
    assert_string_equal(jstr(g, "trigger.message_id"), "m1");
    assert_string_equal(jstr(g, "trigger.timestamp"), "2026-11-24T10:00:00.000Z");
    assert_string_equal(jstr(g, "issued_at"), "2026-11-24T10:00:00.000Z");
    assert_string_equal(jstr(g, "deliver_after"), "2026-11-24T10:00:00.000Z");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(g, "variant")));
    assert_string_equal(jstr(g, "grant_id"), s.ids[0]);
    assert_int_equal(strlen(s.ids[0]), 33);
    char want[40];
    engine_grant_id("thanks", "u1", "m1", want);
    assert_string_equal(s.ids[0], want);
    seen_free(&s);
    /* where false: no decision at all */
    decide(rs, ORDER(150), T0, &s);
    assert_int_equal(s.n, 0);
    ruleset_free(rs);
}

static void test_grant_id_is_per_trigger(void **state) {
    char a[40], b[40], c[40], d[40];
    engine_grant_id("r", "u1", "m1", a);
    engine_grant_id("r", "u1", "m1", b);
    engine_grant_id("r", "u1", "m2", c);
    engine_grant_id("r", "u1m", "1", d); /* field boundaries matter */
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    assert_string_not_equal(a, d);
}

static void test_group_priority_shadow(void **state) {
    ruleset_t *rs = load("rules:\n"
                         "  - id: small\n"
                         "    group: g\n"
                         "    priority: 10\n"
                         "    trigger: {event: Order Completed}\n"
                         "    grant: {benefit: coupon, sku: S}\n"
                         "  - id: big\n"
                         "    group: g\n"
                         "    priority: 20\n"
                         "    trigger: {event: Order Completed, where: properties.total >= 500}\n"
                         "    grant: {benefit: coupon, sku: B}\n"
                         "  - id: watcher\n"
                         "    mode: shadow\n"
                         "    trigger: {event: [Order Completed, Refund]}\n"
                         "    grant: {benefit: coupon, sku: W}\n");
    seen s = {0};
    decide(rs, ORDER(600), T0, &s);
    assert_int_equal(s.n, 3);
    /* priority order: big (20) first, then small, watcher is shadow. Both
     * plain grants of group g are candidates here: which one takes the group
     * is decided in the grant step, where policy may suppress big (the store
     * view of this: test_policy.c test_group_fallback) */
    assert_string_equal(s.rules[0], "big");
    assert_true(s.granted[0]);
    assert_string_equal(s.rules[1], "small");
    assert_true(s.granted[1]);
    assert_string_equal(s.rules[2], "watcher");
    assert_string_equal(s.reasons[2], "shadow");
    seen_free(&s);
    decide(rs, ORDER(100), T0, &s);
    assert_int_equal(s.n, 2);
    assert_string_equal(s.rules[0], "small");
    assert_true(s.granted[0]);
    seen_free(&s);
    ruleset_free(rs);
}

static void test_variants_sticky_and_holdout(void **state) {
    ruleset_t *rs = load("id: ab\n"
                         "trigger: {event: Product Added}\n"
                         "grant: {benefit: coupon, sku: TEN, value: 10}\n"
                         "variants:\n"
                         "  - {name: ten, weight: 45}\n"
                         "  - {name: twenty, weight: 45, grant: {sku: TWENTY, value: 20}}\n"
                         "  - {name: holdout, weight: 10, holdout: true}\n");
    int counts[3] = {0, 0, 0};
    for (int u = 0; u < 2000; u++) {
        char ev[256];
        snprintf(ev, sizeof ev,
                 "{\"type\":\"track\",\"event\":\"Product Added\",\"userId\":\"u%d\",\"messageId\":\"m%d\"}", u, u);
        seen s1 = {0}, s2 = {0};
        decide(rs, ev, T0, &s1);
        snprintf(ev, sizeof ev,
                 "{\"type\":\"track\",\"event\":\"Product Added\",\"userId\":\"u%d\",\"messageId\":\"x%d\"}", u, u);
        decide(rs, ev, T0, &s2);
        assert_int_equal(s1.n, 1);
        const char *v1 = jstr(s1.json[0], "variant"), *v2 = jstr(s2.json[0], "variant");
        assert_string_equal(v1, v2); /* sticky per member */
        if (!strcmp(v1, "ten")) {
            counts[0]++;
            assert_string_equal(jstr(s1.json[0], "benefit.sku"), "TEN");
        } else if (!strcmp(v1, "twenty")) {
            counts[1]++;
            assert_string_equal(jstr(s1.json[0], "benefit.sku"), "TWENTY");
            assert_true(jnum(s1.json[0], "benefit", "value") == 20);
        } else {
            counts[2]++;
            assert_string_equal(v1, "holdout");
            assert_false(s1.granted[0]);
            assert_string_equal(s1.reasons[0], "holdout");
        }
        seen_free(&s1);
        seen_free(&s2);
    }
    /* weights 45/45/10 over 2000 members: well inside +-5 points */
    assert_in_range(counts[0], 800, 1000);
    assert_in_range(counts[1], 800, 1000);
    assert_in_range(counts[2], 100, 300);
    ruleset_free(rs);
}

static void test_to_active_and_missing_value(void **state) {
    ruleset_t *rs = load("rules:\n"
                         "  - id: referral\n"
                         "    trigger: {event: Order Completed}\n"
                         "    grant: {benefit: points, value: 5, to: properties.ref}\n"
                         "  - id: nobody\n"
                         "    trigger: {event: Order Completed}\n"
                         "    grant: {benefit: points, value: 5, to: properties.nope}\n"
                         "  - id: novalue\n"
                         "    trigger: {event: Order Completed}\n"
                         "    grant: {benefit: points, value: properties.nope * 2}\n"
                         "  - id: december\n"
                         "    active: {from: 2026-12-01, until: 2026-12-31}\n"
                         "    trigger: {event: Order Completed}\n"
                         "    grant: {benefit: coupon}\n");
    seen s = {0};
    decide(rs, ORDER(10), T0, &s);
    assert_int_equal(s.n, 4);
    for (int i = 0; i < 4; i++) {
        if (!strcmp(s.rules[i], "referral")) {
            assert_true(s.granted[i]);
            assert_string_equal(jstr(s.json[i], "user_id"), "u7");
            assert_string_equal(jstr(s.json[i], "trigger.user_id"), "u1");
        } else if (!strcmp(s.rules[i], "nobody")) {
            assert_string_equal(s.reasons[i], "no recipient");
        } else if (!strcmp(s.rules[i], "novalue")) {
            assert_string_equal(s.reasons[i], "no value");
        } else {
            assert_string_equal(s.reasons[i], "not active");
        }
    }
    seen_free(&s);
    int64_t dec31;
    assert_int_equal(parse_iso8601_ms("2026-12-31T23:59:59Z", &dec31), 0);
    decide(rs, ORDER(10), dec31, &s);
    for (int i = 0; i < s.n; i++)
        if (!strcmp(s.rules[i], "december")) assert_true(s.granted[i]); /* until is inclusive of its day */
    seen_free(&s);
    ruleset_free(rs);
}


/* ---- engine_run: the intents ------------------------------------------------ */

typedef struct intents {
    int n;
    intent_kind kind[8];
    char rule[8][32];
    char reason[8][32];
    int soft[8];
    char text[8][1024];   /* GRANT: the record finished at ts; others: the explain line */
    long long count[8], within[8], wait[8];
    char occurrence[8][80];
} intents;

static void collect_intent(void *ud, const event_t *ev, const intent_t *in) {
    intents *s = ud;
    assert_true(s->n < 8);
    int i = s->n++;
    s->kind[i] = in->kind;
    snprintf(s->rule[i], 32, "%s", in->rule ? in->rule->id : "");
    snprintf(s->reason[i], 32, "%s", in->reason ? in->reason : "");
    s->soft[i] = in->reason_soft;
    s->count[i] = in->count;
    s->within[i] = in->within_ms;
    s->wait[i] = in->wait_ms;
    snprintf(s->occurrence[i], 80, "%s", in->occurrence ? in->occurrence : "");
    strbuf b;
    sb_init(&b);
    if (in->kind == INTENT_GRANT) engine_finish_grant(in->rec, in->rec_len, in->rec_cut, in->expires_in_ms, in->ts, &b);
    else if (in->kind == INTENT_EXPLAIN) {
        strbuf x;
        sb_init(&x);
        size_t xlen;
        const char *xbody = engine_intent_xbody(in, &x, &xlen);
        engine_finish_explain(in->reason, xbody, xlen, NULL, in->ts, &b);
        sb_free(&x);
    }
    snprintf(s->text[i], 1024, "%s", b.s ? b.s : "");
    sb_free(&b);
}

static ruleset_t *load_timed(const char *yaml) { return load_with(yaml, RULES_ALLOW_TIME); }

static void run(ruleset_t *rs, const char *json, int64_t now, intents *s) {
    decoder_t dec;
    decoder_init_default(&dec);
    event_t ev;
    char reason[128];
    assert_int_equal(decode_event(&dec, json, strlen(json), now, &ev, reason, sizeof reason), 0);
    engine_t e;
    engine_init(&e);
    bd_clock_t clk;
    clock_init_virtual(&clk, now);
    engine_run(&e, rs, &ev, &clk, collect_intent, s);
    engine_free(&e);
    event_clear(&ev);
}

/* Live and replay must agree: for event triggers, the intents finish into
 * exactly the lines engine_decide makes. */
static void test_run_matches_decide(void **state) {
    const char *yaml = "rules:\n"
                       "  - id: small\n"
                       "    group: g\n"
                       "    trigger: {event: Order Completed}\n"
                       "    grant: {benefit: coupon, sku: S, expires_in: 1d, message: \"o {{properties.order_id}}\"}\n"
                       "  - id: big\n"
                       "    group: g\n"
                       "    priority: 20\n"
                       "    trigger: {event: Order Completed}\n"
                       "    grant: {benefit: points, value: \"floor(properties.total * 0.1)\", to: properties.ref}\n"
                       "  - id: novalue\n"
                       "    trigger: {event: Order Completed}\n"
                       "    grant: {benefit: points, value: properties.nope}\n";
    ruleset_t *rs = load(yaml);
    seen d = {0};
    intents r = {0};
    decide(rs, ORDER(250), T0, &d);
    run(rs, ORDER(250), T0, &r);
    assert_int_equal(d.n, 3);
    assert_int_equal(r.n, 3);
    for (int i = 0; i < 3; i++) {
        assert_string_equal(d.rules[i], r.rule[i]);
        char *want = cJSON_PrintUnformatted(d.json[i]);
        cJSON *got_j = cJSON_Parse(r.text[i]);
        assert_non_null(got_j);
        char *got = cJSON_PrintUnformatted(got_j);
        assert_string_equal(got, want);
        assert_int_equal(r.kind[i], d.granted[i] ? INTENT_GRANT : INTENT_EXPLAIN);
        free(want);
        free(got);
        cJSON_Delete(got_j);
    }
    seen_free(&d);
    ruleset_free(rs);
}

/* TOUCH, then CANCEL, then the rules in priority order; names that neither
 * feed inactivity nor cancel cost no intent. */
static void test_run_intent_order(void **state) {
    ruleset_t *rs = load_timed("rules:\n"
                               "  - id: cart\n"
                               "    trigger: {event: Product Added}\n"
                               "    wait: 30m\n"
                               "    cancel_on: [Order Completed]\n"
                               "    grant: {benefit: coupon}\n"
                               "  - id: third\n"
                               "    priority: 5\n"
                               "    trigger: {event: Order Completed, count: 3, within: 30d}\n"
                               "    grant: {benefit: points}\n"
                               "  - id: thanks\n"
                               "    trigger: {event: Order Completed}\n"
                               "    grant: {benefit: coupon}\n"
                               "  - id: lapsed\n"
                               "    trigger: {inactive_for: 30d, events: [Order Completed]}\n"
                               "    grant: {benefit: coupon}\n");
    intents r = {0};
    run(rs, ORDER(10), T0, &r);
    assert_int_equal(r.n, 4);
    assert_int_equal(r.kind[0], INTENT_TOUCH);
    assert_int_equal(r.kind[1], INTENT_CANCEL);
    assert_int_equal(r.kind[2], INTENT_COUNT_GRANT);
    assert_string_equal(r.rule[2], "third");
    assert_int_equal(r.count[2], 3);
    assert_int_equal(r.within[2], 30LL * 86400000);
    assert_string_equal(r.occurrence[2], "m1");
    assert_int_equal(r.kind[3], INTENT_GRANT);
    assert_string_equal(r.rule[3], "thanks");
    memset(&r, 0, sizeof r);
    run(rs, "{\"type\":\"track\",\"event\":\"Product Added\",\"userId\":\"u1\",\"messageId\":\"p1\"}", T0, &r);
    assert_int_equal(r.n, 1); /* not activity for `lapsed`, cancels nothing */
    assert_int_equal(r.kind[0], INTENT_SCHEDULE);
    assert_int_equal(r.wait[0], 30LL * 60000);
    memset(&r, 0, sizeof r);
    run(rs, "{\"type\":\"track\",\"event\":\"Page Viewed\",\"userId\":\"u1\",\"messageId\":\"v1\"}", T0, &r);
    assert_int_equal(r.n, 0);
    ruleset_free(rs);
}

/* Holdout and shadow waits are scheduled (reported if the wait runs out);
 * a wait that cannot be granted at all is explained at once. engine_decide
 * (event triggers only) never decides a count. */
static void test_run_wait_reasons_and_legacy_count(void **state) {
    ruleset_t *rs = load_timed("rules:\n"
                               "  - id: shadowed\n"
                               "    mode: shadow\n"
                               "    trigger: {event: Order Completed}\n"
                               "    wait: 1h\n"
                               "    grant: {benefit: coupon}\n"
                               "  - id: later\n"
                               "    active: {from: 2027-01-01}\n"
                               "    trigger: {event: Order Completed}\n"
                               "    wait: 1h\n"
                               "    grant: {benefit: coupon}\n"
                               "  - id: third\n"
                               "    group: g\n"
                               "    priority: 9\n"
                               "    trigger: {event: Order Completed, count: 3, within: 30d}\n"
                               "    grant: {benefit: points}\n"
                               "  - id: thanks\n"
                               "    group: g\n"
                               "    trigger: {event: Order Completed}\n"
                               "    grant: {benefit: coupon}\n");
    intents r = {0};
    run(rs, ORDER(10), T0, &r);
    assert_int_equal(r.n, 4);
    assert_string_equal(r.rule[0], "third");       /* priority 9 first */
    assert_int_equal(r.kind[0], INTENT_COUNT_GRANT);
    assert_string_equal(r.rule[1], "later");
    assert_int_equal(r.kind[1], INTENT_EXPLAIN);
    assert_string_equal(r.reason[1], "not active");
    assert_string_equal(r.rule[2], "shadowed");
    assert_int_equal(r.kind[2], INTENT_SCHEDULE);
    assert_string_equal(r.reason[2], "shadow");
    assert_true(r.soft[2]);
    /* the count rule took no group slot: the event rule of its group grants */
    assert_string_equal(r.rule[3], "thanks");
    assert_int_equal(r.kind[3], INTENT_GRANT);
    seen d = {0};
    decide(rs, ORDER(10), T0, &d);
    for (int i = 0; i < d.n; i++) assert_string_not_equal(d.rules[i], "third");
    seen_free(&d);
    ruleset_free(rs);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grant_fields),
        cmocka_unit_test(test_grant_id_is_per_trigger),
        cmocka_unit_test(test_group_priority_shadow),
        cmocka_unit_test(test_variants_sticky_and_holdout),
        cmocka_unit_test(test_to_active_and_missing_value),
        cmocka_unit_test(test_run_matches_decide),
        cmocka_unit_test(test_run_intent_order),
        cmocka_unit_test(test_run_wait_reasons_and_legacy_count),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
