#include "replay.h"
#include "../core/config.h"
#include "../core/util.h"
#include "../decode/event.h"
#include "../policy/engine.h"
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

/* The in-memory stand-in for Redis claims: an open-addressing set of grant ids. */
typedef struct idset {
    char **slots;
    size_t cap, n;
} idset;

static int idset_add(idset *s, const char *id) {
    if ((s->n + 1) * 2 > s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 1024;
        char **ns = xcalloc(ncap, sizeof *ns);
        for (size_t i = 0; i < s->cap; i++) {
            if (!s->slots[i]) continue;
            size_t j = hash64(s->slots[i], strlen(s->slots[i]), 0) & (ncap - 1);
            while (ns[j]) j = (j + 1) & (ncap - 1);
            ns[j] = s->slots[i];
        }
        free(s->slots);
        s->slots = ns;
        s->cap = ncap;
    }
    size_t j = hash64(id, strlen(id), 0) & (s->cap - 1);
    while (s->slots[j]) {
        if (strcmp(s->slots[j], id) == 0) return 0;
        j = (j + 1) & (s->cap - 1);
    }
    s->slots[j] = xstrdup(id);
    s->n++;
    return 1;
}

static void idset_free(idset *s) {
    for (size_t i = 0; i < s->cap; i++) free(s->slots[i]);
    free(s->slots);
}

typedef struct replay_state {
    int explain;
    idset claimed;
    out_line *out;
    size_t nout, capout;
    size_t granted, suppressed, repeats;
} replay_state;

static void emit(replay_state *r, int64_t at, const strbuf *json) {
    if (r->nout == r->capout) {
        r->capout = r->capout ? r->capout * 2 : 256;
        r->out = xrealloc(r->out, r->capout * sizeof *r->out);
    }
    r->out[r->nout] = (out_line){at, r->nout, xstrndup(json->s, json->len)};
    r->nout++;
}

static void on_decision(void *ud, const event_t *ev, const decision_t *d) {
    replay_state *r = ud;
    if (!d->granted) {
        r->suppressed++;
        if (r->explain) emit(r, d->issued_at, d->json);
        return;
    }
    /* Same claim as the daemon's SET NX: a repeated trigger grants nothing. */
    if (!idset_add(&r->claimed, d->grant_id)) {
        r->repeats++;
        return;
    }
    r->granted++;
    emit(r, d->issued_at, d->json);
}

static int cmp_out(const void *a, const void *b) {
    const out_line *x = a, *y = b;
    if (x->at != y->at) return x->at < y->at ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void usage(FILE *f) {
    fputs("usage: benefitd replay --rules DIR [--config FILE] [--until TIME] [--explain] [--pool NAME=FILE]... "
          "EVENTS.jsonl|-\n",
          f);
}

int replay_main(int argc, char **argv) {
    const char *rules_dir = NULL, *config_path = NULL, *until = NULL;
    int explain = 0;
    static const struct option opts[] = {{"rules", required_argument, 0, 'r'},   {"config", required_argument, 0, 'c'},
                                         {"until", required_argument, 0, 'u'},   {"explain", no_argument, 0, 'e'},
                                         {"pool", required_argument, 0, 'p'},    {"help", no_argument, 0, 'h'},
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
    /* Code pools are validated (name and readable file) even though this
     * build has no rule that can draw from them yet. */
    for (size_t i = 0; i < npools; i++) {
        const char *eq = strchr(pools[i], '=');
        if (!eq || eq == pools[i] || !eq[1]) {
            fprintf(stderr, "benefitd replay: --pool wants NAME=FILE, got '%s'\n", pools[i]);
            goto out;
        }
        FILE *pf = fopen(eq + 1, "r");
        if (!pf) {
            fprintf(stderr, "benefitd replay: --pool %s: %s\n", eq + 1, strerror(errno));
            goto out;
        }
        fclose(pf);
    }
    rs = ruleset_load_dir(rules_dir ? rules_dir : cfg.rules_dir, cfg.timezone, &diag);
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
    size_t cap = 0;
    ssize_t len;
    long lineno = 0;
    int64_t clock_ms = 0;  /* the virtual clock: the latest event time seen */
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
        if (ev.ts_ms > clock_ms) clock_ms = ev.ts_ms;
        /* A decision happens at its event's time; late events are decided at
         * their own time, as the daemon would have on arrival. */
        engine_decide(&eng, rs, &ev, ev.ts_ms, on_decision, &r);
        event_clear(&ev);
    }
    if (ferror(in)) {
        fprintf(stderr, "benefitd replay: read error on %s\n", input);
        rc = 1;
    }
    qsort(r.out, r.nout, sizeof *r.out, cmp_out);
    for (size_t i = 0; i < r.nout; i++) {
        fputs(r.out[i].json, stdout);
        fputc('\n', stdout);
    }
    fflush(stdout);
    fprintf(stderr, "replay: events=%ld granted=%zu suppressed=%zu repeats=%zu\n", lineno, r.granted, r.suppressed,
            r.repeats);
out:
    for (size_t i = 0; i < r.nout; i++) free(r.out[i].json);
    free(r.out);
    idset_free(&r.claimed);
    free(line);
    if (in && in != stdin) fclose(in);
    engine_free(&eng);
    if (rs) ruleset_free(rs);
    diag_free(&diag);
    config_free(&cfg);
    free(pools);
    return rc;
}
