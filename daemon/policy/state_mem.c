/* state_mem.c - the in-memory store: executes intents at once, fires timers
 * on store_advance. Replay and the unit tests run it; it is the reference for
 * what the Redis store must do (docs/time.md).
 *
 * Layout. Members are in an open-addressing map; each holds its pending
 * waits (a short list), one sliding window per count rule and one
 * last-activity record per inactivity rule. Timers are one binary heap
 * ordered by (due, arm sequence), with lazy deletion: a cancelled wait stays
 * in the heap, marked dead, until its due time pops it. Inactivity keeps at
 * most one heap entry per (member, rule): activity only moves `last`, and
 * when the entry pops early it is pushed again at the new deadline, so a
 * member with a million events costs one entry, not a million. */
#include "state.h"
#include "engine.h"
#include "policy.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct wait {
    char *rule_id, *user, *target_user, *channel;
    char grant_id[40];
    char reason[16];          /* "" or a soft reason (holdout, shadow) reported at due */
    int64_t due;
    char *rec;                /* open grant record, or NULL */
    size_t rec_len, rec_cut;
    long long expires_in;
    char *xbody;
    size_t xbody_len;
    char **cancel_on;
    size_t n_cancel_on;
    char *device, *ip, *pool; /* policy subjects, checked when the wait fires */
    char *tz;                 /* the member's zone for quiet hours, or NULL */
    int dead;                 /* cancelled: skipped and freed when the heap pops it */
    struct wait *next;        /* the member's pending waits */
    struct member *m;         /* whose: members live as long as the store */
} wait_t;
/* A wait and everything it points to are one allocation (schedule): a dozen
 * mallocs and frees per wait were a tenth of the store's time. */

typedef struct occ {
    int64_t ts;
    uint64_t h1, h2;          /* the occurrence id, hashed twice (128 bits) */
} occ_t;

typedef struct window {
    const char *rule_id;      /* interned (store_t ids) */
    occ_t *v;
    size_t n, cap;
} window_t;

typedef struct inact {
    const char *rule_id;      /* interned (store_t ids): compared by pointer */
    int64_t last;             /* last activity this rule counts */
    int64_t fired_last;       /* the `last` whose silence already fired */
    int fired;
    int armed;                /* has a heap entry */
} inact_t;

/* A field of the member's recent hash (docs/policy.md "The closed loop"):
 * a grant id, or "h:RULE" for a holdout assignment. */
typedef struct recent {
    char *field;
    const char *rule, *variant; /* interned (store_t ids) */
    int64_t ms;
    long long window;         /* the rule's attribution window when recorded */
} recent_t;

typedef struct member {
    char *id;
    recent_t *rec;
    size_t nrec;
    wait_t *waits;
    window_t *win;
    size_t nwin;
    inact_t *ina;             /* &ina0 while there is one: most members have one inactivity rule */
    size_t nina;
    inact_t ina0;
} member_t;

enum { T_WAIT, T_INACT };
typedef struct timer {
    int64_t due;
    uint64_t seq;
    int kind;
    wait_t *w;                /* T_WAIT */
    member_t *m;              /* T_INACT */
    size_t ina;               /* T_INACT: index into m->ina (stable across growth) */
} timer_t_;

/* Strings that live as long as their owner (a map's keys, the claims, the
 * members' recent fields), carved from chunks freed whole: a malloc and a
 * free per string were most of the store's exit (~4% of a 1M replay). */
typedef struct sslab {
    struct sslab *next;
    size_t used, cap;
    char data[];
} sslab;

#define SSLAB_BYTES (64 * 1024)

static char *slab_strndup(sslab **head, const char *str, size_t n) {
    sslab *c = *head;
    if (!c || c->cap - c->used < n + 1) {
        size_t cap = n + 1 > SSLAB_BYTES ? n + 1 : SSLAB_BYTES;
        c = xmalloc(sizeof *c + cap);
        c->used = 0;
        c->cap = cap;
        c->next = *head;
        *head = c;
    }
    char *d = c->data + c->used;
    memcpy(d, str, n);
    d[n] = '\0';
    c->used += n + 1;
    return d;
}

static void slab_free(sslab **head) {
    for (sslab *c = *head, *n; c; c = n) {
        n = c->next;
        free(c);
    }
    *head = NULL;
}

/* A string-keyed map (open addressing); values are owned by the caller's
 * free function. Used for limit windows, budget counters, pools and the
 * blocklist: the in-memory stand-ins for their Redis keys. */
typedef struct kv {
    char *k;
    void *v;
    uint64_t h;               /* hkey(k): probes compare it before the string */
} kv;
typedef struct smap {
    kv *s;
    size_t cap, n;
    sslab *keys;              /* where the keys live (never removed one by one) */
} smap;

/* A limit's sliding window (grant times) or a budget counter. */
typedef struct lim {
    int64_t *ts;
    size_t n, cap;
    long long count;
} lim_t;

/* A code pool: codes in load order (popped from head), the codes in it, and
 * the audit record of every issued code. */
typedef struct pool {
    char **codes;
    size_t head, n, cap;
    smap avail;               /* code -> (void *)1 */
    smap issued;              /* code -> audit JSON */
} pool_t;

/* A slot of the member and claim maps: the key's hash beside the pointer,
 * so a probe that is not the key costs no strcmp (nor, for members, a
 * cache miss on the member), and growing rehashes nothing. */
typedef struct hslot {
    uint64_t h;
    void *p;                  /* member_t *, or the claimed grant id (char *) */
} hslot;

/* Members are never freed one by one (they live as long as the store), so
 * they are carved from slabs: a malloc and a free per member were most of
 * the store's exit, and members made together sit together. */
typedef struct mslab {
    struct mslab *next;
    size_t used, cap;
    max_align_t data[];
} mslab;

#define MSLAB_BYTES (256 * 1024)

