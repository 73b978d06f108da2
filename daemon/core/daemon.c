#include "daemon.h"
#include "config.h"
#include "log.h"
#include "util.h"
#include "../decode/event.h"
#include "../policy/engine.h"
#include "../policy/state_redis.h"
#include "clock.h"
#include "../rules/rules.h"
#include "../sink/redis_sink.h"
#include "../source/kafka_source.h"

#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

/* Timers of each owned partition are polled this often (and at once after an
 * assignment or a reconnect); a poll that hit its read limit goes again at once. */
#define POLL_INTERVAL_MS 250

/* Dead-lettered payloads are kept whole up to this size: enough to replay any
 * event under the decode limit, bounded for hostile ones. */
#define DLQ_PAYLOAD_MAX (1024 * 1024)

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
} poller;

struct daemon_state {
    config_t cfg;
    struct event_base *base;
    ruleset_t *rules;
    engine_t engine;
    redis_sink_t *sink;
    redis_store_t *store;
    bd_clock_t clock;
    poller *pollers;
    kafka_source_t *src;
    struct event *sig_int, *sig_term, *sig_hup, *stats_ev, *drain_ev;
    int stopping;
    int64_t stop_deadline_us;
    int notified_ready;
    strbuf key, key2;
    /* the message being processed, for the decision callback */
    offset_token_t *cur_tok;
    const char *cur_topic;
    int32_t cur_partition;
    uint64_t events_ok, events_dead, grants_sent, grants_pushed, grants_repeat, suppressed, reloads;
    uint64_t state_writes, scheduled, already_pending, cancelled, count_progress;
};

static void update_backpressure(daemon_state *d) {
    if (d->stopping) return;
    size_t inflight = redis_sink_inflight(d->sink);
    int ready = redis_sink_ready(d->sink);
    /* Hysteresis: pause above the bound, resume at half of it, so a busy
     * pipeline does not flap between the two. */
    if (!ready || inflight >= (size_t)d->cfg.max_inflight) kafka_source_set_paused(d->src, 1);
    else if (inflight <= (size_t)d->cfg.max_inflight / 2) kafka_source_set_paused(d->src, 0);
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
} intent_ack;

static void on_intent_ack(void *ud, rs_outcome k, long long n) {
    intent_ack *a = ud;
    daemon_state *d = a->d;
    switch (k) {
    case RS_GRANTED: d->grants_pushed++; break;
    case RS_REPEAT: d->grants_repeat++; break;
    case RS_SCHEDULED: d->scheduled++; break;
    case RS_PENDING:
        d->already_pending++;
        log_debug("suppressed", "rule=%s reason=\"already pending\"", a->rule);
        break;
    case RS_CANCELLED: d->cancelled += (uint64_t)n; break;
    case RS_PROGRESS:
        d->count_progress++;
        log_debug("count_progress", "rule=%s count=%lld", a->rule, n);
        break;
    case RS_EXPLAINED: d->suppressed++; break;
    default: break;
    }
    kafka_source_release(a->tok);
    free(a);
    update_backpressure(d);
}

