#include "replay.h"
#include "../core/config.h"
#include "../core/util.h"
#include "../decode/event.h"
#include "../core/clock.h"
#include "../policy/engine.h"
#include "../policy/state.h"
#include "../policy/stats.h"
#include "../rules/rules.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One output line, kept until the end so lines can be ordered by issue time. */
typedef struct out_line {
    int64_t at;
    size_t seq;
    char *json;
} out_line;

typedef struct replay_state {
    int explain;
    store_t *store;
    const ruleset_t *rs;
    out_line *out;
    size_t nout, capout;
    size_t granted, suppressed, repeats, progress;
} replay_state;

static void emit(replay_state *r, int64_t at, const char *json, size_t len) {
    if (r->nout == r->capout) {
        r->capout = r->capout ? r->capout * 2 : 256;
        r->out = xrealloc(r->out, r->capout * sizeof *r->out);
    }
    r->out[r->nout] = (out_line){at, r->nout, xstrndup(json, len)};
    r->nout++;
}

/* What the store did. Count progress ("count 2/3") is not an explain line:
 * it is the normal state of a count rule, not a suppression, and would turn
 * --explain into a log of every matching event (docs/time.md). */
static void on_out(void *ud, const store_out_t *o) {
    replay_state *r = ud;
    switch (o->kind) {
    case OUT_GRANT:
        r->granted++;
        emit(r, o->at, o->json, o->len);
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

static void add_stat(void *ud, const char *rule, const char *variant, const char *field, long long v) {
    stats_table_add(ud, rule, variant, field, v);
}

static int cmp_out(const void *a, const void *b) {
    const out_line *x = a, *y = b;
    if (x->at != y->at) return x->at < y->at ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void usage(FILE *f) {
    fputs("usage: benefitd replay --rules DIR [--config FILE] [--until TIME] [--explain] [--stats [--json]] "
          "[--pool NAME=FILE]... EVENTS.jsonl|-\n",
          f);
}

int replay_main(int argc, char **argv) {
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
    FILE *in = NULL;
    replay_state r = {.explain = explain};
    engine_t eng;
    engine_init(&eng);
    char *line = NULL;

    if (config_path && config_load(&cfg, config_path, &diag) != 0) {
        diag_print(&diag, stderr);
        goto out;
    }
    int64_t until_ms = 0;
    if (until && parse_iso8601_ms(until, &until_ms) != 0) {
        fprintf(stderr, "benefitd replay: --until: not an ISO-8601 time: %s\n", until);
        goto out;
    }
    /* Code pools: one code per line (blank lines skipped), in file order:
     * replay hands them out in that order, so its output is reproducible
     * (live pops them at random, SPOP). Loaded before the rules so a bad
     * file is reported first. */
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
    in = strcmp(input, "-") == 0 ? stdin : fopen(input, "r");
    if (!in) {
        fprintf(stderr, "benefitd replay: %s: %s\n", input, strerror(errno));
        goto out;
    }
    rc = 0;
    r.rs = rs;
    bd_clock_t clk;
    clock_init_virtual(&clk, 0);
    size_t cap = 0;
    ssize_t len;
    long lineno = 0, nevents = 0;
    int64_t clock_ms = 0;  /* the virtual clock's high-water mark: the latest event time seen */
    while ((len = getline(&line, &cap, in)) != -1) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
        if (len == 0) continue;
        event_t ev;
        char reason[128];
        if (decode_event(&cfg.decoder, line, (size_t)len, clock_ms, &ev, reason, sizeof reason) != 0) {
            fprintf(stderr, "%s:%ld: %s\n", input, lineno, reason);
            rc = 3;
            continue;
        }
        ev.offset = lineno;
        nevents++;
        if (nevents == 1 || ev.ts_ms > clock_ms) clock_ms = ev.ts_ms;
        /* Events at t are applied before timers due at t (so a cancel at the
         * due millisecond wins): fire what is due strictly before t. */
        store_advance(r.store, rs, &eng, ev.ts_ms - 1, on_out, &r);
        /* A decision happens at its event's time; late events are decided at
         * their own time, as the daemon would have on arrival. */
        clock_set(&clk, ev.ts_ms);
        engine_run(&eng, rs, &ev, &clk, on_intent, &r);
        event_clear(&ev);
    }
    if (ferror(in)) {
        fprintf(stderr, "benefitd replay: read error on %s\n", input);
        rc = 1;
    }
    /* The end of time: --until, else the last event. Waits due later stay
     * pending and are counted below, never granted. */
    int64_t end_ms = until && until_ms > clock_ms ? until_ms : clock_ms;
    if (nevents || until) store_advance(r.store, rs, &eng, end_ms, on_out, &r);
    qsort(r.out, r.nout, sizeof *r.out, cmp_out);
    for (size_t i = 0; i < r.nout; i++) {
        fputs(r.out[i].json, stdout);
        fputc('\n', stdout);
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
    for (size_t i = 0; i < r.nout; i++) free(r.out[i].json);
    free(r.out);
    store_free(r.store);
    free(line);
    if (in && in != stdin) fclose(in);
    engine_free(&eng);
    if (rs) ruleset_free(rs);
    diag_free(&diag);
    config_free(&cfg);
    free(pools);
    return rc;
}
