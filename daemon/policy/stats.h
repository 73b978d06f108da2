/* stats.h - the per rule and variant table of `benefitd stats` and
 * `benefitd replay --stats` (docs/policy.md "Stats"). Rows are filled from
 * Redis's Pstats:RULE:VARIANT hashes or from the in-memory store; both print
 * the same way. No I/O besides the FILE given. */
#ifndef BENEFITD_STATS_H
#define BENEFITD_STATS_H

#include <stdio.h>

typedef struct stats_table stats_table;

stats_table *stats_table_new(void);
void stats_table_free(stats_table *t);
/* Adds value to field of (rule, variant); variant "-" = the rule has none. */
void stats_table_add(stats_table *t, const char *rule, const char *variant, const char *field, long long value);
/* Prints rows sorted by rule and variant: text (aligned columns, then the
 * suppressions by reason) or JSON (one object, {"rules":[...]}). */
void stats_table_print(stats_table *t, FILE *f, int json);
/* The field of a row (0 when absent). */
long long stats_table_get(const stats_table *t, const char *rule, const char *variant, const char *field);

#endif
