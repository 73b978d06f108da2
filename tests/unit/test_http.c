/* test_http.c - /metrics, /healthz, /readyz over a real socket: the server runs
 * on a private event_base on an ephemeral loopback port, the test drives the
 * loop itself while a raw client socket sends a request and reads the reply. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../../daemon/core/http.h"
#include "../../daemon/core/metrics.h"
#include "../../daemon/core/util.h"

typedef struct fixture {
    struct event_base *base;
    metrics_registry_t *reg;
    http_server_t *srv;
    int healthy, ready;
    const char *why;
    int ready_calls;
} fixture;

static int health(void *ud, char *reason, size_t len) {
    fixture *f = ud;
    if (!f->healthy) snprintf(reason, len, "loop stalled");
    return f->healthy;
}

static int ready(void *ud, char *reason, size_t len) {
    fixture *f = ud;
    f->ready_calls++;
    if (!f->ready) snprintf(reason, len, "%s", f->why);
    return f->ready;
}

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    f->base = event_base_new();
    f->reg = metrics_registry_new();
    f->healthy = 1;
    f->why = "redis down";
    metric_counter_t *c = metrics_counter(f->reg, "benefitd_events_total", "Events by outcome.", "outcome", NULL);
    metrics_counter_inc(metrics_labels(c, "ok"), 41);
    metrics_counter_inc(metrics_labels(c, "dead_letter"), 1);
    char err[256] = "";
    f->srv = http_server_new(f->base, NULL, 0, 0, f->reg, health, ready, f, err, sizeof err);
    if (!f->srv) {
        fprintf(stderr, "http_server_new: %s\n", err);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    http_server_free(f->srv);
    metrics_registry_free(f->reg);
    event_base_free(f->base);
    free(f);
    return 0;
}

/* Sends raw to 127.0.0.1:port and returns everything read until the server
 * closes, running the server's loop meanwhile (caller frees). */
static char *exchange(struct event_base *base, int port, const char *raw) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* The kernel completes the handshake from the listen backlog. */
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    size_t len = strlen(raw);
    assert_int_equal(send(fd, raw, len, 0), (ssize_t)len);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    strbuf got;
    sb_init(&got);
    int64_t deadline = now_mono_us() + 5 * 1000000;
    for (;;) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        char buf[4096];
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n > 0) { sb_append(&got, buf, (size_t)n); continue; }
        if (n == 0) break;
        assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
        if (now_mono_us() > deadline) fail_msg("no complete reply within 5 s; got <%s>", got.s ? got.s : "");
        struct pollfd p = {.fd = fd, .events = POLLIN};
        poll(&p, 1, 5);
    }
    close(fd);
    if (!got.s) sb_puts(&got, "");
    return got.s;
}

static char *get(fixture *f, const char *method, const char *target) {
    char req[512];
    snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nHost: localhost\r\n\r\n", method, target);
    return exchange(f->base, http_server_port(f->srv), req);
}

static const char *body_of(const char *resp) {
    const char *p = strstr(resp, "\r\n\r\n");
    assert_non_null(p);
    return p + 4;
}

static void assert_status(const char *resp, const char *status_line) {
    size_t n = strlen(status_line);
    if (strncmp(resp, status_line, n) != 0 || strncmp(resp + n, "\r\n", 2) != 0)
        fail_msg("status: want <%s>, got <%.60s>", status_line, resp);
}

/* The value of header name (case-insensitive) in the response head, or "". */
static const char *header(const char *resp, const char *name, char *out, size_t outlen) {
    const char *end = strstr(resp, "\r\n\r\n");
    size_t nl = strlen(name);
    out[0] = '\0';
    for (const char *p = strstr(resp, "\r\n"); p && p < end; p = strstr(p + 2, "\r\n")) {
        const char *h = p + 2;
        if (strncasecmp(h, name, nl) == 0 && h[nl] == ':') {
            h += nl + 1;
            while (*h == ' ') h++;
            const char *e = strstr(h, "\r\n");
            snprintf(out, outlen, "%.*s", (int)(e - h), h);
            break;
        }
    }
    return out;
}

static void test_metrics_page(void **state) {
    fixture *f = *state;
    assert_true(http_server_port(f->srv) > 0);
    char *r = get(f, "GET", "/metrics");
    assert_status(r, "HTTP/1.0 200 OK");
    char h[128];
    assert_string_equal(header(r, "Content-Type", h, sizeof h), "text/plain; version=0.0.4; charset=utf-8");
    const char *want = "# HELP benefitd_events_total Events by outcome.\n"
                       "# TYPE benefitd_events_total counter\n"
                       "benefitd_events_total{outcome=\"dead_letter\"} 1\n"
                       "benefitd_events_total{outcome=\"ok\"} 41\n";
    assert_string_equal(body_of(r), want);
    char cl[16];
    snprintf(cl, sizeof cl, "%zu", strlen(want));
    assert_string_equal(header(r, "Content-Length", h, sizeof h), cl);
    free(r);

    /* A query string does not change the path; a later scrape sees new values. */
    metrics_counter_inc(metrics_labels(metrics_counter(f->reg, "x_total", "X.", "k", NULL), "v"), 2);
    r = get(f, "GET", "/metrics?name[]=x");
    assert_status(r, "HTTP/1.0 200 OK");
    assert_non_null(strstr(body_of(r), "\nx_total{k=\"v\"} 2\n"));
    free(r);
}

