/* The rfm plugin (plugins/rfm/rfm.c) loaded with dlopen through the fake
 * host: scores and segments for constructed histories, and how they decay as
 * time passes through the revisits the plugin asks for. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_host.h"

static fh_plugin P;

static const long long T0 = 1795514400000LL;   /* 2026-11-24T10:00:00Z */
#define D0 (T0 / FH_DAY)
#define YEAR (365 * FH_DAY)
#define LEAVES(day) (((day) + 1) * FH_DAY + YEAR)

static void init_ok(const char *cfg) {
    char err[512];
    fh_fini(&P);
    fh_reset();
    if (fh_init(&P, cfg, err, sizeof err) != 0) fail_msg("init failed: %s", err);
}

static void done(void) {
    if (fh_violations()) fail_msg("contract breach: %s", fh_last_violation());
    fh_fini(&P);
}

static void order(const char *user, long long t, double amount) {
    char json[128];
    snprintf(json, sizeof json, "{\"properties\":{\"total\":%.15g}}", amount);
    assert_int_equal(fh_event(&P, user, t, "Order Completed", json), 0);
}

/* Asserts R, F, M and the segment of user. */
static void expect(const char *user, int r, int f, int m, const char *seg) {
    double gr = fh_trait_num(user, "rfm_r"), gf = fh_trait_num(user, "rfm_f"), gm = fh_trait_num(user, "rfm_m");
    const char *gs = fh_trait_str(user, "rfm_segment");
    if (gr != r || gf != f || gm != m || !gs || strcmp(gs, seg) != 0)
        fail_msg("%s: want R%d F%d M%d %s, got R%g F%g M%g %s", user, r, f, m, seg, gr, gf, gm, gs ? gs : "(none)");
}

