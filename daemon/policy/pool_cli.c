/* pool_cli.c - `benefitd pool ...` and `benefitd block ...` (pool_cli.h).
 *
 * Keys (P = redis.key_prefix):
 *   Ppool:NAME          set: the codes available (the grant step SPOPs one)
 *   Ppool:NAME:issued   hash: code -> {"grant_id","user_id","rule","issued_at"}
 *   Pblock:user|device|ip   sets checked in the grant step */
#include "pool_cli.h"
#include "policy.h"
#include "stats.h"
#include "../core/config.h"
#include "../core/diag.h"
#include "../core/util.h"

#include <errno.h>
#include <getopt.h>
#include <hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LOAD_BATCH 1000

/* Adds codes unless already issued: ARGV = pool key, issued key, codes...
 * Returns {added, duplicates, already issued}. One batch is atomic, so a
 * code issued meanwhile is never put back. */
static const char LUA_LOAD[] =
    "local added, dup, issued = 0, 0, 0\n"
    "for k = 3, #ARGV do\n"
    "  if redis.call('HEXISTS', ARGV[2], ARGV[k]) == 1 then issued = issued + 1\n"
    "  elseif redis.call('SADD', ARGV[1], ARGV[k]) == 1 then added = added + 1\n"
    "  else dup = dup + 1 end\n"
    "end\n"
    "return {added, dup, issued}\n";

typedef struct cli {
    config_t cfg;
    redisContext *c;
} cli_t;

static const char *default_config(const char *path) {
    if (!path && access("/etc/benefitd/benefitd.yaml", R_OK) == 0) return "/etc/benefitd/benefitd.yaml";
    return path;
}

static int cli_open(cli_t *k, const char *config_path, const char *cmd) {
    memset(k, 0, sizeof *k);
    config_init_default(&k->cfg);
    config_path = default_config(config_path);
    diag_t d;
    diag_init(&d);
    if (config_path && config_load(&k->cfg, config_path, &d) != 0) {
        diag_print(&d, stderr);
        diag_free(&d);
        return -1;
    }
    diag_free(&d);
    struct timeval tv = {5, 0};
    k->c = redisConnectWithTimeout(k->cfg.redis_host, k->cfg.redis_port, tv);
    if (!k->c || k->c->err) {
        fprintf(stderr, "benefitd %s: cannot connect to Redis at %s:%d: %s\n", cmd, k->cfg.redis_host,
                k->cfg.redis_port, k->c ? k->c->errstr : "out of memory");
        return -1;
    }
    redisReply *r = NULL;
    if (k->cfg.redis_password) {
        r = redisCommand(k->c, "AUTH %s", k->cfg.redis_password);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            fprintf(stderr, "benefitd %s: Redis AUTH failed: %s\n", cmd, r ? r->str : k->c->errstr);
            if (r) freeReplyObject(r);
            return -1;
        }
        freeReplyObject(r);
    }
    if (k->cfg.redis_db) {
        r = redisCommand(k->c, "SELECT %d", k->cfg.redis_db);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            fprintf(stderr, "benefitd %s: Redis SELECT failed: %s\n", cmd, r ? r->str : k->c->errstr);
            if (r) freeReplyObject(r);
            return -1;
        }
        freeReplyObject(r);
    }
    return 0;
}

static void cli_close(cli_t *k) {
    if (k->c) redisFree(k->c);
    config_free(&k->cfg);
}

/* A reply that is an error or missing: reported; returns 1. */
static int bad_reply(cli_t *k, redisReply *r, const char *cmd) {
    if (r && r->type != REDIS_REPLY_ERROR) return 0;
    fprintf(stderr, "benefitd %s: Redis: %s\n", cmd, r ? r->str : k->c->errstr);
    return 1;
}

/* Leading options (-c FILE) may come anywhere; the rest are positional. */
static int parse_args(int argc, char **argv, const char **config, char **pos, int maxpos, int *npos) {
    *npos = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) {
            if (i + 1 >= argc) return -1;
            *config = argv[++i];
        } else if (!strncmp(argv[i], "--config=", 9)) {
            *config = argv[i] + 9;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return -1;
        } else {
            if (*npos == maxpos) return -1;
            pos[(*npos)++] = argv[i];
        }
    }
    return 0;
}

static void pool_usage(FILE *f) {
    fputs("usage:\n"
          "  benefitd pool load NAME FILE [-c CONFIG]     add codes (one per line) to a pool\n"
          "  benefitd pool status [NAME] [-c CONFIG]      available and issued codes\n"
          "  benefitd pool lookup NAME CODE [-c CONFIG]   the grant an issued code went to\n",
          f);
}

