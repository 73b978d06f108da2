/* profile.c - the member profile cache (profile.h). */
#include "profile.h"

#include <stdlib.h>
#include <string.h>
#include "../core/util.h"

/* What an entry costs besides its traits: the struct, the key, the hash slot,
 * cJSON's root. Rough, but it makes max_bytes mean memory, not entries. */
#define ENTRY_OVERHEAD (sizeof(profile_t) + sizeof(cJSON) + 2 * sizeof(void *) + 32)

static size_t json_bytes(const cJSON *j) {
    size_t n = sizeof(cJSON) + 16;
    if (j->string) n += strlen(j->string) + 1;
    if (cJSON_IsString(j) && j->valuestring) n += strlen(j->valuestring) + 1;
    for (const cJSON *c = j->child; c; c = c->next) n += json_bytes(c);
    return n;
}

static size_t entry_bytes(const profile_t *p) {
    size_t n = ENTRY_OVERHEAD + strlen(p->user) + 1;
    for (const cJSON *c = p->traits->child; c; c = c->next) n += json_bytes(c);
    return n + p->capdirty * sizeof(char *);
}

static void recount(profile_cache_t *c, profile_t *p) {
    c->bytes -= p->bytes;
    p->bytes = entry_bytes(p);
    c->bytes += p->bytes;
}

void profile_cache_init(profile_cache_t *c, size_t max_bytes) {
    memset(c, 0, sizeof *c);
    c->nbuckets = 1024;
    c->buckets = xcalloc(c->nbuckets, sizeof *c->buckets);
    c->max_bytes = max_bytes;
}

static void lru_unlink(profile_cache_t *c, profile_t *p) {
    if (p->prev) p->prev->next = p->next; else c->head = p->next;
    if (p->next) p->next->prev = p->prev; else c->tail = p->prev;
    p->prev = p->next = NULL;
}

static void lru_front(profile_cache_t *c, profile_t *p) {
    p->next = c->head;
    p->prev = NULL;
    if (c->head) c->head->prev = p;
    c->head = p;
    if (!c->tail) c->tail = p;
}

static size_t slot(const profile_cache_t *c, const char *user) {
    return (size_t)(hash64(user, strlen(user), 0x9e3779b97f4a7c15ULL) & (c->nbuckets - 1));
}

static void entry_free(profile_t *p) {
    for (size_t i = 0; i < p->ndirty; i++) free(p->dirty[i]);
    free(p->dirty);
    cJSON_Delete(p->traits);
    free(p->user);
    free(p);
}

static void entry_remove(profile_cache_t *c, profile_t *p) {
    profile_t **pp = &c->buckets[slot(c, p->user)];
    while (*pp != p) pp = &(*pp)->hnext;
    *pp = p->hnext;
    lru_unlink(c, p);
    c->bytes -= p->bytes;
    c->count--;
    entry_free(p);
}

void profile_cache_free(profile_cache_t *c) {
    for (profile_t *p = c->head, *n; p; p = n) {
        n = p->next;
        entry_free(p);
    }
    free(c->buckets);
    memset(c, 0, sizeof *c);
}

void profile_cache_clear(profile_cache_t *c) {
    for (profile_t *p = c->head, *n; p; p = n) {
        n = p->next;
        if (p->state == PROFILE_READY && p->pins == 0) entry_remove(c, p);
    }
}

static void grow(profile_cache_t *c) {
    size_t nb = c->nbuckets * 2;
    profile_t **b = xcalloc(nb, sizeof *b);
    for (size_t i = 0; i < c->nbuckets; i++) {
        for (profile_t *p = c->buckets[i], *n; p; p = n) {
            n = p->hnext;
            size_t s = (size_t)(hash64(p->user, strlen(p->user), 0x9e3779b97f4a7c15ULL) & (nb - 1));
            p->hnext = b[s];
            b[s] = p;
        }
    }
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = nb;
}

/* Evicts from the cold end, skipping what must stay (loading, pinned, or
 * `keep`, the entry being added), until under the bound. */