struct store {
    hslot *slots;             /* members */
    size_t cap, n;
    mslab *slab;              /* where members live, newest first */
    member_t *last;           /* the member last looked up */
    uint64_t pf_h;            /* store_mem_prefetch: the hash of the member announced */
    hslot *claims;            /* the stand-in for Redis claims: a set of grant ids */
    sslab *claim_ids;         /* the claims' grant ids */
    sslab *rec_fields;        /* the members' recent fields (recent_t.field) */
    size_t ccap, cn;
    timer_t_ *heap;
    size_t hn, hcap;
    uint64_t seq;
    int64_t now;              /* high-water mark of store_advance */
    int advanced;
    size_t pending;
    strbuf out;
    strbuf xbody;             /* an intent's explain body, built on demand (engine_intent_xbody) */
    /* the inactivity rules of the ruleset last seen by TOUCH, with their
     * interned ids */
    uint64_t igen;
    size_t *inact_idx;
    const char **inact_id;
    size_t n_inact;
    /* Rule ids and variant names that members' records refer to, each kept
     * once: a copy per member and rule was a malloc per member, a strcmp
     * per event and a free per member at exit. Never shrinks (the names of
     * a ruleset's rules). */
    smap ids;
    /* policy (docs/policy.md) */
    char *tz;
    policy_day_cache day;
    smap lims;                /* key (as in Redis) -> lim_t */
    smap pools;               /* name -> pool_t */
    smap blocks;              /* "kind:value" -> (void *)1 */
    strbuf key;
    long long fcap_count, fcap_period;
    int quiet_start, quiet_end;
    policy_quiet_cache quiet;
    smap stats;               /* "RULE\x1fVARIANT\x1fFIELD" -> lim_t (count) */
    smap held;                /* "RULE\x1fVARIANT\x1fMEMBER" of holdout outcomes */
    strbuf skey;
    /* the closed loop: the attribution window (0 = off), the guards */
    long long loop_window;
    const ruleset_t *rs;      /* the rules of the call in progress (rule_attribution_ms) */
    smap redeemed;            /* "MEMBER\x1fGID": P{u:ID}:redeemed:GID */
    smap groups;              /* "MEMBER\x1fGROUP\x1fMSGID" -> grant id: P{u:ID}:grp:GROUP:MSGID */
    smap conv;                /* "MEMBER\x1fGID": P{u:ID}:conv:GID; "RULE\x1fVARIANT\x1fMEMBER": :conv set */
};

/* The hash of the in-memory maps' keys: no output depends on a map's order
 * (stats are sorted when printed), so hash_words serves. */
static uint64_t hkey(const char *s, size_t *len_out) {
    size_t n = strlen(s);
    if (len_out) *len_out = n;
    return hash_words(s, n);
}

static void **smap_slot(smap *m, const char *k, int create) {
    if (!create && !m->cap) return NULL;
    if (create && (m->n + 1) * 2 > m->cap) {
        size_t ncap = m->cap ? m->cap * 2 : 64;
        kv *ns = xcalloc(ncap, sizeof *ns);
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->s[i].k) continue;
            size_t j = (size_t)m->s[i].h & (ncap - 1);
            while (ns[j].k) j = (j + 1) & (ncap - 1);
            ns[j] = m->s[i];
        }
        free(m->s);
        m->s = ns;
        m->cap = ncap;
    }
    size_t len;
    uint64_t h = hkey(k, &len);
    size_t j = (size_t)h & (m->cap - 1);
    while (m->s[j].k) {
        if (m->s[j].h == h && !strcmp(m->s[j].k, k)) return &m->s[j].v;
        j = (j + 1) & (m->cap - 1);
    }
    if (!create) return NULL;
    m->s[j].k = slab_strndup(&m->keys, k, len);
    m->s[j].h = h;
    m->n++;
    return &m->s[j].v;
}

static void *smap_get(const smap *m, const char *k) {
    void **v = smap_slot((smap *)m, k, 0);
    return v ? *v : NULL;
}

static void smap_free(smap *m, void (*fv)(void *)) {
    for (size_t i = 0; fv && i < m->cap; i++)
        if (m->s[i].k) fv(m->s[i].v);
    free(m->s);
    slab_free(&m->keys);
    memset(m, 0, sizeof *m);
}

/* The store's one copy of str, for the life of the store. */
static const char *intern(store_t *s, const char *str) {
    void **v = smap_slot(&s->ids, str, 1);
    return ((const kv *)((const char *)v - offsetof(kv, v)))->k;
}

static void lim_free(void *p) {
    lim_t *l = p;
    free(l->ts);
    free(l);
}

static void pool_free(void *p) {
    pool_t *pl = p;
    for (size_t i = pl->head; i < pl->n; i++) free(pl->codes[i]);
    free(pl->codes);
    smap_free(&pl->avail, NULL);
    smap_free(&pl->issued, free);
    free(pl);
}

/* ---- members -------------------------------------------------------------- */

/* Room for one more key in a slot map of *n keys (load <= 1/2), moving
 * slots by their stored hashes. */
static void hslot_reserve(hslot **slots, size_t *cap, size_t n) {
    if ((n + 1) * 2 <= *cap) return;
    size_t ncap = *cap ? *cap * 2 : 1024;
    hslot *ns = xcalloc(ncap, sizeof *ns);
    for (size_t i = 0; i < *cap; i++) {
        if (!(*slots)[i].p) continue;
        size_t j = (size_t)(*slots)[i].h & (ncap - 1);
        while (ns[j].p) j = (j + 1) & (ncap - 1);
        ns[j] = (*slots)[i];
    }
    free(*slots);
    *slots = ns;
    *cap = ncap;
}

/* A member's footprint in its slab: the member, then its id. */
static size_t member_size(size_t id_len) {
    const size_t a = _Alignof(member_t);
    return (sizeof(member_t) + id_len + 1 + a - 1) & ~(a - 1);
}

/* A zeroed member with room for an id of len bytes after it. */
static member_t *member_new(store_t *s, size_t len) {
    size_t need = member_size(len);
    mslab *c = s->slab;
    if (!c || c->cap - c->used < need) {
        size_t cap = need > MSLAB_BYTES ? need : MSLAB_BYTES;
        c = xcalloc(1, sizeof *c + cap);
        c->cap = cap;
        c->next = s->slab;
        s->slab = c;
    }
    member_t *m = (member_t *)((char *)c->data + c->used);
    c->used += need;
    return m;
}

static member_t *member_get(store_t *s, const char *id) {
    /* an event's intents (touch, grants, waits, counts) are mostly one member's */
    if (s->last && strcmp(s->last->id, id) == 0) return s->last;
    hslot_reserve(&s->slots, &s->cap, s->n);
    size_t len;
    uint64_t h = hkey(id, &len);
    size_t j = (size_t)h & (s->cap - 1);
    while (s->slots[j].p) {
        member_t *m = s->slots[j].p;
        if (s->slots[j].h == h && strcmp(m->id, id) == 0) return s->last = m;
        j = (j + 1) & (s->cap - 1);
    }
    /* the id right after the member: the strcmp of a hit reads the member's
     * own cache lines, not a third allocation */
    member_t *m = member_new(s, len);
    m->id = memcpy(m + 1, id, len + 1);
    s->slots[j] = (hslot){h, m};
    s->n++;
    return s->last = m;
}

