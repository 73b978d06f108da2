/* template.c - message templates: literal text with {{expression}} holes,
 * each hole compiled once at load time. */
#include "template.h"
#include "../core/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct tseg {
    char *text;      /* literal text, or NULL for a hole */
    size_t len;
    expr_t *e;       /* the hole's expression */
} tseg;

struct template {
    tseg *segs;
    size_t n;
};

void template_free(template_t *t) {
    if (!t) return;
    for (size_t i = 0; i < t->n; i++) {
        free(t->segs[i].text);
        expr_free(t->segs[i].e);
    }
    free(t->segs);
    free(t);
}

static tseg *push(template_t *t) {
    t->segs = xrealloc(t->segs, (t->n + 1) * sizeof *t->segs);
    tseg *s = &t->segs[t->n++];
    memset(s, 0, sizeof *s);
    return s;
}

static void push_text(template_t *t, const char *s, size_t n) {
    if (n == 0) return;
    tseg *g = push(t);
    g->text = xstrndup(s, n);
    g->len = n;
}

/* Offset of the "}}" closing a hole whose body starts at i, skipping quoted
 * strings so a literal '}}' inside one does not end the hole; SIZE_MAX when
 * there is none. */
static size_t find_close(const char *src, size_t len, size_t i) {
    for (size_t j = i; j + 1 < len;) {
        char c = src[j];
        if (c == '\'' || c == '"') {
            size_t k = j + 1;
            while (k < len && src[k] != c) k += (src[k] == '\\' && k + 1 < len) ? 2 : 1;
            if (k >= len) break; /* unterminated: fall back to a plain search */
            j = k + 1;
            continue;
        }
        if (c == '}' && src[j + 1] == '}') return j;
        j++;
    }
    /* With an unbalanced quote the expression compiler reports the string
     * error at its real offset, which beats "unclosed '{{'". */
    const char *p = len > i ? memmem(src + i, len - i, "}}", 2) : NULL;
    return p ? (size_t)(p - src) : SIZE_MAX;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

template_t *template_compile(const char *src, size_t *err_off, char *err, size_t errlen) {
    if (!src) src = "";
    size_t len = strlen(src);
    template_t *t = xcalloc(1, sizeof *t);
    size_t lit = 0, i = 0;
    while (i + 1 < len) {
        if (!(src[i] == '{' && src[i + 1] == '{')) { i++; continue; }
        size_t close = find_close(src, len, i + 2);
        if (close == SIZE_MAX) {
            if (err_off) *err_off = i;
            if (err && errlen) snprintf(err, errlen, "'{{' is not closed by '}}'");
            template_free(t);
            return NULL;
        }
        size_t b = i + 2, e = close;
        while (b < e && is_space(src[b])) b++;
        while (e > b && is_space(src[e - 1])) e--;
        if (b == e) {
            if (err_off) *err_off = i;
            if (err && errlen) snprintf(err, errlen, "empty '{{ }}'");
            template_free(t);
            return NULL;
        }
        size_t off = 0;
        expr_t *x = expr_compile_n(src + b, e - b, &off, err, errlen);
        if (!x) {
            if (err_off) *err_off = b + off;
            template_free(t);
            return NULL;
        }
        push_text(t, src + lit, i - lit);
        push(t)->e = x;
        i = close + 2;
        lit = i;
    }
    push_text(t, src + lit, len - lit);
    return t;
}

void template_render(const template_t *t, const eval_ctx_t *ctx, strbuf *out) {
    if (!t) return;
    for (size_t i = 0; i < t->n; i++) {
        const tseg *g = &t->segs[i];
        if (g->text) {
            sb_append(out, g->text, g->len);
        } else {
            value_t v = expr_eval(g->e, ctx);
            value_to_text(&v, out);
        }
    }
}

int template_uses_user(const template_t *t) {
    for (size_t i = 0; t && i < t->n; i++)
        if (t->segs[i].e && expr_uses_user(t->segs[i].e)) return 1;
    return 0;
}
