/* test_expr.c - the rule expression language and message templates. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../daemon/core/util.h"
#include "../../daemon/rules/expr.h"
#include "../../daemon/rules/template.h"

static const char *EVENT_JSON =
    "{\"type\":\"track\",\"event\":\"Cart Abandoned\",\"userId\":\"u-42\",\"messageId\":\"m-1\","
    "\"ts\":1764066600000,"
    "\"properties\":{\"name\":\"Blue Shoes\",\"total\":129.5,\"qty\":3,\"zero\":0,"
    "\"tags\":[\"sale\",\"new\"],\"codes\":[1,2,3],\"flag\":true,\"nothing\":null,"
    "\"Brand\":\"ACME Corp\",\"empty\":\"\",\"nested\":{\"a\":{\"b\":7}},\"in\":\"kw\",\"obj\":{}},"
    "\"context\":{\"ip\":\"10.0.0.1\",\"device\":{\"id\":\"dev-9\",\"type\":\"ios\"}},"
    "\"traits\":{\"tier\":\"gold\",\"email\":\"x@y.z\"},"
    "\"profile\":{\"tier\":\"platinum\",\"points\":1200}}";

static event_t ev;
static expr_arena_t arena;
static eval_ctx_t ctx;

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(j) ? j->valuestring : NULL;
}

/* Builds the event by hand, as the decoder would, with the member profile
 * taken from "profile" (a test-only key). */
static int setup(void **state) {
    memset(&ev, 0, sizeof ev);
    ev.root = cJSON_Parse(EVENT_JSON);
    if (!ev.root) return -1;
    ev.type = jstr(ev.root, "type");
    ev.name = jstr(ev.root, "event");
    ev.user_id = jstr(ev.root, "userId");
    snprintf(ev.message_id, sizeof ev.message_id, "%s", jstr(ev.root, "messageId"));
    ev.ts_ms = (int64_t)cJSON_GetObjectItemCaseSensitive(ev.root, "ts")->valuedouble;
    ev.properties = cJSON_GetObjectItemCaseSensitive(ev.root, "properties");
    ev.context = cJSON_GetObjectItemCaseSensitive(ev.root, "context");
    ev.traits = cJSON_GetObjectItemCaseSensitive(ev.root, "traits");
    ev.user = cJSON_GetObjectItemCaseSensitive(ev.root, "profile");
    memset(&arena, 0, sizeof arena);
    ctx.ev = &ev;
    ctx.arena = &arena;
    return 0;
}

static int teardown(void **state) {
    cJSON_Delete(ev.root);
    expr_arena_free(&arena);
    return 0;
}

static expr_t *compile_ok(const char *src) {
    char err[256] = "";
    size_t off = 12345;
    expr_t *e = expr_compile(src, &off, err, sizeof err);
    if (!e) fail_msg("compile of <%s> failed at %zu: %s", src, off, err);
    return e;
}

static value_t run(const char *src, expr_t **keep) {
    expr_t *e = compile_ok(src);
    *keep = e;
    return expr_eval(e, &ctx);
}

static void check_num(const char *src, double want) {
    expr_t *e;
    value_t v = run(src, &e);
    if (v.k != V_NUM || fabs(v.n - want) > 1e-9) fail_msg("<%s>: kind %d n=%g, want %g", src, v.k, v.n, want);
    expr_free(e);
}

static void check_bool(const char *src, int want) {
    expr_t *e;
    value_t v = run(src, &e);
    if (v.k != V_BOOL || v.b != want) fail_msg("<%s>: kind %d b=%d, want bool %d", src, v.k, v.b, want);
    if (expr_test(e, &ctx) != want) fail_msg("<%s>: expr_test disagrees", src);
    expr_free(e);
}

static void check_str(const char *src, const char *want) {
    expr_t *e;
    value_t v = run(src, &e);
    if (v.k != V_STR || v.len != strlen(want) || memcmp(v.s, want, v.len) != 0)
        fail_msg("<%s>: kind %d '%.*s', want '%s'", src, v.k, v.k == V_STR ? (int)v.len : 0,
                 v.k == V_STR ? v.s : "", want);
    expr_free(e);
}

static void check_kind(const char *src, vkind want) {
    expr_t *e;
    value_t v = run(src, &e);
    if (v.k != want) fail_msg("<%s>: kind %d, want %d", src, v.k, want);
    expr_free(e);
}

