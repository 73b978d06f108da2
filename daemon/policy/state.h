/* state.h - per-member state for the time shapes, as intents.
 *
 * The engine stays pure: it never reads state. For a decision that depends
 * on state (a count in a window, a pending wait, a cancel, last activity) it
 * emits an intent, and a store executes each intent atomically:
 *   - the in-memory store (state_mem.c; replay and unit tests) executes it at
 *     once, synchronously;
 *   - the Redis store (next stage) executes each one as one Lua call on the
 *     keys of one member (hash tag {u:ID}) plus its partition's timer set.
 * Both must give the same outcomes for the same sequence of intents and
 * advances; docs/time.md is the contract (semantics, ids, reasons, ties).
 *
 * Records. A grant or explain line whose time is only known when the store
 * issues it (a wait fires at its due time, a count grants when it crosses N)
 * travels as an *open record*: the JSON with its time fields left out, which
 * engine_finish_grant / engine_finish_explain complete. Grants are
 * always carried open, so immediate and delayed grants take one path. */
#ifndef BENEFITD_STATE_H
#define BENEFITD_STATE_H

#include <stddef.h>
#include <stdint.h>
#include "../rules/rules.h"

typedef enum {
    INTENT_EXPLAIN,     /* no state: a decision that grants nothing (reason); report only */
    INTENT_GRANT,       /* claim grant_id, push the grant (what event triggers always did) */
    INTENT_COUNT_GRANT, /* add an occurrence to a sliding window; issue when it reaches N */
    INTENT_SCHEDULE,    /* a pending wait: issue at due unless cancelled first */
    INTENT_CANCEL,      /* an event that may cancel the member's pending waits */
    INTENT_TOUCH,       /* member activity, for inactivity */
    INTENT_LOOP,        /* the closed loop: a redemption or a conversion (docs/policy.md) */
} intent_kind;

/* The closed loop (docs/policy.md "The closed loop"): what a grant step and a
 * holdout decision record in the member's recent hash is kept this long past
 * the attribution window, and a redemption counts up to (window + margin)
 * after its grant. */
#define LOOP_MARGIN_MS (24LL * 3600 * 1000)
/* Longest grant id a redemption event may carry (longer: unknown). */
#define LOOP_GID_MAX 128

/* The parts of an open grant record that vary with the trigger, in the order
 * they appear in it: grant_id, user_id (the recipient), benefit.value,
 * message, trigger.message_id, trigger.user_id, trigger.timestamp (each
 * the JSON value). */
enum { REC_GID, REC_TARGET, REC_VALUE, REC_MESSAGE, REC_TMSGID, REC_TUSER, REC_TTS, REC_N_HOLES };

typedef struct intent {
    intent_kind kind;
    const char *user;          /* the member whose state this is (trigger member; {u:ID}) */
    int64_t ts;                /* the decision time (the event's time in replay) */

    /* EXPLAIN, GRANT, COUNT_GRANT, SCHEDULE */
    const rule_t *rule;
    const char *grant_id;      /* rule + member + occurrence: see docs/time.md */
    const char *target_user;   /* recipient (`to:`) */
    const char *channel;
    /* NULL: the record is a grant. Otherwise why it grants nothing. A *soft*
     * reason (holdout, shadow) stands for a grant that would have been made,
     * so it is reported when the grant would have been issued (after the
     * wait, at the crossing); any other reason is reported at once. */
    const char *reason;
    int reason_soft;
    const char *rec;           /* open grant record (reason == NULL or shadow); may be NULL */
    size_t rec_len, rec_cut;   /* rec_cut: where benefit.expires_at's value goes */
    /* Where the parts of rec that come from the trigger lie, [start, end) in
     * rec, in this order: a store may keep a pending wait as the rule's
     * constant text plus these values (state_redis.c "Waits"). */
    size_t rec_holes[REC_N_HOLES][2];
    long long expires_in_ms;   /* -1: expires_at is null */
    const char *xbody;         /* explain body: rule, variant, member, trigger (see engine_finish_explain) */
    size_t xbody_len;
    /* Set when xbody is NULL: the trigger (valid while the intent is being
     * applied) to build the body from, with engine_intent_xbody, only when
     * something is reported: most intents are grants that pass and never
     * report one. */
    const event_t *trigger;
    int64_t wait_ms;           /* > 0: issuing means scheduling a wait due at (issue time + wait_ms) */
    char *const *cancel_on;    /* the rule's cancel_on, kept with the pending wait */
    size_t n_cancel_on;
    /* Policy subjects, checked in the grant step (docs/policy.md): the
     * trigger's context.device.id and context.ip ("" when absent: the
     * per_device / per_ip limit does not apply), and the code pool the grant
     * draws from (NULL: none). Kept with a pending wait, checked when it fires. */
    const char *device;
    const char *ip;
    const char *pool;
    /* The trigger's context.timezone when it names a known zone, else NULL:
     * quiet hours are then those of the configured zone (docs/policy.md). */
    const char *tz;
    /* The variant picked for the member (NULL: the rule has none): the
     * stats are kept per rule and variant. */
    const char *variant;
    /* GRANT of a rule in a group (engine.c "groups"): the grant step takes
     * the group for this trigger (group_occ, its message id) unless another
     * rule's grant took it first; NULL: no group competition. */
    const char *group;
    const char *group_occ;

    /* COUNT_GRANT */
    const char *occurrence;    /* the event's message_id: a redelivered event counts once */
    long long count;           /* N */
    int64_t within_ms;

    /* LOOP: 'r' a redemption of grant_id ("" = not a usable id: unknown),
     * 'c' a conversion; within_ms is the attribution window. */
    char loop_kind;

    /* CANCEL, TOUCH */
    const char *event;         /* event name */
    const char *message_id;    /* CANCEL: reported as cancelled_by */
} intent_t;

