#!/usr/bin/python3
"""Daemon-wide policy and the stats, live (docs/policy.md): frequency_cap and
quiet_hours in the grant step, the counters by rule, variant and reason in
Redis, and `benefitd stats`, with the real daemon, redis-server and the
librdkafka mock cluster.

- frequency cap live = replay, grant for grant (a member's events are decided
  in order on one partition); deliver_after (quiet hours, in the member's
  context.timezone when it has one) live = replay;
- `benefitd stats --json` equals `replay --stats --json`, and its numbers are
  recomputed here from the grants in Redis and from the events;
- the closed loop: redemptions (some redelivered, some of unknown grants) and
  orders from granted and held-out members; redeemed / converted, the rates
  and the uplift live = replay = recomputed from the events and the grants.

Run from the repo root: /usr/bin/python3 -m unittest -v tests/integration/test_stats.py
"""
import datetime
import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BENEFITD, IntegrationTest, read_grants, replay, wait_for  # noqa: E402


def now_ms():
    return int(time.time() * 1000)


def iso(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def hhmm(dt):
    return "%02d:%02d" % (dt.hour, dt.minute)


KEYS = ("triggered", "granted", "suppressed", "delayed_quiet_hours", "holdout_size", "suppressed_by_reason")


class StatsTest(IntegrationTest):

    def setUp(self):
        super().setUp()
        self.env.start_backends()

    def stats_cli(self, *args):
        r = subprocess.run([str(BENEFITD), "stats", "-c", str(self.env.config_path)] + list(args),
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r.stdout

    def test_frequency_cap_quiet_hours_and_stats(self):
        self.env.write_rules({
            "promo.yaml": "id: promo\npriority: 10\ntrigger: {event: Order Completed}\n"
                          "limits: {per_user: 2/1h}\n"
                          "grant: {benefit: coupon, sku: P, value: 5, channel: email}\n"
                          "variants:\n  - {name: five, weight: 70}\n  - {name: control, weight: 30, holdout: true}\n",
            "extra.yaml": "id: extra\ntrigger: {event: Order Completed}\n"
                          "grant: {benefit: points, sku: X, value: 1, channel: email}\n"})
        # quiet hours around now in UTC (22:00 in Tokyo is never inside them unless
        # they happen to cover it: the comparison is with replay, not a constant)
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = now - datetime.timedelta(minutes=30), now + datetime.timedelta(hours=2)
        self.env.write_config(channels={},
                              extra="frequency_cap: 3/1h\nquiet_hours: %s-%s\n" % (hhmm(start), hhmm(end)))
        t0 = now_ms() - 5000
        events = []
        for u in range(40):
            for k in range(3):
                ev = {"type": "track", "event": "Order Completed", "userId": "m%02d" % u,
                      "messageId": "o-%d-%d" % (u, k), "timestamp": iso(t0 + u * 20 + k)}
                if u % 4 == 0:
                    ev["context"] = {"timezone": "Asia/Tokyo"}
                events.append(ev)
        path = self.env.dir / "events.jsonl"
        path.write_text("".join(json.dumps(e) + "\n" for e in events))
        rep = replay(self.env.rules_dir, path, config=self.env.config_path, explain=True)
        self.assertEqual(rep.rc, 0, rep.stderr)
        reasons = {x["reason"] for x in rep.explained if x.get("outcome") == "suppressed"}
        self.assertIn("frequency cap", reasons)
        self.assertIn("holdout", reasons)
        self.assertIn("limit per_user", reasons)
        want = {g["grant_id"]: g for g in rep.grants}
        self.assertTrue(any(g["deliver_after"] != g["issued_at"] for g in want.values()))

        self.env.start_daemon()
        self.env.kafka.produce(path)
        self.env.wait_all_committed()
        c = self.env.client()
        live = {g["grant_id"]: g for g in read_grants(c)}
        self.assertEqual(set(live), set(want))
        # deliver_after: live decides at processing time, a few seconds after the
        # events; the quiet period is the same one unless its end was crossed
        for gid, g in live.items():
            self.assertEqual(g["deliver_after"] == g["issued_at"], want[gid]["deliver_after"] == want[gid]["issued_at"],
                             gid)
            if want[gid]["deliver_after"] != want[gid]["issued_at"]:
                self.assertEqual(g["deliver_after"], want[gid]["deliver_after"], gid)

        # the same table as replay's
        r = subprocess.run([str(BENEFITD), "replay", "--rules", str(self.env.rules_dir), "--config",
                            str(self.env.config_path), "--stats", "--json", str(path)],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = [json.loads(x) for x in r.stdout.splitlines() if x.startswith('{"rules"')]
        self.assertEqual(len(rows), 1)
        want_stats = {(x["rule"], x["variant"]): {k: x[k] for k in KEYS} for x in rows[0]["rules"]}

        def live_stats():
            out = json.loads(self.stats_cli("--json"))
            return {(x["rule"], x["variant"]): {k: x[k] for k in KEYS} for x in out["rules"]}

        wait_for(lambda: live_stats() == want_stats, 10, "live stats equal to replay's: %s vs %s" % (
            want_stats, live_stats()))

        # recomputed from the grants in Redis and the events
        got = live_stats()
        by = {}
        for g in live.values():
            by[(g["rule"], g["variant"])] = by.get((g["rule"], g["variant"]), 0) + 1
        for key, n in by.items():
            self.assertEqual(got[key]["granted"], n, key)
        delayed = sum(1 for g in live.values() if g["deliver_after"] != g["issued_at"])
        self.assertEqual(sum(v["delayed_quiet_hours"] for v in got.values()), delayed)
        held = {x["user_id"] for x in rep.explained if x.get("reason") == "holdout"}
        self.assertEqual(got[("promo", "control")]["holdout_size"], len(held))
        self.assertEqual(got[("promo", "control")]["granted"], 0)
        triggered = sum(v["triggered"] for k, v in got.items() if k[0] == "promo")
        self.assertEqual(triggered, len(events))
        self.assertEqual(sum(v["triggered"] for k, v in got.items() if k[0] == "extra"), len(events))
        capped = sum(1 for x in rep.explained if x.get("reason") == "frequency cap")
        self.assertEqual(sum(v["suppressed_by_reason"].get("frequency cap", 0) for v in got.values()), capped)
        # the text table names every row
        text = self.stats_cli()
        self.assertIn("promo", text)
        self.assertIn("control", text)
        self.assertIn("frequency cap", text)

    def test_closed_loop(self):
        self.env.write_rules({
            "promo.yaml": "id: promo\ntrigger: {event: Signed Up}\n"
                          "grant: {benefit: coupon, sku: P, value: 5, channel: email}\n"
                          "variants:\n  - {name: five, weight: 60}\n  - {name: control, weight: 40, holdout: true}\n"})
        self.env.write_config(channels={}, extra="loop: {redemption_events: [Coupon Redeemed, Benefit Redeemed], "
                                                 "conversion_events: [Order Completed], attribution_window: 7d}\n")
        t0 = now_ms() - 10000
        n = 60
        signups = [{"type": "track", "event": "Signed Up", "userId": "m%02d" % u, "messageId": "s-%d" % u,
                    "timestamp": iso(t0 + u)} for u in range(n)]
        path = self.env.dir / "signups.jsonl"
        path.write_text("".join(json.dumps(e) + "\n" for e in signups))
        rep = replay(self.env.rules_dir, path, config=self.env.config_path)
        self.assertEqual(rep.rc, 0, rep.stderr)
        gid_of = {g["user_id"]: g["grant_id"] for g in rep.grants}
        self.assertTrue(10 < len(gid_of) < n)

        events = list(signups)
        for u in range(n):
            m = "m%02d" % u
            if m in gid_of and u % 2 == 0:
                r = {"type": "track", "event": "Coupon Redeemed", "userId": m, "messageId": "r-%d" % u,
                     "timestamp": iso(t0 + 1000 + u), "properties": {"grant_id": gid_of[m]}}
                events.append(r)
                if u % 4 == 0:
                    events.append(dict(r))  # redelivered
                    events.append(dict(r, event="Benefit Redeemed", messageId="r2-%d" % u,
                                       timestamp=iso(t0 + 1500 + u)))  # redeemed again
            if u % 3 != 0:
                for k in range(1 + u % 2):  # some order twice
                    events.append({"type": "track", "event": "Order Completed", "userId": m,
                                   "messageId": "o-%d-%d" % (u, k), "timestamp": iso(t0 + 2000 + 10 * u + k)})
        other = next(u for u in gid_of if u != "m01")
        events.append({"type": "track", "event": "Coupon Redeemed", "userId": "m01", "messageId": "x-1",
                       "timestamp": iso(t0 + 3000), "properties": {"grant_id": "gnosuchgrant"}})
        events.append({"type": "track", "event": "Coupon Redeemed", "userId": "m01", "messageId": "x-2",
                       "timestamp": iso(t0 + 3001), "properties": {"grant_id": gid_of[other]}})  # not m01's grant
        path = self.env.dir / "events.jsonl"
        path.write_text("".join(json.dumps(e) + "\n" for e in events))

        self.env.start_daemon()
        self.env.kafka.produce(path)
        self.env.wait_all_committed()
        c = self.env.client()
        live = {g["grant_id"]: g for g in read_grants(c)}
        self.assertEqual(set(live), set(gid_of.values()))

        r = subprocess.run([str(BENEFITD), "replay", "--rules", str(self.env.rules_dir), "--config",
                            str(self.env.config_path), "--stats", "--json", str(path)],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = [json.loads(x) for x in r.stdout.splitlines() if x.startswith('{"rules"')]
        self.assertEqual(len(rows), 1)
        want = rows[0]
        wait_for(lambda: json.loads(self.stats_cli("--json")) == want, 10,
                 "live stats equal to replay's: %s vs %s" % (want, self.stats_cli("--json")))
        got = {(x["rule"], x["variant"]): x for x in json.loads(self.stats_cli("--json"))["rules"]}

        # recomputed from the grants in Redis and the events
        grants = {g["grant_id"]: g for g in live.values()}
        redeemed, unknown = set(), 0
        for e in events:
            if e["event"] not in ("Coupon Redeemed", "Benefit Redeemed"):
                continue
            g = grants.get(e["properties"]["grant_id"])
            if g and g["user_id"] == e["userId"]:
                redeemed.add(g["grant_id"])
            else:
                unknown += 1
        ordered = {e["userId"] for e in events if e["event"] == "Order Completed"}
        held = set("m%02d" % u for u in range(n)) - set(gid_of)
        five = [g for g in grants.values() if g["variant"] == "five"]
        self.assertEqual(got[("promo", "five")]["granted"], len(five))
        self.assertEqual(got[("promo", "five")]["redeemed"], len(redeemed))
        conv1 = sum(1 for g in five if g["user_id"] in ordered)
        self.assertEqual(got[("promo", "five")]["converted"], conv1)
        self.assertEqual(got[("promo", "control")]["holdout_size"], len(held))
        conv0 = len(held & ordered)
        self.assertGreater(conv0, 0)
        self.assertEqual(got[("promo", "control")]["converted"], conv0)
        self.assertEqual(json.loads(self.stats_cli("--json"))["redemption_unknown"], unknown)
        self.assertEqual(unknown, 2)
        p1, p0 = conv1 / len(five), conv0 / len(held)
        self.assertAlmostEqual(got[("promo", "five")]["redemption_rate"], len(redeemed) / len(five), places=5)
        self.assertAlmostEqual(got[("promo", "five")]["conversion_rate"], p1, places=5)
        self.assertAlmostEqual(got[("promo", "control")]["conversion_rate"], p0, places=5)
        up = got[("promo", "five")]["uplift"]
        se = (p1 * (1 - p1) / len(five) + p0 * (1 - p0) / len(held)) ** 0.5
        self.assertAlmostEqual(up["diff"], p1 - p0, places=5)
        self.assertAlmostEqual(up["ci95"][0], p1 - p0 - 1.96 * se, places=5)
        self.assertAlmostEqual(up["ci95"][1], p1 - p0 + 1.96 * se, places=5)
        self.assertIsNone(got[("promo", "control")]["uplift"])
        # the keys of the loop
        some = next(iter(redeemed))
        self.assertEqual(c.exists("bd:{u:%s}:redeemed:%s" % (grants[some]["user_id"], some)), 1)
        rec = c.hgetall("bd:{u:%s}:recent" % grants[some]["user_id"])
        self.assertIn(some, rec)
        text = self.stats_cli()
        self.assertIn("redemptions of unknown grants: 2", text)

    def test_per_rule_attribution_window(self):
        """attribution_window per rule: a grant converts within its own
        rule's window. Live windows run on the wall clock, so the short one is
        2 s and the orders come 4 s after the grants; replay, on the events'
        times, gives the same table."""
        self.env.write_rules({
            "fast.yaml": "id: fast\nattribution_window: 2s\ntrigger: {event: Signed Up}\n"
                         "grant: {benefit: coupon, sku: F, value: 1, channel: email}\n",
            "slow.yaml": "id: slow\ntrigger: {event: Signed Up}\n"
                         "grant: {benefit: coupon, sku: S, value: 1, channel: email}\n"})
        self.env.write_config(channels={}, extra="loop: {attribution_window: 7d}\n")
        self.env.start_daemon()
        t0 = now_ms()
        n = 10
        signups = [{"type": "track", "event": "Signed Up", "userId": "a%02d" % u, "messageId": "as-%d" % u,
                    "timestamp": iso(t0)} for u in range(n)]
        p1 = self.env.dir / "signups.jsonl"
        p1.write_text("".join(json.dumps(e) + "\n" for e in signups))
        self.env.kafka.produce(p1)
        c = self.env.client()
        wait_for(lambda: len(read_grants(c)) == 2 * n, 30, "the grants")
        rec = c.hgetall("bd:{u:a00}:recent")
        self.assertEqual(sorted(v.split("\x1e")[3] for v in rec.values()), ["2000", str(7 * 86400000)])
        time.sleep(max(0.0, 4.0 - (now_ms() - t0) / 1000.0))
        t1 = now_ms()
        orders = [{"type": "track", "event": "Order Completed", "userId": "a%02d" % u, "messageId": "ao-%d" % u,
                   "timestamp": iso(t1)} for u in range(n)]
        p2 = self.env.dir / "orders.jsonl"
        p2.write_text("".join(json.dumps(e) + "\n" for e in orders))
        self.env.kafka.produce(p2)
        self.env.wait_all_committed()
        got = {(x["rule"], x["variant"]): x for x in json.loads(self.stats_cli("--json"))["rules"]}
        self.assertEqual(got[("slow", None)]["converted"], n)
        self.assertEqual(got[("fast", None)]["converted"], 0)
        both = self.env.dir / "both.jsonl"
        both.write_text(p1.read_text() + p2.read_text())
        r = subprocess.run([str(BENEFITD), "replay", "--rules", str(self.env.rules_dir), "--config",
                            str(self.env.config_path), "--stats", "--json", str(both)],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        want = [json.loads(x) for x in r.stdout.splitlines() if x.startswith('{"rules"')][0]
        self.assertEqual(json.loads(self.stats_cli("--json")), want)


if __name__ == "__main__":
    unittest.main(verbosity=2)
