/* test_rules.c - rule files: fields, located errors, the event index. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../daemon/core/util.h"
#include "../../daemon/rules/rules.h"

#define FILE_NAME "rules/x.yaml"

static ruleset_t *load(const char *text, diag_t *d) {
    return ruleset_load_string(FILE_NAME, text, strlen(text), "UTC", d);
}

/* Loads text, expects it refused with exactly these messages (each without
 * the "rules/x.yaml:" prefix), in order. NULL-terminated. */
static void expect_errors(const char *text, ...) {
    diag_t d;
    diag_init(&d);
    ruleset_t *rs = load(text, &d);
    va_list ap;
    va_start(ap, text);
    size_t n = 0;
    const char *want;
    int ok = 1;
    while ((want = va_arg(ap, const char *))) {
        char full[512];
        snprintf(full, sizeof full, "%s:%s", FILE_NAME, want);
        if (n >= d.n || strcmp(d.msgs[n], full) != 0) {
            fprintf(stderr, "want[%zu]: %s\n", n, full);
            ok = 0;
        }
        n++;
    }
    va_end(ap);
    if (!ok || n != d.n) {
        fprintf(stderr, "got:\n");
        diag_print(&d, stderr);
    }
    assert_null(rs);
    assert_true(ok);
    assert_int_equal(d.n, n);
    diag_free(&d);
}

static ruleset_t *load_ok(const char *text) {
    diag_t d;
    diag_init(&d);
    ruleset_t *rs = load(text, &d);
    diag_print(&d, stderr);
    assert_int_equal(d.n, 0);
    assert_non_null(rs);
    diag_free(&d);
    return rs;
}

static int64_t utc(const char *iso) {
    int64_t ms;
    assert_int_equal(parse_iso8601_ms(iso, &ms), 0);
    return ms;
}

/* ---- good rules ------------------------------------------------------------ */

static const char *FULL_RULE =
    "# every supported key\n"
    "id: cart-ten\n"
    "description: Ten off the cart.\n"
    "enabled: true\n"
    "mode: shadow\n"
    "priority: 50\n"
    "group: checkout\n"
    "active: {from: 2026-12-01, until: 2026-12-31}\n"
    "trigger:\n"
    "  event: [Product Added, Product Viewed]\n"
    "  where: properties.price >= 50\n"
    "grant:\n"
    "  benefit: coupon\n"
    "  sku: CART-10OFF\n"
    "  value: 10\n"
    "  expires_in: 72h\n"
    "  channel: push\n"
    "  message: \"{{properties.name}} is still in your cart\"\n"
    "  to: properties.referrer_id\n"
    "variants:\n"
    "  - {name: ten, weight: 45}\n"
    "  - {name: twenty, weight: 45, grant: {value: \"floor(properties.price * 0.2)\", channel: email}}\n"
    "  - {name: holdout, weight: 10, holdout: true}\n";

