#include "kafka_source.h"
#include "../core/log.h"
#include "../core/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BATCH 128

typedef struct ptrack ptrack_t;

struct offset_token {
    offset_token_t *next;
    ptrack_t *pt;          /* NULL once the partition was revoked: then nothing is stored */
    int64_t offset;
    int pending;
};

struct ptrack {
    ptrack_t *next;        /* in the source's list */
    struct kafka_source *src;
    char *topic;
    int32_t partition;
    offset_token_t *head, *tail;
    int64_t store_offset;  /* next offset to store, -1 = none new */
    int dirty;
};

struct kafka_source {
    struct event_base *base;
    const config_t *cfg;
    rd_kafka_t *rk;
    rd_kafka_queue_t *q;
    int pipefd[2];
    struct event *read_ev, *more_ev, *tick_ev, *flush_ev;
    source_handlers_t h;
    void *ud;
    ptrack_t *tracks;
    ptrack_t *last;        /* lookup cache: consecutive messages share a partition */
    int paused, reading, assigned;
    int held;              /* flow control: the queue is left unread, partitions keep fetching */
    uint64_t consumed;
};

static ptrack_t *track_find(kafka_source_t *s, const char *topic, int32_t partition, int create) {
    if (s->last && s->last->partition == partition && strcmp(s->last->topic, topic) == 0) return s->last;
    for (ptrack_t *t = s->tracks; t; t = t->next)
        if (t->partition == partition && strcmp(t->topic, topic) == 0) return s->last = t;
    if (!create) return NULL;
    ptrack_t *t = xcalloc(1, sizeof *t);
    t->topic = xstrdup(topic);
    t->partition = partition;
    t->store_offset = -1;
    t->src = s;
    t->next = s->tracks;
    s->tracks = t;
    return s->last = t;
}

/* Forgets a revoked partition: tokens still held by in-flight writes are
 * detached and freed on release; their offsets are never stored, so the next
 * owner re-reads them and the grant claims make that harmless. */
static void track_drop(kafka_source_t *s, ptrack_t *t) {
    for (ptrack_t **pp = &s->tracks; *pp; pp = &(*pp)->next)
        if (*pp == t) { *pp = t->next; break; }
    if (s->last == t) s->last = NULL;
    offset_token_t *k = t->head;
    while (k) {
        offset_token_t *next = k->next;
        if (k->pending == 0) free(k);
        else { k->pt = NULL; k->next = NULL; }
        k = next;
    }
    free(t->topic);
    free(t);
}

void kafka_source_hold(offset_token_t *t) {
    if (t) t->pending++;
}

void kafka_source_release(offset_token_t *t) {
    if (!t || --t->pending > 0) return;
    ptrack_t *pt = t->pt;
    if (!pt) { free(t); return; }
    int advanced = 0;
    while (pt->head && pt->head->pending == 0) {
        offset_token_t *h = pt->head;
        pt->store_offset = h->offset + 1;
        pt->head = h->next;
        if (!pt->head) pt->tail = NULL;
        free(h);
        advanced = 1;
    }
    if (advanced && !pt->dirty) {
        pt->dirty = 1;
        event_active(pt->src->flush_ev, EV_TIMEOUT, 0);
    }
}

/* Stores the offsets of every partition that advanced, in one call. */
static void flush_stores(kafka_source_t *s) {
    int n = 0;
    for (ptrack_t *t = s->tracks; t; t = t->next) n += t->dirty;
    if (!n) return;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
    for (ptrack_t *t = s->tracks; t; t = t->next) {
        if (!t->dirty) continue;
        rd_kafka_topic_partition_list_add(l, t->topic, t->partition)->offset = t->store_offset;
        t->dirty = 0;
    }
    rd_kafka_resp_err_t err = rd_kafka_offsets_store(s->rk, l);
    if (err) log_warn("kafka_store_failed", "error=\"%s\"", rd_kafka_err2str(err));
    rd_kafka_topic_partition_list_destroy(l);
}

static void flush_cb(evutil_socket_t fd, short what, void *arg) { flush_stores(arg); }