static void check_json(const char *src, const char *want) {
    expr_t *e;
    value_t v = run(src, &e);
    strbuf b;
    sb_init(&b);
    value_to_json(&v, &b);
    if (strcmp(b.s ? b.s : "", want) != 0) fail_msg("<%s>: json %s, want %s", src, b.s, want);
    sb_free(&b);
    expr_free(e);
}

static void check_text(const char *src, const char *want) {
    expr_t *e;
    value_t v = run(src, &e);
    strbuf b;
    sb_init(&b);
    value_to_text(&v, &b);
    if (strcmp(b.s ? b.s : "", want) != 0) fail_msg("<%s>: text '%s', want '%s'", src, b.s ? b.s : "", want);
    sb_free(&b);
    expr_free(e);
}

static void check_err(const char *src, size_t want_off, const char *want_msg) {
    char err[256] = "";
    size_t off = 12345;
    expr_t *e = expr_compile(src, &off, err, sizeof err);
    if (e) {
        expr_free(e);
        fail_msg("<%s>: compiled, want error '%s'", src, want_msg);
    }
    if (off != want_off || strcmp(err, want_msg) != 0)
        fail_msg("<%s>: error at %zu '%s', want at %zu '%s'", src, off, err, want_off, want_msg);
}

/* ------------------------------------------------------------------ tests */

static void test_arithmetic(void **state) {
    check_num("1 + 2 * 3", 7);
    check_num("(1 + 2) * 3", 9);
    check_num("10 / 4", 2.5);
    check_num("7 - 2 - 1", 4);
    check_num("8 / 2 / 2", 2);
    check_num("2 * -3", -6);
    check_num("- -4", 4);
    check_num("-2 * 3 + 1", -5);
    check_num("1.5e2", 150);
    check_num("0.25", 0.25);
    check_num("properties.total * 2", 259);
    check_num("-properties.qty", -3);
    check_num("properties.qty * properties.total - 0.5", 388);
    check_num("properties.nested.a.b + 1", 8);
}

static void test_comparisons(void **state) {
    check_bool("properties.qty == 3", 1);
    check_bool("properties.qty != 3", 0);
    check_bool("properties.qty == 3.0", 1);
    check_bool("properties.total > 100", 1);
    check_bool("properties.total <= 129.5", 1);
    check_bool("properties.total < 129.5", 0);
    check_bool("properties.total >= 130", 0);
    check_bool("'abc' < 'abd'", 1);
    check_bool("'ab' < 'abc'", 1);
    check_bool("'b' > 'abc'", 1);
    check_bool("properties.name == 'Blue Shoes'", 1);
    check_bool("properties.name == \"Blue Shoes\"", 1);
    check_bool("properties.name == 'blue shoes'", 0);
    /* different types are unequal, never coerced */
    check_bool("properties.qty == '3'", 0);
    check_bool("properties.qty != '3'", 1);
    check_bool("1 < 'a'", 0);
    check_bool("1 >= 'a'", 0);
    check_bool("true == true", 1);
    check_bool("true != false", 1);
    check_bool("properties.flag == true", 1);
    check_bool("properties.nothing == null", 1);
    check_bool("null == null", 1);
    check_bool("null == 0", 0);
    check_bool("properties.empty == ''", 1);
    check_bool("[1, 'a'] == [1, 'a']", 1);
    check_bool("[1, 'a'] == [1, 'b']", 0);
    check_bool("properties.obj == properties.obj", 1);
}

/* With a memo, paths read by several expressions (and paths that differ
 * only in root or depth) give what they give without one; past its
 * capacity the memo simply stops remembering. */
static void test_path_memo(void **state) {
    static const char *const srcs[] = {
        "properties.total >= 100", "properties.total < 100", "properties.qty", "traits.tier",
        "user.tier", "properties.nested.a.b", "properties.nested.a", "properties.nope",
        "context.device.id", "context.ip", "properties.name", "properties.total + properties.qty",
        "properties.total >= 100",
    };
    expr_memo_t memo = {.n = 0};
    eval_ctx_t mctx = {.ev = &ev, .arena = &arena, .memo = &memo};
    for (size_t i = 0; i < sizeof srcs / sizeof *srcs; i++) {
        expr_t *e = compile_ok(srcs[i]);
        value_t a = expr_eval(e, &ctx), b = expr_eval(e, &mctx);
        assert_int_equal(a.k, b.k);
        strbuf ja, jb;
        sb_init(&ja);
        sb_init(&jb);
        value_to_json(&a, &ja);
        value_to_json(&b, &jb);
        assert_string_equal(ja.s, jb.s);
        sb_free(&ja);
        sb_free(&jb);
        expr_free(e);
    }
    assert_int_equal(memo.n, EXPR_MEMO_N);
}

