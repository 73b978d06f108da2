/* kafkatool - Kafka test/demo helper for benefitd: an in-process mock cluster
 * with fault injection, a JSON Lines producer, and offset/lag probes.
 *
 * Deliberately self-contained (librdkafka + cJSON only, none of benefitd's own
 * sources) so the integration tests can stand up Kafka even while the daemon
 * itself is broken, and so the tool never shares a bug with the code it tests.
 *
 * Exit status: 0 success, 1 runtime failure, 2 usage error. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define MAX_XPROPS 64
#define MAX_TOPICS 64
#define MAX_KEY_FIELDS 16
#define DEFAULT_TIMEOUT_MS 10000

static const char *g_cmd = "kafkatool";

static void errf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void errf(const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "kafkatool %s: ", g_cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void usage(FILE *out) {
    fputs("usage:\n"
          "  kafkatool mock [--brokers N] [--topic NAME[:PARTITIONS[:REPLICATION]]]...\n"
          "                 [--bootstrap-file FILE] [--control-fifo PATH] [-X prop=val]...\n"
          "  kafkatool produce --brokers B --topic T [--key-field F1,F2] [--rate N]\n"
          "                 [--timeout MS] [--ts-out FILE] [-X prop=val]... [FILE|-]\n"
          "  kafkatool count --brokers B --topic T [--high] [-v] [--timeout MS] [-X prop=val]...\n"
          "  kafkatool committed --brokers B --topic T --group G [--lag] [-v]\n"
          "                 [--timeout MS] [-X prop=val]...\n"
          "control FIFO lines (mock): down ID | up ID | errors APIKEY ERR COUNT |\n"
          "                           clear APIKEY | rtt ID MS\n"
          "  APIKEY: number or Produce, Fetch, ListOffsets, Metadata, OffsetCommit,\n"
          "          OffsetFetch, FindCoordinator, JoinGroup, Heartbeat, LeaveGroup,\n"
          "          SyncGroup; ERR: number or name (NOT_LEADER_FOR_PARTITION, _TRANSPORT)\n",
          out);
}

/* Strict integer parsing: tests pass these from shell variables, and a typo
 * silently becoming 0 would make a fault-injection test pass vacuously. */
static int parse_long(const char *s, long min, long max, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) return -1;
    *out = v;
    return 0;
}

