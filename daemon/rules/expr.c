/* expr.c - compiler and evaluator for the rule expression language.
 *
 * Compilation is a recursive-descent parser over an on-demand lexer that
 * builds an AST; paths are split into segments once, sub-trees without paths
 * are folded to constants, and `and`/`or` chains are flattened into n-ary
 * nodes. Two limits keep hostile input from exhausting the stack: the parser's
 * own recursion (parentheses, lists, calls, unary chains) and the height of
 * the tree (long left-associative chains), which bounds evaluation and
 * freeing recursion. */
#include "expr.h"
#include "../core/util.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPR_MAX_NEST 64     /* parser recursion: parentheses, lists, calls, not/minus chains */
#define EXPR_MAX_HEIGHT 256  /* AST height: bounds eval/free recursion */

/* ------------------------------------------------------------------ arena */

/* The arena is a chain of chunks. Each chunk starts with a header holding the
 * previous chunk's address, so growing never moves strings handed out earlier
 * and the public struct stays {buf, used, cap} (buf = newest chunk). */
#define ARENA_HDR 16
#define ARENA_MIN 4096

static char *chunk_prev(const char *chunk) {
    char *prev;
    memcpy(&prev, chunk, sizeof prev);
    return prev;
}

static void chunk_set_prev(char *chunk, char *prev) { memcpy(chunk, &prev, sizeof prev); }

void *expr_arena_alloc(expr_arena_t *a, size_t n) {
    if (!a) return NULL;
    if (n > SIZE_MAX / 4) return NULL;
    size_t start = (a->used + 15) & ~(size_t)15;
    if (!a->buf || start > a->cap || n > a->cap - start) {
        size_t cap = a->cap ? a->cap * 2 : ARENA_MIN;
        while (cap < n + ARENA_HDR) cap *= 2;
        char *c = xmalloc(cap);
        chunk_set_prev(c, a->buf);
        a->buf = c;
        a->cap = cap;
        start = ARENA_HDR;
    }
    a->used = start + n;
    return a->buf + start;
}

/* Frees every chunk but the newest, which is the largest. */
void expr_arena_reset(expr_arena_t *a) {
    if (!a || !a->buf) return;
    char *p = chunk_prev(a->buf);
    while (p) {
        char *q = chunk_prev(p);
        free(p);
        p = q;
    }
    chunk_set_prev(a->buf, NULL);
    a->used = ARENA_HDR;
}

void expr_arena_free(expr_arena_t *a) {
    if (!a) return;
    char *p = a->buf;
    while (p) {
        char *q = chunk_prev(p);
        free(p);
        p = q;
    }
    a->buf = NULL;
    a->used = a->cap = 0;
}

/* ------------------------------------------------------------------ AST */

typedef enum {
    N_CONST, N_PATH, N_LIST, N_NOT, N_NEG, N_AND, N_OR,
    N_EQ, N_NE, N_LT, N_LE, N_GT, N_GE, N_IN, N_CONTAINS,
    N_ADD, N_SUB, N_MUL, N_DIV, N_CALL
} nkind;

typedef enum { F_EXISTS, F_FLOOR, F_CEIL, F_MIN, F_MAX, F_LOWER, F_COUNT } fnid;

static const char *const fn_names[F_COUNT] = {"exists", "floor", "ceil", "min", "max", "lower"};

/* Functions plugins add (expr_register_function): ids F_COUNT and up. */
#define EXT_MAX 64
static struct { char *name; int min_args, max_args; bd_fn fn; } ext_fns[EXT_MAX];
static int n_ext;

static const char *fn_name(int fn) { return fn < F_COUNT ? fn_names[fn] : ext_fns[fn - F_COUNT].name; }

typedef enum {
    R_EVENT, R_USER_ID, R_TYPE, R_MESSAGE_ID, R_TIMESTAMP, /* scalars: no fields */
    R_PROPERTIES, R_CONTEXT, R_TRAITS, R_USER, R_COUNT
} rootid;

static const char *const root_names[R_COUNT] = {"event", "user_id", "type", "message_id", "timestamp",
                                                "properties", "context", "traits", "user"};
#define R_FIRST_OBJECT R_PROPERTIES

typedef struct node {
    nkind k;
    int fn;                 /* N_CALL */
    int root;               /* N_PATH */
    int height;
    value_t v;              /* N_CONST */
    unsigned path;          /* N_PATH with fields: its number (path_number) */
    char **segs;            /* N_PATH: NUL-terminated field names */
    size_t *seglens;
    size_t nsegs;
    struct node **kids;
    size_t nkids;
    void **owned;           /* N_CONST: storage its value points into */
    size_t nowned;
} node;

struct expr {
    node *root;
};

static void node_free(node *n) {
    if (!n) return;
    for (size_t i = 0; i < n->nkids; i++) node_free(n->kids[i]);
    free(n->kids);
    for (size_t i = 0; i < n->nsegs; i++) free(n->segs[i]);
    free(n->segs);
    free(n->seglens);
    for (size_t i = 0; i < n->nowned; i++) free(n->owned[i]);
    free(n->owned);
    free(n);
}

void expr_free(expr_t *e) {
    if (!e) return;
    node_free(e->root);
    free(e);
}

static node *node_new(nkind k) {
    node *n = xcalloc(1, sizeof *n);
    n->k = k;
    n->height = 1;
    return n;
}

static void *own(node *n, size_t size) {
    void *p = xmalloc(size);
    n->owned = xrealloc(n->owned, (n->nowned + 1) * sizeof *n->owned);
    n->owned[n->nowned++] = p;
    return p;
}

/* Deep-copies v into storage owned by n, so n's constant outlives whatever
 * buffer v pointed into. */
static value_t own_value(node *n, value_t v) {
    if (v.k == V_STR) {
        char *s = own(n, v.len + 1);
        if (v.len) memcpy(s, v.s, v.len);
        s[v.len] = '\0';
        v.s = s;
    } else if (v.k == V_LIST && v.nitems) {
        value_t *items = own(n, v.nitems * sizeof *items);
        for (size_t i = 0; i < v.nitems; i++) items[i] = own_value(n, v.items[i]);
        v.items = items;
    } else if (v.k == V_LIST) {
        v.items = NULL;
    }
    return v;
}

