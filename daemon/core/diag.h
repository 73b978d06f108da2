/* diag.h - a list of located error messages ("file:line:col: message").
 * Loaders collect every error they find instead of stopping at the first, so
 * an operator fixes a rule file in one pass. */
#ifndef BENEFITD_DIAG_H
#define BENEFITD_DIAG_H

#include <stddef.h>
#include <stdio.h>

typedef struct diag {
    char **msgs;
    size_t n, cap;
} diag_t;

void diag_init(diag_t *d);
void diag_free(diag_t *d);
/* line/col are 1-based; 0 leaves them out of the message. */
void diag_add(diag_t *d, const char *file, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
void diag_print(const diag_t *d, FILE *f);

#endif
