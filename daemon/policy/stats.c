#include "stats.h"
#include "../core/util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct field {
    char *name;
    long long v;
} field;

typedef struct row {
    char *rule, *variant;
    field *f;
    size_t n;
} row;

struct stats_table {
    row *r;
    size_t n;
    row g;          /* counters of no rule (rule ""): redemption_unknown */
};

/* Fields that are not suppression reasons. */
static const char *const NOT_REASONS[] = {"triggered", "granted", "quiet hours", "holdout size", "redeemed",
                                          "converted", "redemption_unknown", NULL};

static int is_reason(const char *f) {
    for (size_t i = 0; NOT_REASONS[i]; i++)
        if (!strcmp(NOT_REASONS[i], f)) return 0;
    return 1;
}

stats_table *stats_table_new(void) { return xcalloc(1, sizeof(stats_table)); }

void stats_table_free(stats_table *t) {
    if (!t) return;
    for (size_t j = 0; j < t->g.n; j++) free(t->g.f[j].name);
    free(t->g.f);
    for (size_t i = 0; i < t->n; i++) {
        for (size_t j = 0; j < t->r[i].n; j++) free(t->r[i].f[j].name);
        free(t->r[i].f);
        free(t->r[i].rule);
        free(t->r[i].variant);
    }
    free(t->r);
    free(t);
}

static row *find(const stats_table *t, const char *rule, const char *variant) {
    for (size_t i = 0; i < t->n; i++)
        if (!strcmp(t->r[i].rule, rule) && !strcmp(t->r[i].variant, variant)) return &t->r[i];
    return NULL;
}

void stats_table_add(stats_table *t, const char *rule, const char *variant, const char *name, long long value) {
    if (!variant || !*variant) variant = "-";
    row *r = !rule || !*rule ? &t->g : find(t, rule, variant);
    if (!r) {
        t->r = xrealloc(t->r, (t->n + 1) * sizeof *t->r);
        r = &t->r[t->n++];
        memset(r, 0, sizeof *r);
        r->rule = xstrdup(rule);
        r->variant = xstrdup(variant);
    }
    for (size_t j = 0; j < r->n; j++)
        if (!strcmp(r->f[j].name, name)) {
            r->f[j].v += value;
            return;
        }
    r->f = xrealloc(r->f, (r->n + 1) * sizeof *r->f);
    r->f[r->n++] = (field){xstrdup(name), value};
}

static long long get(const row *r, const char *name) {
    for (size_t j = 0; r && j < r->n; j++)
        if (!strcmp(r->f[j].name, name)) return r->f[j].v;
    return 0;
}

long long stats_table_get(const stats_table *t, const char *rule, const char *variant, const char *name) {
    if (!rule || !*rule) return get(&t->g, name);
    return get(find(t, rule, variant ? variant : "-"), name);
}

static int cmp_row(const void *a, const void *b) {
    const row *x = a, *y = b;
    int c = strcmp(x->rule, y->rule);
    return c ? c : strcmp(x->variant, y->variant);
}

static int cmp_field(const void *a, const void *b) { return strcmp(((const field *)a)->name, ((const field *)b)->name); }

/* Exposures of a row: grants, or the members held out for a holdout arm
 * (a holdout member converts at most once: docs/policy.md "The closed loop"). */
static long long exposed(const row *r) {
    long long g = get(r, "granted");
    return g ? g : get(r, "holdout size");
}

/* The uplift of r's conversion rate over the holdout arm of its rule:
 * difference of two proportions, 95% CI by the normal approximation
 * (Wald): d +- 1.96 sqrt(p1(1-p1)/n1 + p0(1-p0)/n0). 0 when not computable. */
static int uplift(const stats_table *t, const row *r, double *d, double *lo, double *hi) {
    if (get(r, "holdout") || !get(r, "granted")) return 0;
    const row *h = NULL;
    for (size_t i = 0; i < t->n; i++)
        if (!strcmp(t->r[i].rule, r->rule) && get(&t->r[i], "holdout size") > 0) h = &t->r[i];
    if (!h) return 0;
    double n1 = (double)get(r, "granted"), n0 = (double)get(h, "holdout size");
    double p1 = get(r, "converted") / n1, p0 = get(h, "converted") / n0;
    double se = sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0);
    *d = p1 - p0;
    *lo = *d - 1.96 * se;
    *hi = *d + 1.96 * se;
    return 1;
}

static void rate(char *buf, size_t n, long long num, long long den) {
    if (den > 0) snprintf(buf, n, "%.1f%%", 100.0 * (double)num / (double)den);
    else snprintf(buf, n, "-");
}

