#!/usr/bin/python3
"""End-to-end tests of benefitd: Kafka (librdkafka mock) -> daemon -> Redis.

Each test starts its own redis-server, mock cluster and daemon(s) on
loopback, and checks what lands in Redis against `benefitd replay` of the
same events: the daemon and replay share the decision code, so the grants
must be the same ones, whatever happened in between (kill -9, a Redis
restart, duplicate delivery, a reload).

Run from the repo root: /usr/bin/python3 -m unittest -v tests/integration/test_pipeline.py
(or tests/integration/run-all). Needs `make all`.
"""
import datetime
import json
import os
import re
import sys
import time
import unittest
from collections import Counter
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    REPO, IntegrationTest, HarnessError, check, count_grants, duplicates, gen_events, parse_kv_line,
    read_dead_letters, read_grants, replay, sig_mod, wait_for)

# A rule set of our own (so tweaks to the sample rules/ cannot move these
# tests) that uses what the engine decides on: where, groups with
# priorities, variants with a holdout, `to:`, shadow mode, expression values,
# message templates, stream and list channels, the default channel.
RICH_RULES = {
    "big-order.yaml": """\
id: big-order
description: A coupon for orders of 250 or more.
group: order-thanks
priority: 10
trigger:
  event: Order Completed
  where: properties.total >= 250
grant:
  benefit: coupon
  sku: BIG-250
  value: 25
  expires_in: 30d
  channel: email
  message: "Order {{properties.order_id}}: 25 off your next order"
""",
    "huge-order.yaml": """\
id: huge-order
description: Points worth 10% of orders of 500 or more; beats big-order.
group: order-thanks
priority: 20
trigger:
  event: Order Completed
  where: properties.total >= 500
grant:
  benefit: points
  sku: LOYALTY
  value: "floor(properties.total * 0.1)"
  expires_in: 52w
  channel: email
  message: "{{floor(properties.total * 0.1)}} points for order {{properties.order_id}}"
""",
    "cart-push.yaml": """\
id: cart-push
description: A/B test of a cart coupon, with a holdout.
trigger:
  event: Product Added
  where: properties.price >= 100
grant:
  benefit: coupon
  sku: CART-10
  value: 10
  expires_in: 72h
  channel: push
  message: "{{properties.name}} is in your cart"
variants:
  - {name: ten, weight: 45}
  - {name: twenty, weight: 45, grant: {sku: CART-20, value: 20}}
  - {name: holdout, weight: 10, holdout: true}
""",
    "referral.yaml": """\
id: referral
description: Points to the referrer of a new member (default channel).
trigger:
  event: Signed Up
  where: exists(properties.referrer_id) and properties.referrer_id != user_id
grant:
  benefit: points
  sku: REFERRAL
  value: 250
  to: properties.referrer_id
  message: "A friend joined with your link"
""",
    "views-shadow.yaml": """\
id: views-shadow
description: Decided and counted, never granted.
mode: shadow
trigger:
  event: Product Viewed
  where: properties.price >= 200
grant: {benefit: coupon, sku: VIEW-5, value: 5, channel: push}
""",
}

DEAD_LETTER_REASONS = ("not JSON", "no user id", "no event name", "too large", "not a JSON object")

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def iso_to_ms(s):
    t = datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return int(round(t.timestamp() * 1000))


def ev(event_name, user, mid, ts="2026-11-24T10:00:00.000Z", **props):
    return {"type": "track", "event": event_name, "userId": user, "messageId": mid, "timestamp": ts,
            "properties": props, "context": {"ip": "192.0.2.7", "device": {"id": "d-1"}}}


def write_jsonl(path, events):
    with open(path, "w") as f:
        for e in events:
            f.write((e if isinstance(e, str) else json.dumps(e)) + "\n")
    return path


def stats_line(log):
    lines = [l for l in log.splitlines() if "event=stats " in l]
    return parse_kv_line(lines[-1]) if lines else None