static void test_full_rule_fields(void **state) {
    ruleset_t *rs = load_ok(FULL_RULE);
    assert_int_equal(ruleset_count(rs), 1);
    const rule_t *r = ruleset_rule(rs, 0);
    assert_ptr_equal(ruleset_find(rs, "cart-ten"), r);
    assert_string_equal(r->id, "cart-ten");
    assert_string_equal(r->description, "Ten off the cart.");
    assert_string_equal(r->file, FILE_NAME);
    assert_int_equal(r->line, 2);
    assert_int_equal(strlen(r->version), 16);
    assert_int_equal(strspn(r->version, "0123456789abcdef"), 16);
    assert_int_equal(r->enabled, 1);
    assert_int_equal(r->shadow, 1);
    assert_int_equal(r->priority, 50);
    assert_string_equal(r->group, "checkout");
    assert_int_equal(r->active_from_ms, utc("2026-12-01T00:00:00Z"));
    /* a bare `until` date includes that day */
    assert_int_equal(r->active_until_ms, utc("2027-01-01T00:00:00Z"));
    assert_null(r->audience);
    assert_int_equal(r->kind, TRIG_EVENT);
    assert_int_equal(r->n_events, 2);
    assert_string_equal(r->events[0], "Product Added");
    assert_string_equal(r->events[1], "Product Viewed");
    assert_non_null(r->where);
    assert_int_equal(r->wait_ms, 0);
    assert_int_equal(r->n_cancel_on, 0);
    assert_string_equal(r->grant.benefit, "coupon");
    assert_string_equal(r->grant.sku, "CART-10OFF");
    assert_non_null(r->grant.value);
    assert_true(expr_is_constant(r->grant.value));
    assert_int_equal(r->grant.expires_in_ms, 72LL * 3600000);
    assert_string_equal(r->grant.channel, "push");
    assert_non_null(r->grant.message);
    assert_non_null(r->grant.to);
    assert_null(r->grant.pool);
    assert_int_equal(r->per_user.count, 0);
    assert_int_equal(r->budget, 0);

    assert_int_equal(r->n_variants, 3);
    assert_int_equal(r->total_weight, 100);
    const variant_t *v = r->variants;
    assert_string_equal(v[0].name, "ten");
    assert_int_equal(v[0].weight, 45);
    assert_int_equal(v[0].holdout, 0);
    /* a variant leaves what it does not set unset, for the merge at runtime */
    assert_null(v[0].grant.benefit);
    assert_null(v[0].grant.value);
    assert_int_equal(v[0].grant.expires_in_ms, -1);
    assert_null(v[0].grant.message);
    assert_string_equal(v[1].name, "twenty");
    assert_non_null(v[1].grant.value);
    assert_false(expr_is_constant(v[1].grant.value));
    assert_string_equal(v[1].grant.channel, "email");
    assert_null(v[1].grant.sku);
    assert_string_equal(v[2].name, "holdout");
    assert_int_equal(v[2].holdout, 1);
    assert_int_equal(v[2].weight, 10);
    ruleset_free(rs);
}

/* The compiled expressions are the ones written: evaluate them on an event. */
static void test_expressions_evaluate(void **state) {
    ruleset_t *rs = load_ok(FULL_RULE);
    const rule_t *r = ruleset_rule(rs, 0);
    event_t ev;
    memset(&ev, 0, sizeof ev);
    ev.root = cJSON_Parse("{\"price\": 80, \"name\": \"Lamp\", \"referrer_id\": \"u-9\"}");
    ev.properties = ev.root;
    ev.name = "Product Added";
    ev.user_id = "u-1";
    expr_arena_t arena = {0};
    eval_ctx_t ctx = {.ev = &ev, .arena = &arena};
    assert_true(expr_test(r->where, &ctx));
    value_t v = expr_eval(r->grant.value, &ctx);
    assert_int_equal(v.k, V_NUM);
    assert_true(v.n == 10);
    v = expr_eval(r->variants[1].grant.value, &ctx);
    assert_int_equal(v.k, V_NUM);
    assert_true(v.n == 16);
    v = expr_eval(r->grant.to, &ctx);
    assert_int_equal(v.k, V_STR);
    assert_memory_equal(v.s, "u-9", 3);
    strbuf b;
    sb_init(&b);
    template_render(r->grant.message, &ctx, &b);
    assert_string_equal(b.s, "Lamp is still in your cart");
    sb_free(&b);
    expr_arena_free(&arena);
    cJSON_Delete(ev.root);
    ruleset_free(rs);
}

static void test_defaults_and_rule_list(void **state) {
    ruleset_t *rs = load_ok("rules:\n"
                            "  - id: one\n"
                            "    trigger: {event: Signed Up}\n"
                            "    grant: {benefit: points}\n"
                            "  - id: two\n"
                            "    enabled: false\n"
                            "    mode: live\n"
                            "    trigger: {event: Order Completed}\n"
                            "    grant: {benefit: privilege, sku: VIP}\n");
    assert_int_equal(ruleset_count(rs), 2);
    const rule_t *one = ruleset_rule(rs, 0), *two = ruleset_rule(rs, 1);
    assert_string_equal(one->id, "one");
    assert_int_equal(one->line, 2);
    assert_int_equal(one->enabled, 1);
    assert_int_equal(one->shadow, 0);
    assert_int_equal(one->priority, 0);
    assert_null(one->group);
    assert_null(one->description);
    assert_int_equal(one->active_from_ms, 0);
    assert_int_equal(one->active_until_ms, 0);
    assert_int_equal(one->n_events, 1);
    assert_string_equal(one->events[0], "Signed Up");
    assert_null(one->where);
    assert_null(one->grant.value);
    assert_null(one->grant.channel);
    assert_null(one->grant.message);
    assert_null(one->grant.to);
    assert_int_equal(one->grant.expires_in_ms, -1);
    assert_int_equal(one->n_variants, 0);
    assert_int_equal(one->total_weight, 0);
    assert_string_equal(two->id, "two");
    assert_int_equal(two->line, 5);
    assert_int_equal(two->enabled, 0);
    assert_string_equal(two->grant.sku, "VIP");
    assert_null(ruleset_find(rs, "three"));
    ruleset_free(rs);
}

