#!/usr/bin/python3
"""Policy live: limits, budgets, code pools and the blocklist in the grant
step (docs/policy.md), with the real daemon, a real redis-server and the
librdkafka mock cluster.

- two daemons in one group race for a budget of 1,000 and a pool of 1,000
  codes under 20,000 eligible events: exactly 1,000 grants, 1,000 distinct
  codes, every one from the pool, the audit hash consistent with the grants;
- per_user limits: live grant ids equal replay's;
- an empty pool suppresses (`pool empty`) without blocking the loop; the
  blocklist suppresses; `pool load` reports duplicates and issued codes.

Run from the repo root: /usr/bin/python3 -m unittest -v tests/integration/test_policy.py
(or tests/integration/run-all). Needs `make all`.
"""
import datetime
import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BENEFITD, IntegrationTest, duplicates, read_grants, replay, wait_for  # noqa: E402


def now_ms():
    return int(time.time() * 1000)


def iso(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def order(user, mid, ts, device=None, ip=None):
    ev = {"type": "track", "event": "Order Completed", "userId": user, "messageId": mid, "timestamp": iso(ts),
          "properties": {"total": 50}}
    ctx = {}
    if device:
        ctx["device"] = {"id": device}
    if ip:
        ctx["ip"] = ip
    if ctx:
        ev["context"] = ctx
    return ev


class PolicyTest(IntegrationTest):

    def setUp(self):
        super().setUp()
        self.env.start_backends()

    def cli(self, *args, check=True, input_text=None):
        r = subprocess.run([str(BENEFITD)] + [str(a) for a in args] + ["-c", str(self.env.config_path)],
                           capture_output=True, text=True, timeout=60, input=input_text)
        if check:
            self.assertEqual(r.returncode, 0, "benefitd %s: %s%s" % (" ".join(map(str, args)), r.stdout, r.stderr))
        return r

    def setup_rules(self, rules):
        self.env.write_rules(rules)
        self.env.write_config(channels={})

    def events_file(self, events, name="events.jsonl"):
        path = self.env.dir / name
        with open(path, "w") as f:
            for e in events:
                f.write(json.dumps(e) + "\n")
        return path

    def test_a_two_daemons_race_for_budget_and_pool(self):
        self.setup_rules({"race.yaml": "id: race\n"
                                       "trigger: {event: Order Completed}\n"
                                       "limits: {budget: 1000}\n"
                                       "grant: {benefit: code, pool: race, sku: RACE, channel: email}\n"})
        codes = ["RC-%05d" % i for i in range(1000)]
        codes_path = self.env.dir / "codes.txt"
        codes_path.write_text("\n".join(codes) + "\n")
        out = self.cli("pool", "load", "race", codes_path).stdout
        self.assertIn("added=1000 duplicates=0 already_issued=0 invalid=0 available=1000", out)
        self.env.start_daemon()
        self.env.start_daemon()
        t0 = now_ms()
        events = [order("m%05d" % i, "race-%05d" % i, t0 + i % 1000) for i in range(20000)]
        self.env.kafka.produce(self.events_file(events))
        self.env.wait_all_committed(timeout=120)
        c = self.env.client()
        grants = read_grants(c)
        self.assertEqual(len(grants), 1000)
        ids = [g["grant_id"] for g in grants]
        self.assertEqual(duplicates(ids), {})
        got = [g["benefit"]["code"] for g in grants]
        self.assertEqual(duplicates(got), {})
        self.assertEqual(set(got), set(codes))
        self.assertEqual(c.scard("bd:pool:race"), 0)
        self.assertEqual(c.get("bd:budget:race"), "1000")
        issued = c.hgetall("bd:pool:race:issued")
        self.assertEqual(len(issued), 1000)
        by_code = {g["benefit"]["code"]: g for g in grants}
        for code, rec in issued.items():
            a = json.loads(rec)
            g = by_code[code]
            self.assertEqual((a["grant_id"], a["user_id"], a["rule"]), (g["grant_id"], g["user_id"], "race"))
            self.assertEqual(a["issued_at"], g["issued_at"])
        # a dispute: who got this code?
        some = got[17]
        look = json.loads(self.cli("pool", "lookup", "race", some).stdout)
        self.assertEqual(look["grant_id"], by_code[some]["grant_id"])
        status = self.cli("pool", "status").stdout
        self.assertRegex(status, r"race\s+0\s+1000")
        for d in self.env.daemons:
            self.assertTrue(d.alive())

    def test_b_per_user_limits_live_equals_replay(self):
        """per_user counts one member's grants, and a member's events are
        decided in order (one partition): live equals replay, grant for
        grant. per_device / per_ip count across members, whose events live
        on several partitions, so which member gets the capped grants
        depends on arrival order: only the totals are compared."""
        self.setup_rules({"capped.yaml": "id: capped\n"
                                         "trigger: {event: Order Completed}\n"
                                         "limits: {per_user: 2/1h}\n"
                                         "grant: {benefit: coupon, sku: CAP, value: 5, channel: email}\n",
                          "shared.yaml": "id: shared\n"
                                         "trigger: {event: Order Completed}\n"
                                         "limits: {per_device: 3/1h, per_ip: 4/1h}\n"
                                         "grant: {benefit: coupon, sku: SHR, value: 1, channel: email}\n"})
        t0 = now_ms() - 60000
        events = []
        for u in range(10):
            for k in range(5):
                # members 0-3 share a device, 4-9 share an IP
                dev = "dev-shared" if u < 4 else "dev-%d" % u
                ip = "10.0.0.1" if u >= 4 else "10.0.1.%d" % u
                events.append(order("u%d" % u, "cap-%d-%d" % (u, k), t0 + u * 1000 + k * 10, dev, ip))
        path = self.events_file(events)
        rep = replay(self.env.rules_dir, path, config=self.env.config_path, explain=True)
        self.assertEqual(rep.rc, 0, rep.stderr)
        want = {g["grant_id"] for g in rep.grants if g["rule"] == "capped"}
        self.assertEqual(len(want), 20, rep.stdout)
        shared = [g for g in rep.grants if g["rule"] == "shared"]
        self.assertEqual(len(shared), 7, rep.stdout)  # 3 on the shared device, 4 on the shared IP
        reasons = {x["reason"] for x in rep.explained}
        self.assertEqual(reasons, {"limit per_user", "limit per_device", "limit per_ip"})
        self.env.start_daemon()
        self.env.kafka.produce(path)
        self.env.wait_all_committed()
        live = read_grants(self.env.client())
        self.assertEqual({g["grant_id"] for g in live if g["rule"] == "capped"}, want)
        lshared = [g for g in live if g["rule"] == "shared"]
        self.assertEqual(sum(1 for g in lshared if g["user_id"] in ("u0", "u1", "u2", "u3")), 3)
        self.assertEqual(sum(1 for g in lshared if g["user_id"] not in ("u0", "u1", "u2", "u3")), 4)

    def test_c_pool_empty_and_blocklist(self):
        self.setup_rules({"tiny.yaml": "id: tiny\n"
                                       "trigger: {event: Order Completed}\n"
                                       "grant: {benefit: code, pool: tiny, sku: TINY, channel: email}\n"})
        r = self.cli("pool", "load", "tiny", "-", input_text="T-1\nT-2\nT-1\n\nbad code\n", check=False)
        self.assertEqual(r.returncode, 3, r.stdout + r.stderr)
        self.assertIn("added=2 duplicates=1 already_issued=0 invalid=1 available=2", r.stdout)
        self.assertIn("-:5: not a valid code", r.stderr)
        self.cli("block", "add", "user", "u-bad")
        self.cli("block", "add", "ip", "192.0.2.66")
        self.assertEqual(self.cli("block", "list").stdout, "user\tu-bad\nip\t192.0.2.66\n")
        d = self.env.start_daemon()
        t0 = now_ms()
        self.env.kafka.produce(lines=[order("u-bad", "p-0", t0), order("u-ip", "p-1", t0, ip="192.0.2.66")])
        self.env.wait_all_committed()
        self.assertEqual(read_grants(self.env.client()), [])
        self.env.kafka.produce(lines=[order("u%d" % i, "p-%d" % (i + 10), t0 + i) for i in range(5)])
        self.env.wait_all_committed()
        grants = read_grants(self.env.client())
        self.assertEqual(sorted(g["benefit"]["code"] for g in grants), ["T-1", "T-2"])
        self.assertTrue(d.alive())
        self.assertRegex(self.cli("pool", "status", "tiny").stdout, r"tiny\s+0\s+2")
        # reloading the same file: both codes were issued, nothing comes back
        r = self.cli("pool", "load", "tiny", "-", input_text="T-1\nT-2\nT-3\n")
        self.assertIn("added=1 duplicates=0 already_issued=2 invalid=0 available=1", r.stdout)
        # the loop was never blocked: a later event still gets the new code
        self.cli("block", "remove", "user", "u-bad")
        self.env.kafka.produce(lines=[order("u-bad", "p-99", now_ms())])
        self.env.wait_all_committed()
        wait_for(lambda: len(read_grants(self.env.client())) == 3, 10, "the third grant")
        self.assertIn("T-3", [g["benefit"]["code"] for g in read_grants(self.env.client())])

    def test_d_group_falls_back_when_the_winner_runs_out(self):
        """A group goes to the first rule whose grant passes policy: once the
        top rule's budget is spent, the runner-up grants; never both for one
        trigger. Live equals replay, grant for grant."""
        self.setup_rules({"g.yaml": "rules:\n"
                                    "  - {id: top, group: g, priority: 20, trigger: {event: Order Completed},\n"
                                    "     limits: {budget: 5}, grant: {benefit: coupon, sku: TOP, value: 20, channel: email}}\n"
                                    "  - {id: next, group: g, priority: 10, trigger: {event: Order Completed},\n"
                                    "     grant: {benefit: coupon, sku: NEXT, value: 5, channel: email}}\n"})
        t0 = now_ms() - 60000
        # one member: its events are decided in order, so which order drew
        # the last of the budget is the same live and in replay
        events = [order("solo", "g-%02d" % i, t0 + i * 10) for i in range(12)]
        path = self.events_file(events)
        rep = replay(self.env.rules_dir, path, config=self.env.config_path, explain=True)
        self.assertEqual(rep.rc, 0, rep.stderr)
        by_rule = {}
        for g in rep.grants:
            by_rule[g["rule"]] = by_rule.get(g["rule"], 0) + 1
        self.assertEqual(by_rule, {"top": 5, "next": 7})
        self.env.start_daemon()
        self.env.kafka.produce(path)
        self.env.wait_all_committed()
        c = self.env.client()
        live = [g for g in read_grants(c)]
        self.assertGrantsMatchReplay(live, rep.grants)
        per_trigger = {}
        for g in live:
            per_trigger.setdefault(g["trigger"]["message_id"], []).append(g["rule"])
        self.assertTrue(all(len(v) == 1 for v in per_trigger.values()), per_trigger)
        self.assertEqual(c.get("bd:budget:top"), "5")


if __name__ == "__main__":
    unittest.main(verbosity=2)