static int conf_set(rd_kafka_conf_t *conf, const char *key, const char *val) {
    char errstr[512];
    if (rd_kafka_conf_set(conf, key, val, errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
        errf("config %s=%s: %s", key, val, errstr);
        return -1;
    }
    return 0;
}

/* -X overrides are applied after the tool's defaults so they always win. */
static int conf_apply_xprops(rd_kafka_conf_t *conf, char **xprops, int n) {
    for (int i = 0; i < n; i++) {
        char *eq = strchr(xprops[i], '=');
        if (!eq || eq == xprops[i]) {
            errf("-X %s: expected prop=value", xprops[i]);
            return -1;
        }
        *eq = '\0';
        int rc = conf_set(conf, xprops[i], eq + 1);
        *eq = '=';
        if (rc) return -1;
    }
    return 0;
}

static rd_kafka_t *new_client(rd_kafka_type_t type, rd_kafka_conf_t *conf) {
    char errstr[512];
    /* rd_kafka_new owns conf only on success. */
    rd_kafka_t *rk = rd_kafka_new(type, conf, errstr, sizeof errstr);
    if (!rk) {
        errf("creating %s: %s", type == RD_KAFKA_PRODUCER ? "producer" : "consumer", errstr);
        rd_kafka_conf_destroy(conf);
    }
    return rk;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ------------------------------------------------------------------ mock */

static volatile sig_atomic_t g_stop;
static void on_stop_signal(int sig) { g_stop = sig; }

struct topic_spec {
    char name[256]; /* Kafka caps topic names at 249 bytes */
    long partitions, replication;
};

static const struct {
    const char *name;
    int16_t key;
} api_keys[] = {
    {"Produce", 0},      {"Fetch", 1},           {"ListOffsets", 2}, {"Metadata", 3},
    {"OffsetCommit", 8}, {"OffsetFetch", 9},     {"FindCoordinator", 10}, {"JoinGroup", 11},
    {"Heartbeat", 12},   {"LeaveGroup", 13},     {"SyncGroup", 14},  {"ApiVersion", 18},
};

static int parse_api_key(const char *s, int16_t *out) {
    long v;
    for (size_t i = 0; i < sizeof api_keys / sizeof api_keys[0]; i++)
        if (!strcasecmp(s, api_keys[i].name)) {
            *out = api_keys[i].key;
            return 0;
        }
    if (parse_long(s, 0, INT16_MAX, &v)) return -1;
    *out = (int16_t)v;
    return 0;
}

static int parse_err_code(const char *s, rd_kafka_resp_err_t *out) {
    const struct rd_kafka_err_desc *descs;
    size_t cnt;
    long v;
    if (!parse_long(s, INT_MIN, INT_MAX, &v)) {
        *out = (rd_kafka_resp_err_t)v;
        return 0;
    }
    if (!strncmp(s, "RD_KAFKA_RESP_ERR_", 18)) s += 18;
    rd_kafka_get_err_descs(&descs, &cnt);
    for (size_t i = 0; i < cnt; i++)
        if (descs[i].name && !strcasecmp(s, descs[i].name)) {
            *out = descs[i].code;
            return 0;
        }
    return -1;
}

/* One control command. Returns nothing: a bad command is logged and ignored
 * so one test's typo cannot take the cluster down under the other tests. */
static void control_command(rd_kafka_mock_cluster_t *mc, char *line) {
    char orig[1024], *save = NULL, *argv[5];
    int argc = 0;
    snprintf(orig, sizeof orig, "%s", line);
    for (char *tok = strtok_r(line, " \t\r", &save); tok && argc < 5; tok = strtok_r(NULL, " \t\r", &save))
        argv[argc++] = tok;
    if (argc == 0 || argv[0][0] == '#') return;

    long id, n;
    int16_t api;
    rd_kafka_resp_err_t code, err = RD_KAFKA_RESP_ERR_NO_ERROR;
    const char *verb = argv[0];
    if ((!strcmp(verb, "down") || !strcmp(verb, "up")) && argc == 2) {
        if (parse_long(argv[1], 0, INT32_MAX, &id)) goto bad;
        err = !strcmp(verb, "down") ? rd_kafka_mock_broker_set_down(mc, (int32_t)id)
                                    : rd_kafka_mock_broker_set_up(mc, (int32_t)id);
    } else if (!strcmp(verb, "rtt") && argc == 3) {
        if (parse_long(argv[1], 0, INT32_MAX, &id) || parse_long(argv[2], 0, INT_MAX, &n)) goto bad;
        err = rd_kafka_mock_broker_set_rtt(mc, (int32_t)id, (int)n);
    } else if (!strcmp(verb, "errors") && argc == 4) {
        if (parse_api_key(argv[1], &api) || parse_err_code(argv[2], &code) || parse_long(argv[3], 1, 1000000, &n))
            goto bad;
        rd_kafka_resp_err_t *codes = malloc((size_t)n * sizeof *codes);
        if (!codes) {
            errf("control: '%s': out of memory", orig);
            return;
        }
        for (long i = 0; i < n; i++) codes[i] = code;
        rd_kafka_mock_push_request_errors_array(mc, api, (size_t)n, codes);
        free(codes);
    } else if (!strcmp(verb, "clear") && argc == 2) {
        if (parse_api_key(argv[1], &api)) goto bad;
        rd_kafka_mock_clear_request_errors(mc, api);
    } else {
        goto bad;
    }
    /* Logged either way: the mock's stderr is the only record a failing
     * fault-injection test has of what was actually injected. */
    if (err) errf("control: '%s': %s", orig, rd_kafka_err2str(err));
    else errf("control: '%s': ok", orig);
    return;
bad:
    errf("control: ignoring bad command '%s' (see kafkatool --help)", orig);
}

struct fifo_reader {
    const char *path;
    int fd;
    char buf[1024];
    size_t len;
    int overflow; /* discarding the rest of an over-long line */
};

/* O_NONBLOCK so open() does not wait for a writer; on Linux a fresh reader
 * with no writer yet does not report POLLHUP, so polling it does not spin. */
static int fifo_open(struct fifo_reader *fr) {
    fr->fd = open(fr->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fr->fd < 0) {
        errf("opening control FIFO %s: %s", fr->path, strerror(errno));
        return -1;
    }
    fr->len = 0;
    fr->overflow = 0;
    return 0;
}

static int fifo_prepare(struct fifo_reader *fr) {
    struct stat st;
    if (mkfifo(fr->path, 0600) && errno != EEXIST) {
        errf("creating control FIFO %s: %s", fr->path, strerror(errno));
        return -1;
    }
    if (stat(fr->path, &st) || !S_ISFIFO(st.st_mode)) {
        errf("%s exists and is not a FIFO", fr->path);
        return -1;
    }
    return fifo_open(fr);
}

/* Drains what is readable; on EOF (every writer closed) reopens, because a
 * FIFO at EOF stays readable forever and would turn poll() into a busy loop. */
static int fifo_service(struct fifo_reader *fr, rd_kafka_mock_cluster_t *mc) {
    for (;;) {
        ssize_t n = read(fr->fd, fr->buf + fr->len, sizeof fr->buf - fr->len);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            errf("reading control FIFO %s: %s", fr->path, strerror(errno));
            return -1;
        }
        if (n == 0) {
            if (fr->len && !fr->overflow) { /* last line without a newline */
                fr->buf[fr->len] = '\0';
                control_command(mc, fr->buf);
            }
            close(fr->fd);
            return fifo_open(fr);
        }
        fr->len += (size_t)n;
        char *start = fr->buf, *nl;
        while ((nl = memchr(start, '\n', fr->len - (size_t)(start - fr->buf)))) {
            *nl = '\0';
            if (!fr->overflow) control_command(mc, start);
            fr->overflow = 0;
            start = nl + 1;
        }
        fr->len -= (size_t)(start - fr->buf);
        memmove(fr->buf, start, fr->len);
        if (fr->len == sizeof fr->buf) { /* keep one byte for the EOF terminator */
            errf("control: line longer than %zu bytes ignored", sizeof fr->buf - 1);
            fr->overflow = 1;
            fr->len = 0;
        }
    }
}

static int write_bootstrap(const char *file, const char *bootstraps) {
    if (!file) {
        if (printf("%s\n", bootstraps) < 0 || fflush(stdout)) {
            errf("writing bootstraps to stdout: %s", strerror(errno));
            return -1;
        }
        return 0;
    }
    /* tmp + rename: tests poll for the file, and must never read half of it. */
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", file, (long)getpid()) >= (int)sizeof tmp) {
        errf("bootstrap file path too long: %s", file);
        return -1;
    }
    FILE *f = fopen(tmp, "w");
    if (!f) {
        errf("creating %s: %s", tmp, strerror(errno));
        return -1;
    }
    int bad = fprintf(f, "%s\n", bootstraps) < 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, file)) {
        errf("writing bootstrap file %s: %s", file, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

static int cmd_mock(int argc, char **argv) {
    static const struct option opts[] = {
        {"brokers", required_argument, NULL, 'b'},      {"topic", required_argument, NULL, 't'},
        {"bootstrap-file", required_argument, NULL, 'f'}, {"control-fifo", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},               {NULL, 0, NULL, 0},
    };
    long brokers = 1;
    const char *bs_file = NULL, *fifo_path = NULL;
    struct topic_spec topics[MAX_TOPICS];
    char *xprops[MAX_XPROPS];
    int ntopics = 0, nx = 0, c;

    while ((c = getopt_long(argc, argv, "b:t:f:c:X:h", opts, NULL)) != -1) {
        switch (c) {
        case 'X':
            if (nx == MAX_XPROPS) {
                errf("at most %d -X", MAX_XPROPS);
                return 2;
            }
            xprops[nx++] = optarg;
            break;
        case 'b':
            if (parse_long(optarg, 1, 64, &brokers)) {
                errf("--brokers %s: expected 1..64", optarg);
                return 2;
            }
            break;
        case 't': {
            if (ntopics == MAX_TOPICS) {
                errf("at most %d --topic", MAX_TOPICS);
                return 2;
            }
            /* Kafka topic names cannot contain ':', so splitting on it is
             * safe. Split a copy: editing argv in place shows up in ps. */
            struct topic_spec *t = &topics[ntopics++];
            if (snprintf(t->name, sizeof t->name, "%s", optarg) >= (int)sizeof t->name) {
                errf("--topic %s: name too long", optarg);
                return 2;
            }
            char *p = strchr(t->name, ':'), *r = NULL;
            t->partitions = 4;
            t->replication = 1;
            if (p) {
                *p++ = '\0';
                if ((r = strchr(p, ':'))) *r++ = '\0';
                if (parse_long(p, 1, 100000, &t->partitions) || (r && parse_long(r, 1, 64, &t->replication))) {
                    errf("--topic %s: expected NAME[:PARTITIONS[:REPLICATION]]", optarg);
                    return 2;
                }
            }
            if (!t->name[0]) {
                errf("--topic %s: empty topic name", optarg);
                return 2;
            }
            break;
        }
        case 'f': bs_file = optarg; break;
        case 'c': fifo_path = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        errf("unexpected argument '%s'", argv[optind]);
        return 2;
    }
    for (int i = 0; i < ntopics; i++)
        if (topics[i].replication > brokers) {
            errf("topic %s: replication %ld > %ld brokers", topics[i].name, topics[i].replication, brokers);
            return 2;
        }

    /* Handlers before any librdkafka thread exists; librdkafka blocks signals
     * in its own threads, so SIGINT/SIGTERM land on this one and break poll(). */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGINT, &sa, NULL) || sigaction(SIGTERM, &sa, NULL)) {
        errf("sigaction: %s", strerror(errno));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* The host handle never connects anywhere, so its "No bootstrap.servers
     * configured" notice would only mislead whoever reads a failed test's
     * log; warnings and errors still show (-X log_level=7 -X debug=mock for more). */
    if (conf_set(conf, "client.id", "kafkatool-mock") || conf_set(conf, "log_level", "4") ||
        conf_apply_xprops(conf, xprops, nx)) {
        rd_kafka_conf_destroy(conf);
        return 2;
    }
    rd_kafka_t *rk = new_client(RD_KAFKA_PRODUCER, conf);
    if (!rk) return 1;

    int rc = 1;
    struct fifo_reader fr = {.path = fifo_path, .fd = -1};
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, (int)brokers);
    if (!mc) {
        errf("rd_kafka_mock_cluster_new(%ld brokers) failed", brokers);
        goto out;
    }
    for (int i = 0; i < ntopics; i++) {
        rd_kafka_resp_err_t err =
            rd_kafka_mock_topic_create(mc, topics[i].name, (int)topics[i].partitions, (int)topics[i].replication);
        if (err) {
            errf("creating topic %s (%ld partitions): %s", topics[i].name, topics[i].partitions,
                 rd_kafka_err2str(err));
            goto out;
        }
    }
    /* The FIFO exists before the bootstrap file: the file is the readiness
     * signal, so a test that saw it may write commands straight away. */
    if (fifo_path && fifo_prepare(&fr)) goto out;
    const char *bootstraps = rd_kafka_mock_cluster_bootstraps(mc);
    if (write_bootstrap(bs_file, bootstraps)) goto out;
    errf("%ld broker(s) at %s, %d topic(s)%s%s", brokers, bootstraps, ntopics, fifo_path ? ", control FIFO " : "",
         fifo_path ? fifo_path : "");

    rc = 0;
    while (!g_stop) {
        struct pollfd pfd = {.fd = fr.fd, .events = POLLIN};
        int n = poll(&pfd, fr.fd >= 0 ? 1 : 0, 1000);
        if (n < 0) {
            if (errno == EINTR) continue;
            errf("poll: %s", strerror(errno));
            rc = 1;
            break;
        }
        if (n > 0 && fifo_service(&fr, mc)) {
            rc = 1;
            break;
        }
    }
    if (g_stop) errf("signal %d, shutting down", (int)g_stop);
    if (bs_file) unlink(bs_file); /* a stale file would look like a live cluster */

out:
    if (fr.fd >= 0) close(fr.fd);
    if (mc) rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return rc;
}

/* --------------------------------------------------------------- produce */

struct produce_stats {
    long delivered, failed, reported;
    FILE *ts_out; /* --ts-out: "messageId<TAB>produce time ms" per delivered message */
};

/* --ts-out: what a message carries to its delivery report. The time is the
 * wall clock just before produce(), which is where librdkafka takes a
 * message's CreateTime (the report's own timestamp is the mock's
 * LogAppendTime placeholder). */
typedef struct sent_ts {
    int64_t ms;
    char mid[];
} sent_ts;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    struct produce_stats *st = opaque;
    sent_ts *mid = m->_private; /* --ts-out (ours to free) */
    if (!m->err) {
        st->delivered++;
        if (st->ts_out && mid) fprintf(st->ts_out, "%s\t%" PRId64 "\n", mid->mid, mid->ms);
        free(mid);
        return;
    }
    free(mid);
    st->failed++;
    /* A dead broker fails thousands of messages the same way; a few lines say it. */
    if (st->reported++ < 5)
        errf("delivery failed (%zu bytes, partition %" PRId32 "): %s", m->len, m->partition, rd_kafka_err2str(m->err));
}