class PipelineTest(IntegrationTest):

    def setUp(self):
        super().setUp()
        self.env.start_backends()
        self.rules = self.env.write_rules(RICH_RULES)

    def replay_of(self, events_path, rules_dir=None):
        return replay(rules_dir or self.rules, events_path, config=self.env.config_path)

    def assertRuleCoverage(self, grants):
        """The comparison with replay is only as good as what it covers."""
        by_rule = Counter(g["rule"] for g in grants)
        for rule in ("big-order", "huge-order", "cart-push", "referral"):
            self.assertGreater(by_rule[rule], 0, "no %s grant in the data set: %s" % (rule, dict(by_rule)))
        self.assertEqual(by_rule["views-shadow"], 0, "a shadow rule granted")
        self.assertNotIn("holdout", {g["variant"] for g in grants}, "a holdout member got a grant")
        self.assertEqual({g["variant"] for g in grants if g["rule"] == "cart-push"}, {"ten", "twenty"})

    # ------------------------------------------------------------------ a
    def test_a_end_to_end_matches_replay(self):
        events = gen_events(self.env.dir / "day.jsonl", seed=42, members=200, events=2000, bad=6)
        self.env.write_config()
        self.env.start_daemon()
        self.env.kafka.produce(events)
        self.assertEqual(self.env.kafka.count(), 2006)
        self.env.wait_all_committed()

        c = self.env.client()
        live = read_grants(c)
        rep = self.replay_of(events)
        self.assertGreater(len(rep.grants), 50)
        self.assertGrantsMatchReplay(live, rep.grants)
        self.assertRuleCoverage(live)

        # each grant sits in its channel's queue: list for push, stream otherwise
        for g in live:
            if g["channel"] == "push":
                self.assertEqual(g["_key"], "bd:queue:push")
            else:
                self.assertEqual(g["_key"], "bd:grants:" + g["channel"])
        self.assertEqual(set(c.scan_iter(match="bd:grants:*")) | set(c.scan_iter(match="bd:queue:*")),
                         {"bd:grants:email", "bd:grants:default", "bd:queue:push"})
        # a claim key per grant, with the trigger member's hash tag
        claims = set(c.scan_iter(match="bd:{u:*}:grant:*", count=1000))
        self.assertEqual(claims, {"bd:{u:%s}:grant:%s" % (g["trigger"]["user_id"], g["grant_id"]) for g in live})
        ttl = c.pttl(next(iter(claims)))
        self.assertTrue(29 * 86400000 < ttl <= 30 * 86400000, ttl)

        # live grants are stamped by the wall clock, replay's by event time
        now = time.time() * 1000
        for g in live:
            self.assertRegex(g["issued_at"], ISO_MS)
            self.assertLess(abs(iso_to_ms(g["issued_at"]) - now), 300000, g["issued_at"])
            self.assertEqual(g["deliver_after"], g["issued_at"])
        for g in rep.grants:
            self.assertEqual(g["issued_at"], g["trigger"]["timestamp"])

        # replay reports the 6 bad lines and exits 3; the daemon dead-letters
        # exactly those lines, with the same reasons
        self.assertEqual(rep.rc, 3, rep.stderr)
        self.assertEqual(len(rep.bad_lines), 6, rep.stderr)
        lines = events.read_text().split("\n")
        expected = Counter((lines[n - 1], reason) for n, reason in rep.bad_lines)
        dl = read_dead_letters(c)
        self.assertEqual(len(dl), 6, [d["reason"] for d in dl])
        self.assertEqual(Counter((d["payload"], d["reason"]) for d in dl), expected)
        for d in dl:
            self.assertTrue(d["reason"].startswith(DEAD_LETTER_REASONS), d["reason"])
            self.assertEqual(d["topic"], "events")
            self.assertIn(int(d["partition"]), range(4))
            self.assertGreaterEqual(int(d["offset"]), 0)
        self.assertEqual({r.split(":")[0] for _, r in rep.bad_lines},
                         {"not JSON", "no user id", "no event name", "too large", "not a JSON object"})
        self.assertEqual(len({(d["partition"], d["offset"]) for d in dl}), 6)

    # ------------------------------------------------------------------ b
    def test_b_exact_grants_for_hand_written_events(self):
        t0 = time.time() * 1000
        evs = [
            ev("Order Completed", "u-a", "m-1", total=250, order_id="o-1"),
            ev("Order Completed", "u-b", "m-2", total=249.99, order_id="o-2"),   # below every threshold
            ev("Order Completed", "u-c", "m-3", total=612.5, order_id="o-3"),    # huge-order wins the group
            ev("Signed Up", "u-new", "m-4", referrer_id="u-ref"),                # grants to the referrer
            ev("Signed Up", "u-new2", "m-5"),                                    # no referrer: nothing
            ev("Signed Up", "u-self", "m-6", referrer_id="u-self"),              # self-referral: nothing
            ev("Product Viewed", "u-d", "m-7", price=999, name="TV"),            # shadow: nothing
            ev("Product Added", "u-d", "m-8", price=99.99, name="Lamp"),         # below 100: nothing
            ev("Payment Failed", "u-e", "m-9", total=1000),                      # no rule for it
        ]
        # Product Added at >= 100 for members until one lands outside the holdout
        for i in range(10):
            evs.append(ev("Product Added", "u-cart-%d" % i, "m-c%d" % i, price=150, name="Kettle"))
        path = write_jsonl(self.env.dir / "hand.jsonl", evs)
        self.env.write_config()
        self.env.start_daemon()
        self.env.kafka.produce(path)
        self.env.wait_all_committed()
        t1 = time.time() * 1000

        c = self.env.client()
        live = read_grants(c)
        rep = self.replay_of(path)
        self.assertEqual(rep.rc, 0, rep.stderr)
        self.assertGrantsMatchReplay(live, rep.grants)
        by_mid = {}
        for g in live:
            by_mid.setdefault(g["trigger"]["message_id"], []).append(g)
        self.assertEqual(set(by_mid) - {"m-c%d" % i for i in range(10)}, {"m-1", "m-3", "m-4"})
        for mid, gs in by_mid.items():
            self.assertEqual(len(gs), 1, "%s granted %d times" % (mid, len(gs)))

        g = by_mid["m-1"][0]
        self.assertRegex(g["grant_id"], r"^g[0-9a-f]{32}$")
        self.assertEqual(g["rule"], "big-order")
        self.assertRegex(g["rule_version"], r"^[0-9a-f]{16}$")
        self.assertIsNone(g["variant"])
        self.assertEqual(g["user_id"], "u-a")
        self.assertEqual(g["benefit"]["type"], "coupon")
        self.assertEqual(g["benefit"]["sku"], "BIG-250")
        self.assertEqual(g["benefit"]["value"], 25)
        self.assertIsNone(g["benefit"]["code"])
        self.assertEqual(g["channel"], "email")
        self.assertEqual(g["message"], "Order o-1: 25 off your next order")
        self.assertEqual(g["trigger"], {"event": "Order Completed", "message_id": "m-1", "user_id": "u-a",
                                        "timestamp": "2026-11-24T10:00:00.000Z"})
        issued = iso_to_ms(g["issued_at"])
        self.assertTrue(t0 - 1000 <= issued <= t1 + 1000, (t0, g["issued_at"], t1))
        self.assertEqual(iso_to_ms(g["benefit"]["expires_at"]) - issued, 30 * 86400000)
        self.assertEqual(g["deliver_after"], g["issued_at"])
        self.assertEqual(g["_key"], "bd:grants:email")

        g = by_mid["m-3"][0]
        self.assertEqual((g["rule"], g["user_id"], g["benefit"]["sku"], g["benefit"]["value"]),
                         ("huge-order", "u-c", "LOYALTY", 61))
        self.assertEqual(g["message"], "61 points for order o-3")
        self.assertEqual(iso_to_ms(g["benefit"]["expires_at"]) - iso_to_ms(g["issued_at"]), 52 * 7 * 86400000)

        g = by_mid["m-4"][0]
        self.assertEqual((g["rule"], g["user_id"], g["trigger"]["user_id"]), ("referral", "u-ref", "u-new"))
        self.assertEqual((g["benefit"]["type"], g["benefit"]["value"], g["benefit"]["expires_at"]),
                         ("points", 250, None))
        self.assertEqual((g["channel"], g["_key"]), ("default", "bd:grants:default"))
        # the claim carries the hash tag of the member whose event it was
        self.assertEqual(c.exists("bd:{u:u-new}:grant:" + g["grant_id"]), 1)

        carts = [gs[0] for mid, gs in by_mid.items() if mid.startswith("m-c")]
        self.assertGreater(len(carts), 0)
        for g in carts:
            self.assertEqual(g["_key"], "bd:queue:push")
            self.assertIn((g["variant"], g["benefit"]["sku"], g["benefit"]["value"]),
                          {("ten", "CART-10", 10), ("twenty", "CART-20", 20)})
            self.assertEqual(g["message"], "Kettle is in your cart")
        # holdout members: suppressed, like replay says
        explain = replay(self.rules, path, config=self.env.config_path, explain=True)
        held = {e["trigger"]["message_id"] for e in explain.explained if e["reason"] == "holdout"}
        self.assertEqual(held | {g["trigger"]["message_id"] for g in carts}, {"m-c%d" % i for i in range(10)})

        # both kinds of queue received: the list and the streams
        self.assertEqual(c.type("bd:queue:push"), "list")
        self.assertEqual(c.llen("bd:queue:push"), len(carts))
        self.assertEqual(c.type("bd:grants:email"), "stream")
        self.assertEqual(c.xlen("bd:grants:email"), 2)
        self.assertEqual(c.xlen("bd:grants:default"), 1)
        self.assertEqual(c.exists("bd:deadletter"), 0)

    # ------------------------------------------------------------------ c
    def test_c_kill9_mid_stream_then_restart(self):
        events = gen_events(self.env.dir / "day.jsonl", seed=7, members=300, events=3000)
        # (the harness's config has a short Kafka session: a dead member
        # holds a rebalance until its session times out)
        self.env.write_config()
        rep = self.replay_of(events)
        self.assertGreater(len(rep.grants), 50)
        d1 = self.env.start_daemon()
        prod = self.env.background(self.env.kafka.produce_background(events, 1500, self.env.dir / "produce.log"))
        c = self.env.client()
        wait_for(lambda: count_grants(c) >= len(rep.grants) // 4, 30, "a quarter of the grants")
        d1.kill9()
        self.assertTrue(prod.alive() or self.env.kafka.lag() > 0, "killed too late: everything was committed")
        # writes already sent before the kill may still be executing
        last = [-1]

        def settled():
            n = count_grants(c)
            done, last[0] = n == last[0], n
            return done
        wait_for(settled, 10, "Redis to settle after the kill", interval=0.3)
        at_kill = last[0]
        self.assertLess(at_kill, len(rep.grants))

        d2 = self.env.start_daemon(timeout=60)
        self.assertEqual(prod.wait(60), 0, "producer failed")
        self.env.wait_all_committed(timeout=90)
        live = read_grants(c)
        self.assertGrantsMatchReplay(live, rep.grants, "after kill -9")
        self.assertEqual(d2.terminate(), 0)
        st = stats_line(d2.log())
        self.assertIsNotNone(st)
        # the second daemon pushed exactly what the first had not
        self.assertEqual(int(st["pushed"]), len(rep.grants) - at_kill, st)
        # and what it re-read after the kill was recognised as already granted
        # (or refused in the grant step: a group's runner-up when the winner granted)
        self.assertEqual(int(st["pushed"]) + int(st["repeats"]) + int(st["refused"]), int(st["grants"]), st)

    # ------------------------------------------------------------------ d
    def test_d_sigterm_graceful_stop(self):
        events = gen_events(self.env.dir / "day.jsonl", seed=3, members=100, events=500)
        self.env.write_config()
        d = self.env.start_daemon()
        self.env.kafka.produce(events)
        self.env.wait_all_committed()
        c = self.env.client()
        before = count_grants(c)
        # every one of these grants: when all of them are in Redis, every
        # event was decided, and at most its offset is still uncommitted
        extra = [ev("Order Completed", "u-x%02d" % i, "m-x%02d" % i, total=300, order_id="o-x%d" % i)
                 for i in range(40)]
        extra_path = write_jsonl(self.env.dir / "extra.jsonl", extra)
        self.env.kafka.produce(extra_path)
        self.env.wait_grants(before + 40)
        rc = d.terminate(timeout=30)
        self.assertEqual(rc, 0)
        log = d.log()
        self.assertRegex(log, r"event=stopping signal=15")
        self.assertRegex(log.splitlines()[-1], r"level=info event=stopped")
        st = stats_line(log)
        self.assertEqual(st["inflight"], "0")
        # the stop committed what was processed: nothing left behind
        lag = wait_for(lambda: self.env.kafka.lag() is not None and [self.env.kafka.lag()], 20, "a lag probe")[0]
        self.assertEqual(lag, 0)
        self.assertEqual(self.env.kafka.committed(), 540)
        all_events = self.env.dir / "all.jsonl"
        all_events.write_text(events.read_text() + extra_path.read_text())
        self.assertGrantsMatchReplay(read_grants(c), self.replay_of(all_events).grants)

        # a restart carries on where the stop left off: nothing is read twice
        more = [ev("Order Completed", "u-y%02d" % i, "m-y%02d" % i, total=300, order_id="o-y%d" % i)
                for i in range(20)]
        more_path = write_jsonl(self.env.dir / "more.jsonl", more)
        d2 = self.env.start_daemon()
        self.env.kafka.produce(more_path)
        self.env.wait_all_committed()
        self.assertEqual(d2.terminate(), 0)
        st = stats_line(d2.log())
        self.assertEqual((int(st["consumed"]), int(st["pushed"]), int(st["repeats"])), (20, 20, 0), st)
        all_events.write_text(all_events.read_text() + more_path.read_text())
        self.assertGrantsMatchReplay(read_grants(c), self.replay_of(all_events).grants)

    # ------------------------------------------------------------------ e
    def test_e_redis_restart_mid_stream(self):
        events = gen_events(self.env.dir / "day.jsonl", seed=11, members=300, events=3000)
        self.env.write_config()
        rep = self.replay_of(events)
        d = self.env.start_daemon()
        prod = self.env.background(self.env.kafka.produce_background(events, 1000, self.env.dir / "produce.log"))
        c = self.env.client()
        wait_for(lambda: count_grants(c) >= len(rep.grants) // 5, 30, "a fifth of the grants")
        # hold the daemon's writes so that some are in flight when Redis goes
        c.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
        wait_for(lambda: any("b" in cl.get("flags", "") for cl in c.client_list()), 10,
                 "a daemon write held by CLIENT PAUSE")
        self.env.redis.stop()
        m = d.wait_log(r"event=redis_disconnected .*pending=(\d+)", 10)
        self.assertGreater(int(m.group(1)), 0, "no write was in flight when Redis went away")
        time.sleep(1.5)  # the outage itself, not a wait for a condition
        self.assertTrue(d.alive())
        self.env.redis.start()
        m = d.wait_log(r"event=redis_ready .*resent=(\d+)", 20, count=2)
        self.assertGreater(int(m.group(1)), 0, "nothing resent after the reconnect")
        self.assertEqual(prod.wait(60), 0, "producer failed")
        self.env.wait_all_committed(timeout=90)
        c = self.env.client()
        self.assertGrantsMatchReplay(read_grants(c), rep.grants, "after a Redis restart")
        log = d.log()
        # Kafka paused while Redis was away, and resumed when it came back
        after = log[log.index("event=ready "):]
        self.assertRegex(after, r"(?s)event=kafka_paused.*event=redis_disconnected.*"
                                r"event=redis_ready.*event=kafka_resumed")
        self.assertEqual(d.terminate(), 0)

    # ------------------------------------------------------------------ f
    def test_f_duplicate_delivery_grants_once(self):
        events = gen_events(self.env.dir / "day.jsonl", seed=5, members=150, events=1000)
        self.env.write_config()
        d = self.env.start_daemon()
        self.env.kafka.produce(events)
        self.env.kafka.produce(events)   # same messageIds, new offsets
        self.assertEqual(self.env.kafka.count(), 2000)
        self.env.wait_all_committed()
        rep = self.replay_of(events)
        self.assertGreater(len(rep.grants), 30)
        live = read_grants(self.env.client())
        self.assertGrantsMatchReplay(live, rep.grants, "with every event delivered twice")
        self.assertEqual(d.terminate(), 0)
        st = stats_line(d.log())
        self.assertEqual((int(st["consumed"]), int(st["pushed"]), int(st["repeats"])),
                         (2000, len(rep.grants), len(rep.grants)), st)

    # ------------------------------------------------------------------ g
    def test_g_reload_swaps_good_rules_and_refuses_bad_ones(self):
        rules = self.env.dir / "live-rules"
        self.env.write_rules({"big-order.yaml": RICH_RULES["big-order.yaml"]}, rules)
        only_a = self.env.write_rules({"big-order.yaml": RICH_RULES["big-order.yaml"]}, self.env.dir / "r-a")
        a_and_b = self.env.write_rules({"big-order.yaml": RICH_RULES["big-order.yaml"],
                                        "cart-push.yaml": RICH_RULES["cart-push.yaml"]}, self.env.dir / "r-ab")
        self.env.write_config(rules_dir=rules)

        def batch(n):
            evs = []
            for i in range(8):
                evs.append(ev("Order Completed", "u-%d-%d" % (n, i), "m-%d-o%d" % (n, i), total=300,
                              order_id="o-%d-%d" % (n, i)))
                evs.append(ev("Product Added", "u-%d-%d" % (n, i), "m-%d-a%d" % (n, i), price=150, name="Kettle"))
            return write_jsonl(self.env.dir / ("batch%d.jsonl" % n), evs)

        c = self.env.client()
        d = self.env.start_daemon()
        d.wait_log(r"event=ready rules=1 ")
        b1 = batch(1)
        self.env.kafka.produce(b1)
        self.env.wait_all_committed()
        expect = self.replay_of(b1, only_a).grants
        self.assertEqual({g["rule"] for g in expect}, {"big-order"})
        self.assertGrantsMatchReplay(read_grants(c), expect, "before any reload")

        # a good second rule: swapped in on SIGHUP
        (rules / "cart-push.yaml").write_text(RICH_RULES["cart-push.yaml"])
        d.send(sig_mod.SIGHUP)
        m = d.wait_log(r"event=reloaded rules=2 version=(\w+)", 10)
        good_version = m.group(1)
        b2 = batch(2)
        self.env.kafka.produce(b2)
        self.env.wait_all_committed()
        r2 = self.replay_of(b2, a_and_b).grants
        self.assertEqual({g["rule"] for g in r2}, {"big-order", "cart-push"})
        expect += r2
        self.assertGrantsMatchReplay(read_grants(c), expect, "after the reload")

        # a broken file: refused, located, and the running set keeps granting
        (rules / "zz-broken.yaml").write_text(
            "id: broken\n"
            "trigger:\n"
            "  event: Order Completed\n"
            "  evnt: Product Added\n"
            "grant: {benefit: coupon, sku: X}\n")
        d.send(sig_mod.SIGHUP)
        m = d.wait_log(r"event=reload_refused errors=(\d+) kept_version=(\w+)", 10)
        self.assertEqual(m.group(2), good_version)
        self.assertIn("%s/zz-broken.yaml:4:3: unknown key 'evnt' (did you mean 'event'?)" % rules, d.log())
        self.assertTrue(d.alive())
        b3 = batch(3)
        self.env.kafka.produce(b3)
        self.env.wait_all_committed()
        r3 = self.replay_of(b3, a_and_b).grants
        self.assertEqual(Counter(g["rule"] for g in r3)["big-order"], 8)
        expect += r3
        self.assertGrantsMatchReplay(read_grants(c), expect, "after a refused reload")
        self.assertEqual(d.terminate(), 0)

    # ------------------------------------------------------------------ i
    def test_i_backpressure_pauses_and_loses_nothing(self):
        events = gen_events(self.env.dir / "day.jsonl", seed=9, members=200, events=3000, bad=6)
        self.env.write_config()
        # two writes in flight at most: reading is held back and released all along
        self.env.config_path.write_text(self.env.config_path.read_text().replace("max_inflight: 10000",
                                                                                 "max_inflight: 2"))
        d = self.env.start_daemon()
        self.env.kafka.produce(events)
        self.env.wait_all_committed()
        rep = self.replay_of(events)
        c = self.env.client()
        self.assertGrantsMatchReplay(read_grants(c), rep.grants, "under backpressure")
        self.assertEqual(len(read_dead_letters(c)), 6)
        self.assertEqual(d.terminate(), 0)
        st = stats_line(d.log())
        self.assertEqual((int(st["consumed"]), int(st["repeats"])), (3006, 0), st)
        self.assertGreater(int(st["read_holds"]), 0, st)

    # ------------------------------------------------------------------ j
    def test_j_stop_while_redis_stalls_redelivers(self):
        evs = [ev("Order Completed", "u-%03d" % i, "m-%03d" % i, total=300, order_id="o-%d" % i)
               for i in range(200)]
        path = write_jsonl(self.env.dir / "orders.jsonl", evs)
        self.env.write_config()
        self.env.config_path.write_text(self.env.config_path.read_text().replace("shutdown_timeout: 10s",
                                                                                 "shutdown_timeout: 2s"))
        c = self.env.client()
        d1 = self.env.start_daemon()
        # Redis takes the writes but does not answer them
        c.execute_command("CLIENT", "PAUSE", "8000", "WRITE")
        self.env.kafka.produce(path)
        wait_for(lambda: any("b" in cl.get("flags", "") for cl in c.client_list()), 10,
                 "a daemon write held by CLIENT PAUSE")
        t0 = time.monotonic()
        self.assertEqual(d1.terminate(timeout=30), 0)
        self.assertLess(time.monotonic() - t0, 8, "SIGTERM did not honour shutdown_timeout: 2s")
        m = d1.wait_log(r"event=shutdown_timeout unacknowledged=(\d+)", 1)
        self.assertGreater(int(m.group(1)), 0)
        # what was not acknowledged was not committed
        self.assertGreater(self.env.kafka.lag(), 0)
        c.execute_command("CLIENT", "UNPAUSE")
        d2 = self.env.start_daemon()
        self.env.wait_all_committed()
        rep = self.replay_of(path)
        self.assertEqual(len(rep.grants), 200)
        self.assertGrantsMatchReplay(read_grants(c), rep.grants, "after a stop with writes unacknowledged")
        self.assertEqual(d2.terminate(), 0)

    # ------------------------------------------------------------------ k
    def test_k_kafka_broker_outage(self):
        events = gen_events(self.env.dir / "day.jsonl", seed=21, members=300, events=3000)
        self.env.write_config()
        rep = self.replay_of(events)
        d = self.env.start_daemon()
        prod = self.env.background(self.env.kafka.produce_background(events, 1000, self.env.dir / "produce.log"))
        c = self.env.client()
        wait_for(lambda: count_grants(c) >= len(rep.grants) // 5, 30, "a fifth of the grants")
        self.env.kafka.control("down 1")
        time.sleep(2)  # the outage itself, not a wait for a condition
        self.env.kafka.control("up 1")
        self.assertEqual(prod.wait(90), 0, "producer failed")
        self.env.wait_all_committed(timeout=90)
        self.assertGrantsMatchReplay(read_grants(c), rep.grants, "after a broker outage")
        self.assertTrue(d.alive())
        self.assertEqual(d.terminate(), 0)

    # ------------------------------------------------------------------ l
    def test_l_failed_push_is_retried_not_dropped(self):
        """Redis does not roll a failed script back. A push that fails at run
        time (here WRONGTYPE: the queue key holds another type) must leave no
        claim behind, so the sink's retry pushes the grant once the operator
        repairs the key."""
        # Cart pushes (a healthy list) before and among the orders (a broken
        # stream), all of one member (one partition, so the file's order is
        # the daemon's): the sink sends consecutive script calls as one batch,
        # which stops at the failed call. What precedes it is acknowledged; it
        # and everything after it, pushes included, wait for the repair.
        def events(user):
            evs = [ev("Product Added", user, "a-%d" % i, price=150, name="lamp") for i in range(6)]
            for i in range(3):
                evs.append(ev("Order Completed", user, "m-%d" % i, total=300, order_id="o-%d" % i))
                evs += [ev("Product Added", user, "a-%d-%d" % (i, k), price=150, name="lamp") for k in range(3)]
            return evs
        for user in ("u-1", "u-2", "u-3", "u-4", "u-5"):  # one the cart test does not hold out
            path = write_jsonl(self.env.dir / "orders.jsonl", events(user))
            rep = self.replay_of(path)
            if any(g["rule"] == "cart-push" for g in rep.grants):
                break
        before = [g for g in rep.grants if g["trigger"]["message_id"] in ["a-%d" % i for i in range(6)]]
        self.assertEqual(len(before), 6)
        self.assertEqual(sum(1 for g in rep.grants if g["rule"] in ("big-order", "huge-order")), 3)
        self.env.write_config()
        c = self.env.client()
        c.set("bd:grants:email", "not a stream")   # e.g. a channel's kind changed in the config
        d = self.env.start_daemon()
        self.env.kafka.produce(path)
        d.wait_log(r"event=redis_write_error .*WRONGTYPE", 20)
        # (a later batch already sent may have run too: its calls are resent
        # all the same, and their claims make the resend a repeat)
        wait_for(lambda: c.llen("bd:queue:push") >= len(before), 10, "the pushes before the failed call")
        c.delete("bd:grants:email")                # the operator repairs it
        self.env.wait_all_committed()
        self.assertGrantsMatchReplay(read_grants(c), rep.grants, "after a failed push")

    # ------------------------------------------------------------------ h
    def test_h_check_reports_located_errors(self):
        bad = self.env.write_rules({
            "ok.yaml": RICH_RULES["big-order.yaml"],
            "late-nudge.yaml": (
                "id: late-nudge\n"
                "trigger:\n"
                "  event: Product Added\n"
                "wiat: 30m\n"
                "cancel_on: [Order Completed]\n"
                "grant: {benefit: coupon, sku: LATE-5, value: 5}\n"),
        }, self.env.dir / "bad-rules")
        rc, out, err = check("--rules", bad)
        self.assertEqual(rc, 1, out + err)
        self.assertIn("%s/late-nudge.yaml:4:1: unknown key 'wiat' (did you mean 'wait'?)" % bad,
                      err.splitlines())
        for line in err.splitlines():
            if "late-nudge.yaml" in line:
                self.assertRegex(line, r"^\S+:\d+:\d+: ")

        # a config pointing at those rules fails the same way
        self.env.write_config(rules_dir=bad)
        rc, out, err = check("-c", self.env.config_path)
        self.assertEqual(rc, 1)
        self.assertIn("late-nudge.yaml:4:1: unknown key 'wiat'", err)

        # the daemon does not start on them either
        d = self.env.start_daemon(wait_assigned=False)
        self.assertEqual(d.proc.wait(20), 1)
        self.assertIn("unknown key 'wiat'", d.log())

        # the repo's samples pass, with and without the sample config
        rc, out, err = check("-c", REPO / "etc" / "benefitd.yaml")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"OK")
        rc, out, err = check("--rules", REPO / "rules")
        self.assertEqual(rc, 0, err)
        # and so do this suite's own rules
        rc, out, err = check("--rules", self.rules)
        self.assertEqual(rc, 0, err)
        self.assertIn("5 rules", out)


if __name__ == "__main__":
    unittest.main(verbosity=2)
