/* benefitd_plugin.h - the one public header of benefitd's plugin API.
 *
 * A plugin is a shared object (.so) in the configured plugin directory that
 * exports one descriptor, `benefitd_plugin` (BD_PLUGIN_DEFINE below). The
 * daemon, `benefitd check` and `benefitd replay` load the same plugins, so a
 * rule that depends on a plugin is tested exactly as it will run.
 *
 * Contract, in the order the host calls things:
 *   init       once, with the plugin's config block (etc/benefitd.yaml,
 *              `plugins.load.NAME`) as JSON text. Return 0 and set *self, or
 *              non-zero with a message in err: the start (or check/replay)
 *              stops with "plugin NAME: <err>".
 *   functions  registered before rules load: usable in `where`, `audience`,
 *              values and templates. Called with already evaluated arguments.
 *   on_event   for every decoded event of a member, after an identify's
 *              traits are merged into the profile and before any rule is
 *              decided: read the event and profile, set derived traits, emit
 *              internal events, add to the blocklist, ask for a revisit.
 *   on_revisit when a time asked for with host->revisit_at has come and the
 *              member had no event that made it moot: the "sweep" of a member
 *              whose traits change with time alone (a tier's grace period).
 *   on_grant   after a grant was made (live: acknowledged by Redis). Only
 *              user_id (the recipient) and now_ms answer there; the event
 *              and trait calls give BD_MISSING and actions do nothing.
 *   fini       once, at exit.
 * Everything runs on the decision thread, one member at a time, in the
 * member's event order: callbacks need no locking and must not block.
 *
 * Versioning: api_version is the first member of the descriptor in every
 * version of this header, so the loader can read it from any plugin and
 * refuse one built against another version with a clear message. */
#ifndef BENEFITD_PLUGIN_H
#define BENEFITD_PLUGIN_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BD_PLUGIN_API_VERSION 1
#define BD_PLUGIN_SYMBOL "benefitd_plugin"

/* A value as expressions see it. BD_MISSING is "no such path / trait": a
 * comparison with it is false. Strings are NUL-terminated. */
typedef enum { BD_MISSING = 0, BD_NULL, BD_BOOL, BD_NUM, BD_STR } bd_kind;

typedef struct bd_value {
    bd_kind kind;
    int b;              /* BD_BOOL */
    double num;         /* BD_NUM */
    const char *str;    /* BD_STR: valid until the callback returns */
} bd_value;

/* The member being processed: its event (if any), its profile, and the
 * actions a plugin may take for it. Valid only during the callback. */
typedef struct bd_ctx bd_ctx;

/* An expression function. args are the evaluated arguments (BD_MISSING for a
 * missing path). Set *out (BD_MISSING when there is no answer) and return 0;
 * out->str must point to static storage or storage the plugin keeps until
 * the next call of the same function. */
typedef int (*bd_fn)(const bd_value *args, int nargs, bd_value *out);

typedef struct bd_function {
    const char *name;   /* lower case, [a-z_][a-z0-9_]*; must not shadow a built-in */
    int min_args, max_args;
    bd_fn fn;
} bd_function;

enum { BD_LOG_DEBUG = 0, BD_LOG_INFO = 1, BD_LOG_WARN = 2, BD_LOG_ERROR = 3 };

/* What the host offers; passed to init, valid until fini. */
typedef struct bd_host {
    int api_version;

    /* A key=value log line: event=<event> plugin=<name> <text>. */
    void (*log)(int level, const char *plugin, const char *event, const char *text);
    /* "30m", "7d", "2w" -> milliseconds; -1 when not a duration. */
    long long (*parse_duration_ms)(const char *text);

    /* The plugin's "now": the event's own time in on_event, the due time
     * asked for in on_revisit, the decision time in on_grant. Not the wall
     * clock, so the daemon and replay compute the same traits, and a
     * redelivered event the same ones again. */
    long long (*now_ms)(const bd_ctx *c);
    /* The member (never NULL). */
    const char *(*user_id)(const bd_ctx *c);
    /* The event: its name (NULL in on_revisit), its time (now_ms in
     * on_revisit), and any path as
     * expressions resolve it ("properties.total", "context.device.id",
     * "context.ip", "anonymous_id", "type"). */
    const char *(*event_name)(const bd_ctx *c);
    long long (*event_time_ms)(const bd_ctx *c);
    bd_value (*event_get)(const bd_ctx *c, const char *path);

    /* The member's profile: identify traits and derived traits, as `user.*`
     * in expressions. A set is persisted with the event (Redis live, memory
     * in replay). Names starting with '_' are the plugin's private state
     * (still readable as user._name); keep them small. */
    /* A string trait_get returns is valid until the same trait is set (or
     * the callback returns); objects and lists come as JSON text in a
     * buffer the next call reuses: copy what you keep. */
    bd_value (*trait_get)(const bd_ctx *c, const char *name);
    void (*trait_set)(bd_ctx *c, const char *name, bd_value v);

    /* Emits an internal track event for the same member, decided by the
     * rules right after the current one, at the same time. properties_json
     * is a JSON object text or NULL. tag makes its message id (and so the
     * grant ids it leads to) unique and stable: derive it from what caused
     * it (e.g. "tier:silver>gold:<ms>"), never from a counter. 0 or -1. */
    int (*emit)(bd_ctx *c, const char *event_name, const char *properties_json, const char *tag);
    /* Adds to the blocklist (kind "user", "device" or "ip"); live, shared by
     * every daemon through Redis. 0 or -1. */
    int (*block)(bd_ctx *c, const char *kind, const char *id, const char *reason);
    /* Asks for on_revisit for this member at due_ms. It replaces this
     * plugin's earlier request for the member (the last call of a callback
     * wins); due_ms < 0 cancels. Re-request on every evaluation. */
    void (*revisit_at)(bd_ctx *c, long long due_ms);
    /* A sliding-window distinct count kept by the host: records `member`
     * under (set, key) at ts_ms and returns how many distinct members were
     * recorded under (set, key) within window_ms up to ts_ms, this one
     * included. For velocity checks ("accounts per device in 24h"). */
    long long (*window_add)(bd_ctx *c, const char *set, const char *key, const char *member, long long ts_ms,
                            long long window_ms);
} bd_host;

typedef struct bd_plugin {
    int api_version;                 /* BD_PLUGIN_API_VERSION; always first */
    const char *name;                /* must equal the config key that loads it */
    const char *version;             /* the plugin's own version, logged at load */
    const char *description;
    int (*init)(const bd_host *host, const char *config_json, void **self, char *err, size_t errlen);
    int (*on_event)(void *self, bd_ctx *c);
    int (*on_revisit)(void *self, bd_ctx *c);
    void (*on_grant)(void *self, bd_ctx *c, const char *grant_json);
    void (*fini)(void *self);
    const bd_function *functions;    /* terminated by {NULL}; may be NULL */
} bd_plugin;

#define BD_PLUGIN_DEFINE(...) __attribute__((visibility("default"))) const bd_plugin benefitd_plugin = __VA_ARGS__

#ifdef __cplusplus
}
#endif
#endif