static void test_missing_paths(void **state) {
    check_bool("properties.nope == 1", 0);
    check_bool("properties.nope != 1", 0);
    check_bool("properties.nope < 1", 0);
    check_bool("properties.nope >= 1", 0);
    check_bool("properties.nope == properties.nope2", 0);
    check_bool("properties.nope != properties.nope2", 0);
    check_bool("properties.nope != null", 0);
    check_bool("properties.nope == null", 0);
    check_bool("not properties.nope", 1);
    check_kind("properties.nope", V_MISSING);
    check_kind("properties.nope + 1", V_MISSING);
    check_kind("properties.name.first", V_MISSING); /* a string has no fields */
    check_kind("properties.tags.first", V_MISSING);
    check_kind("context.device.id.x.y", V_MISSING);
    check_bool("exists(properties.nothing)", 1);    /* JSON null is present */
    check_bool("exists(properties.nope)", 0);
    check_bool("exists(context.device.id)", 1);
    check_bool("exists(context.device.serial)", 0);
    check_bool("exists(user_id)", 1);
    check_bool("not exists(properties.nope)", 1);
}

static void test_in_contains(void **state) {
    check_bool("properties.qty in [1, 2, 3]", 1);
    check_bool("properties.qty in [4, 5]", 0);
    check_bool("properties.qty in []", 0);
    check_bool("'sale' in properties.tags", 1);
    check_bool("'old' in properties.tags", 0);
    check_bool("properties.tags contains 'new'", 1);
    check_bool("properties.tags contains 'NEW'", 0);
    check_bool("properties.codes contains 2", 1);
    check_bool("properties.codes contains '2'", 0);
    check_bool("'Shoes' in properties.name", 1);
    check_bool("'' in properties.name", 1);
    check_bool("properties.name contains 'Blue'", 1);
    check_bool("properties.name contains 'blue'", 0);
    check_bool("properties.name contains 'Blue Shoes and more'", 0);
    check_bool("properties.nope in [1]", 0);
    check_bool("1 in properties.nope", 0);
    check_bool("properties.nope in properties.tags", 0);
    check_bool("3 in properties.qty", 0);
    check_bool("'x' in properties.obj", 0);
    check_bool("context.device.type in ['ios', 'android']", 1);
    check_bool("[1, 2] contains 2", 1);
    check_bool("[1, [2, 3]] contains [2, 3]", 1);
    /* non-constant list: evaluated in place */
    check_bool("3 in [properties.nope, properties.qty]", 1);
    check_bool("'x' in [properties.nope]", 0);
    check_bool("[properties.name, 'b'] contains 'Blue Shoes'", 1);
    check_bool("not properties.qty in [1, 2]", 1);
}

static void test_logic(void **state) {
    check_bool("true and false", 0);
    check_bool("true && true", 1);
    check_bool("false or true", 1);
    check_bool("false || false", 0);
    check_bool("!false", 1);
    check_bool("!true", 0);
    check_bool("not true", 0);
    check_bool("not not true", 1);
    check_bool("!!1", 1);
    check_bool("'' or 0", 0);
    check_bool("1 and 'x'", 1);
    check_bool("properties.tags and properties.codes", 1);
    check_bool("properties.obj or null", 0);
    check_bool("properties.qty > 1 and properties.name == 'Blue Shoes'", 1);
    check_bool("properties.qty > 5 || context.ip == '10.0.0.1'", 1);
    check_bool("false and properties.qty / properties.zero == 1", 0);
    check_bool("properties.nope or properties.qty", 1);
    check_bool("properties.zero or properties.empty", 0);
}

static void test_precedence(void **state) {
    check_bool("not 1 == 2", 1);
    check_bool("1 + 2 == 3 and 2 * 2 == 4", 1);
    check_bool("true or false and false", 1);
    check_bool("(true or false) and false", 0);
    check_bool("false and true or true", 1);
    check_bool("1 + 1 in [2]", 1);
    check_bool("! properties.qty == 4", 1);
    check_num("2 + 3 * 4 - 6 / 2", 11);
    check_num("-(2 + 3)", -5);
    /* an n-ary or-chain of many terms stays flat */
    strbuf b;
    sb_init(&b);
    for (int i = 0; i < 1000; i++) sb_printf(&b, "%sproperties.qty == %d", i ? " or " : "", i);
    check_bool(b.s, 1);
    sb_reset(&b);
    for (int i = 0; i < 1000; i++) sb_printf(&b, "%sproperties.qty != %d", i ? " && " : "", i + 10);
    check_bool(b.s, 1);
    sb_free(&b);
}