/* Looking a member up is two dependent cache misses (its slot, then the
 * member) at the start of every event's first intent; replay announces the
 * member as soon as the event is decoded, so both loads overlap the work in
 * between. A hint only: nothing it reads decides anything. */
void store_mem_prefetch(store_t *s, const char *user, int stage) {
    if (!s->cap) return;
    if (stage == 0) {
        s->pf_h = hkey(user, NULL);
        __builtin_prefetch(&s->slots[(size_t)s->pf_h & (s->cap - 1)]);
        return;
    }
    for (size_t j = (size_t)s->pf_h & (s->cap - 1); s->slots[j].p; j = (j + 1) & (s->cap - 1)) {
        if (s->slots[j].h != s->pf_h) continue;
        const char *m = s->slots[j].p;
        __builtin_prefetch(m);
        __builtin_prefetch(m + 64);
        __builtin_prefetch(m + 127);
        return;
    }
}

/* The slot of grant id `id` in the claims (its hash in *h): a claimed id's,
 * else the empty slot where it would go. */
static hslot *claim_slot(store_t *s, const char *id, uint64_t *h) {
    hslot_reserve(&s->claims, &s->ccap, s->cn);
    *h = hkey(id, NULL);
    size_t j = (size_t)*h & (s->ccap - 1);
    while (s->claims[j].p && !(s->claims[j].h == *h && strcmp(s->claims[j].p, id) == 0))
        j = (j + 1) & (s->ccap - 1);
    return &s->claims[j];
}

static int claim(store_t *s, hslot *slot, uint64_t h, const char *id) {
    if (slot->p) return 0;
    *slot = (hslot){h, slab_strndup(&s->claim_ids, id, strlen(id))};
    s->cn++;
    return 1;
}

/* ---- timers --------------------------------------------------------------- */

static int t_less(const timer_t_ *a, const timer_t_ *b) {
    return a->due != b->due ? a->due < b->due : a->seq < b->seq;
}

static void heap_push(store_t *s, timer_t_ t) {
    t.seq = s->seq++;
    if (s->hn == s->hcap) {
        s->hcap = s->hcap ? s->hcap * 2 : 256;
        s->heap = xrealloc(s->heap, s->hcap * sizeof *s->heap);
    }
    size_t i = s->hn++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!t_less(&t, &s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = t;
}

static timer_t_ heap_pop(store_t *s) {
    timer_t_ top = s->heap[0], last = s->heap[--s->hn];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= s->hn) break;
        if (c + 1 < s->hn && t_less(&s->heap[c + 1], &s->heap[c])) c++;
        if (!t_less(&s->heap[c], &last)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (s->hn) s->heap[i] = last;
    return top;
}

/* ---- lifecycle ------------------------------------------------------------ */

store_t *store_mem_new(void) {
    store_t *s = xcalloc(1, sizeof *s);
    sb_init(&s->out);
    sb_init(&s->xbody);
    s->quiet_start = s->quiet_end = -1;
    return s;
}

void store_mem_set_policy(store_t *s, long long fcap_count, long long fcap_period_ms, int quiet_start_min,
                          int quiet_end_min) {
    s->fcap_count = fcap_count > 0 && fcap_period_ms > 0 ? fcap_count : 0;
    s->fcap_period = fcap_period_ms;
    s->quiet_start = quiet_start_min;
    s->quiet_end = quiet_end_min;
}

void store_mem_set_loop(store_t *s, long long window_ms) { s->loop_window = window_ms > 0 ? window_ms : 0; }

static void wait_free(wait_t *w) { free(w); }

void store_free(store_t *s) {
    if (!s) return;
    /* Every wait, live or dead, is in the heap exactly once. */
    for (size_t i = 0; i < s->hn; i++)
        if (s->heap[i].kind == T_WAIT) wait_free(s->heap[i].w);
    free(s->heap);
    /* slab by slab, member after member: in memory order, not the map's */
    for (mslab *c = s->slab, *next; c; c = next) {
        next = c->next;
        for (size_t off = 0; off < c->used;) {
            member_t *m = (member_t *)((char *)c->data + off);
            off += member_size(strlen(m->id));
            for (size_t k = 0; k < m->nwin; k++) free(m->win[k].v);
            free(m->win);
            if (m->ina != &m->ina0) free(m->ina);
            free(m->rec);
        }
        free(c);
    }
    free(s->slots);
    free(s->claims);
    slab_free(&s->claim_ids);
    slab_free(&s->rec_fields);
    free(s->inact_idx);
    free(s->inact_id);
    smap_free(&s->ids, NULL);
    sb_free(&s->out);
    sb_free(&s->xbody);
    free(s->tz);
    smap_free(&s->lims, lim_free);
    smap_free(&s->pools, pool_free);
    smap_free(&s->blocks, NULL);
    sb_free(&s->key);
    smap_free(&s->stats, lim_free);
    smap_free(&s->held, NULL);
    smap_free(&s->redeemed, NULL);
    smap_free(&s->groups, free);
    smap_free(&s->conv, NULL);
    sb_free(&s->skey);
    free(s);
}

void store_mem_set_timezone(store_t *s, const char *tz) {
    free(s->tz);
    s->tz = tz && *tz ? xstrdup(tz) : NULL;
    memset(&s->day, 0, sizeof s->day);
}

static pool_t *pool_get(store_t *s, const char *name, int create) {
    void **v = smap_slot(&s->pools, name, create);
    if (!v) return NULL;
    if (!*v) *v = xcalloc(1, sizeof(pool_t));
    return *v;
}

int store_mem_pool_add(store_t *s, const char *name, const char *code) {
    if (!policy_code_ok(code, strlen(code))) return -2;
    pool_t *p = pool_get(s, name, 1);
    if (smap_get(&p->issued, code)) return -1;
    void **v = smap_slot(&p->avail, code, 1);
    if (*v) return 0;
    *v = (void *)1;
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 64;
        p->codes = xrealloc(p->codes, p->cap * sizeof *p->codes);
    }
    p->codes[p->n++] = xstrdup(code);
    return 1;
}

