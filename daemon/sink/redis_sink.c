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

/* Consecutive script calls leave as one EVALSHA of the batch script (the
 * scripts' bodies as functions, run in order): an EVALSHA costs Redis a few
 * microseconds of its own and the daemon a command to format and a reply to
 * parse, and most scripts do less than that. At most this many calls or
 * BATCH_MAX_BYTES of arguments per batch, so one batch keeps Redis busy for
 * a few milliseconds at most. */
#define BATCH_MAX_CALLS 128
#define BATCH_MAX_BYTES (1 << 20)

typedef struct write_req {
    struct write_req *next, *prev;
    int argc;              /* reads: the command */
    char **argv;
    size_t *argvlen;
    char *frag;            /* script calls: their part of the batch's arguments, */
    size_t frag_len;       /* as RESP bulk strings (script index, number of keys, */
    int frag_n;            /* number of arguments, keys, arguments): frag_n of them */
    int script;            /* index into the sink's scripts (a write, kept and resent until acknowledged); -1 = a read */
    sink_ack_cb ack;       /* redis_sink_push */
    sink_reply_cb rcb;     /* redis_sink_eval / redis_sink_read */
    void *ud;
    uint64_t sent_gen;     /* connection generation it was last sent on; 0 = not sent */
    int64_t sent_us;       /* monotonic time of the last send, for the latency observer */
} write_req;

/* One EVALSHA of the batch script: its calls are n consecutive requests of
 * the queue from first (replies come in order, and a request leaves the queue
 * only by its reply, so the run stays whole until this reply). */
typedef struct batch_req {
    write_req *first;
    int n;
} batch_req;

struct redis_sink {
    struct event_base *base;
    const config_t *cfg;
    redisAsyncContext *ac;
    int ready;             /* connected, authenticated, every script loaded */
    uint64_t gen;          /* bumped on every new connection */
    char *prelude;                 /* shared by the scripts (redis_sink_set_prelude) */
    char *lua[MAX_SCRIPTS];
    int cursor[MAX_SCRIPTS];       /* reads its arguments in place (redis_sink_add_cursor_script) */
    int n_scripts;
    char *batch_lua;               /* built at start from the prelude and the scripts */
    char batch_sha[41];
    /* send_batch's command, kept from batch to batch: a fresh 100+ KB
     * buffer per batch made malloc consolidate its free lists each time
     * (2.5% of the daemon's time in the bench) */
    char *cmd;
    size_t cmd_cap;
    int loaded;                    /* the batch script is loaded on this connection */
    write_req *head, *tail;
    write_req *unsent;             /* the first request not yet sent on this connection; all after it too */
    struct event *flush_ev;        /* sends what the current callbacks queued, as batches */
    int flush_armed;
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
    free(w->frag);
    free(w);
}

static void unlink_req(redis_sink_t *s, write_req *w) {
    if (w->prev) w->prev->next = w->next; else s->head = w->next;
    if (w->next) w->next->prev = w->prev; else s->tail = w->prev;
    w->next = w->prev = NULL;
    s->inflight--;
}

/* The reply of a read (script calls come back through on_batch_reply). */
static void on_read_reply(redisAsyncContext *ac, void *r, void *privdata) {
    redis_sink_t *s = ac->data;
    write_req *w = privdata;
    redisReply *reply = r;
    if (!s) return; /* the sink is being freed: it frees every request itself */
    /* NULL: the connection went away. A read is dropped (its caller polls
     * again when the sink is ready); writes stay queued for the resend. */
    if (reply) observe(s, w);
    unlink_req(s, w);
    if (reply) s->acked++;
    sink_reply_cb cb = w->rcb;
    void *ud = w->ud;
    req_free(w);
    if (cb) cb(ud, reply);
}

/* The reply of a batch: an array with one element per call that ran, in
 * order. The batch script stops at the first call that fails (its element is
 * that error), so what follows it has not run: that call and everything
 * after it stay queued and are resent after reconnecting; the calls before
 * it are acknowledged. An error for the whole batch (NOSCRIPT: Redis lost
 * its script cache in a restart) keeps every call: reconnecting reloads the
 * script and resends everything in order. */