static void test_user_and_traits(void **state) {
    check_bool("user.tier == 'platinum'", 1);
    check_bool("user.tier in ['gold', 'platinum']", 1);
    check_bool("user.points >= 1000", 1);
    check_bool("traits.tier == 'gold'", 1);
    const cJSON *saved = ev.user;
    ev.user = NULL;
    check_bool("user.tier == 'gold'", 1);
    check_bool("user.tier in ['gold', 'platinum']", 1);
    check_str("user.email", "x@y.z");
    check_kind("user.points", V_MISSING);
    ev.traits = NULL;
    check_bool("user.tier in ['gold', 'platinum']", 0);
    check_kind("user", V_MISSING);
    ev.traits = cJSON_GetObjectItemCaseSensitive(ev.root, "traits");
    ev.user = saved;
}

static void test_envelope_paths(void **state) {
    check_bool("event == 'Cart Abandoned'", 1);
    check_bool("user_id == 'u-42'", 1);
    check_bool("type == 'track'", 1);
    check_bool("message_id == 'm-1'", 1);
    check_num("timestamp", 1764066600000.0);
    check_bool("timestamp > 0", 1);
    check_bool("context.device.id == 'dev-9'", 1);
    check_str("context.ip", "10.0.0.1");
    check_str("properties.in", "kw"); /* keywords are fine as field names */
    check_kind("properties", V_JSON);
    check_kind("properties.nothing", V_NULL);
    check_kind("properties.flag", V_BOOL);
    check_json("properties.tags", "[\"sale\",\"new\"]");
    check_json("context.device", "{\"id\":\"dev-9\",\"type\":\"ios\"}");

    const event_t *saved = ctx.ev;
    ctx.ev = NULL;
    check_kind("event", V_MISSING);
    check_kind("properties.qty", V_MISSING);
    check_bool("properties.qty == 3", 0);
    ctx.ev = saved;
}

static void test_strings(void **state) {
    check_str("'a' + 'b'", "ab");
    check_str("properties.name + '!'", "Blue Shoes!");
    check_str("'Hi ' + properties.name + ', ' + context.device.id", "Hi Blue Shoes, dev-9");
    check_str("'' + properties.name", "Blue Shoes");
    check_str("lower(properties.Brand)", "acme corp");
    check_str("lower('Already lower')", "already lower");
    check_str("lower('abc')", "abc");
    check_str("lower(properties.Brand) + '-' + lower(properties.name)", "acme corp-blue shoes");
    check_kind("lower(3)", V_MISSING);
    check_kind("lower(properties.nope)", V_MISSING);
    check_str("'it\\'s'", "it's");
    check_str("\"a\\\"b\\\\c\\n\"", "a\"b\\c\n");
    check_str("\"single ' inside\"", "single ' inside");
    check_str("'tab\\there'", "tab\there");
    check_bool("lower(properties.name) == 'blue shoes'", 1);

    /* without an arena, anything that must allocate is missing */
    eval_ctx_t bare = {.ev = &ev, .arena = NULL};
    expr_t *e = compile_ok("properties.name + '!'");
    assert_int_equal(expr_eval(e, &bare).k, V_MISSING);
    expr_free(e);
    e = compile_ok("lower(properties.Brand)");
    assert_int_equal(expr_eval(e, &bare).k, V_MISSING);
    expr_free(e);
    e = compile_ok("lower(properties.name + 'X')"); /* folded nothing: path inside */
    assert_int_equal(expr_eval(e, &bare).k, V_MISSING);
    expr_free(e);
    e = compile_ok("'con' + 'stant'"); /* folded at compile time: no arena needed */
    value_t v = expr_eval(e, &bare);
    assert_int_equal(v.k, V_STR);
    assert_int_equal(v.len, 8);
    assert_memory_equal(v.s, "constant", 8);
    expr_free(e);
    e = compile_ok("properties.qty in [1, 3]");
    assert_true(expr_test(e, &bare));
    expr_free(e);
}

static void test_type_errors_and_division(void **state) {
    check_kind("1 / 0", V_MISSING);
    check_kind("properties.qty / properties.zero", V_MISSING);
    check_kind("properties.qty / (1 - 1)", V_MISSING);
    check_kind("'a' * 2", V_MISSING);
    check_kind("'a' - 'b'", V_MISSING);
    check_kind("-'a'", V_MISSING);
    check_kind("'a' + 1", V_MISSING);
    check_kind("true + 1", V_MISSING);
    check_kind("properties.tags + 1", V_MISSING);
    check_bool("1 / 0 == 1 / 0", 0);
    check_bool("1 / 0 != 5", 0);
    check_num("0 / 5", 0);
}

