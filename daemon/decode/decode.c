/* decode.c - Kafka message bytes -> event_t, or a reason for the dead-letter queue. */
#include "event.h"
#include "../core/util.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The default paths, as arrays of this file: a map still pointing at all of
 * them is the default map, whatever the configuration did to others
 * (envelope_fields). In the order of envelope_fields' F_ fields. */
static const char P_TYPE[] = "type", P_EVENT[] = "event", P_USER[] = "userId", P_ANON[] = "anonymousId",
                  P_MID[] = "messageId", P_TS[] = "timestamp", P_PROPS[] = "properties", P_CTX[] = "context",
                  P_TRAITS[] = "traits";

void decoder_init_default(decoder_t *d) {
    d->map.type = P_TYPE;
    d->map.event = P_EVENT;
    d->map.user_id = P_USER;
    d->map.anonymous_id = P_ANON;
    d->map.message_id = P_MID;
    d->map.timestamp = P_TS;
    d->map.properties = P_PROPS;
    d->map.context = P_CTX;
    d->map.traits = P_TRAITS;
    d->map.default_type = NULL;
    d->max_bytes = DECODE_DEFAULT_MAX_BYTES;
    d->max_depth = DECODE_DEFAULT_MAX_DEPTH;
}

/* Whether any of 8 bytes is non-ASCII, '"' or '\\': what ends a fast run
 * inside a string (SWAR: the classic "has zero byte" test on v ^ c). */
static inline int string_special8(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    uint64_t q = v ^ (ones * '"'), b = v ^ (ones * '\\');
    return ((v | ((q - ones) & ~q) | ((b - ones) & ~b)) & highs) != 0;
}

/* Whether all n bytes are ASCII: almost every event is, and then there is no
 * UTF-8 to validate (8 bytes a step). */
static int all_ascii(const unsigned char *p, size_t n) {
    uint64_t acc = 0, acc2 = 0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        uint64_t v, w;
        memcpy(&v, p + i, 8);
        memcpy(&w, p + i + 8, 8);
        acc |= v;
        acc2 |= w;
    }
    acc |= acc2;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        acc |= v;
    }
    for (; i < n; i++) acc |= p[i];
    return (acc & 0x8080808080808080ULL) == 0;
}

/* Rejects invalid UTF-8 (overlong forms, surrogates, past U+10FFFF).
 * Returns NULL or a static reason. */
static const char *check_utf8(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c < 0x80) continue;
        size_t extra;
        unsigned min, cp;
        if ((c & 0xe0) == 0xc0) { extra = 1; min = 0x80; cp = c & 0x1f; }
        else if ((c & 0xf0) == 0xe0) { extra = 2; min = 0x800; cp = c & 0x0f; }
        else if ((c & 0xf8) == 0xf0) { extra = 3; min = 0x10000; cp = c & 0x07; }
        else return "invalid UTF-8";
        if (i + extra >= n) return "invalid UTF-8";
        for (size_t k = 1; k <= extra; k++) {
            if ((p[i + k] & 0xc0) != 0x80) return "invalid UTF-8";
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return "invalid UTF-8";
        i += extra;
    }
    return NULL;
}

/* The deepest nesting of the raw text (brackets inside strings do not
 * count), stopping early past max_depth. Only run on text cJSON refused, so
 * that hostile nesting is named as such rather than as "not JSON". */
static int text_depth(const unsigned char *p, size_t n, int max_depth) {
    int depth = 0, deepest = 0, in_str = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (in_str) {
            /* most of a message is plain ASCII inside strings: 8 bytes a step */
            if (c != '\\' && c != '"') {
                while (i + 9 <= n && !string_special8(p + i + 1)) i += 8;
                continue;
            }
            if (c == '\\') i++;
            else in_str = 0;
            continue;
        }
        if (c == '"') in_str = 1;
        else if (c == '{' || c == '[') {
            if (++depth > deepest && (deepest = depth) > max_depth) break;
        } else if (c == '}' || c == ']') depth--;
    }
    return deepest;
}