static void on_batch_reply(redisAsyncContext *ac, void *r, void *privdata) {
    redis_sink_t *s = ac->data;
    batch_req *b = privdata;
    redisReply *reply = r;
    write_req *w = b->first;
    int n = b->n;
    free(b);
    if (!s) return;
    if (!reply) return; /* every call of a batch is a write: kept for the resend */
    size_t ok = 0;
    const char *err = NULL;
    if (reply->type == REDIS_REPLY_ERROR) err = reply->str;
    else if (reply->type != REDIS_REPLY_ARRAY) err = "batch: not an array";
    else {
        for (ok = 0; ok < reply->elements && ok < (size_t)n; ok++)
            if (reply->element[ok]->type == REDIS_REPLY_ERROR) {
                err = reply->element[ok]->str;
                break;
            }
        if (!err && ok < (size_t)n) err = "batch: fewer replies than calls";
    }
    for (size_t i = 0; i < ok; i++) {
        write_req *next = w->next;
        observe(s, w);
        unlink_req(s, w);
        s->had_error = 0;
        s->acked++;
        sink_ack_cb ack = w->ack;
        sink_reply_cb rcb = w->rcb;
        void *ud = w->ud;
        req_free(w);
        const redisReply *e = reply->element[i];
        if (ack) {
            int status = e->type == REDIS_REPLY_INTEGER ? (int)e->integer : 1;
            if (status == 0) s->repeats++;
            ack(ud, status);
        } else if (rcb) {
            rcb(ud, e);
        }
        w = next;
    }
    if (err) {
        log_error("redis_write_error", "error=\"%.200s\" retry_ms=%d", err, s->backoff_ms);
        s->had_error = 1;
        if (s->ac) redisAsyncDisconnect(s->ac);
    }
}

static void send_req(redis_sink_t *s, write_req *w) {
    if (s->lat_cb) w->sent_us = now_mono_us();
    if (redisAsyncCommandArgv(s->ac, on_read_reply, w, w->argc, (const char **)w->argv, w->argvlen) == REDIS_OK)
        w->sent_gen = s->gen;
}

/* Whether w rides in a batch: every script call does (a read never). */
static int batchable(const redis_sink_t *s, const write_req *w) { return w->script >= 0; }

static void on_batch_reply(redisAsyncContext *ac, void *r, void *privdata);

/* Appends the RESP bulk string of n bytes at p ("$n\r\n...\r\n"). */
static char *resp_bulk(char *o, const char *p, size_t n) {
    char num[24];
    int k = 0;
    size_t v = n;
    do { num[k++] = (char)('0' + v % 10); v /= 10; } while (v);
    *o++ = '$';
    while (k) *o++ = num[--k];
    *o++ = '\r';
    *o++ = '\n';
    memcpy(o, p, n);
    o += n;
    *o++ = '\r';
    *o++ = '\n';
    return o;
}

/* Sends the n script calls from first as one EVALSHA of the batch script:
 * ARGV = n, then per call: script index, number of keys, number of
 * arguments, the keys, the arguments. The command is written in RESP here,
 * from each call's preformatted part (hiredis would format every argument
 * with a printf of its own). */
static void send_batch(redis_sink_t *s, write_req *first, int n) {
    size_t nargs = 4, bytes = 256; /* the header: the count, EVALSHA, the sha, numkeys, n */
    write_req *w = first;
    for (int i = 0; i < n; i++, w = w->next) {
        nargs += (size_t)w->frag_n;
        bytes += w->frag_len;
    }
    if (bytes > s->cmd_cap) {
        free(s->cmd);
        s->cmd_cap = bytes * 2;
        s->cmd = xmalloc(s->cmd_cap);
    }
    char *cmd = s->cmd, *o = cmd;
    o += snprintf(o, 24, "*%zu\r\n", nargs);
    o = resp_bulk(o, "EVALSHA", 7);
    o = resp_bulk(o, s->batch_sha, 40);
    o = resp_bulk(o, "0", 1);
    char num[16];
    o = resp_bulk(o, num, (size_t)snprintf(num, sizeof num, "%d", n));
    int64_t now = s->lat_cb ? now_mono_us() : 0;
    w = first;
    for (int i = 0; i < n; i++, w = w->next) {
        memcpy(o, w->frag, w->frag_len);
        o += w->frag_len;
        w->sent_us = now;
    }
    batch_req *b = xmalloc(sizeof *b);
    b->first = first;
    b->n = n;
    if (redisAsyncFormattedCommand(s->ac, on_batch_reply, b, cmd, (size_t)(o - cmd)) == REDIS_OK) {
        w = first;
        for (int i = 0; i < n; i++, w = w->next) w->sent_gen = s->gen;
    } else {
        free(b);
    }
}

/* Sends every request not yet sent, in order, consecutive script calls
 * together. */
static void flush_unsent(redis_sink_t *s) {
    s->flush_armed = 0;
    if (!s->ac || !s->loaded) return; /* sent once the connection is ready */
    write_req *w = s->unsent;
    s->unsent = NULL;
    while (w) {
        if (!batchable(s, w)) {
            write_req *next = w->next;
            send_req(s, w);
            w = next;
            continue;
        }
        write_req *first = w;
        int n = 0;
        size_t bytes = 0;
        while (w && batchable(s, w) && n < BATCH_MAX_CALLS && bytes < BATCH_MAX_BYTES) {
            bytes += w->frag_len;
            n++;
            w = w->next;
        }
        send_batch(s, first, n);
    }
}