/* ------------------------------------------------------------------ values */

static const value_t missing_v = {.k = V_MISSING};

static value_t vbool(int b) { return (value_t){.k = V_BOOL, .b = b ? 1 : 0}; }
static value_t vnum(double n) { return (value_t){.k = V_NUM, .n = n}; }
static value_t vstr(const char *s, size_t len) { return (value_t){.k = V_STR, .s = s, .len = len}; }

/* One switch on the type byte, as each cJSON_IsX tests it: six calls into
 * the library per value cost more than the rest of a path lookup. */
static value_t json_to_value(const cJSON *j) {
    if (!j) return missing_v;
    switch (j->type & 0xFF) {
    case cJSON_Number: return vnum(j->valuedouble);
    case cJSON_String: return j->valuestring ? vstr(j->valuestring, strlen(j->valuestring)) : missing_v;
    case cJSON_True: return vbool(1);
    case cJSON_False: return vbool(0);
    case cJSON_NULL: return (value_t){.k = V_NULL};
    case cJSON_Array:
    case cJSON_Object: return (value_t){.k = V_JSON, .json = j};
    default: return missing_v;
    }
}

static int truthy(value_t v) {
    switch (v.k) {
    case V_BOOL: return v.b;
    case V_NUM: return v.n != 0 && !isnan(v.n);
    case V_STR: return v.len > 0;
    case V_LIST: return v.nitems > 0;
    case V_JSON: return v.json && v.json->child != NULL;
    default: return 0;
    }
}

/* Equality of two values; 0 whenever either is missing, so `!=` must not be
 * computed as its negation. */
static int veq(value_t a, value_t b) {
    if (a.k == V_MISSING || b.k == V_MISSING || a.k != b.k) return 0;
    switch (a.k) {
    case V_NULL: return 1;
    case V_BOOL: return a.b == b.b;
    case V_NUM: return a.n == b.n;
    case V_STR: return a.len == b.len && (a.len == 0 || memcmp(a.s, b.s, a.len) == 0);
    case V_LIST:
        if (a.nitems != b.nitems) return 0;
        for (size_t i = 0; i < a.nitems; i++)
            if (!veq(a.items[i], b.items[i])) return 0;
        return 1;
    case V_JSON: return cJSON_Compare(a.json, b.json, 1) ? 1 : 0;
    default: return 0;
    }
}

/* -1/0/1 ordering for two numbers or two strings; 2 when they do not order. */
static int vorder(value_t a, value_t b) {
    if (a.k == V_NUM && b.k == V_NUM) {
        if (isnan(a.n) || isnan(b.n)) return 2;
        return a.n < b.n ? -1 : a.n > b.n ? 1 : 0;
    }
    if (a.k == V_STR && b.k == V_STR) {
        size_t m = a.len < b.len ? a.len : b.len;
        int c = m ? memcmp(a.s, b.s, m) : 0;
        if (c) return c < 0 ? -1 : 1;
        return a.len < b.len ? -1 : a.len > b.len ? 1 : 0;
    }
    return 2;
}

/* x is an element of a list or JSON array, or a substring of a string. */
static int member(value_t x, value_t c) {
    if (x.k == V_MISSING) return 0;
    switch (c.k) {
    case V_LIST:
        for (size_t i = 0; i < c.nitems; i++)
            if (veq(x, c.items[i])) return 1;
        return 0;
    case V_JSON:
        if (!cJSON_IsArray(c.json)) return 0;
        for (const cJSON *it = c.json->child; it; it = it->next)
            if (veq(x, json_to_value(it))) return 1;
        return 0;
    case V_STR:
        if (x.k != V_STR) return 0;
        if (x.len == 0) return 1;
        return c.len >= x.len && memmem(c.s, c.len, x.s, x.len) != NULL;
    default: return 0;
    }
}

/* ------------------------------------------------------------------ paths */

static const cJSON *obj_get(const cJSON *o, const char *key, size_t n) {
    if ((o->type & 0xFF) != cJSON_Object) return NULL; /* cJSON_IsObject, without the call */
    /* compared inline: names and keys are a few bytes, shorter than the
     * set-up of a strncmp call; an empty key still matches only an empty name */
    for (const cJSON *c = o->child; c; c = c->next) {
        const char *name = c->string;
        if (!name) continue;
        size_t i = 0;
        while (i < n && name[i] == key[i]) i++;
        if (i == n && name[n] == '\0') return c;
    }
    return NULL;
}

/* The value of a root alone, or for object roots the JSON object itself. */
static value_t root_value(int root, const event_t *ev, const cJSON **obj) {
    *obj = NULL;
    if (!ev) return missing_v;
    switch (root) {
    case R_EVENT: return ev->name ? vstr(ev->name, strlen(ev->name)) : missing_v;
    case R_USER_ID: return ev->user_id ? vstr(ev->user_id, strlen(ev->user_id)) : missing_v;
    case R_TYPE: return ev->type ? vstr(ev->type, strlen(ev->type)) : missing_v;
    case R_MESSAGE_ID:
        return ev->message_id[0] ? vstr(ev->message_id, strnlen(ev->message_id, sizeof ev->message_id)) : missing_v;
    case R_TIMESTAMP: return vnum((double)ev->ts_ms);
    case R_PROPERTIES: *obj = ev->properties; break;
    case R_CONTEXT: *obj = ev->context; break;
    case R_TRAITS: *obj = ev->traits; break;
    /* Identify events carry no stored profile yet; their traits stand in. */
    case R_USER: *obj = ev->user ? ev->user : ev->traits; break;
    default: return missing_v;
    }
    return json_to_value(*obj);
}

static int find_root(const char *s, size_t n) {
    for (int i = 0; i < R_COUNT; i++)
        if (strlen(root_names[i]) == n && memcmp(root_names[i], s, n) == 0) return i;
    return -1;
}

/* The JSON object of an object root (NULL for the others): what a path's
 * segments are looked up in. */
static const cJSON *root_obj(int root, const event_t *ev) {
    if (!ev) return NULL;
    switch (root) {
    case R_PROPERTIES: return ev->properties;
    case R_CONTEXT: return ev->context;
    case R_TRAITS: return ev->traits;
    case R_USER: return ev->user ? ev->user : ev->traits;
    default: return NULL;
    }
}

