/* config.h - the daemon configuration (etc/benefitd.yaml).
 * Every key is documented in README.md "Configuration reference". Loading
 * collects located errors; a config with any error is refused whole. */
#ifndef BENEFITD_CONFIG_H
#define BENEFITD_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include "diag.h"
#include "../decode/event.h"

typedef enum { OUT_STREAM, OUT_LIST } output_kind;

typedef struct channel_cfg {
    char *name;          /* channel name as used by grant.channel; "*" = default */
    output_kind kind;
    char *key;           /* key template: "{prefix}" and "{channel}" are substituted */
    long long maxlen;    /* streams: approximate MAXLEN, 0 = unbounded */
} channel_cfg_t;

typedef struct kv { char *key, *value; } kv_t;

/* plugins.load.NAME: the plugin's config block as JSON text (plugin API,
 * plugins/benefitd_plugin.h), and where it was written. */
typedef struct plugin_cfg {
    char *name;
    char *json;
    int line, col;
} plugin_cfg_t;

typedef struct config {
    char *path;                 /* file it was loaded from (NULL = built-in defaults) */
    /* kafka */
    char *brokers;              /* "127.0.0.1:9092" */
    char **topics; size_t n_topics;   /* ["events"] */
    char *group_id;             /* "benefitd" */
    kv_t *kafka_props; size_t n_kafka_props;  /* passed through to librdkafka */
    /* redis */
    char *redis_host;           /* "127.0.0.1" */
    int redis_port;             /* 6379 */
    char *redis_password;       /* NULL; or from password_file / password_env */
    int redis_db;               /* 0 */
    char *key_prefix;           /* "bd:" */
    long long claim_ttl_ms;     /* how long a grant id is remembered: 30d */
    long long max_inflight;     /* Redis writes in flight before Kafka pauses: 10000 */
    /* rules */
    char *rules_dir;            /* "rules" (relative to the config file's dir) */
    char *timezone;             /* "UTC" */
    /* output */
    channel_cfg_t *channels; size_t n_channels;  /* always holds a "*" default */
    char *dead_letter_key;      /* "{prefix}deadletter" resolved */
    long long dead_letter_maxlen; /* 100000 */
    /* decode */
    decoder_t decoder;
    char *decode_strs[10];      /* owned strings behind decoder.map */
    /* daemon */
    int allow_root;             /* false */
    long long shutdown_timeout_ms; /* 10s: how long SIGTERM waits for Redis acks */
    /* http: /metrics, /healthz, /readyz (core/http.h) */
    int http_enabled;           /* true */
    char *http_bind;            /* "127.0.0.1"; not loopback only with http_allow_remote */
    int http_port;              /* 9464; 0 = an ephemeral port (logged as event=http_listening) */
    int http_allow_remote;      /* false */
    /* daemon-wide policy (top level, docs/policy.md) */
    long long fcap_count;       /* frequency_cap N/period: grants per member across all rules; 0 = none */
    long long fcap_period_ms;
    int quiet_start_min;        /* quiet_hours HH:MM-HH:MM as minutes of the local day; -1 = none */
    int quiet_end_min;
    /* pools: {NAME: {low_stock: N}}; pool_low_stock_default applies to the others */
    kv_t *pool_low; size_t n_pool_low;   /* value: the threshold as a decimal string */
    long long pool_low_stock_default;    /* 100 */
    /* loop: the closed loop (docs/policy.md "The closed loop") */
    char **loop_redeem; size_t n_loop_redeem;   /* ["Coupon Redeemed", "Benefit Redeemed"] */
    char **loop_convert; size_t n_loop_convert; /* ["Order Completed"] */
    long long loop_window_ms;                   /* attribution_window: 7d */
    /* plugins: {dir, load: {NAME: {...}}} (docs/plugins.md) */
    char *plugin_dir;                           /* PREFIX/lib/benefitd/plugins; relative to this file */
    int plugin_dir_line, plugin_dir_col;
    plugin_cfg_t *plugins; size_t n_plugins;    /* in load order */
    /* profiles: the member profile cache (docs/profiles.md) */
    long long profile_cache_bytes;              /* cache_mb: 64 */
} config_t;

/* Defaults, as documented. */
void config_init_default(config_t *c);
/* Loads path over the defaults: c must have been set by config_init_default.
 * Returns 0, or -1 with errors in diag (c is then half-applied: free it). */
int config_load(config_t *c, const char *path, diag_t *diag);
void config_free(config_t *c);
/* The low-stock threshold of a pool (pools.NAME.low_stock, else the default). */
long long config_pool_low_stock(const config_t *c, const char *pool);
/* The output settings for a channel (falls back to "*"). */
const channel_cfg_t *config_channel(const config_t *c, const char *channel);
/* Appends the channel's key to out, with {prefix} and {channel} substituted
 * (channel NULL = "default"). */
struct strbuf;
void config_channel_key(const config_t *c, const channel_cfg_t *ch, const char *channel, struct strbuf *out);

#endif
