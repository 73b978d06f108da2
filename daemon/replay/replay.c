#include "replay.h"
#include "../core/config.h"
#include "../core/util.h"
#include "../decode/event.h"
#include "../core/clock.h"
#include "../policy/engine.h"
#include "../policy/state.h"
#include "../policy/stats.h"
#include "../rules/rules.h"
#include "../enrich/enrich.h"
#include "spool.h"

#include <errno.h>
#include <malloc.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Revisits plugins asked for (host->revisit_at): a min-heap by due time
 * (ties: request order), with the latest request per (plugin, member) in a
 * map so a replaced request is skipped when it comes up. */
typedef struct rv_item { int64_t due; size_t seq; char *key; } rv_item;
typedef struct rv_ent { char *key; int64_t due; struct rv_ent *next; } rv_ent;
typedef struct revisits {
    rv_item *h; size_t n, cap, seq;
    rv_ent **b; size_t nb, count;
} revisits;

static rv_ent **rv_slot(revisits *q, const char *key) {
    if (!q->b) {
        q->nb = 1024;
        q->b = xcalloc(q->nb, sizeof *q->b);
    }
    rv_ent **pp = &q->b[hash64(key, strlen(key), 3) & (q->nb - 1)];
    while (*pp && strcmp((*pp)->key, key) != 0) pp = &(*pp)->next;
    return pp;
}

static int rv_less(const rv_item *a, const rv_item *b) { return a->due != b->due ? a->due < b->due : a->seq < b->seq; }