/* Whether a parsed tree nests deeper than max_depth (the root container is
 * level 1). cJSON itself stops at CJSON_NESTING_LIMIT, so this recursion is
 * bounded; the walk visits nodes, not bytes: a few dozen per event. */
static int tree_too_deep(const cJSON *n, int depth, int max_depth) {
    if (depth > max_depth) return 1;
    for (const cJSON *c = n->child; c; c = c->next)
        if ((c->type & (cJSON_Array | cJSON_Object)) && tree_too_deep(c, depth + 1, max_depth)) return 1;
    return 0;
}

/* Looks up a dotted path ("meta.user.id") in an object. */
static cJSON *get_path(cJSON *root, const char *path) {
    if (!path || !*path) return NULL;
    if (!strchr(path, '.')) return cJSON_GetObjectItemCaseSensitive(root, path);
    char seg[128];
    cJSON *cur = root;
    const char *p = path;
    while (cur && *p) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        if (len >= sizeof seg) return NULL;
        memcpy(seg, p, len);
        seg[len] = '\0';
        cur = cJSON_IsObject(cur) ? cJSON_GetObjectItemCaseSensitive(cur, seg) : NULL;
        p += len + (dot ? 1 : 0);
    }
    return cur;
}

/* cJSON's own type tests, inline: they are calls into the shared library,
 * a dozen an event. Same test as cJSON_IsObject and the like. */
static inline int is_type(const cJSON *j, int type) { return j && (j->type & 0xFF) == type; }

enum { F_TYPE, F_EVENT, F_USER, F_ANON, F_MID, F_TS, F_PROPS, F_CTX, F_TRAITS, F_N };

/* s[0] and s[1] as one number; s is non-empty, so s[1] is readable. */
static inline uint16_t two_bytes(const char *s) {
    return (uint16_t)((unsigned char)s[0] | (unsigned)(unsigned char)s[1] << 8);
}

#define KEY2(a, b) ((uint16_t)((unsigned char)(a) | (unsigned)(unsigned char)(b) << 8))

/* The field of the default map a name's first two bytes can be, or -1: the
 * default paths all differ in their first two bytes. */
static inline int default_field(uint16_t k) {
    switch (k) {
    case KEY2('t', 'y'): return F_TYPE;
    case KEY2('e', 'v'): return F_EVENT;
    case KEY2('u', 's'): return F_USER;
    case KEY2('a', 'n'): return F_ANON;
    case KEY2('m', 'e'): return F_MID;
    case KEY2('t', 'i'): return F_TS;
    case KEY2('p', 'r'): return F_PROPS;
    case KEY2('c', 'o'): return F_CTX;
    case KEY2('t', 'r'): return F_TRAITS;
    default: return -1;
    }
}

/* The envelope's fields, each the first match as get_path finds it: the
 * top-level names in one pass over the root's members (each lookup was a
 * scan of its own, with a strcmp per member), dotted paths by get_path. */
