#include "daemon.h"
#include "config.h"
#include "log.h"
#include "util.h"
#include "../decode/event.h"
#include "../policy/engine.h"
#include "../policy/state_redis.h"
#include "clock.h"
#include "http.h"
#include "metrics.h"
#include "../rules/rules.h"
#include "../sink/redis_sink.h"
#include "../source/kafka_source.h"

#include <event2/event.h>
#include <malloc.h>
#if defined(__SANITIZE_ADDRESS__)
/* libasan's (sanitizer/allocator_interface.h, which gcc does not ship) */
size_t __sanitizer_get_current_allocated_bytes(void);
#endif
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include "../enrich/enrich.h"
#include <unistd.h>

/* Timers of each owned partition are polled this often (and at once after an
 * assignment or a reconnect); a poll that hit its read limit goes again at once. */
#define POLL_INTERVAL_MS 250

/* Dead-lettered payloads are kept whole up to this size: enough to replay any
 * event under the decode limit, bounded for hostile ones. */
#define DLQ_PAYLOAD_MAX (1024 * 1024)

/* Pending-timer gauges (ZCARD of the owned partitions' timer and last-seen
 * sets) are refreshed by each partition's poller this often: a few cheap
 * reads per partition, whatever the number of pending waits. */
#define PENDING_REFRESH_US (5 * 1000000LL)

/* Without systemd's watchdog, the keep-alive timer still runs at this period. */
#define DEFAULT_WATCHDOG_US (10 * 1000000ULL)

/* ---- metric label sets ------------------------------------------------------
 * Raw reasons are free text (they carry sizes and values); the label sets are
 * fixed, so a hostile stream cannot grow the page. */

enum {
    DR_NOT_JSON, DR_NOT_OBJECT, DR_INVALID_UTF8, DR_TOO_DEEP, DR_TOO_LARGE, DR_EMPTY, DR_NO_TYPE,
    DR_UNSUPPORTED_TYPE, DR_NO_USER_ID, DR_NO_EVENT_NAME, DR_BAD_TIMESTAMP, DR_BAD_USER_ID, DR_FIELD_TOO_LONG,
    DR_OTHER, DR_N
};
static const char *const DECODE_REASONS[DR_N] = {
    "not_json", "not_object", "invalid_utf8", "too_deep", "too_large", "empty", "no_type",
    "unsupported_type", "no_user_id", "no_event_name", "bad_timestamp", "bad_user_id", "field_too_long",
    "other"};

