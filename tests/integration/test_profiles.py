#!/usr/bin/python3
"""Member profiles and plugins live (docs/profiles.md, docs/plugins.md), with
the real daemon, the bundled tiers plugin (build/plugins/tiers.so), a real
redis-server and the librdkafka mock cluster:

- the tiers plugin climbs members up the ladder; its internal `Tier Changed`
  events grant the sample upgrade gift; an `audience` rule on user.tier
  grants gold members only: live equals replay, grant for grant, and the
  profile hash in Redis holds the tier;
- revisits: a member whose spend left the window is warned, then moved down
  after the grace period, with no event of theirs, by the partition's
  poller: live equals `replay --until now`;
- identify traits are written to the profile hash even when nothing reads
  profiles yet (a rule added later sees them), and read back by a reload.

Run from the repo root: /usr/bin/python3 -m unittest -v tests/integration/test_profiles.py
(or tests/integration/run-all). Needs `make all`.
"""
import datetime
import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import REPO, TOPIC, IntegrationTest, read_grants, replay, wait_for  # noqa: E402

DAY = 86400000

PLUGINS = """plugins:
  dir: %s
  load:
    tiers:
      levels: [{name: member, threshold: 0}, {name: silver, threshold: 300}, {name: gold, threshold: 1000}]
      window: 365d
      keep_ratio: 0.8
      grace: 30d
""" % json.dumps(str(REPO / "build" / "plugins"))

GOLD_RULE = ("id: gold-shipping\n"
             "audience: user.tier == 'gold'\n"
             "trigger: {event: Order Completed}\n"
             "grant: {benefit: privilege, sku: FREE-SHIP, channel: email}\n")


