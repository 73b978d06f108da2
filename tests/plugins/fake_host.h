/* fake_host.h - an in-memory bd_host for the plugin tests (tests/plugins).
 *
 * It implements every callback of plugins/benefitd_plugin.h the way the
 * contract describes them, with everything observable:
 *   - profiles: traits per member id (a cJSON object each);
 *   - the current event: name, time, member and a JSON object whose dotted
 *     paths event_get resolves ("properties.total", "context.device.id");
 *   - captures: emits, blocks, log lines and revisit requests;
 *   - window_add: a real sliding-window distinct counter.
 * Strings handed to a plugin (trait values, event fields) stay valid until
 * the callback returns, and no longer: replaced trait values are freed when
 * the callback ends, so a plugin keeping one would be caught by ASan.
 * Contract breaches by a plugin (an emit whose properties are not a JSON
 * object, an empty tag, a call outside a callback, a bad block kind) are
 * counted in fh_violations(). The plugin itself is loaded as the daemon
 * would: dlopen $BD_PLUGIN_DIR/NAME.so, dlsym(BD_PLUGIN_SYMBOL), version. */
#ifndef FAKE_HOST_H
#define FAKE_HOST_H

#include <stddef.h>
#include "../../plugins/benefitd_plugin.h"

#define FH_MIN (60 * 1000LL)
#define FH_HOUR (60 * FH_MIN)
#define FH_DAY (24 * FH_HOUR)

typedef struct fh_plugin {
    void *handle;
    const bd_plugin *desc;
    void *self;
    int inited;
} fh_plugin;

typedef struct fh_emit {
    char *user, *name, *props, *tag;
    long long at;
} fh_emit;

typedef struct fh_block {
    char *user, *kind, *id, *reason;
} fh_block;

typedef struct fh_log {
    int level;
    char *plugin, *event, *text;
} fh_log;

extern const bd_host fh_host;

/* Loads $BD_PLUGIN_DIR/<name>.so (default build/plugins). 0, or -1 with err. */
int fh_load(fh_plugin *p, const char *name, char *err, size_t errlen);
/* init with config_json (NULL: "{}"); returns init's result. */
int fh_init(fh_plugin *p, const char *config_json, char *err, size_t errlen);
/* fini (if inited); the plugin stays loaded. */
void fh_fini(fh_plugin *p);
/* fini if needed, dlclose. */
void fh_unload(fh_plugin *p);

/* Forgets every member, window, capture and revisit request. */
void fh_reset(void);

/* One event of user at time t (now = event time = t). json: the rest of the
 * event as a JSON object text ({"properties":{...},"context":{...}}) or NULL.
 * Calls on_event; returns its result. */
int fh_event(fh_plugin *p, const char *user, long long t, const char *name, const char *json);
/* The same with a decision time apart from the event time. */
int fh_event_at(fh_plugin *p, const char *user, long long now, long long event_time, const char *name,
                const char *json);
/* How a request meets a pending one. The header: the earliest wins (the
 * default). on: a callback's request replaces the pending one, as the
 * daemon's ZADD does. fh_reset restores the default. */
void fh_set_revisit_replace(int on);
/* on_revisit of user at now (whether or not one was asked for). */
int fh_revisit(fh_plugin *p, const char *user, long long now);
/* The pending revisit of user (the earliest asked for), or -1. */
long long fh_revisit_due(const char *user);
/* The earliest revisit asked for during the last callback for user, or -1. */
long long fh_revisit_last(const char *user);
/* Runs user's pending revisits due at or before until, in time order (each
 * at its due time). Returns how many ran. */
int fh_run_revisits(fh_plugin *p, const char *user, long long until);

/* Profile access for the tests. */
void fh_trait_put(const char *user, const char *name, bd_value v);
bd_value fh_trait(const char *user, const char *name);
/* NAN when the trait is not a number. */
double fh_trait_num(const char *user, const char *name);
/* NULL when the trait is not a string. */
const char *fh_trait_str(const char *user, const char *name);

/* Captures since the last fh_reset / fh_clear_captures. */
void fh_clear_captures(void);
int fh_nemits(void);
const fh_emit *fh_emit_at_index(int i);
int fh_count_emits(const char *name);
/* The last emit named name, or NULL. */
const fh_emit *fh_last_emit(const char *name);
int fh_nblocks(void);
const fh_block *fh_block_at_index(int i);
int fh_count_blocks(const char *kind, const char *id);
int fh_nlogs(void);
const fh_log *fh_log_at_index(int i);
/* Log lines at level (or any when < 0) whose event is event (any when NULL)
 * and whose text contains every needle of the NULL-terminated list. */
int fh_count_logs(int level, const char *event, ...);

/* Contract breaches seen so far (and the last one's description). */
int fh_violations(void);
const char *fh_last_violation(void);

/* Calls the plugin's expression function fn_name; -1 when it has none. */
int fh_call(fh_plugin *p, const char *fn_name, const bd_value *args, int nargs, bd_value *out);

/* Value helpers. */
bd_value fh_num(double x);
bd_value fh_str(const char *s);
bd_value fh_null(void);

/* A JSON field of an emit's properties: number (NAN when absent) / string. */
double fh_json_num(const char *json, const char *key);
const char *fh_json_str(const char *json, const char *key);   /* static buffer */

#endif
