/* template.h - message templates: literal text with {{expression}} holes.
 * Each hole is compiled as an expression at load time. */
#ifndef BENEFITD_TEMPLATE_H
#define BENEFITD_TEMPLATE_H

#include "expr.h"

typedef struct template template_t;

/* On error: NULL, *err_off = byte offset in src, message in err. */
template_t *template_compile(const char *src, size_t *err_off, char *err, size_t errlen);
void template_free(template_t *t);
/* 1 when a hole reads the member profile (`user.*`). */
int template_uses_user(const template_t *t);
/* Appends the rendered text; a missing value renders as nothing. */
void template_render(const template_t *t, const eval_ctx_t *ctx, struct strbuf *out);

#endif
