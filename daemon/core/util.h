/* util.h - small helpers shared by every subsystem: growable strings,
 * hashing, durations and time formatting. Nothing here allocates behind the
 * caller's back except strbuf, whose memory the caller frees with sb_free. */
#ifndef BENEFITD_UTIL_H
#define BENEFITD_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>

typedef struct strbuf {
    char *s;      /* always NUL-terminated once anything was appended */
    size_t len;
    size_t cap;
} strbuf;

void sb_init(strbuf *b);
void sb_free(strbuf *b);
void sb_reset(strbuf *b);                /* keeps capacity */
/* Room for extra more bytes and the NUL (the rare, out-of-line part of an
 * append). */
void sb_grow(strbuf *b, size_t extra);
/* Inline: records are built a few bytes per call, and a call to check the
 * capacity cost more than the copy. */
static inline void sb_append(strbuf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) sb_grow(b, n);
    __builtin_memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}
static inline void sb_puts(strbuf *b, const char *s) { sb_append(b, s, __builtin_strlen(s)); }
static inline void sb_putc(strbuf *b, char c) {
    if (b->len + 2 > b->cap) sb_grow(b, 1);
    b->s[b->len++] = c;
    b->s[b->len] = '\0';
}
void sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends each string up to a NULL: keys and records built on every event,
 * where sb_printf's format parsing cost more than the copying. */
void sb_cat(strbuf *b, ...) __attribute__((sentinel));
/* Appends v in decimal, as "%lld" would. */
void sb_put_i64(strbuf *b, long long v);
/* Writes v as 16 lowercase hex digits, as "%016llx" would (no NUL). */
void put_hex16(char *out, uint64_t v);
/* Appends s as a JSON string literal (with quotes), escaping as RFC 8259 asks. */
void sb_json_str(strbuf *b, const char *s, size_t n);

/* Aborts on allocation failure: a daemon that cannot allocate 64 bytes has
 * nothing sensible left to do, and checking every small malloc would bury
 * the real error paths. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t m);
/* n zeroed bytes for a large table read at random (a hash table of members):
 * mapped apart and advised for transparent huge pages, so that touching it
 * costs a page fault per 2 MB, not per 4 KB, and its lookups fewer TLB
 * misses. Freed with xfree_huge(p, n). */
void *xcalloc_huge(size_t n);
void xfree_huge(void *p, size_t n);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* 64-bit FNV-1a, with a seed so two independent hashes can be derived. */
uint64_t hash64(const void *data, size_t n, uint64_t seed);
/* A hash for in-process tables, 8 bytes a step (hash64 takes one). Its
 * values are nobody's business outside the table: nothing written or
 * printed may depend on them (grant ids keep hash64's). */
uint64_t hash_words(const void *data, size_t n);
/* hash64 with two seeds in one pass (*h1 for seed1, *h2 for seed2): the two
 * chains of multiplications overlap, where two calls wait on each other's. */
void hash64x2(const void *data, size_t n, uint64_t seed1, uint64_t seed2, uint64_t *h1, uint64_t *h2);

/* Parses "90s 30m 12h 7d 2w" (also "500ms"), one unit, into milliseconds.
 * Returns 0 on success, -1 on syntax error. */
int parse_duration_ms(const char *s, int64_t *out_ms);
/* Parses a rate "N/duration" ("1/7d"). */
int parse_rate(const char *s, int64_t *count, int64_t *period_ms);

/* Formats epoch milliseconds as 2026-11-24T10:30:00.000Z into out (>= 25 bytes). */
void format_iso8601_ms(int64_t ms, char *out, size_t outlen);
/* Parses ISO-8601 (date, date+time, optional fraction, Z or +hh:mm offset).
 * Returns 0 on success. */
int parse_iso8601_ms(const char *s, int64_t *out_ms);
/* Parses a date "YYYY-MM-DD" or a full ISO-8601 time as local time in the
 * named IANA zone ("UTC", "Europe/Paris"). Returns 0 on success. */
int parse_local_time_ms(const char *s, const char *tz, int64_t *out_ms);

/* Runs the process's local-time functions (mktime, localtime_r) in the IANA
 * zone tz until tz_restore: the only portable way to apply a zone's rules.
 * Not for the event hot path (tzset reads the zone file); callers cache. */
typedef struct tz_saved {
    char *old;   /* the previous TZ, NULL when it was unset */
} tz_saved;
tz_saved tz_switch(const char *tz);
void tz_restore(tz_saved saved);

/* Wall clock in epoch milliseconds. */
int64_t now_wall_ms(void);
/* Monotonic clock in microseconds, for measuring durations only. */
int64_t now_mono_us(void);

#endif
