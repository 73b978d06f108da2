/* Decoder: Segment envelopes in, events or dead-letter reasons out. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "../../daemon/decode/event.h"
#include "../../daemon/core/util.h"

static decoder_t dec;

static int decode(const char *json, event_t *ev, char *reason) {
    return decode_event(&dec, json, strlen(json), 1000, ev, reason, 128);
}

static void test_track(void **state) {
    event_t ev;
    char reason[128];
    assert_int_equal(decode("{\"type\":\"track\",\"event\":\"Order Completed\",\"userId\":\"u1\",\"messageId\":\"m1\","
                            "\"timestamp\":\"2026-11-24T10:30:00.250Z\",\"properties\":{\"total\":250},"
                            "\"context\":{\"ip\":\"1.2.3.4\"}}",
                            &ev, reason),
                     0);
    assert_string_equal(ev.type, "track");
    assert_string_equal(ev.name, "Order Completed");
    assert_string_equal(ev.user_id, "u1");
    assert_string_equal(ev.message_id, "m1");
    assert_true(ev.ts_ms == 1795516200250LL);
    assert_non_null(ev.properties);
    assert_int_equal(cJSON_GetObjectItem(ev.properties, "total")->valueint, 250);
    assert_string_equal(cJSON_GetObjectItem(ev.context, "ip")->valuestring, "1.2.3.4");
    event_clear(&ev);
}

static void test_identify_anonymous_epoch(void **state) {
    event_t ev;
    char reason[128];
    assert_int_equal(decode("{\"type\":\"identify\",\"anonymousId\":\"a9\",\"timestamp\":1700000000123,"
                            "\"traits\":{\"tier\":\"gold\"}}",
                            &ev, reason),
                     0);
    assert_string_equal(ev.name, "identify");
    assert_string_equal(ev.user_id, "a9");
    assert_true(ev.ts_ms == 1700000000123LL);
    assert_string_equal(cJSON_GetObjectItem(ev.traits, "tier")->valuestring, "gold");
    /* no messageId: derived from the payload, stable across decodes */
    assert_memory_equal(ev.message_id, "h-", 2);
    char first[80];
    strcpy(first, ev.message_id);
    event_clear(&ev);
    assert_int_equal(decode("{\"type\":\"identify\",\"anonymousId\":\"a9\",\"timestamp\":1700000000123,"
                            "\"traits\":{\"tier\":\"gold\"}}",
                            &ev, reason),
                     0);
    assert_string_equal(ev.message_id, first);
    event_clear(&ev);
}

static void test_numeric_user_and_offset_timestamp(void **state) {
    event_t ev;
    char reason[128];
    assert_int_equal(decode("{\"type\":\"track\",\"event\":\"X\",\"userId\":12345,\"timestamp\":\"2026-11-24T12:30:00+02:00\"}",
                            &ev, reason),
                     0);
    assert_string_equal(ev.user_id, "12345");
    int64_t want;
    assert_int_equal(parse_iso8601_ms("2026-11-24T10:30:00Z", &want), 0);
    assert_true(ev.ts_ms == want);
    event_clear(&ev);
}

static void expect_reason(const char *json, const char *want) {
    event_t ev;
    char reason[128];
    assert_int_equal(decode(json, &ev, reason), -1);
    assert_string_equal(reason, want);
    assert_null(ev.root);
}