void store_mem_pool_status(const store_t *s, const char *name, size_t *available, size_t *issued) {
    const pool_t *p = smap_get(&s->pools, name);
    *available = p ? p->n - p->head : 0;
    *issued = p ? p->issued.n : 0;
}

const char *store_mem_pool_issued(const store_t *s, const char *name, const char *code) {
    const pool_t *p = smap_get(&s->pools, name);
    return p ? smap_get(&p->issued, code) : NULL;
}

void store_mem_block(store_t *s, const char *kind, const char *value) {
    sb_reset(&s->key);
    sb_printf(&s->key, "%s:%s", kind, value);
    *smap_slot(&s->blocks, s->key.s, 1) = (void *)1;
}

size_t store_pending_waits(const store_t *s) { return s->pending; }
size_t store_claimed(const store_t *s) { return s->cn; }

/* ---- stats: the stand-in for Pstats:RULE:VARIANT (docs/policy.md) ---------- */

static lim_t *lim_get(store_t *s, const char *key);

static void stat_add(store_t *s, const char *rule, const char *variant, const char *field, long long n) {
    sb_reset(&s->skey);
    sb_cat(&s->skey, rule, "\x1f", variant ? variant : "-", "\x1f", field, (char *)NULL);
    void **v = smap_slot(&s->stats, s->skey.s, 1);
    if (!*v) *v = xcalloc(1, sizeof(lim_t));
    ((lim_t *)*v)->count += n;
}

static member_t *member_get(store_t *s, const char *id);

static recent_t *recent_find(member_t *m, const char *field) {
    for (size_t i = 0; i < m->nrec; i++)
        if (!strcmp(m->rec[i].field, field)) return &m->rec[i];
    return NULL;
}

/* HSET P{u:ID}:recent field "rule RS variant RS ms RS window" (what the Lua
 * does; the trim of old fields is not needed here: every read checks the age). */
static void recent_set(store_t *s, member_t *m, const char *field, const char *rule, const char *variant, int64_t ms,
                       long long window) {
    recent_t *r = recent_find(m, field);
    if (!r) {
        m->rec = xrealloc(m->rec, (m->nrec + 1) * sizeof *m->rec);
        r = &m->rec[m->nrec++];
        r->field = slab_strndup(&s->rec_fields, field, strlen(field));
    }
    r->rule = intern(s, rule);
    r->variant = intern(s, variant && *variant ? variant : "-");
    r->ms = ms;
    r->window = window;
}

/* A holdout decision at `at` assigns the member to the rule's holdout arm:
 * "h:RULE", unless an assignment still inside the window stands. */
static void loop_holdout(store_t *s, const char *rule, const char *variant, const char *user, int64_t at) {
    if (!s->loop_window || !user) return;
    member_t *m = member_get(s, user);
    sb_reset(&s->key);
    sb_cat(&s->key, "h:", rule, (char *)NULL);
    recent_t *r = recent_find(m, s->key.s);
    if (r && r->ms > at - r->window) return;
    recent_set(s, m, s->key.s, rule, variant, at, rule_attribution_ms(s->rs ? ruleset_find(s->rs, rule) : NULL, s->loop_window));
}

/* A decision that granted nothing, by reason; a holdout also counts its member once. */
static void stat_reason(store_t *s, const char *rule, const char *variant, const char *user, const char *reason,
                        int64_t at) {
    stat_add(s, rule, variant, reason, 1);
    if (strcmp(reason, "holdout")) return;
    loop_holdout(s, rule, variant, user, at);
    sb_reset(&s->skey);
    sb_cat(&s->skey, rule, "\x1f", variant ? variant : "-", "\x1f", user, (char *)NULL);
    void **v = smap_slot(&s->held, s->skey.s, 1);
    if (*v) return;
    *v = (void *)1;
    stat_add(s, rule, variant, "holdout size", 1);
}

void store_mem_stats_each(const store_t *s, void (*fn)(void *ud, const char *rule, const char *variant,
                                                        const char *field, long long value), void *ud) {
    for (size_t i = 0; i < s->stats.cap; i++) {
        if (!s->stats.s[i].k) continue;
        char *k = xstrdup(s->stats.s[i].k);
        char *a = strchr(k, '\x1f'), *b = a ? strchr(a + 1, '\x1f') : NULL;
        if (b) {
            *a = *b = '\0';
            fn(ud, k, a + 1, b + 1, ((const lim_t *)s->stats.s[i].v)->count);
        }
        free(k);
    }
}

/* The variant a rule gives a member now: stats of a decision made when a
 * timer fires are kept under it (the same in live, which keeps no variant
 * with a pending wait). NULL: no variants (or no rule). */
static const char *variant_now(const rule_t *r, const char *user) {
    return r ? engine_variant_name(r, user) : NULL;
}

/* ---- outputs -------------------------------------------------------------- */

static void out_explain(store_t *s, const char *reason, const char *rule_id, const char *variant, const char *user,
                        const char *xbody, size_t xlen, const char *extra, int64_t at, out_kind kind,
                        store_out_cb cb, void *ud) {
    if (kind == OUT_EXPLAIN) stat_reason(s, rule_id, variant, user, reason, at);
    sb_reset(&s->out);
    engine_finish_explain(reason, xbody, xlen, extra, at, &s->out);
    store_out_t o = {.kind = kind, .at = at, .rule_id = rule_id, .user = user, .grant_id = "",
                     .reason = reason, .json = s->out.s, .len = s->out.len};
    cb(ud, &o);
}

/* out_explain of intent in's rule, variant and explain body. */
static void out_explain_in(store_t *s, const char *reason, const intent_t *in, const char *user, int64_t at,
                           out_kind kind, store_out_cb cb, void *ud) {
    size_t xlen;
    const char *xbody = engine_intent_xbody(in, &s->xbody, &xlen);
    out_explain(s, reason, in->rule->id, in->variant, user, xbody, xlen, NULL, at, kind, cb, ud);
}

/* One grant step: what the Lua step does in live (docs/policy.md). */
typedef struct greq {
    const rule_t *rule;       /* the rule as it is now: its limits apply */
    const char *rule_id, *user, *grant_id, *target, *channel;
    const char *rec;          /* open grant record */
    size_t len, cut;
    long long expires_in;
    const char *xbody;        /* NULL: in's (built when reported) */
    size_t xlen;
    const intent_t *in;
    const char *device, *ip, *pool;
    const char *tz, *variant;
    const char *group, *group_occ;   /* the group claim of this trigger (state.h), or NULL */
    int64_t at;
} greq;

