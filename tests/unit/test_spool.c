/* Replay's output spool: lines come out ordered by time, lines of one time
 * in the order they went in, whether they arrived in order (copied out
 * whole) or not (sorted through the index), and whatever the sink (file,
 * pipe). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../daemon/replay/spool.h"

/* Everything spool_write_ordered wrote, read back from a temporary file. */
static char *drain(spool *sp, size_t *len) {
    FILE *f = tmpfile();
    assert_non_null(f);
    assert_int_equal(spool_write_ordered(sp, f), 0);
    assert_int_equal(fflush(f), 0);
    long n = ftell(f);
    assert_true(n >= 0);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    rewind(f);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return s;
}

static void test_in_order_copied_whole(void **state) {
    (void)state;
    spool sp;
    assert_int_equal(spool_open(&sp), 0);
    spool_add(&sp, 10, "a", 1);
    spool_add(&sp, 10, "b", 1);
    spool_add(&sp, 20, "{\"x\":1}", 7);
    spool_add(&sp, 20, "", 0);
    assert_true(sp.in_order);
    assert_int_equal(spool_count(&sp), 4);
    size_t n;
    char *s = drain(&sp, &n);
    assert_string_equal(s, "a\nb\n{\"x\":1}\n\n");
    free(s);
    spool_close(&sp);
}

static void test_out_of_order_sorted_stably(void **state) {
    (void)state;
    spool sp;
    assert_int_equal(spool_open(&sp), 0);
    spool_add(&sp, 30, "late-1", 6);
    spool_add(&sp, 10, "early-1", 7);
    spool_add(&sp, 30, "late-2", 6);
    spool_add(&sp, 10, "early-2", 7);
    spool_add(&sp, 20, "mid", 3);
    assert_false(sp.in_order);
    size_t n;
    char *s = drain(&sp, &n);
    assert_string_equal(s, "early-1\nearly-2\nmid\nlate-1\nlate-2\n");
    free(s);
    spool_close(&sp);
}

static void test_empty(void **state) {
    (void)state;
    spool sp;
    assert_int_equal(spool_open(&sp), 0);
    size_t n;
    char *s = drain(&sp, &n);
    assert_int_equal(n, 0);
    free(s);
    spool_close(&sp);
}

/* Lines past the write buffer (2 MB, and many small ones across several
 * flushes), out of order: offsets stay right across flushes. */
static void test_big_lines_across_flushes(void **state) {
    (void)state;
    spool sp;
    assert_int_equal(spool_open(&sp), 0);
    const size_t big = 2u << 20;
    char *b = malloc(big);
    assert_non_null(b);
    memset(b, 'z', big);
    const int small = 40000;
    for (int i = 0; i < small; i++) {
        char line[32];
        int k = snprintf(line, sizeof line, "line-%05d-%s", i, "padpadpadpad");
        spool_add(&sp, 1000 - i % 7, line, (size_t)k);  /* descending within each run of 7 */
        if (i == small / 2) spool_add(&sp, 5000, b, big);
    }
    size_t n;
    char *s = drain(&sp, &n);
    assert_int_equal(n, (size_t)small * 24 + big + 1);
    /* the first line is the first of the earliest time (994: i % 7 == 6) */
    assert_memory_equal(s, "line-00006-padpadpadpad\n", 24);
    /* the big line is last (time 5000) */
    assert_int_equal(s[n - 1], '\n');
    assert_int_equal(s[n - 2], 'z');
    assert_int_equal(s[n - big - 2], '\n');
    /* within a time, insertion order */
    const char *p = s;
    int prev = -1;
    for (int i = 0; i < small / 7; i++, p += 24) {
        int v = atoi(p + 5);
        assert_true(v > prev);
        assert_int_equal(v % 7, 6);
        prev = v;
    }
    free(s);
    free(b);
    spool_close(&sp);
}

/* A pipe as the sink: sendfile's path, or the read-through fallback. */
static void test_to_pipe(void **state) {
    (void)state;
    spool sp;
    assert_int_equal(spool_open(&sp), 0);
    spool_add(&sp, 1, "one", 3);
    spool_add(&sp, 2, "two", 3);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    FILE *w = fdopen(fds[1], "w");
    assert_non_null(w);
    assert_int_equal(spool_write_ordered(&sp, w), 0);
    fclose(w);
    char got[32] = {0};
    ssize_t r = read(fds[0], got, sizeof got - 1);
    close(fds[0]);
    assert_int_equal(r, 8);
    assert_string_equal(got, "one\ntwo\n");
    spool_close(&sp);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_in_order_copied_whole),
        cmocka_unit_test(test_out_of_order_sorted_stably),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_big_lines_across_flushes),
        cmocka_unit_test(test_to_pipe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