static void evict(profile_cache_t *c, const profile_t *keep) {
    if (!c->max_bytes) return;
    profile_t *p = c->tail;
    while (c->bytes > c->max_bytes && p) {
        profile_t *prev = p->prev;
        if (p != keep && p->state == PROFILE_READY && p->pins == 0 && p->ndirty == 0) {
            entry_remove(c, p);
            c->evictions++;
        }
        p = prev;
    }
}

profile_t *profile_find(profile_cache_t *c, const char *user) {
    for (profile_t *p = c->buckets[slot(c, user)]; p; p = p->hnext) {
        if (!strcmp(p->user, user)) {
            if (c->head != p) {
                lru_unlink(c, p);
                lru_front(c, p);
            }
            c->hits++;
            return p;
        }
    }
    c->misses++;
    return NULL;
}

profile_t *profile_add(profile_cache_t *c, const char *user, profile_state st) {
    if (c->count >= c->nbuckets) grow(c);
    profile_t *p = xcalloc(1, sizeof *p);
    p->user = xstrdup(user);
    p->traits = cJSON_CreateObject();
    if (!p->traits) abort();
    p->state = st;
    size_t s = slot(c, user);
    p->hnext = c->buckets[s];
    c->buckets[s] = p;
    lru_front(c, p);
    c->count++;
    recount(c, p);
    evict(c, p);
    return p;
}

profile_t *profile_get(profile_cache_t *c, const char *user) {
    profile_t *p = profile_find(c, user);
    return p ? p : profile_add(c, user, PROFILE_READY);
}

static int is_dirty(const profile_t *p, const char *name) {
    for (size_t i = 0; i < p->ndirty; i++)
        if (!strcmp(p->dirty[i], name)) return 1;
    return 0;
}

static void mark_dirty(profile_t *p, const char *name) {
    if (is_dirty(p, name)) return;
    if (p->ndirty == p->capdirty) {
        p->capdirty = p->capdirty ? p->capdirty * 2 : 4;
        p->dirty = xrealloc(p->dirty, p->capdirty * sizeof *p->dirty);
    }
    p->dirty[p->ndirty++] = xstrdup(name);
}

static void put(profile_t *p, const char *name, cJSON *v) {
    if (cJSON_GetObjectItemCaseSensitive(p->traits, name)) cJSON_DeleteItemFromObjectCaseSensitive(p->traits, name);
    if (v) cJSON_AddItemToObject(p->traits, name, v);
}

void profile_load_pairs(profile_cache_t *c, profile_t *p, size_t npairs, const char *const *fields,
                        const size_t *flens, const char *const *vals, const size_t *vlens) {
    for (size_t i = 0; i < npairs; i++) {
        char *name = xstrndup(fields[i], flens[i]);
        if (!is_dirty(p, name)) {
            cJSON *v = cJSON_ParseWithLength(vals[i], vlens[i]);
            if (!v) {
                char *s = xstrndup(vals[i], vlens[i]);
                v = cJSON_CreateString(s);
                free(s);
                if (!v) abort();
            }
            put(p, name, v);
        }
        free(name);
    }
    p->state = PROFILE_READY;
    recount(c, p);
    evict(c, p);
}

void profile_merge(profile_cache_t *c, profile_t *p, const cJSON *traits) {
    if (!cJSON_IsObject(traits)) return;
    for (const cJSON *t = traits->child; t; t = t->next) {
        if (!t->string || !t->string[0]) continue;
        cJSON *v = cJSON_Duplicate(t, 1);
        if (!v) abort();
        put(p, t->string, v);
        mark_dirty(p, t->string);
    }
    recount(c, p);
}

void profile_set(profile_cache_t *c, profile_t *p, const char *name, cJSON *v) {
    put(p, name, v);
    mark_dirty(p, name);
    recount(c, p);
}

size_t profile_take_dirty(profile_t *p, void (*fn)(void *ud, const char *name, const cJSON *value), void *ud) {
    size_t n = p->ndirty;
    for (size_t i = 0; i < n; i++) {
        if (fn) fn(ud, p->dirty[i], cJSON_GetObjectItemCaseSensitive(p->traits, p->dirty[i]));
        free(p->dirty[i]);
    }
    p->ndirty = 0;
    return n;
}
