/* plugin_host.h - loads plugins (plugins/benefitd_plugin.h) and runs them
 * between decode and the rules: the "enrich" step of the data flow.
 *
 * The host is I/O-free like the engine: a plugin's effects on a member are
 * collected in the plugin_run_t of the call (traits land in the profile and
 * its dirty list; emitted events, blocks and revisit requests in arrays) and
 * the caller carries them out: replay in memory, the daemon as Redis writes
 * held under the event's offset. So replay and the daemon run the very same
 * plugin code on the very same inputs.
 *
 * Loading refuses, with a message naming the file: a plugin directory or a
 * .so writable by other users, a missing file, a missing `benefitd_plugin`
 * symbol, another API version, a descriptor whose name is not the config
 * key, an expression function that clashes, and an init that fails. */
#ifndef BENEFITD_PLUGIN_HOST_H
#define BENEFITD_PLUGIN_HOST_H

#include <stddef.h>
#include <stdint.h>
#include "../../plugins/benefitd_plugin.h"
#include "../core/config.h"
#include "../core/diag.h"
#include "../decode/event.h"
#include "profile.h"

typedef struct loaded_plugin {
    char *name;
    char *path;
    void *handle;                 /* dlopen */
    const bd_plugin *desc;
    void *self;
} loaded_plugin_t;

typedef struct plugin_set {
    loaded_plugin_t *p;
    size_t n;
    int any_on_event;             /* some plugin reads every event: profiles are needed */
    int any_on_grant;             /* some plugin wants on_grant */
    /* the host's sliding-window distinct counts (window_add): set\x1fkey ->
     * members with their last time; pruned as windows pass */
    void *windows;
} plugin_set_t;

/* An internal event a plugin emitted. */
typedef struct emitted {
    char *name;
    char *props_json;             /* NULL or an object's text */
    char *tag;
} emitted_t;

typedef struct blocked {
    char *kind, *id, *reason;
} blocked_t;

typedef struct revisit_req {
    char *plugin;
    int64_t due_ms;               /* < 0: cancel */
} revisit_req_t;

/* One member's pass through the plugins: what the callbacks did. */
typedef struct plugin_run {
    const plugin_set_t *set;
    profile_cache_t *cache;
    profile_t *profile;
    const char *user;
    const event_t *ev;            /* NULL in on_revisit / on_grant */
    int64_t now_ms;
    const loaded_plugin_t *cur;   /* the plugin being called */
    int grant_only;               /* on_grant: only user_id and now answer */
    emitted_t *emits; size_t n_emits, cap_emits;
    blocked_t *blocks; size_t n_blocks, cap_blocks;
    revisit_req_t *revisits; size_t n_revisits, cap_revisits;
    char scratch[64];             /* number formatting for traits read as strings */
} plugin_run_t;

/* Loads cfg's plugins (plugins.dir, plugins.load) and registers their
 * expression functions. 0, or -1 with located errors in diag. A config
 * without plugins gives an empty set. */
int plugins_load(plugin_set_t *set, const config_t *cfg, diag_t *diag);
/* Calls every fini, unregisters the functions, dlcloses. */
void plugins_unload(plugin_set_t *set);

void plugin_run_init(plugin_run_t *r, const plugin_set_t *set, profile_cache_t *cache, profile_t *p,
                     const event_t *ev, int64_t now_ms);
/* Forgets the results (keeps nothing from the last call). */
void plugin_run_free(plugin_run_t *r);

/* on_event of every plugin, in load order (after the caller merged an
 * identify's traits into r->profile). Returns how many plugins failed
 * (logged; the event is still decided). */
int plugins_on_event(plugin_run_t *r);
/* on_revisit of the plugin named plugin (NULL: every plugin with one). */
int plugins_on_revisit(plugin_run_t *r, const char *plugin);
/* The JSON on_grant receives: {"grant_id","rule","user_id","channel"}
 * (malloc'd), the same live and in replay. */
char *plugin_grant_json(const char *grant_id, const char *rule, const char *user, const char *channel);
/* on_grant of every plugin that has one; user is the recipient. */
void plugins_on_grant(const plugin_set_t *set, const char *user, int64_t now_ms, const char *grant_json);

/* The internal event of an emit: a decoded event owned by out (event_clear
 * frees it) for user at ts_ms, with messageId "<source id>/<tag>" so it is as
 * stable as its cause. 0, or -1 when the JSON does not decode. */
int plugin_emit_event(const emitted_t *em, const char *user, int64_t ts_ms, const char *source_message_id,
                      event_t *out);

/* bd_value <-> JSON, shared with the expression bridge. */
cJSON *bd_value_to_json(bd_value v);
bd_value bd_value_from_json(const cJSON *j, char *scratch, size_t n);

#endif
