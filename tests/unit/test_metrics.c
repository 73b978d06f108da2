/* test_metrics.c - the Prometheus registry and its exact text exposition (0.0.4). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../daemon/core/metrics.h"
#include "../../daemon/core/util.h"

static metrics_registry_t *reg;

static int setup(void **state) {
    reg = metrics_registry_new();
    return reg ? 0 : -1;
}

static int teardown(void **state) {
    metrics_registry_free(reg);
    reg = NULL;
    return 0;
}

static void expect_page(const char *want) {
    strbuf b;
    sb_init(&b);
    metrics_render(reg, &b);
    assert_string_equal(b.s ? b.s : "", want);
    sb_free(&b);
}

static void test_counter_and_gauge_unlabelled(void **state) {
    metric_counter_t *ev = metrics_counter(reg, "benefitd_reloads_total", "Rule reloads.", NULL);
    metric_gauge_t *pending = metrics_gauge(reg, "benefitd_pending_timers", "Timers waiting.", NULL);
    assert_non_null(ev);
    assert_non_null(pending);
    expect_page("# HELP benefitd_reloads_total Rule reloads.\n"
                "# TYPE benefitd_reloads_total counter\n"
                "benefitd_reloads_total 0\n"
                "# HELP benefitd_pending_timers Timers waiting.\n"
                "# TYPE benefitd_pending_timers gauge\n"
                "benefitd_pending_timers 0\n");
    metrics_counter_inc(ev, 1);
    metrics_counter_inc(ev, 2);
    metrics_counter_inc(ev, -5);   /* counters never go down */
    metrics_counter_inc(ev, NAN);
    metrics_gauge_set(pending, 10);
    metrics_gauge_add(pending, -2.5);
    assert_true(metrics_counter_value(ev) == 3);
    assert_true(metrics_gauge_value(pending) == 7.5);
    expect_page("# HELP benefitd_reloads_total Rule reloads.\n"
                "# TYPE benefitd_reloads_total counter\n"
                "benefitd_reloads_total 3\n"
                "# HELP benefitd_pending_timers Timers waiting.\n"
                "# TYPE benefitd_pending_timers gauge\n"
                "benefitd_pending_timers 7.5\n");
}

static void test_labelled_children_sorted_and_cached(void **state) {
    metric_counter_t *grants =
        metrics_counter(reg, "benefitd_grants_total", "Grants pushed.", "rule", "channel", NULL);
    assert_non_null(grants);
    /* No child yet: the family is still listed, with no samples. */
    expect_page("# HELP benefitd_grants_total Grants pushed.\n"
                "# TYPE benefitd_grants_total counter\n");
    metric_counter_t *push = metrics_labels(grants, "vip-order", "push");
    metric_counter_t *email = metrics_labels(grants, "cart-abandon", "email");
    metric_counter_t *push2 = metrics_labels(grants, "cart-abandon", "push");
    assert_non_null(push);
    assert_ptr_not_equal(push, email);
    assert_ptr_equal(metrics_labels(grants, "vip-order", "push"), push);
    assert_ptr_equal(metrics_labels(grants, "cart-abandon", "push"), push2);
    metrics_counter_inc(push, 2);
    metrics_counter_inc(push2, 1);
    metrics_counter_inc(email, 0.25);
    expect_page("# HELP benefitd_grants_total Grants pushed.\n"
                "# TYPE benefitd_grants_total counter\n"
                "benefitd_grants_total{rule=\"cart-abandon\",channel=\"email\"} 0.25\n"
                "benefitd_grants_total{rule=\"cart-abandon\",channel=\"push\"} 1\n"
                "benefitd_grants_total{rule=\"vip-order\",channel=\"push\"} 2\n");
}

