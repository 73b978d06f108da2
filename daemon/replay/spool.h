#ifndef BENEFITD_SPOOL_H
#define BENEFITD_SPOOL_H

#include <stdint.h>
#include <stdio.h>
#include <stddef.h>

/* Replay's output lines, ordered by time at the end.
 *
 * A replay of a week's events produces hundreds of MB of grant JSON, and
 * decisions of late events (and delayed grants) come out of time order, so
 * nothing can be written before the input ends. The text goes to an
 * anonymous file (memfd, else an unlinked temporary file) rather than to the
 * heap: the kernel's page cache holds it without the doubling copies and
 * zero-filled page faults of a growing buffer, and when the lines already
 * came in time order (the common case) the file is copied out whole. Only a
 * 32-byte index entry per line stays in memory. */
typedef struct spool_line {
    int64_t at;
    size_t seq;
    uint64_t off;
    size_t len;
} spool_line;

typedef struct spool {
    int fd;
    char *buf;              /* write buffer in front of fd */
    size_t blen;
    uint64_t flushed;       /* bytes already in fd */
    spool_line *idx;
    size_t n, cap;
    int in_order;           /* every line's `at` >= the one before */
    int err;                /* errno of the first failed write, 0 if none */
} spool;

/* Opens an empty spool. 0, or -1 with errno set. */
int spool_open(spool *sp);

/* Appends a line (without its newline) issued at `at`. A write error is kept
 * in sp->err and reported by spool_write_ordered. */
void spool_add(spool *sp, int64_t at, const char *s, size_t n);

/* Writes every line, each followed by '\n', to out ordered by `at`, lines of
 * one `at` in the order they were added. 0, or -1 with errno set (a write to
 * the spool or to out failed). */
int spool_write_ordered(spool *sp, FILE *out);

size_t spool_count(const spool *sp);

void spool_close(spool *sp);

#endif