static void flush_cb(evutil_socket_t fd, short what, void *arg) { flush_unsent(arg); }

static void on_script_loaded(redisAsyncContext *ac, void *r, void *privdata) {
    redis_sink_t *s = ac->data;
    redisReply *reply = r;
    if (!s || !reply) return;
    if (reply->type != REDIS_REPLY_STRING || reply->len != 40) {
        log_error("redis_script_load_failed", "error=\"%.200s\"", reply->type == REDIS_REPLY_ERROR ? reply->str : "?");
        redisAsyncDisconnect(ac);
        return;
    }
    memcpy(s->batch_sha, reply->str, 40);
    s->batch_sha[40] = '\0';
    s->loaded = 1;
    if (!s->had_error) s->backoff_ms = 100;
    /* Resend, in order, everything not yet acknowledged. */
    size_t resent = s->inflight;
    s->unsent = s->head;
    flush_unsent(s);
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
    s->loaded = 0;
    redisAsyncCommand(ac, on_script_loaded, NULL, "SCRIPT LOAD %s", s->batch_lua);
}

static void on_disconnect(const redisAsyncContext *cac, int status) {
    redis_sink_t *s = cac->data;
    if (!s) return;
    s->ac = NULL;
    for (write_req *w = s->head; w; w = w->next) w->sent_gen = 0;
    s->unsent = s->head;
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
    s->flush_ev = event_new(base, -1, 0, flush_cb, s);
    if (!s->retry_ev || !s->flush_ev) {
        if (s->retry_ev) event_free(s->retry_ev);
        if (s->flush_ev) event_free(s->flush_ev);
        free(s);
        return NULL;
    }
    s->lua[s->n_scripts++] = xstrdup(CLAIM_PUSH_LUA);
    return s;
}

int redis_sink_set_prelude(redis_sink_t *s, const char *lua) {
    if (s->ac || s->batch_lua || s->prelude) return -1;
    s->prelude = xstrdup(lua);
    return 0;
}

int redis_sink_add_script(redis_sink_t *s, const char *lua) {
    if (s->n_scripts == MAX_SCRIPTS || s->ac || s->batch_lua) return -1;
    s->lua[s->n_scripts] = xstrdup(lua);
    return s->n_scripts++;
}

int redis_sink_add_cursor_script(redis_sink_t *s, const char *lua) {
    int h = redis_sink_add_script(s, lua);
    if (h >= 0) s->cursor[h] = 1;
    return h;
}

/* The batch script: every registered script's body as a function of
 * (KEYS, ARGV), called in turn under pcall; the first failure ends the batch
 * (its error is the last element), so nothing after a failed call runs and
 * the resend repeats exactly what did not happen. */
static char *build_batch_script(const redis_sink_t *s) {
    strbuf b;
    sb_init(&b);
    if (s->prelude) sb_puts(&b, s->prelude);
    sb_puts(&b, "\nlocal S, C = {}, {}\n");
    for (int i = 0; i < s->n_scripts; i++) {
        if (s->cursor[i]) sb_printf(&b, "C[%d] = true\nS[%d] = function(ARGV, base)\n", i, i);
        else sb_printf(&b, "S[%d] = function(KEYS, ARGV)\n", i);
        sb_puts(&b, s->lua[i]);
        sb_puts(&b, "\nend\n");
    }
    /* BENEFITD_LUA_PROFILE (benchmarks only): each call's time, by script and
     * mode (its first argument when short), summed into the hash
     * benefitd:luaprof ("IDX:MODE" -> microseconds, "IDX:MODE:n" -> calls).
     * TIME costs a call of its own; the figures are for comparing scripts. */
    int prof = getenv("BENEFITD_LUA_PROFILE") != NULL;
    sb_puts(&b, "local out, p = {}, 2\n");
    if (prof) sb_puts(&b, "local pt = {}\n");
    sb_puts(&b, "for c = 1, tonumber(ARGV[1]) do\n"
                "  local idx, nk, na = tonumber(ARGV[p]), tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2])\n"
                "  p = p + 3\n"
                "  local ok, r, first = nil, nil, ARGV[p + nk]\n");
    if (prof) sb_puts(&b, "  local t0 = redis.call('TIME')\n");
    /* a cursor script reads the batch's ARGV from its offset: no copy */
    sb_puts(&b, "  if C[idx] then\n"
                "    ok, r = pcall(S[idx], ARGV, p - 1)\n"
                "    p = p + nk + na\n"
                "  else\n"
                "    local K, A = {}, {}\n"
                "    for j = 1, nk do K[j] = ARGV[p]; p = p + 1 end\n"
                "    for j = 1, na do A[j] = ARGV[p]; p = p + 1 end\n"
                "    ok, r = pcall(S[idx], K, A)\n"
                "  end\n");
    if (prof)
        sb_puts(&b, "  local t1 = redis.call('TIME')\n"
                    "  local pk = idx .. ':' .. ((first and #first <= 2) and first or '')\n"
                    "  local e = pt[pk] or {0, 0}\n"
                    "  e[1] = e[1] + (t1[1] - t0[1]) * 1000000 + (t1[2] - t0[2]); e[2] = e[2] + 1\n"
                    "  pt[pk] = e\n");
    sb_puts(&b, "  if not ok then\n"
                "    if type(r) == 'table' and r.err then out[c] = r else out[c] = {err = tostring(r)} end\n"
                "    break\n"
                "  end\n"
                "  if r == nil then r = false end\n"
                "  out[c] = r\n"
                "  if type(r) == 'table' and r.err then break end\n"
                "end\n");
    if (s->prelude) sb_puts(&b, "batch_end()\n");
    if (prof)
        sb_puts(&b, "for k, e in pairs(pt) do\n"
                    "  redis.call('HINCRBY', 'benefitd:luaprof', k, e[1]); redis.call('HINCRBY', 'benefitd:luaprof', k .. ':n', e[2])\n"
                    "end\n");
    sb_puts(&b, "return out\n");
    char *out = xstrndup(b.s, b.len);
    sb_free(&b);
    return out;
}