static int group_setup(void **state) {
    char err[512];
    if (fh_load(&P, "rfm", err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state) {
    fh_unload(&P);
    fh_reset();
    return 0;
}

static void test_descriptor(void **state) {
    assert_int_equal(P.desc->api_version, BD_PLUGIN_API_VERSION);
    assert_string_equal(P.desc->name, "rfm");
    assert_non_null(P.desc->on_event);
    assert_non_null(P.desc->on_revisit);
    assert_string_equal(P.desc->functions[0].name, "rfm_score");
    assert_int_equal(P.desc->functions[0].min_args, 3);
    assert_null(P.desc->functions[1].name);
}

static void test_new_and_promising(void **state) {
    init_ok("{}");
    order("u1", T0, 50);
    expect("u1", 5, 1, 1, "new");
    /* R drops first: 7d and 1ms after the order, long before the bucket leaves */
    assert_int_equal(fh_revisit_last("u1"), T0 + 7 * FH_DAY + 1);
    order("u2", T0, 120);
    order("u2", T0 + FH_DAY, 180);
    expect("u2", 5, 2, 2, "promising");
    order("u2", T0 + 2 * FH_DAY, 200);
    order("u2", T0 + 3 * FH_DAY, 1);
    expect("u2", 5, 3, 3, "promising");                  /* 4 orders: F3; 501: M3 */
    assert_int_equal(fh_nemits(), 0);
    done();
}

static void test_champion(void **state) {
    init_ok("{}");
    for (int i = 0; i < 8; i++) order("u1", T0 + i * FH_DAY, 150);
    expect("u1", 5, 4, 4, "champion");                   /* 8 orders, 1200 */
    for (int i = 0; i < 16; i++) order("u2", T0 + i * 30 * FH_MIN, 400);
    expect("u2", 5, 5, 5, "champion");                   /* 16 orders, 6400 */
    char want[64];
    snprintf(want, sizeof want, "{\"last\":%lld,\"b\":[[%lld,16,6400]]}", T0 + 15 * 30 * FH_MIN, D0);
    assert_string_equal(fh_trait_str("u2", "_rfm"), want);   /* one bucket per day */
    done();
}

/* A champion left alone: loyal, at_risk, then hibernating as orders leave the year. */
static void test_decay_through_revisits(void **state) {
    init_ok("{}");
    for (int i = 0; i < 8; i++) order("u1", T0 + i * FH_DAY, 150);
    long long last = T0 + 7 * FH_DAY;
    assert_int_equal(fh_revisit_last("u1"), last + 7 * FH_DAY + 1);
    /* the first order's earlier request is still pending (the earliest wins):
     * that revisit finds nothing changed */
    assert_int_equal(fh_revisit_due("u1"), T0 + 7 * FH_DAY + 1);
    assert_int_equal(fh_run_revisits(&P, "u1", last + 7 * FH_DAY), 1);
    expect("u1", 5, 4, 4, "champion");
    assert_int_equal(fh_revisit_due("u1"), last + 7 * FH_DAY + 1);
    assert_int_equal(fh_run_revisits(&P, "u1", last + 7 * FH_DAY + 1), 1);
    expect("u1", 4, 4, 4, "champion");
    assert_int_equal(fh_run_revisits(&P, "u1", last + 30 * FH_DAY + 1), 1);
    expect("u1", 3, 4, 4, "loyal");
    assert_int_equal(fh_run_revisits(&P, "u1", last + 90 * FH_DAY + 1), 1);
    expect("u1", 2, 4, 4, "at_risk");
    assert_int_equal(fh_run_revisits(&P, "u1", last + 180 * FH_DAY), 0);   /* not yet */
    expect("u1", 2, 4, 4, "at_risk");
    assert_int_equal(fh_run_revisits(&P, "u1", last + 180 * FH_DAY + 1), 1);
    expect("u1", 1, 4, 4, "at_risk");
    /* R can drop no more: the next change is day 0's bucket leaving the window */
    assert_int_equal(fh_revisit_due("u1"), LEAVES(D0));
    assert_int_equal(fh_run_revisits(&P, "u1", LEAVES(D0)), 1);
    expect("u1", 1, 3, 4, "at_risk");                    /* 7 orders, 1050 */
    assert_int_equal(fh_run_revisits(&P, "u1", LEAVES(D0 + 5)), 5);
    expect("u1", 1, 2, 2, "hibernating");                /* 2 orders, 300 */
    assert_int_equal(fh_run_revisits(&P, "u1", LEAVES(D0 + 7)), 2);
    expect("u1", 1, 1, 1, "hibernating");
    assert_int_equal(fh_revisit_due("u1"), -1);
    char want[64];
    snprintf(want, sizeof want, "{\"last\":%lld,\"b\":[]}", last);
    assert_string_equal(fh_trait_str("u1", "_rfm"), want);
    done();
}

/* The same history when a request replaces the pending one (the daemon's
 * ZADD): no stale revisit, each one lands where a score drops. */
static void test_decay_with_replacing_revisits(void **state) {
    init_ok("{}");
    fh_set_revisit_replace(1);
    for (int i = 0; i < 8; i++) order("u1", T0 + i * FH_DAY, 150);
    long long last = T0 + 7 * FH_DAY;
    assert_int_equal(fh_revisit_due("u1"), last + 7 * FH_DAY + 1);
    static const struct {
        long long at;
        int r, f, m;
        const char *seg;
    } steps[] = {
        {7 * FH_DAY + 1, 4, 4, 4, "champion"},
        {30 * FH_DAY + 1, 3, 4, 4, "loyal"},
        {90 * FH_DAY + 1, 2, 4, 4, "at_risk"},
        {180 * FH_DAY + 1, 1, 4, 4, "at_risk"},
    };
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        assert_int_equal(fh_revisit_due("u1"), last + steps[i].at);
        assert_int_equal(fh_run_revisits(&P, "u1", last + steps[i].at), 1);
        expect("u1", steps[i].r, steps[i].f, steps[i].m, steps[i].seg);
    }
    assert_int_equal(fh_run_revisits(&P, "u1", LEAVES(D0 + 7)), 8);   /* one per day bucket */
    expect("u1", 1, 1, 1, "hibernating");
    assert_int_equal(fh_revisit_due("u1"), -1);
    done();
}

static void test_need_attention_and_return(void **state) {
    init_ok("{}");
    order("u1", T0, 600);
    fh_run_revisits(&P, "u1", T0 + 31 * FH_DAY);
    expect("u1", 3, 1, 3, "need_attention");
    /* a recent order lifts R at once */
    order("u1", T0 + 32 * FH_DAY, 10);
    expect("u1", 5, 2, 3, "promising");
    /* an order more than the window after the last: only it counts for F and M */
    order("u2", T0, 6000);
    order("u2", T0 + 400 * FH_DAY, 10);
    expect("u2", 5, 1, 1, "new");
    done();
}

static void test_no_orders_sets_nothing(void **state) {
    init_ok("{}");
    assert_int_equal(fh_event(&P, "u1", T0, "Page Viewed", "{\"properties\":{\"total\":900}}"), 0);
    assert_int_equal(fh_revisit(&P, "u1", T0 + FH_DAY), 0);
    assert_int_equal(fh_trait("u1", "rfm_r").kind, BD_MISSING);
    assert_int_equal(fh_trait("u1", "rfm_segment").kind, BD_MISSING);
    assert_int_equal(fh_trait("u1", "_rfm").kind, BD_MISSING);
    assert_int_equal(fh_revisit_due("u1"), -1);
    done();
}

static void test_bad_amounts_still_count_as_orders(void **state) {
    init_ok("{}");
    assert_int_equal(fh_event(&P, "u1", T0, "Order Completed", NULL), 0);
    assert_int_equal(fh_event(&P, "u1", T0 + 1, "Order Completed", "{\"properties\":{\"total\":\"99\"}}"), 0);
    assert_int_equal(fh_event(&P, "u1", T0 + 2, "Order Completed", "{\"properties\":{\"total\":-500}}"), 0);
    assert_int_equal(fh_event(&P, "u1", T0 + 3, "Order Completed", "{\"properties\":{\"total\":{\"x\":1}}}"), 0);
    expect("u1", 5, 3, 1, "promising");                  /* 4 orders, 0 spent */
    assert_int_equal(fh_count_logs(BD_LOG_DEBUG, "amount_ignored", NULL), 4);
    done();
}

static void test_custom_config(void **state) {
    init_ok("{\"events\":[\"Purchase\",\"Renewal\"],\"amount\":\"properties.value\",\"window\":\"10d\","
            "\"recency\":[\"1d\",\"2d\",\"3d\",\"4d\"],\"frequency\":[1,2,3,4],\"monetary\":[10,20,30,40]}");
    assert_int_equal(fh_event(&P, "u1", T0, "Order Completed", "{\"properties\":{\"value\":99}}"), 0);
    assert_int_equal(fh_trait("u1", "rfm_r").kind, BD_MISSING);
    assert_int_equal(fh_event(&P, "u1", T0, "Purchase", "{\"properties\":{\"value\":25}}"), 0);
    expect("u1", 5, 2, 3, "promising");
    assert_int_equal(fh_event(&P, "u1", T0 + FH_HOUR, "Renewal", "{\"properties\":{\"value\":25}}"), 0);
    expect("u1", 5, 3, 5, "promising");
    fh_run_revisits(&P, "u1", T0 + FH_HOUR + 2 * FH_DAY + 1);
    expect("u1", 3, 3, 5, "need_attention");
    fh_run_revisits(&P, "u1", (D0 + 1) * FH_DAY + 10 * FH_DAY);  /* the window has passed */
    expect("u1", 1, 1, 1, "hibernating");
    assert_int_equal(fh_revisit_due("u1"), -1);
    done();
}

static void test_rfm_score(void **state) {
    init_ok("{}");
    bd_value a[3] = {fh_num(5), fh_num(4), fh_num(3)}, out;
    assert_int_equal(fh_call(&P, "rfm_score", a, 3, &out), 0);
    assert_int_equal(out.kind, BD_NUM);
    assert_true(out.num == 543);
    a[0] = fh_num(1), a[1] = fh_num(1), a[2] = fh_num(1);
    fh_call(&P, "rfm_score", a, 3, &out);
    assert_true(out.kind == BD_NUM && out.num == 111);
    static const double bad[] = {0, 6, 1.5, -1, NAN};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        a[0] = fh_num(5), a[1] = fh_num(bad[i]), a[2] = fh_num(5);
        fh_call(&P, "rfm_score", a, 3, &out);
        assert_int_equal(out.kind, BD_MISSING);
    }
    a[1] = fh_str("5");
    fh_call(&P, "rfm_score", a, 3, &out);
    assert_int_equal(out.kind, BD_MISSING);
    a[1].kind = BD_MISSING;
    fh_call(&P, "rfm_score", a, 3, &out);
    assert_int_equal(out.kind, BD_MISSING);
    /* on a member's traits */
    for (int i = 0; i < 8; i++) order("u1", T0 + i * FH_DAY, 150);
    bd_value t[3] = {fh_trait("u1", "rfm_r"), fh_trait("u1", "rfm_f"), fh_trait("u1", "rfm_m")};
    fh_call(&P, "rfm_score", t, 3, &out);
    assert_true(out.kind == BD_NUM && out.num == 544);
    done();
}