static void test_empty_file(void **state) {
    ruleset_t *rs = load_ok("# nothing here yet\n");
    assert_int_equal(ruleset_count(rs), 0);
    assert_int_equal(ruleset_for_event(rs, "Order Completed")->n, 0);
    ruleset_free(rs);
}

static void test_active_times_in_timezone(void **state) {
    if (access("/usr/share/zoneinfo/Europe/Paris", R_OK) != 0) skip();
    const char *text = "id: spring\n"
                       "active: {from: 2026-03-01, until: 2026-03-29}\n"
                       "trigger: {event: E}\n"
                       "grant: {benefit: coupon}\n";
    diag_t d;
    diag_init(&d);
    ruleset_t *rs = ruleset_load_string("x.yaml", text, strlen(text), "Europe/Paris", &d);
    assert_int_equal(d.n, 0);
    const rule_t *r = ruleset_rule(rs, 0);
    assert_int_equal(r->active_from_ms, utc("2026-02-28T23:00:00Z"));
    /* the 29th is the DST switch: its end is local midnight, 22:00 UTC */
    assert_int_equal(r->active_until_ms, utc("2026-03-29T22:00:00Z"));
    ruleset_free(rs);
    diag_free(&d);
}

static void test_active_exact_times(void **state) {
    ruleset_t *rs = load_ok("id: flash\n"
                            "active: {from: \"2026-11-27T08:00:00Z\", until: \"2026-11-27T20:00:00+01:00\"}\n"
                            "trigger: {event: E}\n"
                            "grant: {benefit: coupon}\n");
    const rule_t *r = ruleset_rule(rs, 0);
    assert_int_equal(r->active_from_ms, utc("2026-11-27T08:00:00Z"));
    assert_int_equal(r->active_until_ms, utc("2026-11-27T19:00:00Z"));
    ruleset_free(rs);
}

static void test_versions_follow_content(void **state) {
    const char *a = "id: v\ntrigger: {event: E}\ngrant: {benefit: coupon, value: 10}\n";
    const char *a_reformatted = "# same rule\nid: v\ntrigger:\n  event: E\ngrant:\n  benefit: coupon\n  value: 10\n";
    const char *b = "id: v\ntrigger: {event: E}\ngrant: {benefit: coupon, value: 20}\n";
    ruleset_t *ra = load_ok(a), *ra2 = load_ok(a_reformatted), *rb = load_ok(b);
    assert_string_equal(ruleset_rule(ra, 0)->version, ruleset_rule(ra2, 0)->version);
    assert_string_equal(ruleset_version(ra), ruleset_version(ra2));
    assert_string_not_equal(ruleset_rule(ra, 0)->version, ruleset_rule(rb, 0)->version);
    assert_string_not_equal(ruleset_version(ra), ruleset_version(rb));
    assert_int_equal(strlen(ruleset_version(ra)), 16);
    ruleset_free(ra);
    ruleset_free(ra2);
    ruleset_free(rb);
}

/* ---- the index ------------------------------------------------------------- */