static value_t resolve_node(const node *n, const eval_ctx_t *ctx) {
    if (n->nsegs == 0) {
        const cJSON *j;
        return root_value(n->root, ctx ? ctx->ev : NULL, &j);
    }
    /* the memo first: a hit needs neither the root nor the walk */
    expr_memo_t *m = ctx ? ctx->memo : NULL;
    if (m)
        for (unsigned i = 0; i < m->n; i++)
            if (m->e[i].path == n->path) return m->e[i].v;
    const cJSON *j = root_obj(n->root, ctx ? ctx->ev : NULL);
    for (size_t i = 0; i < n->nsegs && j; i++) j = obj_get(j, n->segs[i], n->seglens[i]);
    value_t v = json_to_value(j);
    if (m && m->n < EXPR_MEMO_N) {
        m->e[m->n].path = n->path;
        m->e[m->n++].v = v;
    }
    return v;
}

value_t expr_resolve_path(const char *path, const eval_ctx_t *ctx) {
    if (!path) return missing_v;
    const char *dot = strchr(path, '.');
    size_t rlen = dot ? (size_t)(dot - path) : strlen(path);
    int root = find_root(path, rlen);
    if (root < 0) return missing_v;
    const cJSON *j;
    value_t v = root_value(root, ctx ? ctx->ev : NULL, &j);
    if (!dot) return v;
    const char *seg = dot + 1;
    while (j) {
        const char *end = strchr(seg, '.');
        size_t n = end ? (size_t)(end - seg) : strlen(seg);
        j = obj_get(j, seg, n);
        if (!end) break;
        seg = end + 1;
    }
    return json_to_value(j);
}

/* ------------------------------------------------------------------ eval */

static value_t eval(const node *n, const eval_ctx_t *ctx);

static expr_arena_t *ctx_arena(const eval_ctx_t *ctx) { return ctx ? ctx->arena : NULL; }

static value_t arith(nkind k, value_t a, value_t b, const eval_ctx_t *ctx) {
    if (k == N_ADD && a.k == V_STR && b.k == V_STR) {
        if (a.len == 0) return b;
        if (b.len == 0) return a;
        char *s = expr_arena_alloc(ctx_arena(ctx), a.len + b.len + 1);
        if (!s) return missing_v;
        memcpy(s, a.s, a.len);
        memcpy(s + a.len, b.s, b.len);
        s[a.len + b.len] = '\0';
        return vstr(s, a.len + b.len);
    }
    if (a.k != V_NUM || b.k != V_NUM) return missing_v;
    switch (k) {
    case N_ADD: return vnum(a.n + b.n);
    case N_SUB: return vnum(a.n - b.n);
    case N_MUL: return vnum(a.n * b.n);
    case N_DIV: return b.n == 0 ? missing_v : vnum(a.n / b.n);
    default: return missing_v;
    }
}

/* A plugin's function: arguments as bd_values (strings NUL-terminated in the
 * arena), the answer copied into the arena (the plugin may reuse its buffer). */
static value_t call_ext(const node *n, const eval_ctx_t *ctx) {
    bd_value args[16];
    size_t na = n->nkids < 16 ? n->nkids : 16;
    for (size_t i = 0; i < na; i++) {
        value_t a = eval(n->kids[i], ctx);
        memset(&args[i], 0, sizeof args[i]);
        switch (a.k) {
        case V_NULL: args[i].kind = BD_NULL; break;
        case V_BOOL: args[i].kind = BD_BOOL; args[i].b = a.b; break;
        case V_NUM: args[i].kind = BD_NUM; args[i].num = a.n; break;
        case V_STR: {
            char *s = expr_arena_alloc(ctx_arena(ctx), a.len + 1);
            if (!s) return missing_v;
            memcpy(s, a.s, a.len);
            s[a.len] = '\0';
            args[i].kind = BD_STR;
            args[i].str = s;
            break;
        }
        default: args[i].kind = BD_MISSING; break;
        }
    }
    bd_value out = {0};
    if (ext_fns[n->fn - F_COUNT].fn(args, (int)na, &out) != 0) return missing_v;
    switch (out.kind) {
    case BD_NULL: { value_t v = {0}; v.k = V_NULL; return v; }
    case BD_BOOL: return vbool(out.b != 0);
    case BD_NUM: return vnum(out.num);
    case BD_STR: {
        if (!out.str) return missing_v;
        size_t len = strlen(out.str);
        char *s = expr_arena_alloc(ctx_arena(ctx), len + 1);
        if (!s) return missing_v;
        memcpy(s, out.str, len + 1);
        return vstr(s, len);
    }
    default: return missing_v;
    }
}

static value_t call(const node *n, const eval_ctx_t *ctx) {
    switch (n->fn) {
    case F_EXISTS: return vbool(eval(n->kids[0], ctx).k != V_MISSING);
    case F_FLOOR:
    case F_CEIL: {
        value_t a = eval(n->kids[0], ctx);
        if (a.k != V_NUM) return missing_v;
        return vnum(n->fn == F_FLOOR ? floor(a.n) : ceil(a.n));
    }
    case F_MIN:
    case F_MAX: {
        double best = 0;
        for (size_t i = 0; i < n->nkids; i++) {
            value_t a = eval(n->kids[i], ctx);
            if (a.k != V_NUM) return missing_v;
            if (i == 0 || (n->fn == F_MIN ? a.n < best : a.n > best)) best = a.n;
        }
        return vnum(best);
    }
    case F_LOWER: {
        value_t a = eval(n->kids[0], ctx);
        if (a.k != V_STR) return missing_v;
        size_t i = 0;
        while (i < a.len && !(a.s[i] >= 'A' && a.s[i] <= 'Z')) i++;
        if (i == a.len) return a;  /* already lower case: no copy */
        char *s = expr_arena_alloc(ctx_arena(ctx), a.len + 1);
        if (!s) return missing_v;
        for (size_t j = 0; j < a.len; j++) {
            char c = a.s[j];
            s[j] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
        }
        s[a.len] = '\0';
        return vstr(s, a.len);
    }
    default:
        if (n->fn >= F_COUNT && n->fn - F_COUNT < n_ext) return call_ext(n, ctx);
        return missing_v;
    }
}

