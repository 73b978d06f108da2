/* profile.h - member profiles: what `user.*` reads in expressions.
 *
 * A profile is a JSON object of traits: what identify events said about the
 * member (merged, newest wins per trait) and what plugins derived (tier,
 * rfm_segment, risk, ...). This module is the bounded in-memory cache and
 * the bookkeeping of what changed; it does no I/O. Who owns the truth:
 *   - replay: the cache is the store (no bound);
 *   - the daemon: Redis is the truth, one hash per member
 *     `P{u:ID}:profile`, field = trait name, value = the trait as JSON text
 *     (docs/profiles.md). The daemon loads a missing profile with HGETALL
 *     before deciding the member's next event and writes each event's
 *     changed traits back (HSET/HDEL) under the event's offset.
 * A member's events all come from one Kafka partition, so the daemon that
 * owns the partition is the only writer of its members' profiles and its
 * cache cannot go stale while it owns them; it drops the cache on every
 * rebalance.
 *
 * The bound: entries are evicted least recently used first once the
 * estimated bytes exceed max_bytes; entries still loading or pinned (an event
 * waiting to be decided refers to them) are never evicted. */
#ifndef BENEFITD_PROFILE_H
#define BENEFITD_PROFILE_H

#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

typedef enum { PROFILE_LOADING, PROFILE_READY } profile_state;

typedef struct profile {
    char *user;
    cJSON *traits;              /* object, never NULL */
    profile_state state;
    int pins;
    size_t bytes;               /* estimate, counted in the cache's total */
    char **dirty;               /* names of traits changed since profile_take_dirty */
    size_t ndirty, capdirty;
    struct profile *prev, *next;   /* LRU: head = most recent */
    struct profile *hnext;
} profile_t;

typedef struct profile_cache {
    profile_t **buckets;
    size_t nbuckets, count;
    size_t bytes, max_bytes;    /* max_bytes 0: no bound */
    profile_t *head, *tail;
    uint64_t hits, misses, evictions;
} profile_cache_t;

void profile_cache_init(profile_cache_t *c, size_t max_bytes);
void profile_cache_free(profile_cache_t *c);
/* Drops every entry that is neither loading nor pinned (a rebalance). */
void profile_cache_clear(profile_cache_t *c);

/* The cached profile of user, marked most recently used, or NULL. */
profile_t *profile_find(profile_cache_t *c, const char *user);
/* Adds an empty profile (READY in replay; LOADING while the daemon fetches
 * it). May evict others to stay under the bound. */
profile_t *profile_add(profile_cache_t *c, const char *user, profile_state st);
/* find, else add READY: replay's one call. */
profile_t *profile_get(profile_cache_t *c, const char *user);

/* Fills a LOADING profile from HGETALL's field/value pairs (values are JSON
 * texts; one that does not parse is kept as a string) and marks it READY.
 * Traits set meanwhile (an identify's) win over the loaded values. */
void profile_load_pairs(profile_cache_t *c, profile_t *p, size_t npairs, const char *const *fields,
                        const size_t *flens, const char *const *vals, const size_t *vlens);

/* Merges an identify event's traits (each top-level key replaces the trait). */
void profile_merge(profile_cache_t *c, profile_t *p, const cJSON *traits);
/* Sets one trait (takes ownership of v; NULL deletes it). */
void profile_set(profile_cache_t *c, profile_t *p, const char *name, cJSON *v);

/* Hands each changed trait to fn (value NULL: deleted) and forgets the
 * changes. Returns how many there were. */
size_t profile_take_dirty(profile_t *p, void (*fn)(void *ud, const char *name, const cJSON *value), void *ud);

#endif