static void test_escaping(void **state) {
    metric_gauge_t *g = metrics_gauge(reg, "x_info", "Help with \\ backslash,\nnewline and \"quotes\".", "v",
                                      NULL);
    metrics_gauge_set(metrics_labels(g, "a\\b\"c\nd"), 1);
    metrics_gauge_set(metrics_labels(g, ""), 2);
    metrics_gauge_set(metrics_labels(g, "caf\xc3\xa9 {x=\"y\"}"), 3);
    expect_page("# HELP x_info Help with \\\\ backslash,\\nnewline and \"quotes\".\n"
                "# TYPE x_info gauge\n"
                "x_info{v=\"\"} 2\n"
                "x_info{v=\"a\\\\b\\\"c\\nd\"} 1\n"
                "x_info{v=\"caf\xc3\xa9 {x=\\\"y\\\"}\"} 3\n");
}

static void test_histogram_labelled(void **state) {
    static const double b[] = {0.005, 0.01, 0.5, 1, 2.5};
    metric_histogram_t *h = metrics_histogram(reg, "benefitd_redis_roundtrip_seconds", "Redis round trips.", b,
                                              5, "op", NULL);
    assert_non_null(h);
    metric_histogram_t *push = metrics_labels(h, "push");
    metric_histogram_t *claim = metrics_labels(h, "claim");
    metrics_histogram_observe(push, 0.001953125);
    metrics_histogram_observe(push, 0.5); /* le is inclusive */
    metrics_histogram_observe(push, 0.25);
    metrics_histogram_observe(push, 3);     /* past the last bound: +Inf only */
    metrics_histogram_observe(claim, 1);
    assert_int_equal(metrics_histogram_count(push), 4);
    assert_true(metrics_histogram_sum(push) == 3.751953125);
    expect_page("# HELP benefitd_redis_roundtrip_seconds Redis round trips.\n"
                "# TYPE benefitd_redis_roundtrip_seconds histogram\n"
                "benefitd_redis_roundtrip_seconds_bucket{op=\"claim\",le=\"0.005\"} 0\n"
                "benefitd_redis_roundtrip_seconds_bucket{op=\"claim\",le=\"0.01\"} 0\n"
                "benefitd_redis_roundtrip_seconds_bucket{op=\"claim\",le=\"0.5\"} 0\n"
                "benefitd_redis_roundtrip_seconds_bucket{op=\"claim\",le=\"1\"} 1\n"
                "benefitd_redis_roundtrip_seconds_bucket{op=\"claim\",le=\"2.5\"} 1\n"
                "benefitd_redis_roundtrip_seconds_bucket{op=\"claim\",le=\"+Inf\"} 1\n"
                "benefitd_redis_roundtrip_seconds_sum{op=\"claim\"} 1\n"
                "benefitd_redis_roundtrip_seconds_count{op=\"claim\"} 1\n"
                "benefitd_redis_roundtrip_seconds_bucket{op=\"push\",le=\"0.005\"} 1\n"
                "benefitd_redis_roundtrip_seconds_bucket{op=\"push\",le=\"0.01\"} 1\n"
                "benefitd_redis_roundtrip_seconds_bucket{op=\"push\",le=\"0.5\"} 3\n"
                "benefitd_redis_roundtrip_seconds_bucket{op=\"push\",le=\"1\"} 3\n"
                "benefitd_redis_roundtrip_seconds_bucket{op=\"push\",le=\"2.5\"} 3\n"
                "benefitd_redis_roundtrip_seconds_bucket{op=\"push\",le=\"+Inf\"} 4\n"
                "benefitd_redis_roundtrip_seconds_sum{op=\"push\"} 3.751953125\n"
                "benefitd_redis_roundtrip_seconds_count{op=\"push\"} 4\n");
}