/* The key is the member id so all of one member's events land on one
 * partition, as in production; anything unparsable goes keyless on purpose,
 * because tests need malformed events to reach the daemon. */
static const char *line_key(const char *line, size_t len, char **fields, int nfields, cJSON **rootp) {
    *rootp = cJSON_ParseWithLength(line, len);
    if (!cJSON_IsObject(*rootp)) return NULL;
    for (int i = 0; i < nfields; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(*rootp, fields[i]);
        if (cJSON_IsString(v) && v->valuestring[0]) return v->valuestring;
    }
    return NULL;
}

/* Sleeps until the pacing deadline, serving delivery reports meanwhile. */
static void pace(rd_kafka_t *rk, int64_t deadline_ns) {
    for (int64_t left; (left = deadline_ns - now_ns()) > 0;) {
        if (left >= 1000000) {
            rd_kafka_poll(rk, (int)(left / 1000000 > 100 ? 100 : left / 1000000));
        } else {
            struct timespec ts = {0, (long)left};
            nanosleep(&ts, NULL);
        }
    }
}

static int cmd_produce(int argc, char **argv) {
    static const struct option opts[] = {
        {"brokers", required_argument, NULL, 'b'}, {"topic", required_argument, NULL, 't'},
        {"key-field", required_argument, NULL, 'k'}, {"rate", required_argument, NULL, 'r'},
        {"timeout", required_argument, NULL, 'T'}, {"help", no_argument, NULL, 'h'},
        {"ts-out", required_argument, NULL, 'o'}, {NULL, 0, NULL, 0},
    };
    const char *brokers = NULL, *topic = NULL, *ts_path = NULL;
    char *xprops[MAX_XPROPS], keyspec[512] = "userId,anonymousId", *fields[MAX_KEY_FIELDS];
    int nx = 0, nfields = 0, c;
    double rate = 0;
    long timeout_ms = 30000;

    while ((c = getopt_long(argc, argv, "b:t:k:r:T:X:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'b': brokers = optarg; break;
        case 'o': ts_path = optarg; break;
        case 't': topic = optarg; break;
        case 'k':
            if (snprintf(keyspec, sizeof keyspec, "%s", optarg) >= (int)sizeof keyspec) {
                errf("--key-field too long");
                return 2;
            }
            break;
        case 'r': {
            char *end;
            rate = strtod(optarg, &end);
            if (end == optarg || *end || !(rate > 0)) {
                errf("--rate %s: expected messages per second > 0", optarg);
                return 2;
            }
            break;
        }
        case 'T':
            if (parse_long(optarg, 1, 3600000, &timeout_ms)) {
                errf("--timeout %s: expected milliseconds 1..3600000", optarg);
                return 2;
            }
            break;
        case 'X':
            if (nx == MAX_XPROPS) {
                errf("at most %d -X", MAX_XPROPS);
                return 2;
            }
            xprops[nx++] = optarg;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!brokers || !topic) {
        errf("--brokers and --topic are required");
        return 2;
    }
    if (argc - optind > 1) {
        errf("at most one input file");
        return 2;
    }
    const char *path = optind < argc ? argv[optind] : "-";
    char *save = NULL;
    for (char *f = strtok_r(keyspec, ",", &save); f; f = strtok_r(NULL, ",", &save)) {
        if (nfields == MAX_KEY_FIELDS) {
            errf("at most %d key fields", MAX_KEY_FIELDS);
            return 2;
        }
        fields[nfields++] = f;
    }

    FILE *in = strcmp(path, "-") ? fopen(path, "r") : stdin;
    if (!in) {
        errf("opening %s: %s", path, strerror(errno));
        return 1;
    }

    struct produce_stats st = {0};
    if (ts_path && !(st.ts_out = fopen(ts_path, "w"))) {
        errf("opening %s: %s", ts_path, strerror(errno));
        if (in != stdin) fclose(in);
        return 1;
    }
    char tmo[32];
    snprintf(tmo, sizeof tmo, "%ld", timeout_ms);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_opaque(conf, &st);
    /* message.max.bytes: oversize test events (up to 1 MiB lines) must reach
     * the broker, which is where a real size rejection would happen. The
     * shorter message timeout keeps a broker-down test from hanging 5 min. */
    if (conf_set(conf, "bootstrap.servers", brokers) || conf_set(conf, "linger.ms", "5") ||
        conf_set(conf, "message.max.bytes", "2097152") || conf_set(conf, "message.timeout.ms", tmo) ||
        conf_apply_xprops(conf, xprops, nx)) {
        rd_kafka_conf_destroy(conf);
        if (in != stdin) fclose(in);
        return 2;
    }
    rd_kafka_t *rk = new_client(RD_KAFKA_PRODUCER, conf);
    if (!rk) {
        if (in != stdin) fclose(in);
        return 1;
    }

    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0, sent = 0, skipped = 0;
    int64_t t0 = now_ns();
    int rc = 0;
    while ((len = getline(&line, &cap, in)) != -1) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
        if (len == 0) { /* a blank line is an editing artifact, not an event */
            skipped++;
            continue;
        }
        if (rate > 0) pace(rk, t0 + (int64_t)((double)sent * 1e9 / rate));

        cJSON *root;
        const char *key = line_key(line, (size_t)len, fields, nfields, &root);
        sent_ts *mid = NULL;
        if (st.ts_out && root) {
            const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, "messageId");
            if (cJSON_IsString(j) && (mid = malloc(sizeof *mid + strlen(j->valuestring) + 1))) {
                struct timespec now;
                clock_gettime(CLOCK_REALTIME, &now);
                mid->ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
                strcpy(mid->mid, j->valuestring);
            }
        }
        rd_kafka_resp_err_t err;
        for (;;) {
            err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                    RD_KAFKA_V_KEY(key, key ? strlen(key) : 0), RD_KAFKA_V_VALUE(line, (size_t)len),
                                    RD_KAFKA_V_OPAQUE(mid), RD_KAFKA_V_END);
            if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) break;
            rd_kafka_poll(rk, 100); /* wait for deliveries to free queue space */
        }
        if (err) free(mid); /* never queued: no delivery report will free it */
        cJSON_Delete(root);
        sent++;
        if (err) {
            st.failed++;
            if (st.reported++ < 5) errf("line %ld (%zd bytes): %s", lineno, len, rd_kafka_err2str(err));
        }
        rd_kafka_poll(rk, 0);
    }
    if (ferror(in)) {
        errf("reading %s: %s", path, strerror(errno));
        rc = 1;
    }
    free(line);
    if (in != stdin) fclose(in);

    /* Every queued message ends by delivery or message.timeout.ms; the margin
     * only matters if -X stretched that timeout. */
    rd_kafka_resp_err_t ferr = rd_kafka_flush(rk, (int)(timeout_ms + 10000));
    int left = rd_kafka_outq_len(rk);
    if (ferr || left > 0) {
        errf("flush: %s, %d message(s) still queued", rd_kafka_err2str(ferr), left);
        rc = 1;
    }
    rd_kafka_destroy(rk);
    if (st.ts_out && fclose(st.ts_out) != 0) {
        errf("writing %s: %s", ts_path, strerror(errno));
        rc = 1;
    }

    if (st.failed) {
        errf("produced %ld, failed %ld", st.delivered, st.failed);
        rc = 1;
    } else {
        fprintf(stderr, "produced %ld\n", st.delivered);
    }
    if (skipped) errf("skipped %ld blank line(s)", skipped);
    return rc;
}

