/* enrich.h - the step between decode and the rules: the member's profile
 * and the plugins (docs/profiles.md, docs/plugins.md).
 *
 * For each event: an identify's traits are merged into the profile, every
 * plugin's on_event runs, and the event is decided against the profile
 * (ev->user). Then the internal events the plugins emitted are decided, in
 * order, at the same time, against the same profile; they do not pass
 * through the plugins again (no loops). What the plugins asked for (blocks,
 * revisits) and the traits that changed are left in the enrich_run_t for the
 * caller to carry out: in memory (replay) or as Redis writes (the daemon). */
#ifndef BENEFITD_ENRICH_H
#define BENEFITD_ENRICH_H

#include "plugin_host.h"
#include "profile.h"
#include "../policy/engine.h"

typedef struct enrich {
    plugin_set_t plugins;
    profile_cache_t cache;
    int loaded;
} enrich_t;

/* Loads the plugins of cfg; cache_bytes 0 = unbounded (replay). */
int enrich_init(enrich_t *en, const config_t *cfg, size_t cache_bytes, diag_t *diag);
void enrich_free(enrich_t *en);

/* Whether events need their member's profile before they are decided: some
 * plugin reads every event, or some rule reads user.*. */
int enrich_needs_profile(const enrich_t *en, const ruleset_t *rs);

/* Runs ev through the profile p (READY) and the plugins at now_ms, then the
 * engine over ev and every emitted event (intents to cb). run is initialised
 * here and holds the plugins' requests afterwards: plugin_run_free it.
 * ev->user is set to the profile. */
void enrich_decide(enrich_t *en, profile_t *p, event_t *ev, const bd_clock_t *clk, engine_t *eng,
                   const ruleset_t *rs, intent_cb cb, void *ud, plugin_run_t *run);

/* A revisit of plugin (NULL: all) for profile p at now: on_revisit, then the
 * engine over what it emitted. The emitted events' message ids derive from
 * "revisit:<due>". */
void enrich_revisit(enrich_t *en, profile_t *p, const char *plugin, int64_t due_ms, const bd_clock_t *clk,
                    engine_t *eng, const ruleset_t *rs, intent_cb cb, void *ud, plugin_run_t *run);

#endif
