/* The hand-written formatters of util.c against what they replaced: the
 * output lines are compared byte for byte with earlier runs, so the fast
 * paths must agree with libc everywhere, not only on typical values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../daemon/core/util.h"

/* What format_iso8601_ms was: gmtime_r + snprintf. */
static void iso_ref(int64_t ms, char *out, size_t outlen) {
    time_t secs = (time_t)(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
    int frac = (int)(ms - (int64_t)secs * 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
}

static void check_iso(int64_t ms) {
    char a[64], b[64];
    memset(a, 'x', sizeof a);
    memset(b, 'x', sizeof b);
    format_iso8601_ms(ms, a, sizeof a);
    iso_ref(ms, b, sizeof b);
    if (strcmp(a, b) != 0) fail_msg("%lld: got %s, want %s", (long long)ms, a, b);
    /* and it reads back (years 0000..9999 only: the parser takes four digits) */
    int64_t back;
    if (ms >= -62167219200000LL && ms <= 253402300799999LL) {
        assert_int_equal(parse_iso8601_ms(a, &back), 0);
        assert_true(back == ms);
    }
}

/* xorshift64*: reproducible, no libc rand state */
static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint64_t next_rand(void) {
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545f4914f6cdd1dULL;
}

static void test_iso_edges(void **state) {
    (void)state;
    static const int64_t v[] = {
        0, 1, -1, 999, -999, 1000, -1000, -1001, 86399999, 86400000, -86400000, -86400001,
        1795514400000LL,                  /* 2026-11-24T10:00:00Z */
        951782400000LL, 951868800000LL,   /* 2000-02-29, 2000-03-01 */
        4107456000000LL,                  /* 2100-02-28 */
        -62167219200000LL,                /* 0000-01-01T00:00:00.000Z */
        -62167219200001LL,                /* the millisecond before: year -1 */
        253402300799999LL,                /* 9999-12-31T23:59:59.999Z */
        253402300800000LL,                /* 10000-01-01 */
        -62135596800000LL,                /* 0001-01-01 */
        -2208988800000LL,                 /* 1900-01-01 */
        -12219292800000LL,                /* 1582-10-15 */
        4102444799999LL, 4102444800000LL, /* around 2100-01-01 */
        1000000000000000LL, -1000000000000000LL,
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) check_iso(v[i]);
    /* every day boundary of the leap cycle around 2000, +-1 ms */
    for (int64_t day = 10000; day < 10000 + 4 * 366 * 4; day++) {
        check_iso(day * 86400000LL - 1);
        check_iso(day * 86400000LL);
    }
}

static void test_iso_random(void **state) {
    (void)state;
    const int64_t lo = -62167219200000LL - 86400000LL * 400, hi = 253402300799999LL + 86400000LL * 400;
    for (int i = 0; i < 2000000; i++) {
        int64_t ms = lo + (int64_t)(next_rand() % (uint64_t)(hi - lo));
        check_iso(ms);
    }
    /* near the epoch, where negative floors matter */
    for (int i = 0; i < 200000; i++) check_iso((int64_t)(next_rand() % 200000000000ULL) - 100000000000LL);
}

static void test_iso_short_buffer(void **state) {
    (void)state;
    /* a buffer too short: truncated like snprintf, never overrun */
    for (size_t n = 1; n <= 25; n++) {
        char a[32], b[32];
        memset(a, 'x', sizeof a);
        memset(b, 'x', sizeof b);
        format_iso8601_ms(1795514400123LL, a, n);
        iso_ref(1795514400123LL, b, n);
        assert_memory_equal(a, b, sizeof a);
    }
}

static void test_sb_put_i64(void **state) {
    (void)state;
    static const long long v[] = {0, 1, -1, 9, 10, -10, 99, 100, 1234567890123LL, 9223372036854775807LL,
                                  -9223372036854775807LL - 1};
    char want[32];
    strbuf b;
    sb_init(&b);
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        sb_reset(&b);
        sb_put_i64(&b, v[i]);
        snprintf(want, sizeof want, "%lld", v[i]);
        assert_string_equal(b.s, want);
    }
    /* what expressions print for a whole number: "%.0f" of it */
    for (int i = 0; i < 200000; i++) {
        double n = (double)((int64_t)(next_rand() >> (i % 64)) % 9007199254740993LL);
        if (i & 1) n = -n;
        sb_reset(&b);
        sb_put_i64(&b, (long long)n);
        snprintf(want, sizeof want, "%.0f", n);
        if (n == 0) snprintf(want, sizeof want, "0");
        assert_string_equal(b.s, want);
    }
    sb_free(&b);
}

/* Grant ids are made of hash64x2's values: they must be hash64's. */
static void test_hash64x2(void **state) {
    (void)state;
    char buf[300];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (char)(i * 37 + 11);
    for (size_t n = 0; n <= sizeof buf; n += 7) {
        for (uint64_t s1 = 0; s1 < 40; s1 += 13) {
            uint64_t h1, h2;
            hash64x2(buf, n, s1, s1 + 1, &h1, &h2);
            assert_true(h1 == hash64(buf, n, s1));
            assert_true(h2 == hash64(buf, n, s1 + 1));
        }
    }
}

static void test_put_hex16_and_sb_cat(void **state) {
    (void)state;
    char got[17], want[17];
    for (int i = 0; i < 100000; i++) {
        uint64_t v = i < 3 ? (uint64_t[]){0, 1, UINT64_MAX}[i] : next_rand() >> (i % 64);
        put_hex16(got, v);
        got[16] = '\0';
        snprintf(want, sizeof want, "%016llx", (unsigned long long)v);
        assert_string_equal(got, want);
    }
    strbuf b;
    sb_init(&b);
    sb_cat(&b, "", (char *)NULL);
    assert_non_null(b.s);
    assert_string_equal(b.s, "");
    sb_cat(&b, "{u:", "m1", "}:lim:", "r\x1f", "", "x", (char *)NULL);
    assert_string_equal(b.s, "{u:m1}:lim:r\x1fx");
    assert_int_equal(b.len, strlen("{u:m1}:lim:r\x1fx"));
    sb_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_iso_edges),
        cmocka_unit_test(test_iso_random),
        cmocka_unit_test(test_iso_short_buffer),
        cmocka_unit_test(test_sb_put_i64),
        cmocka_unit_test(test_put_hex16_and_sb_cat),
        cmocka_unit_test(test_hash64x2),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
