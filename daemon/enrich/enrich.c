/* enrich.c - profile + plugins before the rules (enrich.h). */
#include "enrich.h"

#include <stdio.h>
#include <string.h>
#include "../core/log.h"

int enrich_init(enrich_t *en, const config_t *cfg, size_t cache_bytes, diag_t *diag) {
    memset(en, 0, sizeof *en);
    profile_cache_init(&en->cache, cache_bytes);
    if (plugins_load(&en->plugins, cfg, diag) != 0) {
        profile_cache_free(&en->cache);
        return -1;
    }
    en->loaded = 1;
    return 0;
}

void enrich_free(enrich_t *en) {
    if (!en->loaded) return;
    plugins_unload(&en->plugins);
    profile_cache_free(&en->cache);
    en->loaded = 0;
}

int enrich_needs_profile(const enrich_t *en, const ruleset_t *rs) {
    return (en->loaded && en->plugins.any_on_event) || ruleset_uses_profile(rs);
}

/* The emitted events, decided in order after their cause. */
static void decide_emitted(enrich_t *en, profile_t *p, const char *source_id, int64_t at, const bd_clock_t *clk,
                           engine_t *eng, const ruleset_t *rs, intent_cb cb, void *ud, plugin_run_t *run) {
    for (size_t i = 0; i < run->n_emits; i++) {
        event_t iev;
        if (plugin_emit_event(&run->emits[i], p->user, at, source_id, &iev) != 0) continue;
        iev.user = p->traits;
        iev.partition = -1;
        log_debug("plugin_event", "user=%s event=\"%s\" message_id=%s", p->user, iev.name, iev.message_id);
        engine_run(eng, rs, &iev, clk, cb, ud);
        event_clear(&iev);
    }
}

void enrich_decide(enrich_t *en, profile_t *p, event_t *ev, const bd_clock_t *clk, engine_t *eng,
                   const ruleset_t *rs, intent_cb cb, void *ud, plugin_run_t *run) {
    /* plugins see the event's time (benefitd_plugin.h): deterministic */
    plugin_run_init(run, &en->plugins, &en->cache, p, ev, ev->ts_ms);
    if (p) {
        if (ev->type && !strcmp(ev->type, "identify") && ev->traits) profile_merge(&en->cache, p, ev->traits);
        if (en->plugins.any_on_event) plugins_on_event(run);
        ev->user = p->traits;
    }
    engine_run(eng, rs, ev, clk, cb, ud);
    if (p && run->n_emits) decide_emitted(en, p, ev->message_id, ev->ts_ms, clk, eng, rs, cb, ud, run);
}

void enrich_revisit(enrich_t *en, profile_t *p, const char *plugin, int64_t due_ms, const bd_clock_t *clk,
                    engine_t *eng, const ruleset_t *rs, intent_cb cb, void *ud, plugin_run_t *run) {
    plugin_run_init(run, &en->plugins, &en->cache, p, NULL, due_ms);
    plugins_on_revisit(run, plugin);
    char src[48];
    snprintf(src, sizeof src, "revisit:%lld", (long long)due_ms);
    if (run->n_emits) decide_emitted(en, p, src, due_ms, clk, eng, rs, cb, ud, run);
}