/* Membership of x in a list literal that was not folded: evaluates the items
 * in place so `in [a, b]` needs no arena. */
static int member_of_list_node(value_t x, const node *list, const eval_ctx_t *ctx) {
    if (x.k == V_MISSING) return 0;
    for (size_t i = 0; i < list->nkids; i++)
        if (veq(x, eval(list->kids[i], ctx))) return 1;
    return 0;
}

/* An operand: constants and paths (most operands: `properties.price >=
 * 100`) without a call into eval, whose frame cost more than they do. */
static inline value_t eval_kid(const node *n, const eval_ctx_t *ctx) {
    if (n->k == N_CONST) return n->v;
    if (n->k == N_PATH) return resolve_node(n, ctx);
    return eval(n, ctx);
}

static value_t eval(const node *n, const eval_ctx_t *ctx) {
    switch (n->k) {
    case N_CONST: return n->v;
    case N_PATH: return resolve_node(n, ctx);
    case N_LIST: {
        if (n->nkids == 0) return (value_t){.k = V_LIST};
        value_t *items = expr_arena_alloc(ctx_arena(ctx), n->nkids * sizeof *items);
        if (!items) return missing_v;
        for (size_t i = 0; i < n->nkids; i++) items[i] = eval(n->kids[i], ctx);
        return (value_t){.k = V_LIST, .items = items, .nitems = n->nkids};
    }
    case N_NOT: return vbool(!truthy(eval(n->kids[0], ctx)));
    case N_NEG: {
        value_t a = eval(n->kids[0], ctx);
        return a.k == V_NUM ? vnum(-a.n) : missing_v;
    }
    case N_AND:
        for (size_t i = 0; i < n->nkids; i++)
            if (!truthy(eval_kid(n->kids[i], ctx))) return vbool(0);
        return vbool(1);
    case N_OR:
        for (size_t i = 0; i < n->nkids; i++)
            if (truthy(eval_kid(n->kids[i], ctx))) return vbool(1);
        return vbool(0);
    case N_EQ:
    case N_NE: {
        value_t a = eval_kid(n->kids[0], ctx), b = eval_kid(n->kids[1], ctx);
        if (a.k == V_MISSING || b.k == V_MISSING) return vbool(0);
        int eq = veq(a, b);
        return vbool(n->k == N_EQ ? eq : !eq);
    }
    case N_LT:
    case N_LE:
    case N_GT:
    case N_GE: {
        int o = vorder(eval_kid(n->kids[0], ctx), eval_kid(n->kids[1], ctx));
        if (o == 2) return vbool(0);
        switch (n->k) {
        case N_LT: return vbool(o < 0);
        case N_LE: return vbool(o <= 0);
        case N_GT: return vbool(o > 0);
        default: return vbool(o >= 0);
        }
    }
    case N_IN:
    case N_CONTAINS: {
        const node *xn = n->kids[n->k == N_IN ? 0 : 1];
        const node *cn = n->kids[n->k == N_IN ? 1 : 0];
        value_t x = eval(xn, ctx);
        if (cn->k == N_LIST) return vbool(member_of_list_node(x, cn, ctx));
        return vbool(member(x, eval(cn, ctx)));
    }
    case N_ADD:
    case N_SUB:
    case N_MUL:
    case N_DIV: return arith(n->k, eval(n->kids[0], ctx), eval(n->kids[1], ctx), ctx);
    case N_CALL: return call(n, ctx);
    }
    return missing_v;
}

value_t expr_eval(const expr_t *e, const eval_ctx_t *ctx) {
    if (!e || !e->root) return missing_v;
    return eval(e->root, ctx);
}

int expr_test(const expr_t *e, const eval_ctx_t *ctx) { return truthy(expr_eval(e, ctx)); }

int expr_is_constant(const expr_t *e) { return e && e->root && e->root->k == N_CONST; }

/* ------------------------------------------------------------------ output */

static void put_num(double n, strbuf *out, int json) {
    if (!isfinite(n)) {
        if (json) sb_puts(out, "null");
        return;
    }
    if (n == 0) sb_putc(out, '0');  /* also -0 */
    else if (n == floor(n) && fabs(n) <= 9007199254740992.0) sb_put_i64(out, (long long)n); /* = "%.0f" here */
    else sb_printf(out, "%.15g", n);
}

void value_to_json(const value_t *v, strbuf *out) {
    switch (v->k) {
    case V_BOOL: sb_puts(out, v->b ? "true" : "false"); break;
    case V_NUM: put_num(v->n, out, 1); break;
    case V_STR: sb_json_str(out, v->len ? v->s : "", v->len); break;
    case V_LIST:
        sb_putc(out, '[');
        for (size_t i = 0; i < v->nitems; i++) {
            if (i) sb_putc(out, ',');
            value_to_json(&v->items[i], out);
        }
        sb_putc(out, ']');
        break;
    case V_JSON: {
        char *s = v->json ? cJSON_PrintUnformatted(v->json) : NULL;
        sb_puts(out, s ? s : "null");
        cJSON_free(s);
        break;
    }
    default: sb_puts(out, "null"); break;
    }
}

void value_to_text(const value_t *v, strbuf *out) {
    switch (v->k) {
    case V_BOOL: sb_puts(out, v->b ? "true" : "false"); break;
    case V_NUM: put_num(v->n, out, 0); break;
    case V_STR: if (v->len) sb_append(out, v->s, v->len); break;
    case V_LIST:
    case V_JSON: value_to_json(v, out); break;
    default: break;
    }
}

/* ------------------------------------------------------------------ lexer */

typedef enum {
    T_EOF, T_ERR, T_NUM, T_STR, T_IDENT, T_LP, T_RP, T_LB, T_RB, T_COMMA, T_DOT,
    T_PLUS, T_MINUS, T_STAR, T_SLASH, T_EQ, T_NE, T_LT, T_LE, T_GT, T_GE,
    T_ANDAND, T_OROR, T_BANG
} tkind;

typedef struct {
    tkind k;
    size_t off, len;   /* raw text in src */
    double num;
} token;

typedef struct {
    const char *s;
    size_t len, pos;
    token t;
    strbuf str;        /* decoded text of the current T_STR */
    int depth;
    int failed;
    size_t err_off;
    char msg[256];
} parser;

