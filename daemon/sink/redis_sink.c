#include "redis_sink.h"
#include "../core/log.h"
#include "../core/util.h"

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <string.h>

/* KEYS[1] = claim key, KEYS[2] = queue; ARGV = ttl_ms, kind, maxlen, field, value, ... */
static const char CLAIM_PUSH_LUA[] =
    "if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 0 end\n"
    "if ARGV[2] == 'list' then\n"
    "  redis.call('LPUSH', KEYS[2], ARGV[5])\n"
    "else\n"
    "  local args = {KEYS[2]}\n"
    "  if tonumber(ARGV[3]) > 0 then\n"
    "    args[#args+1] = 'MAXLEN'; args[#args+1] = '~'; args[#args+1] = ARGV[3]\n"
    "  end\n"
    "  args[#args+1] = '*'\n"
    "  for i = 4, #ARGV do args[#args+1] = ARGV[i] end\n"
    "  redis.call('XADD', unpack(args))\n"
    "end\n"
    "return 1\n";

typedef struct write_req {
    struct write_req *next, *prev;
    int argc;
    char **argv;
    size_t *argvlen;
    sink_ack_cb cb;
    void *ud;
    uint64_t sent_gen;     /* connection generation it was last sent on; 0 = not sent */
} write_req;

struct redis_sink {
    struct event_base *base;
    const config_t *cfg;
    redisAsyncContext *ac;
    int ready;             /* connected, authenticated, script loaded */
    uint64_t gen;          /* bumped on every new connection */
    char sha[41];
    write_req *head, *tail;
    size_t inflight;
    struct event *retry_ev;
    int backoff_ms;
    sink_state_cb state_cb;
    void *state_ud;
    int stopping;
    int had_error;         /* last disconnect was ours after an error reply: keep backing off */
    uint64_t acked, repeats, reconnects;
};

static void connect_now(redis_sink_t *s);
static void send_req(redis_sink_t *s, write_req *w);

static void set_ready(redis_sink_t *s, int ready) {
    if (s->ready == ready) return;
    s->ready = ready;
    if (s->state_cb) s->state_cb(s->state_ud, ready);
}

static void schedule_reconnect(redis_sink_t *s) {
    if (s->stopping) return;
    struct timeval tv = {s->backoff_ms / 1000, (s->backoff_ms % 1000) * 1000};
    evtimer_add(s->retry_ev, &tv);
    s->backoff_ms = s->backoff_ms * 2 > 5000 ? 5000 : s->backoff_ms * 2;
}

static void retry_cb(evutil_socket_t fd, short what, void *arg) {
    redis_sink_t *s = arg;
    if (!s->ac) connect_now(s);
}

static void req_free(write_req *w) {
    for (int i = 0; i < w->argc; i++) free(w->argv[i]);
    free(w->argv);
    free(w->argvlen);
    free(w);
}

static void unlink_req(redis_sink_t *s, write_req *w) {
    if (w->prev) w->prev->next = w->next; else s->head = w->next;
    if (w->next) w->next->prev = w->prev; else s->tail = w->prev;
    s->inflight--;
}

static void on_write_reply(redisAsyncContext *ac, void *r, void *privdata) {
    redis_sink_t *s = ac->data;
    write_req *w = privdata;
    redisReply *reply = r;
    /* NULL reply: the connection went away; the request stays queued and is
     * resent on the next connection. A reply for an older generation cannot
     * arrive: hiredis fails every pending callback before reconnecting. */
    if (!reply || !s) return;
    if (reply->type == REDIS_REPLY_ERROR) {
        /* The write did not happen; keep it. NOSCRIPT means Redis lost its
         * script cache (restart without persistence of scripts): reconnecting
         * reloads it and resends everything in order. */
        log_error("redis_write_error", "error=\"%.200s\" retry_ms=%d", reply->str, s->backoff_ms);
        w->sent_gen = 0;
        s->had_error = 1;
        redisAsyncDisconnect(ac);
        return;
    }
    int status = reply->type == REDIS_REPLY_INTEGER ? (int)reply->integer : 1;
    unlink_req(s, w);
    s->had_error = 0;
    s->acked++;
    if (status == 0) s->repeats++;
    sink_ack_cb cb = w->cb;
    void *ud = w->ud;
    req_free(w);
    if (cb) cb(ud, status);
}

static void send_req(redis_sink_t *s, write_req *w) {
    memcpy(w->argv[1], s->sha, 40);
    w->argvlen[1] = 40;
    if (redisAsyncCommandArgv(s->ac, on_write_reply, w, w->argc, (const char **)w->argv, w->argvlen) == REDIS_OK)
        w->sent_gen = s->gen;
}

static void on_script_loaded(redisAsyncContext *ac, void *r, void *privdata) {
    redis_sink_t *s = ac->data;
    redisReply *reply = r;
    if (!s || !reply) return;
    if (reply->type != REDIS_REPLY_STRING || reply->len != 40) {
        log_error("redis_script_load_failed", "error=\"%.200s\"", reply->type == REDIS_REPLY_ERROR ? reply->str : "?");
        redisAsyncDisconnect(ac);
        return;
    }
    memcpy(s->sha, reply->str, 40);
    s->sha[40] = '\0';
    if (!s->had_error) s->backoff_ms = 100;
    /* Resend, in order, everything not yet acknowledged. */
    size_t resent = 0;
    for (write_req *w = s->head; w; w = w->next) {
        send_req(s, w);
        resent++;
    }
    log_info("redis_ready", "host=%s port=%d resent=%zu", s->cfg->redis_host, s->cfg->redis_port, resent);
    set_ready(s, 1);
}

