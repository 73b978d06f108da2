/* test_config.c - etc/benefitd.yaml: defaults, overrides, located errors. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../daemon/core/config.h"
#include "../../daemon/core/util.h"

/* Each test works in its own temporary directory, removed afterwards. */
typedef struct fixture {
    char dir[64];
    config_t c;
    diag_t d;
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    strcpy(f->dir, "/tmp/bd-config-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    config_init_default(&f->c);
    diag_init(&f->d);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    config_free(&f->c);
    diag_free(&f->d);
    free(f);
    return 0;
}

/* Writes name (relative to the fixture dir, subdirectories created) and
 * returns its path in a static buffer. */
static const char *write_file(fixture *f, const char *name, const char *text) {
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", f->dir, name);
    char *slash = strrchr(path, '/');
    *slash = '\0';
    char cmd[300];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", path);
    assert_int_equal(system(cmd), 0);
    *slash = '/';
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
    return path;
}

static int load(fixture *f, const char *text) {
    return config_load(&f->c, write_file(f, "benefitd.yaml", text), &f->d);
}

/* The only error, or a failure naming all of them. */
static void assert_one_error(fixture *f, const char *fmt, ...) {
    char want[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(want, sizeof want, fmt, ap);
    va_end(ap);
    if (f->d.n != 1) diag_print(&f->d, stderr);
    assert_int_equal(f->d.n, 1);
    assert_string_equal(f->d.msgs[0], want);
}

static void test_defaults(void **state) {
    fixture *f = *state;
    config_t *c = &f->c;
    assert_null(c->path);
    assert_string_equal(c->brokers, "127.0.0.1:9092");
    assert_int_equal(c->n_topics, 1);
    assert_string_equal(c->topics[0], "events");
    assert_string_equal(c->group_id, "benefitd");
    assert_int_equal(c->n_kafka_props, 1);
    assert_string_equal(c->kafka_props[0].key, "auto.offset.reset");
    assert_string_equal(c->kafka_props[0].value, "earliest");
    assert_string_equal(c->redis_host, "127.0.0.1");
    assert_int_equal(c->redis_port, 6379);
    assert_null(c->redis_password);
    assert_int_equal(c->redis_db, 0);
    assert_string_equal(c->key_prefix, "bd:");
    assert_int_equal(c->claim_ttl_ms, 30LL * 86400000);
    assert_int_equal(c->max_inflight, 10000);
    assert_string_equal(c->rules_dir, "rules");
    assert_string_equal(c->timezone, "UTC");
    assert_int_equal(c->n_channels, 1);
    assert_string_equal(c->channels[0].name, "*");
    assert_int_equal(c->channels[0].kind, OUT_STREAM);
    assert_string_equal(c->channels[0].key, "{prefix}grants:{channel}");
    assert_int_equal(c->channels[0].maxlen, 0);
    assert_string_equal(c->dead_letter_key, "bd:deadletter");
    assert_int_equal(c->dead_letter_maxlen, 100000);
    assert_int_equal(c->decoder.max_bytes, 65536);
    assert_int_equal(c->decoder.max_depth, 32);
    assert_string_equal(c->decoder.map.user_id, "userId");
    assert_null(c->decoder.map.default_type);
    assert_int_equal(c->allow_root, 0);
    assert_int_equal(c->shutdown_timeout_ms, 10000);
    assert_int_equal(c->http_enabled, 1);
    assert_string_equal(c->http_bind, "127.0.0.1");
    assert_int_equal(c->http_port, 9464);
    assert_int_equal(c->http_allow_remote, 0);
    /* any channel falls back to the default */
    assert_ptr_equal(config_channel(c, "push"), &c->channels[0]);
    assert_ptr_equal(config_channel(c, NULL), &c->channels[0]);
}

static void test_empty_file_keeps_defaults(void **state) {
    fixture *f = *state;
    assert_int_equal(load(f, "# nothing set\n"), 0);
    assert_int_equal(f->d.n, 0);
    assert_string_equal(f->c.brokers, "127.0.0.1:9092");
    assert_string_equal(f->c.dead_letter_key, "bd:deadletter");
    assert_non_null(f->c.path);
}

static void test_overrides(void **state) {
    fixture *f = *state;
    int rc = load(f, "kafka:\n"
                     "  brokers: k1:9092,k2:9092\n"
                     "  topics: shop-events\n"
                     "  group_id: benefitd-eu\n"
                     "  properties:\n"
                     "    auto.offset.reset: latest\n"
                     "    fetch.wait.max.ms: 50\n"
                     "    enable.partition.eof: false\n"
                     "redis:\n"
                     "  host: redis.internal\n"
                     "  port: 6380\n"
                     "  password: hunter2\n"
                     "  db: 3\n"
                     "  key_prefix: \"shop:\"\n"
                     "  claim_ttl: 7d\n"
                     "  max_inflight: 500\n"
                     "rules:\n"
                     "  dir: /srv/rules\n"
                     "  timezone: UTC\n"
                     "output:\n"
                     "  channels:\n"
                     "    push: {kind: list}\n"
                     "    email: {maxlen: 1000}\n"
                     "  default: {key: \"{prefix}out:{channel}\", maxlen: 5000}\n"
                     "dead_letter: {key: \"{prefix}dlq\", maxlen: 10}\n"
                     "decode:\n"
                     "  max_event_bytes: 1024\n"
                     "  max_depth: 8\n"
                     "  default_type: track\n"
                     "  fields: {user_id: meta.user.id, event: name}\n"
                     "daemon: {allow_root: true, shutdown_timeout: 30s}\n");
    diag_print(&f->d, stderr);
    assert_int_equal(rc, 0);
    config_t *c = &f->c;
    assert_string_equal(c->brokers, "k1:9092,k2:9092");
    assert_int_equal(c->n_topics, 1);
    assert_string_equal(c->topics[0], "shop-events");
    assert_string_equal(c->group_id, "benefitd-eu");
    assert_int_equal(c->n_kafka_props, 3);
    assert_string_equal(c->kafka_props[0].key, "auto.offset.reset");
    assert_string_equal(c->kafka_props[0].value, "latest");
    assert_string_equal(c->kafka_props[1].key, "fetch.wait.max.ms");
    assert_string_equal(c->kafka_props[1].value, "50");
    assert_string_equal(c->kafka_props[2].value, "false");
    assert_string_equal(c->redis_host, "redis.internal");
    assert_int_equal(c->redis_port, 6380);
    assert_string_equal(c->redis_password, "hunter2");
    assert_int_equal(c->redis_db, 3);
    assert_string_equal(c->key_prefix, "shop:");
    assert_int_equal(c->claim_ttl_ms, 7LL * 86400000);
    assert_int_equal(c->max_inflight, 500);
    assert_string_equal(c->rules_dir, "/srv/rules");
    /* the prefix set in redis applies to the dead-letter key */
    assert_string_equal(c->dead_letter_key, "shop:dlq");
    assert_int_equal(c->dead_letter_maxlen, 10);
    /* channels inherit the default's fields, even when it is written after them */
    const channel_cfg_t *push = config_channel(c, "push"), *email = config_channel(c, "email");
    assert_string_equal(push->name, "push");
    assert_int_equal(push->kind, OUT_LIST);
    assert_string_equal(push->key, "{prefix}out:{channel}");
    assert_int_equal(push->maxlen, 5000);
    assert_int_equal(email->kind, OUT_STREAM);
    assert_int_equal(email->maxlen, 1000);
    assert_string_equal(config_channel(c, "sms")->name, "*");
    assert_int_equal(c->decoder.max_bytes, 1024);
    assert_int_equal(c->decoder.max_depth, 8);
    assert_string_equal(c->decoder.map.default_type, "track");
    assert_string_equal(c->decoder.map.user_id, "meta.user.id");
    assert_string_equal(c->decoder.map.event, "name");
    assert_string_equal(c->decoder.map.anonymous_id, "anonymousId");
    assert_int_equal(c->allow_root, 1);
    assert_int_equal(c->shutdown_timeout_ms, 30000);
}

static void test_topic_list(void **state) {
    fixture *f = *state;
    assert_int_equal(load(f, "kafka: {topics: [a, b, c]}\n"), 0);
    assert_int_equal(f->c.n_topics, 3);
    assert_string_equal(f->c.topics[2], "c");
}

static void test_http(void **state) {
    fixture *f = *state;
    assert_int_equal(load(f, "http: {enabled: true, bind: \"::1\", port: 0}\n"), 0);
    assert_int_equal(f->c.http_enabled, 1);
    assert_string_equal(f->c.http_bind, "::1");
    assert_int_equal(f->c.http_port, 0);
}

static void test_http_remote_needs_allow_remote(void **state) {
    fixture *f = *state;
    assert_int_equal(load(f, "daemon: {allow_root: false}\nhttp:\n  port: 9500\n  bind: 0.0.0.0\n"), -1);
    assert_one_error(f,
                     "%s/benefitd.yaml:4:9: http bind address '0.0.0.0' is not loopback; set "
                     "http.allow_remote: true to expose metrics and health off this host",
                     f->dir);
}

static void test_http_remote_allowed(void **state) {
    fixture *f = *state;
    assert_int_equal(load(f, "http: {bind: 0.0.0.0, allow_remote: true, port: 9500}\n"), 0);
    assert_int_equal(f->c.http_allow_remote, 1);
    assert_string_equal(f->c.http_bind, "0.0.0.0");
    /* disabled: the address is not used, so not checked */
    config_free(&f->c);
    config_init_default(&f->c);
    assert_int_equal(load(f, "http: {enabled: false, bind: 0.0.0.0}\n"), 0);
}

static void test_http_bad_values(void **state) {
    fixture *f = *state;
    assert_int_equal(load(f, "http: {port: 70000, enabled: maybe, bnd: x}\n"), -1);
    assert_int_equal(f->d.n, 3);
}

static void test_unknown_key_suggests(void **state) {
    fixture *f = *state;
    assert_int_equal(load(f, "redis:\n  host: x\n  prot: 6380\n"), -1);
    assert_one_error(f, "%s/benefitd.yaml:3:3: unknown key 'prot' (did you mean 'port'?)", f->dir);
}

static void test_unknown_top_key(void **state) {
    fixture *f = *state;
    assert_int_equal(load(f, "kafak:\n  brokers: x\n"), -1);
    assert_one_error(f, "%s/benefitd.yaml:1:1: unknown key 'kafak' (did you mean 'kafka'?)", f->dir);
}

static void test_errors_are_collected(void **state) {
    fixture *f = *state;
    assert_int_equal(load(f, "redis:\n"
                             "  port: 70000\n"
                             "  claim_ttl: forever\n"
                             "output:\n"
                             "  default: {kind: queue}\n"
                             "  channels:\n"
                             "    push: {key: \"{prefix}q:{chanel}\"}\n"
                             "daemon: {allow_root: maybe}\n"),
                     -1);
    const char *want[] = {
        "2:9: 'port' must be between 1 and 65535",
        "3:14: 'claim_ttl' must be a duration like 90s, 30m, 12h, 7d, 2w",
        "5:19: 'kind' must be stream or list",
        "7:17: unknown placeholder '{chanel}' in 'key' (known: {prefix}, {channel})",
        "8:22: 'allow_root' must be true or false",
    };
    if (f->d.n != 5) diag_print(&f->d, stderr);
    assert_int_equal(f->d.n, 5);
    for (size_t i = 0; i < 5; i++) {
        char full[512];
        snprintf(full, sizeof full, "%s/benefitd.yaml:%s", f->dir, want[i]);
        assert_string_equal(f->d.msgs[i], full);
    }
}

static void test_password_file(void **state) {
    fixture *f = *state;
    write_file(f, "secrets/redis.pw", "  s3cret  \nsecond line ignored\n");
    assert_int_equal(load(f, "redis:\n  password_file: secrets/redis.pw\n"), 0);
    assert_string_equal(f->c.redis_password, "s3cret");
}

static void test_password_file_missing(void **state) {
    fixture *f = *state;
    assert_int_equal(load(f, "redis:\n  password_file: nope.pw\n"), -1);
    assert_one_error(f, "%s/benefitd.yaml:2:18: cannot read password_file '%s/nope.pw': No such file or directory",
                     f->dir, f->dir);
}

static void test_password_env(void **state) {
    fixture *f = *state;
    setenv("BD_TEST_REDIS_PW", "from-env", 1);
    assert_int_equal(load(f, "redis: {password_env: BD_TEST_REDIS_PW}\n"), 0);
    assert_string_equal(f->c.redis_password, "from-env");
    unsetenv("BD_TEST_REDIS_PW");
}

static void test_password_sources_exclusive(void **state) {
    fixture *f = *state;
    assert_int_equal(load(f, "redis:\n  password: a\n  password_env: B\n"), -1);
    assert_one_error(f, "%s/benefitd.yaml:3:3: use only one of 'password', 'password_file' and 'password_env'",
                     f->dir);
}

static void test_channel_key_expansion(void **state) {
    fixture *f = *state;
    assert_int_equal(load(f, "redis: {key_prefix: \"shop:\"}\n"
                             "output:\n"
                             "  channels:\n"
                             "    push: {kind: list, key: \"{prefix}queue:{channel}\"}\n"),
                     0);
    strbuf b;
    sb_init(&b);
    config_channel_key(&f->c, config_channel(&f->c, "push"), "push", &b);
    assert_string_equal(b.s, "shop:queue:push");
    sb_reset(&b);
    config_channel_key(&f->c, config_channel(&f->c, "email"), "email", &b);
    assert_string_equal(b.s, "shop:grants:email");
    sb_reset(&b);
    config_channel_key(&f->c, config_channel(&f->c, NULL), NULL, &b);
    assert_string_equal(b.s, "shop:grants:default");
    sb_free(&b);
}

static void test_relative_rules_dir(void **state) {
    fixture *f = *state;
    const char *path = write_file(f, "etc/benefitd.yaml", "rules: {dir: ../rules}\n");
    assert_int_equal(config_load(&f->c, path, &f->d), 0);
    char want[256];
    snprintf(want, sizeof want, "%s/etc/../rules", f->dir);
    assert_string_equal(f->c.rules_dir, want);
}

static void test_default_rules_dir_beside_config(void **state) {
    fixture *f = *state;
    const char *path = write_file(f, "etc/benefitd.yaml", "redis: {db: 1}\n");
    assert_int_equal(config_load(&f->c, path, &f->d), 0);
    char want[256];
    snprintf(want, sizeof want, "%s/etc/rules", f->dir);
    assert_string_equal(f->c.rules_dir, want);
}

static void test_unknown_timezone(void **state) {
    fixture *f = *state;
    if (access("/usr/share/zoneinfo/Europe/Paris", R_OK) != 0) skip();
    assert_int_equal(load(f, "rules: {timezone: Europe/Pariss}\n"), -1);
    assert_one_error(f, "%s/benefitd.yaml:1:19: unknown timezone 'Europe/Pariss' (use an IANA name like Europe/Paris)",
                     f->dir);
    diag_free(&f->d);
    assert_int_equal(load(f, "rules: {timezone: Europe/Paris}\n"), 0);
    assert_string_equal(f->c.timezone, "Europe/Paris");
}

/* Daemon-wide policy at the top level (rules-format.md): frequency_cap,
 * quiet_hours, timezone (an alias of rules.timezone), pools' low stock. */
static void test_policy_keys(void **state) {
    fixture *f = *state;
    assert_int_equal(f->c.fcap_count, 0);
    assert_int_equal(f->c.quiet_start_min, -1);
    assert_int_equal(config_pool_low_stock(&f->c, "any"), 100);
    assert_int_equal(load(f, "frequency_cap: 3/1d\nquiet_hours: 22:00-08:30\ntimezone: UTC\n"
                             "pools: {vip: {low_stock: 5}, '*': {low_stock: 50}}\n"), 0);
    assert_int_equal(f->c.fcap_count, 3);
    assert_int_equal(f->c.fcap_period_ms, 86400000LL);
    assert_int_equal(f->c.quiet_start_min, 22 * 60);
    assert_int_equal(f->c.quiet_end_min, 8 * 60 + 30);
    assert_int_equal(config_pool_low_stock(&f->c, "vip"), 5);
    assert_int_equal(config_pool_low_stock(&f->c, "other"), 50);
    diag_free(&f->d);
    assert_int_equal(load(f, "quiet_hours: 22:00-22:00\n"), -1);
    assert_one_error(f, "%s/benefitd.yaml:1:14: 'quiet_hours' starts and ends at the same time", f->dir);
    diag_free(&f->d);
    assert_int_equal(load(f, "quiet_hours: 25:00-08:00\n"), -1);
    assert_one_error(f, "%s/benefitd.yaml:1:14: 'quiet_hours' must be HH:MM-HH:MM, e.g. 22:00-08:00", f->dir);
    diag_free(&f->d);
    assert_int_equal(load(f, "frequency_cap: often\n"), -1);
    assert_one_error(f, "%s/benefitd.yaml:1:16: 'frequency_cap' must be a rate N/duration, e.g. 3/1d", f->dir);
    diag_free(&f->d);
    assert_int_equal(load(f, "timezone: UTC\nrules: {timezone: UTC}\n"), -1);
    assert_one_error(f, "%s/benefitd.yaml:2:19: 'timezone' is set twice (top level and rules.timezone): keep one",
                     f->dir);
}

/* loop: the closed loop's event names and attribution window. */
static void test_loop_keys(void **state) {
    fixture *f = *state;
    assert_int_equal(f->c.n_loop_redeem, 2);
    assert_string_equal(f->c.loop_redeem[0], "Coupon Redeemed");
    assert_string_equal(f->c.loop_redeem[1], "Benefit Redeemed");
    assert_int_equal(f->c.n_loop_convert, 1);
    assert_string_equal(f->c.loop_convert[0], "Order Completed");
    assert_int_equal(f->c.loop_window_ms, 7 * 86400000LL);
    assert_int_equal(load(f, "loop: {redemption_events: Voucher Used, conversion_events: [Purchase, Subscribed],\n"
                             "       attribution_window: 30d}\n"), 0);
    assert_int_equal(f->c.n_loop_redeem, 1);
    assert_string_equal(f->c.loop_redeem[0], "Voucher Used");
    assert_int_equal(f->c.n_loop_convert, 2);
    assert_string_equal(f->c.loop_convert[1], "Subscribed");
    assert_int_equal(f->c.loop_window_ms, 30 * 86400000LL);
    assert_int_equal(load(f, "loop: {conversion_events: []}\n"), 0);
    assert_int_equal(f->c.n_loop_convert, 0);
    diag_free(&f->d);
    assert_int_equal(load(f, "loop: {redemption_events: {a: b}}\n"), -1);
    assert_one_error(f, "%s/benefitd.yaml:1:27: 'redemption_events' must be an event name or a list of event names",
                     f->dir);
    diag_free(&f->d);
    assert_int_equal(load(f, "loop: {attribution_window: 0s}\n"), -1);
    assert_int_equal(f->d.n, 1);
}

static void test_default_type_null(void **state) {
    fixture *f = *state;
    assert_int_equal(load(f, "decode: {default_type: null}\n"), 0);
    assert_null(f->c.decoder.map.default_type);
}

/* The sample shipped in etc/ must load as is (tests run from the repo root). */
static void test_sample_config(void **state) {
    fixture *f = *state;
    int rc = config_load(&f->c, "etc/benefitd.yaml", &f->d);
    diag_print(&f->d, stderr);
    assert_int_equal(rc, 0);
    assert_string_equal(f->c.rules_dir, "etc/../rules");
    assert_int_equal(config_channel(&f->c, "push")->kind, OUT_LIST);
    assert_null(f->c.redis_password);
    assert_null(f->c.decoder.map.default_type);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_policy_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_file_keeps_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overrides, setup, teardown),
        cmocka_unit_test_setup_teardown(test_topic_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_key_suggests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_top_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors_are_collected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_password_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_password_file_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_password_env, setup, teardown),
        cmocka_unit_test_setup_teardown(test_password_sources_exclusive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_channel_key_expansion, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relative_rules_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_default_rules_dir_beside_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_timezone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_default_type_null, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loop_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sample_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_remote_needs_allow_remote, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_remote_allowed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_bad_values, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