/* Records the first error only: later ones are consequences of it. */
static void fail(parser *p, size_t off, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(parser *p, size_t off, const char *fmt, ...) {
    if (p->failed) return;
    p->failed = 1;
    p->err_off = off;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->msg, sizeof p->msg, fmt, ap);
    va_end(ap);
}

static int is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static size_t skip_space(const parser *p, size_t i) {
    while (i < p->len && is_space(p->s[i])) i++;
    return i;
}

static void lex_string(parser *p, size_t start) {
    char q = p->s[start];
    size_t i = start + 1;
    sb_reset(&p->str);
    while (i < p->len && p->s[i] != q) {
        char c = p->s[i];
        if (c == '\\') {
            if (i + 1 >= p->len) break;
            char e = p->s[i + 1];
            switch (e) {
            case '\\': case '\'': case '"': case '/': c = e; break;
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            default:
                if ((unsigned char)e >= 0x20 && (unsigned char)e < 0x7f) fail(p, i, "unknown escape '\\%c' in string", e);
                else fail(p, i, "unknown escape in string");
                p->t.k = T_ERR;
                return;
            }
            i += 2;
        } else {
            i++;
        }
        sb_append(&p->str, &c, 1);
    }
    if (i >= p->len) {
        fail(p, start, "unterminated string");
        p->t.k = T_ERR;
        return;
    }
    p->t.k = T_STR;
    p->pos = i + 1;
}

static void lex(parser *p) {
    size_t i = skip_space(p, p->pos);
    p->t = (token){.k = T_EOF, .off = i};
    if (i >= p->len) { p->pos = i; return; }
    const char *s = p->s;
    char c = s[i];
    char d = i + 1 < p->len ? s[i + 1] : '\0';
    size_t n = 1;
    if (is_digit(c)) {
        size_t j = i;
        while (j < p->len && is_digit(s[j])) j++;
        if (j + 1 < p->len && s[j] == '.' && is_digit(s[j + 1])) {
            j++;
            while (j < p->len && is_digit(s[j])) j++;
        }
        if (j < p->len && (s[j] == 'e' || s[j] == 'E')) {
            size_t k = j + 1;
            if (k < p->len && (s[k] == '+' || s[k] == '-')) k++;
            if (k < p->len && is_digit(s[k])) {
                while (k < p->len && is_digit(s[k])) k++;
                j = k;
            }
        }
        char tmp[64];
        size_t m = j - i;
        if (m >= sizeof tmp) {
            fail(p, i, "number too long");
            p->t.k = T_ERR;
            return;
        }
        memcpy(tmp, s + i, m);
        tmp[m] = '\0';
        p->t.k = T_NUM;
        p->t.num = strtod(tmp, NULL);
        n = m;
    } else if (is_alpha(c)) {
        size_t j = i;
        while (j < p->len && (is_alpha(s[j]) || is_digit(s[j]))) j++;
        p->t.k = T_IDENT;
        n = j - i;
    } else if (c == '\'' || c == '"') {
        lex_string(p, i);
        if (p->t.k == T_STR) p->t.len = p->pos - i;
        return;
    } else if (c == '=' && d == '=') { p->t.k = T_EQ; n = 2; }
    else if (c == '!' && d == '=') { p->t.k = T_NE; n = 2; }
    else if (c == '<' && d == '=') { p->t.k = T_LE; n = 2; }
    else if (c == '>' && d == '=') { p->t.k = T_GE; n = 2; }
    else if (c == '&' && d == '&') { p->t.k = T_ANDAND; n = 2; }
    else if (c == '|' && d == '|') { p->t.k = T_OROR; n = 2; }
    else {
        switch (c) {
        case '(': p->t.k = T_LP; break;
        case ')': p->t.k = T_RP; break;
        case '[': p->t.k = T_LB; break;
        case ']': p->t.k = T_RB; break;
        case ',': p->t.k = T_COMMA; break;
        case '.': p->t.k = T_DOT; break;
        case '+': p->t.k = T_PLUS; break;
        case '-': p->t.k = T_MINUS; break;
        case '*': p->t.k = T_STAR; break;
        case '/': p->t.k = T_SLASH; break;
        case '<': p->t.k = T_LT; break;
        case '>': p->t.k = T_GT; break;
        case '!': p->t.k = T_BANG; break;
        case '=': fail(p, i, "unexpected '=' (did you mean '=='?)"); p->t.k = T_ERR; return;
        case '&': fail(p, i, "unexpected '&' (did you mean '&&'?)"); p->t.k = T_ERR; return;
        case '|': fail(p, i, "unexpected '|' (did you mean '||'?)"); p->t.k = T_ERR; return;
        default:
            if ((unsigned char)c > 0x20 && (unsigned char)c < 0x7f) fail(p, i, "unexpected character '%c'", c);
            else fail(p, i, "unexpected byte 0x%02X", (unsigned char)c);
            p->t.k = T_ERR;
            return;
        }
    }
    p->t.len = n;
    p->pos = i + n;
}

static int is_word(const parser *p, const char *w) {
    size_t n = strlen(w);
    return p->t.k == T_IDENT && p->t.len == n && memcmp(p->s + p->t.off, w, n) == 0;
}

/* ------------------------------------------------------------------ suggestions */

/* Optimal-string-alignment distance: a swapped pair ("adn") counts as one
 * edit, the most common typo in keywords. */
static size_t edit_distance(const char *a, size_t na, const char *b, size_t nb) {
    unsigned char d[33][33];
    if (na > 32 || nb > 32) return SIZE_MAX;
    for (size_t i = 0; i <= na; i++) d[i][0] = (unsigned char)i;
    for (size_t j = 0; j <= nb; j++) d[0][j] = (unsigned char)j;
    for (size_t i = 1; i <= na; i++) {
        for (size_t j = 1; j <= nb; j++) {
            unsigned best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1u < best) best = d[i - 1][j] + 1u;
            if (d[i][j - 1] + 1u < best) best = d[i][j - 1] + 1u;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1u < best)
                best = d[i - 2][j - 2] + 1u;
            d[i][j] = (unsigned char)best;
        }
    }
    return d[na][nb];
}

