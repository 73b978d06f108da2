/* policy.h - helpers shared by the two stores for limits, budgets, code pools
 * and the blocklist (docs/policy.md): the calendar day of a daily budget in
 * the configured timezone, the subject of a per-device / per-IP limit, and
 * what counts as a valid pool code. No I/O. */
#ifndef BENEFITD_POLICY_H
#define BENEFITD_POLICY_H

#include <stddef.h>
#include <stdint.h>
#include "../decode/event.h"

/* Remembers the local day last computed, so the daily budget key costs one
 * comparison per grant and a zone lookup only when the day changes. */
typedef struct policy_day_cache {
    char tz[64];
    int64_t start, end;   /* [start, end): the cached local day, epoch ms */
    char day[48];         /* YYYY-MM-DD */
} policy_day_cache;

/* The calendar day (YYYY-MM-DD) of `at` in zone tz (NULL/"" = UTC). */
const char *policy_day(policy_day_cache *c, const char *tz, int64_t at);

/* context.device.id and context.ip of an event as limit subjects: strings or
 * numbers; a value longer than 128 bytes or with control bytes is replaced by
 * "h" + a hash (so it stays a safe key part). "" when absent. */
void policy_subject(const cJSON *context, const char *path1, const char *path2, char out[160]);

/* A pool code: 1..128 bytes of printable ASCII without space, '"' or '\\'
 * (it is put into the grant JSON as is). */
int policy_code_ok(const char *s, size_t n);

#endif
