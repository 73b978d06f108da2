#include "yamlnode.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

static ynode *node_new(yn_kind k, const yaml_mark_t *m) {
    ynode *n = xcalloc(1, sizeof *n);
    n->kind = k;
    n->line = (int)m->line + 1;
    n->col = (int)m->column + 1;
    return n;
}

void yn_free(ynode *n) {
    if (!n) return;
    for (size_t i = 0; i < n->n; i++) {
        yn_free(n->items[i]);
        if (n->keys) yn_free(n->keys[i]);
    }
    free(n->items);
    free(n->keys);
    free(n->str);
    free(n);
}

static void push(ynode *parent, ynode *key, ynode *val) {
    if ((parent->n & (parent->n - 1)) == 0) { /* grow at powers of two */
        size_t cap = parent->n ? parent->n * 2 : 4;
        parent->items = xrealloc(parent->items, cap * sizeof(ynode *));
        if (parent->kind == YN_MAP) parent->keys = xrealloc(parent->keys, cap * sizeof(ynode *));
    }
    if (parent->kind == YN_MAP) parent->keys[parent->n] = key;
    parent->items[parent->n++] = val;
}

/* Parses one node starting from an already-fetched event; recursion depth is
 * bounded so a hostile file cannot blow the stack. */
static ynode *parse_node(yaml_parser_t *p, yaml_event_t *ev, const char *name, diag_t *d, int depth) {
    if (depth > 64) {
        diag_add(d, name, (int)ev->start_mark.line + 1, (int)ev->start_mark.column + 1, "nesting too deep");
        return NULL;
    }
    switch (ev->type) {
    case YAML_SCALAR_EVENT: {
        ynode *n = node_new(YN_SCALAR, &ev->start_mark);
        n->str = xstrndup((const char *)ev->data.scalar.value, ev->data.scalar.length);
        n->quoted = ev->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
                    ev->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE;
        n->str_col = n->col + (n->quoted ? 1 : 0);
        return n;
    }
    case YAML_ALIAS_EVENT:
        diag_add(d, name, (int)ev->start_mark.line + 1, (int)ev->start_mark.column + 1,
                 "aliases are not supported");
        return NULL;
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        int is_map = ev->type == YAML_MAPPING_START_EVENT;
        ynode *n = node_new(is_map ? YN_MAP : YN_SEQ, &ev->start_mark);
        for (;;) {
            yaml_event_t e;
            if (!yaml_parser_parse(p, &e)) {
                diag_add(d, name, (int)p->problem_mark.line + 1, (int)p->problem_mark.column + 1, "%s",
                         p->problem ? p->problem : "YAML syntax error");
                yn_free(n);
                return NULL;
            }
            if (e.type == YAML_SEQUENCE_END_EVENT || e.type == YAML_MAPPING_END_EVENT) {
                yaml_event_delete(&e);
                return n;
            }
            ynode *key = NULL;
            if (is_map) {
                if (e.type != YAML_SCALAR_EVENT) {
                    diag_add(d, name, (int)e.start_mark.line + 1, (int)e.start_mark.column + 1,
                             "mapping keys must be plain strings");
                    yaml_event_delete(&e);
                    yn_free(n);
                    return NULL;
                }
                key = parse_node(p, &e, name, d, depth + 1);
                yaml_event_delete(&e);
                for (size_t i = 0; i < n->n; i++) {
                    if (strcmp(n->keys[i]->str, key->str) == 0) {
                        diag_add(d, name, key->line, key->col, "duplicate key '%s'", key->str);
                        yn_free(key);
                        yn_free(n);
                        return NULL;
                    }
                }
                if (!yaml_parser_parse(p, &e)) {
                    diag_add(d, name, (int)p->problem_mark.line + 1, (int)p->problem_mark.column + 1, "%s",
                             p->problem ? p->problem : "YAML syntax error");
                    yn_free(key);
                    yn_free(n);
                    return NULL;
                }
            }
            ynode *val = parse_node(p, &e, name, d, depth + 1);
            yaml_event_delete(&e);
            if (!val) {
                yn_free(key);
                yn_free(n);
                return NULL;
            }
            push(n, key, val);
        }
    }
    default:
        diag_add(d, name, (int)ev->start_mark.line + 1, (int)ev->start_mark.column + 1, "unexpected YAML event");
        return NULL;
    }
}

ynode *yn_load_string(const char *name, const char *text, size_t len, diag_t *d) {
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) {
        diag_add(d, name, 0, 0, "cannot initialise YAML parser");
        return NULL;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    ynode *root = NULL;
    int done = 0;
    while (!done) {
        yaml_event_t e;
        if (!yaml_parser_parse(&p, &e)) {
            diag_add(d, name, (int)p.problem_mark.line + 1, (int)p.problem_mark.column + 1, "%s",
                     p.problem ? p.problem : "YAML syntax error");
            yn_free(root);
            root = NULL;
            break;
        }
        switch (e.type) {
        case YAML_STREAM_START_EVENT:
        case YAML_DOCUMENT_START_EVENT:
            break;
        case YAML_DOCUMENT_END_EVENT:
        case YAML_STREAM_END_EVENT:
            done = 1; /* only the first document counts */
            break;
        default:
            root = parse_node(&p, &e, name, d, 0);
            if (!root) done = 1;
        }
        yaml_event_delete(&e);
    }
    yaml_parser_delete(&p);
    if (!root && d->n == 0) {
        yaml_mark_t m = {0, 0, 0};
        root = node_new(YN_MAP, &m);
    }
    return root;
}

