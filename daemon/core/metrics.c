/* metrics.c - the Prometheus registry and its text exposition (see metrics.h). */
#include "metrics.h"
#include "log.h"
#include "util.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { M_COUNTER, M_GAUGE, M_HISTOGRAM } mkind;

struct family;

/* One series. The public handle types are never defined: a handle is a
 * series_t pointer under another name, converted back before any access. */
typedef struct series {
    struct family *fam;
    char *values[METRICS_MAX_LABELS];
    int present;                /* rendered; only metrics_gauge_remove clears it */
    double value;               /* counter, gauge */
    double sum;                 /* histogram */
    unsigned long long count;   /* histogram */
    unsigned long long *buckets;/* histogram: nbounds + 1 (the last is +Inf), not cumulative */
} series_t;

typedef struct family {
    mkind kind;
    char *name, *help;
    size_t nlabels;
    char *labels[METRICS_MAX_LABELS];
    double bounds[METRICS_MAX_BUCKETS];
    size_t nbounds;
    series_t *root;             /* the family's own handle; the series itself when nlabels == 0 */
    series_t **children;        /* sorted by label values */
    size_t n, cap;
    series_t **index;           /* open addressing by hash of the values; size a power of two */
    size_t index_cap;
    struct family *next;
} family_t;

typedef struct collector {
    metrics_collect_fn fn;
    void *ud;
    struct collector *next;
} collector_t;

struct metrics_registry {
    family_t *first, *last;
    collector_t *cfirst, *clast;
};

const double metrics_latency_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                          0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5};
const size_t metrics_latency_nbuckets = sizeof metrics_latency_buckets / sizeof metrics_latency_buckets[0];

metrics_registry_t *metrics_registry_new(void) { return xcalloc(1, sizeof(metrics_registry_t)); }

static void series_free(series_t *s) {
    if (!s) return;
    for (size_t i = 0; i < METRICS_MAX_LABELS; i++) free(s->values[i]);
    free(s->buckets);
    free(s);
}

void metrics_registry_free(metrics_registry_t *reg) {
    if (!reg) return;
    for (family_t *f = reg->first, *next; f; f = next) {
        next = f->next;
        for (size_t i = 0; i < f->n; i++) series_free(f->children[i]);
        series_free(f->root);
        free(f->children);
        free(f->index);
        for (size_t i = 0; i < f->nlabels; i++) free(f->labels[i]);
        free(f->name);
        free(f->help);
        free(f);
    }
    for (collector_t *c = reg->cfirst, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(reg);
}

/* ---- registration ---- */

static int valid_name(const char *s, int colons) {
    if (!s || !*s) return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colons && c == ':') ||
                 (p != s && c >= '0' && c <= '9');
        if (!ok) return 0;
    }
    return 1;
}

static series_t *series_new(family_t *f) {
    series_t *s = xcalloc(1, sizeof *s);
    s->fam = f;
    s->present = 1;
    if (f->kind == M_HISTOGRAM) s->buckets = xcalloc(f->nbounds + 1, sizeof *s->buckets);
    return s;
}

static family_t *family_new(metrics_registry_t *reg, mkind kind, const char *name, const char *help,
                            const double *bounds, size_t nbounds, va_list ap) {
    const char *why = NULL;
    const char *labels[METRICS_MAX_LABELS];
    size_t nl = 0;
    for (const char *l; (l = va_arg(ap, const char *)) != NULL;) {
        if (nl == METRICS_MAX_LABELS) { why = "too many labels"; break; }
        if (!valid_name(l, 0) || (l[0] == '_' && l[1] == '_')) { why = "bad label name"; break; }
        if (kind == M_HISTOGRAM && strcmp(l, "le") == 0) { why = "label 'le' is reserved"; break; }
        for (size_t i = 0; i < nl; i++)
            if (strcmp(labels[i], l) == 0) why = "duplicate label name";
        labels[nl++] = l;
    }
    if (!reg) why = "no registry";
    else if (!valid_name(name, 1)) why = "bad metric name";
    if (!why && kind == M_HISTOGRAM) {
        if (nbounds > METRICS_MAX_BUCKETS) why = "too many buckets";
        for (size_t i = 0; !why && i < nbounds; i++)
            if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1]))) why = "bucket bounds must be finite and increasing";
    }
    for (family_t *f = reg ? reg->first : NULL; !why && f; f = f->next)
        if (strcmp(f->name, name) == 0) why = "registered twice";
    if (why) {
        log_error("metrics_register_failed", "name=%s reason=\"%s\"", name ? name : "(null)", why);
        return NULL;
    }
    family_t *f = xcalloc(1, sizeof *f);
    f->kind = kind;
    f->name = xstrdup(name);
    f->help = xstrdup(help ? help : "");
    f->nlabels = nl;
    for (size_t i = 0; i < nl; i++) f->labels[i] = xstrdup(labels[i]);
    if (kind == M_HISTOGRAM) {
        if (nbounds) memcpy(f->bounds, bounds, nbounds * sizeof *bounds);
        f->nbounds = nbounds;
    }
    f->root = series_new(f);
    if (reg->last) reg->last->next = f;
    else reg->first = f;
    reg->last = f;
    return f;
}

