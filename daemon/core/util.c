#include "util.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) { fputs("benefitd: out of memory\n", stderr); abort(); }
    return p;
}
void *xcalloc(size_t n, size_t m) {
    void *p = calloc(n ? n : 1, m ? m : 1);
    if (!p) { fputs("benefitd: out of memory\n", stderr); abort(); }
    return p;
}
void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) { fputs("benefitd: out of memory\n", stderr); abort(); }
    return q;
}
void *xcalloc_huge(size_t n) {
    void *p = mmap(NULL, n ? n : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { fputs("benefitd: out of memory\n", stderr); abort(); }
    (void)madvise(p, n, MADV_HUGEPAGE); /* advice: refused (no THP) changes nothing */
    return p;
}
void xfree_huge(void *p, size_t n) {
    if (p) munmap(p, n ? n : 1);
}
char *xstrdup(const char *s) { return xstrndup(s, strlen(s)); }
char *xstrndup(const char *s, size_t n) {
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

void sb_init(strbuf *b) { b->s = NULL; b->len = b->cap = 0; }
void sb_free(strbuf *b) { free(b->s); sb_init(b); }
void sb_reset(strbuf *b) { b->len = 0; if (b->s) b->s[0] = '\0'; }

void sb_grow(strbuf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) cap *= 2;
    b->s = xrealloc(b->s, cap);
    b->cap = cap;
}
void sb_printf(strbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char tmp[256];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) { sb_append(b, tmp, (size_t)n); return; }
    sb_grow(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}
void sb_cat(strbuf *b, ...) {
    va_list ap;
    va_start(ap, b);
    for (const char *s; (s = va_arg(ap, const char *)) != NULL;) sb_append(b, s, strlen(s));
    va_end(ap);
}
void sb_put_i64(strbuf *b, long long v) {
    char tmp[24], *p = tmp + sizeof tmp;
    /* in unsigned arithmetic: -LLONG_MIN does not fit a long long */
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) *--p = '-';
    sb_append(b, p, (size_t)(tmp + sizeof tmp - p));
}
void put_hex16(char *out, uint64_t v) {
    static const char hex[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--, v >>= 4) out[i] = hex[v & 15];
}
/* Whether any of 8 bytes is below 0x20, '"' or '\\' (SWAR: the "has a
 * byte less than" and "has a zero byte" tests, exact as to whether any). */
static inline int json_special8(const char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    uint64_t q = v ^ (ones * '"'), b = v ^ (ones * '\\');
    return (((v - ones * 0x20) & ~v) | ((q - ones) & ~q) | ((b - ones) & ~b)) & highs ? 1 : 0;
}

void sb_json_str(strbuf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    sb_grow(b, n + 2);
    sb_putc(b, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        /* almost every string needs no escape: 8 bytes a step while none of
         * them is a control byte, '"' or '\\' (bytes >= 0x80 pass as they are) */
        while (i + 8 <= n && !json_special8(s + i)) i += 8;
        if (i == n) break;
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        sb_append(b, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': sb_append(b, "\\\"", 2); break;
        case '\\': sb_append(b, "\\\\", 2); break;
        case '\n': sb_append(b, "\\n", 2); break;
        case '\r': sb_append(b, "\\r", 2); break;
        case '\t': sb_append(b, "\\t", 2); break;
        default: {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            sb_append(b, u, 6);
        }
        }
    }
    sb_append(b, s + run, n - run);
    sb_putc(b, '"');
}

uint64_t hash_words(const void *data, size_t n) {
    const uint64_t k = 0x9fb21c651e98df25ULL;
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (n * k);
    const char *p = data;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * k;
        h ^= h >> 29;
    }
    uint64_t v = 0;
    memcpy(&v, p, n);
    h = (h ^ v) * k;
    h ^= h >> 33; h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