static void envelope_fields(const decode_map_t *m, cJSON *root, cJSON *out[F_N]) {
    const char *path[F_N] = {m->type, m->event, m->user_id, m->anonymous_id, m->message_id,
                             m->timestamp, m->properties, m->context, m->traits};
    int top[F_N], n_top = 0;
    uint16_t key[F_N]; /* top[k]'s first two bytes */
    /* The default map is known from the pointers (the arrays are this
     * file's, so the same pointer is the same text): no path to scan for
     * dots (nine strchr calls an event), and a member's first two bytes name
     * the one field it can be, where the general loop below tries each
     * wanted name in turn. */
    if (m->type == P_TYPE && m->event == P_EVENT && m->user_id == P_USER && m->anonymous_id == P_ANON &&
        m->message_id == P_MID && m->timestamp == P_TS && m->properties == P_PROPS && m->context == P_CTX &&
        m->traits == P_TRAITS) {
        for (int f = 0; f < F_N; f++) out[f] = NULL;
        int left = F_N;
        for (cJSON *c = root->child; c && left; c = c->next) {
            const char *name = c->string;
            if (!name || !name[0]) continue;
            int f = default_field(two_bytes(name));
            /* found already: later members of that name do not count */
            if (f < 0 || out[f] || strcmp(name + 2, path[f] + 2) != 0) continue;
            out[f] = c;
            left--;
        }
        return;
    }
    for (int f = 0; f < F_N; f++) {
        out[f] = NULL;
        if (!path[f] || !*path[f]) continue;
        if (strchr(path[f], '.')) {
            out[f] = get_path(root, path[f]);
        } else {
            key[n_top] = two_bytes(path[f]);
            top[n_top++] = f;
        }
    }
    for (cJSON *c = root->child; c && n_top; c = c->next) {
        /* the first two bytes, compared as one number, settle almost every
         * pair without a call (an empty name matches no wanted name) */
        const char *name = c->string;
        if (!name || !name[0]) continue;
        uint16_t nk = two_bytes(name);
        for (int k = 0; k < n_top; k++) {
            if (key[k] != nk) continue;
            int f = top[k];
            const char *want = path[f];
            if (want[1] && strcmp(name + 2, want + 2) != 0) continue;
            out[f] = c;
            /* found: later members of that name do not count */
            n_top--;
            top[k] = top[n_top];
            key[k] = key[n_top];
            k--;
        }
    }
}

static const char *nonempty_string(const cJSON *j) {
    return is_type(j, cJSON_String) && j->valuestring[0] ? j->valuestring : NULL;
}

/* 0000-01-01T00:00:00.000Z .. 9999-12-31T23:59:59.999Z in epoch ms. */
#define TS_MIN_MS (-62167219200000.0)
#define TS_MAX_MS 253402300799999.0

/* ---- the event's arena ---------------------------------------------------
 * cJSON allocates every node and string with malloc and frees each one in
 * cJSON_Delete: about a third of replay's time went to malloc/free. An
 * event's tree lives exactly as long as the event, so it is parsed into a
 * bump arena owned by the event (a few chunks), and event_clear frees the
 * chunks whole. cJSON's hooks are global, so they point at the arena only
 * for the duration of one parse (the decision thread is the only cJSON user
 * while it parses); every other tree (profiles, grants, config) is ordinary
 * heap memory. */
typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t cap;
    max_align_t data[];
} arena_chunk;

#define ARENA_MIN_CHUNK 4096

static arena_chunk **parse_arena; /* the event being parsed: its chunk list */
static char *bump, *bump_end;      /* the free part of its newest chunk */

/* A new chunk for an allocation that does not fit the current one. */
static __attribute__((noinline)) void *arena_grow(size_t n) {
    size_t cap = n > ARENA_MIN_CHUNK ? n : ARENA_MIN_CHUNK;
    arena_chunk *nc = malloc(sizeof *nc + cap);
    if (!nc) return NULL; /* cJSON reports the parse as failed */
    nc->next = *parse_arena;
    nc->cap = cap;
    *parse_arena = nc;
    bump = (char *)nc->data + n;
    bump_end = (char *)nc->data + cap;
    return nc->data;
}

/* cJSON calls this for every node and string: a leaf that bumps a pointer.
 * Rounded to malloc's alignment (_Alignof, 16), not sizeof(max_align_t)
 * (32), which left most strings half empty. */
static void *arena_alloc(size_t n) {
    const size_t a = _Alignof(max_align_t);
    n = (n + a - 1) & ~(a - 1);
    if ((size_t)(bump_end - bump) >= n) {
        void *p = bump;
        bump += n;
        return p;
    }
    return arena_grow(n);
}

/* Frees nothing: the chunks go whole with the event (a failed parse's
 * partial tree included). */
static void arena_release(void *p) { (void)p; }

