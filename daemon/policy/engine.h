/* engine.h - the decision step shared by the daemon and replay.
 * Given a ruleset, one decoded event and the time of decision, it walks the
 * rules that name the event (priority order), applies the stateless policy
 * (enabled, active window, where, variants/holdout, group, shadow) and builds
 * the grant JSON. It does no I/O: the daemon hands grants to the Redis sink,
 * replay to its in-memory store. One code path, two stores. */
#ifndef BENEFITD_ENGINE_H
#define BENEFITD_ENGINE_H

#include <stdint.h>
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

typedef struct engine {
    strbuf json, text, target;
    expr_arena_t arena;
    uint64_t matched, granted, suppressed;   /* counters since start */
} engine_t;

void engine_init(engine_t *e);
void engine_free(engine_t *e);

/* Decides one event at now_ms. cb is called once per rule whose trigger
 * matched (event name and `where`), granted or not, in priority order. */
void engine_decide(engine_t *e, const ruleset_t *rs, const event_t *ev, int64_t now_ms, decision_cb cb, void *ud);

/* grant_id = "g" + 32 hex chars of two independent hashes of
 * (rule id, trigger member, occurrence). */
void engine_grant_id(const char *rule_id, const char *user_id, const char *occurrence, char out[40]);

#endif