static void test_functions(void **state) {
    check_num("floor(2.7)", 2);
    check_num("ceil(2.1)", 3);
    check_num("floor(-1.5)", -2);
    check_num("ceil(-1.5)", -1);
    check_num("min(3, 1, 2)", 1);
    check_num("max(3, 1, 2)", 3);
    check_num("min(7)", 7);
    check_num("max(properties.qty, 10)", 10);
    check_num("min(properties.qty, 10)", 3);
    check_num("floor(properties.total * 0.1)", 12);
    check_num("ceil(properties.total)", 130);
    check_kind("min(properties.nope, 1)", V_MISSING);
    check_kind("max(1, 'a')", V_MISSING);
    check_kind("floor('a')", V_MISSING);
    check_num("floor(max(1.5, 2.5) * 2)", 5);
}

static void test_resolve_path(void **state) {
    value_t v = expr_resolve_path("properties.total", &ctx);
    assert_int_equal(v.k, V_NUM);
    assert_true(v.n == 129.5);
    v = expr_resolve_path("user.tier", &ctx);
    assert_int_equal(v.k, V_STR);
    assert_string_equal(v.s, "platinum");
    v = expr_resolve_path("context.device.id", &ctx);
    assert_int_equal(v.k, V_STR);
    assert_string_equal(v.s, "dev-9");
    v = expr_resolve_path("user_id", &ctx);
    assert_int_equal(v.k, V_STR);
    assert_string_equal(v.s, "u-42");
    v = expr_resolve_path("event", &ctx);
    assert_string_equal(v.s, "Cart Abandoned");
    v = expr_resolve_path("timestamp", &ctx);
    assert_int_equal(v.k, V_NUM);
    assert_int_equal(expr_resolve_path("properties", &ctx).k, V_JSON);
    assert_int_equal(expr_resolve_path("properties.nested.a.b", &ctx).k, V_NUM);
    assert_int_equal(expr_resolve_path("properties.nope", &ctx).k, V_MISSING);
    assert_int_equal(expr_resolve_path("properties.name.x", &ctx).k, V_MISSING);
    assert_int_equal(expr_resolve_path("nope.x", &ctx).k, V_MISSING);
    assert_int_equal(expr_resolve_path("", &ctx).k, V_MISSING);
    assert_int_equal(expr_resolve_path("properties.", &ctx).k, V_MISSING);
    assert_int_equal(expr_resolve_path(NULL, &ctx).k, V_MISSING);
    assert_int_equal(expr_resolve_path("user_id", NULL).k, V_MISSING);
}

static void test_value_output(void **state) {
    check_json("10", "10");
    check_json("2.5", "2.5");
    check_json("0.1 + 0.2", "0.3");
    check_json("-0", "0");
    check_json("1 / 3", "0.333333333333333");
    check_json("1e20", "1e+20");
    check_json("9007199254740992", "9007199254740992");
    check_json("-42", "-42");
    check_json("timestamp", "1764066600000");
    check_json("'a\"b'", "\"a\\\"b\"");
    check_json("true", "true");
    check_json("null", "null");
    check_json("properties.nope", "null");
    check_json("[1, 'a', true, null]", "[1,\"a\",true,null]");
    check_json("[properties.qty, properties.name]", "[3,\"Blue Shoes\"]");
    check_json("properties.total * 2", "259");

    check_text("properties.name", "Blue Shoes");
    check_text("'a\"b'", "a\"b");
    check_text("properties.qty * 10", "30");
    check_text("2.5", "2.5");
    check_text("true", "true");
    check_text("false", "false");
    check_text("null", "");
    check_text("properties.nope", "");
    check_text("properties.tags", "[\"sale\",\"new\"]");
    check_text("properties.empty", "");
}