void redis_sink_start(redis_sink_t *s) {
    if (!s->batch_lua) s->batch_lua = build_batch_script(s);
    connect_now(s);
}

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
    free(s->prelude);
    free(s->batch_lua);
    free(s->cmd);
    event_free(s->retry_ev);
    event_free(s->flush_ev);
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

/* Script calls wait for the end of the current callbacks (the flush event
 * runs right after them, before the loop polls again) so that they leave
 * together; anything else leaves at once, after what waits before it. */
static void enqueue(redis_sink_t *s, write_req *w) {
    w->prev = s->tail;
    if (s->tail) s->tail->next = w; else s->head = w;
    s->tail = w;
    s->inflight++;
    if (!s->unsent) s->unsent = w;
    if (!s->ac || !s->loaded) return; /* sent once the connection is ready */
    if (!batchable(s, w)) {
        flush_unsent(s);
    } else if (!s->flush_armed) {
        s->flush_armed = 1;
        event_active(s->flush_ev, 0, 0);
    }
}

/* A script call: its part of the batch command (send_batch), preformatted
 * once, resent as is. */
static write_req *call_new(int script, int nkeys, int nargs, const char *const *args, const size_t *lens) {
    write_req *w = xcalloc(1, sizeof *w);
    size_t bytes = 3 * 32;
    for (int k = 0; k < nargs; k++) bytes += lens[k] + 32;
    char *o = w->frag = xmalloc(bytes);
    char num[16];
    o = resp_bulk(o, num, (size_t)snprintf(num, sizeof num, "%d", script));
    o = resp_bulk(o, num, (size_t)snprintf(num, sizeof num, "%d", nkeys));
    o = resp_bulk(o, num, (size_t)snprintf(num, sizeof num, "%d", nargs - nkeys));
    for (int k = 0; k < nargs; k++) o = resp_bulk(o, args[k], lens[k]);
    w->frag_len = (size_t)(o - w->frag);
    w->frag_n = 3 + nargs;
    w->script = script;
    return w;
}

void redis_sink_push(redis_sink_t *s, const char *claim_key, const char *queue_key, output_kind kind,
                     long long maxlen, long long ttl_ms, int nfields, const char *const *fields,
                     const size_t *lens, sink_ack_cb cb, void *ud) {
    const char **a = xmalloc((size_t)(5 + nfields) * sizeof *a);
    size_t *l = xmalloc((size_t)(5 + nfields) * sizeof *l);
    char ttl[32], ml[32];
    int i = 0;
    a[i] = claim_key; l[i++] = strlen(claim_key);
    a[i] = queue_key; l[i++] = strlen(queue_key);
    a[i] = ttl; l[i++] = (size_t)snprintf(ttl, sizeof ttl, "%lld", ttl_ms > 0 ? ttl_ms : 1);
    a[i] = kind == OUT_LIST ? "list" : "stream"; l[i++] = kind == OUT_LIST ? 4 : 6;
    a[i] = ml; l[i++] = (size_t)snprintf(ml, sizeof ml, "%lld", maxlen);
    for (int k = 0; k < nfields; k++) {
        a[i] = fields[k];
        l[i++] = lens[k];
    }
    write_req *w = call_new(0, 2, i, a, l);
    free(a);
    free(l);
    w->ack = cb;
    w->ud = ud;
    enqueue(s, w);
}

void redis_sink_eval(redis_sink_t *s, int script, int nargs, const char *const *args, const size_t *lens,
                     sink_reply_cb cb, void *ud) {
    write_req *w = call_new(script, 0, nargs, args, lens);
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