static void rv_push(revisits *q, const char *plugin, const char *user, int64_t due) {
    strbuf k;
    sb_init(&k);
    sb_printf(&k, "%s\x1f%s", plugin, user);
    rv_ent **pp = rv_slot(q, k.s);
    if (!*pp) {
        *pp = xcalloc(1, sizeof **pp);
        (*pp)->key = xstrdup(k.s);
    }
    (*pp)->due = due;
    if (due < 0) { sb_free(&k); return; }   /* a cancel: the queued item goes stale */
    if (q->n == q->cap) {
        q->cap = q->cap ? q->cap * 2 : 64;
        q->h = xrealloc(q->h, q->cap * sizeof *q->h);
    }
    size_t i = q->n++;
    q->h[i] = (rv_item){due, q->seq++, k.s};
    while (i > 0 && rv_less(&q->h[i], &q->h[(i - 1) / 2])) {
        rv_item t = q->h[i]; q->h[i] = q->h[(i - 1) / 2]; q->h[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
}

/* Pops the earliest live request due at or before now into *out (key owned
 * by the caller); 0 when none. */
static int rv_pop(revisits *q, int64_t now, rv_item *out) {
    while (q->n && q->h[0].due <= now) {
        rv_item top = q->h[0];
        q->h[0] = q->h[--q->n];
        size_t i = 0;
        for (;;) {
            size_t l = 2 * i + 1, r = l + 1, m = i;
            if (l < q->n && rv_less(&q->h[l], &q->h[m])) m = l;
            if (r < q->n && rv_less(&q->h[r], &q->h[m])) m = r;
            if (m == i) break;
            rv_item t = q->h[i]; q->h[i] = q->h[m]; q->h[m] = t;
            i = m;
        }
        rv_ent **pp = rv_slot(q, top.key);
        if (*pp && (*pp)->due == top.due) {
            (*pp)->due = -1;
            *out = top;
            return 1;
        }
        free(top.key);
    }
    return 0;
}

static void rv_free(revisits *q) {
    for (size_t i = 0; i < q->n; i++) free(q->h[i].key);
    free(q->h);
    for (size_t i = 0; i < q->nb; i++)
        for (rv_ent *e = q->b[i], *n; e; e = n) {
            n = e->next;
            free(e->key);
            free(e);
        }
    free(q->b);
}

/* The input's lines, read a large block at a time and handed out in place:
 * getline copied every line out of stdio's buffer (~6% of replay). */
typedef struct line_reader {
    int fd;
    char *buf;
    size_t cap, start, end;   /* buf[start..end): read, not yet handed out */
    int eof, err;
} line_reader;

#define READ_BLOCK (256 * 1024) /* stays in cache while its lines are parsed */

/* The next line, its '\n' replaced by a NUL (the last line may lack one),
 * its length in *len; valid until the next call. NULL at the end of the
 * input or after a read error (err). */
static char *next_line(line_reader *lr, size_t *len) {
    if (!lr->buf) {
        lr->cap = READ_BLOCK + 1;
        lr->buf = xmalloc(lr->cap);
    }
    for (;;) {
        char *line = lr->buf + lr->start;
        char *nl = lr->end > lr->start ? memchr(line, '\n', lr->end - lr->start) : NULL;
        if (nl) {
            *len = (size_t)(nl - line);
            *nl = '\0';
            lr->start += *len + 1;
            return line;
        }
        if (lr->eof) {
            if (lr->start == lr->end) return NULL;
            *len = lr->end - lr->start;
            line[*len] = '\0'; /* cap > end: room kept for it */
            lr->start = lr->end;
            return line;
        }
        /* the partial line to the front, then a block after it */
        size_t have = lr->end - lr->start;
        if (have && lr->start) memmove(lr->buf, line, have);
        lr->start = 0;
        lr->end = have;
        if (lr->cap - lr->end < READ_BLOCK + 1) {
            lr->cap = lr->end + READ_BLOCK + 1;
            lr->buf = xrealloc(lr->buf, lr->cap);
        }
        ssize_t n;
        do n = read(lr->fd, lr->buf + lr->end, lr->cap - lr->end - 1);
        while (n < 0 && errno == EINTR);
        if (n < 0) lr->err = 1;
        if (n <= 0) lr->eof = 1;
        else lr->end += (size_t)n;
    }
}

typedef struct replay_state {
    int explain;
    store_t *store;
    const ruleset_t *rs;
    spool out;                /* the lines, ordered by time at the end */
    size_t granted, suppressed, repeats, progress;
    enrich_t en;
    revisits rv;
} replay_state;

static const cJSON *profile_of(void *ud, const char *user) {
    replay_state *r = ud;
    profile_t *p = profile_find(&r->en.cache, user);
    return p ? p->traits : NULL;
}

/* What the plugins asked for, carried out in memory: blocks into the
 * store's blocklist, revisits into the queue; changed traits are already in
 * the profile (replay keeps no other copy). */
static void after_plugins(replay_state *r, const char *user, plugin_run_t *run) {
    for (size_t i = 0; i < run->n_blocks; i++) store_mem_block(r->store, run->blocks[i].kind, run->blocks[i].id);
    for (size_t i = 0; i < run->n_revisits; i++) rv_push(&r->rv, run->revisits[i].plugin, user, run->revisits[i].due_ms);
    profile_t *p = profile_find(&r->en.cache, user);
    if (p) profile_take_dirty(p, NULL, NULL);
    plugin_run_free(run);
}

static void emit(replay_state *r, int64_t at, const char *json, size_t len) { spool_add(&r->out, at, json, len); }

/* What the store did. Count progress ("count 2/3") is not an explain line:
 * it is the normal state of a count rule, not a suppression, and would turn
 * --explain into a log of every matching event (docs/time.md). */
static void on_out(void *ud, const store_out_t *o) {
    replay_state *r = ud;
    switch (o->kind) {
    case OUT_GRANT:
        r->granted++;
        emit(r, o->at, o->json, o->len);
        if (r->en.plugins.any_on_grant) {
            char *gj = plugin_grant_json(o->grant_id, o->rule_id, o->target_user, o->channel);
            plugins_on_grant(&r->en.plugins, o->target_user, o->at, gj);
            free(gj);
        }
        if (r->explain && o->deliver_after > o->at) {
            /* quiet hours: a delay, not a suppression; the line follows its grant */
            strbuf b;
            sb_init(&b);
            char t1[32], t2[32];
            format_iso8601_ms(o->deliver_after, t1, sizeof t1);
            format_iso8601_ms(o->at, t2, sizeof t2);
            sb_puts(&b, "{\"outcome\":\"delayed\",\"reason\":\"quiet hours\",\"rule\":");
            sb_json_str(&b, o->rule_id, strlen(o->rule_id));
            sb_puts(&b, ",\"user_id\":");
            sb_json_str(&b, o->target_user, strlen(o->target_user));
            /* no grant_id: an explain line never has one (rules-format.md); the grant line precedes it */
            sb_printf(&b, ",\"deliver_after\":\"%s\",\"decided_at\":\"%s\"}", t1, t2);
            emit(r, o->at, b.s, b.len);
            sb_free(&b);
        }
        break;
    case OUT_REPEAT: /* the same claim as the daemon's SET NX */
        r->repeats++;
        break;
    case OUT_EXPLAIN:
        r->suppressed++;
        if (r->explain) emit(r, o->at, o->json, o->len);
        break;
    case OUT_PROGRESS:
        r->progress++;
        break;
    }
}

static void on_intent(void *ud, const event_t *ev, const intent_t *in) {
    replay_state *r = ud;
    store_apply(r->store, r->rs, in, on_out, r);
}

/* Revisits due at or before now, in due order, each after the timers due
 * before it. */
static void run_revisits(replay_state *r, engine_t *eng, bd_clock_t *clk, int64_t now) {
    rv_item it;
    while (rv_pop(&r->rv, now, &it)) {
        char *sep = strchr(it.key, '\x1f');
        *sep = '\0';
        const char *plugin = it.key, *user = sep + 1;
        store_advance(r->store, r->rs, eng, it.due - 1, on_out, r);
        clock_set(clk, it.due);
        plugin_run_t run;
        enrich_revisit(&r->en, profile_get(&r->en.cache, user), plugin, it.due, clk, eng, r->rs, on_intent, r, &run);
        after_plugins(r, user, &run);
        free(it.key);
    }
}

/* One decoded event, at its own time. */
static void process_event(replay_state *r, engine_t *eng, bd_clock_t *clk, const ruleset_t *rs, int need_profile,
                          event_t *ev) {
    /* Events at t are applied before timers due at t (so a cancel at the
     * due millisecond wins): fire what is due strictly before t. */
    run_revisits(r, eng, clk, ev->ts_ms - 1);
    store_advance(r->store, rs, eng, ev->ts_ms - 1, on_out, r);
    /* A decision happens at its event's time; late events are decided at
     * their own time, as the daemon would have on arrival. */
    clock_set(clk, ev->ts_ms);
    plugin_run_t run;
    enrich_decide(&r->en, need_profile ? profile_get(&r->en.cache, ev->user_id) : NULL, ev, clk, eng, rs, on_intent,
                  r, &run);
    after_plugins(r, ev->user_id, &run);
}

static void add_stat(void *ud, const char *rule, const char *variant, const char *field, long long v) {
    stats_table_add(ud, rule, variant, field, v);
}

static void usage(FILE *f) {
    fputs("usage: benefitd replay --rules DIR [--config FILE] [--until TIME] [--explain] [--stats [--json]] "
          "[--pool NAME=FILE]... EVENTS.jsonl|-\n",
          f);
}

/* Replay builds tens of MB of member state in small pieces, each first
 * touch a page fault; in a VM a fault costs ~2.5 us (a replay of 1M events
 * took ~19,000 of them, ~7% of its time). So the heap grows in one big step
 * that asks for transparent huge pages (THP 'madvise' mode): a fault per
 * 2 MB. Only virtual space is reserved; a kernel without THP ignores the
 * advice. */
static void heap_prefer_huge_pages(void) {
    const size_t step = (size_t)96 << 20;
    if (!mallopt(M_TOP_PAD, (int)step) || !mallopt(M_TRIM_THRESHOLD, (int)(2 * step)) ||
        !mallopt(M_MMAP_THRESHOLD, 32 << 20))
        return;
    void *p = malloc(16 << 20); /* below the mmap threshold: the heap grows by it plus the pad */
    if (!p) return;
    uintptr_t lo = ((uintptr_t)p + (2u << 20) - 1) & ~(uintptr_t)((2u << 20) - 1);
    uintptr_t hi = (uintptr_t)sbrk(0) & ~(uintptr_t)((2u << 20) - 1);
    free(p);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
}

int replay_main(int argc, char **argv) {
    heap_prefer_huge_pages();
    const char *rules_dir = NULL, *config_path = NULL, *until = NULL;
    int explain = 0, stats = 0, json = 0;
    static const struct option opts[] = {{"rules", required_argument, 0, 'r'},   {"config", required_argument, 0, 'c'},
                                         {"until", required_argument, 0, 'u'},   {"explain", no_argument, 0, 'e'},
                                         {"pool", required_argument, 0, 'p'},    {"help", no_argument, 0, 'h'},
                                         {"stats", no_argument, 0, 's'},         {"json", no_argument, 0, 'j'},
                                         {0, 0, 0, 0}};
    int c;
    optind = 1;
    char **pools = xcalloc((size_t)argc, sizeof(char *));
    size_t npools = 0;
    while ((c = getopt_long(argc, argv, "r:c:u:ep:h", opts, NULL)) != -1) {
        switch (c) {
        case 'r': rules_dir = optarg; break;
        case 'c': config_path = optarg; break;
        case 'u': until = optarg; break;
        case 'e': explain = 1; break;
        case 's': stats = 1; break;
        case 'j': json = 1; break;
        case 'p': pools[npools++] = optarg; break;
        case 'h': usage(stdout); free(pools); return 0;
        default: usage(stderr); free(pools); return 1;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        free(pools);
        return 1;
    }
    const char *input = argv[optind];
    int rc = 1;
    config_t cfg;
    config_init_default(&cfg);
    diag_t diag;
    diag_init(&diag);
    ruleset_t *rs = NULL;
    line_reader in = {.fd = -1};
    replay_state r = {.explain = explain, .out = {.fd = -1}};
    engine_t eng;
    engine_init(&eng);

    if (config_path && config_load(&cfg, config_path, &diag) != 0) {
        diag_print(&diag, stderr);
        goto out;
    }
    /* plugins before rules: their functions must exist when rules compile */
    if (enrich_init(&r.en, &cfg, 0, &diag) != 0) {
        diag_print(&diag, stderr);
        goto out;
    }
    eng.profile_of = profile_of;
    eng.profile_ud = &r;
    int64_t until_ms = 0;
    if (until && parse_iso8601_ms(until, &until_ms) != 0) {
        fprintf(stderr, "benefitd replay: --until: not an ISO-8601 time: %s\n", until);
        goto out;
    }
    /* Code pools: one code per line (blank lines skipped), in file order:
     * replay hands them out in that order, so its output is reproducible
     * (live pops them at random, SPOP). Loaded before the rules so a bad
     * file is reported first. */
    if (spool_open(&r.out) != 0) {
        fprintf(stderr, "benefitd replay: no room for the output: %s\n", strerror(errno));
        goto out;
    }
    r.store = store_mem_new();
    store_mem_set_timezone(r.store, cfg.timezone);
    store_mem_set_policy(r.store, cfg.fcap_count, cfg.fcap_period_ms, cfg.quiet_start_min, cfg.quiet_end_min);
    /* the closed loop (config `loop`; defaults without --config) */
    store_mem_set_loop(r.store, cfg.loop_window_ms);
    engine_set_loop(&eng, cfg.loop_redeem, cfg.n_loop_redeem, cfg.loop_convert, cfg.n_loop_convert, cfg.loop_window_ms);
    for (size_t i = 0; i < npools; i++) {
        const char *eq = strchr(pools[i], '=');
        if (!eq || eq == pools[i] || !eq[1]) {
            fprintf(stderr, "benefitd replay: --pool wants NAME=FILE, got '%s'\n", pools[i]);
            goto out;
        }
        char *name = xstrndup(pools[i], (size_t)(eq - pools[i]));
        FILE *pf = fopen(eq + 1, "r");
        if (!pf) {
            fprintf(stderr, "benefitd replay: --pool %s: %s\n", eq + 1, strerror(errno));
            free(name);
            goto out;
        }
        char *pl = NULL;
        size_t pcap = 0;
        ssize_t plen;
        long pline = 0, bad = 0;
        while ((plen = getline(&pl, &pcap, pf)) != -1) {
            pline++;
            while (plen > 0 && (pl[plen - 1] == '\n' || pl[plen - 1] == '\r' || pl[plen - 1] == ' ' ||
                                pl[plen - 1] == '\t'))
                pl[--plen] = '\0';
            char *code = pl;
            while (*code == ' ' || *code == '\t') code++;
            if (!*code) continue;
            if (store_mem_pool_add(r.store, name, code) == -2) {
                fprintf(stderr, "%s:%ld: not a valid code (printable ASCII, no spaces, quotes or backslashes)\n",
                        eq + 1, pline);
                bad++;
            }
        }
        free(pl);
        fclose(pf);
        free(name);
        if (bad) goto out;
    }
    /* Same load flags as the daemon and `check` (rules.h, RULES_ALLOW_TIME). */
    rs = ruleset_load_dir_ex(rules_dir ? rules_dir : cfg.rules_dir, cfg.timezone, RULES_ALLOW_TIME, &diag);
    if (!rs) {
        diag_print(&diag, stderr);
        goto out;
    }
    in.fd = strcmp(input, "-") == 0 ? STDIN_FILENO : open(input, O_RDONLY);
    if (in.fd < 0) {
        fprintf(stderr, "benefitd replay: %s: %s\n", input, strerror(errno));
        goto out;
    }
    rc = 0;
    r.rs = rs;
    int need_profile = enrich_needs_profile(&r.en, rs);
    bd_clock_t clk;
    clock_init_virtual(&clk, 0);
    ssize_t len;
    long lineno = 0, nevents = 0;
    int64_t clock_ms = 0;  /* the virtual clock's high-water mark: the latest event time seen */
    /* Each event is decoded one line ahead of its processing: the next
     * event's member is then announced to the store (store_mem_prefetch) a
     * whole event before its intents look it up, which took two cache misses
     * per event. A line that fails to decode is reported after the event
     * before it is processed, so stderr keeps the order of the input. */
    event_t evs[2];
    event_t *cur = NULL, *nxt = &evs[0];
    for (;;) {
        size_t n;
        char *line = next_line(&in, &n);
        len = line ? (ssize_t)n : -1;
        const char *bad = NULL;
        char reason[128];
        if (len != -1) {
            lineno++;
            while (len > 0 && line[len - 1] == '\r') line[--len] = '\0';
            if (len == 0) continue;
            if (decode_event(&cfg.decoder, line, (size_t)len, clock_ms, nxt, reason, sizeof reason) != 0) {
                bad = reason;
            } else {
                nxt->offset = lineno;
                nevents++;
                if (nevents == 1 || nxt->ts_ms > clock_ms) clock_ms = nxt->ts_ms;
                store_mem_prefetch(r.store, nxt->user_id, 0);
            }
        }
        if (cur) {
            process_event(&r, &eng, &clk, rs, need_profile, cur);
            event_clear(cur);
        }
        if (len == -1) break;
        if (bad) {
            fprintf(stderr, "%s:%ld: %s\n", input, lineno, bad);
            rc = 3;
            cur = NULL;
            continue;
        }
        store_mem_prefetch(r.store, nxt->user_id, 1);
        cur = nxt;
        nxt = cur == &evs[0] ? &evs[1] : &evs[0];
    }
    if (in.err) {
        fprintf(stderr, "benefitd replay: read error on %s\n", input);
        rc = 1;
    }
    /* The end of time: --until, else the last event. Waits due later stay
     * pending and are counted below, never granted. */
    int64_t end_ms = until && until_ms > clock_ms ? until_ms : clock_ms;
    if (nevents || until) {
        run_revisits(&r, &eng, &clk, end_ms);
        store_advance(r.store, rs, &eng, end_ms, on_out, &r);
    }
    if (spool_write_ordered(&r.out, stdout) != 0) {
        fprintf(stderr, "benefitd replay: writing the output: %s\n", strerror(errno));
        rc = 1;
    }
    if (stats) {
        /* the same table as `benefitd stats`, from the in-memory counters */
        stats_table *t = stats_table_new();
        store_mem_stats_each(r.store, add_stat, t);
        if (!json) fputc('\n', stdout);
        stats_table_print(t, stdout, json);
        stats_table_free(t);
    }
    fflush(stdout);
    fprintf(stderr, "replay: events=%ld granted=%zu suppressed=%zu repeats=%zu\n", lineno, r.granted, r.suppressed,
            r.repeats);
    size_t pending = store_pending_waits(r.store);
    if (pending) {
        char ts[32];
        format_iso8601_ms(end_ms, ts, sizeof ts);
        fprintf(stderr, "replay: %zu wait(s) still pending at %s (use --until to let them run out)\n", pending, ts);
    }
out:
    spool_close(&r.out);
    store_free(r.store);
    rv_free(&r.rv);
    free(in.buf);
    if (in.fd > STDIN_FILENO) close(in.fd);
    engine_free(&eng);
    if (rs) ruleset_free(rs);
    enrich_free(&r.en);   /* after the rules: their expressions may call plugin functions */
    diag_free(&diag);
    config_free(&cfg);
    free(pools);
    return rc;
}