uint64_t hash64(const void *data, size_t n, uint64_t seed) {
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ULL ^ (seed * 0x9e3779b97f4a7c15ULL);
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    /* FNV alone mixes the last bytes poorly; finish with a murmur-style avalanche. */
    h ^= h >> 33; h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static uint64_t hash64_finish(uint64_t h) {
    h ^= h >> 33; h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

void hash64x2(const void *data, size_t n, uint64_t seed1, uint64_t seed2, uint64_t *h1, uint64_t *h2) {
    const unsigned char *p = data;
    uint64_t a = 0xcbf29ce484222325ULL ^ (seed1 * 0x9e3779b97f4a7c15ULL);
    uint64_t b = 0xcbf29ce484222325ULL ^ (seed2 * 0x9e3779b97f4a7c15ULL);
    for (size_t i = 0; i < n; i++) {
        a = (a ^ p[i]) * 0x100000001b3ULL;
        b = (b ^ p[i]) * 0x100000001b3ULL;
    }
    *h1 = hash64_finish(a);
    *h2 = hash64_finish(b);
}

int parse_duration_ms(const char *s, int64_t *out_ms) {
    if (!s) return -1;
    while (isspace((unsigned char)*s)) s++;
    if (!isdigit((unsigned char)*s)) return -1;
    char *end;
    long long n = strtoll(s, &end, 10);
    if (n < 0 || n > 100000000LL) return -1;
    int64_t mult;
    if (strncmp(end, "ms", 2) == 0) { mult = 1; end += 2; }
    else {
        switch (*end) {
        case 's': mult = 1000; break;
        case 'm': mult = 60000; break;
        case 'h': mult = 3600000; break;
        case 'd': mult = 86400000; break;
        case 'w': mult = 7 * 86400000LL; break;
        default: return -1;
        }
        end++;
    }
    while (isspace((unsigned char)*end)) end++;
    if (*end) return -1;
    *out_ms = (int64_t)n * mult;
    return 0;
}

int parse_rate(const char *s, int64_t *count, int64_t *period_ms) {
    const char *slash = strchr(s, '/');
    if (!slash || slash == s) return -1;
    char *end;
    long long n = strtoll(s, &end, 10);
    while (end < slash && isspace((unsigned char)*end)) end++;
    if (end != slash || n <= 0) return -1;
    if (parse_duration_ms(slash + 1, period_ms) != 0 || *period_ms <= 0) return -1;
    *count = n;
    return 0;
}

/* Civil date of a day count since 1970-01-01 (Howard Hinnant's algorithm,
 * the inverse of days_from_civil below). */
static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d) {
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static void put2(char *p, unsigned v) {
    p[0] = (char)('0' + v / 10);
    p[1] = (char)('0' + v % 10);
}

/* Every grant and explain line carries two or three of these: gmtime_r plus
 * snprintf was a twentieth of replay's time. Years 0000..9999 (all an event
 * can carry) are written by hand; anything else keeps the libc path, whose
 * output for such years is what it always was. */
void format_iso8601_ms(int64_t ms, char *out, size_t outlen) {
    int64_t secs = ms >= 0 ? ms / 1000 : (ms - 999) / 1000;
    int frac = (int)(ms - secs * 1000);
    int64_t days = secs >= 0 ? secs / 86400 : (secs - 86399) / 86400;
    int64_t sod = secs - days * 86400;
    int64_t y;
    unsigned mo, d;
    civil_from_days(days, &y, &mo, &d);
    if (y >= 0 && y <= 9999 && outlen >= 25) {
        unsigned yy = (unsigned)y, s = (unsigned)sod;
        out[0] = (char)('0' + yy / 1000);
        out[1] = (char)('0' + yy / 100 % 10);
        put2(out + 2, yy % 100);
        out[4] = '-';
        put2(out + 5, mo);
        out[7] = '-';
        put2(out + 8, d);
        out[10] = 'T';
        put2(out + 11, s / 3600);
        out[13] = ':';
        put2(out + 14, s / 60 % 60);
        out[16] = ':';
        put2(out + 17, s % 60);
        out[19] = '.';
        out[20] = (char)('0' + frac / 100);
        put2(out + 21, (unsigned)frac % 100);
        out[23] = 'Z';
        out[24] = '\0';
        return;
    }
    time_t t = (time_t)secs;
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
}

/* Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm);
 * avoids timegm's dependence on the process TZ. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static int parse_digits(const char **p, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)(*p)[i])) return -1;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *out = v;
    return 0;
}

/* Parses the fields; *has_zone tells whether an explicit offset was present. */
static int parse_iso_fields(const char *s, int64_t *local_ms, int *has_zone, int64_t *offset_ms) {
    int Y, M, D, h = 0, mi = 0, sec = 0, ms = 0;
    const char *p = s;
    if (parse_digits(&p, 4, &Y) || *p++ != '-' || parse_digits(&p, 2, &M) || *p++ != '-' ||
        parse_digits(&p, 2, &D))
        return -1;
    if (M < 1 || M > 12 || D < 1 || D > 31) return -1;
    *has_zone = 0;
    *offset_ms = 0;
    if (*p == 'T' || *p == 't' || *p == ' ') {
        p++;
        if (parse_digits(&p, 2, &h) || *p++ != ':' || parse_digits(&p, 2, &mi)) return -1;
        if (*p == ':') {
            p++;
            if (parse_digits(&p, 2, &sec)) return -1;
            if (*p == '.' || *p == ',') {
                p++;
                int digits = 0;
                while (isdigit((unsigned char)*p)) {
                    if (digits < 3) ms = ms * 10 + (*p - '0');
                    digits++;
                    p++;
                }
                if (digits == 0) return -1;
                for (; digits < 3; digits++) ms *= 10;
            }
        }
        if (h > 23 || mi > 59 || sec > 60) return -1;
        if (*p == 'Z' || *p == 'z') { *has_zone = 1; p++; }
        else if (*p == '+' || *p == '-') {
            int sign = *p++ == '-' ? -1 : 1, oh, om = 0;
            if (parse_digits(&p, 2, &oh)) return -1;
            if (*p == ':') p++;
            if (isdigit((unsigned char)*p) && parse_digits(&p, 2, &om)) return -1;
            *has_zone = 1;
            *offset_ms = sign * ((int64_t)oh * 3600000 + (int64_t)om * 60000);
        }
    }
    if (*p) return -1;
    *local_ms = (days_from_civil(Y, (unsigned)M, (unsigned)D) * 86400 + h * 3600 + mi * 60 + sec) * 1000LL + ms;
    return 0;
}

int parse_iso8601_ms(const char *s, int64_t *out_ms) {
    int64_t local, off;
    int has_zone;
    if (parse_iso_fields(s, &local, &has_zone, &off)) return -1;
    *out_ms = local - off; /* no zone: Segment timestamps without one are UTC */
    return 0;
}

int parse_local_time_ms(const char *s, const char *tz, int64_t *out_ms) {
    int64_t local, off;
    int has_zone;
    if (parse_iso_fields(s, &local, &has_zone, &off)) return -1;
    if (has_zone || !tz || !*tz || strcmp(tz, "UTC") == 0) { *out_ms = local - off; return 0; }
    /* mktime is the only portable way to apply an IANA zone's rules; switch TZ
     * around it. Only called at rule load, never on the event path. */
    tz_saved saved = tz_switch(tz);
    time_t secs = (time_t)(local / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    tm.tm_isdst = -1;
    time_t t = mktime(&tm);
    tz_restore(saved);
    if (t == (time_t)-1) return -1;
    *out_ms = (int64_t)t * 1000 + local % 1000;
    return 0;
}

tz_saved tz_switch(const char *tz) {
    tz_saved saved = {getenv("TZ") ? xstrdup(getenv("TZ")) : NULL};
    setenv("TZ", tz, 1);
    tzset();
    return saved;
}

void tz_restore(tz_saved saved) {
    if (saved.old) {
        setenv("TZ", saved.old, 1);
        free(saved.old);
    } else {
        unsetenv("TZ");
    }
    tzset();
}

int64_t now_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
int64_t now_mono_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}