/* ------------------------------------------------------- count/committed */

/* Partition count of an existing topic. The probes use a consumer handle so
 * that against a real broker asking about a typo does not create the topic.
 * The mock creates it anyway (it only speaks Metadata v0-2, where asking
 * implies auto-create), so there a missing topic reads as 4 empty partitions. */
static int partition_count(rd_kafka_t *rk, const char *topic, int timeout_ms, int *out) {
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    if (!rkt) {
        errf("topic %s: %s", topic, rd_kafka_err2str(rd_kafka_last_error()));
        return -1;
    }
    int64_t deadline = now_ns() + (int64_t)timeout_ms * 1000000;
    int rc = -1;
    for (;;) {
        const struct rd_kafka_metadata *md = NULL;
        int left = (int)((deadline - now_ns()) / 1000000);
        rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &md, left > 0 ? left : 1);
        if (!err && md->topic_cnt == 1) err = md->topics[0].err;
        if (!err && md->topic_cnt == 1) {
            *out = md->topics[0].partition_cnt;
            rc = 0;
        }
        if (md) rd_kafka_metadata_destroy(md);
        if (!rc) break;
        if (err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
            errf("topic %s does not exist", topic);
            break;
        }
        /* Leader elections and reconnects after a broker fault are transient. */
        if (now_ns() + 200000000 >= deadline) {
            errf("metadata for %s: %s", topic, err ? rd_kafka_err2str(err) : "no topic in response");
            break;
        }
        nanosleep(&(struct timespec){0, 200000000}, NULL);
    }
    rd_kafka_topic_destroy(rkt);
    return rc;
}