static void test_constant(void **state) {
    const char *yes[] = {"1 + 2", "[1, 'a']", "floor(2.5)", "'a' + 'b'", "not true", "1 / 0", "[]",
                         "lower('ABC')", "min(1, 2) in [1]"};
    const char *no[] = {"properties.x", "exists(properties.x)", "1 + properties.x", "[1, properties.x]",
                        "true and user.tier", "timestamp"};
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) {
        expr_t *e = compile_ok(yes[i]);
        if (!expr_is_constant(e)) fail_msg("<%s> should be constant", yes[i]);
        expr_free(e);
    }
    for (size_t i = 0; i < sizeof no / sizeof *no; i++) {
        expr_t *e = compile_ok(no[i]);
        if (expr_is_constant(e)) fail_msg("<%s> should not be constant", no[i]);
        expr_free(e);
    }
    /* folded constants stay valid after the compile-time arena is gone */
    check_str("lower('ABC') + 'd'", "abcd");
    check_json("[lower('X'), 'y' + 'z']", "[\"x\",\"yz\"]");
}

static void test_compile_errors(void **state) {
    check_err("(1 + 2", 6, "expected ')' to close '('");
    check_err("1 + 2)", 5, "unexpected ')'");
    check_err("1 +", 3, "unexpected end of expression");
    check_err("properties.x in [1,", 19, "unexpected end of expression");
    check_err("'abc", 0, "unterminated string");
    check_err("properties.x == 'abc", 16, "unterminated string");
    check_err("flor(1)", 0, "unknown function 'flor' (did you mean 'floor'?)");
    check_err("1 + lowr(user.tier)", 4, "unknown function 'lowr' (did you mean 'lower'?)");
    check_err("frobnicate(1)", 0, "unknown function 'frobnicate'");
    check_err("1 + floor(1, 2)", 4, "floor() takes 1 argument");
    check_err("floor()", 0, "floor() takes 1 argument");
    check_err("min()", 0, "min() takes at least 1 argument");
    check_err("floor(1", 7, "expected ')' to close 'floor('");
    check_err("floor(1 2)", 8, "expected ',' or ')' in floor()");
    check_err("propertes.x == 1", 0, "unknown path root 'propertes' (did you mean 'properties'?)");
    check_err("properties.x == 1 and contxt.ip == 'a'", 22, "unknown path root 'contxt' (did you mean 'context'?)");
    check_err("zzz == 1", 0, "unknown path root 'zzz'");
    check_err("True", 0, "unknown path root 'True' (did you mean 'true'?)");
    check_err("1 < 2 < 3", 6, "comparisons cannot be chained; combine them with 'and'");
    check_err("properties.a = 1", 13, "unexpected '=' (did you mean '=='?)");
    check_err("properties.a & 1", 13, "unexpected '&' (did you mean '&&'?)");
    check_err("", 0, "empty expression");
    check_err("   ", 3, "empty expression");
    check_err("properties.", 11, "expected a field name after '.'");
    check_err("properties.2", 11, "expected a field name after '.'");
    check_err("event.x", 0, "path root 'event' has no fields");
    check_err("exists(1)", 7, "exists() takes a path");
    check_err("exists(properties.a + 1)", 7, "exists() takes a path");
    check_err("[1, 2", 5, "expected ']' to close '['");
    check_err("[1 2]", 3, "expected ',' or ']' in list");
    check_err("1 # 2", 2, "unexpected character '#'");
    check_err("'a\\q'", 2, "unknown escape '\\q' in string");
    check_err("properties.a adn true", 13, "unexpected 'adn' (did you mean 'and'?)");
    check_err("1 2", 2, "unexpected number '2'");
    check_err("1 'x'", 2, "unexpected string 'x'");
    check_err("\xff\xfe", 0, "unexpected byte 0xFF");
    check_err("properties.name == 'caf\xc3\xa9' and \xc3\xa9", 31, "unexpected byte 0xC3");
    check_err("&& true", 0, "unexpected '&&'");
    check_err("and", 0, "unexpected 'and'");
    check_err("1 + * 2", 4, "unexpected '*'");
    check_err("()", 1, "unexpected ')'");
    check_err("[1,]", 3, "unexpected ']'");
    /* the first error wins even when a later byte is also bad */
    check_err("flor(1) # 'x", 0, "unknown function 'flor' (did you mean 'floor'?)");
    check_err("propertes #", 0, "unknown path root 'propertes' (did you mean 'properties'?)");

    /* err/err_off are optional */
    assert_null(expr_compile("1 +", NULL, NULL, 0));
    char small[8];
    size_t off;
    assert_null(expr_compile("flor(1)", &off, small, sizeof small));
    assert_int_equal(strlen(small), 7);
    /* expr_compile_n stops at len */
    expr_t *e = expr_compile_n("1 + 2 garbage", 5, &off, small, sizeof small);
    assert_non_null(e);
    value_t v = expr_eval(e, &ctx);
    assert_true(v.k == V_NUM && v.n == 3);
    expr_free(e);
}