static int starts(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

/* decode.c's reasons, by their fixed beginnings. */
static int decode_reason_index(const char *r) {
    static const struct { const char *prefix; int idx; } map[] = {
        {"not a JSON object", DR_NOT_OBJECT}, {"not JSON", DR_NOT_JSON}, {"invalid UTF-8", DR_INVALID_UTF8},
        {"nested too deep", DR_TOO_DEEP},     {"too large", DR_TOO_LARGE}, {"empty", DR_EMPTY},
        {"no type", DR_NO_TYPE},              {"unsupported type", DR_UNSUPPORTED_TYPE},
        {"no user id", DR_NO_USER_ID},        {"no event name", DR_NO_EVENT_NAME},
        {"bad timestamp", DR_BAD_TIMESTAMP},  {"bad user id", DR_BAD_USER_ID},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (starts(r, map[i].prefix)) return map[i].idx;
    size_t n = strlen(r);
    if (n >= 8 && !strcmp(r + n - 8, "too long")) return DR_FIELD_TOO_LONG;
    return DR_OTHER;
}

enum { SR_NOT_ACTIVE, SR_GROUP_LOST, SR_HOLDOUT, SR_SHADOW, SR_NO_VALUE, SR_NO_RECIPIENT, SR_ALREADY_PENDING,
       SR_CANCELLED, SR_LIMIT_PER_USER, SR_LIMIT_PER_DEVICE, SR_LIMIT_PER_IP, SR_FREQUENCY_CAP, SR_BUDGET,
       SR_DAILY_BUDGET, SR_POOL_EMPTY, SR_BLOCKLIST, SR_RULE_REMOVED, SR_RULE_DISABLED, SR_AUDIENCE, SR_OTHER, SR_N };
static const char *const SUPP_REASONS[SR_N] = {
    "not_active",   "group_lost",   "holdout",     "shadow",         "no_value",         "no_recipient",
    "already_pending", "cancelled", "limit_per_user", "limit_per_device", "limit_per_ip", "frequency_cap",
    "budget",       "daily_budget", "pool_empty",  "blocklist",      "rule_removed",     "rule_disabled", "audience",
    "other"};

/* The engine's reasons (engine.c); a reason added later counts as other. */
static int supp_reason_index(const char *r) {
    if (!r) return SR_OTHER;
    for (int i = 0; i < SR_N; i++) {
        const char *a = SUPP_REASONS[i], *b = r;
        while (*a && *b && (*a == *b || (*a == '_' && *b == ' '))) a++, b++;
        if (!*a && !*b) return i;
    }
    return SR_OTHER;
}

/* Per-rule children, cached for the hot path: one slot per rule of the set in
 * use, sorted by rule pointer (an intent names its rule by pointer), rebuilt
 * on reload. Children are never freed, so a pointer taken before a reload
 * stays valid for an acknowledgement that arrives after it. */
#define RULE_CHANNELS 4
typedef struct rule_metrics {
    const rule_t *rule;
    metric_counter_t *matches;
    metric_counter_t *supp[SR_N];                 /* created on first use */
    const char *chan[RULE_CHANNELS];              /* the rule's channels seen so far (owned by the rule) */
    metric_counter_t *grants[RULE_CHANNELS];
    int n_chan;
} rule_metrics;

typedef struct daemon_metrics {
    metrics_registry_t *reg;
    metric_counter_t *events, *ev_decoded, *ev_dead;
    metric_counter_t *decode_errors, *decode_err[DR_N];
    metric_counter_t *matches, *grants, *writes, *w_pushed, *w_repeat, *supp;
    metric_histogram_t *rtt, *rtt_op[SINK_N_OPS];
    metric_gauge_t *inflight, *redis_up, *heap;
    metric_counter_t *reconnects;
    uint64_t reconnects_seen;
    metric_gauge_t *lag, *paused;
    metric_gauge_t *pending, *pending_wait, *pending_inact;
    metric_gauge_t *pool;
    metric_gauge_t *rules_info, *rules_info_cur, *rules_loaded;
    metric_counter_t *reloads, *reload_ok, *reload_err;
    rule_metrics *rules;   /* the rule cache */
    size_t n_rules;
    metric_gauge_t **pools;  /* pool_codes_available children of the pools the rules use */
    size_t n_pools;
} daemon_metrics;

typedef struct daemon_state daemon_state;

/* One owned partition's timer poller: created on assignment, stopped on revoke. */
typedef struct poller {
    struct poller *next;
    daemon_state *d;
    char *topic;
    int32_t partition;
    struct event *ev;
    int busy;      /* a poll round is in flight */
    int dead;      /* revoked while busy: freed when the round ends */
    int seen;
    metric_gauge_t *lag;          /* benefitd_kafka_consumer_lag{topic,partition} */
    int zpending;                 /* pending-timer reads in flight */
    long long wait_n, wait_old_n, inact_n, inact_acc; /* wait_old_n: the per-wait timers of earlier builds */
    int64_t zcard_at_us;          /* when the pending-timer counts were last read */
    /* How far the partition's activity is known, for silences: the latest
     * event time read from it, or the wall clock once the consumer sits at
     * its end (EOF, cleared by the next message). */
    int64_t event_wm;
    int at_eof;
    int rv_outstanding;           /* revisits read and not yet decided: no new read until 0 */
} poller;

/* An event (or a plugin revisit) waiting for its member's profile to load:
 * once one waits, every later one queues behind it, so each member's events
 * are still decided in Kafka order. */
typedef struct pend {
    struct pend *next;
    event_t ev;                   /* is_revisit: unused */
    offset_token_t *tok;          /* held; NULL for a revisit */
    char *topic;
    int32_t partition;
    profile_t *p;                 /* pinned */
    int is_revisit;
    char *plugin;                 /* revisit: whose */
    int64_t due;                  /* revisit: its due time */
    poller *poller;               /* revisit: counted in rv_outstanding */
} pend;

typedef struct fetch {
    struct fetch *next;
    daemon_state *d;
    profile_t *p;
    int inflight;
} fetch;

/* A write command list for WRITE_LUA. */
typedef struct wcmds {
    const char **argv;
    size_t *lens;
    char **owned;             /* copies the arguments point into; may outnumber them (hset_end) */
    size_t n, cap, nowned, capowned;
} wcmds;

struct daemon_state {
    config_t cfg;
    struct event_base *base;
    ruleset_t *rules;
    engine_t engine;
    redis_sink_t *sink;
    redis_store_t *store;
    bd_clock_t clock;
    poller *pollers;
    poller *last_poller;   /* find_poller's cache; cleared when a poller goes */
    int pollers_added;     /* by the sync_pollers in progress */
    kafka_source_t *src;
    struct event *sig_int, *sig_term, *sig_hup, *stats_ev, *drain_ev, *watchdog_ev;
    int stopping;
    int64_t stop_deadline_us;
    int notified_ready;
    int joined;            /* the group handed us an assignment (maybe empty) at least once */
    int assigned;          /* partitions owned now */
    int paused;            /* what we last asked of the source */
    int held;              /* reading held back: too many writes in flight */
    uint64_t read_holds;   /* times reading was held back */
    char status[160];      /* the last STATUS= sent */
    http_server_t *http;
    daemon_metrics m;
    strbuf key, key2;
    /* the message being processed, for the decision callback */
    offset_token_t *cur_tok;
    const char *cur_topic;
    int32_t cur_partition;
    uint64_t events_ok, events_dead, grants_sent, grants_pushed, grants_repeat, grants_refused, suppressed, reloads;
    uint64_t state_writes, scheduled, already_pending, cancelled, count_progress;
    /* profiles and plugins (enrich.h) */
    enrich_t en;
    int need_profile;             /* this ruleset or a plugin reads profiles */
    pend *q_head, *q_tail;
    size_t q_len;
    int q_held;                   /* reading held back: the queue is full */
    fetch *fetches;               /* profiles loading */
    int write_script;             /* the profile/blocklist/revisit write script */
    uint64_t profile_loads, profile_writes, revisits_done, plugin_events, plugin_blocks;
    metric_counter_t *m_profile_loads, *m_profile_writes, *m_revisits, *m_plugin_blocks;
    metric_gauge_t *m_profile_cached, *m_profile_bytes, *m_queue;
    struct wcmds wbatch;          /* profile/blocklist/revisit writes of this batch (wbatch_flush) */
    offset_token_t **wbatch_toks;
    size_t wbatch_ntoks, wbatch_captoks;
};

static int poller_reap(poller *p);
static void wbatch_flush(daemon_state *d);

/* Events waiting for profiles before reading stops (resumes at half). */
#define PROFILE_QUEUE_MAX 4096

/* Profile, blocklist and revisit writes: a list of commands in ARGV, each
 * "argc cmd args...", run in one atomic call. ZREMIF removes a revisit only
 * if it is still the one that ran (a newer request replaced it otherwise).
 * Every command is idempotent, so a resend after a reconnect is harmless. */
static const char *const WRITE_LUA =
    "local i = 1\n"
    "while i <= #ARGV do\n"
    "  local n = tonumber(ARGV[i])\n"
    "  if ARGV[i + 1] == 'ZREMIF' then\n"
    "    local s = redis.call('ZSCORE', ARGV[i + 2], ARGV[i + 3])\n"
    "    if s and tonumber(s) == tonumber(ARGV[i + 4]) then redis.call('ZREM', ARGV[i + 2], ARGV[i + 3]) end\n"
    "  else\n"
    "    redis.call(unpack(ARGV, i + 1, i + n))\n"
    "  end\n"
    "  i = i + n + 1\n"
    "end\n"
    "return 1\n";

static void set_paused(daemon_state *d, int paused) {
    d->paused = paused;
    kafka_source_set_paused(d->src, paused);
}

/* ---- metrics ------------------------------------------------------------------- */

static int cmp_rule_ptr(const void *a, const void *b) {
    uintptr_t x = (uintptr_t)((const rule_metrics *)a)->rule, y = (uintptr_t)((const rule_metrics *)b)->rule;
    return x < y ? -1 : x > y;
}

/* Rebuilds the rule cache for the set in use (at start and after a reload). */
static void rule_metrics_rebuild(daemon_state *d) {
    daemon_metrics *m = &d->m;
    free(m->rules);
    m->n_rules = ruleset_count(d->rules);
    m->rules = xcalloc(m->n_rules ? m->n_rules : 1, sizeof *m->rules);
    for (size_t i = 0; i < m->n_rules; i++) {
        rule_metrics *rm = &m->rules[i];
        rm->rule = ruleset_rule(d->rules, i);
        rm->matches = metrics_labels(m->matches, rm->rule->id);
    }
    qsort(m->rules, m->n_rules, sizeof *m->rules, cmp_rule_ptr);
}

static rule_metrics *rule_metrics_find(daemon_state *d, const rule_t *r) {
    if (!r) return NULL;
    rule_metrics key = {.rule = r};
    return bsearch(&key, d->m.rules, d->m.n_rules, sizeof key, cmp_rule_ptr);
}

static metric_counter_t *rule_supp(daemon_state *d, rule_metrics *rm, int reason) {
    if (!rm) return NULL;
    if (!rm->supp[reason]) rm->supp[reason] = metrics_labels(d->m.supp, rm->rule->id, SUPP_REASONS[reason]);
    return rm->supp[reason];
}

static metric_counter_t *rule_grants(daemon_state *d, rule_metrics *rm, const char *channel) {
    if (!rm) return NULL;
    if (!channel) channel = "default";
    for (int i = 0; i < rm->n_chan; i++)
        if (!strcmp(rm->chan[i], channel)) return rm->grants[i];
    metric_counter_t *c = metrics_labels(d->m.grants, rm->rule->id, channel);
    if (rm->n_chan < RULE_CHANNELS) {
        rm->chan[rm->n_chan] = channel;
        rm->grants[rm->n_chan++] = c;
    }
    return c;
}

static void set_rules_info(daemon_state *d) {
    metrics_gauge_remove(d->m.rules_info_cur);
    d->m.rules_info_cur = metrics_labels(d->m.rules_info, ruleset_version(d->rules));
    metrics_gauge_set(d->m.rules_info_cur, 1);
    metrics_gauge_set(d->m.rules_loaded, (double)ruleset_count(d->rules));
}

/* ---- code pool stock: SCARD {prefix}pool:NAME (docs/policy.md) of every pool
 * the rules name, refreshed with the stats (every 10 s) and after a reload. */

/* A pool under its low-stock threshold (config `pools`) is logged at most
 * once per LOW_STOCK_LOG_US per pool, while it stays low. */
#define LOW_STOCK_LOG_US (10 * 60 * 1000000LL)
typedef struct low_log {
    char *pool;
    int64_t at_us;
} low_log;
static low_log *low_logs;
static size_t n_low_logs;

typedef struct stock_ctx {
    metric_gauge_t *g;
    long long threshold;
    char pool[];
} stock_ctx;

static void pool_stock_cb(void *ud, const redisReply *r) {
    stock_ctx *c = ud;
    if (r && r->type == REDIS_REPLY_INTEGER) {
        metrics_gauge_set(c->g, (double)r->integer);
        if (r->integer < c->threshold) {
            size_t i = 0;
            while (i < n_low_logs && strcmp(low_logs[i].pool, c->pool)) i++;
            if (i == n_low_logs) {
                low_logs = xrealloc(low_logs, (n_low_logs + 1) * sizeof *low_logs);
                low_logs[n_low_logs++] = (low_log){xstrdup(c->pool), 0};
            }
            int64_t now = now_mono_us();
            if (!low_logs[i].at_us || now - low_logs[i].at_us >= LOW_STOCK_LOG_US) {
                low_logs[i].at_us = now;
                log_warn("pool_low_stock", "pool=%s available=%lld low_stock=%lld", c->pool, r->integer, c->threshold);
            }
        }
    }
    free(c);
}

static void pool_add(daemon_state *d, metric_gauge_t ***v, size_t *n, const char *pool) {
    if (!pool || !*pool) return;
    metric_gauge_t *g = metrics_labels(d->m.pool, pool);
    for (size_t i = 0; i < *n; i++)
        if ((*v)[i] == g) return;
    *v = xrealloc(*v, (*n + 1) * sizeof **v);
    (*v)[(*n)++] = g;
}

/* The pools of the set in use; a pool no rule names any more leaves the page. */
static void pools_rebuild(daemon_state *d) {
    metric_gauge_t **v = NULL;
    size_t n = 0;
    for (size_t i = 0; i < ruleset_count(d->rules); i++) {
        const rule_t *r = ruleset_rule(d->rules, i);
        pool_add(d, &v, &n, r->grant.pool);
        for (size_t j = 0; j < r->n_variants; j++) pool_add(d, &v, &n, r->variants[j].grant.pool);
    }
    for (size_t i = 0; i < d->m.n_pools; i++) {
        size_t j = 0;
        while (j < n && v[j] != d->m.pools[i]) j++;
        if (j == n) metrics_gauge_remove(d->m.pools[i]);
    }
    free(d->m.pools);
    d->m.pools = v;
    d->m.n_pools = n;
}

static void pools_refresh(daemon_state *d) {
    if (!d->sink || !redis_sink_ready(d->sink) || d->stopping) return;
    for (size_t i = 0; i < ruleset_count(d->rules); i++) {
        const rule_t *r = ruleset_rule(d->rules, i);
        for (size_t j = 0; j <= r->n_variants; j++) {
            const char *pool = j == 0 ? r->grant.pool : r->variants[j - 1].grant.pool;
            if (!pool || !*pool) continue;
            sb_reset(&d->key2);
            sb_printf(&d->key2, "%spool:%s", d->cfg.key_prefix, pool);
            const char *argv[2] = {"SCARD", d->key2.s};
            size_t lens[2] = {5, d->key2.len};
            /* the child outlives the sink (freed with the registry, after it) */
            stock_ctx *c = xmalloc(sizeof *c + strlen(pool) + 1);
            c->g = metrics_labels(d->m.pool, pool);
            c->threshold = config_pool_low_stock(&d->cfg, pool);
            strcpy(c->pool, pool);
            redis_sink_read(d->sink, 2, argv, lens, pool_stock_cb, c);
        }
    }
}

static void on_latency(void *ud, sink_op op, double seconds) {
    daemon_state *d = ud;
    metrics_histogram_observe(d->m.rtt_op[op], seconds);
}

static void collect(void *ud);

static void metrics_setup(daemon_state *d) {
    daemon_metrics *m = &d->m;
    metrics_registry_t *r = m->reg = metrics_registry_new();
    m->events = metrics_counter(r, "benefitd_events_total", "Kafka messages processed, by outcome.", "outcome", NULL);
    m->ev_decoded = metrics_labels(m->events, "decoded");
    m->ev_dead = metrics_labels(m->events, "dead_letter");
    m->decode_errors = metrics_counter(r, "benefitd_decode_errors_total",
                                       "Messages dead-lettered because they did not decode, by reason.", "reason", NULL);
    for (int i = 0; i < DR_N; i++) m->decode_err[i] = metrics_labels(m->decode_errors, DECODE_REASONS[i]);
    m->matches = metrics_counter(r, "benefitd_rule_matches_total",
                                 "Decoded events whose trigger and where matched the rule (granted or not).", "rule",
                                 NULL);
    m->grants = metrics_counter(r, "benefitd_grants_total",
                                "Grants claimed and pushed to Redis by event decisions (immediate and count rules), "
                                "by rule and channel.",
                                "rule", "channel", NULL);
    m->writes = metrics_counter(r, "benefitd_grant_writes_total",
                                "Acknowledged grant writes of event decisions: pushed, or repeat (already claimed, "
                                "nothing pushed).",
                                "result", NULL);
    m->w_pushed = metrics_labels(m->writes, "pushed");
    m->w_repeat = metrics_labels(m->writes, "repeat");
    m->supp = metrics_counter(r, "benefitd_suppressions_total", "Matched decisions that granted nothing, by reason.",
                              "rule", "reason", NULL);
    m->rtt = metrics_histogram(r, "benefitd_redis_roundtrip_seconds",
                               "Time from sending a Redis request to its reply, by kind (push: claim+push, script: "
                               "state scripts, read: timer polls).",
                               metrics_latency_buckets, metrics_latency_nbuckets, "op", NULL);
    for (int i = 0; i < SINK_N_OPS; i++) m->rtt_op[i] = metrics_labels(m->rtt, sink_op_names[i]);
    m->inflight = metrics_gauge(r, "benefitd_redis_inflight", "Redis requests sent or queued (or held behind one), not yet answered.", NULL);
    m->redis_up = metrics_gauge(r, "benefitd_redis_up", "1 when connected to Redis with every script loaded.", NULL);
    m->heap = metrics_gauge(r, "benefitd_heap_bytes",
                            "Memory the daemon has allocated and not freed (malloc, every thread): unlike RSS, "
                            "without the freed memory the allocator keeps for reuse after a burst.", NULL);
    m->reconnects = metrics_counter(r, "benefitd_redis_reconnects_total", "Redis connections lost and retried.", NULL);
    m->lag = metrics_gauge(r, "benefitd_kafka_consumer_lag",
                           "Messages between the consumer position and the high watermark, per owned partition.",
                           "topic", "partition", NULL);
    m->paused = metrics_gauge(r, "benefitd_kafka_paused",
                              "1 while consumption is paused (Redis down or too many writes in flight).", NULL);
    m->pending = metrics_gauge(r, "benefitd_pending_timers",
                               "Members with a pending wait (kind=wait) and members watched for a silence (kind=inactivity) in the owned partitions (refreshed every 5 s).",
                               "kind", NULL);
    m->pending_wait = metrics_labels(m->pending, "wait");
    m->pending_inact = metrics_labels(m->pending, "inactivity");
    m->pool = metrics_gauge(r, "benefitd_pool_codes_available", "Codes left in each code pool.", "pool", NULL);
    m->rules_info = metrics_gauge(r, "benefitd_rules_info", "The rule set in use (value 1), by version.", "version",
                                  NULL);
    m->rules_loaded = metrics_gauge(r, "benefitd_rules_loaded", "Rules in the set in use.", NULL);
    m->reloads = metrics_counter(r, "benefitd_rules_reloads_total", "Rule reloads (SIGHUP), by result.", "result",
                                 NULL);
    m->reload_ok = metrics_labels(m->reloads, "ok");
    m->reload_err = metrics_labels(m->reloads, "error");
    d->m_profile_loads = metrics_counter(r, "benefitd_profile_loads_total",
                                         "Member profiles read from Redis (cache misses).", NULL);
    d->m_profile_writes = metrics_counter(r, "benefitd_profile_writes_total",
                                          "Profile, plugin blocklist and revisit writes sent.", NULL);
    d->m_revisits = metrics_counter(r, "benefitd_plugin_revisits_total", "Plugin revisits run (host->revisit_at).",
                                    NULL);
    d->m_plugin_blocks = metrics_counter(r, "benefitd_plugin_blocks_total",
                                         "Blocklist entries added by plugins (risk).", NULL);
    d->m_profile_cached = metrics_gauge(r, "benefitd_profile_cache_entries", "Member profiles in the cache.", NULL);
    d->m_profile_bytes = metrics_gauge(r, "benefitd_profile_cache_bytes",
                                       "Estimated memory of the profile cache (bounded by profiles.cache_mb).", NULL);
    d->m_queue = metrics_gauge(r, "benefitd_profile_wait_queue",
                               "Events waiting for their member's profile to load.", NULL);
    metrics_on_collect(r, collect, d);
    rule_metrics_rebuild(d);
    pools_rebuild(d);
    set_rules_info(d);
}

static void metrics_teardown(daemon_state *d) {
    free(d->m.rules);
    free(d->m.pools);
    metrics_registry_free(d->m.reg);
    memset(&d->m, 0, sizeof d->m);
}

/* Writes not yet acknowledged: in the sink, or schedules the store holds
 * behind one in flight. */
static size_t writes_pending(const daemon_state *d) {
    return redis_sink_inflight(d->sink) + redis_store_held(d->store);
}

static void update_backpressure(daemon_state *d) {
    if (d->stopping) return;
    size_t inflight = writes_pending(d);
    int ready = redis_sink_ready(d->sink);
    /* Redis away: pause the partitions (nothing can be acknowledged, so
     * nothing should be fetched). Too many writes in flight: only stop
     * reading, with hysteresis (hold above the bound, release at half), so
     * the prefetched messages stay and a busy pipeline does not flap. */
    set_paused(d, !ready);
    if (inflight >= (size_t)d->cfg.max_inflight) {
        /* Counted, not logged: under load this happens many times a second. */
        if (!d->held) d->read_holds++;
        d->held = 1;
    }
    else if (inflight <= (size_t)d->cfg.max_inflight / 2) d->held = 0;
    if (d->q_len >= PROFILE_QUEUE_MAX) d->q_held = 1;
    else if (d->q_len <= PROFILE_QUEUE_MAX / 2) d->q_held = 0;
    kafka_source_hold_reading(d->src, d->held || d->q_held);
}

typedef struct ack_ctx {
    daemon_state *d;
    offset_token_t *tok;
    int is_grant;
} ack_ctx;

static void on_grant_ack(void *ud, int status) {
    ack_ctx *a = ud;
    if (a->is_grant) {
        if (status == 1) a->d->grants_pushed++;
        else a->d->grants_repeat++;
        metrics_counter_inc(status == 1 ? a->d->m.w_pushed : a->d->m.w_repeat, 1);
    }
    kafka_source_release(a->tok);
    daemon_state *d = a->d;
    free(a);
    update_backpressure(d);
}

static void push_hold(daemon_state *d, const char *claim, const char *queue, output_kind kind, long long maxlen,
                      int nfields, const char *const *fields, const size_t *lens, int is_grant) {
    ack_ctx *a = xmalloc(sizeof *a);
    a->d = d;
    a->tok = d->cur_tok;
    a->is_grant = is_grant;
    kafka_source_hold(d->cur_tok);
    redis_sink_push(d->sink, claim, queue, kind, maxlen, d->cfg.claim_ttl_ms, nfields, fields, lens, on_grant_ack, a);
}

/* A state write of the event being processed: the token is held until Redis
 * acknowledges it, so the offset never passes the write. */
typedef struct intent_ack {
    daemon_state *d;
    offset_token_t *tok;
    int kind;
    char rule[64];
    metric_counter_t *granted;    /* grants{rule,channel} */
    metric_counter_t *explained;  /* suppressions{rule,reason} of the intent's reason */
    metric_counter_t *pending;    /* suppressions{rule,already_pending} */
    char *grant_json, *target;    /* for plugins' on_grant (only when one has it) */
} intent_ack;

static void on_intent_ack(void *ud, rs_outcome k, long long n, const char *reason) {
    intent_ack *a = ud;
    daemon_state *d = a->d;
    switch (k) {
    case RS_GRANTED:
        d->grants_pushed++;
        metrics_counter_inc(d->m.w_pushed, 1);
        metrics_counter_inc(a->granted, 1);
        if (a->grant_json) plugins_on_grant(&d->en.plugins, a->target, now_wall_ms(), a->grant_json);
        break;
    case RS_REPEAT:
        d->grants_repeat++;
        metrics_counter_inc(d->m.w_repeat, 1);
        break;
    case RS_SCHEDULED: d->scheduled++; break;
    case RS_PENDING:
        d->already_pending++;
        metrics_counter_inc(a->pending, 1);
        log_debug("suppressed", "rule=%s reason=\"already pending\"", a->rule);
        break;
    case RS_CANCELLED: d->cancelled += (uint64_t)n; break;
    case RS_PROGRESS:
        d->count_progress++;
        log_debug("count_progress", "rule=%s count=%lld", a->rule, n);
        break;
    case RS_EXPLAINED: {
        d->suppressed++;
        /* a grant step that policy (or the group claim) refused */
        if (a->kind == INTENT_GRANT) d->grants_refused++;
        /* the reason the store gives (a policy reason of the grant step, or
         * the intent's own); the rule cache may have been rebuilt since the
         * intent, so the child is looked up by label */
        int idx = supp_reason_index(reason);
        if (a->rule[0] && (idx != SR_OTHER || !a->explained))
            a->explained = metrics_labels(d->m.supp, a->rule, SUPP_REASONS[idx]);
        metrics_counter_inc(a->explained, 1);
        if (reason) log_debug("suppressed", "rule=%s reason=\"%s\"", a->rule, reason);
        break;
    }
    default: break;
    }
    kafka_source_release(a->tok);
    free(a->grant_json);
    free(a->target);
    free(a);
    update_backpressure(d);
}

static void on_intent(void *ud, const event_t *ev, const intent_t *in) {
    daemon_state *d = ud;
    rule_metrics *rm = NULL;
    if (in->kind != INTENT_TOUCH && in->kind != INTENT_CANCEL && in->kind != INTENT_LOOP) {
        rm = rule_metrics_find(d, in->rule);
        if (rm) metrics_counter_inc(rm->matches, 1);
    }
    if (in->kind == INTENT_EXPLAIN) {
        d->suppressed++;
        metrics_counter_inc(rule_supp(d, rm, supp_reason_index(in->reason)), 1);
        log_debug("suppressed", "rule=%s user=%s reason=\"%s\"", in->rule->id, ev->user_id, in->reason);
        /* no write to hold the offset for: the store only counts it (stats batch) */
        redis_store_apply(d->store, in, d->cur_topic, d->cur_partition, NULL, NULL);
        return;
    }
    intent_t touch;
    if (in->kind == INTENT_TOUCH && ev->ts_ms < in->ts) {
        /* Activity is recorded at the event's own time (never later than its
         * processing): a silence then starts where replay says it does, so the
         * inactivity grant id ("inactive:" + last) is the same live and in
         * replay, and a redelivered event does not move it. */
        touch = *in;
        touch.ts = ev->ts_ms;
        in = &touch;
    }
    intent_ack *a = xcalloc(1, sizeof *a);
    a->d = d;
    a->tok = d->cur_tok;
    a->kind = in->kind;
    if (in->rule) snprintf(a->rule, sizeof a->rule, "%s", in->rule->id);
    if (rm) {
        if (in->kind == INTENT_GRANT || in->kind == INTENT_COUNT_GRANT) a->granted = rule_grants(d, rm, in->channel);
        if (in->reason) a->explained = rule_supp(d, rm, supp_reason_index(in->reason));
        if (in->kind == INTENT_SCHEDULE) a->pending = rule_supp(d, rm, SR_ALREADY_PENDING);
    }
    if ((in->kind == INTENT_GRANT || in->kind == INTENT_COUNT_GRANT) && !in->reason && d->en.plugins.any_on_grant) {
        a->grant_json = plugin_grant_json(in->grant_id, in->rule->id, in->target_user, in->channel);
        a->target = xstrdup(in->target_user);
    }
    kafka_source_hold(d->cur_tok);
    int queued = redis_store_apply(d->store, in, d->cur_topic, d->cur_partition, on_intent_ack, a);
    if (queued == 2) return; /* answered at once: on_intent_ack has run */
    if (!queued) {
        /* nothing to write (a reason that needs no state) */
        kafka_source_release(a->tok);
        free(a->grant_json);
        free(a->target);
        if (in->kind == INTENT_GRANT || in->kind == INTENT_SCHEDULE) {
            d->suppressed++;
            metrics_counter_inc(a->explained, 1);
        }
        free(a);
        return;
    }
    d->state_writes++;
    if (in->kind == INTENT_GRANT) d->grants_sent++;
}

/* The end of a Kafka batch: the touches batched across its messages go. */
static void on_batch_end(void *ud) {
    daemon_state *d = ud;
    redis_store_flush(d->store);
    wbatch_flush(d);
}

static void dead_letter(daemon_state *d, const rd_kafka_message_t *m, const char *reason) {
    char part[16], off[24];
    snprintf(part, sizeof part, "%d", (int)m->partition);
    snprintf(off, sizeof off, "%lld", (long long)m->offset);
    const char *topic = rd_kafka_topic_name(m->rkt);
    sb_reset(&d->key);
    /* Claimed by coordinates, so a redelivered bad message is recorded once. */
    sb_printf(&d->key, "%sdl:%s:%s:%s", d->cfg.key_prefix, topic, part, off);
    size_t plen = m->len > DLQ_PAYLOAD_MAX ? DLQ_PAYLOAD_MAX : m->len;
    const char *fields[10] = {"reason", reason, "topic", topic, "partition", part, "offset", off,
                              "payload", m->payload ? (const char *)m->payload : ""};
    size_t lens[10] = {6, strlen(reason), 5, strlen(topic), 9, strlen(part), 6, strlen(off), 7, m->payload ? plen : 0};
    push_hold(d, d->key.s, d->cfg.dead_letter_key, OUT_STREAM, d->cfg.dead_letter_maxlen, 10, fields, lens, 0);
    d->events_dead++;
    log_warn("dead_letter", "topic=%s partition=%s offset=%s reason=\"%s\"", topic, part, off, reason);
}

/* The poller of a partition, with a one-entry cache: consecutive messages
 * mostly come from one partition. NULL before the assignment made one. */
static poller *find_poller(daemon_state *d, const char *topic, int32_t partition) {
    if (d->last_poller && d->last_poller->partition == partition && !d->last_poller->dead &&
        !strcmp(d->last_poller->topic, topic))
        return d->last_poller;
    for (poller *p = d->pollers; p; p = p->next)
        if (p->partition == partition && !p->dead && !strcmp(p->topic, topic)) return d->last_poller = p;
    return NULL;
}

/* ---- profiles and plugins (enrich.h, docs/profiles.md) ------------------------ */


/* Keeps c (malloc'd) until the batch is sent. */
static char *wc_own(wcmds *w, char *c) {
    if (w->nowned == w->capowned) {
        w->capowned = w->capowned ? w->capowned * 2 : 16;
        w->owned = xrealloc(w->owned, w->capowned * sizeof *w->owned);
    }
    w->owned[w->nowned++] = c;
    return c;
}

static void wc_arg(wcmds *w, const char *s, size_t len, int own) {
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 16;
        w->argv = xrealloc(w->argv, w->cap * sizeof *w->argv);
        w->lens = xrealloc(w->lens, w->cap * sizeof *w->lens);
    }
    if (own) s = wc_own(w, xstrndup(s, len));
    w->argv[w->n] = s;
    w->lens[w->n] = len;
    w->n++;
}

static void wc_cmd(wcmds *w, int argc, ...) {
    char num[16];
    snprintf(num, sizeof num, "%d", argc);
    wc_arg(w, num, strlen(num), 1);
    va_list ap;
    va_start(ap, argc);
    for (int i = 0; i < argc; i++) {
        const char *a = va_arg(ap, const char *);
        wc_arg(w, a, strlen(a), 1);
    }
    va_end(ap);
}

static void wc_free(wcmds *w) {
    for (size_t i = 0; i < w->nowned; i++) free(w->owned[i]);
    free(w->owned);
    free(w->argv);
    free(w->lens);
}

/* Profile, blocklist and revisit writes are batched like touches: the
 * commands of a Kafka batch's events go as one script call at its end (a
 * script call costs Redis several times its commands), each event's offset
 * held until that call is acknowledged. Flushed before any profile read, so
 * a read never overtakes a write; a batch of writes stays in event order. */
#define WBATCH_MAX_ARGS 4096

typedef struct wbatch_ack {
    daemon_state *d;
    offset_token_t **toks;
    size_t n;
} wbatch_ack;

static void on_wbatch_ack(void *ud, const redisReply *r) {
    wbatch_ack *a = ud;
    for (size_t i = 0; i < a->n; i++) kafka_source_release(a->toks[i]);
    daemon_state *d = a->d;
    free(a->toks);
    free(a);
    update_backpressure(d);
}

static void wbatch_flush(daemon_state *d) {
    wcmds *w = &d->wbatch;
    if (w->n == 0) return;
    wbatch_ack *a = xcalloc(1, sizeof *a);
    a->d = d;
    a->toks = d->wbatch_toks;
    a->n = d->wbatch_ntoks;
    d->wbatch_toks = NULL;
    d->wbatch_ntoks = d->wbatch_captoks = 0;
    redis_sink_eval(d->sink, d->write_script, (int)w->n, w->argv, w->lens, on_wbatch_ack, a);
    for (size_t i = 0; i < w->nowned; i++) free(w->owned[i]);
    w->n = w->nowned = 0;
    d->profile_writes++;
    metrics_counter_inc(d->m_profile_writes, 1);
}

/* The commands just appended to d->wbatch belong to tok's event (NULL: no
 * message, a revisit): its offset waits for them. */
static void wbatch_commit(daemon_state *d, offset_token_t *tok) {
    if (tok) {
        if (d->wbatch_ntoks == d->wbatch_captoks) {
            d->wbatch_captoks = d->wbatch_captoks ? d->wbatch_captoks * 2 : 64;
            d->wbatch_toks = xrealloc(d->wbatch_toks, d->wbatch_captoks * sizeof *d->wbatch_toks);
        }
        kafka_source_hold(tok);
        d->wbatch_toks[d->wbatch_ntoks++] = tok;
    }
    if (d->wbatch.n >= WBATCH_MAX_ARGS) wbatch_flush(d);
}

static void profile_key(daemon_state *d, const char *user, strbuf *out) {
    sb_reset(out);
    sb_printf(out, "%s{u:%s}:profile", d->cfg.key_prefix, user);
}

/* One HSET (and one HDEL) per profile however many traits changed: a
 * command's argument count goes first in WRITE_LUA's list, so it is
 * patched in once the fields are known. */
typedef struct hset_b {
    wcmds *w;
    size_t count_at;     /* index of HSET's argument count */
    int nset;
    char **dels;
    size_t ndels;
} hset_b;

static void hset_begin(hset_b *h, wcmds *w, const char *key) {
    memset(h, 0, sizeof *h);
    h->w = w;
    h->count_at = w->n;
    wc_arg(w, "", 0, 0); /* the count, patched by hset_end */
    wc_arg(w, "HSET", 4, 0);
    wc_arg(w, key, strlen(key), 1);
}

static void hset_field(hset_b *h, const char *name, const cJSON *v) {
    if (!v) {
        h->dels = xrealloc(h->dels, (h->ndels + 1) * sizeof *h->dels);
        h->dels[h->ndels++] = xstrdup(name);
        return;
    }
    /* most traits print in a few bytes: on the stack, not in two mallocs */
    char buf[256];
    char *t = cJSON_PrintPreallocated((cJSON *)v, buf, (int)sizeof buf, 0) ? buf : cJSON_PrintUnformatted(v);
    if (!t) return;
    wc_arg(h->w, name, strlen(name), 1);
    wc_arg(h->w, t, strlen(t), 1);
    if (t != buf) free(t);
    h->nset++;
}

static void hset_end(hset_b *h) {
    wcmds *w = h->w;
    const char *key = w->argv[h->count_at + 2];
    if (h->nset) {
        char num[16];
        snprintf(num, sizeof num, "%d", 2 + 2 * h->nset);
        char *c = wc_own(w, xstrdup(num));
        w->argv[h->count_at] = c;
        w->lens[h->count_at] = strlen(c);
    }
    if (h->ndels) {
        char num[16];
        snprintf(num, sizeof num, "%zu", 2 + h->ndels);
        wc_arg(w, num, strlen(num), 1);
        wc_arg(w, "HDEL", 4, 0);
        wc_arg(w, key, strlen(key), 0); /* the HSET's copy, owned by the batch */
        for (size_t i = 0; i < h->ndels; i++) {
            wc_arg(w, h->dels[i], strlen(h->dels[i]), 1);
            free(h->dels[i]);
        }
    }
    if (!h->nset) {
        /* no field set: drop the HSET (count, name, key) in front of any HDEL */
        size_t drop = 3;
        memmove(&w->argv[h->count_at], &w->argv[h->count_at + drop], (w->n - h->count_at - drop) * sizeof *w->argv);
        memmove(&w->lens[h->count_at], &w->lens[h->count_at + drop], (w->n - h->count_at - drop) * sizeof *w->lens);
        w->n -= drop;
    }
    free(h->dels);
}

static void write_traits(daemon_state *d, const char *user, const cJSON *traits) {
    wcmds *w = &d->wbatch;
    size_t before = w->n;
    strbuf k;
    sb_init(&k);
    profile_key(d, user, &k);
    hset_b h;
    hset_begin(&h, w, k.s);
    for (const cJSON *t = traits->child; t; t = t->next)
        if (t->string && t->string[0]) hset_field(&h, t->string, t);
    hset_end(&h);
    if (w->n > before) wbatch_commit(d, d->cur_tok);
    sb_free(&k);
}

static void dirty_cb(void *ud, const char *name, const cJSON *v) { hset_field(ud, name, v); }

/* After a member's decision: the plugins' requests and the profile's
 * changes, as one write sent after the decision's own writes (so a crash
 * between them replays the event against the old profile: its grants are
 * claimed already, nothing doubles). zremif: a revisit that ran. */
static void after_plugins(daemon_state *d, profile_t *p, plugin_run_t *run, const char *topic, int32_t partition,
                          offset_token_t *tok, const char *zremif_member, int64_t zremif_due) {
    wcmds *w = &d->wbatch;
    size_t before = w->n;
    strbuf k, rk;
    sb_init(&k);
    sb_init(&rk);
    sb_printf(&rk, "%srevisit:%s:%d", d->cfg.key_prefix, topic, (int)partition);
    if (zremif_member) {
        char due[24];
        snprintf(due, sizeof due, "%lld", (long long)zremif_due);
        wc_cmd(w, 4, "ZREMIF", rk.s, zremif_member, due);
    }
    for (size_t i = 0; i < run->n_blocks; i++) {
        const blocked_t *b = &run->blocks[i];
        sb_reset(&k);
        sb_printf(&k, "%sblock:%s", d->cfg.key_prefix, b->kind);
        wc_cmd(w, 3, "SADD", k.s, b->id);
        d->plugin_blocks++;
        metrics_counter_inc(d->m_plugin_blocks, 1);
        log_warn("plugin_block", "kind=%s id=%s user=%s reason=\"%s\"", b->kind, b->id, p->user, b->reason);
    }
    for (size_t i = 0; i < run->n_revisits; i++) {
        sb_reset(&k);
        sb_printf(&k, "%s\x1f%s", run->revisits[i].plugin, p->user);
        if (run->revisits[i].due_ms < 0) {
            wc_cmd(w, 3, "ZREM", rk.s, k.s);
        } else {
            char due[24];
            snprintf(due, sizeof due, "%lld", (long long)run->revisits[i].due_ms);
            wc_cmd(w, 4, "ZADD", rk.s, due, k.s);
        }
    }
    profile_key(d, p->user, &k);
    hset_b h;
    hset_begin(&h, w, k.s);
    profile_take_dirty(p, dirty_cb, &h);
    hset_end(&h);
    if (w->n > before) wbatch_commit(d, tok);
    /* a block must be in Redis before the grant step of any later event */
    if (run->n_blocks) wbatch_flush(d);
    sb_free(&k);
    sb_free(&rk);
    d->plugin_events += run->n_emits;
    plugin_run_free(run);
}

/* Where in the profile the daemon notes the last event applied to it (the
 * identify merge and the plugins), per partition: a redelivered event (after
 * a crash, before its offset was committed) is decided again but not
 * applied twice (an order's spend counted once). */
#define APPLIED_TRAIT "_applied"

static int already_applied(const profile_t *p, int32_t partition, int64_t offset) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(p->traits, APPLIED_TRAIT);
    if (!cJSON_IsString(a)) return 0;
    int part;
    long long off;
    if (sscanf(a->valuestring, "%d:%lld", &part, &off) != 2) return 0;
    return part == partition && offset <= off;
}

