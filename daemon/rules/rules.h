/* rules.h - scenario rules: loading the rule files of a directory, and the index by event name.
 * A ruleset is immutable once loaded; reload builds a new one and swaps the
 * pointer between two events, so a bad set never replaces a good one. */
#ifndef BENEFITD_RULES_H
#define BENEFITD_RULES_H

#include <stddef.h>
#include <stdint.h>
#include "expr.h"
#include "template.h"
#include "../core/diag.h"

typedef enum { TRIG_EVENT, TRIG_COUNT, TRIG_INACTIVITY } trigger_kind;

/* A grant's fields; in a variant, unset fields (NULL / -1) fall back to the rule's. */
typedef struct grant_spec {
    char *benefit;            /* coupon | points | code | privilege | free-form */
    char *sku;
    expr_t *value;            /* number or expression; NULL = absent */
    long long expires_in_ms;  /* -1 = absent */
    char *channel;            /* NULL = "default" */
    template_t *message;      /* NULL = absent */
    expr_t *to;               /* recipient expression; NULL = the triggering member */
    char *pool;               /* code pools (benefit: code) */
} grant_spec_t;

typedef struct variant {
    char *name;
    int weight;
    int holdout;
    grant_spec_t grant;
} variant_t;

typedef struct limit {
    long long count, period_ms;   /* count = 0: unset */
} limit_t;

typedef struct rule {
    char *id;
    char *description;
    char *file;               /* where it was defined */
    int line;
    char version[17];         /* hex hash of the rule's canonical content */
    int enabled;
    int shadow;               /* mode: shadow */
    int priority;
    char *group;              /* NULL = none */
    int64_t active_from_ms;   /* 0 = unbounded */
    int64_t active_until_ms;  /* 0 = unbounded; exclusive (end of the until day) */
    expr_t *audience;
    trigger_kind kind;
    char **events; size_t n_events;   /* trigger.event / inactivity events (0 = any) */
    expr_t *where;
    long long count;          /* TRIG_COUNT */
    long long within_ms;      /* TRIG_COUNT */
    long long inactive_ms;    /* TRIG_INACTIVITY */
    long long resolution_ms;  /* TRIG_INACTIVITY: activity is recorded per step of this (0 = to the ms) */
    long long wait_ms;        /* 0 = immediate */
    char **cancel_on; size_t n_cancel_on;
    grant_spec_t grant;
    limit_t per_user, per_device, per_ip;
    long long budget, daily_budget;   /* 0 = unlimited */
    variant_t *variants; size_t n_variants;
    int total_weight;
    long long attribution_ms; /* closed loop: this rule's attribution window; 0 = loop.attribution_window */
} rule_t;

/* The attribution window of r's grants and holdout assignments: its own, else
 * the daemon-wide one (dflt). dflt 0 (the loop is off) wins over both. */
static inline long long rule_attribution_ms(const rule_t *r, long long dflt) {
    return dflt > 0 && r && r->attribution_ms > 0 ? r->attribution_ms : dflt;
}

typedef struct rule_list {
    const rule_t **rules;     /* sorted by priority, highest first, then id */
    size_t n;
} rule_list_t;

typedef struct ruleset ruleset_t;

/* Loads every *.yaml / *.yml file of dir (sorted by name). timezone applies
 * to `active` dates. Returns NULL when any error was found (all in diag);
 * warnings never make it fail. */
ruleset_t *ruleset_load_dir(const char *dir, const char *timezone, diag_t *diag);
/* Loads a single file into a ruleset (tests and fuzzing). */
ruleset_t *ruleset_load_string(const char *name, const char *text, size_t len, const char *timezone, diag_t *diag);
void ruleset_free(ruleset_t *rs);

/* Load options. The time shapes (wait, cancel_on, count/within,
 * inactive_for) run in both stores now, and `run`, `check` and `replay` all
 * load with RULES_ALLOW_TIME; without it (ruleset_load_dir/_string) they are
 * still refused, which only tests and fuzzing use. */
enum { RULES_ALLOW_TIME = 1u << 0 };
ruleset_t *ruleset_load_dir_ex(const char *dir, const char *timezone, unsigned flags, diag_t *diag);
ruleset_t *ruleset_load_string_ex(const char *name, const char *text, size_t len, const char *timezone,
                                  unsigned flags, diag_t *diag);

size_t ruleset_count(const ruleset_t *rs);
const rule_t *ruleset_rule(const ruleset_t *rs, size_t i);
const rule_t *ruleset_find(const ruleset_t *rs, const char *id);
/* Enabled rules whose trigger names this event (an O(1) hash lookup); never
 * NULL. Inactivity rules are not listed: they fire on silence, not on a name. */
const rule_list_t *ruleset_for_event(const ruleset_t *rs, const char *event_name);
/* A version for the whole set (hash of every rule's version). */
const char *ruleset_version(const ruleset_t *rs);
/* Never the same for two sets loaded by this process, even when one reuses
 * a freed set's address: what is derived from a set is rebuilt when it
 * changes, with one comparison per event instead of a strcmp of versions. */
uint64_t ruleset_generation(const ruleset_t *rs);
/* 1 when some rule reads the member profile (audience, or user.* anywhere). */
int ruleset_uses_profile(const ruleset_t *rs);

#endif