static char *repeat(const char *a, int n, const char *mid, const char *b, int m) {
    strbuf s;
    sb_init(&s);
    for (int i = 0; i < n; i++) sb_puts(&s, a);
    sb_puts(&s, mid);
    for (int i = 0; i < m; i++) sb_puts(&s, b);
    return s.s;
}

static void test_depth_limit(void **state) {
    char *src = repeat("(", 60, "properties.qty", ")", 60);
    check_num(src, 3);
    free(src);

    src = repeat("(", 100, "1", ")", 100);
    check_err(src, 64, "expression nested too deeply (more than 64 levels)");
    free(src);

    const char *deep[] = {"(", "[", "not ", "!", "-", "floor(", "min(1,", "- -"};
    for (size_t i = 0; i < sizeof deep / sizeof *deep; i++) {
        char *s = repeat(deep[i], 100000, "1", "", 0);
        char err[256];
        size_t off;
        expr_t *e = expr_compile(s, &off, err, sizeof err);
        if (e) fail_msg("deep '%s' compiled", deep[i]);
        if (!strstr(err, "nested too deeply")) fail_msg("deep '%s': %s", deep[i], err);
        free(s);
    }

    /* a long non-constant left-associative chain is refused, not overflowed */
    strbuf b;
    sb_init(&b);
    for (int i = 0; i < 100000; i++) sb_puts(&b, i ? " + properties.qty" : "properties.qty");
    char err[256];
    size_t off;
    expr_t *e = expr_compile(b.s, &off, err, sizeof err);
    assert_null(e);
    assert_non_null(strstr(err, "too complex"));
    /* while a constant one folds as it goes */
    sb_reset(&b);
    for (int i = 0; i < 100000; i++) sb_puts(&b, i ? " + 1" : "1");
    check_num(b.s, 100000);
    sb_free(&b);
}

/* Arbitrary bytes and every prefix of a valid expression either compile or
 * fail cleanly; valgrind/ASan runs catch the rest. */
static void test_garbage_input(void **state) {
    const char alphabet[] = "()[],.+-*/<>=!&|'\"\\ \t\nabcdefinorstuxyz0123456789_\xc3\xff\x80";
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    char buf[64];
    char err[128];
    size_t off;
    for (int round = 0; round < 20000; round++) {
        size_t n = 0, len = 1 + (round % 48);
        for (; n < len; n++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf[n] = alphabet[x % (sizeof alphabet - 1)];
        }
        buf[n] = '\0';
        expr_t *e = expr_compile(buf, &off, err, sizeof err);
        if (e) {
            value_t v = expr_eval(e, &ctx);
            strbuf s;
            sb_init(&s);
            value_to_json(&v, &s);
            value_to_text(&v, &s);
            sb_free(&s);
            expr_free(e);
        } else {
            assert_true(off <= n);
            assert_true(err[0] != '\0');
        }
        expr_arena_reset(&arena);
    }
    const char *valid = "not (properties.qty in [1, 2, 3]) and lower(user.tier) == 'gold' || "
                        "floor(properties.total * 0.1) >= max(1, -2) && 'a\\'b' contains \"b\"";
    size_t vl = strlen(valid);
    for (size_t i = 0; i <= vl; i++) {
        expr_t *e = expr_compile_n(valid, i, &off, err, sizeof err);
        if (e) expr_free(e);
        else assert_true(off <= i);
    }
    expr_t *e = compile_ok(valid);
    expr_free(e);
}

static void test_arena(void **state) {
    expr_arena_t a = {0};
    assert_null(expr_arena_alloc(NULL, 8));
    char *first = expr_arena_alloc(&a, 16);
    assert_non_null(first);
    memcpy(first, "keep me intact!", 16);
    /* force several new chunks; the first string must not move or change */
    for (int i = 0; i < 100; i++) {
        char *p = expr_arena_alloc(&a, 1000 + (size_t)i * 37);
        assert_non_null(p);
        assert_true(((uintptr_t)p & 15) == 0);
        memset(p, 'x', 1000 + (size_t)i * 37);
    }
    char *big = expr_arena_alloc(&a, 1 << 20);
    memset(big, 'y', 1 << 20);
    assert_string_equal(first, "keep me intact!");
    size_t cap = a.cap;
    expr_arena_reset(&a);
    assert_int_equal(a.cap, cap);
    char *again = expr_arena_alloc(&a, 100);
    assert_non_null(again);
    assert_int_equal(a.cap, cap);
    expr_arena_reset(&a);
    expr_arena_free(&a);
    assert_null(a.buf);
    assert_int_equal(a.cap, 0);
    expr_arena_reset(&a); /* on a freed arena: harmless */
    expr_arena_free(&a);

    /* concatenation results survive arena growth within one event */
    expr_t *e = compile_ok("properties.name + properties.name");
    value_t v1 = expr_eval(e, &ctx);
    for (int i = 0; i < 2000; i++) expr_eval(e, &ctx);
    value_t v2 = expr_eval(e, &ctx);
    assert_int_equal(v1.len, 20);
    assert_memory_equal(v1.s, "Blue ShoesBlue Shoes", 20);
    assert_memory_equal(v2.s, "Blue ShoesBlue Shoes", 20);
    expr_free(e);
    expr_arena_reset(&arena);
}

