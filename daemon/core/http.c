/* http.c - /metrics, /healthz and /readyz on the event loop (see http.h). */
#include "http.h"
#include "log.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct http_server {
    struct evhttp *http;
    metrics_registry_t *reg;
    http_check_fn health_cb, ready_cb;
    void *ud;
    int port;
    strbuf page;   /* kept between scrapes so a scrape reuses its memory */
};

static int is_loopback(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a)) return 1;
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return 0;
}

static const char *bind_or_default(const char *bind_addr) {
    return bind_addr && *bind_addr ? bind_addr : HTTP_DEFAULT_BIND;
}

/* Resolves addr:port for listening; with !allow_remote every address the
 * name resolves to must be loopback. */
static struct addrinfo *resolve(const char *addr, int port, int allow_remote, char *err, size_t errlen) {
    char ports[16];
    snprintf(ports, sizeof ports, "%d", port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int rc = getaddrinfo(addr, ports, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve http bind address '%s': %s", addr, gai_strerror(rc));
        return NULL;
    }
    if (!allow_remote)
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
            if (!is_loopback(ai->ai_addr)) {
                snprintf(err, errlen,
                         "http bind address '%s' is not loopback; set http.allow_remote: true to expose "
                         "metrics and health off this host",
                         addr);
                freeaddrinfo(res);
                return NULL;
            }
    return res;
}

int http_check_bind(const char *bind_addr, int allow_remote, char *err, size_t errlen) {
    char dummy[8];
    if (!err || !errlen) { err = dummy; errlen = sizeof dummy; }
    struct addrinfo *res = resolve(bind_or_default(bind_addr), 0, allow_remote, err, errlen);
    if (!res) return -1;
    freeaddrinfo(res);
    return 0;
}

static void reply(struct evhttp_request *req, int code, const char *reason, const char *ctype, const char *body,
                  size_t len) {
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", ctype);
    evhttp_add_header(h, "Cache-Control", "no-store");
    /* Always, also for HTTP/1.0 and HEAD (the length a GET would get). */
    char cl[24];
    snprintf(cl, sizeof cl, "%zu", len);
    evhttp_add_header(h, "Content-Length", cl);
    struct evbuffer *b = evbuffer_new();
    if (b && evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) evbuffer_add(b, body, len);
    evhttp_send_reply(req, code, reason, b);
    if (b) evbuffer_free(b);
}

static void reply_text(struct evhttp_request *req, int code, const char *reason, const char *text) {
    char line[300];
    int n = snprintf(line, sizeof line, "%s\n", text);
    if (n < 0) n = 0;
    if ((size_t)n >= sizeof line) n = (int)sizeof line - 1;
    reply(req, code, reason, "text/plain; charset=utf-8", line, (size_t)n);
}

/* /healthz and /readyz: NULL callback = yes. */
static void check(struct evhttp_request *req, http_check_fn fn, void *ud) {
    char why[256] = "";
    if (!fn || fn(ud, why, sizeof why)) {
        reply_text(req, HTTP_OK, "OK", "ok");
        return;
    }
    why[sizeof why - 1] = '\0';
    /* One line whatever the callback wrote. */
    for (char *p = why; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    reply_text(req, 503, "Service Unavailable", why[0] ? why : "not ready");
}

static void on_request(struct evhttp_request *req, void *arg) {
    http_server_t *s = arg;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (!path || !*path) path = "/";
    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        reply_text(req, 405, "Method Not Allowed", "method not allowed");
        return;
    }
    if (strcmp(path, "/metrics") == 0) {
        sb_reset(&s->page);
        metrics_render(s->reg, &s->page);
        reply(req, HTTP_OK, "OK", "text/plain; version=0.0.4; charset=utf-8", s->page.s ? s->page.s : "",
              s->page.len);
    } else if (strcmp(path, "/healthz") == 0) {
        check(req, s->health_cb, s->ud);
    } else if (strcmp(path, "/readyz") == 0) {
        check(req, s->ready_cb, s->ud);
    } else {
        reply_text(req, HTTP_NOTFOUND, "Not Found", "not found");
    }
}

http_server_t *http_server_new(struct event_base *base, const char *bind_addr, int port, int allow_remote,
                               metrics_registry_t *registry, http_check_fn health_cb, http_check_fn ready_cb,
                               void *ud, char *err, size_t errlen) {
    char dummy[8];
    if (!err || !errlen) { err = dummy; errlen = sizeof dummy; }
    err[0] = '\0';
    const char *addr = bind_or_default(bind_addr);
    if (port < 0 || port > 65535) {
        snprintf(err, errlen, "http port %d out of range", port);
        return NULL;
    }
    struct addrinfo *res = resolve(addr, port, allow_remote, err, errlen);
    if (!res) return NULL;
    evutil_socket_t fd = -1;
    int saved = 0;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
        if (fd < 0) { saved = errno; continue; }
        if (evutil_make_listen_socket_reuseable(fd) < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 ||
            listen(fd, 64) < 0) {
            saved = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", addr, port, strerror(saved));
        return NULL;
    }
    http_server_t *s = xcalloc(1, sizeof *s);
    s->reg = registry;
    s->health_cb = health_cb;
    s->ready_cb = ready_cb;
    s->ud = ud;
    sb_init(&s->page);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        s->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    s->http = evhttp_new(base);
    if (!s->http || !evhttp_accept_socket_with_handle(s->http, fd)) {
        snprintf(err, errlen, "cannot serve http on %s:%d", addr, port);
        if (s->http) evhttp_free(s->http);
        close(fd);
        sb_free(&s->page);
        free(s);
        return NULL;
    }
    /* Small, bounded requests: scrapers and probes send a line and a few headers. */
    evhttp_set_timeout(s->http, 10);
    evhttp_set_max_headers_size(s->http, 8192);
    evhttp_set_max_body_size(s->http, 4096);
    evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                            EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    evhttp_set_gencb(s->http, on_request, s);
    log_info("http_listening", "bind=%s port=%d", addr, s->port);
    return s;
}

int http_server_port(const http_server_t *s) { return s ? s->port : 0; }

void http_server_free(http_server_t *s) {
    if (!s) return;
    evhttp_free(s->http); /* closes the listening socket and open connections */
    sb_free(&s->page);
    free(s);
}