typedef struct lcheck {
    strbuf key;
    long long count, period;
    const char *reason;
} lcheck;

static int blocked(store_t *s, const char *kind, const char *v) {
    if (!v || !*v) return 0;
    sb_reset(&s->key);
    sb_cat(&s->key, kind, ":", v, (char *)NULL);
    return smap_get(&s->blocks, s->key.s) != NULL;
}

static lim_t *lim_get(store_t *s, const char *key) {
    void **v = smap_slot(&s->lims, key, 1);
    if (!*v) *v = xcalloc(1, sizeof(lim_t));
    return *v;
}

/* Grants inside (at - period, +inf): a grant exactly one period old no
 * longer counts, as ZCOUNT key (at-period +inf in live. */
static size_t lim_count(const lim_t *l, int64_t at, long long period) {
    size_t n = 0;
    for (size_t i = 0; i < l->n; i++)
        if (l->ts[i] > at - period) n++;
    return n;
}

static void lim_add(lim_t *l, int64_t at, long long period) {
    size_t k = 0;
    for (size_t i = 0; i < l->n; i++)
        if (l->ts[i] > at - period) l->ts[k++] = l->ts[i];
    l->n = k;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 4;
        l->ts = xrealloc(l->ts, l->cap * sizeof *l->ts);
    }
    l->ts[l->n++] = at;
}

#define CODE_TAIL "null,\"expires_at\":"

/* The claim + policy + pool + push step (one Lua call in live): a repeat is
 * reported first; then the blocklist, the limits (per_user, per_device,
 * per_ip), budget and daily budget are checked, then a code is popped;
 * any of them suppresses without taking the claim. Only a grant spends. */
static void grant(store_t *s, const greq *q, store_out_cb cb, void *ud) {
    store_out_t o = {.at = q->at, .rule_id = q->rule_id, .user = q->user, .grant_id = q->grant_id,
                     .channel = q->channel, .target_user = q->target};
    /* looked up once: nothing between here and the claim below adds claims */
    uint64_t ch;
    hslot *cslot = claim_slot(s, q->grant_id, &ch);
    if (cslot->p) {
        o.kind = OUT_REPEAT;
        o.json = "";
        cb(ud, &o);
        return;
    }
    const char *why = NULL;
    /* the group of this trigger, taken by another rule's grant: the runner-up
     * only grants when the winner did not (engine.c "groups") */
    void **gslot = NULL;
    if (q->group) {
        sb_reset(&s->skey);
        sb_cat(&s->skey, q->user, "\x1f", q->group, "\x1f", q->group_occ ? q->group_occ : "", (char *)NULL);
        gslot = smap_slot(&s->groups, s->skey.s, 1);
        if (*gslot && strcmp(*gslot, q->grant_id) != 0) why = "group lost";
    }
    if (!why && (blocked(s, "user", q->target) || (strcmp(q->user, q->target) && blocked(s, "user", q->user)) ||
                 blocked(s, "device", q->device) || blocked(s, "ip", q->ip)))
        why = "blocklist";
    lcheck chk[4];
    size_t nchk = 0;
    const rule_t *r = q->rule;
    if (r && r->per_user.count) {
        chk[nchk] = (lcheck){.count = r->per_user.count, .period = r->per_user.period_ms, .reason = "limit per_user"};
        sb_init(&chk[nchk].key);
        sb_cat(&chk[nchk++].key, "{u:", q->target, "}:lim:", r->id, (char *)NULL);
    }
    if (r && r->per_device.count && q->device && *q->device) {
        chk[nchk] = (lcheck){.count = r->per_device.count, .period = r->per_device.period_ms, .reason = "limit per_device"};
        sb_init(&chk[nchk].key);
        sb_cat(&chk[nchk++].key, "lim:", r->id, ":dev:", q->device, (char *)NULL);
    }
    if (r && r->per_ip.count && q->ip && *q->ip) {
        chk[nchk] = (lcheck){.count = r->per_ip.count, .period = r->per_ip.period_ms, .reason = "limit per_ip"};
        sb_init(&chk[nchk].key);
        sb_cat(&chk[nchk++].key, "lim:", r->id, ":ip:", q->ip, (char *)NULL);
    }
    /* the daemon-wide frequency cap: grants to the recipient across all rules */
    if (s->fcap_count) {
        chk[nchk] = (lcheck){.count = s->fcap_count, .period = s->fcap_period, .reason = "frequency cap"};
        sb_init(&chk[nchk].key);
        sb_cat(&chk[nchk++].key, "{u:", q->target, "}:fcap", (char *)NULL);
    }
    for (size_t i = 0; !why && i < nchk; i++)
        if (lim_count(lim_get(s, chk[i].key.s), q->at, chk[i].period) >= (size_t)chk[i].count) why = chk[i].reason;
    lim_t *budget = NULL, *daily = NULL;
    if (r && r->budget) {
        sb_reset(&s->key);
        sb_cat(&s->key, "budget:", r->id, (char *)NULL);
        budget = lim_get(s, s->key.s);
        if (!why && budget->count >= r->budget) why = "budget";
    }
    if (r && r->daily_budget) {
        sb_reset(&s->key);
        sb_cat(&s->key, "budget:", r->id, ":", policy_day(&s->day, s->tz, q->at), (char *)NULL);
        daily = lim_get(s, s->key.s);
        if (!why && daily->count >= r->daily_budget) why = "daily budget";
    }
    pool_t *pool = NULL;
    if (!why && q->pool) {
        pool = pool_get(s, q->pool, 0);
        if (!pool || pool->head == pool->n) why = "pool empty";
    }
    if (why) {
        for (size_t i = 0; i < nchk; i++) sb_free(&chk[i].key);
        size_t xlen = q->xlen;
        const char *xbody = q->xbody || !q->in ? q->xbody : engine_intent_xbody(q->in, &s->xbody, &xlen);
        out_explain(s, why, q->rule_id, q->variant, q->user, xbody, xlen, NULL, q->at, OUT_EXPLAIN, cb, ud);
        return;
    }
    claim(s, cslot, ch, q->grant_id);
    if (gslot && !*gslot) *gslot = xstrdup(q->grant_id);
    /* Quiet hours delay delivery, never the decision: granted, counted, and
     * deliver_after = the end of the quiet period (the member's zone if the
     * trigger carried one, else the configured zone). */
    int64_t deliver = policy_quiet_until(&s->quiet, q->tz ? q->tz : s->tz, s->quiet_start, s->quiet_end, q->at);
    stat_add(s, q->rule_id, q->variant, "granted", 1);
    if (deliver > q->at) stat_add(s, q->rule_id, q->variant, "quiet hours", 1);
    if (s->loop_window)
        recent_set(s, member_get(s, q->target), q->grant_id, q->rule_id, q->variant, q->at,
                   rule_attribution_ms(r, s->loop_window));
    o.deliver_after = deliver;
    for (size_t i = 0; i < nchk; i++) {
        lim_add(lim_get(s, chk[i].key.s), q->at, chk[i].period);
        sb_free(&chk[i].key);
    }
    if (budget) budget->count++;
    if (daily) daily->count++;
    sb_reset(&s->out);
    size_t tl = sizeof CODE_TAIL - 1;
    if (pool && q->cut >= tl && !memcmp(q->rec + q->cut - tl, CODE_TAIL, tl)) {
        char *code = pool->codes[pool->head++];
        *smap_slot(&pool->avail, code, 1) = NULL;
        strbuf rec;
        sb_init(&rec);
        sb_append(&rec, q->rec, q->cut - tl);
        sb_printf(&rec, "\"%s\"", code);
        size_t cut = rec.len + 1 + (tl - 5);
        sb_append(&rec, q->rec + q->cut - tl + 4, q->len - (q->cut - tl + 4));
        engine_finish_grant_at(rec.s, rec.len, cut, q->expires_in, q->at, deliver, &s->out);
        sb_free(&rec);
        strbuf audit;
        sb_init(&audit);
        char ts[32];
        format_iso8601_ms(q->at, ts, sizeof ts);
        sb_printf(&audit, "{\"grant_id\":\"%s\",\"user_id\":", q->grant_id);
        sb_json_str(&audit, q->target, strlen(q->target));
        sb_printf(&audit, ",\"rule\":\"%s\",\"issued_at\":\"%s\"}", q->rule_id, ts);
        *smap_slot(&pool->issued, code, 1) = audit.s;
        free(code);
    } else {
        engine_finish_grant_at(q->rec, q->len, q->cut, q->expires_in, q->at, deliver, &s->out);
    }
    o.kind = OUT_GRANT;
    o.json = s->out.s;
    o.len = s->out.len;
    cb(ud, &o);
}