/* Formats " (did you mean 'x'?)" for the closest candidate, or "" when none
 * is close enough to be a plausible typo. */
static void suggest(const char *w, size_t n, const char *const *cands, size_t nc, char *out, size_t outlen) {
    out[0] = '\0';
    size_t limit = n / 2 < 2 ? n / 2 : 2;
    size_t best = SIZE_MAX;
    const char *pick = NULL;
    for (size_t i = 0; i < nc; i++) {
        size_t d = edit_distance(w, n, cands[i], strlen(cands[i]));
        if (d > 0 && d <= limit && d < best) { best = d; pick = cands[i]; }
    }
    if (pick) snprintf(out, outlen, " (did you mean '%s'?)", pick);
}

/* ------------------------------------------------------------------ parser */

static node *parse_or(parser *p);

static const char *const operator_words[] = {"and", "or", "not", "in", "contains"};
static const char *const primary_words[] = {"event", "user_id", "type", "message_id", "timestamp",
                                            "properties", "context", "traits", "user", "true", "false", "null"};

static void fail_unexpected(parser *p) {
    const token *t = &p->t;
    if (t->k == T_EOF) { fail(p, t->off, "unexpected end of expression"); return; }
    size_t n = t->len > 32 ? 32 : t->len;
    const char *txt = p->s + t->off;
    char hint[64] = "";
    if (t->k == T_IDENT) suggest(txt, t->len, operator_words, 5, hint, sizeof hint);
    if (t->k == T_NUM) fail(p, t->off, "unexpected number '%.*s'", (int)n, txt);
    else if (t->k == T_STR) fail(p, t->off, "unexpected string %.*s%s", (int)n, txt, t->len > n ? "..." : "");
    else fail(p, t->off, "unexpected '%.*s'%s", (int)n, txt, hint);
}

/* Wraps kids into a new node, enforcing the height limit and folding it to a
 * constant when no kid depends on the event. Takes ownership of kids. */
static node *mk(parser *p, nkind k, int fn, size_t off, node **kids, size_t nkids) {
    node *n = node_new(k);
    n->fn = fn;
    if (nkids) {
        n->kids = xmalloc(nkids * sizeof *kids);
        memcpy(n->kids, kids, nkids * sizeof *kids);
    }
    n->nkids = nkids;
    int constant = !(k == N_CALL && fn == F_EXISTS);
    for (size_t i = 0; i < nkids; i++) {
        if (kids[i]->height + 1 > n->height) n->height = kids[i]->height + 1;
        if (kids[i]->k != N_CONST) constant = 0;
    }
    if (n->height > EXPR_MAX_HEIGHT) {
        fail(p, off, "expression too complex (deeper than %d levels)", EXPR_MAX_HEIGHT);
        node_free(n);
        return NULL;
    }
    if (constant) {
        expr_arena_t tmp = {0};
        eval_ctx_t ctx = {.ev = NULL, .arena = &tmp};
        node *c = node_new(N_CONST);
        c->v = own_value(c, eval(n, &ctx));
        expr_arena_free(&tmp);
        node_free(n);
        return c;
    }
    return n;
}

static node *mk2(parser *p, nkind k, size_t off, node *l, node *r) {
    node *kids[2] = {l, r};
    return mk(p, k, 0, off, kids, 2);
}

/* and/or chains become one n-ary node so long chains do not grow the tree. */
static node *mk_chain(parser *p, nkind k, size_t off, node *l, node *r) {
    if (l->k == k && r->height < l->height) {
        l->kids = xrealloc(l->kids, (l->nkids + 1) * sizeof *l->kids);
        l->kids[l->nkids++] = r;
        return l;
    }
    return mk2(p, k, off, l, r);
}

static node *mk_const(value_t v) {
    node *n = node_new(N_CONST);
    n->v = own_value(n, v);
    return n;
}

static void free_nodes(node **v, size_t n) {
    for (size_t i = 0; i < n; i++) node_free(v[i]);
    free(v);
}

static int enter(parser *p) {
    if (++p->depth > EXPR_MAX_NEST) {
        fail(p, p->t.off, "expression nested too deeply (more than %d levels)", EXPR_MAX_NEST);
        p->depth--;
        return 0;
    }
    return 1;
}

/* Every distinct path with fields that this process compiles gets a number
 * (from 1), the same for every expression that names it: the per-event memo
 * (expr_memo_t) then matches paths without comparing their text. Kept for
 * the life of the process: a few hundred short names at most, and only the
 * thread that loads rules compiles. */
static char **path_names;
static size_t n_path_names;

static unsigned path_number(const node *n) {
    strbuf k;
    sb_init(&k);
    sb_putc(&k, (char)('A' + n->root));
    for (size_t i = 0; i < n->nsegs; i++) {
        sb_putc(&k, '\x1f');
        sb_append(&k, n->segs[i], n->seglens[i]);
    }
    for (size_t i = 0; i < n_path_names; i++)
        if (!strcmp(path_names[i], k.s)) {
            sb_free(&k);
            return (unsigned)i + 1;
        }
    path_names = xrealloc(path_names, (n_path_names + 1) * sizeof *path_names);
    path_names[n_path_names++] = k.s;
    return (unsigned)n_path_names;
}

static node *parse_path(parser *p) {
    size_t off = p->t.off;
    const char *w = p->s + off;
    size_t wn = p->t.len;
    int root = find_root(w, wn);
    if (root < 0) {
        char hint[64];
        suggest(w, wn, primary_words, sizeof primary_words / sizeof *primary_words, hint, sizeof hint);
        fail(p, off, "unknown path root '%.*s'%s", (int)(wn > 40 ? 40 : wn), w, hint);
        return NULL;
    }
    node *n = node_new(N_PATH);
    n->root = root;
    lex(p);
    while (p->t.k == T_DOT) {
        lex(p);
        if (p->t.k != T_IDENT) {
            fail(p, p->t.off, "expected a field name after '.'");
            node_free(n);
            return NULL;
        }
        if (root < R_FIRST_OBJECT) {
            fail(p, off, "path root '%s' has no fields", root_names[root]);
            node_free(n);
            return NULL;
        }
        n->segs = xrealloc(n->segs, (n->nsegs + 1) * sizeof *n->segs);
        n->seglens = xrealloc(n->seglens, (n->nsegs + 1) * sizeof *n->seglens);
        n->segs[n->nsegs] = xstrndup(p->s + p->t.off, p->t.len);
        n->seglens[n->nsegs] = p->t.len;
        n->nsegs++;
        lex(p);
    }
    if (n->nsegs) n->path = path_number(n);
    return n;
}