static void test_rejects(void **state) {
    expect_reason("not json", "not JSON");
    expect_reason("[1,2]", "not a JSON object");
    expect_reason("{\"type\":\"track\",\"event\":\"X\"}", "no user id");
    expect_reason("{\"type\":\"track\",\"userId\":\"u\"}", "no event name");
    expect_reason("{\"type\":\"track\",\"event\":\"\",\"userId\":\"u\"}", "no event name");
    expect_reason("{\"event\":\"X\",\"userId\":\"u\"}", "no type");
    expect_reason("{\"type\":\"page\",\"userId\":\"u\"}", "unsupported type 'page'");
    expect_reason("{\"type\":\"track\",\"event\":\"X\",\"userId\":\"u\",\"timestamp\":\"yesterday\"}",
                  "bad timestamp 'yesterday'");
    expect_reason("{\"type\":\"track\",\"event\":\"X\",\"userId\":\"u\xff\"}", "invalid UTF-8");
    expect_reason("{\"a\":\"\xc0\xaf\"}", "invalid UTF-8"); /* overlong encoding */
    expect_reason("", "empty message");
    expect_reason("{\"type\":\"track\",\"event\":\"X\",\"userId\":\"u\"} trailing", "not JSON: trailing data");
    expect_reason("{\"type\":\"track\",\"event\":\"X\",\"userId\":1.5}", "bad user id: not a whole number");
    expect_reason("{\"type\":\"track\",\"event\":\"X\",\"userId\":1e308}", "bad user id: not a whole number");
    /* Found by fuzz_decode: 1e400 parses as inf, and converting it to an
     * integer was undefined behaviour (tests/fuzz/crashes/decode-timestamp-inf). */
    expect_reason("{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u1\",\"timestamp\":1e400}",
                  "bad timestamp inf");
    expect_reason("{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u1\",\"timestamp\":-1e300}",
                  "bad timestamp -1e+300");
    expect_reason("{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u1\",\"timestamp\":253402300800000}",
                  "bad timestamp 2.53402e+14");
    /* the prescan's 8-byte steps inside strings stop at every byte they must see:
     * bad UTF-8, an escaped quote and a closing quote after long ASCII runs */
    expect_reason("{\"type\":\"track\",\"event\":\"X\",\"userId\":\"abcdefghijklmnopqrstuvwxyz0123\xff\"}",
                  "invalid UTF-8");
    expect_reason("{\"a\":\"abcdefghijklmnop\\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"}", "no type");
    expect_reason("{\"a\":\"abcdefghijklmnopq\",\"b\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
                  "nested too deep");
    event_t ev;
    char reason[128];
    assert_int_equal(decode("{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u1\",\"timestamp\":253402300799999}",
                            &ev, reason), 0);
    assert_int_equal(ev.ts_ms, 253402300799999LL);
    event_clear(&ev);
}

static void test_limits(void **state) {
    char *big = malloc(DECODE_DEFAULT_MAX_BYTES + 100);
    memset(big, ' ', DECODE_DEFAULT_MAX_BYTES + 99);
    big[DECODE_DEFAULT_MAX_BYTES + 99] = '\0';
    event_t ev;
    char reason[128];
    assert_int_equal(decode(big, &ev, reason), -1);
    assert_memory_equal(reason, "too large", 9);
    free(big);
    /* nesting past the limit is refused before cJSON recurses into it */
    char deep[200];
    memset(deep, '[', 100);
    deep[100] = '\0';
    expect_reason(deep, "nested too deep");
    /* brackets inside strings do not count */
    assert_int_equal(decode("{\"type\":\"track\",\"event\":\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\",\"userId\":\"u\"}",
                            &ev, reason),
                     0);
    event_clear(&ev);
}

static void test_field_mapping(void **state) {
    decoder_t d;
    decoder_init_default(&d);
    d.map.user_id = "meta.member";
    d.map.event = "action";
    d.map.default_type = "track";
    event_t ev;
    char reason[128];
    const char *j = "{\"action\":\"Order Completed\",\"meta\":{\"member\":\"m7\"}}";
    assert_int_equal(decode_event(&d, j, strlen(j), 5, &ev, reason, sizeof reason), 0);
    assert_string_equal(ev.name, "Order Completed");
    assert_string_equal(ev.user_id, "m7");
    assert_true(ev.ts_ms == 5); /* no timestamp: the decode time */
    event_clear(&ev);
}

int main(void) {
    decoder_init_default(&dec);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_track),   cmocka_unit_test(test_identify_anonymous_epoch),
        cmocka_unit_test(test_numeric_user_and_offset_timestamp),
        cmocka_unit_test(test_rejects), cmocka_unit_test(test_limits),
        cmocka_unit_test(test_field_mapping),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
