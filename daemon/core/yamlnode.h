/* yamlnode.h - a small located document tree over libyaml.
 * Both the daemon config and rule files are read through it so that every
 * error can name file:line:col of the offending node. Anchors/aliases are
 * refused: operators' rule files do not need them and they hide where a
 * value came from. */
#ifndef BENEFITD_YAMLNODE_H
#define BENEFITD_YAMLNODE_H

#include <stddef.h>
#include "diag.h"

typedef enum { YN_SCALAR, YN_SEQ, YN_MAP } yn_kind;

typedef struct ynode {
    yn_kind kind;
    int line, col;         /* 1-based position of the node's first character */
    char *str;             /* YN_SCALAR: the value */
    int quoted;            /* YN_SCALAR: written in quotes (so never null/bool/number) */
    int str_col;           /* YN_SCALAR: column of the value's first character (after a quote) */
    size_t n;              /* YN_SEQ: items; YN_MAP: pairs */
    struct ynode **items;  /* YN_SEQ items, or YN_MAP values */
    struct ynode **keys;   /* YN_MAP keys (scalars) */
} ynode;

/* Loads the first document of a file. NULL on error, with the error in diag.
 * An empty file yields an empty map. */
ynode *yn_load_file(const char *path, diag_t *diag);
/* Same, from memory; name is used in messages. */
ynode *yn_load_string(const char *name, const char *text, size_t len, diag_t *diag);
void yn_free(ynode *n);

/* Map lookup; NULL when absent or when map is not a map. */
const ynode *yn_get(const ynode *map, const char *key);
/* Index of a map key, or -1. */
int yn_key_index(const ynode *map, const char *key);

/* Scalar helpers: return 0 on success; on failure add a located error to diag
 * (naming what) and return -1. */
int yn_str(const ynode *n, const char *file, const char *what, const char **out, diag_t *d);
int yn_bool(const ynode *n, const char *file, const char *what, int *out, diag_t *d);
int yn_int(const ynode *n, const char *file, const char *what, long long *out, diag_t *d);
int yn_duration(const ynode *n, const char *file, const char *what, long long *out_ms, diag_t *d);
/* Reports every key of map not in the NULL-terminated allowed list, with a
 * "did you mean" suggestion by edit distance. Returns the number of bad keys. */
int yn_check_keys(const ynode *map, const char *file, const char *const *allowed, diag_t *d);
/* Appends a canonical serialisation of n (used to version rules by content). */
struct strbuf;
void yn_canonical(const ynode *n, struct strbuf *out);

#endif
