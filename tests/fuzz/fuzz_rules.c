/* fuzz_rules.c - libFuzzer target for the rule loader (issue 6, item 5):
 * arbitrary bytes as one YAML rule file, loaded as `check`/`run` load it and
 * as `replay` does (RULES_ALLOW_TIME). A loaded set is then used the way the
 * engine uses it: looked up by event name, its where/audience/value/to
 * expressions evaluated and its message templates rendered against a fixed
 * event. A refused set must come with at least one error. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../daemon/core/diag.h"
#include "../../daemon/core/util.h"
#include "../../daemon/decode/event.h"
#include "../../daemon/rules/rules.h"

static const char EVENT_JSON[] =
    "{\"type\":\"track\",\"event\":\"Order Completed\",\"userId\":\"u-42\",\"messageId\":\"m-1\","
    "\"timestamp\":\"2026-11-24T10:30:00.000Z\","
    "\"properties\":{\"order_id\":\"o-17\",\"name\":\"Lamp\",\"total\":612.5,\"price\":80,"
    "\"referrer_id\":\"u-7\"},\"traits\":{\"tier\":\"gold\"}}";

static event_t ev;
static expr_arena_t arena;
static eval_ctx_t ctx;
static strbuf out;

static void init_once(void) {
    static int done;
    if (done) return;
    done = 1;
    decoder_t d;
    decoder_init_default(&d);
    char reason[128];
    if (decode_event(&d, EVENT_JSON, sizeof EVENT_JSON - 1, 0, &ev, reason, sizeof reason) != 0) abort();
    ctx.ev = &ev;
    ctx.arena = &arena;
    sb_init(&out);
}

static void use_grant(const grant_spec_t *g) {
    if (g->value) {
        value_t v = expr_eval(g->value, &ctx);
        sb_reset(&out);
        value_to_json(&v, &out);
    }
    if (g->to) (void)expr_eval(g->to, &ctx);
    if (g->message) {
        sb_reset(&out);
        template_render(g->message, &ctx, &out);
    }
}

static void use_set(const ruleset_t *rs) {
    size_t n = ruleset_count(rs);
    if (strlen(ruleset_version(rs)) == 0) abort();
    for (size_t i = 0; i < n; i++) {
        const rule_t *r = ruleset_rule(rs, i);
        if (!r || !r->id || ruleset_find(rs, r->id) != r) abort();
        if (r->where) (void)expr_test(r->where, &ctx);
        if (r->audience) (void)expr_test(r->audience, &ctx);
        use_grant(&r->grant);
        for (size_t k = 0; k < r->n_variants; k++) use_grant(&r->variants[k].grant);
        for (size_t k = 0; k < r->n_events; k++) {
            const rule_list_t *l = ruleset_for_event(rs, r->events[k]);
            if (!l) abort();
        }
        expr_arena_reset(&arena);
    }
    const rule_list_t *l = ruleset_for_event(rs, ev.name);
    if (!l) abort();
    for (size_t i = 0; i < l->n; i++)
        if (!l->rules[i]) abort();
    (void)ruleset_for_event(rs, "");
}

static void load(const char *text, size_t len, const char *tz, unsigned flags) {
    diag_t d;
    diag_init(&d);
    ruleset_t *rs = ruleset_load_string_ex("fuzz.yaml", text, len, tz, flags, &d);
    if (rs) use_set(rs);
    else if (d.n == 0) abort(); /* refused without saying why */
    ruleset_free(rs);
    diag_free(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    init_once();
    char *text = malloc(size ? size : 1);
    if (!text) abort();
    if (size) memcpy(text, data, size);
    load(text, size, "UTC", 0);
    load(text, size, "Europe/Paris", RULES_ALLOW_TIME);
    /* The plain entry point is the _ex one with no flags; kept covered. */
    diag_t d;
    diag_init(&d);
    ruleset_free(ruleset_load_string("fuzz.yaml", text, size, "UTC", &d));
    diag_free(&d);
    free(text);
    return 0;
}