static node *parse_call(parser *p) {
    size_t off = p->t.off;
    const char *w = p->s + off;
    size_t wn = p->t.len;
    int fn = -1;
    for (int i = 0; i < F_COUNT + n_ext; i++)
        if (strlen(fn_name(i)) == wn && memcmp(fn_name(i), w, wn) == 0) fn = i;
    if (fn < 0) {
        char hint[64];
        const char *names[F_COUNT + EXT_MAX];
        for (int i = 0; i < F_COUNT + n_ext; i++) names[i] = fn_name(i);
        suggest(w, wn, names, (size_t)(F_COUNT + n_ext), hint, sizeof hint);
        fail(p, off, "unknown function '%.*s'%s", (int)(wn > 40 ? 40 : wn), w, hint);
        return NULL;
    }
    lex(p); /* '(' */
    lex(p);
    node **args = NULL;
    size_t nargs = 0;
    size_t first_arg_off = p->t.off;
    if (p->t.k != T_RP) {
        for (;;) {
            node *a = parse_or(p);
            if (!a) { free_nodes(args, nargs); return NULL; }
            args = xrealloc(args, (nargs + 1) * sizeof *args);
            args[nargs++] = a;
            if (p->t.k == T_COMMA) { lex(p); continue; }
            if (p->t.k == T_RP) break;
            if (p->t.k == T_EOF) fail(p, p->t.off, "expected ')' to close '%s('", fn_name(fn));
            else fail(p, p->t.off, "expected ',' or ')' in %s()", fn_name(fn));
            free_nodes(args, nargs);
            return NULL;
        }
    }
    const char *bad = NULL;
    char badbuf[64];
    if (fn >= F_COUNT) {
        int lo = ext_fns[fn - F_COUNT].min_args, hi = ext_fns[fn - F_COUNT].max_args;
        if ((int)nargs < lo || (int)nargs > hi) {
            if (lo == hi) snprintf(badbuf, sizeof badbuf, "takes %d argument%s", lo, lo == 1 ? "" : "s");
            else snprintf(badbuf, sizeof badbuf, "takes %d to %d arguments", lo, hi);
            bad = badbuf;
        }
    } else if ((fn == F_MIN || fn == F_MAX) && nargs < 1) bad = "takes at least 1 argument";
    else if (fn != F_MIN && fn != F_MAX && nargs != 1) bad = "takes 1 argument";
    if (bad) {
        fail(p, off, "%s() %s", fn_name(fn), bad);
        free_nodes(args, nargs);
        return NULL;
    }
    if (fn == F_EXISTS && args[0]->k != N_PATH) {
        fail(p, first_arg_off, "exists() takes a path");
        free_nodes(args, nargs);
        return NULL;
    }
    lex(p); /* past ')' */
    node *n = mk(p, N_CALL, fn, off, args, nargs);
    free(args);
    return n;
}

static node *parse_list(parser *p) {
    size_t off = p->t.off;
    lex(p);
    node **items = NULL;
    size_t n = 0;
    if (p->t.k != T_RB) {
        for (;;) {
            node *a = parse_or(p);
            if (!a) { free_nodes(items, n); return NULL; }
            items = xrealloc(items, (n + 1) * sizeof *items);
            items[n++] = a;
            if (p->t.k == T_COMMA) { lex(p); continue; }
            if (p->t.k == T_RB) break;
            if (p->t.k == T_EOF) fail(p, p->t.off, "expected ']' to close '['");
            else fail(p, p->t.off, "expected ',' or ']' in list");
            free_nodes(items, n);
            return NULL;
        }
    }
    lex(p);
    node *l = mk(p, N_LIST, 0, off, items, n);
    free(items);
    return l;
}

static node *parse_primary(parser *p) {
    switch (p->t.k) {
    case T_NUM: {
        node *n = mk_const(vnum(p->t.num));
        lex(p);
        return n;
    }
    case T_STR: {
        node *n = mk_const(vstr(p->str.s, p->str.len));
        lex(p);
        return n;
    }
    case T_LP: {
        lex(p);
        node *e = parse_or(p);
        if (!e) return NULL;
        if (p->t.k != T_RP) {
            fail(p, p->t.off, "expected ')' to close '('");
            node_free(e);
            return NULL;
        }
        lex(p);
        return e;
    }
    case T_LB: return parse_list(p);
    case T_IDENT: {
        if (is_word(p, "true") || is_word(p, "false")) {
            node *n = mk_const(vbool(is_word(p, "true")));
            lex(p);
            return n;
        }
        if (is_word(p, "null")) {
            lex(p);
            return mk_const((value_t){.k = V_NULL});
        }
        for (size_t i = 0; i < sizeof operator_words / sizeof *operator_words; i++)
            if (is_word(p, operator_words[i])) { fail_unexpected(p); return NULL; }
        /* Peek at the raw text: lexing the next token before deciding would
         * report a later lexical error ahead of this one. */
        size_t after = skip_space(p, p->t.off + p->t.len);
        if (after < p->len && p->s[after] == '(') return parse_call(p);
        return parse_path(p);
    }
    default: fail_unexpected(p); return NULL;
    }
}

static node *parse_unary(parser *p) {
    if (p->t.k != T_MINUS) return parse_primary(p);
    size_t off = p->t.off;
    if (!enter(p)) return NULL;
    lex(p);
    node *k = parse_unary(p);
    p->depth--;
    if (!k) return NULL;
    return mk(p, N_NEG, 0, off, &k, 1);
}

static node *parse_mul(parser *p) {
    node *l = parse_unary(p);
    while (l && (p->t.k == T_STAR || p->t.k == T_SLASH)) {
        nkind k = p->t.k == T_STAR ? N_MUL : N_DIV;
        size_t off = p->t.off;
        lex(p);
        node *r = parse_unary(p);
        if (!r) { node_free(l); return NULL; }
        l = mk2(p, k, off, l, r);
    }
    return l;
}

