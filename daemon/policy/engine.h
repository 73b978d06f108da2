/* engine.h - the decision step shared by the daemon and replay.
 * Given a ruleset, one decoded event and the time of decision, it walks the
 * rules that name the event (priority order), applies the stateless policy
 * (enabled, active window, where, variants/holdout, group, shadow) and builds
 * the grant JSON. It does no I/O and reads no state.
 *
 * Two entry points:
 *   engine_run     every trigger shape, as intents (state.h) for a store to
 *                  execute: what the daemon (Redis store) and replay (memory
 *                  store) run;
 *   engine_decide  event triggers only, as finished grants: a thin view over
 *                  the same decide_rule(), used by the unit tests to check
 *                  grant contents without a store. */
#ifndef BENEFITD_ENGINE_H
#define BENEFITD_ENGINE_H

#include <stdint.h>
#include "state.h"
#include "../core/clock.h"
#include "../rules/rules.h"
#include "../core/util.h"

typedef struct decision {
    const rule_t *rule;
    const variant_t *variant;   /* NULL when the rule has no variants */
    int granted;                /* 1: json holds a grant to push */
    const char *reason;         /* granted == 0: "shadow", "holdout", "group lost", ... */
    char grant_id[40];          /* deterministic: rule + member + trigger occurrence */
    const char *target_user;    /* recipient (the trigger's member unless `to:`) */
    const char *channel;
    int64_t issued_at;
    strbuf *json;               /* the grant (granted) or the explain record (not) */
} decision_t;

typedef void (*decision_cb)(void *ud, const event_t *ev, const decision_t *d);
/* ev is NULL for intents decided without an event (inactivity, at fire time). */
typedef void (*intent_cb)(void *ud, const event_t *ev, const intent_t *in);

typedef struct engine {
    strbuf json, text, target;
    strbuf rec, xbody;          /* the open grant record and explain body being emitted */
    expr_arena_t arena;
    expr_memo_t memo;           /* the paths of the event being decided */
    uint64_t matched, granted, suppressed;   /* counters since start */
    /* Derived from the ruleset in use, rebuilt when it changes: which event
     * names cancel waits and which feed inactivity, so an event that does
     * neither costs no intent (in live, no Redis call). Owned copies, so a
     * freed ruleset leaves nothing dangling. */
    uint64_t idx_gen;                        /* ruleset_generation of the set indexed */
    char **cancel_names; size_t n_cancel;    /* sorted */
    char **touch_names; size_t n_touch;      /* sorted */
    int touch_any;                           /* an inactivity rule counts every event */
    char fire_grant_id[40];                  /* engine_decide_inactivity's grant id */
    char device[160], ip[160];               /* the event's limit subjects (policy.h) */
    char tz[64];                             /* the event's context.timezone if a known zone, else "" */
    /* Verdicts on zone names (policy_tz_ok stats a zoneinfo file): a
     * direct-mapped cache, so a stream of members from a few hundred zones
     * costs no system call per event. */
    struct { char name[64]; signed char ok; } tz_cache[256];
    /* the closed loop (engine_set_loop; not owned) */
    char *const *loop_redeem; size_t n_loop_redeem;
    char *const *loop_convert; size_t n_loop_convert;
    long long loop_window_ms;
    char loop_gid[LOOP_GID_MAX + 1];
    /* The member profile of a decision made without an event (inactivity at
     * fire time): `user.*` there. NULL: none (user.* is missing). */
    const cJSON *(*profile_of)(void *ud, const char *user);
    void *profile_ud;
} engine_t;

void engine_init(engine_t *e);
/* The closed loop's event names and attribution window (config `loop`); the
 * arrays must outlive the engine's use of them. window_ms 0: off. */
void engine_set_loop(engine_t *e, char *const *redeem, size_t n_redeem, char *const *convert, size_t n_convert,
                     long long window_ms);
void engine_free(engine_t *e);

/* Decides one event at now_ms. cb is called once per event-trigger rule whose
 * trigger matched (event name and `where`), granted or not, in priority order.
 * Count and inactivity rules are not decided here (see engine_run). */
void engine_decide(engine_t *e, const ruleset_t *rs, const event_t *ev, int64_t now_ms, decision_cb cb, void *ud);

/* Decides one event at clock_now_ms(clk), every shape, as intents, in this
 * order: TOUCH (if the event feeds an inactivity rule), CANCEL (if some rule
 * lists the event in cancel_on), LOOP (a redemption or conversion event of
 * the closed loop), then one intent per matching rule in
 * priority order. Cancel before trigger is what makes "list the trigger in
 * cancel_on" mean "restart the wait" (docs/time.md). Intents point into the
 * engine's buffers: valid during the callback only. */
void engine_run(engine_t *e, const ruleset_t *rs, const event_t *ev, const bd_clock_t *clk, intent_cb cb, void *ud);

/* The decision of inactivity rule r for a member silent since last_ms, made
 * at fire time now_ms (policy is evaluated then). Fills *out (pointing into
 * the engine's buffers) with a GRANT, an EXPLAIN, or a SCHEDULE when the
 * rule also waits. */
void engine_decide_inactivity(engine_t *e, const rule_t *r, const char *user, int64_t last_ms, int64_t now_ms,
                              intent_t *out);

/* The name of the variant rule r gives user (sticky: hash of rule id and
 * member), or NULL when r has no variants. */
const char *engine_variant_name(const rule_t *r, const char *user);

/* grant_id = "g" + 32 hex chars of two independent hashes of
 * (rule id, trigger member, occurrence). */
void engine_grant_id(const char *rule_id, const char *user_id, const char *occurrence, char out[40]);
/* The occurrence of an inactivity grant: "inactive:" + the epoch ms of the
 * activity that started the silence (so live and replay agree). */
void engine_inactivity_occurrence(int64_t last_ms, char out[40]);
/* The activity time that an inactivity rule records for user's event at ts:
 * ts itself, or with a `resolution` (the rule's resolution_ms) the end of the member's step holding ts
 * (steps of resolution_ms, shifted per member by a hash of the id so that
 * the silences of members seen on the same day do not all end at one
 * instant). Never before ts, so a silence is never cut short; at most one
 * step after it. Both stores record this value, so live and replay agree on
 * `last` and the grant id built from it, and the Redis store writes a
 * member's activity once per step instead of once per event. */
int64_t engine_activity_mark(long long resolution_ms, const char *user, int64_t ts);

/* Completes an open grant record issued at `at`: expires_at = at + expires_in
 * (null when expires_in_ms < 0), issued_at = deliver_after = at. Appends to out. */
void engine_finish_grant(const char *rec, size_t len, size_t cut, long long expires_in_ms, int64_t at, strbuf *out);
/* The same, delivered at deliver_after (>= at: quiet hours hold it back). */
void engine_finish_grant_at(const char *rec, size_t len, size_t cut, long long expires_in_ms, int64_t at,
                            int64_t deliver_after, strbuf *out);
/* The explain body of intent in: in->xbody, or, when the engine left it to
 * be built on demand (in->trigger), built into scratch. */
const char *engine_intent_xbody(const intent_t *in, strbuf *scratch, size_t *len);

/* An explain line: {"outcome":"suppressed","reason":R <xbody> <extra> ,"decided_at":at}.
 * extra is NULL or a JSON fragment starting with ','. Appends to out. */
void engine_finish_explain(const char *reason, const char *xbody, size_t len, const char *extra, int64_t at,
                           strbuf *out);

#endif
