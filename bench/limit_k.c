/* limit_k - limit K of `make bench`: a bare librdkafka consumer-group consumer
 * that reads a topic and counts messages per second, with the batch API the
 * daemon uses (rd_kafka_consume_batch_queue on the consumer queue, 512 at a
 * time) and none of its work: no parsing, no decision, no Redis, no offset
 * store. It is the ceiling the daemon's live rate is compared with.
 *
 *   limit_k --brokers B --topic T --group G --expect N [--timeout S]
 *           [--dump-ts FILE] [--latency] [--lat-out FILE] [-X prop=value]
 *
 * Prints one JSON object on stdout: msgs, bytes, join_s (subscribe to first
 * message), read_s (first to last message), rate (msgs/read_s), peak_rss_kb
 * (what a bare consumer of this topic holds: the daemon's memory is compared
 * with it).
 * --dump-ts writes "messageId<TAB>kafka timestamp ms" per message: the
 * produce time the latency phase compares grants with. --latency adds
 * lat_p50_ms/lat_p99_ms/lat_p999_ms: receive time minus produce time, the
 * transport's own latency (the floor under the daemon's); --lat-out FILE
 * (implies --latency) also writes "produce ms<TAB>receive ms" per message.
 * -X prop=value sets a librdkafka property. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#define BATCH 512
#define MAX_X 16

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long peak_rss_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kb = atol(line + 6);
    if (f) fclose(f);
    return kb;
}

static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int set(rd_kafka_conf_t *c, const char *k, const char *v) {
    char err[256];
    if (rd_kafka_conf_set(c, k, v, err, sizeof err) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "limit_k: %s=%s: %s\n", k, v, err);
        return -1;
    }
    return 0;
}

/* The messageId of a Segment event, found without parsing: the tool must cost
 * no more than the consume itself. */
static int message_id(const char *p, size_t n, const char **out, size_t *len) {
    static const char key[] = "\"messageId\":\"";
    const char *end = p + n;
    for (const char *s = p; s + sizeof key - 1 < end; s++) {
        s = memchr(s, '"', (size_t)(end - s));
        if (!s) return -1;
        if ((size_t)(end - s) > sizeof key - 1 && !memcmp(s, key, sizeof key - 1)) {
            const char *v = s + sizeof key - 1, *q = memchr(v, '"', (size_t)(end - v));
            if (!q) return -1;
            *out = v;
            *len = (size_t)(q - v);
            return 0;
        }
    }
    return -1;
}