static void decide_with_profile(daemon_state *d, event_t *ev, offset_token_t *tok, const char *topic,
                                int32_t partition, profile_t *p) {
    d->cur_tok = tok;
    d->cur_topic = topic;
    d->cur_partition = partition;
    plugin_run_t run;
    if (already_applied(p, partition, ev->offset)) {
        /* decided again (claims make that safe), against the profile as the
         * first time left it; nothing applied twice */
        ev->user = p->traits;
        engine_run(&d->engine, d->rules, ev, &d->clock, on_intent, d);
        plugin_run_init(&run, &d->en.plugins, &d->en.cache, p, ev, ev->ts_ms);
    } else {
        enrich_decide(&d->en, p, ev, &d->clock, &d->engine, d->rules, on_intent, d, &run);
        if (d->en.plugins.n) {
            char applied[40];
            snprintf(applied, sizeof applied, "%d:%lld", (int)partition, (long long)ev->offset);
            profile_set(&d->en.cache, p, APPLIED_TRAIT, cJSON_CreateString(applied));
        }
    }
    after_plugins(d, p, &run, topic, partition, tok, NULL, 0);
    d->cur_tok = NULL;
}

static void decide_revisit(daemon_state *d, pend *q) {
    d->cur_tok = NULL;
    d->cur_topic = q->topic;
    d->cur_partition = q->partition;
    plugin_run_t run;
    enrich_revisit(&d->en, q->p, q->plugin, q->due, &d->clock, &d->engine, d->rules, on_intent, d, &run);
    char member[300];
    snprintf(member, sizeof member, "%s\x1f%s", q->plugin, q->p->user);
    after_plugins(d, q->p, &run, q->topic, q->partition, NULL, member, q->due);
    d->revisits_done++;
    metrics_counter_inc(d->m_revisits, 1);
}