static void pause_assignment(kafka_source_t *s, int paused) {
    rd_kafka_topic_partition_list_t *a = NULL;
    if (rd_kafka_assignment(s->rk, &a) != RD_KAFKA_RESP_ERR_NO_ERROR || !a) return;
    if (a->cnt > 0) {
        rd_kafka_resp_err_t err = paused ? rd_kafka_pause_partitions(s->rk, a) : rd_kafka_resume_partitions(s->rk, a);
        if (err) log_warn("kafka_pause_failed", "paused=%d error=\"%s\"", paused, rd_kafka_err2str(err));
    }
    rd_kafka_topic_partition_list_destroy(a);
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *parts, void *opaque) {
    kafka_source_t *s = opaque;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        for (int i = 0; i < parts->cnt; i++) track_find(s, parts->elems[i].topic, parts->elems[i].partition, 1);
        rd_kafka_error_t *e = NULL;
        rd_kafka_resp_err_t aerr = RD_KAFKA_RESP_ERR_NO_ERROR;
        if (!strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE")) e = rd_kafka_incremental_assign(rk, parts);
        else aerr = rd_kafka_assign(rk, parts);
        if (e || aerr) {
            log_error("kafka_assign_failed", "error=\"%s\"", e ? rd_kafka_error_string(e) : rd_kafka_err2str(aerr));
            if (e) rd_kafka_error_destroy(e);
        }
        s->assigned += parts->cnt;
        if (s->paused) pause_assignment(s, 1);
        log_info("kafka_assigned", "partitions=%d total=%d", parts->cnt, s->assigned);
    } else {
        /* Revoke: store what is acknowledged, commit it now (the next owner
         * starts there), and forget the rest: it will be redelivered. */
        flush_stores(s);
        rd_kafka_resp_err_t cerr = rd_kafka_commit(rk, NULL, 0);
        if (cerr && cerr != RD_KAFKA_RESP_ERR__NO_OFFSET)
            log_warn("kafka_commit_failed", "on=revoke error=\"%s\"", rd_kafka_err2str(cerr));
        for (int i = 0; i < parts->cnt; i++) {
            ptrack_t *t = track_find(s, parts->elems[i].topic, parts->elems[i].partition, 0);
            if (t) track_drop(s, t);
        }
        if (!strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE")) {
            rd_kafka_error_t *e = rd_kafka_incremental_unassign(rk, parts);
            if (e) rd_kafka_error_destroy(e);
        } else {
            rd_kafka_assign(rk, NULL);
        }
        s->assigned -= parts->cnt;
        if (s->assigned < 0) s->assigned = 0;
        log_info("kafka_revoked", "partitions=%d total=%d", parts->cnt, s->assigned);
    }
    if (s->h.on_assignment) s->h.on_assignment(s->ud, s->assigned);
}

static void commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *offsets, void *opaque) {
    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET) log_warn("kafka_commit_failed", "error=\"%s\"", rd_kafka_err2str(err));
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    log_warn("kafka_error", "code=%s reason=\"%s\"", rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    log_msg(level <= 3 ? LOG_ERROR : level <= 5 ? LOG_WARN : LOG_DEBUG, "librdkafka", "facility=%s msg=\"%s\"", fac, buf);
}

static void dispatch(kafka_source_t *s, rd_kafka_message_t *m) {
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        if (s->h.on_partition_eof) s->h.on_partition_eof(s->ud, rd_kafka_topic_name(m->rkt), m->partition);
        return;
    }
    if (m->err) {
        log_warn("kafka_consume_error", "error=\"%s\"", rd_kafka_message_errstr(m));
        return;
    }
    const char *topic = rd_kafka_topic_name(m->rkt);
    ptrack_t *pt = track_find(s, topic, m->partition, 0);
    if (!pt) return; /* a straggler from a partition just revoked: its next owner reads it */
    offset_token_t *t = xcalloc(1, sizeof *t);
    t->pt = pt;
    t->offset = m->offset;
    t->pending = 1;
    if (pt->tail) pt->tail->next = t; else pt->head = t;
    pt->tail = t;
    s->consumed++;
    s->h.on_message(s->ud, m, t);
    kafka_source_release(t);
}

/* Comes back for the next batch through a zero timer rather than
 * event_active: a timer goes through the poll, so the Redis socket is written
 * and read between two batches instead of after the whole queue. */
static void schedule_more(kafka_source_t *s) {
    static const struct timeval zero = {0, 0};
    evtimer_add(s->more_ev, &zero);
}