static int pool_load(cli_t *k, const char *name, const char *file) {
    FILE *in = strcmp(file, "-") ? fopen(file, "r") : stdin;
    if (!in) {
        fprintf(stderr, "benefitd pool load: %s: %s\n", file, strerror(errno));
        return 1;
    }
    strbuf pkey, ikey;
    sb_init(&pkey);
    sb_init(&ikey);
    sb_printf(&pkey, "%spool:%s", k->cfg.key_prefix, name);
    sb_printf(&ikey, "%spool:%s:issued", k->cfg.key_prefix, name);
    char **batch = xcalloc(LOAD_BATCH + 5, sizeof *batch);
    size_t *lens = xcalloc(LOAD_BATCH + 5, sizeof *lens);
    long long added = 0, dup = 0, issued = 0, invalid = 0, lineno = 0;
    int rc = 0, nb = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    for (;;) {
        len = getline(&line, &cap, in);
        if (len != -1) {
            lineno++;
            while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' ' ||
                               line[len - 1] == '\t'))
                line[--len] = '\0';
            char *p = line;
            while (*p == ' ' || *p == '\t') p++;
            if (!*p) continue;
            if (!policy_code_ok(p, strlen(p))) {
                fprintf(stderr, "%s:%lld: not a valid code (1-128 printable ASCII, no spaces, quotes or backslashes)\n",
                        file, lineno);
                invalid++;
                continue;
            }
            batch[nb] = xstrdup(p);
            lens[nb] = strlen(p);
            nb++;
            if (nb < LOAD_BATCH) continue;
        }
        if (nb > 0) {
            const char **argv = xcalloc((size_t)nb + 5, sizeof *argv);
            size_t *alen = xcalloc((size_t)nb + 5, sizeof *alen);
            argv[0] = "EVAL";
            argv[1] = LUA_LOAD;
            argv[2] = "0";
            argv[3] = pkey.s;
            argv[4] = ikey.s;
            for (int i = 0; i < 5; i++) alen[i] = strlen(argv[i]);
            for (int i = 0; i < nb; i++) {
                argv[5 + i] = batch[i];
                alen[5 + i] = lens[i];
            }
            redisReply *r = redisCommandArgv(k->c, nb + 5, argv, alen);
            free(argv);
            free(alen);
            for (int i = 0; i < nb; i++) free(batch[i]);
            nb = 0;
            if (bad_reply(k, r, "pool load") || r->type != REDIS_REPLY_ARRAY || r->elements != 3) {
                if (r) freeReplyObject(r);
                rc = 1;
                break;
            }
            added += r->element[0]->integer;
            dup += r->element[1]->integer;
            issued += r->element[2]->integer;
            freeReplyObject(r);
        }
        if (len == -1) break;
    }
    free(line);
    free(batch);
    free(lens);
    if (in != stdin) fclose(in);
    if (rc == 0) {
        redisReply *r = redisCommand(k->c, "SCARD %s", pkey.s);
        long long avail = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
        if (r) freeReplyObject(r);
        printf("pool %s: added=%lld duplicates=%lld already_issued=%lld invalid=%lld available=%lld\n", name, added,
               dup, issued, invalid, avail);
        if (invalid) rc = 3;
    }
    sb_free(&pkey);
    sb_free(&ikey);
    return rc;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int pool_status(cli_t *k, const char *name) {
    char **names = NULL;
    size_t n = 0, cap = 0;
    const char *pfx = k->cfg.key_prefix;
    size_t plen = strlen(pfx) + 5; /* "pool:" */
    if (name) {
        names = xcalloc(1, sizeof *names);
        names[n++] = xstrdup(name);
    } else {
        /* Every pool that has a set or an issued hash. */
        char cursor[32] = "0";
        do {
            redisReply *r = redisCommand(k->c, "SCAN %s MATCH %spool:* COUNT 1000", cursor, pfx);
            if (bad_reply(k, r, "pool status") || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
                if (r) freeReplyObject(r);
                for (size_t i = 0; i < n; i++) free(names[i]);
                free(names);
                return 1;
            }
            snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
            for (size_t i = 0; i < r->element[1]->elements; i++) {
                const char *key = r->element[1]->element[i]->str;
                size_t kl = strlen(key);
                if (kl <= plen) continue;
                char *nm = kl > plen + 7 && !strcmp(key + kl - 7, ":issued") ? xstrndup(key + plen, kl - plen - 7)
                                                                              : xstrdup(key + plen);
                int seen = 0;
                for (size_t j = 0; j < n && !seen; j++) seen = !strcmp(names[j], nm);
                if (seen) {
                    free(nm);
                    continue;
                }
                if (n == cap) {
                    cap = cap ? cap * 2 : 16;
                    names = xrealloc(names, cap * sizeof *names);
                }
                names[n++] = nm;
            }
            freeReplyObject(r);
        } while (strcmp(cursor, "0") != 0);
        if (n) qsort(names, n, sizeof *names, cmp_str);
    }
    int rc = 0;
    printf("%-32s %12s %12s\n", "pool", "available", "issued");
    for (size_t i = 0; i < n; i++) {
        redisReply *a = redisCommand(k->c, "SCARD %spool:%s", pfx, names[i]);
        redisReply *b = redisCommand(k->c, "HLEN %spool:%s:issued", pfx, names[i]);
        if (bad_reply(k, a, "pool status") || bad_reply(k, b, "pool status")) rc = 1;
        else printf("%-32s %12lld %12lld\n", names[i], a->integer, b->integer);
        if (a) freeReplyObject(a);
        if (b) freeReplyObject(b);
        free(names[i]);
    }
    free(names);
    return rc;
}