metric_counter_t *metrics_counter(metrics_registry_t *reg, const char *name, const char *help, ...) {
    va_list ap;
    va_start(ap, help);
    family_t *f = family_new(reg, M_COUNTER, name, help, NULL, 0, ap);
    va_end(ap);
    return f ? (metric_counter_t *)f->root : NULL;
}

metric_gauge_t *metrics_gauge(metrics_registry_t *reg, const char *name, const char *help, ...) {
    va_list ap;
    va_start(ap, help);
    family_t *f = family_new(reg, M_GAUGE, name, help, NULL, 0, ap);
    va_end(ap);
    return f ? (metric_gauge_t *)f->root : NULL;
}

metric_histogram_t *metrics_histogram(metrics_registry_t *reg, const char *name, const char *help,
                                      const double *bounds, size_t nbounds, ...) {
    va_list ap;
    va_start(ap, nbounds);
    family_t *f = family_new(reg, M_HISTOGRAM, name, help, bounds, nbounds, ap);
    va_end(ap);
    return f ? (metric_histogram_t *)f->root : NULL;
}

void metrics_on_collect(metrics_registry_t *reg, metrics_collect_fn fn, void *ud) {
    if (!reg || !fn) return;
    collector_t *c = xcalloc(1, sizeof *c);
    c->fn = fn;
    c->ud = ud;
    if (reg->clast) reg->clast->next = c;
    else reg->cfirst = c;
    reg->clast = c;
}

/* ---- children ---- */

static uint64_t values_hash(const char *const *v, size_t n) {
    uint64_t h = 0;
    for (size_t i = 0; i < n; i++) h = hash64(v[i], strlen(v[i]) + 1, h + 0x9e3779b97f4a7c15ull);
    return h;
}

static int values_cmp(const char *const *a, const char *const *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        int c = strcmp(a[i], b[i]);
        if (c) return c;
    }
    return 0;
}

static void index_put(family_t *f, series_t *s) {
    size_t mask = f->index_cap - 1;
    size_t i = (size_t)values_hash((const char *const *)s->values, f->nlabels) & mask;
    while (f->index[i]) i = (i + 1) & mask;
    f->index[i] = s;
}

static series_t *child(series_t *root, const char *const *values, size_t n) {
    if (!root) return NULL;
    family_t *f = root->fam;
    if (n != f->nlabels || n == 0) {
        log_error("metrics_labels_failed", "name=%s labels=%zu values=%zu", f->name, f->nlabels, n);
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        if (!values[i]) {
            log_error("metrics_labels_failed", "name=%s reason=\"NULL label value\"", f->name);
            return NULL;
        }
    if (f->index_cap) {
        size_t mask = f->index_cap - 1;
        for (size_t i = (size_t)values_hash(values, n) & mask; f->index[i]; i = (i + 1) & mask)
            if (values_cmp((const char *const *)f->index[i]->values, values, n) == 0) return f->index[i];
    }
    series_t *s = series_new(f);
    for (size_t i = 0; i < n; i++) s->values[i] = xstrdup(values[i]);
    /* Sorted insert, so rendering needs no sort (creation is rare, rendering regular). */
    if (f->n == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 8;
        f->children = xrealloc(f->children, f->cap * sizeof *f->children);
    }
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (values_cmp((const char *const *)f->children[mid]->values, values, n) < 0) lo = mid + 1;
        else hi = mid;
    }
    memmove(&f->children[lo + 1], &f->children[lo], (f->n - lo) * sizeof *f->children);
    f->children[lo] = s;
    f->n++;
    /* Keep the index at most half full. */
    if (2 * f->n > f->index_cap) {
        free(f->index);
        f->index_cap = f->index_cap ? f->index_cap * 2 : 16;
        f->index = xcalloc(f->index_cap, sizeof *f->index);
        for (size_t i = 0; i < f->n; i++) index_put(f, f->children[i]);
    } else {
        index_put(f, s);
    }
    return s;
}

