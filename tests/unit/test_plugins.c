/* The plugin loader and host (daemon/enrich): what is refused and why, and
 * what a plugin's callbacks do to a member, through the same enrich step
 * replay and the daemon run. Fixture plugins: tests/unit/fixtures. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../daemon/core/config.h"
#include "../../daemon/core/util.h"
#include "../../daemon/enrich/enrich.h"
#include "../../daemon/policy/state.h"

static char fixtures[PATH_MAX];

static void cfg_with(config_t *c, const char *dir, const char *name, const char *json) {
    config_init_default(c);
    free(c->plugin_dir);
    c->plugin_dir = xstrdup(dir);
    c->plugins = xcalloc(1, sizeof *c->plugins);
    c->plugins[0].name = xstrdup(name);
    c->plugins[0].json = xstrdup(json);
    c->plugins[0].line = 7;
    c->plugins[0].col = 5;
    c->n_plugins = 1;
    c->path = xstrdup("benefitd.yaml");
}

/* Loads one plugin and expects it refused with a message containing want. */
static void expect_refused(const char *dir, const char *name, const char *json, const char *want) {
    config_t c;
    cfg_with(&c, dir, name, json);
    diag_t d;
    diag_init(&d);
    plugin_set_t s;
    assert_int_equal(plugins_load(&s, &c, &d), -1);
    assert_int_equal(d.n, 1);
    if (!strstr(d.msgs[0], want)) fail_msg("message '%s' lacks '%s'", d.msgs[0], want);
    /* located at the plugin's key in the config (the directory: at plugins.dir) */
    if (strncmp(want, "plugins.dir", 11) != 0) assert_non_null(strstr(d.msgs[0], "benefitd.yaml:7:5: plugin '"));
    else assert_non_null(strstr(d.msgs[0], "benefitd.yaml: plugins.dir: "));
    diag_free(&d);
    config_free(&c);
    assert_int_equal(s.n, 0);
}

static void test_refusals(void **state) {
    expect_refused(fixtures, "badver", "{}", "was built for plugin API version 2; this benefitd has version 1");
    expect_refused(fixtures, "nosym", "{}", "exports no 'benefitd_plugin' descriptor");
    expect_refused(fixtures, "initfail", "{}", "init failed: threshold missing");
    expect_refused(fixtures, "good", "{\"fail\":true}", "init failed: asked to fail");
    expect_refused(fixtures, "clash", "{}", "function 'floor' is already defined (built in)");
    expect_refused(fixtures, "absent", "{}", "absent.so: No such file or directory");
    expect_refused("/nonexistent-dir", "good", "{}", "plugins.dir: /nonexistent-dir: No such file");
}

static void copy_file(const char *from, const char *to, mode_t mode) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    assert_non_null(a);
    assert_non_null(b);
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0) assert_int_equal(fwrite(buf, 1, n, b), n);
    fclose(a);
    fclose(b);
    assert_int_equal(chmod(to, mode), 0);
}

/* Code others can replace is not loaded: a world-writable file or directory,
 * and a descriptor whose name is not the key that loads it. */
static void test_permissions_and_names(void **state) {
    char tmp[] = "/tmp/bd-plugins-XXXXXX";
    assert_non_null(mkdtemp(tmp));
    assert_int_equal(chmod(tmp, 0755), 0);
    char src[PATH_MAX + 16], dst[PATH_MAX + 32];
    snprintf(src, sizeof src, "%s/good.so", fixtures);
    snprintf(dst, sizeof dst, "%s/good.so", tmp);
    copy_file(src, dst, 0666);
    expect_refused(tmp, "good", "{}", "is writable by other users (mode 666): refused");
    assert_int_equal(chmod(dst, 0644), 0);
    assert_int_equal(chmod(tmp, 0777), 0);
    expect_refused(tmp, "good", "{}", "plugins.dir: ");
    assert_int_equal(chmod(tmp, 0755), 0);
    char other[PATH_MAX + 32];
    snprintf(other, sizeof other, "%s/other.so", tmp);
    copy_file(src, other, 0644);
    expect_refused(tmp, "other", "{}", "calls itself 'good', not 'other'");
    unlink(dst);
    unlink(other);
    rmdir(tmp);
}

