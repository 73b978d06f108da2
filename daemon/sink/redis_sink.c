#include "redis_sink.h"
#include "../core/log.h"
#include "../core/util.h"

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Script 0. ARGV = ttl_ms, kind, maxlen, field, value, ...; KEYS[1] = claim, KEYS[2] = queue. */
/* Redis does not roll a script back on error, so the push (the only command
 * that can fail: a queue key of the wrong type) runs before the claim is
 * set; a failed push leaves nothing behind and the resend can succeed. */
static const char CLAIM_PUSH_LUA[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end\n"
    "local t = redis.call('TYPE', KEYS[2])\n"
    "t = t['ok'] or t\n"
    "if t ~= 'none' and t ~= ARGV[2] then\n"
    "  return redis.error_reply('WRONGTYPE grant queue ' .. KEYS[2] .. ' is a ' .. t .. ', not a ' .. ARGV[2])\n"
    "end\n"
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
    "redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])\n"
    "return 1\n";

#define MAX_SCRIPTS 16

typedef struct write_req {
    struct write_req *next, *prev;
    int argc;
    char **argv;
    size_t *argvlen;
    int script;            /* index into the sink's scripts; -1 = a plain read */
    int resend;            /* writes: kept and resent until acknowledged */
    sink_ack_cb ack;       /* redis_sink_push */
    sink_reply_cb rcb;     /* redis_sink_eval / redis_sink_read */
    void *ud;
    uint64_t sent_gen;     /* connection generation it was last sent on; 0 = not sent */
    int64_t sent_us;       /* monotonic time of the last send, for the latency observer */
} write_req;

struct redis_sink {
    struct event_base *base;
    const config_t *cfg;
    redisAsyncContext *ac;
    int ready;             /* connected, authenticated, every script loaded */
    uint64_t gen;          /* bumped on every new connection */
    char *lua[MAX_SCRIPTS];
    char sha[MAX_SCRIPTS][41];
    int n_scripts, n_loaded;
    write_req *head, *tail;
    size_t inflight;
    struct event *retry_ev;
    int backoff_ms;
    sink_state_cb state_cb;
    void *state_ud;
    int stopping;
    int had_error;         /* last disconnect was ours after an error reply: keep backing off */
    uint64_t acked, repeats, reconnects;
    sink_latency_cb lat_cb;
    void *lat_ud;
};

const char *const sink_op_names[SINK_N_OPS] = {"push", "script", "read"};

static void observe(redis_sink_t *s, const write_req *w) {
    if (!s->lat_cb || !w->sent_us) return;
    sink_op op = w->script < 0 ? SINK_OP_READ : w->script == 0 ? SINK_OP_PUSH : SINK_OP_SCRIPT;
    s->lat_cb(s->lat_ud, op, (double)(now_mono_us() - w->sent_us) / 1e6);
}

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
    w->next = w->prev = NULL;
    s->inflight--;
}

static void on_write_reply(redisAsyncContext *ac, void *r, void *privdata) {
    redis_sink_t *s = ac->data;
    write_req *w = privdata;
    redisReply *reply = r;
    if (!s) return; /* the sink is being freed: it frees every request itself */
    if (!reply) {
        /* The connection went away. A write stays queued and is resent on the
         * next connection (hiredis fails every pending callback before
         * reconnecting, so no reply of an older generation arrives later). A
         * read is dropped: its caller polls again when the sink is ready. */
        if (w->resend) return;
        unlink_req(s, w);
        sink_reply_cb cb = w->rcb;
        void *ud = w->ud;
        req_free(w);
        if (cb) cb(ud, NULL);
        return;
    }
    observe(s, w);
    if (reply->type == REDIS_REPLY_ERROR && w->resend) {
        /* The write did not happen; keep it. NOSCRIPT means Redis lost its
         * script cache (restart without persistence of scripts): reconnecting
         * reloads the scripts and resends everything in order. */
        log_error("redis_write_error", "error=\"%.200s\" retry_ms=%d", reply->str, s->backoff_ms);
        w->sent_gen = 0;
        s->had_error = 1;
        redisAsyncDisconnect(ac);
        return;
    }
    unlink_req(s, w);
    if (w->resend) s->had_error = 0;
    s->acked++;
    sink_ack_cb ack = w->ack;
    sink_reply_cb rcb = w->rcb;
    void *ud = w->ud;
    req_free(w);
    if (ack) {
        int status = reply->type == REDIS_REPLY_INTEGER ? (int)reply->integer : 1;
        if (status == 0) s->repeats++;
        ack(ud, status);
    } else if (rcb) {
        rcb(ud, reply);
    }
}

static void send_req(redis_sink_t *s, write_req *w) {
    if (w->script >= 0) {
        memcpy(w->argv[1], s->sha[w->script], 40);
        w->argvlen[1] = 40;
    }
    if (s->lat_cb) w->sent_us = now_mono_us();
    if (redisAsyncCommandArgv(s->ac, on_write_reply, w, w->argc, (const char **)w->argv, w->argvlen) == REDIS_OK)
        w->sent_gen = s->gen;
}