static void test_histogram_unlabelled_default_buckets(void **state) {
    metric_histogram_t *h = metrics_histogram(reg, "rt_seconds", "RT.", metrics_latency_buckets,
                                              metrics_latency_nbuckets, NULL);
    assert_non_null(h);
    metrics_histogram_observe(h, 0.0003);
    metrics_histogram_observe(h, 0.00001);
    expect_page("# HELP rt_seconds RT.\n"
                "# TYPE rt_seconds histogram\n"
                "rt_seconds_bucket{le=\"0.0001\"} 1\n"
                "rt_seconds_bucket{le=\"0.00025\"} 1\n"
                "rt_seconds_bucket{le=\"0.0005\"} 2\n"
                "rt_seconds_bucket{le=\"0.001\"} 2\n"
                "rt_seconds_bucket{le=\"0.0025\"} 2\n"
                "rt_seconds_bucket{le=\"0.005\"} 2\n"
                "rt_seconds_bucket{le=\"0.01\"} 2\n"
                "rt_seconds_bucket{le=\"0.025\"} 2\n"
                "rt_seconds_bucket{le=\"0.05\"} 2\n"
                "rt_seconds_bucket{le=\"0.1\"} 2\n"
                "rt_seconds_bucket{le=\"0.25\"} 2\n"
                "rt_seconds_bucket{le=\"0.5\"} 2\n"
                "rt_seconds_bucket{le=\"1\"} 2\n"
                "rt_seconds_bucket{le=\"2.5\"} 2\n"
                "rt_seconds_bucket{le=\"+Inf\"} 2\n"
                "rt_seconds_sum 0.00031\n"
                "rt_seconds_count 2\n");
}

static void expect_num(double v, const char *want) {
    strbuf b;
    sb_init(&b);
    metrics_format_double(v, &b);
    assert_string_equal(b.s, want);
    sb_free(&b);
}

/* As Go's strconv.FormatFloat(v, 'g', -1, 64), the Go client's form. */
static void test_number_format(void **state) {
    expect_num(0, "0");
    expect_num(-0.0, "0");
    expect_num(1, "1");
    expect_num(-1, "-1");
    expect_num(0.1, "0.1");
    expect_num(2.5, "2.5");
    expect_num(1.0 / 3, "0.3333333333333333");
    expect_num(0.0001, "0.0001");
    expect_num(0.00001, "1e-05");
    expect_num(0.000015, "1.5e-05");
    expect_num(123456, "123456");
    expect_num(999999, "999999");
    expect_num(1000000, "1e+06");
    expect_num(1234567, "1.234567e+06");
    expect_num(-1234.5, "-1234.5");
    expect_num(1e21, "1e+21");
    expect_num(1.7976931348623157e308, "1.7976931348623157e+308");
    expect_num(5e-324, "5e-324");
    expect_num(9007199254740993.0, "9.007199254740992e+15");
    expect_num(NAN, "NaN");
    expect_num(INFINITY, "+Inf");
    expect_num(-INFINITY, "-Inf");
}

static void test_registration_errors(void **state) {
    static const double up[] = {1, 2}, down[] = {2, 1}, inf[] = {1, INFINITY};
    assert_non_null(metrics_counter(reg, "ok_total", "h", NULL));
    assert_null(metrics_counter(reg, "ok_total", "again", NULL));          /* duplicate */
    assert_null(metrics_gauge(reg, "ok_total", "other type", NULL));
    assert_null(metrics_counter(reg, "9starts_with_digit", "h", NULL));
    assert_null(metrics_counter(reg, "has-dash", "h", NULL));
    assert_null(metrics_counter(reg, "", "h", NULL));
    assert_null(metrics_counter(reg, "four", "h", "a", "b", "c", "d", NULL)); /* > 3 labels */
    assert_null(metrics_counter(reg, "badlabel", "h", "a:b", NULL));
    assert_null(metrics_counter(reg, "reserved", "h", "__name", NULL));
    assert_null(metrics_counter(reg, "dup_label", "h", "a", "a", NULL));
    assert_null(metrics_histogram(reg, "h_le", "h", up, 2, "le", NULL));
    assert_null(metrics_histogram(reg, "h_down", "h", down, 2, NULL));
    assert_null(metrics_histogram(reg, "h_inf", "h", inf, 2, NULL));
    assert_non_null(metrics_counter(reg, "colons:ok_total", "h", "le", NULL)); /* le is fine outside histograms */
    assert_non_null(metrics_histogram(reg, "h_none", "h", up, 0, NULL));         /* only +Inf */

    /* Wrong number of label values: NULL, and NULL handles are inert. */
    metric_counter_t *two = metrics_counter(reg, "two_total", "h", "a", "b", NULL);
    assert_null(metrics_labels(two, "x"));
    assert_null(metrics_labels(two, "x", "y", "z"));
    assert_null(metrics_labels(two, "x", NULL));
    metric_counter_t *none = NULL;
    assert_null(metrics_labels(none, "x"));
    metrics_counter_inc(NULL, 1);
    metrics_gauge_set(NULL, 1);
    metrics_gauge_add(NULL, 1);
    metrics_gauge_remove(NULL);
    metrics_histogram_observe(NULL, 1);
    assert_true(metrics_counter_value(NULL) == 0);
    /* Labels on an unlabelled family: refused. */
    metric_gauge_t *plain = metrics_gauge(reg, "plain", "h", NULL);
    assert_null(metrics_labels(plain, "x"));
}

