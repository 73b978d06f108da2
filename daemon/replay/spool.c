#include "spool.h"
#include "../core/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <unistd.h>

/* Big enough that a replay's spool costs a few hundred write(2)s, small
 * enough not to be a heap cost of its own. */
#define SPOOL_BUF (1u << 20)

int spool_open(spool *sp) {
    memset(sp, 0, sizeof *sp);
    sp->in_order = 1;
    sp->fd = memfd_create("benefitd-replay-out", MFD_CLOEXEC);
    if (sp->fd < 0) {
        /* kernels or sandboxes without memfd: an unlinked file under TMPDIR */
        FILE *f = tmpfile();
        if (!f) return -1;
        sp->fd = dup(fileno(f));
        fclose(f);
        if (sp->fd < 0) return -1;
    }
    sp->buf = xmalloc(SPOOL_BUF);
    return 0;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void spool_flush(spool *sp) {
    if (!sp->blen) return;
    if (!sp->err && write_all(sp->fd, sp->buf, sp->blen) != 0) sp->err = errno;
    sp->flushed += sp->blen;
    sp->blen = 0;
}

void spool_add(spool *sp, int64_t at, const char *s, size_t n) {
    if (sp->n == sp->cap) {
        sp->cap = sp->cap ? sp->cap * 2 : 1024;
        sp->idx = xrealloc(sp->idx, sp->cap * sizeof *sp->idx);
    }
    if (sp->n && at < sp->idx[sp->n - 1].at) sp->in_order = 0;
    sp->idx[sp->n] = (spool_line){at, sp->n, sp->flushed + sp->blen, n};
    sp->n++;
    if (sp->blen + n + 1 > SPOOL_BUF) spool_flush(sp);
    if (n + 1 > SPOOL_BUF) {  /* a line longer than the buffer goes straight through */
        if (!sp->err && (write_all(sp->fd, s, n) != 0 || write_all(sp->fd, "\n", 1) != 0)) sp->err = errno;
        sp->flushed += n + 1;
        return;
    }
    memcpy(sp->buf + sp->blen, s, n);
    sp->buf[sp->blen + n] = '\n';
    sp->blen += n + 1;
}

size_t spool_count(const spool *sp) { return sp->n; }

static int cmp_line(const void *a, const void *b) {
    const spool_line *x = a, *y = b;
    if (x->at != y->at) return x->at < y->at ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* The spool's bytes [0, len) to out's descriptor as they are: sendfile where
 * the kernel can, else through the buffer. */
static int copy_whole(spool *sp, FILE *out, uint64_t len) {
    if (fflush(out) != 0) return -1;
    int ofd = fileno(out);
    off_t off = 0;
    while ((uint64_t)off < len) {
        ssize_t w = sendfile(ofd, sp->fd, &off, len - (uint64_t)off > (1u << 30) ? (1u << 30) : len - (uint64_t)off);
        if (w > 0) continue;
        if (w < 0 && errno == EINTR) continue;
        if (w == 0 || errno == EINVAL || errno == ENOSYS) break;
        return -1;
    }
    while ((uint64_t)off < len) {
        size_t want = len - (uint64_t)off > SPOOL_BUF ? SPOOL_BUF : (size_t)(len - (uint64_t)off);
        ssize_t r = pread(sp->fd, sp->buf, want, off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            if (r == 0) errno = EIO;
            return -1;
        }
        if (write_all(ofd, sp->buf, (size_t)r) != 0) return -1;
        off += r;
    }
    return 0;
}

int spool_write_ordered(spool *sp, FILE *out) {
    spool_flush(sp);
    if (sp->err) {
        errno = sp->err;
        return -1;
    }
    uint64_t len = sp->flushed;
    if (!len) return 0;
    if (sp->in_order) return copy_whole(sp, out, len);
    qsort(sp->idx, sp->n, sizeof *sp->idx, cmp_line);
    const char *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, sp->fd, 0);
    if (map == MAP_FAILED) return -1;
    int rc = 0;
    for (size_t i = 0; i < sp->n && rc == 0; i++)
        if (fwrite(map + sp->idx[i].off, 1, sp->idx[i].len + 1, out) != sp->idx[i].len + 1) rc = -1;
    int e = errno;
    munmap((void *)map, len);
    errno = e;
    return rc;
}

void spool_close(spool *sp) {
    if (sp->fd >= 0) close(sp->fd);
    free(sp->buf);
    free(sp->idx);
    memset(sp, 0, sizeof *sp);
    sp->fd = -1;
}