static void test_config_errors(void **state) {
    static const struct {
        const char *cfg, *needle1, *needle2;
    } cases[] = {
        {"{\"recncy\":[\"7d\",\"30d\",\"90d\",\"180d\"]}", "unknown key 'recncy'", NULL},
        {"{\"recency\":[\"30d\",\"7d\",\"90d\",\"180d\"]}", "recency", "ascend"},
        {"{\"recency\":[\"7d\",\"30d\",\"90d\"]}", "recency", "4"},
        {"{\"recency\":[\"7x\",\"30d\",\"90d\",\"180d\"]}", "recency", "duration"},
        {"{\"recency\":[7,30,90,180]}", "recency", "duration"},
        {"{\"frequency\":[2,4,8,8]}", "frequency", "ascend"},
        {"{\"frequency\":[2,4.5,8,16]}", "frequency", "integer"},
        {"{\"frequency\":[0,4,8,16]}", "frequency", NULL},
        {"{\"monetary\":[-1,500,1000,5000]}", "monetary", NULL},
        {"{\"monetary\":\"lots\"}", "monetary", NULL},
        {"{\"window\":\"1 year\"}", "window", NULL},
        {"{\"window\":0}", "window", NULL},
        {"{\"events\":[]}", "events", NULL},
        {"{\"amount\":5}", "amount", NULL},
        {"not json", "JSON", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[512] = "";
        fh_reset();
        if (fh_init(&P, cases[i].cfg, err, sizeof err) == 0) fail_msg("config %s: init succeeded", cases[i].cfg);
        assert_false(P.inited);
        if (!strstr(err, cases[i].needle1) || (cases[i].needle2 && !strstr(err, cases[i].needle2)))
            fail_msg("config %s: message \"%s\" lacks \"%s\"", cases[i].cfg, err, cases[i].needle1);
    }
    init_ok("null");                                     /* an empty block: all defaults */
    order("u1", T0, 100);
    expect("u1", 5, 1, 2, "new");
    done();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_descriptor),
        cmocka_unit_test(test_new_and_promising),
        cmocka_unit_test(test_champion),
        cmocka_unit_test(test_decay_through_revisits),
        cmocka_unit_test(test_decay_with_replacing_revisits),
        cmocka_unit_test(test_need_attention_and_return),
        cmocka_unit_test(test_no_orders_sets_nothing),
        cmocka_unit_test(test_bad_amounts_still_count_as_orders),
        cmocka_unit_test(test_custom_config),
        cmocka_unit_test(test_rfm_score),
        cmocka_unit_test(test_config_errors),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