typedef struct sink { int grants, explains; char reasons[256]; char events[256]; } sink;

static void on_intent(void *ud, const event_t *ev, const intent_t *in) {
    sink *s = ud;
    if (in->kind == INTENT_GRANT) s->grants++;
    if (in->kind == INTENT_EXPLAIN) {
        s->explains++;
        strncat(s->reasons, in->reason, sizeof s->reasons - strlen(s->reasons) - 2);
        strcat(s->reasons, ";");
    }
    if (in->kind == INTENT_GRANT || in->kind == INTENT_EXPLAIN) {
        strncat(s->events, ev->name, sizeof s->events - strlen(s->events) - 2);
        strcat(s->events, ";");
    }
}

static void decode(const char *json, event_t *ev) {
    decoder_t d;
    decoder_init_default(&d);
    char reason[128];
    assert_int_equal(decode_event(&d, json, strlen(json), 0, ev, reason, sizeof reason), 0);
}

/* The good fixture through the enrich step: traits, the emitted event decided
 * by a rule, its function in a rule, blocks and revisits handed back. */
static void test_enrich_runs_plugins(void **state) {
    config_t c;
    cfg_with(&c, fixtures, "good", "{\"x\":1}");
    diag_t d;
    diag_init(&d);
    enrich_t en;
    assert_int_equal(enrich_init(&en, &c, 0, &d), 0);
    assert_int_equal(en.plugins.n, 1);
    int (*inits)(void) = (int (*)(void))dlsym(en.plugins.p[0].handle, "fixture_inits");
    assert_non_null(inits);
    const char *rules = "id: on-second\n"
                        "trigger: {event: Second Event}\n"
                        "audience: double_it(user.seen) == 4\n"
                        "grant: {benefit: points, value: \"double_it(properties.n)\"}\n";
    ruleset_t *rs = ruleset_load_string_ex("r.yaml", rules, strlen(rules), "UTC", RULES_ALLOW_TIME, &d);
    if (!rs) diag_print(&d, stderr);
    assert_non_null(rs);
    assert_true(enrich_needs_profile(&en, rs));
    engine_t eng;
    engine_init(&eng);
    bd_clock_t clk;
    clock_init_virtual(&clk, 0);
    sink s = {0};
    const char *evs[] = {
        "{\"type\":\"track\",\"event\":\"View\",\"userId\":\"u1\",\"messageId\":\"a\",\"timestamp\":1000}",
        "{\"type\":\"track\",\"event\":\"View\",\"userId\":\"u1\",\"messageId\":\"b\",\"timestamp\":2000,"
        "\"context\":{\"device\":{\"id\":\"evil\"}}}",
    };
    plugin_run_t run;
    for (int i = 0; i < 2; i++) {
        event_t ev;
        decode(evs[i], &ev);
        clock_set(&clk, ev.ts_ms);
        enrich_decide(&en, profile_get(&en.cache, "u1"), &ev, &clk, &eng, rs, on_intent, &s, &run);
        if (i == 0) {
            assert_int_equal(run.n_emits, 0);
            assert_int_equal(run.n_revisits, 1);
            assert_int_equal(run.revisits[0].due_ms, 2000);
            plugin_run_free(&run);
        }
        event_clear(&ev);
    }
    /* the 2nd event emitted "Second Event": decided by the rule, whose
     * audience (seen == 2, doubled) held and whose value doubled n */
    assert_int_equal(run.n_emits, 1);
    assert_string_equal(run.emits[0].name, "Second Event");
    assert_string_equal(run.emits[0].tag, "second:2000");
    assert_int_equal(s.grants, 1);
    assert_string_equal(s.events, "Second Event;");
    assert_int_equal(run.n_blocks, 1);
    assert_string_equal(run.blocks[0].kind, "device");
    assert_string_equal(run.blocks[0].id, "evil");
    profile_t *p = profile_find(&en.cache, "u1");
    assert_non_null(p);
    assert_int_equal(cJSON_GetObjectItem(p->traits, "seen")->valuedouble, 2);
    plugin_run_free(&run);
    /* a revisit: the plugin sees the due time as now */
    enrich_revisit(&en, p, "good", 3000, &clk, &eng, rs, on_intent, &s, &run);
    assert_int_equal(cJSON_GetObjectItem(p->traits, "revisited")->valuedouble, 3000);
    plugin_run_free(&run);
    /* dirty traits are handed over once */
    assert_true(profile_take_dirty(p, NULL, NULL) >= 2);
    assert_int_equal(profile_take_dirty(p, NULL, NULL), 0);
    assert_int_equal(inits(), 1);
    /* on_grant: the recipient, the time, the grant's ids */
    assert_true(en.plugins.any_on_grant);
    char *gj = plugin_grant_json("g1", "on-second", "u1", NULL);
    plugins_on_grant(&en.plugins, "u1", 4000, gj);
    free(gj);
    const char *(*last)(void) = (const char *(*)(void))dlsym(en.plugins.p[0].handle, "fixture_last_grant");
    assert_non_null(last);
    assert_string_equal(last(), "u1 4000 {\"grant_id\":\"g1\",\"rule\":\"on-second\",\"user_id\":\"u1\",\"channel\":\"default\"}");
    ruleset_free(rs);
    engine_free(&eng);
    enrich_free(&en);
    diag_free(&d);
    config_free(&c);
}