static void on_intent(void *ud, const event_t *ev, const intent_t *in) {
    daemon_state *d = ud;
    if (in->kind == INTENT_EXPLAIN) {
        d->suppressed++;
        log_debug("suppressed", "rule=%s user=%s reason=\"%s\"", in->rule->id, ev->user_id, in->reason);
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
    kafka_source_hold(d->cur_tok);
    if (!redis_store_apply(d->store, in, d->cur_topic, d->cur_partition, on_intent_ack, a)) {
        /* nothing to write (a reason that needs no state) */
        kafka_source_release(a->tok);
        if (in->kind == INTENT_GRANT || in->kind == INTENT_SCHEDULE) d->suppressed++;
        free(a);
        return;
    }
    d->state_writes++;
    if (in->kind == INTENT_GRANT) d->grants_sent++;
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

static void on_message(void *ud, const rd_kafka_message_t *m, offset_token_t *tok) {
    daemon_state *d = ud;
    d->cur_tok = tok;
    event_t ev;
    char reason[128];
    int64_t now = now_wall_ms();
    if (decode_event(&d->cfg.decoder, m->payload ? m->payload : "", m->len, now, &ev, reason, sizeof reason) != 0) {
        dead_letter(d, m, reason);
    } else {
        ev.partition = m->partition;
        ev.offset = m->offset;
        d->events_ok++;
        d->cur_topic = rd_kafka_topic_name(m->rkt);
        d->cur_partition = m->partition;
        /* The decision time is the wall clock now (docs/time.md: live is
         * processing time); every intent becomes one Lua call on Redis. */
        engine_run(&d->engine, d->rules, &ev, &d->clock, on_intent, d);
        event_clear(&ev);
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

static void poll_done(void *ud, int more, int ok) {
    poller *p = ud;
    p->busy = 0;
    if (p->dead) {
        poller_free(p);
        return;
    }
    poller_arm(p, more && ok ? 0 : POLL_INTERVAL_MS);
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
    p->busy = 1;
    redis_store_poll(d->store, p->topic, p->partition, clock_now_ms(&d->clock), poll_done, p);
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
    p->ev = evtimer_new(d->base, poll_cb, p);
    p->next = d->pollers;
    d->pollers = p;
    log_info("timers_owned", "topic=%s partition=%d", topic, (int)partition);
    event_active(p->ev, EV_TIMEOUT, 0);
}

/* Brings the pollers in line with the partitions owned now. */
static void sync_pollers(daemon_state *d) {
    for (poller *p = d->pollers; p; p = p->next) p->seen = 0;
    if (d->src) kafka_source_each_partition(d->src, poller_mark, d);
    for (poller **pp = &d->pollers; *pp;) {
        poller *p = *pp;
        if (p->seen) {
            pp = &p->next;
            continue;
        }
        *pp = p->next;
        log_info("timers_released", "topic=%s partition=%d", p->topic, (int)p->partition);
        event_del(p->ev);
        if (p->busy) p->dead = 1;
        else poller_free(p);
    }
}

static void pollers_kick(daemon_state *d) {
    for (poller *p = d->pollers; p; p = p->next)
        if (!p->busy) event_active(p->ev, EV_TIMEOUT, 0);
}

static void pollers_free(daemon_state *d) {
    while (d->pollers) {
        poller *p = d->pollers;
        d->pollers = p->next;
        poller_free(p); /* the sink is freed after: a round's callback never runs */
    }
}

static void on_assignment(void *ud, int n) {
    daemon_state *d = ud;
    sync_pollers(d);
    sd_notifyf(0, "STATUS=consuming %d partitions, %zu rules", n, ruleset_count(d->rules));
}

static void on_sink_state(void *ud, int ready) {
    daemon_state *d = ud;
    if (!d->src) return;
    update_backpressure(d);
    if (ready) pollers_kick(d);
    if (ready && !d->notified_ready) {
        d->notified_ready = 1;
        sd_notify(0, "READY=1");
        log_info("ready", "rules=%zu rules_version=%s", ruleset_count(d->rules), ruleset_version(d->rules));
    }
}

static void reload_rules(daemon_state *d) {
    diag_t diag;
    diag_init(&diag);
    sd_notify(0, "RELOADING=1");
    ruleset_t *rs = ruleset_load_dir_ex(d->cfg.rules_dir, d->cfg.timezone, RULES_ALLOW_TIME, &diag);
    if (!rs) {
        for (size_t i = 0; i < diag.n; i++) log_error("rule_error", "msg=\"%s\"", diag.msgs[i]);
        log_error("reload_refused", "errors=%zu kept_version=%s", diag.n, ruleset_version(d->rules));
    } else {
        /* Decisions are synchronous and writes copy their strings, so nothing
         * refers to the old set between two events: swap and free. */
        ruleset_t *old = d->rules;
        d->rules = rs;
        d->reloads++;
        log_info("reloaded", "rules=%zu version=%s previous=%s", ruleset_count(rs), ruleset_version(rs),
                 ruleset_version(old));
        ruleset_free(old);
    }
    diag_free(&diag);
    sd_notify(0, "READY=1");
}

static void log_stats(daemon_state *d) {
    uint64_t acked, repeats, reconnects;
    redis_sink_stats(d->sink, &acked, &repeats, &reconnects);
    rs_stats_t t;
    redis_store_stats(d->store, &t);
    log_info("stats", "consumed=%llu decoded=%llu dead_letter=%llu grants=%llu pushed=%llu repeats=%llu suppressed=%llu "
             "inflight=%zu redis_reconnects=%llu scheduled=%llu already_pending=%llu cancelled=%llu "
             "timers_fired=%llu timer_repeats=%llu waits_dropped=%llu inactivity_fired=%llu",
             (unsigned long long)kafka_source_consumed(d->src), (unsigned long long)d->events_ok,
             (unsigned long long)d->events_dead, (unsigned long long)d->grants_sent,
             (unsigned long long)d->grants_pushed, (unsigned long long)d->grants_repeat,
             (unsigned long long)d->suppressed, redis_sink_inflight(d->sink), (unsigned long long)reconnects,
             (unsigned long long)d->scheduled, (unsigned long long)d->already_pending,
             (unsigned long long)d->cancelled, (unsigned long long)t.fired, (unsigned long long)t.fired_repeats,
             (unsigned long long)t.dropped, (unsigned long long)t.inact_fired);
}

static void stats_cb(evutil_socket_t fd, short what, void *arg) {
    daemon_state *d = arg;
    log_stats(d);
    sd_notify(0, "WATCHDOG=1");
}

/* Waits for in-flight writes to be acknowledged (or the deadline), then
 * closes the consumer, which commits the stored offsets. */
static void drain_cb(evutil_socket_t fd, short what, void *arg) {
    daemon_state *d = arg;
    size_t left = redis_sink_inflight(d->sink);
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
    sd_notify(0, "STOPPING=1");
    log_info("stopping", "signal=%d inflight=%zu", (int)sig, redis_sink_inflight(d->sink));
    kafka_source_stop_reading(d->src);
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
    d->rules = ruleset_load_dir_ex(d->cfg.rules_dir, d->cfg.timezone, RULES_ALLOW_TIME, &diag);
    if (!d->rules) {
        diag_print(&diag, stderr);
        fprintf(stderr, "benefitd: rules in %s have %zu error(s); not starting\n", d->cfg.rules_dir, diag.n);
        goto out;
    }
    engine_init(&d->engine);
    clock_init_wall(&d->clock);
    sb_init(&d->key);
    sb_init(&d->key2);
    signal(SIGPIPE, SIG_IGN);
    d->base = event_base_new();
    if (!d->base) { fprintf(stderr, "benefitd: event_base_new failed\n"); goto out; }
    d->sink = redis_sink_new(d->base, &d->cfg, on_sink_state, d);
    if (d->sink) d->store = redis_store_new(d->sink, &d->cfg, &d->rules, &d->engine);
    char err[512];
    source_handlers_t h = {.on_message = on_message, .on_assignment = on_assignment};
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
    struct timeval ten = {10, 0};
    if (!d->sig_int || !d->sig_term || !d->sig_hup || !d->stats_ev || !d->drain_ev ||
        event_add(d->sig_int, NULL) || event_add(d->sig_term, NULL) || event_add(d->sig_hup, NULL) ||
        event_add(d->stats_ev, &ten)) {
        fprintf(stderr, "benefitd: cannot set up signals/timers\n");
        goto out;
    }
    log_info("starting", "config=%s rules=%zu rules_version=%s brokers=%s redis=%s:%d", config_path ? config_path : "-",
             ruleset_count(d->rules), ruleset_version(d->rules), d->cfg.brokers, d->cfg.redis_host, d->cfg.redis_port);
    /* Reading waits for Redis: the source starts paused until the sink is ready. */
    kafka_source_set_paused(d->src, 1);
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
    if (d->src) kafka_source_free(d->src);
    pollers_free(d);
    if (d->sink) redis_sink_free(d->sink);
    redis_store_free(d->store);
    if (d->sig_int) event_free(d->sig_int);
    if (d->sig_term) event_free(d->sig_term);
    if (d->sig_hup) event_free(d->sig_hup);
    if (d->stats_ev) event_free(d->stats_ev);
    if (d->drain_ev) event_free(d->drain_ev);
    if (d->base) event_base_free(d->base);
    if (d->rules) ruleset_free(d->rules);
    engine_free(&d->engine);
    sb_free(&d->key);
    sb_free(&d->key2);
    config_free(&d->cfg);
    free(d);
    return rc;
}