static int pool_lookup(cli_t *k, const char *name, const char *code) {
    redisReply *r = redisCommand(k->c, "HGET %spool:%s:issued %s", k->cfg.key_prefix, name, code);
    if (bad_reply(k, r, "pool lookup")) {
        if (r) freeReplyObject(r);
        return 1;
    }
    int rc = 0;
    if (r->type == REDIS_REPLY_STRING) {
        printf("%s\n", r->str);
    } else {
        redisReply *m = redisCommand(k->c, "SISMEMBER %spool:%s %s", k->cfg.key_prefix, name, code);
        int avail = m && m->type == REDIS_REPLY_INTEGER && m->integer == 1;
        if (m) freeReplyObject(m);
        fprintf(stderr, "benefitd pool lookup: %s: %s\n", code, avail ? "not issued (available)" : "unknown code");
        rc = 1;
    }
    freeReplyObject(r);
    return rc;
}

int pool_main(int argc, char **argv) {
    const char *config = NULL;
    char *pos[4];
    int npos;
    if (parse_args(argc, argv, &config, pos, 4, &npos) != 0 || npos < 1) {
        pool_usage(stderr);
        return 1;
    }
    const char *sub = pos[0];
    int ok = (!strcmp(sub, "load") && npos == 3) || (!strcmp(sub, "status") && npos <= 2) ||
             (!strcmp(sub, "lookup") && npos == 3);
    if (!ok) {
        pool_usage(stderr);
        return 1;
    }
    cli_t k;
    int rc = 1;
    if (cli_open(&k, config, "pool") == 0) {
        if (!strcmp(sub, "load")) rc = pool_load(&k, pos[1], pos[2]);
        else if (!strcmp(sub, "status")) rc = pool_status(&k, npos == 2 ? pos[1] : NULL);
        else rc = pool_lookup(&k, pos[1], pos[2]);
    }
    cli_close(&k);
    return rc;
}

/* ---- blocklist ------------------------------------------------------------- */

static void block_usage(FILE *f) {
    fputs("usage:\n"
          "  benefitd block add user|device|ip VALUE [-c CONFIG]\n"
          "  benefitd block remove user|device|ip VALUE [-c CONFIG]\n"
          "  benefitd block list [user|device|ip] [-c CONFIG]\n",
          f);
}

static int is_kind(const char *s) { return !strcmp(s, "user") || !strcmp(s, "device") || !strcmp(s, "ip"); }

