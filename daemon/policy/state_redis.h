/* state_redis.h - the Redis store: the daemon's executor of intents
 * (state.h) and its timers, with the outcomes of state_mem.c (docs/time.md is
 * the contract; "Redis keys" there is the layout).
 *
 * Every intent that needs state is one call of a script carried by the sink
 * (redis_sink.h): ordered on one connection, held until acknowledged, resent
 * after a reconnect. TOUCH intents are the exception: they are batched (up
 * to 256 touches per call, grouped by last-seen set, see redis_store_flush).
 * Each script is idempotent under resend: a wait is known by its rule and
 * its trigger's occurrence, a count occurrence by the message id, a grant by
 * its claim, an inactivity firing by a marker holding the silence's start.
 *
 * Timers live in Redis, per Kafka partition: the daemon polls the partitions
 * it owns (redis_store_poll), so ownership of timers moves with a rebalance
 * and a restarted daemon fires what fell due while it was down. A poll reads
 * only what is due (the members whose earliest wait is due, at most 500):
 * a million pending waits cost one empty range read per tick. */
#ifndef BENEFITD_STATE_REDIS_H
#define BENEFITD_STATE_REDIS_H

#include <stdint.h>
#include "state.h"
#include "engine.h"
#include "../core/config.h"
#include "../rules/rules.h"
#include "../sink/redis_sink.h"

typedef struct redis_store redis_store_t;

/* What a script did. */
typedef enum {
    RS_REPEAT = 0,     /* the grant id was already claimed: nothing pushed */
    RS_GRANTED = 1,    /* claimed and pushed */
    RS_SCHEDULED = 2,  /* a pending wait recorded (or already recorded by this very trigger) */
    RS_PENDING = 3,    /* a wait of the rule is pending for the member: trigger ignored */
    RS_PROGRESS = 4,   /* a count below N */
    RS_EXPLAINED = 5,  /* nothing granted, for the reason of the intent (or a soft reason at due), or
                        * suppressed by policy in the grant step (the reply's second element) */
    RS_CANCELLED = 6,  /* n = how many waits the event cancelled */
    RS_TOUCHED = 7,
    RS_STALE = 8,      /* a timer whose wait was cancelled or fired, a silence that ended: nothing */
    RS_DROPPED = 9,    /* a wait of a removed or disabled rule: deleted, never granted */
    RS_LOOP = 10,      /* a redemption / conversion of the closed loop: n = how many counted */
    RS_ERROR = 11,
} rs_outcome;

/* reason: RS_EXPLAINED / RS_DROPPED / RS_PENDING: why nothing was granted
 * (a policy reason of the grant step, or the intent's); else NULL. Valid
 * during the call only. */
typedef void (*rs_done_cb)(void *ud, rs_outcome kind, long long n, const char *reason);

/* Registers the store's scripts with the sink: call before redis_sink_start.
 * rules points at the daemon's current ruleset (read at each use, so a
 * reload between a poll and its reply is seen); eng decides inactivity. */
redis_store_t *redis_store_new(redis_sink_t *sink, const config_t *cfg, ruleset_t *const *rules, engine_t *eng);
void redis_store_free(redis_store_t *st);

/* Executes one intent of an event read from topic/partition. Returns 1 when
 * a Redis write was queued (cb is called once, on its acknowledgement), 2
 * when the outcome was known without one (cb has been called, before the
 * return: a trigger of a wait this daemon knows is pending), 0 when the
 * intent needed none (an explain: cb is not called).
 * A TOUCH is only appended to the store's pending batch of touches, sent as
 * one call when it reaches 256 touches or at redis_store_flush; its cb gets
 * RS_TOUCHED (or RS_ERROR) on the batch's acknowledgement. */
int redis_store_apply(redis_store_t *st, const intent_t *in, const char *topic, int32_t partition, rs_done_cb cb,
                      void *ud);

/* Forgets what the store knows of pending waits without asking Redis (see
 * redis_store_apply's 2): call when the connection changes state and when the
 * owned partitions change, after which another writer may have been at work. */
void redis_store_forget(redis_store_t *st);

/* Sends the pending batch of touches, if any. Call at the end of each batch
 * of messages, and before waiting for acknowledgements (shutdown). A poll
 * round flushes first by itself. */
void redis_store_flush(redis_store_t *st);

/* One poll round of a partition's timers and inactivity indexes at now: the
 * due waits fire (or are dropped, for rules no longer enabled), the silent
 * members of each inactivity rule fire. done(ud, more, ok) is called once,
 * when every read of the round is answered (fires are queued by then, in
 * order, ahead of anything sent later): more = 1 when a read hit its limit
 * (poll again at once), ok = 0 when the connection dropped meanwhile. */
/* inact_now is the time up to which the partition's activity is known (the
 * wall clock once the consumer is at the end of the partition, else the
 * latest event time read from it): silences are judged against it, so a
 * consumer lagging behind its partition never mistakes unread activity for
 * silence. Waits use now (they are due in processing time). */
void redis_store_poll(redis_store_t *st, const char *topic, int32_t partition, int64_t now, int64_t inact_now,
                      void (*done)(void *ud, int more, int ok), void *ud);

typedef struct rs_stats {
    uint64_t fired, fired_repeats, dropped, stale, inact_fired, scheduled, cancelled, pending_hits, errors;
    uint64_t pending_known; /* of pending_hits, those answered without a call (redis_store_apply's 2) */
    uint64_t touches_skipped; /* activity marks not sent: already written (a rule's `resolution`) */
    uint64_t held;          /* schedules held behind their member's and rule's schedule in flight */
    /* grant steps suppressed by policy (docs/policy.md) */
    uint64_t limited, budget, pool_empty, blocked;
} rs_stats_t;
void redis_store_stats(const redis_store_t *st, rs_stats_t *out);

/* Schedules held now behind their member's schedule in flight: writes still
 * to make, counted with the sink's in flight for backpressure. */
size_t redis_store_held(const redis_store_t *st);

#endif