static void test_index_priority_order(void **state) {
    ruleset_t *rs = load_ok("rules:\n"
                            "  - {id: c, priority: 10, trigger: {event: [Order Completed, Product Added]}, grant: {benefit: x}}\n"
                            "  - {id: a, priority: 10, trigger: {event: Order Completed}, grant: {benefit: x}}\n"
                            "  - {id: b, priority: 20, trigger: {event: Order Completed}, grant: {benefit: x}}\n"
                            "  - {id: off, priority: 99, enabled: false, trigger: {event: Order Completed}, grant: {benefit: x}}\n"
                            "  - {id: low, priority: -5, trigger: {event: [Order Completed, Order Completed]}, grant: {benefit: x}}\n");
    const rule_list_t *l = ruleset_for_event(rs, "Order Completed");
    assert_int_equal(l->n, 4);
    assert_string_equal(l->rules[0]->id, "b");
    assert_string_equal(l->rules[1]->id, "a");
    assert_string_equal(l->rules[2]->id, "c");
    assert_string_equal(l->rules[3]->id, "low");
    l = ruleset_for_event(rs, "Product Added");
    assert_int_equal(l->n, 1);
    assert_string_equal(l->rules[0]->id, "c");
    l = ruleset_for_event(rs, "Product Viewed");
    assert_non_null(l);
    assert_int_equal(l->n, 0);
    assert_int_equal(ruleset_for_event(rs, "order completed")->n, 0);
    assert_int_equal(ruleset_for_event(NULL, "Order Completed")->n, 0);
    ruleset_free(rs);
}

static void test_index_many_events(void **state) {
    strbuf b;
    sb_init(&b);
    sb_puts(&b, "rules:\n");
    for (int i = 0; i < 300; i++)
        sb_printf(&b, "  - {id: r%d, trigger: {event: Event %d}, grant: {benefit: coupon}}\n", i, i);
    diag_t d;
    diag_init(&d);
    ruleset_t *rs = ruleset_load_string("many.yaml", b.s, b.len, "UTC", &d);
    assert_int_equal(d.n, 0);
    assert_int_equal(ruleset_count(rs), 300);
    for (int i = 0; i < 300; i++) {
        char name[32], id[16];
        snprintf(name, sizeof name, "Event %d", i);
        snprintf(id, sizeof id, "r%d", i);
        const rule_list_t *l = ruleset_for_event(rs, name);
        assert_int_equal(l->n, 1);
        assert_string_equal(l->rules[0]->id, id);
        assert_ptr_equal(ruleset_find(rs, id), l->rules[0]);
    }
    assert_int_equal(ruleset_for_event(rs, "Event 300")->n, 0);
    ruleset_free(rs);
    diag_free(&d);
    sb_free(&b);
}

/* ---- located errors -------------------------------------------------------- */

static void test_unknown_key_suggests(void **state) {
    expect_errors("id: a\n"
                  "trigger: {event: E, wehre: \"properties.x > 1\"}\n"
                  "grant: {benefit: coupon}\n"
                  "wiat: 30m\n",
                  "2:21: unknown key 'wehre' (did you mean 'where'?)",
                  "4:1: unknown key 'wiat' (did you mean 'wait'?)", NULL);
}

static void test_bad_id(void **state) {
    expect_errors("id: Big_Order\ntrigger: {event: E}\ngrant: {benefit: coupon}\n",
                  "1:5: rule id 'Big_Order' must match [a-z0-9][a-z0-9-]*", NULL);
    expect_errors("id: -leading\ntrigger: {event: E}\ngrant: {benefit: coupon}\n",
                  "1:5: rule id '-leading' must match [a-z0-9][a-z0-9-]*", NULL);
}

static void test_missing_required(void **state) {
    expect_errors("description: nothing else\n", "1:1: missing required key 'id'",
                  "1:1: missing required key 'trigger'", "1:1: missing required key 'grant'", NULL);
    expect_errors("id: a\ntrigger:\n  where: properties.x > 1\ngrant:\n  sku: X\n",
                  "3:3: missing required key 'event'", "5:3: missing required key 'benefit'", NULL);
}

static void test_bad_values(void **state) {
    expect_errors("id: a\n"
                  "enabled: sometimes\n"
                  "mode: dry-run\n"
                  "priority: high\n"
                  "active: {from: 2026-13-01, until: tomorrow}\n"
                  "trigger: {event: E}\n"
                  "grant:\n"
                  "  benefit: coupon\n"
                  "  expires_in: 3 days\n"
                  "  value: [1, 2]\n",
                  "2:10: 'enabled' must be true or false",
                  "3:7: 'mode' must be live or shadow",
                  "4:11: 'priority' must be an integer",
                  "5:16: 'from' must be a date like 2026-12-31 or an ISO-8601 time",
                  "5:35: 'until' must be a date like 2026-12-31 or an ISO-8601 time",
                  "9:15: 'expires_in' must be a duration like 90s, 30m, 12h, 7d, 2w",
                  "10:10: 'value' must be a number or an expression", NULL);
}