static series_t *typed(void *h, mkind kind) {
    series_t *s = h;
    return s && s->fam->kind == kind ? s : NULL;
}

metric_counter_t *metrics_counter_labels_(metric_counter_t *c, const char *const *values, size_t n) {
    return (metric_counter_t *)child(typed(c, M_COUNTER), values, n);
}
metric_gauge_t *metrics_gauge_labels_(metric_gauge_t *g, const char *const *values, size_t n) {
    return (metric_gauge_t *)child(typed(g, M_GAUGE), values, n);
}
metric_histogram_t *metrics_histogram_labels_(metric_histogram_t *h, const char *const *values, size_t n) {
    return (metric_histogram_t *)child(typed(h, M_HISTOGRAM), values, n);
}

/* ---- updates ---- */

void metrics_counter_inc(metric_counter_t *c, double v) {
    series_t *s = (series_t *)c;
    if (s && v >= 0) s->value += v;
}

void metrics_gauge_set(metric_gauge_t *g, double v) {
    series_t *s = (series_t *)g;
    if (!s) return;
    s->value = v;
    s->present = 1;
}

void metrics_gauge_add(metric_gauge_t *g, double v) {
    series_t *s = (series_t *)g;
    if (!s) return;
    s->value += v;
    s->present = 1;
}

void metrics_gauge_remove(metric_gauge_t *g) {
    series_t *s = (series_t *)g;
    if (!s) return;
    s->value = 0;
    s->present = 0;
}

void metrics_histogram_observe(metric_histogram_t *h, double v) {
    series_t *s = (series_t *)h;
    if (!s) return;
    const family_t *f = s->fam;
    /* A binary search over at most METRICS_MAX_BUCKETS bounds: the first
     * bound >= v; NaN and values past the last bound land in +Inf. */
    size_t lo = 0, hi = f->nbounds;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (f->bounds[mid] < v) lo = mid + 1;
        else hi = mid;
    }
    if (v != v) lo = f->nbounds;
    s->buckets[lo]++;
    s->count++;
    s->sum += v;
}

double metrics_counter_value(const metric_counter_t *c) { return c ? ((const series_t *)c)->value : 0; }
double metrics_gauge_value(const metric_gauge_t *g) { return g ? ((const series_t *)g)->value : 0; }
unsigned long long metrics_histogram_count(const metric_histogram_t *h) {
    return h ? ((const series_t *)h)->count : 0;
}
double metrics_histogram_sum(const metric_histogram_t *h) { return h ? ((const series_t *)h)->sum : 0; }

/* ---- rendering ---- */

/* As Go's strconv.FormatFloat(v, 'g', -1, 64), which the Go client uses:
 * the fewest significant digits that read back as v, in exponent form when
 * the decimal exponent is below -4 or at least 6 (1e+06, 1.5e-05). */
