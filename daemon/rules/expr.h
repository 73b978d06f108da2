/* expr.h - the rule expression language (rules-format.md, "Expressions").
 * Source text is compiled once, at rule load, to an AST with pre-split paths;
 * evaluation walks the AST against an event and never parses text. */
#ifndef BENEFITD_EXPR_H
#define BENEFITD_EXPR_H

#include <stddef.h>
#include <cjson/cJSON.h>
#include "../decode/event.h"
#include "../../plugins/benefitd_plugin.h"

typedef enum {
    V_MISSING = 0, /* a path that resolved to nothing; comparisons with it are false */
    V_NULL,
    V_BOOL,
    V_NUM,
    V_STR,
    V_LIST,        /* literal list: items/n */
    V_JSON         /* a JSON array or object from the event: json */
} vkind;

/* Every expression node returns one by value: the kinds' fields share
 * storage (32 bytes, not 56); only the fields of v.k are meaningful. */
typedef struct value {
    vkind k;
    int b;
    double n;
    union {
        const char *s;             /* V_STR: not necessarily NUL-terminated */
        const struct value *items; /* V_LIST */
        const cJSON *json;         /* V_JSON */
    };
    union {
        size_t len;                /* V_STR */
        size_t nitems;             /* V_LIST */
    };
} value_t;

/* Scratch memory for strings made during one evaluation (lower()); the
 * caller resets it between events. */
typedef struct expr_arena {
    char *buf;
    size_t used, cap;
} expr_arena_t;

/* The values of paths already resolved for one event: rules often read the
 * same field (properties.score), and a field lookup scans its object. */
#define EXPR_MEMO_N 8
typedef struct expr_memo {
    unsigned n;
    struct {
        unsigned path;        /* the path's number (expr.c path_number) */
        value_t v;
    } e[EXPR_MEMO_N];
} expr_memo_t;

typedef struct eval_ctx {
    const event_t *ev;
    expr_arena_t *arena;      /* may be NULL: then functions that allocate yield V_MISSING */
    expr_memo_t *memo;        /* may be NULL; the caller empties it (n = 0) for each event */
} eval_ctx_t;

typedef struct expr expr_t;

/* Compiles src. On error returns NULL, sets *err_off to the 0-based byte
 * offset of the problem in src, and writes a message ("expected ')'",
 * "unknown function 'flor'", "unknown path root 'propertes'") into err. */
expr_t *expr_compile(const char *src, size_t *err_off, char *err, size_t errlen);
/* As expr_compile, for the first len bytes of src (need not be NUL-terminated);
 * offsets are relative to src. Templates compile their holes with it. */
expr_t *expr_compile_n(const char *src, size_t len, size_t *err_off, char *err, size_t errlen);
void expr_free(expr_t *e);

/* Evaluates; never fails: type errors and missing paths give V_MISSING. */
value_t expr_eval(const expr_t *e, const eval_ctx_t *ctx);
/* Truthiness used by where/audience: true, non-zero numbers, non-empty
 * strings and lists are true; missing, null, false are false. */
int expr_test(const expr_t *e, const eval_ctx_t *ctx);
/* Appends the value as JSON (V_MISSING as null) to a strbuf. */
struct strbuf;
void value_to_json(const value_t *v, struct strbuf *out);
/* Appends the value as text for message templates (missing/null: nothing,
 * integral numbers without a fraction). */
void value_to_text(const value_t *v, struct strbuf *out);
/* Resolves a dotted path ("properties.price", "user.tier", "user_id",
 * "context.device.id") against an event, as expressions do. */
value_t expr_resolve_path(const char *path, const eval_ctx_t *ctx);
/* 1 when the expression is a bare constant (so it can be folded). */
int expr_is_constant(const expr_t *e);

/* 1 when the expression reads the member's profile (a `user.*` path). */
int expr_uses_user(const expr_t *e);

/* Adds a plugin's function to the language (before rules compile). It must
 * be pure: calls with constant arguments are folded at compile time.
 * -1 with a message for a bad name, a clash with a built-in function, a path
 * root or an operator word, or one already added. */
int expr_register_function(const char *name, int min_args, int max_args, bd_fn fn, char *err, size_t errlen);
/* Forgets every added function (plugins unloaded). Compiled expressions that
 * call one must be freed first. */
void expr_clear_functions(void);

/* Returns n bytes (16-aligned) valid until the next reset, or NULL when a is NULL. */
void *expr_arena_alloc(expr_arena_t *a, size_t n);
void expr_arena_reset(expr_arena_t *a);
void expr_arena_free(expr_arena_t *a);

#endif