/* One chunk kept from event to event: a fresh chunk per event (and often a
 * second when the tree outgrew the first) kept malloc busy and, as the
 * heap grew around them, took fresh pages from the kernel. An event whose
 * tree took several chunks leaves behind one chunk of their whole size, so
 * the spare settles at what the largest event needs. Shared by all threads
 * (an atomic swap; a chunk in flight is simply one more malloc). */
static _Atomic(arena_chunk *) spare_chunk;

static void arena_free_all(void *head) {
    arena_chunk *c = head;
    if (!c) return;
    size_t total = 0, nchunks = 0;
    for (arena_chunk *k = c; k; k = k->next) {
        total += k->cap;
        nchunks++;
    }
    if (nchunks > 1) {
        for (arena_chunk *n; c; c = n) {
            n = c->next;
            free(c);
        }
        c = malloc(sizeof *c + total);
        if (!c) return;
        c->cap = total;
    }
    c->next = NULL;
    free(atomic_exchange(&spare_chunk, c));
}

/* The first chunk is the spare when it is large enough, else sized from the
 * message: a tree costs a few times its text (a 64-byte node per value plus
 * the strings). */
static cJSON *parse_in_arena(event_t *ev, const char *buf, size_t len, const char **end) {
    size_t want = 4 * len + 512;
    arena_chunk *first = atomic_exchange(&spare_chunk, NULL);
    if (first && first->cap < want) {
        free(first);
        first = NULL;
    }
    if (!first) {
        first = malloc(sizeof *first + want);
        if (!first) return NULL;
        first->cap = want;
    }
    first->next = NULL;
    ev->arena = first;
    bump = (char *)first->data;
    bump_end = bump + first->cap;
    parse_arena = (arena_chunk **)&ev->arena;
    cJSON_Hooks hooks = {.malloc_fn = arena_alloc, .free_fn = arena_release};
    cJSON_InitHooks(&hooks);
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len, end, 0);
    cJSON_InitHooks(NULL);
    parse_arena = NULL;
    bump = bump_end = NULL;
    return root;
}

#define FAIL(...) do { snprintf(reason, reason_len, __VA_ARGS__); event_clear(ev); return -1; } while (0)

