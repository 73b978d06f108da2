/* The risk plugin (plugins/risk/risk.c) loaded with dlopen through the fake
 * host: velocity counts over the host's sliding windows, levels, the hold,
 * blocks once per raise, and the evidence in the log. */
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

/* An event of user at t with an optional device, ip and grant id. */
static void ev(const char *user, long long t, const char *name, const char *device, const char *ip,
               const char *grant) {
    char json[512];
    int n = snprintf(json, sizeof json, "{\"properties\":{");
    if (grant) n += snprintf(json + n, sizeof json - (size_t)n, "\"grant_id\":\"%s\"", grant);
    n += snprintf(json + n, sizeof json - (size_t)n, "},\"context\":{");
    if (device) n += snprintf(json + n, sizeof json - (size_t)n, "\"device\":{\"id\":\"%s\"}%s", device, ip ? "," : "");
    if (ip) n += snprintf(json + n, sizeof json - (size_t)n, "\"ip\":\"%s\"", ip);
    snprintf(json + n, sizeof json - (size_t)n, "}}");
    assert_int_equal(fh_event(&P, user, t, name, json), 0);
}

static void expect_level(const char *user, const char *level) {
    const char *got = fh_trait_str(user, "risk");
    if (!got || strcmp(got, level) != 0) fail_msg("%s: risk %s, want %s", user, got ? got : "(none)", level);
}

static void expect_reason(const char *user, const char *reason) {
    const char *got = fh_trait_str(user, "risk_reason");
    if (!got || strcmp(got, reason) != 0)
        fail_msg("%s: risk_reason \"%s\", want \"%s\"", user, got ? got : "(none)", reason);
}

#define WARNS() fh_count_logs(BD_LOG_WARN, "risk_decision", NULL)