/* ------------------------------------------------------------------ templates */

static void check_render(const char *src, const char *want) {
    char err[256] = "";
    size_t off = 0;
    template_t *t = template_compile(src, &off, err, sizeof err);
    if (!t) fail_msg("template <%s> failed at %zu: %s", src, off, err);
    strbuf b;
    sb_init(&b);
    template_render(t, &ctx, &b);
    if (strcmp(b.s ? b.s : "", want) != 0) fail_msg("template <%s>: '%s', want '%s'", src, b.s ? b.s : "", want);
    sb_free(&b);
    template_free(t);
}

static void check_template_err(const char *src, size_t want_off, const char *want_msg) {
    char err[256] = "";
    size_t off = 12345;
    template_t *t = template_compile(src, &off, err, sizeof err);
    if (t) {
        template_free(t);
        fail_msg("template <%s> compiled, want '%s'", src, want_msg);
    }
    if (off != want_off || strcmp(err, want_msg) != 0)
        fail_msg("template <%s>: error at %zu '%s', want at %zu '%s'", src, off, err, want_off, want_msg);
}

static void test_template_render(void **state) {
    check_render("{{properties.name}} is still in your cart: {{ floor(properties.total*0.1) }} off",
                 "Blue Shoes is still in your cart: 12 off");
    check_render("Hi {{properties.nope}}!", "Hi !");
    check_render("plain text", "plain text");
    check_render("", "");
    check_render("{{1}}{{2}}", "12");
    check_render("{{ 'a}}b' }}", "a}}b");
    check_render("a { b } c }} d", "a { b } c }} d");
    check_render("{{properties.tags}}", "[\"sale\",\"new\"]");
    check_render("{{ properties.flag }}/{{ properties.nothing }}/{{ properties.total }}", "true//129.5");
    check_render("{{user.tier}} member, {{ lower(properties.Brand) + '!' }}", "platinum member, acme corp!");
    check_render("{{\n  context.device.id\n}}", "dev-9");
    check_render("{{ properties.qty / 0 }}", "");
    check_render("trailing {", "trailing {");
}

static void test_template_errors(void **state) {
    check_template_err("Hello {{ properties.name", 6, "'{{' is not closed by '}}'");
    check_template_err("{{", 0, "'{{' is not closed by '}}'");
    check_template_err("Hi {{ flor(1) }}", 6, "unknown function 'flor' (did you mean 'floor'?)");
    check_template_err("ab {{ 1 + }}", 9, "unexpected end of expression");
    check_template_err("x {{ }}", 2, "empty '{{ }}'");
    check_template_err("{{}}", 0, "empty '{{ }}'");
    check_template_err("{{ 'abc }}", 3, "unterminated string");
    check_template_err("ok {{ 1 }} then {{ propertes.x }}", 19,
                       "unknown path root 'propertes' (did you mean 'properties'?)");
    assert_null(template_compile("{{ 1 +", NULL, NULL, 0));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arithmetic),
        cmocka_unit_test(test_comparisons),
        cmocka_unit_test(test_missing_paths),
        cmocka_unit_test(test_in_contains),
        cmocka_unit_test(test_logic),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_user_and_traits),
        cmocka_unit_test(test_envelope_paths),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_type_errors_and_division),
        cmocka_unit_test(test_functions),
        cmocka_unit_test(test_resolve_path),
        cmocka_unit_test(test_value_output),
        cmocka_unit_test(test_constant),
        cmocka_unit_test(test_compile_errors),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_garbage_input),
        cmocka_unit_test(test_arena),
        cmocka_unit_test(test_template_render),
        cmocka_unit_test(test_template_errors),
        cmocka_unit_test(test_path_memo),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
