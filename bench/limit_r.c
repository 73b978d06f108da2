/* limit_r - limit R of `make bench`: pipelined Redis writes of grant-sized
 * stream entries, counted per second, on the same redis-server the daemon
 * writes to.
 *
 *   limit_r --port P --count N --payloads GRANTS.jsonl xadd
 *   limit_r --port P --count N --payloads GRANTS.jsonl --script LUA_FILE evalsha
 *
 * xadd:    XADD bench:xadd * grant <payload>: the raw write.
 * evalsha: EVALSHA of the daemon's claim+push script (the driver extracts it
 *          from daemon/sink/redis_sink.c, so it is the same text) with the
 *          daemon's arguments: a fresh claim key per write, stream output.
 * Payloads are real grants (one per line, cycled). --window requests are kept
 * in flight (default 1000), like the daemon's pipelined async writes.
 * Prints one JSON object: ops, seconds, rate. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (!b || fread(b, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "limit_r: reading %s failed\n", path);
        exit(1);
    }
    b[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return b;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *payload_path = NULL, *script_path = NULL;
    int port = 6379;
    long count = 100000, window = 1000;
    static const struct option opts[] = {{"host", 1, 0, 'h'},     {"port", 1, 0, 'p'},   {"count", 1, 0, 'n'},
                                         {"payloads", 1, 0, 'P'}, {"script", 1, 0, 's'}, {"window", 1, 0, 'w'},
                                         {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "h:p:n:P:s:w:", opts, NULL)) != -1) {
        switch (c) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'n': count = atol(optarg); break;
        case 'P': payload_path = optarg; break;
        case 's': script_path = optarg; break;
        case 'w': window = atol(optarg); break;
        default: return 2;
        }
    }
    if (optind != argc - 1 || !payload_path || count <= 0 || window <= 0 ||
        (strcmp(argv[optind], "xadd") && strcmp(argv[optind], "evalsha")) ||
        (!strcmp(argv[optind], "evalsha") && !script_path)) {
        fprintf(stderr, "usage: limit_r --port P --count N --payloads FILE [--script LUA] [--window W] xadd|evalsha\n");
        return 2;
    }
    int eval = !strcmp(argv[optind], "evalsha");

    size_t plen;
    char *pbuf = slurp(payload_path, &plen);
    size_t np = 0, capp = 1024;
    char **pl = malloc(capp * sizeof *pl);
    size_t *pll = malloc(capp * sizeof *pll);
    for (char *s = pbuf, *e; *s; s = e + 1) {
        e = strchr(s, '\n');
        if (!e) e = s + strlen(s);
        if (e > s) {
            if (np == capp) {
                capp *= 2;
                pl = realloc(pl, capp * sizeof *pl);
                pll = realloc(pll, capp * sizeof *pll);
            }
            pl[np] = s;
            pll[np++] = (size_t)(e - s);
        }
        if (!*e) break;
    }
    if (!np) {
        fprintf(stderr, "limit_r: no payloads in %s\n", payload_path);
        return 1;
    }

    redisContext *rc = redisConnect(host, port);
    if (!rc || rc->err) {
        fprintf(stderr, "limit_r: connect: %s\n", rc ? rc->errstr : "oom");
        return 1;
    }
    char sha[41] = "";
    if (eval) {
        size_t slen;
        char *script = slurp(script_path, &slen);
        redisReply *r = redisCommand(rc, "SCRIPT LOAD %b", script, slen);
        if (!r || r->type != REDIS_REPLY_STRING || r->len != 40) {
            fprintf(stderr, "limit_r: SCRIPT LOAD failed: %s\n", r && r->str ? r->str : rc->errstr);
            return 1;
        }
        memcpy(sha, r->str, 40);
        freeReplyObject(r);
        free(script);
    }

    char claim[96], num[32];
    long sent = 0, done = 0, errors = 0;
    double t0 = now_s();
    while (done < count) {
        while (sent < count && sent - done < window) {
            size_t k = (size_t)sent % np;
            if (eval) {
                /* KEYS: claim, queue; ARGV: ttl_ms, kind, maxlen, field, value
                 * - what redis_sink_push sends for a stream channel. */
                int cl = snprintf(claim, sizeof claim, "bench:{u:%ld}:grant:g%031ld", sent % 100000, sent);
                int nl = snprintf(num, sizeof num, "%lld", 2592000000LL);
                const char *av[] = {"EVALSHA", sha, "2", claim, "bench:grants:email", num, "stream", "0", "grant", pl[k]};
                size_t al[] = {7, 40, 1, (size_t)cl, 18, (size_t)nl, 6, 1, 5, pll[k]};
                redisAppendCommandArgv(rc, 10, av, al);
            } else {
                const char *av[] = {"XADD", "bench:xadd", "*", "grant", pl[k]};
                size_t al[] = {4, 10, 1, 5, pll[k]};
                redisAppendCommandArgv(rc, 5, av, al);
            }
            sent++;
        }
        /* Read what has arrived; block for at least one reply. */
        void *r;
        if (redisGetReply(rc, &r) != REDIS_OK) {
            fprintf(stderr, "limit_r: %s\n", rc->errstr);
            return 1;
        }
        if (((redisReply *)r)->type == REDIS_REPLY_ERROR && errors++ < 3)
            fprintf(stderr, "limit_r: %s\n", ((redisReply *)r)->str);
        freeReplyObject(r);
        done++;
        while (done < sent) {
            if (redisGetReplyFromReader(rc, &r) != REDIS_OK) {
                fprintf(stderr, "limit_r: %s\n", rc->errstr);
                return 1;
            }
            if (!r) break;
            if (((redisReply *)r)->type == REDIS_REPLY_ERROR && errors++ < 3)
                fprintf(stderr, "limit_r: %s\n", ((redisReply *)r)->str);
            freeReplyObject(r);
            done++;
        }
    }
    double secs = now_s() - t0;
    printf("{\"mode\":\"%s\",\"ops\":%ld,\"errors\":%ld,\"seconds\":%.3f,\"rate\":%.0f}\n", eval ? "evalsha" : "xadd",
           done, errors, secs, secs > 0 ? (double)done / secs : 0.0);
    redisFree(rc);
    free(pl);
    free(pll);
    free(pbuf);
    return errors ? 1 : 0;
}
