/* clock.h - the one source of "now" for decisions and timers.
 * Live reads the wall clock; replay and tests move a virtual clock by hand
 * (event time). The engine and the state store never call time functions
 * themselves, so the same timer code runs identically in both worlds and a
 * replay is reproducible to the millisecond. */
#ifndef BENEFITD_CLOCK_H
#define BENEFITD_CLOCK_H

#include <stdint.h>

typedef struct bd_clock {
    int64_t (*now)(const struct bd_clock *c);
    int64_t virt_ms;   /* the virtual clock's time; unused by the wall clock */
} bd_clock_t;

/* Epoch milliseconds, UTC. */
static inline int64_t clock_now_ms(const bd_clock_t *c) { return c->now(c); }

void clock_init_wall(bd_clock_t *c);
void clock_init_virtual(bd_clock_t *c, int64_t start_ms);
/* Sets a virtual clock. It may go backwards: replay decides a late event at
 * its own time, as the daemon would have on arrival. Timers do not depend on
 * this (the store keeps its own high-water mark), so that is safe. */
void clock_set(bd_clock_t *c, int64_t ms);

#endif
