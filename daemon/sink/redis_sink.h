/* redis_sink.h - the Redis side of the pipeline: hiredis async on the daemon's
 * libevent loop, one connection, every request in order.
 *
 * Writes are Lua scripts. The sink carries several: the built-in claim+push
 * (script 0: SET NX PX an id and, only if the claim is new, push to a stream
 * or list) and any the caller registers before starting (the Redis state
 * store's scripts, state_redis.c), with an optional prelude they share. They
 * run inside one batch script, loaded once per connection (SCRIPT LOAD)
 * before anything is sent on it: the calls queued by one pass of the event
 * loop leave as one EVALSHA (at most 128), run in order, and the batch stops
 * at the first call that fails. A script body sees its arguments as ARGV and
 * KEYS (function parameters), and the prelude's locals as upvalues that live
 * for one batch (a cache there holds for the batch only).
 *
 * Writes are kept until Redis acknowledges them: on a disconnect they are
 * resent, in order, after reconnecting (with backoff), so a write script must
 * be idempotent under resend (guarded by a claim, or by state keyed by the
 * message's id). The caller learns of each acknowledgement through its
 * callback and only then may commit the Kafka offset behind it.
 *
 * Reads (the timer pollers' ZRANGEBYSCORE) ride the same ordered connection,
 * so they see every earlier write, but are not resent: on a disconnect their
 * callback gets NULL and the caller polls again once the sink is ready. */
#ifndef BENEFITD_REDIS_SINK_H
#define BENEFITD_REDIS_SINK_H

#include <stddef.h>
#include <stdint.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include "../core/config.h"

typedef struct redis_sink redis_sink_t;

/* status: 1 = pushed, 0 = id already claimed (a repeat: nothing pushed). */
typedef void (*sink_ack_cb)(void *ud, int status);
/* The reply of a script or a read, valid during the call. NULL: a read
 * dropped because the connection went away (writes never see NULL). */
typedef void (*sink_reply_cb)(void *ud, const redisReply *reply);
/* Called on every change of connection state (1 = ready, 0 = down). */
typedef void (*sink_state_cb)(void *ud, int ready);

redis_sink_t *redis_sink_new(struct event_base *base, const config_t *cfg, sink_state_cb state_cb, void *state_ud);
/* Sets the Lua text that precedes every script in the batch (copied): shared
 * helpers, defined once per batch. It must define a function batch_end(),
 * run once after the batch's calls (those that ran, up to a failed one):
 * where work summed over the calls is written. Only before
 * redis_sink_start; 0 or -1. */
int redis_sink_set_prelude(redis_sink_t *s, const char *lua);
/* Registers a Lua script body (copied); returns its handle for
 * redis_sink_eval. Only before redis_sink_start. Handle 0 is the built-in
 * claim+push. */
int redis_sink_add_script(redis_sink_t *s, const char *lua);
/* Starts connecting; returns at once. */
void redis_sink_start(redis_sink_t *s);
void redis_sink_free(redis_sink_t *s);

/* Queues one claim+push. For OUT_STREAM the entry gets the given field/value
 * pairs; for OUT_LIST the value of the first pair is pushed. Strings are
 * copied. ttl_ms bounds how long the claim (and so the dedup) lasts. */
void redis_sink_push(redis_sink_t *s, const char *claim_key, const char *queue_key, output_kind kind,
                     long long maxlen, long long ttl_ms, int nfields, const char *const *fields,
                     const size_t *lens, sink_ack_cb cb, void *ud);

/* Queues one call of a registered script with these arguments (copied) as
 * ARGV and no KEYS: a write, held and resent until acknowledged. */
void redis_sink_eval(redis_sink_t *s, int script, int nargs, const char *const *args, const size_t *lens,
                     sink_reply_cb cb, void *ud);
/* Queues one read-only command (copied). Not resent: cb(ud, NULL) when the
 * connection drops before the reply. */
void redis_sink_read(redis_sink_t *s, int argc, const char *const *argv, const size_t *lens, sink_reply_cb cb,
                     void *ud);

/* The same for a script that reads its arguments in place, as ARGV[base + 1]
 * onwards (its parameters are ARGV and base; it takes no KEYS and must read
 * no more arguments than it was given): the batch copies nothing for it. */
int redis_sink_add_cursor_script(redis_sink_t *s, const char *lua);
/* Round-trip latency: cb(ud, op, seconds) once per reply, with the time from
 * sending the request (on the connection that answered) to its reply. */
typedef enum { SINK_OP_PUSH, SINK_OP_SCRIPT, SINK_OP_READ } sink_op;
#define SINK_N_OPS 3
extern const char *const sink_op_names[SINK_N_OPS];   /* "push", "script", "read" */
typedef void (*sink_latency_cb)(void *ud, sink_op op, double seconds);
void redis_sink_set_latency_observer(redis_sink_t *s, sink_latency_cb cb, void *ud);

/* Requests queued and not yet answered (writes and reads). */
size_t redis_sink_inflight(const redis_sink_t *s);
int redis_sink_ready(const redis_sink_t *s);
/* Round trips acknowledged, repeats seen, reconnects made: for logs and metrics. */
void redis_sink_stats(const redis_sink_t *s, uint64_t *acked, uint64_t *repeats, uint64_t *reconnects);

#endif
