#include "diag.h"
#include "util.h"

#include <stdarg.h>
#include <stdlib.h>

void diag_init(diag_t *d) { d->msgs = NULL; d->n = d->cap = 0; }

void diag_free(diag_t *d) {
    for (size_t i = 0; i < d->n; i++) free(d->msgs[i]);
    free(d->msgs);
    diag_init(d);
}

void diag_add(diag_t *d, const char *file, int line, int col, const char *fmt, ...) {
    strbuf b;
    sb_init(&b);
    if (file) sb_puts(&b, file);
    if (line > 0) sb_printf(&b, ":%d", line);
    if (line > 0 && col > 0) sb_printf(&b, ":%d", col);
    if (file || line > 0) sb_puts(&b, ": ");
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    sb_puts(&b, tmp);
    if (d->n == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 8;
        d->msgs = xrealloc(d->msgs, d->cap * sizeof *d->msgs);
    }
    d->msgs[d->n++] = b.s;
}

void diag_print(const diag_t *d, FILE *f) {
    for (size_t i = 0; i < d->n; i++) fprintf(f, "%s\n", d->msgs[i]);
}