void stats_table_print(stats_table *t, FILE *f, int json) {
    qsort(t->r, t->n, sizeof *t->r, cmp_row);
    for (size_t i = 0; i < t->n; i++) qsort(t->r[i].f, t->r[i].n, sizeof *t->r[i].f, cmp_field);
    if (json) {
        strbuf b;
        sb_init(&b);
        sb_puts(&b, "{\"rules\":[");
        for (size_t i = 0; i < t->n; i++) {
            const row *r = &t->r[i];
            long long supp = 0;
            for (size_t j = 0; j < r->n; j++)
                if (is_reason(r->f[j].name)) supp += r->f[j].v;
            if (i) sb_putc(&b, ',');
            sb_puts(&b, "{\"rule\":");
            sb_json_str(&b, r->rule, strlen(r->rule));
            sb_puts(&b, ",\"variant\":");
            if (strcmp(r->variant, "-")) sb_json_str(&b, r->variant, strlen(r->variant));
            else sb_puts(&b, "null");
            long long ex = exposed(r);
            sb_printf(&b, ",\"triggered\":%lld,\"granted\":%lld,\"suppressed\":%lld,\"delayed_quiet_hours\":%lld"
                          ",\"holdout_size\":%lld,\"redeemed\":%lld,\"converted\":%lld",
                      get(r, "triggered"), get(r, "granted"), supp, get(r, "quiet hours"), get(r, "holdout size"),
                      get(r, "redeemed"), get(r, "converted"));
            if (get(r, "granted")) sb_printf(&b, ",\"redemption_rate\":%.6f", (double)get(r, "redeemed") / (double)get(r, "granted"));
            else sb_puts(&b, ",\"redemption_rate\":null");
            if (ex) sb_printf(&b, ",\"conversion_rate\":%.6f", (double)get(r, "converted") / (double)ex);
            else sb_puts(&b, ",\"conversion_rate\":null");
            double d, lo, hi;
            if (uplift(t, r, &d, &lo, &hi)) sb_printf(&b, ",\"uplift\":{\"diff\":%.6f,\"ci95\":[%.6f,%.6f]}", d, lo, hi);
            else sb_puts(&b, ",\"uplift\":null");
            sb_puts(&b, ",\"suppressed_by_reason\":{");
            int first = 1;
            for (size_t j = 0; j < r->n; j++) {
                if (!is_reason(r->f[j].name)) continue;
                if (!first) sb_putc(&b, ',');
                first = 0;
                sb_json_str(&b, r->f[j].name, strlen(r->f[j].name));
                sb_printf(&b, ":%lld", r->f[j].v);
            }
            sb_puts(&b, "}}");
        }
        sb_printf(&b, "],\"redemption_unknown\":%lld}\n", get(&t->g, "redemption_unknown"));
        fputs(b.s, f);
        sb_free(&b);
        return;
    }
    fprintf(f, "%-24s %-12s %9s %9s %10s %8s %8s %9s %7s %9s %7s  %s\n", "RULE", "VARIANT", "TRIGGERED", "GRANTED",
            "SUPPRESSED", "DELAYED", "HOLDOUT", "REDEEMED", "RATE", "CONVERTED", "RATE", "UPLIFT vs HOLDOUT (95% CI)");
    for (size_t i = 0; i < t->n; i++) {
        const row *r = &t->r[i];
        long long supp = 0;
        for (size_t j = 0; j < r->n; j++)
            if (is_reason(r->f[j].name)) supp += r->f[j].v;
        char rr[16], cr[16], up[64] = "-";
        rate(rr, sizeof rr, get(r, "redeemed"), get(r, "granted"));
        rate(cr, sizeof cr, get(r, "converted"), exposed(r));
        double d, lo, hi;
        if (uplift(t, r, &d, &lo, &hi)) snprintf(up, sizeof up, "%+.1f pp [%+.1f, %+.1f]", 100 * d, 100 * lo, 100 * hi);
        fprintf(f, "%-24s %-12s %9lld %9lld %10lld %8lld %8lld %9lld %7s %9lld %7s  %s\n", r->rule, r->variant,
                get(r, "triggered"), get(r, "granted"), supp, get(r, "quiet hours"), get(r, "holdout size"),
                get(r, "redeemed"), rr, get(r, "converted"), cr, up);
    }
    int any = 0;
    for (size_t i = 0; i < t->n; i++) {
        const row *r = &t->r[i];
        for (size_t j = 0; j < r->n; j++) {
            if (!is_reason(r->f[j].name)) continue;
            if (!any++) fprintf(f, "\nsuppressed by reason:\n");
            fprintf(f, "  %-24s %-12s %-20s %lld\n", r->rule, r->variant, r->f[j].name, r->f[j].v);
        }
    }
    fprintf(f, "\nredemptions of unknown grants: %lld\n", get(&t->g, "redemption_unknown"));
    fprintf(f, "\nHOLDOUT = distinct members held out; DELAYED = granted inside quiet hours (delivered at their end).\n"
               "RATE: redeemed / granted; converted / granted (holdout arm: / HOLDOUT), conversions within the\n"
               "attribution window, once per grant (holdout: once per member).\n"
               "Uplift: conversion rate minus the holdout's, 95%% CI by the normal approximation of a difference\n"
               "of two proportions (unreliable with few conversions).\n");
}