/* Copies n bytes and a NUL to *p, which moves past them. */
static char *pack(char **p, const char *src, size_t n) {
    char *d = *p;
    memcpy(d, src, n);
    d[n] = '\0';
    *p += n + 1;
    return d;
}

/* A wait is pending for the member's rule if it has not fired: due at or
 * after `at`. One already due but not yet fired (the poller lags) counts as
 * fired: it is about to be, and its grant stands. */
static wait_t *pending_wait(member_t *m, const char *rule_id, int64_t at) {
    for (wait_t *w = m->waits; w; w = w->next)
        if (w->due >= at && !strcmp(w->rule_id, rule_id)) return w;
    return NULL;
}

static void schedule(store_t *s, member_t *m, const intent_t *in, int64_t at, store_out_cb cb, void *ud) {
    if (pending_wait(m, in->rule->id, at)) {
        out_explain_in(s, "already pending", in, m->id, at, OUT_EXPLAIN, cb, ud);
        return;
    }
    size_t xlen;
    const char *xbody = engine_intent_xbody(in, &s->xbody, &xlen);
    /* one block: the wait, its cancel_on pointers, then the strings */
    const char *device = in->device ? in->device : "", *ip = in->ip ? in->ip : "";
    size_t l_rule = strlen(in->rule->id), l_user = strlen(m->id), l_target = strlen(in->target_user),
           l_chan = strlen(in->channel), l_dev = strlen(device), l_ip = strlen(ip),
           l_pool = in->pool ? strlen(in->pool) : 0, l_tz = in->tz ? strlen(in->tz) : 0;
    size_t size = sizeof(wait_t) + in->n_cancel_on * sizeof(char *) + l_rule + l_user + l_target + l_chan + l_dev +
                  l_ip + 6 + (in->rec ? in->rec_len + 1 : 0) + (xbody ? xlen + 1 : 0) +
                  (in->pool ? l_pool + 1 : 0) + (in->tz ? l_tz + 1 : 0);
    for (size_t i = 0; i < in->n_cancel_on; i++) size += strlen(in->cancel_on[i]) + 1;
    wait_t *w = xmalloc(size);
    memset(w, 0, sizeof *w);
    char *p = (char *)(w + 1) + in->n_cancel_on * sizeof(char *);
    w->rule_id = pack(&p, in->rule->id, l_rule);
    w->user = pack(&p, m->id, l_user);
    w->target_user = pack(&p, in->target_user, l_target);
    w->channel = pack(&p, in->channel, l_chan);
    snprintf(w->grant_id, sizeof w->grant_id, "%s", in->grant_id);
    if (in->reason) snprintf(w->reason, sizeof w->reason, "%s", in->reason);
    w->due = at + in->wait_ms;
    w->rec = in->rec ? pack(&p, in->rec, in->rec_len) : NULL;
    w->rec_len = in->rec_len;
    w->rec_cut = in->rec_cut;
    w->expires_in = in->expires_in_ms;
    w->xbody = xbody ? pack(&p, xbody, xlen) : NULL;
    w->xbody_len = xlen;
    if (in->n_cancel_on) {
        w->cancel_on = (char **)(w + 1);
        for (size_t i = 0; i < in->n_cancel_on; i++)
            w->cancel_on[i] = pack(&p, in->cancel_on[i], strlen(in->cancel_on[i]));
        w->n_cancel_on = in->n_cancel_on;
    }
    w->device = pack(&p, device, l_dev);
    w->ip = pack(&p, ip, l_ip);
    w->pool = in->pool ? pack(&p, in->pool, l_pool) : NULL;
    w->tz = in->tz ? pack(&p, in->tz, l_tz) : NULL;
    w->m = m;
    w->next = m->waits;
    m->waits = w;
    s->pending++;
    heap_push(s, (timer_t_){.due = w->due, .kind = T_WAIT, .w = w});
}

/* What "issue" means for a decision whose moment has come (an event trigger,
 * a count reaching N, a silence running out): a hard reason is reported now;
 * a rule that waits schedules; a soft reason is reported now; else grant. */