static void test_empty_active_window(void **state) {
    expect_errors("id: a\nactive: {from: 2026-12-31, until: 2026-12-01}\ntrigger: {event: E}\ngrant: {benefit: c}\n",
                  "2:9: 'active' window is empty: 'from' must come before 'until'", NULL);
}

static void test_expression_error_columns(void **state) {
    /* plain scalar: the value starts at column 10 */
    expect_errors("id: a\n"
                  "trigger:\n"
                  "  event: E\n"
                  "  where: (properties.total >= 200\n"
                  "grant: {benefit: coupon}\n",
                  "4:34: expected ')' to close '('", NULL);
    /* quoted: the column counts from after the quote */
    expect_errors("id: a\n"
                  "trigger: {event: E, where: \"properties.total >= 2 andd true\"}\n"
                  "grant: {benefit: coupon, value: \"flor(properties.total)\", to: \"propertes.referrer_id\"}\n",
                  "2:51: unexpected 'andd' (did you mean 'and'?)",
                  "3:34: unknown function 'flor' (did you mean 'floor'?)",
                  "3:64: unknown path root 'propertes' (did you mean 'properties'?)", NULL);
}

static void test_template_error_column(void **state) {
    expect_errors("id: a\n"
                  "trigger: {event: E}\n"
                  "grant:\n"
                  "  benefit: coupon\n"
                  "  message: \"Hello {{properties.name\"\n",
                  "5:19: '{{' is not closed by '}}'", NULL);
}

static void test_trigger_shapes(void **state) {
    expect_errors("id: a\n"
                  "trigger: {inactive_for: 7d, count: 3, event: E}\n"
                  "grant: {benefit: coupon}\n",
                  "2:11: 'inactive_for' is not supported yet by this build of benefitd",
                  "2:29: 'count' does not go with 'inactive_for': a trigger counts events or waits for silence, not both",
                  "2:29: 'count' is not supported yet by this build of benefitd",
                  "2:39: 'event' does not go with 'inactive_for' (list what counts as activity under 'events')", NULL);
    expect_errors("id: a\ntrigger: {event: E, count: 3}\ngrant: {benefit: coupon}\n",
                  "2:21: 'count' needs 'within' beside it",
                  "2:21: 'count' is not supported yet by this build of benefitd", NULL);
    expect_errors("id: a\ntrigger: {event: E, events: [F]}\ngrant: {benefit: coupon}\n",
                  "2:21: 'events' goes with 'inactive_for' only (use 'event')", NULL);
}

/* Loads text with the time shapes; returns the ruleset (NULL if refused) and
 * the first message (or "") in first. */
static ruleset_t *load_time(const char *text, char first[256]) {
    diag_t d;
    diag_init(&d);
    ruleset_t *rs = ruleset_load_string_ex(FILE_NAME, text, strlen(text), "UTC", RULES_ALLOW_TIME, &d);
    snprintf(first, 256, "%s", d.n ? d.msgs[0] : "");
    diag_free(&d);
    return rs;
}

static void test_inactivity_resolution(void **state) {
    char msg[256];
    ruleset_t *rs = load_time("id: a\ntrigger: {inactive_for: 30d, resolution: 1d}\ngrant: {benefit: coupon}\n", msg);
    assert_string_equal(msg, "");
    assert_non_null(rs);
    assert_int_equal(ruleset_rule(rs, 0)->resolution_ms, 86400000LL);
    assert_int_equal(ruleset_rule(rs, 0)->inactive_ms, 30 * 86400000LL);
    ruleset_free(rs);
    assert_null(load_time("id: a\ntrigger: {inactive_for: 1d, resolution: 2d}\ngrant: {benefit: coupon}\n", msg));
    assert_string_equal(msg, FILE_NAME ":2:41: 'resolution' must be longer than 0 and at most 'inactive_for'");
    assert_null(load_time("id: a\ntrigger: {event: E, resolution: 1h}\ngrant: {benefit: coupon}\n", msg));
    assert_string_equal(msg, FILE_NAME ":2:21: 'resolution' goes with 'inactive_for' only");
}