int block_main(int argc, char **argv) {
    const char *config = NULL;
    char *pos[4];
    int npos;
    if (parse_args(argc, argv, &config, pos, 4, &npos) != 0 || npos < 1) {
        block_usage(stderr);
        return 1;
    }
    const char *sub = pos[0];
    int change = !strcmp(sub, "add") || !strcmp(sub, "remove");
    if (!((change && npos == 3 && is_kind(pos[1])) ||
          (!strcmp(sub, "list") && (npos == 1 || (npos == 2 && is_kind(pos[1])))))) {
        block_usage(stderr);
        return 1;
    }
    cli_t k;
    int rc = 1;
    if (cli_open(&k, config, "block") != 0) goto out;
    if (change) {
        redisReply *r = redisCommand(k.c, "%s %sblock:%s %s", !strcmp(sub, "add") ? "SADD" : "SREM",
                                     k.cfg.key_prefix, pos[1], pos[2]);
        if (!bad_reply(&k, r, "block")) {
            printf("block %s %s %s: %s\n", sub, pos[1], pos[2],
                   r->integer ? (!strcmp(sub, "add") ? "added" : "removed")
                              : (!strcmp(sub, "add") ? "already blocked" : "was not blocked"));
            rc = 0;
        }
        if (r) freeReplyObject(r);
        goto out;
    }
    static const char *const kinds[] = {"user", "device", "ip"};
    rc = 0;
    for (int i = 0; i < 3; i++) {
        if (npos == 2 && strcmp(pos[1], kinds[i])) continue;
        redisReply *r = redisCommand(k.c, "SMEMBERS %sblock:%s", k.cfg.key_prefix, kinds[i]);
        if (bad_reply(&k, r, "block list") || r->type != REDIS_REPLY_ARRAY) {
            rc = 1;
        } else {
            char **v = xcalloc(r->elements + 1, sizeof *v);
            for (size_t j = 0; j < r->elements; j++) v[j] = r->element[j]->str;
            qsort(v, r->elements, sizeof *v, cmp_str);
            for (size_t j = 0; j < r->elements; j++) printf("%s\t%s\n", kinds[i], v[j]);
            free(v);
        }
        if (r) freeReplyObject(r);
    }
out:
    cli_close(&k);
    return rc;
}

/* ---- stats ------------------------------------------------------------------ */

/* `benefitd stats [-c CONFIG] [--json]`: the Pstats:RULE:VARIANT hashes and
 * the Pstats:RULE:VARIANT:held sets (holdout size), read with SCAN, and the
 * Ploop:stats hash (redemption_unknown). */
int stats_main(int argc, char **argv) {
    const char *config = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        else if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) config = argv[++i];
        else {
            fputs("usage: benefitd stats [-c CONFIG] [--json]\n", stderr);
            return 1;
        }
    }
    cli_t k;
    int rc = 1;
    if (cli_open(&k, config, "stats") != 0) {
        cli_close(&k);
        return 1;
    }
    stats_table *t = stats_table_new();
    strbuf pat;
    sb_init(&pat);
    sb_printf(&pat, "%sstats:*", k.cfg.key_prefix);
    size_t plen = strlen(k.cfg.key_prefix) + 6;
    char cursor[32] = "0";
    int ok = 1;
    do {
        redisReply *r = redisCommand(k.c, "SCAN %s MATCH %s COUNT 1000", cursor, pat.s);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            fprintf(stderr, "benefitd stats: SCAN failed: %s\n", r && r->type == REDIS_REPLY_ERROR ? r->str : k.c->errstr);
            if (r) freeReplyObject(r);
            ok = 0;
            break;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        const redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            const char *key = keys->element[i]->str;
            size_t klen = strlen(key);
            if (klen <= plen) continue;
            /* RULE:VARIANT[:held]; rule ids have no ':' */
            char *rv = xstrdup(key + plen);
            char *colon = strchr(rv, ':');
            if (!colon) {
                free(rv);
                continue;
            }
            *colon = '\0';
            char *variant = colon + 1;
            size_t vl = strlen(variant);
            if (vl > 5 && !strcmp(variant + vl - 5, ":conv")) {
                /* holdout members converted: their count is the hash's `converted` */
            } else if (vl > 5 && !strcmp(variant + vl - 5, ":held")) {
                variant[vl - 5] = '\0';
                redisReply *c = redisCommand(k.c, "SCARD %s", key);
                if (c && c->type == REDIS_REPLY_INTEGER) stats_table_add(t, rv, variant, "holdout size", c->integer);
                if (c) freeReplyObject(c);
            } else {
                redisReply *h = redisCommand(k.c, "HGETALL %s", key);
                if (h && h->type == REDIS_REPLY_ARRAY)
                    for (size_t j = 0; j + 1 < h->elements; j += 2)
                        stats_table_add(t, rv, variant, h->element[j]->str, atoll(h->element[j + 1]->str));
                if (h) freeReplyObject(h);
            }
            free(rv);
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    if (ok) {
        /* counters of no rule (the closed loop's redemptions of unknown grants) */
        redisReply *h = redisCommand(k.c, "HGETALL %sloop:stats", k.cfg.key_prefix);
        if (h && h->type == REDIS_REPLY_ARRAY)
            for (size_t j = 0; j + 1 < h->elements; j += 2)
                stats_table_add(t, "", "-", h->element[j]->str, atoll(h->element[j + 1]->str));
        if (h) freeReplyObject(h);
        stats_table_print(t, stdout, json);
        rc = 0;
    }
    sb_free(&pat);
    stats_table_free(t);
    cli_close(&k);
    return rc;
}