static void pend_free(pend *q) {
    if (!q->is_revisit) event_clear(&q->ev);
    free(q->topic);
    free(q->plugin);
    free(q);
}

/* Decides queued items from the head while their profiles are loaded. */
static void drain_queue(daemon_state *d) {
    while (d->q_head && d->q_head->p->state == PROFILE_READY && !d->stopping) {
        pend *q = d->q_head;
        d->q_head = q->next;
        if (!d->q_head) d->q_tail = NULL;
        d->q_len--;
        q->p->pins--;
        if (q->is_revisit) {
            decide_revisit(d, q);
            if (q->poller) {
                q->poller->rv_outstanding--;
                poller_reap(q->poller);
            }
        } else {
            decide_with_profile(d, &q->ev, q->tok, q->topic, q->partition, q->p);
            kafka_source_release(q->tok);
        }
        pend_free(q);
    }
    /* called from Redis replies too, outside any Kafka batch */
    wbatch_flush(d);
    update_backpressure(d);
}

static void fetch_send(daemon_state *d, fetch *f);

static void on_profile(void *ud, const redisReply *r) {
    fetch *f = ud;
    daemon_state *d = f->d;
    f->inflight = 0;
    if (!r) return; /* the connection dropped: fetched again once Redis is back (fetches_resend) */
    /* An error reply (the key holds something else) would fail again on
     * every retry: the member is decided with an empty profile, loudly,
     * rather than stalling every event behind it. */
    if (r->type != REDIS_REPLY_ARRAY)
        log_error("profile_load_failed", "user=%s reply_type=%d error=\"%s\" (decided with an empty profile)",
                  f->p->user, r->type, r->type == REDIS_REPLY_ERROR && r->str ? r->str : "");
    size_t n = r->type == REDIS_REPLY_ARRAY ? r->elements / 2 : 0;
    const char **fields = xcalloc(n + 1, sizeof *fields), **vals = xcalloc(n + 1, sizeof *vals);
    size_t *fl = xcalloc(n + 1, sizeof *fl), *vl = xcalloc(n + 1, sizeof *vl);
    for (size_t i = 0; i < n; i++) {
        fields[i] = r->element[2 * i]->str;
        fl[i] = r->element[2 * i]->len;
        vals[i] = r->element[2 * i + 1]->str;
        vl[i] = r->element[2 * i + 1]->len;
    }
    profile_load_pairs(&d->en.cache, f->p, n, fields, fl, vals, vl);
    free(fields); free(vals); free(fl); free(vl);
    d->profile_loads++;
    metrics_counter_inc(d->m_profile_loads, 1);
    for (fetch **pp = &d->fetches; *pp; pp = &(*pp)->next)
        if (*pp == f) {
            *pp = f->next;
            break;
        }
    f->p->pins--;
    free(f);
    drain_queue(d);
}