/* Drains up to a few batches, then yields to the loop so Redis replies and
 * writes interleave with reading; `more_ev` brings us back. The queue's fd is
 * only written on empty -> non-empty, so we must keep going until it is empty. */
static void drain(kafka_source_t *s) {
    if (!s->reading || s->held) return;
    rd_kafka_message_t *msgs[BATCH];
    ssize_t n = rd_kafka_consume_batch_queue(s->q, 0, msgs, BATCH);
    if (n < 0) {
        log_warn("kafka_consume_error", "error=\"%s\"", rd_kafka_err2str(rd_kafka_last_error()));
        return;
    }
    for (ssize_t i = 0; i < n; i++) {
        if (s->reading) dispatch(s, msgs[i]);
        rd_kafka_message_destroy(msgs[i]);
    }
    if (n > 0 && s->h.on_batch_end) s->h.on_batch_end(s->ud);
    flush_stores(s);
    if (n == BATCH) schedule_more(s);
}

static void read_cb(evutil_socket_t fd, short what, void *arg) {
    kafka_source_t *s = arg;
    char buf[64];
    while (read(fd, buf, sizeof buf) > 0) {}
    drain(s);
}

static void more_cb(evutil_socket_t fd, short what, void *arg) { drain(arg); }

/* A slow safety net: serves librdkafka callbacks even when no message wakes us. */
/* Once reading stops (shutdown) the queue is left alone: rd_kafka_poll() is
 * forbidden on a consumer queue (it asserts on a fetched message), and
 * rd_kafka_consumer_close() serves what remains. */
static void tick_cb(evutil_socket_t fd, short what, void *arg) {
    kafka_source_t *s = arg;
    if (s->reading) drain(s);
}

static int set_prop(rd_kafka_conf_t *conf, const char *k, const char *v, char *err, size_t errlen) {
    if (rd_kafka_conf_set(conf, k, v, err, errlen) != RD_KAFKA_CONF_OK) return -1;
    return 0;
}

kafka_source_t *kafka_source_new(struct event_base *base, const config_t *cfg, source_handlers_t h, void *ud,
                                 char *err, size_t errlen) {
    kafka_source_t *s = xcalloc(1, sizeof *s);
    s->base = base;
    s->cfg = cfg;
    s->h = h;
    s->ud = ud;
    s->pipefd[0] = s->pipefd[1] = -1;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (set_prop(conf, "bootstrap.servers", cfg->brokers, err, errlen) ||
        set_prop(conf, "group.id", cfg->group_id, err, errlen) ||
        set_prop(conf, "enable.auto.offset.store", "false", err, errlen) ||
        set_prop(conf, "enable.auto.commit", "true", err, errlen) ||
        set_prop(conf, "auto.commit.interval.ms", "1000", err, errlen) ||
        set_prop(conf, "enable.partition.eof", "true", err, errlen))
        goto fail_conf;
    for (size_t i = 0; i < cfg->n_kafka_props; i++) {
        char e2[256];
        if (set_prop(conf, cfg->kafka_props[i].key, cfg->kafka_props[i].value, e2, sizeof e2)) {
            snprintf(err, errlen, "kafka property '%s': %s", cfg->kafka_props[i].key, e2);
            goto fail_conf;
        }
    }
    /* An operator's properties must not switch offset storage back to
     * automatic, nor hide the end-of-partition signal inactivity relies on. */
    if (set_prop(conf, "enable.auto.offset.store", "false", err, errlen) ||
        set_prop(conf, "enable.partition.eof", "true", err, errlen))
        goto fail_conf;
    rd_kafka_conf_set_opaque(conf, s);
    rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
    rd_kafka_conf_set_offset_commit_cb(conf, commit_cb);
    rd_kafka_conf_set_error_cb(conf, error_cb);
    rd_kafka_conf_set_log_cb(conf, log_cb);
    s->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, errlen);
    if (!s->rk) goto fail_conf;
    conf = NULL;
    rd_kafka_poll_set_consumer(s->rk);
    s->q = rd_kafka_queue_get_consumer(s->rk);
    if (!s->q) { snprintf(err, errlen, "no consumer queue"); goto fail; }
    if (pipe2(s->pipefd, O_NONBLOCK | O_CLOEXEC) != 0) { snprintf(err, errlen, "pipe: %s", strerror(errno)); goto fail; }
    rd_kafka_queue_io_event_enable(s->q, s->pipefd[1], "1", 1);
    s->read_ev = event_new(base, s->pipefd[0], EV_READ | EV_PERSIST, read_cb, s);
    s->more_ev = event_new(base, -1, 0, more_cb, s);
    s->tick_ev = event_new(base, -1, EV_PERSIST, tick_cb, s);
    s->flush_ev = event_new(base, -1, 0, flush_cb, s);
    if (!s->read_ev || !s->more_ev || !s->tick_ev || !s->flush_ev) { snprintf(err, errlen, "libevent"); goto fail; }
    return s;