def iso(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def order(user, mid, ts, total):
    return {"type": "track", "event": "Order Completed", "userId": user, "messageId": mid, "timestamp": iso(ts),
            "properties": {"total": total}}


class ProfilesTest(IntegrationTest):

    def setUp(self):
        super().setUp()
        self.env.start_backends()

    def events_file(self, events, name="events.jsonl"):
        path = self.env.dir / name
        with open(path, "w") as f:
            for e in events:
                f.write(json.dumps(e) + "\n")
        return path

    def rules(self, extra=None):
        files = {"tier-upgrade-gift.yaml": (REPO / "rules" / "tier-upgrade-gift.yaml").read_text(),
                 "tier-downgrade-warning.yaml": (REPO / "rules" / "tier-downgrade-warning.yaml").read_text()}
        files.update(extra or {})
        self.env.write_rules(files)
        self.env.write_config(channels={}, extra=PLUGINS)

    def test_a_tiers_and_audience_live_equal_replay(self):
        self.rules({"gold.yaml": GOLD_RULE})
        t0 = int(time.time() * 1000) - 3600000
        events = []
        for u in range(40):
            # member u spends u * 60 in 3 orders: 0..2340: member, silver, gold
            for k in range(3):
                events.append(order("m%02d" % u, "o-%d-%d" % (u, k), t0 + u * 1000 + k * 100, u * 20))
        path = self.events_file(events)
        rep = replay(self.env.rules_dir, path, config=self.env.config_path)
        self.assertEqual(rep.rc, 0, rep.stderr)
        by_rule = {}
        for g in rep.grants:
            by_rule[g["rule"]] = by_rule.get(g["rule"], 0) + 1
        # silver at 300 (u >= 5), gold at 1000 (u >= 17): each climb is one gift
        self.assertEqual(by_rule.get("tier-upgrade-gift"), (40 - 5) + (40 - 17))
        self.assertGreater(by_rule.get("gold-shipping", 0), 0)
        self.env.start_daemon()
        self.env.kafka.produce(path)
        self.env.wait_all_committed(timeout=60)
        c = self.env.client()
        wait_for(lambda: len(read_grants(c)) >= len(rep.grants), 30, "live grants")
        live = read_grants(c)
        self.assertGrantsMatchReplay(live, rep.grants)
        prof = c.hgetall("bd:{u:m39}:profile")
        self.assertEqual(json.loads(prof["tier"]), "gold")
        self.assertEqual(json.loads(prof["tier_measure"]), 39 * 20 * 3)
        self.assertEqual(json.loads(c.hget("bd:{u:m05}:profile", "tier")), "silver")
        gifts = [g for g in live if g["rule"] == "tier-upgrade-gift" and g["user_id"] == "m39"]
        self.assertEqual(sorted(g["message"] for g in gifts),
                         ["Welcome to gold: 500 points on us", "Welcome to silver: 500 points on us"])
        self.assertEqual(self.env.sanitizer_reports(), [])

    def test_b_revisits_warn_then_downgrade_without_events(self):
        self.rules()
        now = int(time.time() * 1000)
        # gold 400 days ago: the spend left the 365d window ~35 days ago (the
        # warning is due then) and the 30d grace is over (the downgrade too)
        t0 = now - 400 * DAY
        events = [order("w1", "w1-a", t0, 700), order("w1", "w1-b", t0 + 1000, 700),
                  order("s1", "s1-a", now - 10 * DAY, 400)]
        path = self.events_file(events)
        rep = replay(self.env.rules_dir, path, config=self.env.config_path, until=iso(now + 60000))
        self.assertEqual(rep.rc, 0, rep.stderr)
        rules = sorted((g["rule"], g["user_id"]) for g in rep.grants)
        # w1: silver at 700, gold at 1400 (two gifts), then the warning
        self.assertEqual(rules, [("tier-downgrade-warning", "w1"), ("tier-upgrade-gift", "s1"),
                                 ("tier-upgrade-gift", "w1"), ("tier-upgrade-gift", "w1")])
        self.env.start_daemon()
        self.env.kafka.produce(path)
        c = self.env.client()
        wait_for(lambda: len(read_grants(c)) >= 4 and c.hget("bd:{u:w1}:profile", "tier") == '"member"', 30,
                 "the warning, then the downgrade, by revisits")
        self.assertGrantsMatchReplay(read_grants(c), rep.grants)
        self.assertEqual(json.loads(c.hget("bd:{u:s1}:profile", "tier")), "silver")
        # w1 is back at the floor: nothing more to revisit
        time.sleep(1.0)
        left = [m for p in range(4) for m in c.zrange("bd:revisit:%s:%d" % (TOPIC, p), 0, -1)
                if m.endswith("\x1fw1")]
        self.assertEqual(left, [])
        self.assertEqual(len(read_grants(c)), 4)

    def test_c_identify_traits_kept_for_later_rules(self):
        self.env.write_rules({"plain.yaml": "id: plain\ntrigger: {event: Signed Up}\n"
                                            "grant: {benefit: coupon, sku: HELLO, channel: email}\n"})
        self.env.write_config(channels={})
        t0 = int(time.time() * 1000) - 60000
        ident = {"type": "identify", "userId": "v1", "messageId": "i-1", "timestamp": iso(t0),
                 "traits": {"tier": "gold", "city": "Lyon"}}
        self.env.start_daemon()
        self.env.kafka.produce(self.events_file([ident], "a.jsonl"))
        c = self.env.client()
        wait_for(lambda: c.hget("bd:{u:v1}:profile", "tier") is not None, 20, "the identify traits in Redis")
        self.assertEqual(json.loads(c.hget("bd:{u:v1}:profile", "city")), "Lyon")
        # a rule that reads the profile, added by a reload, sees the traits
        self.env.write_rules({"gold.yaml": GOLD_RULE})
        d = self.env.daemons[0]
        mark = d.log_size()
        d.send(1)  # SIGHUP
        d.wait_log("event=reloaded", start=mark)
        self.env.kafka.produce(self.events_file([order("v1", "v1-o", t0 + 1000, 10)], "b.jsonl"))
        wait_for(lambda: any(g["rule"] == "gold-shipping" for g in read_grants(c)), 20, "the audience grant")

    def test_d_kill9_with_plugins_applies_each_order_once(self):
        """kill -9 while the tiers plugin is updating profiles: after the
        restart, grants equal replay's (none twice, none lost) and every
        member's rolling spend counts each order once, although the events
        after the last committed offset are read and decided again."""
        self.rules()
        t0 = int(time.time() * 1000) - 3600000
        events = []
        for k in range(5):
            for u in range(60):
                events.append(order("k%02d" % u, "k-%d-%d" % (u, k), t0 + k * 60000 + u * 10, 100))
        path = self.events_file(events)
        rep = replay(self.env.rules_dir, path, config=self.env.config_path)
        self.assertEqual(rep.rc, 0, rep.stderr)
        self.assertEqual(len(rep.grants), 60)  # silver at 300: one gift each
        d1 = self.env.start_daemon()
        prod = self.env.background(self.env.kafka.produce_background(path, 100, self.env.dir / "produce.log"))
        c = self.env.client()
        wait_for(lambda: len(c.keys("bd:{u:*}:profile")) >= 40, 30, "profiles being written")
        d1.kill9()
        self.assertTrue(prod.alive() or self.env.kafka.lag() > 0, "killed too late: everything was committed")
        self.env.start_daemon(timeout=60)
        self.assertEqual(prod.wait(60), 0, "producer failed")
        self.env.wait_all_committed(timeout=90)
        wait_for(lambda: len(read_grants(c)) >= len(rep.grants), 30, "the grants")
        self.assertGrantsMatchReplay(read_grants(c), rep.grants, "after kill -9")
        for u in range(60):
            prof = c.hgetall("bd:{u:k%02d}:profile" % u)
            self.assertEqual(json.loads(prof["tier_measure"]), 500, "k%02d: %s" % (u, prof))
            self.assertEqual(json.loads(prof["tier"]), "silver")


if __name__ == "__main__":
    unittest.main()