static void fetch_send(daemon_state *d, fetch *f) {
    wbatch_flush(d); /* a read must see every write before it */
    strbuf k;
    sb_init(&k);
    profile_key(d, f->p->user, &k);
    const char *argv[2] = {"HGETALL", k.s};
    size_t lens[2] = {7, k.len};
    f->inflight = 1;
    redis_sink_read(d->sink, 2, argv, lens, on_profile, f);
    sb_free(&k);
}

/* Profiles whose read was lost with the connection: again, now it is back. */
static void fetches_resend(daemon_state *d) {
    for (fetch *f = d->fetches; f; f = f->next)
        if (!f->inflight) fetch_send(d, f);
}

/* The member's profile, loading it if needed (pinned for the caller). */
static profile_t *profile_for(daemon_state *d, const char *user) {
    profile_t *p = profile_find(&d->en.cache, user);
    if (!p) {
        p = profile_add(&d->en.cache, user, PROFILE_LOADING);
        fetch *f = xcalloc(1, sizeof *f);
        f->d = d;
        f->p = p;
        p->pins++;
        f->next = d->fetches;
        d->fetches = f;
        if (redis_sink_ready(d->sink)) fetch_send(d, f);
    }
    p->pins++;
    return p;
}

static void enqueue(daemon_state *d, pend *q) {
    if (d->q_tail) d->q_tail->next = q; else d->q_head = q;
    d->q_tail = q;
    d->q_len++;
}