static void test_unsupported_features(void **state) {
    expect_errors("id: later\n"
                  "audience: user.tier == 'gold'\n"
                  "trigger: {event: Product Added}\n"
                  "wait: 30m\n"
                  "cancel_on: Order Completed\n"
                  "grant: {benefit: code, pool: video-vip}\n"
                  "limits: {per_user: 1/7d, budget: 100}\n"
                  "variants:\n"
                  "  - {name: a, weight: 1, grant: {pool: other}}\n",
                  "4:1: 'wait' is not supported yet by this build of benefitd",
                  "5:1: 'cancel_on' is not supported yet by this build of benefitd",
                  NULL);
}

/* Unsupported features are still checked in full, so a file that will be
 * valid later reports its real mistakes now. */
static void test_unsupported_still_checked(void **state) {
    expect_errors("id: a\n"
                  "trigger: {event: E, count: 3, within: soon}\n"
                  "grant: {benefit: code}\n"
                  "limits: {per_user: often, per_ip: 5/1h, daily_budget: 0}\n",
                  "2:21: 'count' is not supported yet by this build of benefitd",
                  "2:31: 'within' is not supported yet by this build of benefitd",
                  "2:39: 'within' must be a duration like 90s, 30m, 12h, 7d, 2w",
                  "3:18: 'benefit: code' needs a 'pool' to take codes from",
                  "4:20: 'per_user' must be a rate like 1/7d",
                  "4:55: 'daily_budget' must be a positive integer", NULL);
}

static void test_variant_errors(void **state) {
    expect_errors("id: a\n"
                  "trigger: {event: E}\n"
                  "grant: {benefit: coupon}\n"
                  "variants:\n"
                  "  - {name: ten, weight: 0}\n"
                  "  - {name: ten, weight: 1.5, holdout: perhaps}\n"
                  "  - {weight: 3, grant: {vlaue: 3}}\n"
                  "  - just-a-name\n",
                  "5:25: 'weight' must be between 1 and 1000000",
                  "6:12: duplicate variant name 'ten'",
                  "6:25: 'weight' must be an integer",
                  "6:39: 'holdout' must be true or false",
                  "7:5: missing required key 'name'",
                  "7:25: unknown key 'vlaue' (did you mean 'value'?)",
                  "8:5: each variant must be a mapping", NULL);
}

static void test_rules_list_shape(void **state) {
    expect_errors("rules:\n  - {id: a, trigger: {event: E}, grant: {benefit: c}}\nversion: 2\n",
                  "1:1: 'rules' must be the only key of a file that lists several rules", NULL);
    expect_errors("- id: a\n", "1:1: a rule file holds one rule (a mapping) or several under 'rules:'", NULL);
}

static void test_errors_collected_across_rules(void **state) {
    expect_errors("rules:\n"
                  "  - {id: a, trigger: {event: E}, grant: {benefit: c, expires_in: 2y}}\n"
                  "  - {id: b, trigger: {event: E}, grant: {benefit: c}, priorty: 1}\n"
                  "  - {id: a, trigger: {event: E}, grant: {benefit: c}}\n",
                  "2:66: 'expires_in' must be a duration like 90s, 30m, 12h, 7d, 2w",
                  "3:55: unknown key 'priorty' (did you mean 'priority'?)",
                  "4:10: duplicate rule id 'a' (first defined at rules/x.yaml:2)", NULL);
}

static void test_yaml_syntax_error(void **state) {
    expect_errors("id: a\ntrigger: {event: E\ngrant: {benefit: coupon}\n",
                  "3:6: did not find expected ',' or '}'", NULL);
}

/* ---- directories ----------------------------------------------------------- */