int decode_event(const decoder_t *d, const char *buf, size_t len, int64_t now_ms, event_t *ev, char *reason,
                 size_t reason_len) {
    memset(ev, 0, sizeof *ev);
    ev->partition = -1;
    ev->offset = -1;
    if (len > d->max_bytes) FAIL("too large: %zu bytes (limit %zu)", len, d->max_bytes);
    if (len == 0) FAIL("empty message");
    /* Validation is split around the parse rather than done in a pass of its
     * own: a whole-message ASCII test (UTF-8 checked only when it fails), the
     * depth from the tree (from the text only when cJSON refused it). */
    const unsigned char *ubuf = (const unsigned char *)buf;
    if (!all_ascii(ubuf, len)) {
        const char *bad = check_utf8(ubuf, len);
        if (bad) FAIL("%s", bad);
    }
    /* cJSON stops at the end of the first value; anything but whitespace
     * after it means the message is not one JSON document. */
    const char *end = NULL;
    ev->root = parse_in_arena(ev, buf, len, &end);
    if (!ev->root) {
        if (text_depth(ubuf, len, d->max_depth) > d->max_depth) FAIL("nested too deep");
        FAIL("not JSON");
    }
    if (tree_too_deep(ev->root, 1, d->max_depth)) FAIL("nested too deep");
    while (end && end < buf + len && (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n')) end++;
    if (end && end < buf + len) FAIL("not JSON: trailing data");
    if (!is_type(ev->root, cJSON_Object)) FAIL("not a JSON object");

    cJSON *fld[F_N];
    envelope_fields(&d->map, ev->root, fld);
    cJSON *t = fld[F_TYPE];
    const char *type = nonempty_string(t);
    if (!type && !t) type = d->map.default_type;
    if (!type) FAIL("no type");
    /* one compare for a track event (most of them), not three */
    int track = strcmp(type, "track") == 0;
    if (!track && strcmp(type, "identify")) FAIL("unsupported type '%.32s'", type);
    ev->type = track ? "track" : "identify";

    if (ev->type[0] == 't') {
        ev->name = nonempty_string(fld[F_EVENT]);
        if (!ev->name) FAIL("no event name");
        if (strlen(ev->name) > 256) FAIL("event name too long");
    } else {
        ev->name = "identify";
    }

    cJSON *uid = fld[F_USER];
    if (!nonempty_string(uid) && !is_type(uid, cJSON_Number)) uid = fld[F_ANON];
    if (nonempty_string(uid)) {
        ev->user_id = uid->valuestring;
    } else if (is_type(uid, cJSON_Number)) {
        /* Only whole numbers that a double holds exactly: anything else would
         * be rounded into another member's id. */
        double v = uid->valuedouble;
        if (!(v >= -9007199254740992.0 && v <= 9007199254740992.0) || v != (double)(long long)v)
            FAIL("bad user id: not a whole number");
        /* Numeric ids are common upstream; keep them as their integer text. */
        snprintf(ev->user_buf, sizeof ev->user_buf, "%.0f", uid->valuedouble);
        ev->user_id = ev->user_buf;
    } else {
        FAIL("no user id");
    }
    if (strlen(ev->user_id) > 256) FAIL("user id too long");

    const char *mid = nonempty_string(fld[F_MID]);
    if (mid && strlen(mid) < sizeof ev->message_id) {
        memcpy(ev->message_id, mid, strlen(mid) + 1);
    } else if (mid) {
        FAIL("messageId too long");
    } else {
        /* Without a messageId the payload itself identifies the occurrence, so
         * a redelivered message still maps to the same grant id. */
        snprintf(ev->message_id, sizeof ev->message_id, "h-%016llx%016llx",
                 (unsigned long long)hash64(buf, len, 1), (unsigned long long)hash64(buf, len, 2));
    }

    cJSON *ts = fld[F_TS];
    if (!ts || is_type(ts, cJSON_NULL)) {
        ev->ts_ms = now_ms;
    } else if (is_type(ts, cJSON_Number)) {
        /* Epoch ms within years 0000..9999, what ISO-8601 can also say; this
         * also refuses 1e400 (parsed as inf), whose conversion is undefined. */
        double v = ts->valuedouble;
        if (!(v >= TS_MIN_MS && v <= TS_MAX_MS)) FAIL("bad timestamp %.6g", v);
        ev->ts_ms = (int64_t)v;
    } else if (is_type(ts, cJSON_String)) {
        if (parse_iso8601_ms(ts->valuestring, &ev->ts_ms) != 0) FAIL("bad timestamp '%.40s'", ts->valuestring);
    } else {
        FAIL("bad timestamp");
    }

    const cJSON *props = fld[F_PROPS];
    ev->properties = is_type(props, cJSON_Object) ? props : NULL;
    const cJSON *ctx = fld[F_CTX];
    ev->context = is_type(ctx, cJSON_Object) ? ctx : NULL;
    const cJSON *traits = fld[F_TRAITS];
    if (!is_type(traits, cJSON_Object) && ev->context) {
        /* cJSON_GetObjectItemCaseSensitive's lookup (up to a member without
         * a name), with the first byte settling most members without a
         * strcmp call: a track event has no traits of its own */
        traits = NULL;
        for (const cJSON *c = ev->context->child; c && c->string; c = c->next)
            if (c->string[0] == 't' && !strcmp(c->string, "traits")) {
                traits = c;
                break;
            }
    }
    ev->traits = is_type(traits, cJSON_Object) ? traits : NULL;
    return 0;
}

void event_clear(event_t *ev) {
    /* an arena-parsed tree is freed with its arena, never node by node */
    if (ev->arena) arena_free_all(ev->arena);
    else if (ev->root) cJSON_Delete(ev->root);
    ev->arena = NULL;
    ev->root = NULL;
}