static void enqueue_event(daemon_state *d, event_t *ev, offset_token_t *tok, const char *topic, int32_t partition) {
    profile_t *p = profile_for(d, ev->user_id);
    if (!d->q_head && p->state == PROFILE_READY) {
        p->pins--;
        decide_with_profile(d, ev, tok, topic, partition, p);
        event_clear(ev);
        return;
    }
    pend *q = xcalloc(1, sizeof *q);
    q->ev = *ev;
    /* a numeric user id lives in the event's own buffer: follow the copy */
    if (ev->user_id == ev->user_buf) q->ev.user_id = q->ev.user_buf;
    q->tok = tok;
    kafka_source_hold(tok);
    q->topic = xstrdup(topic);
    q->partition = partition;
    q->p = p;
    enqueue(d, q);
    update_backpressure(d);
}

/* Revisits due on a partition (plugins' host->revisit_at): read when the
 * previous batch of the partition is done, decided in the member order. */
static void on_revisits(void *ud, const redisReply *r) {
    poller *pl = ud;
    daemon_state *d = pl->d;
    pl->rv_outstanding--;
    if (r && r->type == REDIS_REPLY_ARRAY && !pl->dead) {
        for (size_t i = 0; i + 1 < r->elements; i += 2) {
            const char *m = r->element[i]->str;
            const char *sep = memchr(m, '\x1f', r->element[i]->len);
            if (!sep) continue;
            pend *q = xcalloc(1, sizeof *q);
            q->is_revisit = 1;
            q->plugin = xstrndup(m, (size_t)(sep - m));
            char *user = xstrndup(sep + 1, r->element[i]->len - (size_t)(sep - m) - 1);
            q->p = profile_for(d, user);
            free(user);
            q->due = strtoll(r->element[i + 1]->str, NULL, 10);
            q->topic = xstrdup(pl->topic);
            q->partition = pl->partition;
            q->poller = pl;
            pl->rv_outstanding++;
            enqueue(d, q);
        }
        drain_queue(d);
    }
    poller_reap(pl);
}

static void revisits_poll(daemon_state *d, poller *pl, int64_t now) {
    if (pl->rv_outstanding || !d->en.plugins.n) return;
    char key[300], max[24];
    snprintf(key, sizeof key, "%srevisit:%s:%d", d->cfg.key_prefix, pl->topic, (int)pl->partition);
    snprintf(max, sizeof max, "%lld", (long long)now);
    const char *argv[8] = {"ZRANGEBYSCORE", key, "-inf", max, "WITHSCORES", "LIMIT", "0", "200"};
    size_t lens[8];
    for (int i = 0; i < 8; i++) lens[i] = strlen(argv[i]);
    pl->rv_outstanding++;
    redis_sink_read(d->sink, 8, argv, lens, on_revisits, pl);
}

static const cJSON *live_profile_of(void *ud, const char *user) {
    daemon_state *d = ud;
    profile_t *p = profile_find(&d->en.cache, user);
    return p && p->state == PROFILE_READY ? p->traits : NULL;
}

static void on_partition_eof(void *ud, const char *topic, int32_t partition) {
    poller *p = find_poller(ud, topic, partition);
    if (p) p->at_eof = 1;
}

static void on_message(void *ud, const rd_kafka_message_t *m, offset_token_t *tok) {
    daemon_state *d = ud;
    d->cur_tok = tok;
    event_t ev;
    char reason[128];
    int64_t now = now_wall_ms();
    if (decode_event(&d->cfg.decoder, m->payload ? m->payload : "", m->len, now, &ev, reason, sizeof reason) != 0) {
        metrics_counter_inc(d->m.ev_dead, 1);
        metrics_counter_inc(d->m.decode_err[decode_reason_index(reason)], 1);
        dead_letter(d, m, reason);
    } else {
        ev.partition = m->partition;
        ev.offset = m->offset;
        d->events_ok++;
        metrics_counter_inc(d->m.ev_decoded, 1);
        d->cur_topic = rd_kafka_topic_name(m->rkt);
        d->cur_partition = m->partition;
        poller *p = find_poller(d, d->cur_topic, m->partition);
        if (p) {
            p->at_eof = 0;
            if (ev.ts_ms > p->event_wm) p->event_wm = ev.ts_ms;
        }
        /* The decision time is the wall clock now (docs/time.md: live is
         * processing time); each intent becomes one Lua call on Redis, except
         * touches, which are batched per Kafka batch (order-free: ZADD GT). */
        if (!d->need_profile) {
            engine_run(&d->engine, d->rules, &ev, &d->clock, on_intent, d);
            /* no rule reads profiles now, but one may after a reload: keep
             * what identify says (a write, no read) */
            if (ev.type && !strcmp(ev.type, "identify") && cJSON_IsObject(ev.traits) && ev.traits->child)
                write_traits(d, ev.user_id, ev.traits);
            event_clear(&ev);
        } else {
            enqueue_event(d, &ev, tok, d->cur_topic, m->partition);
        }
    }
    d->cur_tok = NULL;
    update_backpressure(d);
}

/* ---- timer pollers ---------------------------------------------------------- */

static void poller_arm(poller *p, int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(p->ev, &tv);
}

static void poller_free(poller *p) {
    if (p->ev) event_free(p->ev);
    free(p->topic);
    free(p);
}

/* A released poller goes once nothing of it is in flight. */
static int poller_reap(poller *p) {
    if (!p->dead) return 0;
    if (!p->busy && !p->zpending && !p->rv_outstanding) poller_free(p);
    return 1;
}

static void poll_done(void *ud, int more, int ok) {
    poller *p = ud;
    p->busy = 0;
    if (poller_reap(p)) return;
    poller_arm(p, more && ok ? 0 : POLL_INTERVAL_MS);
}

/* ---- pending-timer counts: ZCARD of the partition's timer set and of each
 * inactivity rule's last-seen set (state_redis.c's keys), read on the
 * sink's connection like the polls, at most every PENDING_REFRESH_US. */

static void zcard_wait_cb(void *ud, const redisReply *r) {
    poller *p = ud;
    p->zpending--;
    if (r && r->type == REDIS_REPLY_INTEGER) p->wait_n = r->integer;
    poller_reap(p);
}

static void zcard_wait_old_cb(void *ud, const redisReply *r) {
    poller *p = ud;
    p->zpending--;
    if (r && r->type == REDIS_REPLY_INTEGER) p->wait_old_n = r->integer;
    poller_reap(p);
}

static void zcard_inact_cb(void *ud, const redisReply *r) {
    poller *p = ud;
    if (r && r->type == REDIS_REPLY_INTEGER) p->inact_acc += r->integer;
    if (--p->zpending == 0 && !p->dead) p->inact_n = p->inact_acc;
    poller_reap(p);
}

static void zcard_read(daemon_state *d, poller *p, const char *key, sink_reply_cb cb) {
    const char *argv[2] = {"ZCARD", key};
    size_t lens[2] = {5, strlen(key)};
    p->zpending++;
    redis_sink_read(d->sink, 2, argv, lens, cb, p);
}

static void pending_refresh(daemon_state *d, poller *p) {
    int64_t now = now_mono_us();
    if (p->zpending || (p->zcard_at_us && now - p->zcard_at_us < PENDING_REFRESH_US)) return;
    p->zcard_at_us = now;
    sb_reset(&d->key2);
    sb_printf(&d->key2, "%stimers:m:%s:%d", d->cfg.key_prefix, p->topic, (int)p->partition);
    zcard_read(d, p, d->key2.s, zcard_wait_cb);
    sb_reset(&d->key2);
    sb_printf(&d->key2, "%stimers:%s:%d", d->cfg.key_prefix, p->topic, (int)p->partition);
    zcard_read(d, p, d->key2.s, zcard_wait_old_cb);
    p->inact_acc = 0;
    int n = 0;
    for (size_t i = 0; i < ruleset_count(d->rules); i++) {
        const rule_t *r = ruleset_rule(d->rules, i);
        if (r->kind != TRIG_INACTIVITY || !r->enabled) continue;
        sb_reset(&d->key2);
        sb_printf(&d->key2, "%sseen:%s:%d:%s", d->cfg.key_prefix, p->topic, (int)p->partition, r->id);
        zcard_read(d, p, d->key2.s, zcard_inact_cb);
        n++;
    }
    if (!n) p->inact_n = 0;
}