/* What a store did. json is valid during the callback only. */
typedef enum {
    OUT_GRANT,    /* a grant was claimed and pushed: json is the grant */
    OUT_EXPLAIN,  /* nothing granted: json is the explain record, reason says why */
    OUT_REPEAT,   /* the grant id was already claimed: nothing pushed */
    OUT_PROGRESS, /* a count below its threshold ("count 2/3"); json is its explain record */
} out_kind;

typedef struct store_out {
    out_kind kind;
    int64_t at;                /* issue / decision time */
    const char *rule_id;
    const char *user;          /* the state's member */
    const char *grant_id;      /* "" for explains */
    const char *channel;       /* OUT_GRANT */
    const char *target_user;   /* OUT_GRANT */
    const char *reason;        /* OUT_EXPLAIN, OUT_PROGRESS */
    int64_t deliver_after;     /* OUT_GRANT: > at when quiet hours hold the grant back */
    const char *json;
    size_t len;
} store_out_t;

typedef void (*store_out_cb)(void *ud, const store_out_t *o);

typedef struct store store_t;
struct engine;

/* The in-memory store. */
store_t *store_mem_new(void);
void store_free(store_t *s);
/* The zone of daily budgets' calendar days (default UTC). */
void store_mem_set_timezone(store_t *s, const char *tz);
/* Adds a code to a pool (codes are handed out in the order they were added).
 * Returns 1 added, 0 already in the pool, -1 already issued, -2 not a valid
 * code (policy_code_ok). */
int store_mem_pool_add(store_t *s, const char *pool, const char *code);
/* Codes available / issued in a pool. */
void store_mem_pool_status(const store_t *s, const char *pool, size_t *available, size_t *issued);
/* The audit record of an issued code (JSON: grant_id, user_id, rule,
 * issued_at), or NULL. */
const char *store_mem_pool_issued(const store_t *s, const char *pool, const char *code);
/* Daemon-wide policy (config: frequency_cap, quiet_hours; docs/policy.md).
 * fcap_count 0 = no frequency cap; quiet_start_min < 0 = no quiet hours. */
void store_mem_set_policy(store_t *s, long long fcap_count, long long fcap_period_ms, int quiet_start_min,
                          int quiet_end_min);
/* The counters by rule and variant (the stand-in for Redis's
 * Pstats:RULE:VARIANT hashes, docs/policy.md "Stats"): each (rule, variant,
 * field, value), in no particular order; the field "holdout size" is the
 * number of distinct members held out. Counters that belong to no rule
 * (redemption_unknown) come with rule "" and variant "-". */
void store_mem_stats_each(const store_t *s, void (*fn)(void *ud, const char *rule, const char *variant,
                                                        const char *field, long long value), void *ud);
/* The closed loop's attribution window (0 = the loop is off: grants and
 * holdout decisions record nothing). */
void store_mem_set_loop(store_t *s, long long window_ms);
/* Blocklist: kind is "user", "device" or "ip". */
void store_mem_block(store_t *s, const char *kind, const char *value);

/* A hint that intents of member `user` come next (replay, right after an
 * event is decoded): stage 0 starts loading the member's slot, stage 1 (some
 * work later) the member. Changes nothing but timing. */
void store_mem_prefetch(store_t *s, const char *user, int stage);

/* Executes one intent at once. rs is the ruleset the intent was decided with
 * (TOUCH needs it to know which inactivity rules the event feeds). */
void store_apply(store_t *s, const ruleset_t *rs, const intent_t *in, store_out_cb cb, void *ud);

/* Fires everything due at or before now, in due-time order (ties: the order
 * the timers were armed): pending waits, and inactivity of members whose
 * activity stopped long enough ago. A fired grant carries its due time as
 * issued_at. Decisions at fire time (inactivity grants) are built by eng
 * against rs, the current rules: a pending wait of a rule that rs no longer
 * has, or has disabled, grants nothing ("rule removed", "rule disabled").
 * Time never goes back: an older now counts as the latest one (a timer armed
 * by a late event, already overdue, fires then, at its own due time). */
void store_advance(store_t *s, const ruleset_t *rs, struct engine *eng, int64_t now, store_out_cb cb, void *ud);

/* Pending waits not yet fired nor cancelled. */
size_t store_pending_waits(const store_t *s);
/* Grant ids claimed so far. */
size_t store_claimed(const store_t *s);

#endif
