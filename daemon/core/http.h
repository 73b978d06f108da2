/* http.h - the observability listener on the daemon's event loop (libevent evhttp):
 *
 *   GET /metrics   200, text/plain; version=0.0.4; charset=utf-8: the registry's page
 *   GET /healthz   200 "ok" while the loop runs (and health_cb, if given, agrees); else 503 "<reason>"
 *   GET /readyz    200 "ok" when ready_cb says ready (NULL: always); else 503 "<reason>"
 *   anything else  404; methods other than GET and HEAD: 405
 *
 * Configuration (daemon config, section `http`):
 *   http: {bind: 127.0.0.1, port: 9464, allow_remote: false}
 * The listener binds to loopback unless allow_remote is set: a bind address
 * that is not loopback (0.0.0.0, ::, a LAN address, a name resolving to one)
 * is refused, so metrics and health never leak off the host by accident. */
#ifndef BENEFITD_HTTP_H
#define BENEFITD_HTTP_H

#include <stddef.h>

#include "metrics.h"

struct event_base;

#define HTTP_DEFAULT_BIND "127.0.0.1"
#define HTTP_DEFAULT_PORT 9464

/* Returns nonzero when healthy / ready; otherwise writes a short reason
 * ("kafka not assigned", "redis down", "rules not loaded") into reason. */
typedef int (*http_check_fn)(void *ud, char *reason, size_t reason_len);

typedef struct http_server http_server_t;

/* Binds bind_addr (NULL or "": HTTP_DEFAULT_BIND; a numeric address or a
 * name) on port (0: an ephemeral port, see http_server_port) and serves on
 * base. registry may be NULL (an empty page). The callbacks run on the loop
 * with ud. Returns NULL with the reason in err when the address is refused
 * or cannot be bound. */
http_server_t *http_server_new(struct event_base *base, const char *bind_addr, int port, int allow_remote,
                               metrics_registry_t *registry, http_check_fn health_cb, http_check_fn ready_cb,
                               void *ud, char *err, size_t errlen);
/* The port actually bound. */
int http_server_port(const http_server_t *s);
/* Closes the listener and any open connection. */
void http_server_free(http_server_t *s);

/* The bind check alone, for `benefitd check`: 0 when bind_addr may be used
 * (loopback, or anything when allow_remote), else -1 with the reason in err. */
int http_check_bind(const char *bind_addr, int allow_remote, char *err, size_t errlen);

#endif