/* Polls must not run while Redis is down: the reconnect re-activates every
 * poller, so what fell due meanwhile fires at once. */
static void poll_cb(evutil_socket_t fd, short what, void *arg) {
    poller *p = arg;
    daemon_state *d = p->d;
    if (p->busy || d->stopping) return;
    if (!redis_sink_ready(d->sink)) {
        poller_arm(p, POLL_INTERVAL_MS);
        return;
    }
    pending_refresh(d, p);
    p->busy = 1;
    int64_t now = clock_now_ms(&d->clock);
    int64_t known = p->at_eof || p->event_wm > now ? now : p->event_wm;
    redis_store_poll(d->store, p->topic, p->partition, now, known, poll_done, p);
    revisits_poll(d, p, now);
}

static void poller_mark(void *ud, const char *topic, int32_t partition) {
    daemon_state *d = ud;
    for (poller *p = d->pollers; p; p = p->next)
        if (p->partition == partition && !strcmp(p->topic, topic)) {
            p->seen = 1;
            return;
        }
    poller *p = xcalloc(1, sizeof *p);
    p->d = d;
    p->topic = xstrdup(topic);
    p->partition = partition;
    p->seen = 1;
    char part[16];
    snprintf(part, sizeof part, "%d", (int)partition);
    p->lag = metrics_labels(d->m.lag, topic, part);
    metrics_gauge_remove(p->lag); /* on the page once known (collect) */
    p->ev = evtimer_new(d->base, poll_cb, p);
    p->next = d->pollers;
    d->pollers = p;
    log_info("timers_owned", "topic=%s partition=%d", topic, (int)partition);
    d->pollers_added++;
    event_active(p->ev, EV_TIMEOUT, 0);
}

/* Brings the pollers in line with the partitions owned now. */
static void sync_pollers(daemon_state *d) {
    for (poller *p = d->pollers; p; p = p->next) p->seen = 0;
    d->pollers_added = 0;
    if (d->src) kafka_source_each_partition(d->src, poller_mark, d);
    /* the members of a partition gained or lost were another daemon's to
     * change: what the store knows of their waits may be stale */
    int changed = d->pollers_added > 0;
    for (poller **pp = &d->pollers; *pp;) {
        poller *p = *pp;
        if (p->seen) {
            pp = &p->next;
            continue;
        }
        *pp = p->next;
        if (d->last_poller == p) d->last_poller = NULL;
        log_info("timers_released", "topic=%s partition=%d", p->topic, (int)p->partition);
        changed = 1;
        event_del(p->ev);
        metrics_gauge_remove(p->lag);
        p->dead = 1;
        poller_reap(p);
    }
    if (changed) redis_store_forget(d->store);
}

static void pollers_kick(daemon_state *d) {
    for (poller *p = d->pollers; p; p = p->next)
        if (!p->busy) event_active(p->ev, EV_TIMEOUT, 0);
}

static void pollers_free(daemon_state *d) {
    d->last_poller = NULL;
    while (d->pollers) {
        poller *p = d->pollers;
        d->pollers = p->next;
        poller_free(p); /* the sink is freed after: a round's callback never runs */
    }
}

/* ---- readiness, systemd, /metrics --------------------------------------------- */

/* /readyz: Redis up, rules loaded, Kafka partitions assigned. */
static int ready_check(void *ud, char *why, size_t n) {
    daemon_state *d = ud;
    if (d->stopping) snprintf(why, n, "stopping");
    else if (!d->rules) snprintf(why, n, "rules not loaded");
    else if (!redis_sink_ready(d->sink)) snprintf(why, n, "redis down");
    else if (!d->joined) snprintf(why, n, "kafka: consumer group not joined yet");
    else if (d->assigned == 0) snprintf(why, n, "kafka: no partitions assigned");
    else return 1;
    return 0;
}

/* READY=1 once the group is joined (an assignment, even an empty one: a
 * standby member of a group with fewer partitions than daemons is up),
 * Redis is up and the rules are loaded; STATUS= on every change. */
static void notify_state(daemon_state *d) {
    if (d->stopping) return;
    int up = redis_sink_ready(d->sink);
    char st[sizeof d->status];
    if (!d->joined)
        snprintf(st, sizeof st, "joining consumer group, %zu rules, redis %s", ruleset_count(d->rules),
                 up ? "up" : "down");
    else
        snprintf(st, sizeof st, "consuming %d partitions, %zu rules, redis %s", d->assigned, ruleset_count(d->rules),
                 up ? "up" : "down");
    if (strcmp(st, d->status) != 0) {
        memcpy(d->status, st, sizeof st);
        sd_notifyf(0, "STATUS=%s", st);
    }
    if (!d->notified_ready && d->joined && up && d->rules) {
        d->notified_ready = 1;
        sd_notify(0, "READY=1");
        log_info("ready", "rules=%zu rules_version=%s partitions=%d", ruleset_count(d->rules),
                 ruleset_version(d->rules), d->assigned);
    }
}

/* Bytes allocated and not freed. glibc's figure sums every arena
 * (librdkafka's threads have their own); under AddressSanitizer glibc's
 * arenas are unused, so its allocator is asked instead. */
static size_t heap_in_use(void) {
#if defined(__SANITIZE_ADDRESS__)
    return __sanitizer_get_current_allocated_bytes();
#else
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
#endif
}

/* Refreshes, at each scrape, what is cheaper to read than to track. */
static void collect(void *ud) {
    daemon_state *d = ud;
    daemon_metrics *m = &d->m;
    if (!d->sink) return;
    metrics_gauge_set(m->inflight, (double)writes_pending(d));
    metrics_gauge_set(m->redis_up, redis_sink_ready(d->sink) ? 1 : 0);
    metrics_gauge_set(m->heap, (double)heap_in_use());
    uint64_t acked, repeats, reconnects;
    redis_sink_stats(d->sink, &acked, &repeats, &reconnects);
    metrics_counter_inc(m->reconnects, (double)(reconnects - m->reconnects_seen));
    m->reconnects_seen = reconnects;
    metrics_gauge_set(m->paused, d->paused || d->held || d->q_held || d->stopping ? 1 : 0);
    long long wait_n = 0, inact_n = 0;
    for (poller *p = d->pollers; p; p = p->next) {
        int64_t lag;
        if (d->src && kafka_source_lag(d->src, p->topic, p->partition, &lag) == 0) metrics_gauge_set(p->lag, (double)lag);
        wait_n += p->wait_n + p->wait_old_n;
        inact_n += p->inact_n;
    }
    metrics_gauge_set(m->pending_wait, (double)wait_n);
    metrics_gauge_set(m->pending_inact, (double)inact_n);
    metrics_gauge_set(d->m_profile_cached, (double)d->en.cache.count);
    metrics_gauge_set(d->m_profile_bytes, (double)d->en.cache.bytes);
    metrics_gauge_set(d->m_queue, (double)d->q_len);
}

static void on_assignment(void *ud, int n) {
    daemon_state *d = ud;
    /* profiles are only trusted while their partition is ours (profile.h) */
    profile_cache_clear(&d->en.cache);
    d->joined = 1;
    d->assigned = n;
    sync_pollers(d);
    notify_state(d);
}

static void on_sink_state(void *ud, int ready) {
    daemon_state *d = ud;
    /* a Redis that restarted may have lost the last second of writes (AOF everysec) */
    redis_store_forget(d->store);
    if (!d->src) return;
    update_backpressure(d);
    if (ready) pollers_kick(d);
    if (ready) fetches_resend(d);
    if (ready) pools_refresh(d);
    notify_state(d);
}

static void watchdog_cb(evutil_socket_t fd, short what, void *arg) { sd_notify(0, "WATCHDOG=1"); }

static void reload_rules(daemon_state *d) {
    diag_t diag;
    diag_init(&diag);
    sd_notify(0, "RELOADING=1");
    ruleset_t *rs = ruleset_load_dir_ex(d->cfg.rules_dir, d->cfg.timezone, RULES_ALLOW_TIME, &diag);
    if (!rs) {
        for (size_t i = 0; i < diag.n; i++) log_error("rule_error", "msg=\"%s\"", diag.msgs[i]);
        log_error("reload_refused", "errors=%zu kept_version=%s", diag.n, ruleset_version(d->rules));
        metrics_counter_inc(d->m.reload_err, 1);
    } else {
        /* Decisions are synchronous and writes copy their strings, so nothing
         * refers to the old set between two events: swap and free. */
        ruleset_t *old = d->rules;
        d->rules = rs;
        d->need_profile = enrich_needs_profile(&d->en, rs);
        d->reloads++;
        rule_metrics_rebuild(d);
        pools_rebuild(d);
        pools_refresh(d);
        set_rules_info(d);
        metrics_counter_inc(d->m.reload_ok, 1);
        log_info("reloaded", "rules=%zu version=%s previous=%s", ruleset_count(rs), ruleset_version(rs),
                 ruleset_version(old));
        ruleset_free(old);
    }
    diag_free(&diag);
    if (d->notified_ready) sd_notify(0, "READY=1");
    notify_state(d);
}