static void test_healthz(void **state) {
    fixture *f = *state;
    char *r = get(f, "GET", "/healthz");
    assert_status(r, "HTTP/1.0 200 OK");
    assert_string_equal(body_of(r), "ok\n");
    free(r);
    f->healthy = 0;
    r = get(f, "GET", "/healthz");
    assert_status(r, "HTTP/1.0 503 Service Unavailable");
    assert_string_equal(body_of(r), "loop stalled\n");
    free(r);
}

static void test_readyz(void **state) {
    fixture *f = *state;
    char *r = get(f, "GET", "/readyz");
    assert_status(r, "HTTP/1.0 503 Service Unavailable");
    assert_string_equal(body_of(r), "redis down\n");
    free(r);
    f->why = "kafka: no partitions\nassigned"; /* a newline in a reason stays on one line */
    r = get(f, "GET", "/readyz");
    assert_status(r, "HTTP/1.0 503 Service Unavailable");
    assert_string_equal(body_of(r), "kafka: no partitions assigned\n");
    free(r);
    f->ready = 1;
    r = get(f, "GET", "/readyz");
    assert_status(r, "HTTP/1.0 200 OK");
    assert_string_equal(body_of(r), "ok\n");
    free(r);
    assert_int_equal(f->ready_calls, 3);
}

static void test_not_found_and_methods(void **state) {
    fixture *f = *state;
    const char *paths[] = {"/", "/nope", "/metrics/", "/metricsx", "/healthz/extra"};
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        char *r = get(f, "GET", paths[i]);
        assert_status(r, "HTTP/1.0 404 Not Found");
        assert_string_equal(body_of(r), "not found\n");
        free(r);
    }
    char *r = get(f, "POST", "/metrics");
    assert_status(r, "HTTP/1.0 405 Method Not Allowed");
    char h[64];
    assert_string_equal(header(r, "Allow", h, sizeof h), "GET, HEAD");
    free(r);
    r = get(f, "HEAD", "/metrics");
    assert_status(r, "HTTP/1.0 200 OK");
    assert_string_equal(body_of(r), "");
    assert_string_equal(header(r, "Content-Length", h, sizeof h), "171");
    free(r);
    /* Not HTTP at all: the connection is answered or closed, the server lives on. */
    free(exchange(f->base, http_server_port(f->srv), "garbage\r\n\r\n"));
    r = get(f, "GET", "/healthz");
    assert_status(r, "HTTP/1.0 200 OK");
    free(r);
}

static void test_keep_alive(void **state) {
    fixture *f = *state;
    f->ready = 1;
    /* Two requests on one HTTP/1.1 connection, the second closing it. */
    char *r = exchange(f->base, http_server_port(f->srv),
                       "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_status(r, "HTTP/1.1 200 OK");
    const char *second = strstr(body_of(r), "HTTP/1.1 200 OK\r\n");
    assert_non_null(second);
    assert_string_equal(body_of(second), "ok\n");
    free(r);
}

static void test_bind_policy(void **state) {
    char err[256];
    struct event_base *base = event_base_new();
    const char *remote[] = {"0.0.0.0", "::", "10.1.2.3", "192.0.2.1"};
    for (size_t i = 0; i < sizeof remote / sizeof *remote; i++) {
        err[0] = '\0';
        assert_null(http_server_new(base, remote[i], 0, 0, NULL, NULL, NULL, NULL, err, sizeof err));
        if (!strstr(err, "is not loopback")) fail_msg("%s: %s", remote[i], err);
        assert_int_equal(http_check_bind(remote[i], 0, NULL, 0), -1);
        assert_int_equal(http_check_bind(remote[i], 1, err, sizeof err), 0);
    }
    assert_int_equal(http_check_bind(NULL, 0, err, sizeof err), 0);
    assert_int_equal(http_check_bind("127.0.0.1", 0, err, sizeof err), 0);
    assert_int_equal(http_check_bind("127.3.4.5", 0, err, sizeof err), 0);
    assert_int_equal(http_check_bind("::1", 0, err, sizeof err), 0);
    assert_int_equal(http_check_bind("::ffff:127.0.0.1", 0, err, sizeof err), 0);
    assert_int_equal(http_check_bind("localhost", 0, err, sizeof err), 0);
    assert_int_equal(http_check_bind("not an address", 1, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot resolve"));
    assert_null(http_server_new(base, NULL, 70000, 0, NULL, NULL, NULL, NULL, err, sizeof err));

    /* With allow_remote the wildcard is accepted, and loopback reaches it. */
    http_server_t *s = http_server_new(base, "0.0.0.0", 0, 1, NULL, NULL, NULL, NULL, err, sizeof err);
    assert_non_null(s);
    char *r = exchange(base, http_server_port(s), "GET /metrics HTTP/1.0\r\n\r\n");
    assert_status(r, "HTTP/1.0 200 OK");
    assert_string_equal(body_of(r), ""); /* no registry: an empty page */
    free(r);

    /* The port is taken: a second listener is refused with the reason. */
    err[0] = '\0';
    assert_null(http_server_new(base, "127.0.0.1", http_server_port(s), 0, NULL, NULL, NULL, NULL, err, sizeof err));
    if (!strstr(err, "cannot listen on 127.0.0.1:")) fail_msg("%s", err);
    http_server_free(s);
    event_base_free(base);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_metrics_page, setup, teardown),
        cmocka_unit_test_setup_teardown(test_healthz, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readyz, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_found_and_methods, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keep_alive, setup, teardown),
        cmocka_unit_test(test_bind_policy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