/* The profile cache stays under its bound, evicting the least recently used
 * and never what is pinned. */
static void test_profile_cache_bound(void **state) {
    profile_cache_t c;
    profile_cache_init(&c, 64 * 1024);
    profile_t *pinned = profile_add(&c, "pinned", PROFILE_READY);
    pinned->pins = 1;
    char u[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(u, sizeof u, "m%d", i);
        profile_t *p = profile_get(&c, u);
        cJSON *t = cJSON_Parse("{\"tier\":\"gold\",\"city\":\"Lyon\"}");
        profile_merge(&c, p, t);
        cJSON_Delete(t);
        profile_take_dirty(p, NULL, NULL);
        assert_true(c.bytes <= c.max_bytes + 2048);
    }
    assert_true(c.evictions > 4000);
    assert_non_null(profile_find(&c, "pinned"));
    assert_non_null(profile_find(&c, "m4999"));
    assert_null(profile_find(&c, "m0"));
    pinned->pins = 0;
    profile_cache_free(&c);
}

/* HGETALL's pairs: JSON values parsed, a non-JSON value kept as a string,
 * a trait changed while loading not overwritten. */
static void test_profile_load_pairs(void **state) {
    profile_cache_t c;
    profile_cache_init(&c, 0);
    profile_t *p = profile_add(&c, "u", PROFILE_LOADING);
    profile_set(&c, p, "tier", cJSON_CreateString("new"));
    const char *f[] = {"tier", "spend", "name"};
    const char *v[] = {"\"old\"", "1250.5", "not json"};
    size_t fl[] = {4, 5, 4}, vl[] = {5, 6, 8};
    profile_load_pairs(&c, p, 3, f, fl, v, vl);
    assert_int_equal(p->state, PROFILE_READY);
    assert_string_equal(cJSON_GetObjectItem(p->traits, "tier")->valuestring, "new");
    assert_true(cJSON_GetObjectItem(p->traits, "spend")->valuedouble == 1250.5);
    assert_string_equal(cJSON_GetObjectItem(p->traits, "name")->valuestring, "not json");
    profile_cache_free(&c);
}

int main(int argc, char **argv) {
    char self[PATH_MAX];
    snprintf(self, sizeof self, "%s", argv[0]);
    snprintf(fixtures, sizeof fixtures, "%s/fixtures", dirname(self));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_permissions_and_names),
        cmocka_unit_test(test_enrich_runs_plugins),
        cmocka_unit_test(test_profile_cache_bound),
        cmocka_unit_test(test_profile_load_pairs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