void metrics_format_double(double v, strbuf *out) {
    if (isnan(v)) { sb_puts(out, "NaN"); return; }
    if (isinf(v)) { sb_puts(out, v > 0 ? "+Inf" : "-Inf"); return; }
    if (v == 0) { sb_putc(out, '0'); return; }
    char e[40];
    for (int p = 0; p <= 17; p++) {
        snprintf(e, sizeof e, "%.*e", p, v);
        if (strtod(e, NULL) == v) break;
    }
    /* e is [-]d[.ddd]e[+-]XX: split into sign, digits and exponent. */
    const char *p = e;
    int neg = *p == '-';
    if (neg) p++;
    char digits[24];
    size_t nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p != '.' && nd < sizeof digits - 1) digits[nd++] = *p;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = '\0';
    int exp = atoi(p + 1);
    if (neg) sb_putc(out, '-');
    if (exp < -4 || exp >= 6) {
        sb_putc(out, digits[0]);
        if (nd > 1) {
            sb_putc(out, '.');
            sb_append(out, digits + 1, nd - 1);
        }
        sb_printf(out, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    } else if (exp < 0) {
        sb_puts(out, "0.");
        for (int i = -1; i > exp; i--) sb_putc(out, '0');
        sb_append(out, digits, nd);
    } else {
        size_t intd = (size_t)exp + 1;
        if (nd <= intd) {
            sb_append(out, digits, nd);
            for (size_t i = nd; i < intd; i++) sb_putc(out, '0');
        } else {
            sb_append(out, digits, intd);
            sb_putc(out, '.');
            sb_append(out, digits + intd, nd - intd);
        }
    }
}

/* HELP text: backslash and newline escaped. Label values: also the double quote. */
static void put_escaped(strbuf *out, const char *s, int quote) {
    for (; *s; s++) {
        if (*s == '\\') sb_puts(out, "\\\\");
        else if (*s == '\n') sb_puts(out, "\\n");
        else if (quote && *s == '"') sb_puts(out, "\\\"");
        else sb_putc(out, *s);
    }
}

/* name{l1="v1",l2="v2"[,le="b"]} value */
static void put_sample(strbuf *out, const family_t *f, const char *suffix, const series_t *s, const char *le,
                       double v) {
    sb_puts(out, f->name);
    sb_puts(out, suffix);
    if (f->nlabels || le) {
        sb_putc(out, '{');
        for (size_t i = 0; i < f->nlabels; i++) {
            if (i) sb_putc(out, ',');
            sb_puts(out, f->labels[i]);
            sb_puts(out, "=\"");
            put_escaped(out, s->values[i], 1);
            sb_putc(out, '"');
        }
        if (le) {
            sb_puts(out, f->nlabels ? ",le=\"" : "le=\"");
            sb_puts(out, le);
            sb_putc(out, '"');
        }
        sb_putc(out, '}');
    }
    sb_putc(out, ' ');
    metrics_format_double(v, out);
    sb_putc(out, '\n');
}

static void render_series(strbuf *out, const family_t *f, const series_t *s, strbuf *tmp) {
    if (!s->present) return;
    if (f->kind != M_HISTOGRAM) {
        put_sample(out, f, "", s, NULL, s->value);
        return;
    }
    unsigned long long cum = 0;
    for (size_t i = 0; i <= f->nbounds; i++) {
        cum += s->buckets[i];
        sb_reset(tmp);
        if (i < f->nbounds) metrics_format_double(f->bounds[i], tmp);
        else sb_puts(tmp, "+Inf");
        put_sample(out, f, "_bucket", s, tmp->s, (double)cum);
    }
    put_sample(out, f, "_sum", s, NULL, s->sum);
    put_sample(out, f, "_count", s, NULL, (double)s->count);
}

void metrics_render(metrics_registry_t *reg, strbuf *out) {
    if (!reg) return;
    for (collector_t *c = reg->cfirst; c; c = c->next) c->fn(c->ud);
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    strbuf tmp;
    sb_init(&tmp);
    for (const family_t *f = reg->first; f; f = f->next) {
        sb_puts(out, "# HELP ");
        sb_puts(out, f->name);
        sb_putc(out, ' ');
        put_escaped(out, f->help, 0);
        sb_puts(out, "\n# TYPE ");
        sb_puts(out, f->name);
        sb_putc(out, ' ');
        sb_puts(out, type_names[f->kind]);
        sb_putc(out, '\n');
        if (f->nlabels == 0) render_series(out, f, f->root, &tmp);
        else
            for (size_t i = 0; i < f->n; i++) render_series(out, f, f->children[i], &tmp);
    }
    sb_free(&tmp);
}