static void gauge_remove_and_reset_cb(void *ud) {
    int *calls = ud;
    (*calls)++;
}

static void test_gauge_remove_and_collect(void **state) {
    metric_gauge_t *lag = metrics_gauge(reg, "benefitd_kafka_consumer_lag", "Lag.", "topic", "partition", NULL);
    metric_gauge_t *p0 = metrics_labels(lag, "events", "0");
    metric_gauge_t *p1 = metrics_labels(lag, "events", "1");
    metrics_gauge_set(p0, 5);
    metrics_gauge_set(p1, 7);
    metrics_gauge_remove(p0); /* partition 0 revoked */
    int calls = 0;
    metrics_on_collect(reg, gauge_remove_and_reset_cb, &calls);
    expect_page("# HELP benefitd_kafka_consumer_lag Lag.\n"
                "# TYPE benefitd_kafka_consumer_lag gauge\n"
                "benefitd_kafka_consumer_lag{topic=\"events\",partition=\"1\"} 7\n");
    assert_int_equal(calls, 1);
    metrics_gauge_add(p0, 2); /* assigned again: back on the page */
    expect_page("# HELP benefitd_kafka_consumer_lag Lag.\n"
                "# TYPE benefitd_kafka_consumer_lag gauge\n"
                "benefitd_kafka_consumer_lag{topic=\"events\",partition=\"0\"} 2\n"
                "benefitd_kafka_consumer_lag{topic=\"events\",partition=\"1\"} 7\n");
    assert_int_equal(calls, 2);
}

/* Many children: the index grows and every lookup still finds the same child. */
static void test_many_children(void **state) {
    metric_counter_t *c = metrics_counter(reg, "m_total", "h", "a", "b", "c", NULL);
    metric_counter_t *kids[600];
    char a[16], b[16];
    for (int i = 0; i < 600; i++) {
        snprintf(a, sizeof a, "r%03d", 599 - i);
        snprintf(b, sizeof b, "%d", i % 7);
        kids[i] = metrics_labels(c, a, b, "z");
        assert_non_null(kids[i]);
        metrics_counter_inc(kids[i], i);
    }
    for (int i = 0; i < 600; i++) {
        snprintf(a, sizeof a, "r%03d", 599 - i);
        snprintf(b, sizeof b, "%d", i % 7);
        assert_ptr_equal(metrics_labels(c, a, b, "z"), kids[i]);
        assert_true(metrics_counter_value(kids[i]) == i);
    }
    strbuf out;
    sb_init(&out);
    metrics_render(reg, &out);
    const char *first = strstr(out.s, "m_total{");
    assert_non_null(first);
    assert_memory_equal(first, "m_total{a=\"r000\",b=\"4\",c=\"z\"} 599\n", 34);
    /* the last child is the page's last line: nothing follows it */
    const char *tail = "m_total{a=\"r599\",b=\"0\",c=\"z\"} 0\n";
    const char *last = strstr(out.s, tail);
    assert_non_null(last);
    assert_string_equal(last + strlen(tail), "");
    sb_free(&out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_counter_and_gauge_unlabelled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_labelled_children_sorted_and_cached, setup, teardown),
        cmocka_unit_test_setup_teardown(test_escaping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_histogram_labelled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_histogram_unlabelled_default_buckets, setup, teardown),
        cmocka_unit_test(test_number_format),
        cmocka_unit_test_setup_teardown(test_registration_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gauge_remove_and_collect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_children, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
