/* redis_sink.h - the Redis side of the pipeline: hiredis async on the daemon's
 * libevent loop. Every write is one EVALSHA of a script that claims an id
 * (SET NX PX) and, only if the claim is new, pushes to a stream or list, so a
 * write may be repeated any number of times (reconnects, redelivery, kill -9)
 * and takes effect once.
 *
 * Writes are kept until Redis acknowledges them: on a disconnect they are
 * resent, in order, after reconnecting (with backoff). The caller learns of
 * each acknowledgement through its callback and only then may commit the
 * Kafka offset behind it. */
#ifndef BENEFITD_REDIS_SINK_H
#define BENEFITD_REDIS_SINK_H

#include <stddef.h>
#include <stdint.h>
#include <event2/event.h>
#include "../core/config.h"

typedef struct redis_sink redis_sink_t;

/* status: 1 = pushed, 0 = id already claimed (a repeat: nothing pushed). */
typedef void (*sink_ack_cb)(void *ud, int status);
/* Called on every change of connection state (1 = ready, 0 = down). */
typedef void (*sink_state_cb)(void *ud, int ready);

redis_sink_t *redis_sink_new(struct event_base *base, const config_t *cfg, sink_state_cb state_cb, void *state_ud);
/* Starts connecting; returns at once. */
void redis_sink_start(redis_sink_t *s);
void redis_sink_free(redis_sink_t *s);

/* Queues one claim+push. For OUT_STREAM the entry gets the given field/value
 * pairs; for OUT_LIST the value of the first pair is pushed. Strings are
 * copied. ttl_ms bounds how long the claim (and so the dedup) lasts. */
void redis_sink_push(redis_sink_t *s, const char *claim_key, const char *queue_key, output_kind kind,
                     long long maxlen, long long ttl_ms, int nfields, const char *const *fields,
                     const size_t *lens, sink_ack_cb cb, void *ud);

size_t redis_sink_inflight(const redis_sink_t *s);
int redis_sink_ready(const redis_sink_t *s);
/* Round trips acknowledged, repeats seen, reconnects made: for logs and metrics. */
void redis_sink_stats(const redis_sink_t *s, uint64_t *acked, uint64_t *repeats, uint64_t *reconnects);

#endif
