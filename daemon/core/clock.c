#include "clock.h"
#include "util.h"

static int64_t wall_now(const bd_clock_t *c) {
    (void)c;
    return now_wall_ms();
}

static int64_t virt_now(const bd_clock_t *c) { return c->virt_ms; }

void clock_init_wall(bd_clock_t *c) {
    c->now = wall_now;
    c->virt_ms = 0;
}

void clock_init_virtual(bd_clock_t *c, int64_t start_ms) {
    c->now = virt_now;
    c->virt_ms = start_ms;
}

void clock_set(bd_clock_t *c, int64_t ms) { c->virt_ms = ms; }