static node *parse_add(parser *p) {
    node *l = parse_mul(p);
    while (l && (p->t.k == T_PLUS || p->t.k == T_MINUS)) {
        nkind k = p->t.k == T_PLUS ? N_ADD : N_SUB;
        size_t off = p->t.off;
        lex(p);
        node *r = parse_mul(p);
        if (!r) { node_free(l); return NULL; }
        l = mk2(p, k, off, l, r);
    }
    return l;
}

static int cmp_kind(const parser *p) {
    switch (p->t.k) {
    case T_EQ: return N_EQ;
    case T_NE: return N_NE;
    case T_LT: return N_LT;
    case T_LE: return N_LE;
    case T_GT: return N_GT;
    case T_GE: return N_GE;
    default:
        if (is_word(p, "in")) return N_IN;
        if (is_word(p, "contains")) return N_CONTAINS;
        return -1;
    }
}

static node *parse_cmp(parser *p) {
    node *l = parse_add(p);
    if (!l) return NULL;
    int k = cmp_kind(p);
    if (k < 0) return l;
    size_t off = p->t.off;
    lex(p);
    node *r = parse_add(p);
    if (!r) { node_free(l); return NULL; }
    if (cmp_kind(p) >= 0) {
        fail(p, p->t.off, "comparisons cannot be chained; combine them with 'and'");
        node_free(l);
        node_free(r);
        return NULL;
    }
    return mk2(p, (nkind)k, off, l, r);
}

static node *parse_not(parser *p) {
    if (p->t.k != T_BANG && !is_word(p, "not")) return parse_cmp(p);
    size_t off = p->t.off;
    if (!enter(p)) return NULL;
    lex(p);
    node *k = parse_not(p);
    p->depth--;
    if (!k) return NULL;
    return mk(p, N_NOT, 0, off, &k, 1);
}

static node *parse_and(parser *p) {
    node *l = parse_not(p);
    while (l && (p->t.k == T_ANDAND || is_word(p, "and"))) {
        size_t off = p->t.off;
        lex(p);
        node *r = parse_not(p);
        if (!r) { node_free(l); return NULL; }
        l = mk_chain(p, N_AND, off, l, r);
    }
    return l;
}

static node *parse_or(parser *p) {
    if (!enter(p)) return NULL;
    node *l = parse_and(p);
    while (l && (p->t.k == T_OROR || is_word(p, "or"))) {
        size_t off = p->t.off;
        lex(p);
        node *r = parse_and(p);
        if (!r) { node_free(l); l = NULL; break; }
        l = mk_chain(p, N_OR, off, l, r);
    }
    p->depth--;
    return l;
}

expr_t *expr_compile_n(const char *src, size_t len, size_t *err_off, char *err, size_t errlen) {
    parser p = {.s = src ? src : "", .len = src ? len : 0};
    sb_init(&p.str);
    lex(&p);
    node *root = NULL;
    if (p.t.k == T_EOF) {
        fail(&p, p.t.off, "empty expression");
    } else {
        root = parse_or(&p);
        if (root && p.t.k != T_EOF) fail_unexpected(&p);
    }
    sb_free(&p.str);
    if (p.failed || !root) {
        node_free(root);
        if (!p.failed) fail(&p, 0, "invalid expression");
        if (err_off) *err_off = p.err_off;
        if (err && errlen) snprintf(err, errlen, "%s", p.msg);
        return NULL;
    }
    expr_t *e = xmalloc(sizeof *e);
    e->root = root;
    return e;
}

expr_t *expr_compile(const char *src, size_t *err_off, char *err, size_t errlen) {
    return expr_compile_n(src, src ? strlen(src) : 0, err_off, err, errlen);
}

/* ---------------------------------------------------------- plugin functions */

int expr_register_function(const char *name, int min_args, int max_args, bd_fn fn, char *err, size_t errlen) {
    size_t n = name ? strlen(name) : 0;
    int ok = n > 0 && n < 48 && ((name[0] >= 'a' && name[0] <= 'z') || name[0] == '_');
    for (size_t i = 1; ok && i < n; i++)
        ok = (name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') || name[i] == '_';
    if (!ok) {
        snprintf(err, errlen, "function name '%s' is not [a-z_][a-z0-9_]*", name ? name : "");
        return -1;
    }
    if (!fn || min_args < 0 || max_args < min_args || max_args > 16) {
        snprintf(err, errlen, "function '%s': bad argument counts %d..%d (at most 16) or no function", name,
                 min_args, max_args);
        return -1;
    }
    for (size_t i = 0; i < sizeof root_names / sizeof root_names[0]; i++)
        if (!strcmp(root_names[i], name)) {
            snprintf(err, errlen, "function '%s' would shadow the path root '%s'", name, name);
            return -1;
        }
    static const char *const words[] = {"and", "or", "not", "in", "contains", "true", "false", "null"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (!strcmp(words[i], name)) {
            snprintf(err, errlen, "function '%s' would shadow the operator '%s'", name, name);
            return -1;
        }
    for (int i = 0; i < F_COUNT + n_ext; i++)
        if (!strcmp(fn_name(i), name)) {
            snprintf(err, errlen, "function '%s' is already defined%s", name, i < F_COUNT ? " (built in)" : "");
            return -1;
        }
    if (n_ext == EXT_MAX) {
        snprintf(err, errlen, "too many plugin functions (at most %d)", EXT_MAX);
        return -1;
    }
    ext_fns[n_ext].name = xstrdup(name);
    ext_fns[n_ext].min_args = min_args;
    ext_fns[n_ext].max_args = max_args;
    ext_fns[n_ext].fn = fn;
    n_ext++;
    return 0;
}

void expr_clear_functions(void) {
    for (int i = 0; i < n_ext; i++) free(ext_fns[i].name);
    memset(ext_fns, 0, sizeof ext_fns);
    n_ext = 0;
}

static int node_uses_user(const node *n) {
    if (!n) return 0;
    if (n->k == N_PATH && n->root == R_USER) return 1;
    for (size_t i = 0; i < n->nkids; i++)
        if (node_uses_user(n->kids[i])) return 1;
    return 0;
}

int expr_uses_user(const expr_t *e) { return e && node_uses_user(e->root); }