static void on_script_loaded(redisAsyncContext *ac, void *r, void *privdata) {
    redis_sink_t *s = ac->data;
    redisReply *reply = r;
    int idx = (int)(intptr_t)privdata;
    if (!s || !reply) return;
    if (reply->type != REDIS_REPLY_STRING || reply->len != 40) {
        log_error("redis_script_load_failed", "script=%d error=\"%.200s\"", idx,
                  reply->type == REDIS_REPLY_ERROR ? reply->str : "?");
        redisAsyncDisconnect(ac);
        return;
    }
    memcpy(s->sha[idx], reply->str, 40);
    s->sha[idx][40] = '\0';
    if (++s->n_loaded < s->n_scripts) return;
    if (!s->had_error) s->backoff_ms = 100;
    /* Resend, in order, everything not yet acknowledged. */
    size_t resent = 0;
    for (write_req *w = s->head; w; w = w->next) {
        send_req(s, w);
        resent++;
    }
    log_info("redis_ready", "host=%s port=%d scripts=%d resent=%zu", s->cfg->redis_host, s->cfg->redis_port,
             s->n_scripts, resent);
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
    s->n_loaded = 0;
    for (int i = 0; i < s->n_scripts; i++)
        redisAsyncCommand(ac, on_script_loaded, (void *)(intptr_t)i, "SCRIPT LOAD %s", s->lua[i]);
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
    s->lua[s->n_scripts++] = xstrdup(CLAIM_PUSH_LUA);
    return s;
}

int redis_sink_add_script(redis_sink_t *s, const char *lua) {
    if (s->n_scripts == MAX_SCRIPTS || s->ac) return -1;
    s->lua[s->n_scripts] = xstrdup(lua);
    return s->n_scripts++;
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
    for (int i = 0; i < s->n_scripts; i++) free(s->lua[i]);
    event_free(s->retry_ev);
    free(s);
}

static write_req *req_new(int argc) {
    write_req *w = xcalloc(1, sizeof *w);
    w->argv = xcalloc((size_t)argc, sizeof(char *));
    w->argvlen = xcalloc((size_t)argc, sizeof(size_t));
    return w;
}

static void req_set(write_req *w, int i, const char *p, size_t n) {
    w->argv[i] = xstrndup(p, n);
    w->argvlen[i] = n;
}

static void enqueue(redis_sink_t *s, write_req *w) {
    w->prev = s->tail;
    if (s->tail) s->tail->next = w; else s->head = w;
    s->tail = w;
    s->inflight++;
    if (s->ready && s->ac) send_req(s, w);
}

#define SHA_PLACEHOLDER "0000000000000000000000000000000000000000" /* the sha, filled at send time */

void redis_sink_push(redis_sink_t *s, const char *claim_key, const char *queue_key, output_kind kind,
                     long long maxlen, long long ttl_ms, int nfields, const char *const *fields,
                     const size_t *lens, sink_ack_cb cb, void *ud) {
    write_req *w = req_new(8 + nfields);
    char num[32];
    int i = 0;
    req_set(w, i++, "EVALSHA", 7);
    req_set(w, i++, SHA_PLACEHOLDER, 40);
    req_set(w, i++, "2", 1);
    req_set(w, i++, claim_key, strlen(claim_key));
    req_set(w, i++, queue_key, strlen(queue_key));
    int n = snprintf(num, sizeof num, "%lld", ttl_ms > 0 ? ttl_ms : 1);
    req_set(w, i++, num, (size_t)n);
    req_set(w, i++, kind == OUT_LIST ? "list" : "stream", kind == OUT_LIST ? 4 : 6);
    n = snprintf(num, sizeof num, "%lld", maxlen);
    req_set(w, i++, num, (size_t)n);
    for (int k = 0; k < nfields; k++) req_set(w, i++, fields[k], lens[k]);
    w->argc = i;
    w->script = 0;
    w->resend = 1;
    w->ack = cb;
    w->ud = ud;
    enqueue(s, w);
}

void redis_sink_eval(redis_sink_t *s, int script, int nargs, const char *const *args, const size_t *lens,
                     sink_reply_cb cb, void *ud) {
    write_req *w = req_new(3 + nargs);
    int i = 0;
    req_set(w, i++, "EVALSHA", 7);
    req_set(w, i++, SHA_PLACEHOLDER, 40);
    req_set(w, i++, "0", 1);
    for (int k = 0; k < nargs; k++) req_set(w, i++, args[k], lens[k]);
    w->argc = i;
    w->script = script;
    w->resend = 1;
    w->rcb = cb;
    w->ud = ud;
    enqueue(s, w);
}

void redis_sink_read(redis_sink_t *s, int argc, const char *const *argv, const size_t *lens, sink_reply_cb cb,
                     void *ud) {
    write_req *w = req_new(argc);
    for (int k = 0; k < argc; k++) req_set(w, k, argv[k], lens[k]);
    w->argc = argc;
    w->script = -1;
    w->resend = 0;
    w->rcb = cb;
    w->ud = ud;
    enqueue(s, w);
}

void redis_sink_set_latency_observer(redis_sink_t *s, sink_latency_cb cb, void *ud) {
    s->lat_cb = cb;
    s->lat_ud = ud;
}

size_t redis_sink_inflight(const redis_sink_t *s) { return s->inflight; }
int redis_sink_ready(const redis_sink_t *s) { return s->ready; }
void redis_sink_stats(const redis_sink_t *s, uint64_t *acked, uint64_t *repeats, uint64_t *reconnects) {
    *acked = s->acked;
    *repeats = s->repeats;
    *reconnects = s->reconnects;
}