fail_conf:
    if (conf) rd_kafka_conf_destroy(conf);
fail:
    kafka_source_free(s);
    return NULL;
}

int kafka_source_start(kafka_source_t *s, char *err, size_t errlen) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)s->cfg->n_topics);
    for (size_t i = 0; i < s->cfg->n_topics; i++)
        rd_kafka_topic_partition_list_add(l, s->cfg->topics[i], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(s->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e) { snprintf(err, errlen, "subscribe: %s", rd_kafka_err2str(e)); return -1; }
    s->reading = 1;
    struct timeval sec = {1, 0};
    event_add(s->read_ev, NULL);
    event_add(s->tick_ev, &sec);
    schedule_more(s);
    return 0;
}

void kafka_source_set_paused(kafka_source_t *s, int paused) {
    if (s->paused == paused) return;
    s->paused = paused;
    pause_assignment(s, paused);
    log_info(paused ? "kafka_paused" : "kafka_resumed", NULL);
}

void kafka_source_hold_reading(kafka_source_t *s, int held) {
    if (s->held == held) return;
    s->held = held;
    if (!held) schedule_more(s);
}

void kafka_source_stop_reading(kafka_source_t *s) {
    s->reading = 0;
    if (!s->paused) pause_assignment(s, 1);
}

void kafka_source_close(kafka_source_t *s) {
    if (!s->rk) return;
    s->reading = 0;
    flush_stores(s);
    rd_kafka_resp_err_t e = rd_kafka_consumer_close(s->rk);
    if (e) log_warn("kafka_close_failed", "error=\"%s\"", rd_kafka_err2str(e));
}

void kafka_source_free(kafka_source_t *s) {
    if (!s) return;
    while (s->tracks) track_drop(s, s->tracks);
    if (s->read_ev) event_free(s->read_ev);
    if (s->more_ev) event_free(s->more_ev);
    if (s->tick_ev) event_free(s->tick_ev);
    if (s->flush_ev) event_free(s->flush_ev);
    if (s->q) rd_kafka_queue_destroy(s->q);
    if (s->rk) rd_kafka_destroy(s->rk);
    if (s->pipefd[0] >= 0) close(s->pipefd[0]);
    if (s->pipefd[1] >= 0) close(s->pipefd[1]);
    free(s);
}

void kafka_source_each_partition(const kafka_source_t *s, void (*fn)(void *ud, const char *topic, int32_t partition),
                                 void *ud) {
    for (const ptrack_t *t = s->tracks; t; t = t->next) fn(ud, t->topic, t->partition);
}

uint64_t kafka_source_consumed(const kafka_source_t *s) { return s->consumed; }
int kafka_source_assigned(const kafka_source_t *s) { return s->assigned; }

int kafka_source_lag(const kafka_source_t *s, const char *topic, int32_t partition, int64_t *lag) {
    if (!s || !s->rk) return -1;
    int64_t lo = -1, hi = -1;
    if (rd_kafka_get_watermark_offsets(s->rk, topic, partition, &lo, &hi) != RD_KAFKA_RESP_ERR_NO_ERROR || hi < 0)
        return -1;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, partition);
    int rc = -1;
    if (rd_kafka_position(s->rk, l) == RD_KAFKA_RESP_ERR_NO_ERROR && !l->elems[0].err) {
        int64_t pos = l->elems[0].offset;
        /* No position yet (nothing consumed since the assignment): unknown,
         * rather than a guess from the low watermark that would page someone
         * for an idle partition whose committed offset is at the end. */
        if (pos >= 0) {
            *lag = hi > pos ? hi - pos : 0;
            rc = 0;
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
    return rc;
}