ynode *yn_load_file(const char *path, diag_t *d) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        diag_add(d, path, 0, 0, "cannot open: %s", strerror(errno));
        return NULL;
    }
    strbuf b;
    sb_init(&b);
    char buf[8192];
    size_t r;
    while ((r = fread(buf, 1, sizeof buf, f)) > 0) sb_append(&b, buf, r);
    int err = ferror(f);
    fclose(f);
    if (err) {
        diag_add(d, path, 0, 0, "read error");
        sb_free(&b);
        return NULL;
    }
    ynode *n = yn_load_string(path, b.s ? b.s : "", b.len, d);
    sb_free(&b);
    return n;
}

int yn_key_index(const ynode *map, const char *key) {
    if (!map || map->kind != YN_MAP) return -1;
    for (size_t i = 0; i < map->n; i++)
        if (strcmp(map->keys[i]->str, key) == 0) return (int)i;
    return -1;
}

const ynode *yn_get(const ynode *map, const char *key) {
    int i = yn_key_index(map, key);
    return i < 0 ? NULL : map->items[i];
}

int yn_str(const ynode *n, const char *file, const char *what, const char **out, diag_t *d) {
    if (!n || n->kind != YN_SCALAR) {
        if (n) diag_add(d, file, n->line, n->col, "'%s' must be a string", what);
        return -1;
    }
    *out = n->str;
    return 0;
}

int yn_bool(const ynode *n, const char *file, const char *what, int *out, diag_t *d) {
    if (n && n->kind == YN_SCALAR && !n->quoted) {
        const char *s = n->str;
        if (!strcmp(s, "true") || !strcmp(s, "yes") || !strcmp(s, "on")) { *out = 1; return 0; }
        if (!strcmp(s, "false") || !strcmp(s, "no") || !strcmp(s, "off")) { *out = 0; return 0; }
    }
    if (n) diag_add(d, file, n->line, n->col, "'%s' must be true or false", what);
    return -1;
}

int yn_int(const ynode *n, const char *file, const char *what, long long *out, diag_t *d) {
    if (n && n->kind == YN_SCALAR && *n->str) {
        char *end;
        errno = 0;
        long long v = strtoll(n->str, &end, 10);
        if (!*end && errno == 0) { *out = v; return 0; }
    }
    if (n) diag_add(d, file, n->line, n->col, "'%s' must be an integer", what);
    return -1;
}

int yn_duration(const ynode *n, const char *file, const char *what, long long *out_ms, diag_t *d) {
    int64_t ms;
    if (n && n->kind == YN_SCALAR && parse_duration_ms(n->str, &ms) == 0) { *out_ms = ms; return 0; }
    if (n) diag_add(d, file, n->line, n->str_col ? n->str_col : n->col,
                    "'%s' must be a duration like 90s, 30m, 12h, 7d, 2w", what);
    return -1;
}

static size_t edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) return 99;
    size_t row[64];
    for (size_t j = 0; j <= lb; j++) row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t prev = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t cur = row[j];
            size_t best = prev + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best) best = row[j] + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            prev = cur;
        }
    }
    return row[lb];
}

int yn_check_keys(const ynode *map, const char *file, const char *const *allowed, diag_t *d) {
    if (!map || map->kind != YN_MAP) return 0;
    int bad = 0;
    for (size_t i = 0; i < map->n; i++) {
        const char *k = map->keys[i]->str;
        const char *best = NULL;
        size_t bestd = 99;
        int ok = 0;
        for (const char *const *a = allowed; *a; a++) {
            if (!strcmp(*a, k)) { ok = 1; break; }
            size_t dist = edit_distance(k, *a);
            if (dist < bestd) { bestd = dist; best = *a; }
        }
        if (ok) continue;
        bad++;
        if (best && bestd <= 2)
            diag_add(d, file, map->keys[i]->line, map->keys[i]->col, "unknown key '%s' (did you mean '%s'?)", k, best);
        else
            diag_add(d, file, map->keys[i]->line, map->keys[i]->col, "unknown key '%s'", k);
    }
    return bad;
}

void yn_canonical(const ynode *n, strbuf *out) {
    switch (n->kind) {
    case YN_SCALAR:
        sb_json_str(out, n->str, strlen(n->str));
        break;
    case YN_SEQ:
        sb_putc(out, '[');
        for (size_t i = 0; i < n->n; i++) {
            if (i) sb_putc(out, ',');
            yn_canonical(n->items[i], out);
        }
        sb_putc(out, ']');
        break;
    case YN_MAP:
        sb_putc(out, '{');
        for (size_t i = 0; i < n->n; i++) {
            if (i) sb_putc(out, ',');
            sb_json_str(out, n->keys[i]->str, strlen(n->keys[i]->str));
            sb_putc(out, ':');
            yn_canonical(n->items[i], out);
        }
        sb_putc(out, '}');
        break;
    }
}