struct probe_opts {
    const char *brokers, *topic, *group;
    char *xprops[MAX_XPROPS];
    int nx, lag, high, verbose;
    long timeout_ms;
};

static int parse_probe_opts(int argc, char **argv, struct probe_opts *o, int want_group) {
    static const struct option opts[] = {
        {"brokers", required_argument, NULL, 'b'}, {"topic", required_argument, NULL, 't'},
        {"group", required_argument, NULL, 'g'},   {"lag", no_argument, NULL, 'l'},
        {"high", no_argument, NULL, 'H'},
        {"verbose", no_argument, NULL, 'v'},       {"timeout", required_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    int c;
    o->timeout_ms = DEFAULT_TIMEOUT_MS;
    while ((c = getopt_long(argc, argv, "b:t:g:lHvT:X:h", opts, NULL)) != -1) {
        switch (c) {
        case 'b': o->brokers = optarg; break;
        case 't': o->topic = optarg; break;
        case 'g':
        case 'l':
            if (!want_group) {
                errf("--%s only applies to 'committed'", c == 'g' ? "group" : "lag");
                return 2;
            }
            if (c == 'g') o->group = optarg;
            else o->lag = 1;
            break;
        case 'H':
            if (want_group) {
                errf("--high only applies to 'count'");
                return 2;
            }
            o->high = 1;
            break;
        case 'v': o->verbose = 1; break;
        case 'T':
            if (parse_long(optarg, 1, 3600000, &o->timeout_ms)) {
                errf("--timeout %s: expected milliseconds 1..3600000", optarg);
                return 2;
            }
            break;
        case 'X':
            if (o->nx == MAX_XPROPS) {
                errf("at most %d -X", MAX_XPROPS);
                return 2;
            }
            o->xprops[o->nx++] = optarg;
            break;
        case 'h': usage(stdout); return 1;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        errf("unexpected argument '%s'", argv[optind]);
        return 2;
    }
    if (!o->brokers || !o->topic || (want_group && !o->group)) {
        errf("--brokers, --topic%s are required", want_group ? " and --group" : "");
        return 2;
    }
    return 0;
}

static rd_kafka_t *probe_client(const struct probe_opts *o) {
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* Never subscribes and never commits: the probe must not disturb the
     * group it is looking at. */
    if (conf_set(conf, "bootstrap.servers", o->brokers) ||
        (o->group && (conf_set(conf, "group.id", o->group) || conf_set(conf, "enable.auto.commit", "false") ||
                      conf_set(conf, "enable.auto.offset.store", "false"))) ||
        conf_apply_xprops(conf, (char **)o->xprops, o->nx)) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    return new_client(RD_KAFKA_CONSUMER, conf);
}

static int watermarks(rd_kafka_t *rk, const char *topic, int32_t p, int timeout_ms, int64_t *lo, int64_t *hi) {
    rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(rk, topic, p, lo, hi, timeout_ms);
    if (err) {
        errf("watermarks of %s [%" PRId32 "]: %s", topic, p, rd_kafka_err2str(err));
        return -1;
    }
    return 0;
}

static int cmd_count(int argc, char **argv) {
    struct probe_opts o = {0};
    int prc = parse_probe_opts(argc, argv, &o, 0);
    if (prc) return prc == 1 ? 0 : prc;
    rd_kafka_t *rk = probe_client(&o);
    if (!rk) return 1;

    int nparts, rc = 1;
    int64_t total = 0, lo, hi;
    if (partition_count(rk, o.topic, (int)o.timeout_ms, &nparts)) goto out;
    for (int32_t p = 0; p < nparts; p++) {
        if (watermarks(rk, o.topic, p, (int)o.timeout_ms, &lo, &hi)) goto out;
        if (o.verbose) fprintf(stderr, "%s [%" PRId32 "] low %" PRId64 " high %" PRId64 "\n", o.topic, p, lo, hi);
        /* --high: offsets start at 0, so the high watermark counts every
         * message ever appended, even ones the mock's ~5 MB-per-partition
         * retention has already dropped from the low end. */
        total += o.high ? hi : hi - lo;
    }
    printf("%" PRId64 "\n", total);
    rc = 0;
out:
    rd_kafka_destroy(rk);
    return rc;
}

static int cmd_committed(int argc, char **argv) {
    struct probe_opts o = {0};
    int prc = parse_probe_opts(argc, argv, &o, 1);
    if (prc) return prc == 1 ? 0 : prc;
    rd_kafka_t *rk = probe_client(&o);
    if (!rk) return 1;

    int nparts, rc = 1;
    rd_kafka_resp_err_t err;
    rd_kafka_topic_partition_list_t *parts = NULL;
    if (partition_count(rk, o.topic, (int)o.timeout_ms, &nparts)) goto out;
    parts = rd_kafka_topic_partition_list_new(nparts);
    for (int32_t p = 0; p < nparts; p++) rd_kafka_topic_partition_list_add(parts, o.topic, p);
    err = rd_kafka_committed(rk, parts, (int)o.timeout_ms);
    if (err) {
        errf("committed offsets of group %s on %s: %s", o.group, o.topic, rd_kafka_err2str(err));
        goto out;
    }
    int64_t sum = 0, lag = 0;
    for (int i = 0; i < parts->cnt; i++) {
        const rd_kafka_topic_partition_t *tp = &parts->elems[i];
        if (tp->err) {
            errf("committed offset of group %s on %s [%" PRId32 "]: %s", o.group, o.topic, tp->partition,
                 rd_kafka_err2str(tp->err));
            goto out;
        }
        int64_t committed = tp->offset >= 0 ? tp->offset : -1, lo = 0, hi = 0;
        if (committed >= 0) sum += committed;
        if (o.lag) {
            if (watermarks(rk, o.topic, tp->partition, (int)o.timeout_ms, &lo, &hi)) goto out;
            /* No commit, or a commit behind retention, means the group would
             * start from the oldest message still there. */
            lag += hi - (committed > lo ? committed : lo);
        }
        if (o.verbose) {
            fprintf(stderr, "%s [%" PRId32 "] committed ", o.topic, tp->partition);
            if (committed >= 0) fprintf(stderr, "%" PRId64, committed);
            else fputs("none", stderr);
            if (o.lag) fprintf(stderr, " low %" PRId64 " high %" PRId64, lo, hi);
            fputc('\n', stderr);
        }
    }
    printf("%" PRId64 "\n", o.lag ? lag : sum);
    rc = 0;
out:
    if (parts) rd_kafka_topic_partition_list_destroy(parts);
    /* Never joined, so there is nothing to leave; an error here still means
     * the group coordinator misbehaved, which a test would want to know. */
    if ((err = rd_kafka_consumer_close(rk))) {
        errf("closing consumer of group %s: %s", o.group, rd_kafka_err2str(err));
        rc = 1;
    }
    rd_kafka_destroy(rk);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {{"mock", cmd_mock}, {"produce", cmd_produce}, {"count", cmd_count}, {"committed", cmd_committed}};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(argv[1], cmds[i].name)) {
            g_cmd = cmds[i].name;
            return cmds[i].fn(argc - 1, argv + 1);
        }
    fprintf(stderr, "kafkatool: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