static void log_stats(daemon_state *d) {
    uint64_t acked, repeats, reconnects;
    redis_sink_stats(d->sink, &acked, &repeats, &reconnects);
    rs_stats_t t;
    redis_store_stats(d->store, &t);
    log_info("stats", "consumed=%llu decoded=%llu dead_letter=%llu grants=%llu pushed=%llu repeats=%llu refused=%llu "
             "suppressed=%llu "
             "inflight=%zu redis_reconnects=%llu scheduled=%llu already_pending=%llu pending_known=%llu held=%llu "
             "cancelled=%llu "
             "touches_skipped=%llu timers_fired=%llu timer_repeats=%llu waits_dropped=%llu inactivity_fired=%llu read_holds=%llu",
             (unsigned long long)kafka_source_consumed(d->src), (unsigned long long)d->events_ok,
             (unsigned long long)d->events_dead, (unsigned long long)d->grants_sent,
             (unsigned long long)d->grants_pushed, (unsigned long long)d->grants_repeat,
             (unsigned long long)d->grants_refused, (unsigned long long)d->suppressed, redis_sink_inflight(d->sink), (unsigned long long)reconnects,
             (unsigned long long)d->scheduled, (unsigned long long)d->already_pending,
             (unsigned long long)t.pending_known, (unsigned long long)t.held, (unsigned long long)d->cancelled,
             (unsigned long long)t.touches_skipped, (unsigned long long)t.fired, (unsigned long long)t.fired_repeats,
             (unsigned long long)t.dropped, (unsigned long long)t.inact_fired, (unsigned long long)d->read_holds);
}

static void stats_cb(evutil_socket_t fd, short what, void *arg) {
    daemon_state *d = arg;
    log_stats(d);
    pools_refresh(d);
}

/* Waits for in-flight writes to be acknowledged (or the deadline), then
 * closes the consumer, which commits the stored offsets. */
static void drain_cb(evutil_socket_t fd, short what, void *arg) {
    daemon_state *d = arg;
    size_t left = writes_pending(d);
    if (left > 0 && now_mono_us() < d->stop_deadline_us) return;
    if (left > 0) log_warn("shutdown_timeout", "unacknowledged=%zu note=\"left uncommitted, redelivered on restart\"", left);
    event_del(d->drain_ev);
    kafka_source_close(d->src);
    log_stats(d);
    event_base_loopbreak(d->base);
}

static void stop_cb(evutil_socket_t sig, short what, void *arg) {
    daemon_state *d = arg;
    if (d->stopping) return;
    d->stopping = 1;
    sd_notify(0, "STOPPING=1\nSTATUS=stopping: draining Redis writes");
    log_info("stopping", "signal=%d inflight=%zu", (int)sig, redis_sink_inflight(d->sink));
    kafka_source_stop_reading(d->src);
    redis_store_flush(d->store); /* nothing batched waits: the drain counts it in flight */
    wbatch_flush(d);
    d->stop_deadline_us = now_mono_us() + d->cfg.shutdown_timeout_ms * 1000;
    struct timeval tv = {0, 20000};
    event_add(d->drain_ev, &tv);
}

static void hup_cb(evutil_socket_t sig, short what, void *arg) { reload_rules(arg); }

int daemon_run(const char *config_path) {
    daemon_state *d = xcalloc(1, sizeof *d);
    int rc = 1;
    diag_t diag;
    diag_init(&diag);
    config_init_default(&d->cfg);
    if (config_path && config_load(&d->cfg, config_path, &diag) != 0) {
        diag_print(&diag, stderr);
        goto out;
    }
    if (geteuid() == 0 && !d->cfg.allow_root) {
        fprintf(stderr, "benefitd: refusing to run as root (set daemon.allow_root: true to override)\n");
        goto out;
    }
    /* plugins before rules: their functions must exist when rules compile;
     * one that fails to load or init stops the start */
    if (enrich_init(&d->en, &d->cfg, (size_t)d->cfg.profile_cache_bytes, &diag) != 0) {
        diag_print(&diag, stderr);
        fprintf(stderr, "benefitd: plugins: %zu error(s); not starting\n", diag.n);
        goto out;
    }
    d->rules = ruleset_load_dir_ex(d->cfg.rules_dir, d->cfg.timezone, RULES_ALLOW_TIME, &diag);
    if (!d->rules) {
        diag_print(&diag, stderr);
        fprintf(stderr, "benefitd: rules in %s have %zu error(s); not starting\n", d->cfg.rules_dir, diag.n);
        goto out;
    }
    d->need_profile = enrich_needs_profile(&d->en, d->rules);
    engine_init(&d->engine);
    d->engine.profile_of = live_profile_of;
    d->engine.profile_ud = d;
    engine_set_loop(&d->engine, d->cfg.loop_redeem, d->cfg.n_loop_redeem, d->cfg.loop_convert, d->cfg.n_loop_convert,
                    d->cfg.loop_window_ms);
    clock_init_wall(&d->clock);
    sb_init(&d->key);
    sb_init(&d->key2);
    signal(SIGPIPE, SIG_IGN);
    d->base = event_base_new();
    if (!d->base) { fprintf(stderr, "benefitd: event_base_new failed\n"); goto out; }
    metrics_setup(d);
    d->sink = redis_sink_new(d->base, &d->cfg, on_sink_state, d);
    if (d->sink) redis_sink_set_latency_observer(d->sink, on_latency, d);
    if (d->sink) d->store = redis_store_new(d->sink, &d->cfg, &d->rules, &d->engine);
    if (d->sink) d->write_script = redis_sink_add_script(d->sink, WRITE_LUA);
    char err[512];
    source_handlers_t h = {.on_message = on_message, .on_assignment = on_assignment, .on_batch_end = on_batch_end,
                           .on_partition_eof = on_partition_eof};
    d->src = kafka_source_new(d->base, &d->cfg, h, d, err, sizeof err);
    if (!d->sink || !d->store || !d->src) {
        fprintf(stderr, "benefitd: %s\n", d->src ? "redis sink init failed" : err);
        goto out;
    }
    d->sig_int = evsignal_new(d->base, SIGINT, stop_cb, d);
    d->sig_term = evsignal_new(d->base, SIGTERM, stop_cb, d);
    d->sig_hup = evsignal_new(d->base, SIGHUP, hup_cb, d);
    d->stats_ev = event_new(d->base, -1, EV_PERSIST, stats_cb, d);
    d->drain_ev = event_new(d->base, -1, EV_PERSIST, drain_cb, d);
    d->watchdog_ev = event_new(d->base, -1, EV_PERSIST, watchdog_cb, d);
    struct timeval ten = {10, 0};
    /* Keep-alives at a third of systemd's WatchdogSec (the loop must turn
     * for them to go out); without a watchdog, every 10 s all the same. */
    uint64_t wd_us = 0;
    if (sd_watchdog_enabled(0, &wd_us) <= 0 || wd_us == 0) wd_us = DEFAULT_WATCHDOG_US * 3;
    struct timeval wd = {(time_t)(wd_us / 3 / 1000000), (suseconds_t)(wd_us / 3 % 1000000)};
    if (!d->sig_int || !d->sig_term || !d->sig_hup || !d->stats_ev || !d->drain_ev || !d->watchdog_ev ||
        event_add(d->sig_int, NULL) || event_add(d->sig_term, NULL) || event_add(d->sig_hup, NULL) ||
        event_add(d->stats_ev, &ten) || event_add(d->watchdog_ev, &wd)) {
        fprintf(stderr, "benefitd: cannot set up signals/timers\n");
        goto out;
    }
    if (d->cfg.http_enabled) {
        d->http = http_server_new(d->base, d->cfg.http_bind, d->cfg.http_port, d->cfg.http_allow_remote, d->m.reg,
                                  NULL, ready_check, d, err, sizeof err);
        /* A daemon nobody can watch is not started: a taken port would
         * otherwise leave it running blind (set `http.enabled: false` to run
         * without the endpoint on purpose). */
        if (!d->http) {
            fprintf(stderr, "benefitd: http %s:%d: %s\n", d->cfg.http_bind, d->cfg.http_port, err);
            goto out;
        }
    }
    log_info("starting", "config=%s rules=%zu rules_version=%s brokers=%s redis=%s:%d", config_path ? config_path : "-",
             ruleset_count(d->rules), ruleset_version(d->rules), d->cfg.brokers, d->cfg.redis_host, d->cfg.redis_port);
    notify_state(d);
    /* Reading waits for Redis: the source starts paused until the sink is ready. */
    set_paused(d, 1);
    redis_sink_start(d->sink);
    if (kafka_source_start(d->src, err, sizeof err) != 0) {
        fprintf(stderr, "benefitd: kafka: %s\n", err);
        goto out;
    }
    event_base_dispatch(d->base);
    rc = 0;
    log_info("stopped", NULL);
out:
    diag_free(&diag);
    http_server_free(d->http);
    if (d->src) kafka_source_free(d->src);
    pollers_free(d);
    if (d->sink) redis_sink_free(d->sink);
    redis_store_free(d->store);
    if (d->sig_int) event_free(d->sig_int);
    if (d->sig_term) event_free(d->sig_term);
    if (d->sig_hup) event_free(d->sig_hup);
    if (d->stats_ev) event_free(d->stats_ev);
    if (d->drain_ev) event_free(d->drain_ev);
    if (d->watchdog_ev) event_free(d->watchdog_ev);
    if (d->base) event_base_free(d->base);
    /* Queued events were never decided: their tokens stay held, so their
     * offsets were not stored and the next owner reads them again. */
    while (d->q_head) {
        pend *q = d->q_head;
        d->q_head = q->next;
        pend_free(q);
    }
    while (d->fetches) {
        fetch *f = d->fetches;
        d->fetches = f->next;
        free(f);
    }
    /* writes never sent: their offsets were not stored either */
    wc_free(&d->wbatch);
    free(d->wbatch_toks);
    if (d->rules) ruleset_free(d->rules);
    enrich_free(&d->en);   /* after the rules: their expressions may call plugin functions */
    engine_free(&d->engine);
    metrics_teardown(d);
    sb_free(&d->key);
    sb_free(&d->key2);
    config_free(&d->cfg);
    free(d);
    return rc;
}