static void issue(store_t *s, member_t *m, const intent_t *in, int64_t at, store_out_cb cb, void *ud) {
    if (in->reason && !in->reason_soft)
        out_explain_in(s, in->reason, in, in->user, at, OUT_EXPLAIN, cb, ud);
    else if (in->wait_ms > 0)
        schedule(s, m ? m : member_get(s, in->user), in, at, cb, ud);
    else if (in->reason)
        out_explain_in(s, in->reason, in, in->user, at, OUT_EXPLAIN, cb, ud);
    else {
        greq q = {.rule = in->rule, .rule_id = in->rule->id, .user = in->user, .grant_id = in->grant_id,
                  .target = in->target_user, .channel = in->channel, .rec = in->rec, .len = in->rec_len,
                  .cut = in->rec_cut, .expires_in = in->expires_in_ms, .xbody = in->xbody, .xlen = in->xbody_len,
                  .in = in, .device = in->device, .ip = in->ip, .pool = in->pool, .tz = in->tz, .variant = in->variant,
                  .group = in->group, .group_occ = in->group_occ, .at = at};
        grant(s, &q, cb, ud);
    }
}

/* ---- intents -------------------------------------------------------------- */

static void count(store_t *s, const intent_t *in, store_out_cb cb, void *ud) {
    member_t *m = member_get(s, in->user);
    window_t *w = NULL;
    for (size_t i = 0; i < m->nwin; i++)
        if (!strcmp(m->win[i].rule_id, in->rule->id)) w = &m->win[i];
    if (!w) {
        m->win = xrealloc(m->win, (m->nwin + 1) * sizeof *m->win);
        w = &m->win[m->nwin++];
        memset(w, 0, sizeof *w);
        w->rule_id = intern(s, in->rule->id);
    }
    /* The window is [ts - within, ts]: an occurrence exactly `within` old
     * still counts. Late events may leave newer ones in: they count too. */
    int64_t floor_ts = in->ts - in->within_ms;
    size_t k = 0;
    for (size_t i = 0; i < w->n; i++)
        if (w->v[i].ts >= floor_ts) w->v[k++] = w->v[i];
    w->n = k;
    size_t before = w->n;
    size_t ol = strlen(in->occurrence);
    uint64_t h1, h2;
    hash64x2(in->occurrence, ol, 21, 22, &h1, &h2);
    int dup = 0;
    for (size_t i = 0; i < w->n; i++)
        if (w->v[i].h1 == h1 && w->v[i].h2 == h2) dup = 1;
    if (!dup) {
        if (w->n == w->cap) {
            w->cap = w->cap ? w->cap * 2 : 4;
            w->v = xrealloc(w->v, w->cap * sizeof *w->v);
        }
        w->v[w->n++] = (occ_t){in->ts, h1, h2};
    }
    if (before + 1 == (size_t)in->count && w->n == (size_t)in->count) {
        issue(s, m, in, in->ts, cb, ud);
        return;
    }
    char reason[64];
    snprintf(reason, sizeof reason, "count %zu/%lld", w->n, in->count);
    out_explain_in(s, reason, in, in->user, in->ts, OUT_PROGRESS, cb, ud);
}