static int group_setup(void **state) {
    char err[512];
    if (fh_load(&P, "risk", err, sizeof err) != 0) {
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
    assert_string_equal(P.desc->name, "risk");
    assert_non_null(P.desc->on_event);
    assert_non_null(P.desc->on_revisit);
    assert_string_equal(P.desc->functions[0].name, "risk_rank");
    assert_null(P.desc->functions[1].name);
}

static void test_accounts_per_device(void **state) {
    init_ok("{}");
    const char *users[] = {"u1", "u2", "u3", "u4", "u5"}, *ips[] = {"ip1", "ip2", "ip3", "ip4", "ip5"};
    for (int i = 0; i < 2; i++) {
        ev(users[i], T0 + i * FH_MIN, "App Opened", "d1", ips[i], NULL);
        expect_level(users[i], "low");
        assert_int_equal(fh_trait("u1", "risk_at").kind, BD_MISSING);
    }
    assert_int_equal(WARNS(), 0);
    assert_int_equal(fh_revisit_last("u2"), -1);

    ev("u3", T0 + 2 * FH_MIN, "App Opened", "d1", "ip3", NULL);
    expect_level("u3", "medium");
    expect_reason("u3", "accounts_per_device=3 >= 3 on device d1 in 24h");
    assert_true(fh_trait_num("u3", "risk_at") == T0 + 2 * FH_MIN);
    assert_int_equal(fh_count_logs(BD_LOG_WARN, "risk_decision", "user=u3 level=medium check=accounts_per_device "
                                                                 "key=d1 count=3 threshold=3 window=24h",
                                   NULL),
                     1);
    assert_int_equal(WARNS(), 1);
    assert_int_equal(fh_nblocks(), 0);                   /* block: high */
    assert_int_equal(fh_revisit_last("u3"), T0 + 2 * FH_MIN + 24 * FH_HOUR);

    ev("u4", T0 + 3 * FH_MIN, "App Opened", "d1", "ip4", NULL);
    expect_level("u4", "medium");
    expect_reason("u4", "accounts_per_device=4 >= 3 on device d1 in 24h");
    assert_int_equal(WARNS(), 2);

    ev("u5", T0 + 4 * FH_MIN, "App Opened", "d1", "ip5", NULL);
    expect_level("u5", "high");
    expect_reason("u5", "accounts_per_device=5 >= 5 on device d1 in 24h");
    assert_int_equal(fh_nblocks(), 2);
    assert_int_equal(fh_count_blocks("user", "u5"), 1);
    assert_int_equal(fh_count_blocks("device", "d1"), 1);
    assert_string_equal(fh_block_at_index(0)->reason, "accounts_per_device=5 >= 5 on device d1 in 24h");
    assert_int_equal(fh_count_logs(BD_LOG_WARN, "risk_decision",
                                   "user=u5 level=high check=accounts_per_device key=d1 count=5 threshold=5 "
                                   "window=24h",
                                   "blocked=device:d1", "blocked_user=u5", NULL),
                     1);
    assert_int_equal(WARNS(), 3);
    assert_string_equal(fh_trait_str("u5", "_risk"), "{\"blocked\":[\"device:d1\",\"user\"]}");

    /* the same member again on the same device: no second block, no log */
    ev("u5", T0 + 10 * FH_MIN, "App Opened", "d1", "ip5", NULL);
    expect_level("u5", "high");
    assert_int_equal(fh_nblocks(), 2);
    assert_int_equal(WARNS(), 3);
    assert_true(fh_trait_num("u5", "risk_at") == T0 + 10 * FH_MIN);   /* fresh evidence: the hold starts over */

    /* u3 comes back: 5 accounts now, raised from medium; its own raise blocks */
    ev("u3", T0 + 11 * FH_MIN, "App Opened", "d1", "ip3", NULL);
    expect_level("u3", "high");
    assert_int_equal(fh_count_blocks("user", "u3"), 1);
    assert_int_equal(fh_count_blocks("device", "d1"), 2);
    assert_int_equal(fh_count_logs(BD_LOG_WARN, "risk_decision", "user=u3 level=high", "count=5", "previous=medium",
                                   NULL),
                     1);
    assert_int_equal(WARNS(), 4);
    done();
}

static void test_ip_window_expiry_and_hold(void **state) {
    init_ok("{\"accounts_per_device\":null}");
    const char *users[] = {"u1", "u2", "u3", "u4", "u5"};
    for (int i = 0; i < 5; i++) ev(users[i], T0 + i * FH_MIN, "App Opened", "same-device", "10.0.0.1", NULL);
    expect_level("u4", "low");
    expect_level("u5", "medium");
    expect_reason("u5", "accounts_per_ip=5 >= 5 on ip 10.0.0.1 in 1h");
    assert_int_equal(fh_count_logs(BD_LOG_WARN, "risk_decision", "check=accounts_per_ip key=10.0.0.1 count=5", NULL),
                     1);
    assert_int_equal(WARNS(), 1);                        /* the device check is off */

    /* two hours on, the ip's window holds only the newcomer */
    ev("u6", T0 + 2 * FH_HOUR, "App Opened", NULL, "10.0.0.1", NULL);
    expect_level("u6", "low");
    /* u5's evidence now is low (2 accounts), but medium is held for 24h */
    ev("u5", T0 + 2 * FH_HOUR + FH_MIN, "App Opened", NULL, "10.0.0.1", NULL);
    expect_level("u5", "medium");
    assert_true(fh_trait_num("u5", "risk_at") == T0 + 4 * FH_MIN);
    assert_int_equal(fh_revisit_last("u5"), T0 + 4 * FH_MIN + 24 * FH_HOUR);

    /* the hold ends with no event: the revisit lowers it */
    assert_int_equal(fh_run_revisits(&P, "u5", T0 + 4 * FH_MIN + 24 * FH_HOUR), 1);
    expect_level("u5", "low");
    assert_int_equal(fh_trait("u5", "risk_reason").kind, BD_NULL);
    assert_int_equal(fh_count_logs(BD_LOG_INFO, "risk_decision", "user=u5 level=low previous=medium", NULL), 1);
    assert_int_equal(fh_revisit_due("u5"), -1);
    assert_int_equal(fh_nblocks(), 0);
    done();
}

static void test_hold_semantics(void **state) {
    init_ok("{}");
    const char *users[] = {"u1", "u2", "u3", "u4", "u5"};
    for (int i = 0; i < 5; i++) ev(users[i], T0 + i * FH_MIN, "App Opened", "d2", NULL, NULL);
    long long raised = T0 + 4 * FH_MIN;
    expect_level("u5", "high");
    /* 23h later on a clean device: held */
    ev("u5", raised + 23 * FH_HOUR, "App Opened", "d3", NULL, NULL);
    expect_level("u5", "high");
    assert_true(fh_trait_num("u5", "risk_at") == raised);
    /* exactly at the end of the hold, a clean event lowers it */
    ev("u5", raised + 24 * FH_HOUR, "App Opened", "d3", NULL, NULL);
    expect_level("u5", "low");
    assert_int_equal(fh_trait("u5", "risk_reason").kind, BD_NULL);
    assert_int_equal(fh_count_logs(BD_LOG_INFO, "risk_decision", "user=u5 level=low previous=high", NULL), 1);

    /* u4 is medium; high evidence 12h later raises, more of it extends the hold */
    fh_clear_captures();
    ev("u4", T0 + 12 * FH_HOUR, "App Opened", "d2", NULL, NULL);   /* d2 has had 5 accounts in 24h */
    expect_level("u4", "high");
    assert_int_equal(fh_count_blocks("user", "u4"), 1);
    ev("u4", T0 + 20 * FH_HOUR, "App Opened", "d2", NULL, NULL);
    assert_true(fh_trait_num("u4", "risk_at") == T0 + 20 * FH_HOUR);
    /* medium evidence during a high hold neither lowers nor extends it */
    ev("u1", T0 + 30 * FH_HOUR, "App Opened", "d4", NULL, NULL);
    ev("u2", T0 + 30 * FH_HOUR, "App Opened", "d4", NULL, NULL);
    ev("u4", T0 + 30 * FH_HOUR, "App Opened", "d4", NULL, NULL);   /* d4: 3 accounts, medium */
    expect_level("u4", "high");
    assert_true(fh_trait_num("u4", "risk_at") == T0 + 20 * FH_HOUR);
    /* after the hold, medium evidence sets medium (a lowering, with its own evidence) */
    ev("u4", T0 + 44 * FH_HOUR, "App Opened", "d4", NULL, NULL);
    expect_level("u4", "medium");
    expect_reason("u4", "accounts_per_device=3 >= 3 on device d4 in 24h");
    assert_true(fh_trait_num("u4", "risk_at") == T0 + 44 * FH_HOUR);
    assert_string_equal(fh_trait_str("u4", "_risk"), "{\"blocked\":[]}");   /* below block: forgotten */
    assert_int_equal(fh_count_blocks(NULL, NULL), 2);   /* u4 and d2, once */
    done();
}

static void test_redemptions_per_device(void **state) {
    init_ok("{}");
    char g[16];
    for (int i = 1; i <= 4; i++) {
        snprintf(g, sizeof g, "g%d", i);
        ev("u1", T0 + i * FH_MIN, "Coupon Redeemed", "d9", NULL, g);
    }
    expect_level("u1", "low");
    ev("u1", T0 + 5 * FH_MIN, "Coupon Redeemed", "d9", NULL, "g5");
    expect_level("u1", "medium");
    expect_reason("u1", "redemptions_per_device=5 >= 5 on device d9 in 24h");
    ev("u1", T0 + 6 * FH_MIN, "Coupon Redeemed", "d9", NULL, "g5");   /* the same grant: still 5 */
    for (int i = 6; i <= 9; i++) {
        snprintf(g, sizeof g, "g%d", i);
        ev("u1", T0 + (i + 1) * FH_MIN, "Benefit Redeemed", "d9", NULL, g);
    }
    expect_level("u1", "medium");
    expect_reason("u1", "redemptions_per_device=9 >= 5 on device d9 in 24h");
    /* not a redemption event, no grant id, no device: not counted */
    ev("u1", T0 + 20 * FH_MIN, "Order Completed", "d9", NULL, "g98");
    ev("u1", T0 + 21 * FH_MIN, "Coupon Redeemed", "d9", NULL, NULL);
    ev("u1", T0 + 22 * FH_MIN, "Coupon Redeemed", NULL, "1.2.3.4", "g97");
    expect_level("u1", "medium");
    assert_int_equal(fh_nblocks(), 0);
    ev("u1", T0 + 23 * FH_MIN, "Benefit Redeemed", "d9", NULL, "g10");
    expect_level("u1", "high");
    expect_reason("u1", "redemptions_per_device=10 >= 10 on device d9 in 24h");
    assert_int_equal(fh_count_blocks("device", "d9"), 1);
    assert_int_equal(fh_count_blocks("user", "u1"), 1);
    assert_int_equal(fh_nblocks(), 2);
    assert_int_equal(fh_count_logs(BD_LOG_WARN, "risk_decision",
                                   "user=u1 level=high check=redemptions_per_device key=d9 count=10 threshold=10",
                                   "previous=medium", "blocked=device:d9", NULL),
                     1);
    assert_int_equal(WARNS(), 2);                        /* medium, then high */
    done();
}

static void test_block_levels(void **state) {
    const char *users[] = {"u1", "u2", "u3", "u4", "u5"};
    init_ok("{\"block\":\"medium\"}");
    for (int i = 0; i < 3; i++) ev(users[i], T0 + i * FH_MIN, "App Opened", "d1", "ip", NULL);
    assert_int_equal(fh_count_blocks("user", "u3"), 1);
    assert_int_equal(fh_count_blocks("device", "d1"), 1);
    assert_int_equal(fh_nblocks(), 2);
    for (int i = 3; i < 5; i++) ev(users[i], T0 + i * FH_MIN, "App Opened", "d1", "ip", NULL);
    /* u4 medium: blocked; u5 high: blocked */
    assert_int_equal(fh_count_blocks("user", NULL), 3);
    /* u3 again, now high: already blocked in this raise's set, so not again */
    ev("u3", T0 + 6 * FH_MIN, "App Opened", "d1", "ip", NULL);
    expect_level("u3", "high");
    assert_int_equal(fh_count_blocks("user", "u3"), 1);
    assert_int_equal(fh_count_logs(BD_LOG_WARN, "risk_decision", "user=u3 level=high", "previous=medium", NULL), 1);
    done();

    init_ok("{\"block\":\"never\"}");
    for (int i = 0; i < 5; i++) ev(users[i], T0 + i * FH_MIN, "App Opened", "d1", NULL, NULL);
    expect_level("u5", "high");
    assert_int_equal(fh_nblocks(), 0);
    assert_int_equal(fh_count_logs(BD_LOG_WARN, "risk_decision", "user=u5 level=high", NULL), 1);
    assert_int_equal(fh_trait("u5", "_risk").kind, BD_MISSING);
    done();
}

static void test_custom_and_disabled_checks(void **state) {
    init_ok("{\"accounts_per_device\":{\"medium\":2},\"accounts_per_ip\":null,\"redemptions_per_device\":null,"
            "\"device\":\"properties.fingerprint\",\"hold\":\"0s\"}");
    assert_int_equal(fh_event(&P, "u1", T0, "Login", "{\"properties\":{\"fingerprint\":12345}}"), 0);
    assert_int_equal(fh_event(&P, "u2", T0 + 1, "Login", "{\"properties\":{\"fingerprint\":12345}}"), 0);
    expect_level("u2", "medium");
    expect_reason("u2", "accounts_per_device=2 >= 2 on device 12345 in 24h");
    assert_int_equal(fh_revisit_last("u2"), -1);         /* hold 0: nothing to wait for */
    /* hold 0: the next clean event lowers at once */
    assert_int_equal(fh_event(&P, "u2", T0 + 2, "Login", "{\"properties\":{\"fingerprint\":\"other\"}}"), 0);
    expect_level("u2", "low");
    /* nothing to read: low, no crash */
    assert_int_equal(fh_event(&P, "u3", T0 + 3, "Login", NULL), 0);
    assert_int_equal(fh_event(&P, "u3", T0 + 4, "Login", "{\"properties\":{\"fingerprint\":{\"a\":1}}}"), 0);
    assert_int_equal(fh_event(&P, "u3", T0 + 5, "Login", "{\"properties\":{\"fingerprint\":\"\"}}"), 0);
    expect_level("u3", "low");
    assert_int_equal(fh_revisit(&P, "u3", T0 + 6), 0);
    expect_level("u3", "low");
    done();
}

static void test_risk_rank(void **state) {
    init_ok("{}");
    static const struct {
        const char *in;
        int want;
    } cases[] = {{"low", 0}, {"medium", 1}, {"high", 2}, {"HIGH", -1}, {"never", -1}, {"", -1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bd_value a = fh_str(cases[i].in), out;
        assert_int_equal(fh_call(&P, "risk_rank", &a, 1, &out), 0);
        if (cases[i].want < 0) assert_int_equal(out.kind, BD_MISSING);
        else {
            assert_int_equal(out.kind, BD_NUM);
            assert_true(out.num == cases[i].want);
        }
    }
    bd_value a = fh_num(2), out;
    fh_call(&P, "risk_rank", &a, 1, &out);
    assert_int_equal(out.kind, BD_MISSING);
    done();
}

static void test_config_errors(void **state) {
    static const struct {
        const char *cfg, *needle1, *needle2;
    } cases[] = {
        {"{\"velocity\":1}", "unknown key 'velocity'", NULL},
        {"{\"accounts_per_device\":{\"max\":3}}", "accounts_per_device", "unknown key 'max'"},
        {"{\"accounts_per_device\":{\"medium\":6,\"high\":5}}", "accounts_per_device", "must not exceed"},
        {"{\"accounts_per_ip\":{\"high\":2}}", "accounts_per_ip", "must not exceed"},   /* default medium 5 */
        {"{\"accounts_per_ip\":{\"window\":\"24hours\"}}", "accounts_per_ip.window", "24hours"},
        {"{\"redemptions_per_device\":{\"medium\":0}}", "redemptions_per_device.medium", NULL},
        {"{\"redemptions_per_device\":{\"high\":2.5}}", "redemptions_per_device.high", NULL},
        {"{\"redemptions_per_device\":5}", "redemptions_per_device", "mapping"},
        {"{\"block\":\"sometimes\"}", "block", NULL},
        {"{\"block\":\"low\"}", "block", NULL},
        {"{\"hold\":\"a day\"}", "hold", NULL},
        {"{\"hold\":24}", "hold", NULL},
        {"{\"redemption_events\":[]}", "redemption_events", NULL},
        {"{\"device\":\"\"}", "device", NULL},
        {"{\"ip\":[\"context.ip\"]}", "ip", NULL},
        {"{", "JSON", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[512] = "";
        fh_reset();
        if (fh_init(&P, cases[i].cfg, err, sizeof err) == 0) fail_msg("config %s: init succeeded", cases[i].cfg);
        assert_false(P.inited);
        if (!strstr(err, cases[i].needle1) || (cases[i].needle2 && !strstr(err, cases[i].needle2)))
            fail_msg("config %s: message \"%s\" lacks \"%s\"", cases[i].cfg, err, cases[i].needle1);
    }
    init_ok("{\"accounts_per_device\":{\"window\":\"12h\",\"medium\":3,\"high\":5},\"accounts_per_ip\":null,"
            "\"redemptions_per_device\":{},\"redemption_events\":\"Coupon Redeemed\",\"hold\":\"2d\"}");
    assert_int_equal(fh_count_logs(BD_LOG_INFO, "config", "accounts_per_device=3/5/12h", "accounts_per_ip=off",
                                   "redemptions_per_device=5/10/24h", NULL),
                     1);
    assert_int_equal(fh_count_logs(BD_LOG_INFO, "config", "hold=2d", "block=high", "redemption_events=1", NULL), 1);
    done();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_descriptor),
        cmocka_unit_test(test_accounts_per_device),
        cmocka_unit_test(test_ip_window_expiry_and_hold),
        cmocka_unit_test(test_hold_semantics),
        cmocka_unit_test(test_redemptions_per_device),
        cmocka_unit_test(test_block_levels),
        cmocka_unit_test(test_custom_and_disabled_checks),
        cmocka_unit_test(test_risk_rank),
        cmocka_unit_test(test_config_errors),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