static void on_setup_reply(redisAsyncContext *ac, void *r, void *privdata) {
    redisReply *reply = r;
    if (reply && reply->type == REDIS_REPLY_ERROR) {
        log_error("redis_setup_failed", "step=%s error=\"%.200s\"", (const char *)privdata, reply->str);
        redisAsyncDisconnect(ac);
    }
}

static void on_connect(const redisAsyncContext *cac, int status) {
    redis_sink_t *s = cac->data;
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    if (!s) return;
    if (status != REDIS_OK) {
        log_warn("redis_connect_failed", "host=%s port=%d error=\"%s\" retry_ms=%d", s->cfg->redis_host,
                 s->cfg->redis_port, cac->errstr, s->backoff_ms);
        s->ac = NULL; /* hiredis frees the context after this callback */
        schedule_reconnect(s);
        return;
    }
    s->gen++;
    if (s->cfg->redis_password && *s->cfg->redis_password)
        redisAsyncCommand(ac, on_setup_reply, "auth", "AUTH %s", s->cfg->redis_password);
    if (s->cfg->redis_db)
        redisAsyncCommand(ac, on_setup_reply, "select", "SELECT %d", s->cfg->redis_db);
    redisAsyncCommand(ac, on_script_loaded, NULL, "SCRIPT LOAD %s", CLAIM_PUSH_LUA);
}

static void on_disconnect(const redisAsyncContext *cac, int status) {
    redis_sink_t *s = cac->data;
    if (!s) return;
    s->ac = NULL;
    for (write_req *w = s->head; w; w = w->next) w->sent_gen = 0;
    set_ready(s, 0);
    if (s->stopping) return;
    log_warn("redis_disconnected", "error=\"%s\" pending=%zu retry_ms=%d", status == REDIS_OK ? "closed" : cac->errstr,
             s->inflight, s->backoff_ms);
    s->reconnects++;
    schedule_reconnect(s);
}

static void connect_now(redis_sink_t *s) {
    redisAsyncContext *ac = redisAsyncConnect(s->cfg->redis_host, s->cfg->redis_port);
    if (!ac || ac->err) {
        log_warn("redis_connect_failed", "host=%s port=%d error=\"%s\"", s->cfg->redis_host, s->cfg->redis_port,
                 ac ? ac->errstr : "out of memory");
        if (ac) redisAsyncFree(ac);
        schedule_reconnect(s);
        return;
    }
    ac->data = s;
    if (redisLibeventAttach(ac, s->base) != REDIS_OK) {
        log_error("redis_attach_failed", NULL);
        redisAsyncFree(ac);
        schedule_reconnect(s);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    s->ac = ac;
}

redis_sink_t *redis_sink_new(struct event_base *base, const config_t *cfg, sink_state_cb state_cb, void *state_ud) {
    redis_sink_t *s = xcalloc(1, sizeof *s);
    s->base = base;
    s->cfg = cfg;
    s->state_cb = state_cb;
    s->state_ud = state_ud;
    s->backoff_ms = 100;
    s->retry_ev = evtimer_new(base, retry_cb, s);
    if (!s->retry_ev) { free(s); return NULL; }
    return s;
}

void redis_sink_start(redis_sink_t *s) { connect_now(s); }

void redis_sink_free(redis_sink_t *s) {
    if (!s) return;
    s->stopping = 1;
    if (s->ac) {
        s->ac->data = NULL; /* callbacks fired during free must not touch s */
        redisAsyncFree(s->ac);
        s->ac = NULL;
    }
    while (s->head) {
        write_req *w = s->head;
        unlink_req(s, w);
        req_free(w);
    }
    event_free(s->retry_ev);
    free(s);
}

void redis_sink_push(redis_sink_t *s, const char *claim_key, const char *queue_key, output_kind kind,
                     long long maxlen, long long ttl_ms, int nfields, const char *const *fields,
                     const size_t *lens, sink_ack_cb cb, void *ud) {
    write_req *w = xcalloc(1, sizeof *w);
    w->argc = 8 + nfields;
    w->argv = xcalloc((size_t)w->argc, sizeof(char *));
    w->argvlen = xcalloc((size_t)w->argc, sizeof(size_t));
    char num[32];
    int i = 0;
#define ARG(p, n) do { w->argv[i] = xstrndup((p), (n)); w->argvlen[i] = (n); i++; } while (0)
    ARG("EVALSHA", 7);
    ARG("0000000000000000000000000000000000000000", 40); /* filled with the sha at send time */
    ARG("2", 1);
    ARG(claim_key, strlen(claim_key));
    ARG(queue_key, strlen(queue_key));
    int n = snprintf(num, sizeof num, "%lld", ttl_ms > 0 ? ttl_ms : 1);
    ARG(num, (size_t)n);
    ARG(kind == OUT_LIST ? "list" : "stream", kind == OUT_LIST ? 4 : 6);
    n = snprintf(num, sizeof num, "%lld", maxlen);
    ARG(num, (size_t)n);
    w->argc = i + nfields;
    for (int k = 0; k < nfields; k++) ARG(fields[k], lens[k]);
#undef ARG
    w->cb = cb;
    w->ud = ud;
    w->prev = s->tail;
    if (s->tail) s->tail->next = w; else s->head = w;
    s->tail = w;
    s->inflight++;
    if (s->ready && s->ac) send_req(s, w);
}

size_t redis_sink_inflight(const redis_sink_t *s) { return s->inflight; }
int redis_sink_ready(const redis_sink_t *s) { return s->ready; }
void redis_sink_stats(const redis_sink_t *s, uint64_t *acked, uint64_t *repeats, uint64_t *reconnects) {
    *acked = s->acked;
    *repeats = s->repeats;
    *reconnects = s->reconnects;
}
