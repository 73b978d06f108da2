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
/* The same for a value already looked up (NULL: absent). */
void policy_subject_value(const cJSON *v, char out[160]);

/* Quiet hours [start_min, end_min) of the local day (minutes; start > end
 * crosses midnight), in zone tz. Remembers a few zones' current days, so a
 * grant costs a comparison and a zone switch happens once per zone and day. */
#define POLICY_QUIET_ZONES 8
typedef struct policy_quiet_cache {
    struct {
        char tz[64];
        int64_t start, end;          /* [start, end): the cached local day */
        int64_t q_end_today;         /* the end of quiet time this local day (epoch ms) */
        int64_t q_start_today;       /* its start this local day */
        int64_t q_end_next;          /* the end on the next local day (a period crossing midnight) */
    } z[POLICY_QUIET_ZONES];
    unsigned next;
} policy_quiet_cache;

/* When a grant decided at `at` may be delivered: `at`, or the end of the
 * quiet period that holds `at`, in zone tz (NULL/"" = UTC). start_min < 0:
 * no quiet hours. */
int64_t policy_quiet_until(policy_quiet_cache *c, const char *tz, int start_min, int end_min, int64_t at);

/* An IANA zone name that the zone database knows ("UTC" always). A member's
 * context.timezone that is not one falls back to the configured zone. */
int policy_tz_ok(const char *tz);

/* A pool code: 1..128 bytes of printable ASCII without space, '"' or '\\'
 * (it is put into the grant JSON as is). */
int policy_code_ok(const char *s, size_t n);

#endif
