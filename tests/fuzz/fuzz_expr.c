/* fuzz_expr.c - libFuzzer target for the expression compiler and evaluator
 * and for message templates (issue 6, item 5). The input is compiled as an
 * expression (whole, and its first half with expr_compile_n, which must not
 * read past its length) and, when it compiles, evaluated against a fixed
 * event with a profile; then compiled as a template and rendered. Errors
 * must carry an offset inside the source and a message. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../daemon/core/util.h"
#include "../../daemon/decode/event.h"
#include "../../daemon/rules/expr.h"
#include "../../daemon/rules/template.h"

static const char EVENT_JSON[] =
    "{\"type\":\"track\",\"event\":\"Order Completed\",\"userId\":\"u-42\",\"messageId\":\"m-1\","
    "\"timestamp\":\"2026-11-24T10:30:00.000Z\","
    "\"properties\":{\"order_id\":\"o-17\",\"name\":\"Blue Shoes\",\"total\":129.5,\"qty\":3,\"zero\":0,"
    "\"neg\":-2.5,\"big\":1e308,\"tags\":[\"sale\",\"new\"],\"codes\":[1,2,3],\"flag\":true,\"nothing\":null,"
    "\"Brand\":\"ACME \\\"Corp\\\" \\u00e9\\u4e2d\",\"empty\":\"\",\"nested\":{\"a\":{\"b\":7}},\"obj\":{},"
    "\"referrer_id\":\"u-7\"},"
    "\"context\":{\"ip\":\"10.0.0.1\",\"device\":{\"id\":\"dev-9\",\"type\":\"ios\"},"
    "\"traits\":{\"tier\":\"silver\"}},"
    "\"traits\":{\"tier\":\"gold\",\"email\":\"x@y.z\"},"
    "\"profile\":{\"tier\":\"platinum\",\"points\":1200,\"orders\":[{\"total\":5}]}}";

static event_t ev;
static expr_arena_t arena;
static eval_ctx_t ctx, ctx_noarena;
static strbuf out;

static void init_once(void) {
    static int done;
    if (done) return;
    done = 1;
    decoder_t d;
    decoder_init_default(&d);
    char reason[128];
    if (decode_event(&d, EVENT_JSON, sizeof EVENT_JSON - 1, 0, &ev, reason, sizeof reason) != 0) abort();
    ev.user = cJSON_GetObjectItemCaseSensitive(ev.root, "profile");
    ctx.ev = &ev;
    ctx.arena = &arena;
    ctx_noarena.ev = &ev;
    ctx_noarena.arena = NULL;
    sb_init(&out);
}

static void use_expr(const expr_t *e) {
    for (int i = 0; i < 2; i++) {
        const eval_ctx_t *c = i ? &ctx_noarena : &ctx;
        value_t v = expr_eval(e, c);
        sb_reset(&out);
        value_to_json(&v, &out);
        value_to_text(&v, &out);
        (void)expr_test(e, c);
    }
    (void)expr_is_constant(e);
    expr_arena_reset(&arena);
}

static void check_err(const expr_t *e, size_t off, size_t len, const char *err) {
    if (e) return;
    if (off > len || !err[0]) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    init_once();
    /* Exactly size bytes for the _n variant (no terminator to lean on)... */
    char *raw = malloc(size ? size : 1);
    /* ...and a NUL-terminated copy for the C-string entry points. */
    char *src = malloc(size + 1);
    if (!raw || !src) abort();
    memcpy(raw, data, size);
    memcpy(src, data, size);
    src[size] = '\0';
    size_t slen = strlen(src);

    char err[160];
    size_t off = (size_t)-1;
    err[0] = '\0';
    expr_t *e = expr_compile(src, &off, err, sizeof err);
    check_err(e, off, slen, err);
    if (e) use_expr(e);
    expr_free(e);

    off = (size_t)-1;
    err[0] = '\0';
    e = expr_compile_n(raw, size / 2, &off, err, sizeof err);
    check_err(e, off, size / 2, err);
    if (e) use_expr(e);
    expr_free(e);

    /* A tiny error buffer must be truncated, not overrun. */
    char small[4];
    e = expr_compile(src, &off, small, sizeof small);
    expr_free(e);

    value_t v = expr_resolve_path(src, &ctx);
    sb_reset(&out);
    value_to_json(&v, &out);
    expr_arena_reset(&arena);

    off = (size_t)-1;
    err[0] = '\0';
    template_t *t = template_compile(src, &off, err, sizeof err);
    check_err((const expr_t *)t, off, slen, err);
    if (t) {
        sb_reset(&out);
        template_render(t, &ctx, &out);
        sb_reset(&out);
        template_render(t, &ctx_noarena, &out);
        expr_arena_reset(&arena);
    }
    template_free(t);

    free(raw);
    free(src);
    return 0;
}