static void write_file(const char *dir, const char *name, const char *text) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void rm_rf(const char *dir) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_duplicate_id_across_files(void **state) {
    char dir[] = "/tmp/bd-rules-XXXXXX";
    assert_non_null(mkdtemp(dir));
    write_file(dir, "a.yaml", "# the first\nid: dup\ntrigger: {event: E}\ngrant: {benefit: coupon}\n");
    write_file(dir, "b.yml",
               "rules:\n"
               "  - {id: fine, trigger: {event: E}, grant: {benefit: coupon}}\n"
               "  - id: dup\n"
               "    trigger: {event: F}\n"
               "    grant: {benefit: points}\n");
    write_file(dir, "notes.txt", "not a rule file\n");
    write_file(dir, ".#a.yaml", "editor lock, not a rule\n");
    diag_t d;
    diag_init(&d);
    ruleset_t *rs = ruleset_load_dir(dir, "UTC", &d);
    assert_null(rs);
    assert_int_equal(d.n, 1);
    char want[256];
    snprintf(want, sizeof want, "%s/b.yml:3:9: duplicate rule id 'dup' (first defined at %s/a.yaml:2)", dir, dir);
    assert_string_equal(d.msgs[0], want);
    diag_free(&d);

    /* renamed, the set loads, in file-name order */
    write_file(dir, "b.yml", "id: dup2\ntrigger: {event: E}\ngrant: {benefit: points}\n");
    rs = ruleset_load_dir(dir, "UTC", &d);
    diag_print(&d, stderr);
    assert_int_equal(d.n, 0);
    assert_int_equal(ruleset_count(rs), 2);
    assert_string_equal(ruleset_rule(rs, 0)->id, "dup");
    assert_string_equal(ruleset_rule(rs, 1)->id, "dup2");
    snprintf(want, sizeof want, "%s/b.yml", dir);
    assert_string_equal(ruleset_rule(rs, 1)->file, want);
    assert_int_equal(ruleset_for_event(rs, "E")->n, 2);
    ruleset_free(rs);
    diag_free(&d);
    rm_rf(dir);
}

static void test_missing_dir(void **state) {
    diag_t d;
    diag_init(&d);
    assert_null(ruleset_load_dir("/nonexistent/rules", "UTC", &d));
    assert_int_equal(d.n, 1);
    assert_string_equal(d.msgs[0], "/nonexistent/rules: cannot open rules directory: No such file or directory");
    diag_free(&d);
}

/* The samples shipped in rules/ (tests run from the repo root), loaded as the
 * daemon and `check` load them: with the time shapes. */
static void test_repo_rules_load(void **state) {
    diag_t d;
    diag_init(&d);
    ruleset_t *rs = ruleset_load_dir_ex("rules", "UTC", RULES_ALLOW_TIME, &d);
    diag_print(&d, stderr);
    assert_int_equal(d.n, 0);
    assert_non_null(rs);
    assert_true(ruleset_count(rs) >= 4);
    const rule_t *vip = ruleset_find(rs, "vip-order"), *big = ruleset_find(rs, "big-order-thanks");
    assert_non_null(vip);
    assert_non_null(big);
    assert_string_equal(vip->group, big->group);
    const rule_list_t *l = ruleset_for_event(rs, "Order Completed");
    assert_true(l->n >= 2);
    assert_ptr_equal(l->rules[0], vip);
    assert_non_null(ruleset_find(rs, "referral-points"));
    assert_true(ruleset_find(rs, "referral-points")->shadow);
    assert_non_null(ruleset_find(rs, "referral-points")->grant.to);
    assert_int_equal(ruleset_find(rs, "first-cart-nudge")->n_variants, 3);
    ruleset_free(rs);
    diag_free(&d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_rule_fields),
        cmocka_unit_test(test_expressions_evaluate),
        cmocka_unit_test(test_defaults_and_rule_list),
        cmocka_unit_test(test_empty_file),
        cmocka_unit_test(test_active_times_in_timezone),
        cmocka_unit_test(test_active_exact_times),
        cmocka_unit_test(test_versions_follow_content),
        cmocka_unit_test(test_index_priority_order),
        cmocka_unit_test(test_index_many_events),
        cmocka_unit_test(test_unknown_key_suggests),
        cmocka_unit_test(test_bad_id),
        cmocka_unit_test(test_missing_required),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_empty_active_window),
        cmocka_unit_test(test_expression_error_columns),
        cmocka_unit_test(test_template_error_column),
        cmocka_unit_test(test_trigger_shapes),
        cmocka_unit_test(test_inactivity_resolution),
        cmocka_unit_test(test_unsupported_features),
        cmocka_unit_test(test_unsupported_still_checked),
        cmocka_unit_test(test_variant_errors),
        cmocka_unit_test(test_rules_list_shape),
        cmocka_unit_test(test_errors_collected_across_rules),
        cmocka_unit_test(test_yaml_syntax_error),
        cmocka_unit_test(test_duplicate_id_across_files),
        cmocka_unit_test(test_missing_dir),
        cmocka_unit_test(test_repo_rules_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
