/* The tiers plugin (plugins/tiers/tiers.c) loaded with dlopen through the
 * fake host: known-answer event sequences for upgrades, warnings, grace,
 * downgrades, the rolling window and the revisit times it asks for. */
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
/* When the bucket of the UTC day `day` leaves a window of w ms. */
#define LEAVES(day, w) (((day) + 1) * FH_DAY + (w))

#define LEVELS \
    "\"levels\":[{\"name\":\"member\",\"threshold\":0},{\"name\":\"silver\",\"threshold\":500}," \
    "{\"name\":\"gold\",\"threshold\":2000}]"
#define CFG "{" LEVELS "}"
#define CFG_30D "{\"window\":\"30d\",\"grace\":\"10d\"," LEVELS "}"

static void init_ok(const char *cfg) {
    char err[512];
    fh_fini(&P);   /* a failed test may have left it initialised */
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

static void assert_str(const char *got, const char *want) {
    assert_non_null(got);
    assert_string_equal(got, want);
}

static int group_setup(void **state) {
    char err[512];
    if (fh_load(&P, "tiers", err, sizeof err) != 0) {
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
    assert_string_equal(P.desc->name, "tiers");
    assert_non_null(P.desc->version);
    assert_non_null(P.desc->on_event);
    assert_non_null(P.desc->on_revisit);
    assert_non_null(P.desc->fini);
    assert_non_null(P.desc->functions);
    assert_string_equal(P.desc->functions[0].name, "tier_rank");
    assert_null(P.desc->functions[1].name);
}

static void test_upgrade_to_silver(void **state) {
    init_ok(CFG);
    order("u1", T0, 300);
    assert_int_equal(fh_nemits(), 0);                  /* a first member is set silently */
    assert_str(fh_trait_str("u1", "tier"), "member");
    assert_true(fh_trait_num("u1", "tier_since") == T0);
    assert_true(fh_trait_num("u1", "tier_measure") == 300);
    assert_int_equal(fh_revisit_last("u1"), -1);      /* lowest level, not warned */

    order("u1", T0 + FH_HOUR, 300);
    assert_int_equal(fh_nemits(), 1);
    const fh_emit *e = fh_emit_at_index(0);
    assert_string_equal(e->name, "Tier Changed");
    assert_str(fh_json_str(e->props, "from"), "member");
    assert_str(fh_json_str(e->props, "to"), "silver");
    assert_str(fh_json_str(e->props, "direction"), "up");
    assert_true(fh_json_num(e->props, "measure") == 600);
    char tag[64];
    snprintf(tag, sizeof tag, "tier:member>silver:%lld", T0 + FH_HOUR);
    assert_string_equal(e->tag, tag);
    assert_str(fh_trait_str("u1", "tier"), "silver");
    assert_true(fh_trait_num("u1", "tier_since") == T0 + FH_HOUR);
    assert_true(fh_trait_num("u1", "tier_measure") == 600);
    assert_int_equal(fh_trait("u1", "tier_warned_at").kind, BD_MISSING);
    /* above the lowest level: revisit when the day's bucket leaves 365d */
    assert_int_equal(fh_revisit_last("u1"), LEAVES(D0, 365 * FH_DAY));
    assert_int_equal(fh_count_logs(BD_LOG_INFO, "tier_changed", "user=u1", "from=member", "to=silver", "spend=600",
                                   NULL),
                     1);
    /* a third order in silver changes nothing */
    order("u1", T0 + 2 * FH_HOUR, 100);
    assert_int_equal(fh_nemits(), 1);
    assert_true(fh_trait_num("u1", "tier_measure") == 700);
    done();
}

static void test_gold_after_2000(void **state) {
    init_ok(CFG);
    order("u1", T0, 1000);
    order("u1", T0 + FH_DAY, 999);
    assert_int_equal(fh_count_emits("Tier Changed"), 1);
    assert_str(fh_trait_str("u1", "tier"), "silver");
    order("u1", T0 + 2 * FH_DAY, 1);
    assert_int_equal(fh_count_emits("Tier Changed"), 2);
    const fh_emit *e = fh_last_emit("Tier Changed");
    assert_str(fh_json_str(e->props, "from"), "silver");
    assert_str(fh_json_str(e->props, "to"), "gold");
    assert_true(fh_json_num(e->props, "measure") == 2000);
    assert_str(fh_trait_str("u1", "tier"), "gold");
    /* the oldest bucket (day 0) is the next change */
    assert_int_equal(fh_revisit_last("u1"), LEAVES(D0, 365 * FH_DAY));

    /* one order past two thresholds: one event, member straight to gold */
    order("u2", T0, 2500);
    assert_int_equal(fh_count_emits("Tier Changed"), 3);
    e = fh_last_emit("Tier Changed");
    assert_string_equal(e->user, "u2");
    assert_str(fh_json_str(e->props, "from"), "member");
    assert_str(fh_json_str(e->props, "to"), "gold");
    assert_true(fh_json_num(e->props, "measure") == 2500);
    done();
}

static void test_amounts_ignored(void **state) {
    init_ok(CFG);
    assert_int_equal(fh_event(&P, "u1", T0, "Page Viewed", "{\"properties\":{\"total\":5000}}"), 0);
    assert_int_equal(fh_event(&P, "u1", T0 + 1, "Order Completed", NULL), 0);
    assert_int_equal(fh_event(&P, "u1", T0 + 2, "Order Completed", "{\"properties\":{\"total\":\"900\"}}"), 0);
    assert_int_equal(fh_event(&P, "u1", T0 + 3, "Order Completed", "{\"properties\":{\"total\":-900}}"), 0);
    assert_int_equal(fh_event(&P, "u1", T0 + 4, "Order Completed", "{\"properties\":{\"total\":null}}"), 0);
    assert_int_equal(fh_event(&P, "u1", T0 + 5, "Order Completed", "{\"properties\":7}"), 0);
    assert_true(fh_trait_num("u1", "tier_measure") == 0);
    assert_str(fh_trait_str("u1", "tier"), "member");
    assert_int_equal(fh_nemits(), 0);
    assert_int_equal(fh_trait("u1", "_tiers").kind, BD_MISSING);   /* nothing to keep */
    order("u1", T0 + 6, 10.25);
    assert_true(fh_trait_num("u1", "tier_measure") == 10.25);
    /* an order from before the window is not counted */
    assert_int_equal(fh_event_at(&P, "u1", T0 + 7, T0 - 400 * FH_DAY, "Order Completed",
                                 "{\"properties\":{\"total\":5000}}"),
                     0);
    assert_true(fh_trait_num("u1", "tier_measure") == 10.25);
    done();

    /* events as one string, another amount path, points in the log */
    init_ok("{\"measure\":\"points\",\"events\":\"Points Earned\",\"amount\":\"properties.points\"," LEVELS "}");
    assert_int_equal(fh_event(&P, "u1", T0, "Order Completed", "{\"properties\":{\"total\":900}}"), 0);
    assert_int_equal(fh_event(&P, "u1", T0 + 1, "Points Earned", "{\"properties\":{\"points\":600}}"), 0);
    assert_true(fh_trait_num("u1", "tier_measure") == 600);
    assert_int_equal(fh_count_emits("Tier Changed"), 1);
    assert_int_equal(fh_count_logs(BD_LOG_INFO, "tier_changed", "points=600", NULL), 1);
    done();
}

static void test_warning_then_downgrade_after_grace(void **state) {
    init_ok(CFG_30D);
    order("u1", T0, 600);
    assert_str(fh_trait_str("u1", "tier"), "silver");
    long long r1 = LEAVES(D0, 30 * FH_DAY);
    assert_int_equal(fh_revisit_last("u1"), r1);

    /* the bucket leaves: measure 0 < keep 400: exactly one warning */
    assert_int_equal(fh_run_revisits(&P, "u1", r1), 1);
    assert_int_equal(fh_count_emits("Tier Warning"), 1);
    const fh_emit *w = fh_last_emit("Tier Warning");
    assert_str(fh_json_str(w->props, "tier"), "silver");
    assert_true(fh_json_num(w->props, "measure") == 0);
    assert_true(fh_json_num(w->props, "keep") == 400);
    assert_true(fh_json_num(w->props, "downgrade_at") == r1 + 10 * FH_DAY);
    char tag[64];
    snprintf(tag, sizeof tag, "tierwarn:silver:%lld", r1);
    assert_string_equal(w->tag, tag);
    assert_true(fh_trait_num("u1", "tier_warned_at") == r1);
    assert_true(fh_trait_num("u1", "tier_measure") == 0);
    assert_str(fh_trait_str("u1", "tier"), "silver");
    assert_int_equal(fh_revisit_due("u1"), r1 + 10 * FH_DAY);

    /* within grace: a revisit and an event change nothing */
    assert_int_equal(fh_revisit(&P, "u1", r1 + 5 * FH_DAY), 0);
    assert_int_equal(fh_event(&P, "u1", r1 + 6 * FH_DAY, "Page Viewed", NULL), 0);
    assert_int_equal(fh_count_emits("Tier Warning"), 1);
    assert_int_equal(fh_count_emits("Tier Changed"), 1);
    assert_str(fh_trait_str("u1", "tier"), "silver");
    assert_int_equal(fh_revisit_last("u1"), r1 + 10 * FH_DAY);

    /* grace over: down to member */
    assert_int_equal(fh_run_revisits(&P, "u1", r1 + 10 * FH_DAY), 1);
    assert_int_equal(fh_count_emits("Tier Changed"), 2);
    const fh_emit *e = fh_last_emit("Tier Changed");
    assert_str(fh_json_str(e->props, "from"), "silver");
    assert_str(fh_json_str(e->props, "to"), "member");
    assert_str(fh_json_str(e->props, "direction"), "down");
    assert_true(fh_json_num(e->props, "measure") == 0);
    snprintf(tag, sizeof tag, "tier:silver>member:%lld", r1 + 10 * FH_DAY);
    assert_string_equal(e->tag, tag);
    assert_str(fh_trait_str("u1", "tier"), "member");
    assert_true(fh_trait_num("u1", "tier_since") == r1 + 10 * FH_DAY);
    assert_int_equal(fh_trait("u1", "tier_warned_at").kind, BD_NULL);
    assert_int_equal(fh_revisit_due("u1"), -1);        /* lowest level: nothing more to wait for */
    assert_int_equal(fh_count_emits("Tier Warning"), 1);
    done();
}

/* When a request replaces the pending one (the daemon's ZADD), the plugin's
 * latest request alone must carry the member through warning and downgrade. */
static void test_replacing_revisits(void **state) {
    init_ok(CFG_30D);
    fh_set_revisit_replace(1);
    order("u1", T0, 2000);                               /* gold */
    order("u1", T0 + 25 * FH_DAY, 450);
    long long r1 = LEAVES(D0, 30 * FH_DAY);
    assert_int_equal(fh_revisit_due("u1"), r1);
    assert_int_equal(fh_run_revisits(&P, "u1", r1), 1);
    assert_int_equal(fh_count_emits("Tier Warning"), 1);
    assert_int_equal(fh_revisit_due("u1"), r1 + 10 * FH_DAY);
    /* an event inside the grace asks again for the end of the grace */
    assert_int_equal(fh_event(&P, "u1", r1 + FH_DAY, "Page Viewed", NULL), 0);
    assert_int_equal(fh_revisit_due("u1"), r1 + 10 * FH_DAY);
    assert_int_equal(fh_run_revisits(&P, "u1", r1 + 10 * FH_DAY), 1);
    assert_str(fh_trait_str("u1", "tier"), "silver");
    assert_int_equal(fh_revisit_due("u1"), LEAVES(D0 + 25, 30 * FH_DAY));
    assert_int_equal(fh_run_revisits(&P, "u1", LEAVES(D0 + 25, 30 * FH_DAY) + 10 * FH_DAY), 2);
    assert_str(fh_trait_str("u1", "tier"), "member");
    assert_int_equal(fh_count_emits("Tier Warning"), 2);
    assert_int_equal(fh_count_emits("Tier Changed"), 3);   /* up to gold, down to silver, down to member */
    assert_int_equal(fh_revisit_due("u1"), -1);
    done();
}

static void test_keep_within_ratio(void **state) {
    init_ok(CFG_30D);
    order("u1", T0, 600);
    order("u1", T0 + 20 * FH_DAY, 450);
    assert_true(fh_trait_num("u1", "tier_measure") == 1050);
    long long r1 = LEAVES(D0, 30 * FH_DAY);
    assert_int_equal(fh_revisit_due("u1"), r1);
    /* day 0 leaves: 450 >= 0.8 x 500: kept, no warning */
    assert_int_equal(fh_run_revisits(&P, "u1", r1), 1);
    assert_int_equal(fh_count_emits("Tier Warning"), 0);
    assert_str(fh_trait_str("u1", "tier"), "silver");
    assert_true(fh_trait_num("u1", "tier_measure") == 450);
    assert_int_equal(fh_trait("u1", "tier_warned_at").kind, BD_MISSING);
    long long r2 = LEAVES(D0 + 20, 30 * FH_DAY);
    assert_int_equal(fh_revisit_last("u1"), r2);
    /* day 20 leaves too: now the warning */
    assert_int_equal(fh_run_revisits(&P, "u1", r2), 1);
    assert_int_equal(fh_count_emits("Tier Warning"), 1);
    assert_int_equal(fh_revisit_last("u1"), r2 + 10 * FH_DAY);
    done();
}

static void test_warning_cleared_by_recovery(void **state) {
    init_ok(CFG_30D);
    order("u1", T0, 600);
    long long r1 = LEAVES(D0, 30 * FH_DAY);
    fh_run_revisits(&P, "u1", r1);
    assert_int_equal(fh_count_emits("Tier Warning"), 1);
    order("u1", r1 + FH_DAY, 400);                       /* exactly the keep amount */
    assert_int_equal(fh_trait("u1", "tier_warned_at").kind, BD_NULL);
    long long day = (r1 + FH_DAY) / FH_DAY;
    assert_int_equal(fh_revisit_last("u1"), LEAVES(day, 30 * FH_DAY));
    /* the revisit asked for before (end of grace) still comes: harmless */
    assert_int_equal(fh_revisit_due("u1"), r1 + 10 * FH_DAY);
    fh_run_revisits(&P, "u1", r1 + 10 * FH_DAY);
    assert_int_equal(fh_count_emits("Tier Changed"), 1);
    assert_int_equal(fh_count_emits("Tier Warning"), 1);
    assert_str(fh_trait_str("u1", "tier"), "silver");
    done();
}

static void test_downgrade_to_highest_kept_level(void **state) {
    init_ok(CFG_30D);
    order("u1", T0, 2000);
    order("u1", T0 + 25 * FH_DAY, 450);
    order("u2", T0, 2000);
    order("u2", T0 + 25 * FH_DAY, 100);
    assert_str(fh_trait_str("u1", "tier"), "gold");
    long long r1 = LEAVES(D0, 30 * FH_DAY);
    fh_run_revisits(&P, "u1", r1);
    fh_run_revisits(&P, "u2", r1);
    assert_int_equal(fh_count_emits("Tier Warning"), 2);
    assert_true(fh_json_num(fh_last_emit("Tier Warning")->props, "keep") == 1600);
    fh_run_revisits(&P, "u1", r1 + 10 * FH_DAY);
    fh_run_revisits(&P, "u2", r1 + 10 * FH_DAY);
    /* u1: 450 keeps silver (>= 400); u2: 100 keeps nothing above member */
    assert_str(fh_trait_str("u1", "tier"), "silver");
    assert_str(fh_trait_str("u2", "tier"), "member");
    int down_u1 = 0, down_u2 = 0;
    for (int i = 0; i < fh_nemits(); i++) {
        const fh_emit *e = fh_emit_at_index(i);
        if (strcmp(e->name, "Tier Changed") || strcmp(fh_json_str(e->props, "direction"), "down")) continue;
        if (!strcmp(e->user, "u1")) {
            down_u1++;
            assert_str(fh_json_str(e->props, "from"), "gold");
            assert_str(fh_json_str(e->props, "to"), "silver");
            assert_true(fh_json_num(e->props, "measure") == 450);
        } else {
            down_u2++;
            assert_str(fh_json_str(e->props, "to"), "member");
        }
    }
    assert_int_equal(down_u1, 1);
    assert_int_equal(down_u2, 1);
    /* u1 in silver waits for the 450 to leave */
    assert_int_equal(fh_revisit_due("u1"), LEAVES(D0 + 25, 30 * FH_DAY));
    done();
}

static void test_revisit_is_idempotent(void **state) {
    init_ok(CFG);
    order("u1", T0, 700);
    int n = fh_nemits();
    for (int i = 1; i <= 5; i++) assert_int_equal(fh_revisit(&P, "u1", T0 + i * FH_DAY), 0);
    assert_int_equal(fh_nemits(), n);
    assert_true(fh_trait_num("u1", "tier_measure") == 700);
    done();
}

static void test_state_is_daily_buckets(void **state) {
    init_ok(CFG_30D);
    for (int i = 0; i < 200; i++) order("u1", T0 + i * FH_MIN, 1);
    char want[64];
    snprintf(want, sizeof want, "{\"b\":[[%lld,200]]}", D0);
    assert_str(fh_trait_str("u1", "_tiers"), want);
    for (int d = 1; d <= 60; d++) order("u1", T0 + d * FH_DAY, 1);
    /* only the days still in the 30d window are kept */
    const char *s = fh_trait_str("u1", "_tiers");
    assert_non_null(s);
    int buckets = 0;
    for (const char *p = s; (p = strstr(p, "],[")) != NULL; p++) buckets++;
    assert_int_equal(buckets + 1, 31);
    assert_true(fh_trait_num("u1", "tier_measure") == 31);
    done();
}

static void test_unknown_tier_trait(void **state) {
    init_ok(CFG);
    fh_trait_put("u1", "tier", fh_str("platinum"));
    assert_int_equal(fh_event(&P, "u1", T0, "Page Viewed", NULL), 0);
    assert_str(fh_trait_str("u1", "tier"), "member");
    assert_int_equal(fh_count_logs(BD_LOG_WARN, "tier_unknown", "platinum", NULL), 1);
    assert_int_equal(fh_nemits(), 0);
    /* a corrupt private state is dropped, not trusted */
    fh_trait_put("u1", "_tiers", fh_str("{\"b\":[[1,\"x\"]]}"));
    order("u1", T0 + 1, 50);
    assert_true(fh_trait_num("u1", "tier_measure") == 50);
    assert_int_equal(fh_count_logs(BD_LOG_WARN, "state_reset", NULL), 1);
    done();
}

static void test_tier_rank(void **state) {
    init_ok(CFG);
    bd_value out, a[1];
    a[0] = fh_str("member");
    assert_int_equal(fh_call(&P, "tier_rank", a, 1, &out), 0);
    assert_int_equal(out.kind, BD_NUM);
    assert_true(out.num == 0);
    a[0] = fh_str("gold");
    fh_call(&P, "tier_rank", a, 1, &out);
    assert_int_equal(out.kind, BD_NUM);
    assert_true(out.num == 2);
    a[0] = fh_str("platinum");
    fh_call(&P, "tier_rank", a, 1, &out);
    assert_int_equal(out.kind, BD_MISSING);
    a[0] = fh_num(1);
    fh_call(&P, "tier_rank", a, 1, &out);
    assert_int_equal(out.kind, BD_MISSING);
    a[0].kind = BD_MISSING;
    fh_call(&P, "tier_rank", a, 1, &out);
    assert_int_equal(out.kind, BD_MISSING);
    done();
    a[0] = fh_str("gold");
    fh_call(&P, "tier_rank", a, 1, &out);               /* after fini: no levels */
    assert_int_equal(out.kind, BD_MISSING);
}

static void test_config_errors(void **state) {
    static const struct {
        const char *cfg, *needle1, *needle2;
    } cases[] = {
        {"{\"colour\":\"red\"," LEVELS "}", "unknown key 'colour'", NULL},
        {"{\"levels\":[{\"name\":\"member\",\"threshold\":0},{\"name\":\"gold\",\"threshold\":2000},"
         "{\"name\":\"silver\",\"threshold\":500}]}",
         "levels", "thresholds must ascend"},
        {"{\"levels\":[{\"name\":\"member\",\"threshold\":0},{\"name\":\"silver\",\"threshold\":0}]}", "levels",
         "ascend"},
        {"{\"window\":\"soon\"," LEVELS "}", "window", "soon"},
        {"{\"window\":365," LEVELS "}", "window", NULL},
        {"{\"window\":\"0d\"," LEVELS "}", "window", NULL},
        {"{\"grace\":\"3 days\"," LEVELS "}", "grace", NULL},
        {"{\"keep_ratio\":1.5," LEVELS "}", "keep_ratio", NULL},
        {"{\"keep_ratio\":0," LEVELS "}", "keep_ratio", NULL},
        {"{\"keep_ratio\":\"high\"," LEVELS "}", "keep_ratio", NULL},
        {"{\"measure\":\"euros\"," LEVELS "}", "measure", NULL},
        {"{\"events\":[]," LEVELS "}", "events", NULL},
        {"{\"events\":5," LEVELS "}", "events", NULL},
        {"{\"events\":[\"A\",7]," LEVELS "}", "events", NULL},
        {"{\"amount\":\"\"," LEVELS "}", "amount", NULL},
        {"{}", "levels", "required"},
        {"{\"levels\":[]}", "levels", NULL},
        {"{\"levels\":[{\"name\":\"member\",\"threshold\":100}]}", "levels", "first"},
        {"{\"levels\":[{\"name\":\"member\",\"threshold\":0},{\"name\":\"member\",\"threshold\":5}]}", "levels",
         "duplicate"},
        {"{\"levels\":[{\"name\":\"member\",\"threshold\":0},{\"name\":\"x\",\"threshold\":5,\"colour\":1}]}",
         "levels[1]", "colour"},
        {"{\"levels\":[{\"name\":\"member\",\"threshold\":0},{\"threshold\":5}]}", "levels[1]", "name"},
        {"{\"levels\":[{\"name\":\"member\",\"threshold\":0},{\"name\":\"x\",\"threshold\":\"5\"}]}", "levels[1]",
         "threshold"},
        {"{\"levels\":", "JSON", NULL},
        {"[1,2]", "mapping", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[512] = "";
        fh_reset();
        int rc = fh_init(&P, cases[i].cfg, err, sizeof err);
        if (rc == 0) fail_msg("config %s: init succeeded", cases[i].cfg);
        assert_false(P.inited);
        if (!strstr(err, cases[i].needle1) || (cases[i].needle2 && !strstr(err, cases[i].needle2)))
            fail_msg("config %s: message \"%s\" lacks \"%s\"", cases[i].cfg, err, cases[i].needle1);
    }
    /* null keys take their defaults; a full config works */
    init_ok("{\"measure\":null,\"events\":[\"Order Completed\",\"Refund Reversed\"],\"amount\":\"properties.total\","
            "\"window\":\"52w\",\"keep_ratio\":1,\"grace\":\"0d\"," LEVELS "}");
    assert_int_equal(fh_count_logs(BD_LOG_INFO, "config", "measure=spend", "window=52w",
                                   "levels=member:0,silver:500,gold:2000", "keep_ratio=1", "grace=0d", NULL),
                     1);
    done();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_descriptor),
        cmocka_unit_test(test_upgrade_to_silver),
        cmocka_unit_test(test_gold_after_2000),
        cmocka_unit_test(test_amounts_ignored),
        cmocka_unit_test(test_warning_then_downgrade_after_grace),
        cmocka_unit_test(test_replacing_revisits),
        cmocka_unit_test(test_keep_within_ratio),
        cmocka_unit_test(test_warning_cleared_by_recovery),
        cmocka_unit_test(test_downgrade_to_highest_kept_level),
        cmocka_unit_test(test_revisit_is_idempotent),
        cmocka_unit_test(test_state_is_daily_buckets),
        cmocka_unit_test(test_unknown_tier_trait),
        cmocka_unit_test(test_tier_rank),
        cmocka_unit_test(test_config_errors),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
