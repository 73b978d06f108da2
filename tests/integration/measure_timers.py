#!/usr/bin/python3
"""Measures what pending waits cost (not run by `make test`; figures go in docs/time.md).

  /usr/bin/python3 tests/integration/measure_timers.py [--waits 100000] [--total 1000000]

1. Memory per pending wait: a rule with `wait: 2h` and --waits events of
   distinct members through the real pipeline (mock Kafka -> daemon -> Redis);
   Redis `INFO memory` used_memory and the daemon's VmRSS before and after,
   divided by the number of waits.
2. Poll cost with --total pending waits, none due: more events until --total
   waits are pending, then `INFO commandstats` over a few seconds of the
   daemon's own polling (4 partitions, every 250 ms): calls and microseconds
   per ZRANGEBYSCORE, and one poll timed from a client for comparison.
Needs `make all`.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Env, wait_for  # noqa: E402

RULE = """id: nudge
trigger: {event: Product Added}
wait: 2h
cancel_on: [Order Completed]
grant: {benefit: coupon, sku: CART-10OFF, value: 10, expires_in: 72h, channel: push,
        message: "{{properties.name}} is still in your cart: 10 off for 72h"}
"""


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def write_events(path, start, n):
    ts = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    with open(path, "w") as f:
        for i in range(start, start + n):
            f.write(json.dumps({"type": "track", "event": "Product Added", "userId": "m%07d" % i,
                                "messageId": "msg-%07d" % i, "timestamp": ts,
                                "properties": {"name": "Walnut desk lamp", "price": 89.0, "sku": "LAMP-%d" % (i % 500)},
                                "context": {"ip": "192.0.2.7", "device": {"id": "d-%d" % i}}}) + "\n")
    return path


def pending(c):
    return sum(c.zcard(k) for k in c.scan_iter(match="bd:timers:*"))


def fill(env, c, start, n, chunk=20000):
    """Produces n events in chunks, each committed before the next (the mock
    cluster drops the oldest log segments of a partition that grows too far
    ahead of its consumer)."""
    t0 = time.monotonic()
    for k in range(start, start + n, chunk):
        m = min(chunk, start + n - k)
        env.kafka.produce(write_events(env.dir / "ev.jsonl", k, m))
        env.wait_all_committed(timeout=600)
    dt = time.monotonic() - t0
    got = pending(c)
    if got != start + n:
        raise SystemExit("expected %d pending waits, found %d" % (start + n, got))
    print("  %d events -> %d pending waits in %.1fs (%.0f events/s through Kafka, daemon, Redis)" %
          (n, got, dt, n / dt))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--waits", type=int, default=100000)
    ap.add_argument("--total", type=int, default=1000000)
    args = ap.parse_args()
    env = Env("benefitd-measure")
    try:
        env.start_backends()
        env.write_rules({"nudge.yaml": RULE})
        env.write_config(channels={})
        d = env.start_daemon()
        c = env.client()
        d.wait_log(r"event=timers_owned", 10)
        time.sleep(1)
        c.execute_command("MEMORY", "PURGE")
        mem0 = int(c.info("memory")["used_memory"])
        rss0 = rss_kb(d.pid)
        print("memory per pending wait (%d waits):" % args.waits)
        fill(env, c, 0, args.waits)
        c.execute_command("MEMORY", "PURGE")
        mem1 = int(c.info("memory")["used_memory"])
        rss1 = rss_kb(d.pid)
        n = pending(c)
        print("  redis used_memory: %+d bytes = %.0f bytes per wait" % (mem1 - mem0, (mem1 - mem0) / n))
        print("  daemon VmRSS: %d kB -> %d kB: %+.1f bytes per wait (waits live in Redis only)" %
              (rss0, rss1, (rss1 - rss0) * 1024.0 / n))
        sample = next(c.scan_iter(match="bd:{u:*}:wait:*"))
        print("  one wait's body: %d bytes of value, MEMORY USAGE %s bytes" %
              (c.strlen(sample), c.memory_usage(sample)))

        if args.total > n:
            print("poll cost with %d pending waits, none due:" % args.total)
            fill(env, c, n, args.total - n)
        n = pending(c)
        c.config_resetstat()
        t0 = time.monotonic()
        time.sleep(5)   # the daemon polls its 4 partitions every 250 ms meanwhile
        el = time.monotonic() - t0
        st = c.info("commandstats").get("cmdstat_zrangebyscore", {})
        calls = int(st.get("calls", 0))
        print("  %d pending: daemon's polls in %.1fs: %d ZRANGEBYSCORE, %.2f us each in Redis (%s us total)" %
              (n, el, calls, float(st.get("usec_per_call", 0)), st.get("usec", 0)))
        key = max(c.scan_iter(match="bd:timers:*"), key=c.zcard)
        now = int(time.time() * 1000)
        t0 = time.perf_counter()
        for _ in range(1000):
            r = c.zrangebyscore(key, "-inf", now, start=0, num=500, withscores=True)
        dt = (time.perf_counter() - t0) / 1000
        print("  client-timed ZRANGEBYSCORE on %s (%d members): %.1f us round trip, %d due" %
              (key, c.zcard(key), dt * 1e6, len(r)))
        print("  redis used_memory at %d pending: %d MB (%.0f bytes per wait); daemon VmRSS %d kB" %
              (n, int(c.info("memory")["used_memory"]) // (1 << 20),
               (int(c.info("memory")["used_memory"]) - mem0) / n, rss_kb(d.pid)))
        d.stop()
    finally:
        env.close()


if __name__ == "__main__":
    main()
