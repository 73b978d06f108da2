/* metrics.h - a small Prometheus registry: counters, gauges and histograms
 * with up to METRICS_MAX_LABELS labels, rendered in the text exposition
 * format 0.0.4 for the /metrics page (http.h).
 *
 * Families are registered once, at start, by name and help; registration
 * returns a handle. A family with labels hands out one child per set of
 * label values, created on first use; callers keep the child's pointer, so
 * an update on the hot path is a store into memory that already exists: no
 * allocation, no hashing, no string comparison.
 *
 *   metric_counter_t *grants = metrics_counter(reg, "benefitd_grants_total",
 *                                              "Grants pushed to Redis.", "rule", "channel", NULL);
 *   metric_counter_t *g = metrics_labels(grants, "cart-abandon", "push");   // once, cached
 *   metrics_counter_inc(g, 1);                                               // per grant
 *
 * A family without labels is its own single series: update the handle the
 * registration returned. A family with labels renders only its children.
 *
 * Everything here is for one thread (the daemon's event loop); nothing is
 * atomic. Every update function accepts NULL and does nothing, so a failed
 * registration degrades to a missing metric, never to a crash. */
#ifndef BENEFITD_METRICS_H
#define BENEFITD_METRICS_H

#include <stddef.h>

struct strbuf;

#define METRICS_MAX_LABELS 3
#define METRICS_MAX_BUCKETS 32

typedef struct metrics_registry metrics_registry_t;
/* Opaque handles: a family (as registered) or one labelled child of it. */
typedef struct metric_counter metric_counter_t;
typedef struct metric_gauge metric_gauge_t;
typedef struct metric_histogram metric_histogram_t;

metrics_registry_t *metrics_registry_new(void);
/* Frees the registry and every handle it gave out. */
void metrics_registry_free(metrics_registry_t *reg);

/* Registration: name ([a-zA-Z_:][a-zA-Z0-9_:]*, unique in the registry),
 * help (free text, escaped when rendered), then 0..METRICS_MAX_LABELS label
 * names ([a-zA-Z_][a-zA-Z0-9_]*, not starting with "__"; "le" is reserved
 * for histograms) and a terminating NULL. Returns NULL, and logs why, on a
 * bad or duplicate name. */
metric_counter_t *metrics_counter(metrics_registry_t *reg, const char *name, const char *help, ...)
    __attribute__((sentinel));
metric_gauge_t *metrics_gauge(metrics_registry_t *reg, const char *name, const char *help, ...)
    __attribute__((sentinel));
/* bounds: the buckets' upper bounds, strictly increasing and finite, at most
 * METRICS_MAX_BUCKETS of them; the +Inf bucket is implicit. */
metric_histogram_t *metrics_histogram(metrics_registry_t *reg, const char *name, const char *help,
                                      const double *bounds, size_t nbounds, ...) __attribute__((sentinel));

/* Buckets for round-trip latencies in seconds (100 us .. 2.5 s). */
extern const double metrics_latency_buckets[];
extern const size_t metrics_latency_nbuckets;

/* The child of a labelled family for these label values (as many as the
 * family has label names), created on first use and the same pointer ever
 * after. NULL (logged) when the count of values is wrong or family is NULL.
 * Costs a hash lookup: call it once and keep the pointer for the hot path. */
#define metrics_labels(family, ...)                                                                     \
    _Generic((family),                                                                                  \
        metric_counter_t *: metrics_counter_labels_,                                                    \
        metric_gauge_t *: metrics_gauge_labels_,                                                        \
        metric_histogram_t *: metrics_histogram_labels_)((family), (const char *const[]){__VA_ARGS__},  \
                                                          sizeof((const char *const[]){__VA_ARGS__}) /  \
                                                              sizeof(const char *))
metric_counter_t *metrics_counter_labels_(metric_counter_t *c, const char *const *values, size_t n);
metric_gauge_t *metrics_gauge_labels_(metric_gauge_t *g, const char *const *values, size_t n);
metric_histogram_t *metrics_histogram_labels_(metric_histogram_t *h, const char *const *values, size_t n);

/* Hot path. Counters only go up: a negative or NaN increment is ignored. */
void metrics_counter_inc(metric_counter_t *c, double v);
void metrics_gauge_set(metric_gauge_t *g, double v);
void metrics_gauge_add(metric_gauge_t *g, double v);
/* Takes a gauge series off the page (a revoked partition's lag, the
 * previous rules version) until it is set again; the pointer stays valid. */
void metrics_gauge_remove(metric_gauge_t *g);
void metrics_histogram_observe(metric_histogram_t *h, double v);

/* Current values, for logs and tests. */
double metrics_counter_value(const metric_counter_t *c);
double metrics_gauge_value(const metric_gauge_t *g);
unsigned long long metrics_histogram_count(const metric_histogram_t *h);
double metrics_histogram_sum(const metric_histogram_t *h);

/* Called, in registration order, at the start of every render: the place to
 * refresh gauges that are cheaper to read than to track (consumer lag,
 * pending timers, pool stock, in-flight writes). */
typedef void (*metrics_collect_fn)(void *ud);
void metrics_on_collect(metrics_registry_t *reg, metrics_collect_fn fn, void *ud);

/* Appends the whole page in the text exposition format 0.0.4: families in
 * registration order, each with its # HELP and # TYPE lines (also when it
 * has no series yet), children sorted by label values; histograms as
 * _bucket{le=...} (cumulative, ending with le="+Inf"), _sum and _count.
 * Numbers are written as Prometheus' Go client writes them (shortest
 * round-trip form, 1e+06 style past six digits, NaN, +Inf, -Inf). */
void metrics_render(metrics_registry_t *reg, struct strbuf *out);

/* The number formatting used by metrics_render, for tests and other pages. */
void metrics_format_double(double v, struct strbuf *out);

#endif