static void cancel(store_t *s, const ruleset_t *rs, const intent_t *in, store_out_cb cb, void *ud) {
    member_t *m = member_get(s, in->user);
    strbuf extra;
    sb_init(&extra);
    for (wait_t **pp = &m->waits; *pp;) {
        wait_t *w = *pp;
        int hit = 0;
        /* A wait already due is not cancelled: events at t come before timers
         * at t, so due == ts is still cancellable, due < ts has fired. */
        for (size_t i = 0; w->due >= in->ts && i < w->n_cancel_on && !hit; i++) hit = !strcmp(w->cancel_on[i], in->event);
        if (!hit) {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        w->dead = 1;
        s->pending--;
        if (!extra.len) {
            sb_puts(&extra, ",\"cancelled_by\":{\"event\":");
            sb_json_str(&extra, in->event, strlen(in->event));
            sb_puts(&extra, ",\"message_id\":");
            sb_json_str(&extra, in->message_id ? in->message_id : "", in->message_id ? strlen(in->message_id) : 0);
            sb_putc(&extra, '}');
        }
        out_explain(s, "cancelled", w->rule_id, variant_now(ruleset_find(rs, w->rule_id), w->user), w->user, w->xbody,
                    w->xbody_len, extra.s, in->ts, OUT_EXPLAIN, cb, ud);
    }
    sb_free(&extra);
}

static void refresh_inact(store_t *s, const ruleset_t *rs) {
    uint64_t gen = ruleset_generation(rs);
    if (s->igen == gen && s->inact_idx) return;
    free(s->inact_idx);
    free(s->inact_id);
    s->inact_idx = xcalloc(ruleset_count(rs) + 1, sizeof *s->inact_idx);
    s->inact_id = xcalloc(ruleset_count(rs) + 1, sizeof *s->inact_id);
    s->n_inact = 0;
    for (size_t i = 0; i < ruleset_count(rs); i++) {
        const rule_t *r = ruleset_rule(rs, i);
        if (!r->enabled || r->kind != TRIG_INACTIVITY) continue;
        s->inact_id[s->n_inact] = intern(s, r->id);
        s->inact_idx[s->n_inact++] = i;
    }
    s->igen = gen;
}

static void touch(store_t *s, const ruleset_t *rs, const intent_t *in) {
    refresh_inact(s, rs);
    if (!s->n_inact) return;
    member_t *m = member_get(s, in->user);
    for (size_t k = 0; k < s->n_inact; k++) {
        const rule_t *r = ruleset_rule(rs, s->inact_idx[k]);
        int counts = r->n_events == 0;
        for (size_t j = 0; !counts && j < r->n_events; j++) counts = !strcmp(r->events[j], in->event);
        if (!counts) continue;
        int64_t mark = engine_activity_mark(r->resolution_ms, in->user, in->ts);
        inact_t *st = NULL;
        size_t idx = 0;
        const char *id = s->inact_id[k];
        for (size_t i = 0; i < m->nina; i++)
            if (m->ina[i].rule_id == id) st = &m->ina[idx = i];
        if (!st) {
            if (m->nina == 0) {
                m->ina = &m->ina0;
            } else if (m->ina == &m->ina0) {
                m->ina = xmalloc(2 * sizeof *m->ina);
                m->ina[0] = m->ina0;
            } else {
                m->ina = xrealloc(m->ina, (m->nina + 1) * sizeof *m->ina);
            }
            idx = m->nina++;
            st = &m->ina[idx];
            memset(st, 0, sizeof *st);
            st->rule_id = id;
            st->last = mark;
        }
        if (mark > st->last) st->last = mark;
        if (!st->armed) {
            st->armed = 1;
            heap_push(s, (timer_t_){.due = st->last + r->inactive_ms, .kind = T_INACT, .m = m, .ina = idx});
        }
    }
}

/* The closed loop: one redemption or conversion (the Lua step LUA_LOOP of
 * state_redis.c does the same). */
static int guard_nx(store_t *s, smap *m, const char *a, const char *b, const char *c) {
    sb_reset(&s->key);
    sb_cat(&s->key, a, "\x1f", b, c ? "\x1f" : "", c ? c : "", (char *)NULL);
    void **v = smap_slot(m, s->key.s, 1);
    if (*v) return 0;
    *v = (void *)1;
    return 1;
}

static void loop(store_t *s, const intent_t *in) {
    member_t *m = member_get(s, in->user);
    if (in->loop_kind == 'r') {
        recent_t *r = in->grant_id && *in->grant_id && strncmp(in->grant_id, "h:", 2) ? recent_find(m, in->grant_id)
                                                                                         : NULL;
        if (!r || r->ms <= in->ts - r->window - LOOP_MARGIN_MS) {
            stat_add(s, "", "-", "redemption_unknown", 1);
            return;
        }
        if (guard_nx(s, &s->redeemed, in->user, in->grant_id, NULL)) stat_add(s, r->rule, r->variant, "redeemed", 1);
        return;
    }
    for (size_t i = 0; i < m->nrec; i++) {
        const recent_t *r = &m->rec[i];
        if (r->ms <= in->ts - r->window || r->ms > in->ts) continue;
        int first = !strncmp(r->field, "h:", 2) ? guard_nx(s, &s->conv, r->rule, r->variant, in->user)
                                                : guard_nx(s, &s->conv, in->user, r->field, NULL);
        if (first) stat_add(s, r->rule, r->variant, "converted", 1);
    }
}

void store_apply(store_t *s, const ruleset_t *rs, const intent_t *in, store_out_cb cb, void *ud) {
    s->rs = rs;
    if (in->kind == INTENT_LOOP) {
        loop(s, in);
        return;
    }
    if (in->kind != INTENT_CANCEL && in->kind != INTENT_TOUCH) stat_add(s, in->rule->id, in->variant, "triggered", 1);
    switch (in->kind) {
    case INTENT_EXPLAIN:
        out_explain_in(s, in->reason, in, in->user, in->ts, OUT_EXPLAIN, cb, ud);
        break;
    case INTENT_GRANT:
        issue(s, NULL, in, in->ts, cb, ud);
        break;
    case INTENT_SCHEDULE:
        issue(s, NULL, in, in->ts, cb, ud);
        break;
    case INTENT_COUNT_GRANT:
        count(s, in, cb, ud);
        break;
    case INTENT_CANCEL:
        cancel(s, rs, in, cb, ud);
        break;
    case INTENT_TOUCH:
        touch(s, rs, in);
        break;
    case INTENT_LOOP:
        break;
    }
}

/* ---- firing --------------------------------------------------------------- */

static void unlink_wait(member_t *m, wait_t *w) {
    for (wait_t **pp = &m->waits; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            return;
        }
}

static void fire_wait(store_t *s, const ruleset_t *rs, wait_t *w, int64_t at, store_out_cb cb, void *ud) {
    unlink_wait(w->m, w);
    s->pending--;
    const rule_t *r = ruleset_find(rs, w->rule_id);
    const char *why = !r ? "rule removed" : !r->enabled ? "rule disabled" : w->reason[0] ? w->reason : NULL;
    const char *variant = variant_now(r, w->user);
    if (why)
        out_explain(s, why, w->rule_id, variant, w->user, w->xbody, w->xbody_len, NULL, at, OUT_EXPLAIN, cb, ud);
    else {
        /* Limits are checked now, at the grant moment, with the rule's
         * limits as they are now (docs/policy.md). */
        greq q = {.rule = r, .rule_id = w->rule_id, .user = w->user, .grant_id = w->grant_id,
                  .target = w->target_user, .channel = w->channel, .rec = w->rec, .len = w->rec_len,
                  .cut = w->rec_cut, .expires_in = w->expires_in, .xbody = w->xbody, .xlen = w->xbody_len,
                  .device = w->device, .ip = w->ip, .pool = w->pool, .tz = w->tz, .variant = variant, .at = at};
        grant(s, &q, cb, ud);
    }
}

static void fire_inact(store_t *s, const ruleset_t *rs, engine_t *eng, member_t *m, size_t idx, int64_t at,
                       store_out_cb cb, void *ud) {
    inact_t *st = &m->ina[idx];
    st->armed = 0;
    const rule_t *r = ruleset_find(rs, st->rule_id);
    if (!r || !r->enabled || r->kind != TRIG_INACTIVITY) return; /* re-armed if it comes back and the member acts */
    int64_t deadline = st->last + r->inactive_ms;
    if (deadline > at) { /* activity moved the deadline since this entry was armed */
        st->armed = 1;
        heap_push(s, (timer_t_){.due = deadline, .kind = T_INACT, .m = m, .ina = idx});
        return;
    }
    if (st->fired && st->fired_last == st->last) return; /* once per silence */
    st->fired = 1;
    st->fired_last = st->last;
    intent_t in;
    engine_decide_inactivity(eng, r, m->id, st->last, at, &in);
    stat_add(s, r->id, in.variant, "triggered", 1);
    issue(s, m, &in, at, cb, ud);
}

void store_advance(store_t *s, const ruleset_t *rs, engine_t *eng, int64_t now, store_out_cb cb, void *ud) {
    s->rs = rs;
    /* The store's clock never goes back. A timer armed by a late event can be
     * due before it: overdue, it fires at the next advance, at its due time. */
    if (s->advanced && now < s->now) now = s->now;
    s->advanced = 1;
    s->now = now;
    while (s->hn && s->heap[0].due <= now) {
        timer_t_ t = heap_pop(s);
        if (t.kind == T_INACT) {
            fire_inact(s, rs, eng, t.m, t.ina, t.due, cb, ud);
            continue;
        }
        if (!t.w->dead) fire_wait(s, rs, t.w, t.due, cb, ud);
        wait_free(t.w);
    }
}