int main(int argc, char **argv) {
    const char *brokers = NULL, *topic = NULL, *group = NULL, *dump = NULL, *lat_path = NULL, *xprops[MAX_X];
    int nx = 0, want_lat = 0;
    long expect = 0;
    double timeout = 120;
    static const struct option opts[] = {{"brokers", 1, 0, 'b'}, {"topic", 1, 0, 't'}, {"group", 1, 0, 'g'},
                                         {"expect", 1, 0, 'n'},  {"timeout", 1, 0, 'T'}, {"dump-ts", 1, 0, 'd'},
                                         {"latency", 0, 0, 'l'}, {"lat-out", 1, 0, 'L'}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "b:t:g:n:T:d:X:lL:", opts, NULL)) != -1) {
        switch (c) {
        case 'b': brokers = optarg; break;
        case 't': topic = optarg; break;
        case 'g': group = optarg; break;
        case 'n': expect = atol(optarg); break;
        case 'T': timeout = atof(optarg); break;
        case 'd': dump = optarg; break;
        case 'l': want_lat = 1; break;
        case 'L': lat_path = optarg; want_lat = 1; break;
        case 'X':
            if (nx == MAX_X) return 2;
            xprops[nx++] = optarg;
            break;
        default: return 2;
        }
    }
    if (!brokers || !topic || !group || expect <= 0) {
        fprintf(stderr, "usage: limit_k --brokers B --topic T --group G --expect N [--timeout S] [--dump-ts FILE]\n"
                        "               [--latency] [--lat-out FILE] [-X prop=value]...\n");
        return 2;
    }
    FILE *df = NULL, *lf = NULL;
    if (dump && !(df = fopen(dump, "w"))) {
        perror(dump);
        return 1;
    }
    /* every message's produce and receive time, so that the bench can take
     * the floor over the same window as the daemon's grants */
    if (lat_path && !(lf = fopen(lat_path, "w"))) {
        perror(lat_path);
        return 1;
    }
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char err[512];
    /* The daemon's consumer settings, minus what only matters for its
     * exactly-once bookkeeping (it stores offsets itself; this reads only). */
    if (set(conf, "bootstrap.servers", brokers) || set(conf, "group.id", group) ||
        set(conf, "auto.offset.reset", "earliest") || set(conf, "enable.auto.commit", "false") ||
        set(conf, "enable.auto.offset.store", "false") || set(conf, "enable.partition.eof", "false"))
        return 2;
    for (int i = 0; i < nx; i++) {
        char *eq = strchr(xprops[i], '=');
        if (!eq) return 2;
        *eq = '\0';
        if (set(conf, xprops[i], eq + 1)) return 2;
    }
    int64_t *lat = want_lat ? malloc((size_t)expect * sizeof *lat) : NULL;
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "limit_k: %s\n", err);
        return 1;
    }
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(rk);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e) {
        fprintf(stderr, "limit_k: subscribe: %s\n", rd_kafka_err2str(e));
        return 1;
    }
    double t_sub = now_s(), t_first = 0, t_last = 0;
    long n = 0;
    unsigned long long bytes = 0;
    rd_kafka_message_t *msgs[BATCH];
    while (n < expect && now_s() - t_sub < timeout) {
        /* The batch call waits for a full batch or the timeout: 1 ms when measuring latency. */
        ssize_t got = rd_kafka_consume_batch_queue(q, want_lat ? 1 : 100, msgs, BATCH);
        for (ssize_t i = 0; i < got; i++) {
            rd_kafka_message_t *m = msgs[i];
            if (!m->err) {
                if (!n) t_first = now_s();
                if (lat && n < expect) {
                    int64_t ts = rd_kafka_message_timestamp(m, NULL), at = wall_ms();
                    lat[n] = at - ts;
                    if (lf) fprintf(lf, "%" PRId64 "\t%" PRId64 "\n", ts, at);
                }
                n++;
                bytes += m->len;
                if (df) {
                    const char *mid;
                    size_t ml;
                    if (!message_id(m->payload, m->len, &mid, &ml))
                        fprintf(df, "%.*s\t%" PRId64 "\n", (int)ml, mid, rd_kafka_message_timestamp(m, NULL));
                }
            }
            rd_kafka_message_destroy(m);
        }
        if (got > 0) t_last = now_s();
    }
    double read_s = n > 1 ? t_last - t_first : 0;
    printf("{\"msgs\":%ld,\"bytes\":%llu,\"join_s\":%.3f,\"read_s\":%.3f,\"rate\":%.0f,\"peak_rss_kb\":%ld}\n", n,
           bytes, t_first ? t_first - t_sub : -1.0, read_s, read_s > 0 ? (double)n / read_s : 0.0, peak_rss_kb());
    if (lat && n > 0) {
        long k = n < expect ? n : expect;
        qsort(lat, (size_t)k, sizeof *lat, cmp_i64);
        fprintf(stdout, "{\"lat_p50_ms\":%lld,\"lat_p99_ms\":%lld,\"lat_p999_ms\":%lld}\n",
                (long long)lat[k / 2], (long long)lat[(long)(k * 0.99)], (long long)lat[(long)(k * 0.999)]);
        free(lat);
    }
    if (df) fclose(df);
    if (lf && fclose(lf) != 0) {
        perror(lat_path);
        return 1;
    }
    rd_kafka_queue_destroy(q);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return n < expect ? 1 : 0;
}
