#!/usr/bin/python3
"""The time shapes live: waits, cancel_on, counts and inactivity in the real
daemon, durable in a real redis-server, fed by the librdkafka mock cluster.

Every test compares what lands in Redis with what `benefitd replay --until`
predicts for the same events (grant ids: replay decides on event time, the
daemon on processing time, so only the clock fields differ). Events carry
timestamps just before now and rules use short durations (seconds), so a
whole test runs in seconds; waiting is always for a condition, with a
deadline.

Run from the repo root: /usr/bin/python3 -m unittest -v tests/integration/test_time.py
(or tests/integration/run-all). Needs `make all`.
"""
import datetime
import json
import os
import re
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import IntegrationTest, Scrape, duplicates, http_get, replay, wait_for  # noqa: E402

TOPIC = "events"


def now_ms():
    return int(time.time() * 1000)


def iso(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def iso_to_ms(s):
    t = datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return int(round(t.timestamp() * 1000))


def tev(event, user, mid, ts, **props):
    return {"type": "track", "event": event, "userId": user, "messageId": mid, "timestamp": iso(ts),
            "properties": props}


def rule(rid, trigger, grant, extra=""):
    return "id: %s\ntrigger: %s\n%sgrant: %s\n" % (rid, trigger, extra, grant)


CART = rule("cart", "{event: Product Added}",
            "{benefit: coupon, sku: CART-10, value: 10, expires_in: 72h, channel: email, "
            "message: \"{{properties.name}} is still in your cart\"}",
            "wait: 2s\ncancel_on: [Order Completed]\n")
POST = rule("post", "{event: Order Completed, where: properties.total >= 100}",
            "{benefit: coupon, sku: NEXT-5, value: 5, expires_in: 30d, channel: email}", "wait: 2s\n")
VIEWED = rule("viewed", "{event: Product Viewed}", "{benefit: coupon, sku: VIEW-5, value: 5, channel: email}",
              "wait: 3s\n")
THIRD = rule("third", "{event: Order Completed, count: 3, within: 10s}",
             "{benefit: points, sku: PTS, value: 300, channel: email}")
WINBACK = rule("winback", "{inactive_for: 3s}",
               "{benefit: coupon, sku: WB-15, value: 15, expires_in: 14d, channel: email, "
               "message: \"We miss you, {{user_id}}\"}")


def stream_grants(client, prefix="bd:"):
    """Every grant in the grant streams, with the time Redis added it (the
    stream entry id's milliseconds) in g['_pushed_ms']."""
    out = []
    for key in sorted(client.scan_iter(match=prefix + "grants:*")):
        for eid, fields in client.xrange(key):
            g = json.loads(fields["grant"])
            g["_pushed_ms"] = int(eid.split("-")[0])
            out.append(g)
    return out


def pending_waits(client, prefix="bd:"):
    """Waits pending in Redis: the fields of the members' wait hashes (field
    RS holds a member's subjects, not a wait), plus any left in the per-wait
    layout of earlier builds."""
    n = 0
    for k in client.scan_iter(match=prefix + "{u:*}:w"):
        n += sum(1 for f in client.hkeys(k) if f != "\x1e")
    for k in client.scan_iter(match=prefix + "{u:*}:waits"):
        n += client.hlen(k)
    return n


def owned_partitions(daemon):
    """The partitions whose timers the daemon polls now, from its log."""
    owned = set()
    for line in daemon.log().splitlines():
        m = re.search(r"event=timers_(owned|released) topic=\S+ partition=(\d+)", line)
        if m:
            (owned.add if m.group(1) == "owned" else owned.discard)(int(m.group(2)))
    return owned


def metric(port, name, **labels):
    """One sample of the daemon's /metrics page."""
    return Scrape(http_get(port, "/metrics")[1]).value(name, **labels)


class TimeTest(IntegrationTest):

    def setUp(self):
        super().setUp()
        self.env.start_backends()

    def start(self, rules, n=1):
        self.env.write_rules(rules)
        self.env.write_config(channels={})
        return [self.env.start_daemon() for _ in range(n)]

    def events_file(self, events, name="events.jsonl"):
        path = self.env.dir / name
        with open(path, "w") as f:
            for e in events:
                f.write(json.dumps(e) + "\n")
        return path

    def replay_ids(self, path, until_ms):
        rep = replay(self.env.rules_dir, path, config=self.env.config_path, until=iso(until_ms))
        self.assertEqual(rep.rc, 0, rep.stderr)
        ids = [g["grant_id"] for g in rep.grants]
        self.assertEqual(duplicates(ids), {})
        return rep, set(ids)

    def quiet(self):
        """Nothing left that could fire: no timer, no member awaiting a silence."""
        c = self.env.client()
        keys = list(c.scan_iter(match="bd:timers:*")) + list(c.scan_iter(match="bd:seen:*"))
        return all(c.zcard(k) == 0 for k in keys)

    def wait_ids(self, ids, timeout, what):
        c = self.env.client()
        return wait_for(lambda: ids <= {g["grant_id"] for g in stream_grants(c)}, timeout, what, interval=0.1)

    def assertLiveEqualsReplay(self, rep_ids):
        live = stream_grants(self.env.client())
        live_ids = [g["grant_id"] for g in live]
        self.assertEqual(duplicates(live_ids), {}, "a grant was pushed twice")
        self.assertEqual(set(live_ids), rep_ids,
                         "only live: %s; only replay: %s" % (set(live_ids) - rep_ids, rep_ids - set(live_ids)))
        return live

    # ------------------------------------------------------------------ a
    def test_a_each_shape_live_equals_replay(self):
        self.start({"cart.yaml": CART, "post.yaml": POST, "third.yaml": THIRD, "winback.yaml": WINBACK})
        b = now_ms() - 1000
        evs = [
            tev("Product Added", "u1", "a-1", b, name="Lamp"),                 # cart: granted after 2s
            tev("Product Added", "u2", "a-2", b, name="Desk"),                 # cart: cancelled by the order
            tev("Order Completed", "u2", "a-3", b + 300, total=50),
            tev("Product Added", "u3", "a-4", b, name="Chair"),                # cart: one grant, first add's id
            tev("Product Added", "u3", "a-5", b + 200, name="Rug"),            # (already pending)
            tev("Order Completed", "u4", "a-6", b, total=120),                 # post after 2s
            tev("Order Completed", "u4", "a-7", b + 100, total=30),
            tev("Order Completed", "u4", "a-8", b + 200, total=30),            # third: crosses 3
            tev("Order Completed", "u5", "a-9", b, total=150),                 # post
            tev("Order Completed", "u5", "a-9", b, total=150),                 # redelivered: counts once
        ]                                                                      # winback: all five, once
        path = self.events_file(evs)
        rep, rep_ids = self.replay_ids(path, b + 60000)
        by_rule = {}
        for g in rep.grants:
            by_rule.setdefault(g["rule"], set()).add(g["user_id"])
        self.assertEqual(by_rule, {"cart": {"u1", "u3"}, "post": {"u4", "u5"}, "third": {"u4"},
                                   "winback": {"u1", "u2", "u3", "u4", "u5"}})
        self.env.kafka.produce(path)
        self.wait_ids(rep_ids, 20, "the grants replay predicts")
        wait_for(self.quiet, 10, "every timer and silence to be spent")
        live = self.assertLiveEqualsReplay(rep_ids)
        self.env.wait_all_committed(timeout=20)
        # a wait's grant is rebuilt from a short body when it fires: every field
        # but the clock's is replay's, and expires_at keeps its distance to issued_at
        clock = ("issued_at", "deliver_after", "_pushed_ms")
        by_id = {g["grant_id"]: g for g in rep.grants}
        for g in live:
            want = by_id[g["grant_id"]]
            strip = lambda x: {k: (dict(v, expires_at=None) if k == "benefit" else v)  # noqa: E731
                               for k, v in x.items() if k not in clock}
            self.assertEqual(strip(g), strip(want))
            for x in (g, want):
                exp = x["benefit"]["expires_at"]
                x["_ttl"] = exp and iso_to_ms(exp) - iso_to_ms(x["issued_at"])
            self.assertEqual(g["_ttl"], want["_ttl"], g)
        self.assertEqual({g["message"] for g in live if g["rule"] == "cart"},
                         {"Lamp is still in your cart", "Chair is still in your cart"})
        # waits are issued at their due time: processing time + 2s
        for g in live:
            if g["rule"] in ("cart", "post"):
                lag = iso_to_ms(g["issued_at"]) - iso_to_ms(g["trigger"]["timestamp"])
                self.assertGreaterEqual(lag, 2000, g)
                self.assertGreaterEqual(g["_pushed_ms"], iso_to_ms(g["issued_at"]) - 50, "fired early: %s" % g)
            if g["rule"] == "winback":
                self.assertEqual(iso_to_ms(g["issued_at"]), iso_to_ms(g["trigger"]["timestamp"]) + 3000)
        c = self.env.client()
        self.assertEqual(list(c.scan_iter(match="bd:{u:*}:w")), [], "a member's wait hash outlived its waits")
        self.assertEqual(list(c.scan_iter(match="bd:timers:m:*")), [])

    # ------------------------------------------------------------------ b
    def test_b_kill9_with_waits_pending(self):
        soon = rule("soon", "{event: Product Added}", "{benefit: coupon, sku: S, value: 1, channel: email}",
                    "wait: 2s\n")
        later = rule("later", "{event: Product Added}", "{benefit: coupon, sku: L, value: 2, channel: email}",
                     "wait: 11s\n")
        d1, = self.start({"soon.yaml": soon, "later.yaml": later})
        b = now_ms() - 500
        evs = [tev("Product Added", "k%02d" % i, "k-%d" % i, b + i) for i in range(16)]
        path = self.events_file(evs)
        rep, rep_ids = self.replay_ids(path, b + 60000)
        self.assertEqual(len(rep_ids), 32)
        self.env.kafka.produce(path)
        self.env.wait_all_committed(timeout=20)   # every wait is in Redis
        c = self.env.client()
        self.assertEqual(pending_waits(c), 32)
        # one timer per member, at its earliest wait
        self.assertEqual(sum(c.zcard(k) for k in c.scan_iter(match="bd:timers:m:*")), 16)
        d1.kill9()
        killed = now_ms()
        # the daemon stays down past the short waits' due time: they are overdue at restart
        time.sleep(max(0, (killed + 2500 - now_ms()) / 1000))
        self.assertEqual(stream_grants(c), [], "a wait fired while no daemon ran")
        d2 = self.env.start_daemon(timeout=30)
        d2.wait_log(r"event=timers_owned", 10)
        assigned = now_ms()
        self.wait_ids(rep_ids, 20, "every wait to fire after the restart")
        live = self.assertLiveEqualsReplay(rep_ids)
        for g in live:
            due = iso_to_ms(g["issued_at"])
            self.assertGreaterEqual(g["_pushed_ms"], due - 50, "fired early: %s" % g)
            if g["rule"] == "soon":   # overdue at restart: fired at once
                self.assertLess(due, assigned)
                self.assertLess(g["_pushed_ms"] - assigned, 1500, g)
            elif due > assigned:      # due after the restart: on time
                self.assertLess(g["_pushed_ms"] - due, 1000, g)
        self.assertTrue(self.quiet())

    # ------------------------------------------------------------------ c
    def test_c_two_daemons_handover(self):
        cart = rule("cart", "{event: Product Added}", "{benefit: coupon, sku: C, value: 1, channel: email}",
                    "wait: 9s\ncancel_on: [Order Completed]\n")
        d1, d2 = self.start({"cart.yaml": cart}, n=2)

        def split():
            a, b = owned_partitions(d1), owned_partitions(d2)
            return a and b and not (a & b) and len(a | b) == 4 and (a, b)
        wait_for(split, 30, "both daemons to own partitions")
        b = now_ms() - 500
        first = [tev("Product Added", "h%02d" % i, "h-%d" % i, b + i) for i in range(24)]
        first.append(tev("Order Completed", "h00", "h-o", b + 100))   # one cancelled
        path1 = self.events_file(first, "first.jsonl")
        self.env.kafka.produce(path1)
        self.env.wait_all_committed(timeout=20)
        c = self.env.client()
        theirs = owned_partitions(d2)
        left = sum(c.zcard("bd:timers:m:%s:%d" % (TOPIC, p)) for p in theirs)
        self.assertGreater(left, 0, "no pending wait on the partitions of the daemon to stop")
        self.assertEqual(d2.terminate(), 0)
        wait_for(lambda: owned_partitions(d1) == {0, 1, 2, 3}, 30, "the survivor to own every partition")
        _, ids1 = self.replay_ids(path1, b + 60000)
        self.assertEqual(len(ids1), 23)
        self.wait_ids(ids1, 20, "the stopped daemon's timers to fire on the survivor")
        self.assertEqual(sum(c.zcard("bd:timers:m:%s:%d" % (TOPIC, p)) for p in theirs), 0)

        d3 = self.env.start_daemon(timeout=30)
        wait_for(lambda: (owned_partitions(d1) and owned_partitions(d3) and
                          len(owned_partitions(d1) | owned_partitions(d3)) == 4), 30, "a new split")
        b2 = now_ms() - 500
        second = [tev("Product Added", "j%02d" % i, "j-%d" % i, b2 + i) for i in range(16)]
        path2 = self.events_file(second, "second.jsonl")
        self.env.kafka.produce(path2)
        allp = self.events_file(first + second, "all.jsonl")
        _, ids = self.replay_ids(allp, b2 + 60000)
        self.assertEqual(len(ids), 39)
        self.wait_ids(ids, 25, "the second batch's waits")
        self.assertLiveEqualsReplay(ids)

    # ------------------------------------------------------------------ d
    def test_d_cancel_on_before_due(self):
        # c3 also waits on a rule the order does not cancel, due later: the
        # cancel keeps the member's timer entry, moved to that wait's due
        self.start({"cart.yaml": CART, "viewed.yaml": VIEWED})
        b = now_ms() - 500
        evs = [tev("Product Added", "c1", "c-1", b, name="Lamp"),
               tev("Order Completed", "c1", "c-2", b + 200, total=20),
               tev("Product Added", "c2", "c-3", b, name="Desk"),      # not cancelled: the witness
               tev("Product Viewed", "c3", "c-4", b),
               tev("Product Added", "c3", "c-5", b + 100, name="Rug"),
               tev("Order Completed", "c3", "c-6", b + 200, total=20)]
        path = self.events_file(evs)
        rep, rep_ids = self.replay_ids(path, b + 60000)
        self.assertEqual(sorted((g["user_id"], g["rule"]) for g in rep.grants), [("c2", "cart"), ("c3", "viewed")])
        self.env.kafka.produce(path)
        self.wait_ids(rep_ids, 15, "the uncancelled wait to fire")
        wait_for(self.quiet, 5, "no timer left")
        self.assertLiveEqualsReplay(rep_ids)
        c = self.env.client()
        self.assertFalse(c.exists("bd:{u:c1}:w"))
        self.assertEqual(list(c.scan_iter(match="bd:{u:c1}:grant:*")), [])

    # ------------------------------------------------------------------ e
    def test_e_reload_removes_rule_with_pending_waits(self):
        gone = rule("gone", "{event: Product Added}", "{benefit: coupon, sku: G, value: 1, channel: email}",
                    "wait: 3s\n")
        kept = rule("kept", "{event: Product Added}", "{benefit: coupon, sku: K, value: 5, channel: email}",
                    "wait: 3s\n")
        d, = self.start({"gone.yaml": gone, "kept.yaml": kept})
        b = now_ms() - 500
        evs = [tev("Product Added", "r%d" % i, "r-%d" % i, b + i) for i in range(6)]
        path = self.events_file(evs)
        self.env.kafka.produce(path)
        self.env.wait_all_committed(timeout=20)
        c = self.env.client()
        self.assertEqual(pending_waits(c), 12)
        # remove `gone`, change `kept` (value 5 -> 7): its pending waits keep what was decided
        (self.env.rules_dir / "gone.yaml").unlink()
        (self.env.rules_dir / "kept.yaml").write_text(kept.replace("value: 5", "value: 7"))
        start = d.log_size()
        d.send(__import__("signal").SIGHUP)
        d.wait_log(r"event=reloaded rules=1 ", 10, start=start)
        wait_for(self.quiet, 15, "every pending wait to fall due")
        live = stream_grants(c)
        self.assertEqual(sorted(g["user_id"] for g in live), ["r%d" % i for i in range(6)])
        self.assertEqual({g["rule"] for g in live}, {"kept"})
        self.assertEqual({g["benefit"]["value"] for g in live}, {5}, "a pending wait took the new rule's value")
        self.assertEqual(len(re.findall(r"event=wait_dropped rule=gone .*reason=\"rule removed\"", d.log())), 6)
        # replay of the old rules grants the same `kept` ids
        old = self.env.write_rules({"gone.yaml": gone, "kept.yaml": kept}, self.env.dir / "old-rules")
        rep = replay(old, path, config=self.env.config_path, until=iso(b + 60000))
        self.assertEqual({g["grant_id"] for g in rep.grants if g["rule"] == "kept"}, {g["grant_id"] for g in live})

    # ------------------------------------------------------------------ f
    def test_f_waits_of_the_previous_layout_fire_and_cancel(self):
        """An upgrade keeps the waits that a build before the per-member layout
        wrote (a string body per wait, a timer per wait): they fire once, a
        cancel reaches them, and they still count as pending for their rule."""
        old = rule("old", "{event: Product Added}", "{benefit: coupon, sku: O, value: 1, channel: email}",
                   "wait: 2s\ncancel_on: [Order Completed]\n")
        d, = self.start({"old.yaml": old})
        wait_for(lambda: owned_partitions(d) == {0, 1, 2, 3}, 30, "the daemon to own every partition")
        c = self.env.client()
        queue = "bd:grants:email"
        due = now_ms() + 3000
        legacy = {}
        for user, gid in (("x1", "g" + "1" * 32), ("x2", "g" + "2" * 32)):
            part = 0
            timers, tm = "bd:timers:%s:%d" % (TOPIC, part), "%s|old|%s" % (gid, user)
            grant = {"grant_id": gid, "rule": "old", "rule_version": "v0", "variant": None, "user_id": user,
                     "benefit": {"type": "coupon", "sku": "O", "value": 1, "code": None, "expires_at": None},
                     "channel": "email", "message": None,
                     "trigger": {"event": "Product Added", "message_id": "old-" + user, "user_id": user,
                                 "timestamp": iso(due - 2000)},
                     "issued_at": iso(due), "deliver_after": iso(due)}
            body = "\x1e".join([timers, tm, queue, "stream", "0", "", user, "", "", "", json.dumps(grant)])
            c.hset("bd:{u:%s}:waits" % user, gid, "%d\x1eold\x1e\x1fOrder Completed\x1f" % due)
            c.set("bd:{u:%s}:wait:%s" % (user, gid), body)
            c.zadd(timers, {tm: due})
            legacy[user] = gid
        b = now_ms() - 200
        evs = [tev("Product Added", "x1", "x1-new", b),          # the legacy wait of `old` is pending
               tev("Order Completed", "x2", "x2-order", b + 1)]  # cancels x2's legacy wait
        self.env.kafka.produce(self.events_file(evs))
        self.env.wait_all_committed(timeout=20)
        wait_for(lambda: stream_grants(c), 15, "the legacy wait to fire")
        wait_for(self.quiet, 10, "every timer to be spent")
        time.sleep(0.5)
        live = stream_grants(c)
        self.assertEqual([g["grant_id"] for g in live], [legacy["x1"]], live)
        self.assertEqual(live[0]["issued_at"], iso(due))
        self.assertEqual(pending_waits(c), 0)
        self.assertEqual(list(c.scan_iter(match="bd:{u:*}:wait:*")), [])
        stats = c.hgetall("bd:stats:old:-")
        self.assertEqual(stats.get("already pending"), "1", stats)
        self.assertEqual(stats.get("cancelled"), "1", stats)

    # ------------------------------------------------------------------ g
    def test_g_wait_parts_that_the_body_cannot_rebuild(self):
        """A wait is kept as a short body plus a shared template; what the body
        cannot rebuild (a message id that needs escaping, a recipient other than
        the member, an unusual value) still comes back exactly, as replay has it."""
        refer = rule("refer", "{event: Signed Up}",
                     "{benefit: points, sku: REF, value: properties.points, to: properties.referrer_id, "
                     "channel: email, message: \"{{user_id}} joined: {{properties.points}} points\"}",
                     "wait: 2s\n")
        # a soft reason travels in the template: reported at the due time, nothing pushed
        shadow = rule("shadowed", "{event: Signed Up}", "{benefit: points, sku: SH, value: 1, channel: email}",
                      "mode: shadow\nwait: 2s\n")
        d, = self.start({"refer.yaml": refer, "shadowed.yaml": shadow})
        b = now_ms() - 500
        evs = [tev("Signed Up", "n1", 'q"1\\x', b, referrer_id="r1", points=250),   # escaped id, another recipient
               tev("Signed Up", "n2", "plain-2", b + 1, referrer_id="n2", points=12.5),
               tev("Signed Up", "n3", "\u00e9t\u00e9-3", b + 2, referrer_id="r3", points=-1)]
        path = self.events_file(evs)
        rep, rep_ids = self.replay_ids(path, b + 60000)
        self.assertEqual(len(rep_ids), 3)
        self.env.kafka.produce(path)
        self.wait_ids(rep_ids, 20, "the three waits to fire")
        wait_for(self.quiet, 10, "every timer to be spent")
        live = self.assertLiveEqualsReplay(rep_ids)
        by_id = {g["grant_id"]: g for g in rep.grants}
        for g in live:
            want = dict(by_id[g["grant_id"]])
            for k in ("issued_at", "deliver_after"):
                want.pop(k)
                g.pop(k)
            g.pop("_pushed_ms")
            self.assertEqual(g, want)
        self.assertEqual({g["user_id"] for g in live}, {"r1", "n2", "r3"})
        self.assertEqual({g["trigger"]["message_id"] for g in live}, {'q"1\\x', "plain-2", "\u00e9t\u00e9-3"})
        c = self.env.client()
        self.assertGreaterEqual(c.hlen("bd:wtpl"), 3, "the escaped id's wait keeps its own template")
        wait_for(lambda: c.hget("bd:stats:shadowed:-", "shadow") == "3", 10, "the shadow waits to be reported")
        self.assertEqual(pending_waits(c), 0)

    # ------------------------------------------------------------------ h
    def test_h_pending_known_to_the_daemon(self):
        """A trigger while the member's wait is pending is answered by the daemon
        from what Redis acknowledged (no call); a cancel makes it ask Redis again,
        so the next trigger starts a new wait. A cancel that leaves the wait (a
        page view cancels another rule's waits) also makes it ask, and Redis's
        `already pending` teaches it the wait again. Each step is committed
        before the next is produced, so every answer is the daemon's, not a
        batch's."""
        cart = rule("cart", "{event: Product Added}", "{benefit: coupon, sku: C, value: 1, channel: email}",
                    "wait: 8s\ncancel_on: [Order Completed]\n")
        other = rule("other", "{event: Never Sent}", "{benefit: coupon, sku: O, value: 1, channel: email}",
                     "wait: 8s\ncancel_on: [Page Viewed]\n")
        d, = self.start({"cart.yaml": cart, "other.yaml": other})
        c = self.env.client()
        b = now_ms() - 500
        steps = [tev("Product Added", "p1", "p-1", b),          # scheduled
                 tev("Product Added", "p1", "p-2", b + 1),      # already pending (known to the daemon)
                 tev("Product Added", "p1", "p-1", b),          # the pending wait's own trigger again: Redis answers
                 tev("Order Completed", "p1", "p-3", b + 2),    # cancelled
                 tev("Product Added", "p1", "p-4", b + 3),      # a new wait
                 tev("Product Added", "p1", "p-5", b + 4),      # already pending again
                 tev("Page Viewed", "p1", "p-6", b + 5),        # a cancel of other's waits: the daemon forgets p1's
                 tev("Product Added", "p1", "p-7", b + 6),      # already pending, Redis answers (and tells the wait)
                 tev("Product Added", "p1", "p-8", b + 7)]      # already pending, known to the daemon again
        for i, e in enumerate(steps):
            self.env.kafka.produce(self.events_file([e], "step%d.jsonl" % i))
            self.env.wait_all_committed(timeout=20)
        self.assertEqual(pending_waits(c), 1)
        path = self.events_file(steps, "all.jsonl")
        rep, rep_ids = self.replay_ids(path, b + 60000)
        self.assertEqual({g["trigger"]["message_id"] for g in rep.grants}, {"p-4"})
        self.wait_ids(rep_ids, 20, "the wait of p-4 to fire")
        wait_for(self.quiet, 10, "every timer to be spent")
        self.assertLiveEqualsReplay(rep_ids)
        stats = c.hgetall("bd:stats:cart:-")
        self.assertEqual((stats.get("triggered"), stats.get("already pending"), stats.get("cancelled"),
                          stats.get("granted")), ("7", "4", "1", "1"), stats)
        self.assertEqual(d.terminate(), 0)
        st = re.findall(r"event=stats .*already_pending=(\d+) pending_known=(\d+)", d.log())[-1]
        self.assertEqual(st, ("4", "3"), "the daemon asked Redis about a wait it knew was pending")

    # ------------------------------------------------------------------ i
    def test_i_inactivity_resolution(self):
        """With `resolution: R` a member's activity is recorded at the end of
        its step of R holding the event (steps shifted per member by FNV-1a of
        its id): the silence, its grant id and its times start at that mark,
        live as in replay, and the daemon sends a member's mark once."""
        res_ms, quiet_ms = 2000, 4000   # 4s of silence: the seen set is read well before the first fires
        winback = rule("winback", "{inactive_for: 4s, resolution: 2s}",
                       "{benefit: coupon, sku: WB-R, value: 15, channel: email}")
        d, = self.start({"winback.yaml": winback})
        c = self.env.client()

        def off(user):
            h = 1469598103934665603
            for ch in user.encode():
                h = ((h ^ ch) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
            return h % res_ms

        def mark(user, ts):   # the end of the member's step holding ts (ts itself on a step's end)
            o = off(user)
            return ts if (ts - o) % res_ms == 0 else o + ((ts - o) // res_ms + 1) * res_ms

        def step_end(user, before):   # the last step end at or before `before`
            o = off(user)
            return o + (before - o) // res_ms * res_ms

        now = now_ms()
        b2, b3 = step_end("i2", now - 300), step_end("i3", now - 300)
        evs = [tev("Page Viewed", "i1", "i1-1", now - 800),     # wherever its steps fall
               tev("Page Viewed", "i1", "i1-2", now - 650),
               tev("Page Viewed", "i1", "i1-3", now - 500),
               tev("Page Viewed", "i1", "i1-4", now - 900),     # late: an earlier mark, not sent
               tev("Page Viewed", "i2", "i2-1", b2 - 200),      # mark b2
               tev("Page Viewed", "i2", "i2-2", b2),            # on a step's end: mark b2, not sent
               tev("Page Viewed", "i2", "i2-3", b2 + 100),      # the next step: mark b2 + R
               tev("Page Viewed", "i2", "i2-4", b2 + 200),      # not sent
               tev("Page Viewed", "i3", "i3-1", b3 - 300),      # all three: mark b3
               tev("Page Viewed", "i3", "i3-2", b3 - 100),
               tev("Page Viewed", "i3", "i3-3", b3)]
        marks, skipped = {}, 0
        for e in evs:   # a member's events stay in order (one partition): a mark not above the last sent is skipped
            u, m = e["userId"], mark(e["userId"], iso_to_ms(e["timestamp"]))
            if u in marks and m <= marks[u]:
                skipped += 1
            else:
                marks[u] = m
        self.assertEqual(marks["i2"], b2 + res_ms)
        self.assertEqual(marks["i3"], b3)
        self.assertGreaterEqual(skipped, 5)   # i1's late event, two of i2's, two of i3's
        path = self.events_file(evs)
        rep, rep_ids = self.replay_ids(path, now + 60000)
        self.assertEqual(len(rep_ids), 3)
        self.assertEqual({g["user_id"]: g["trigger"]["timestamp"] for g in rep.grants},
                         {u: iso(m) for u, m in marks.items()}, "replay does not count silence from the marks")
        self.env.kafka.produce(path)

        def seen():
            return {u: int(s) for k in c.scan_iter(match="bd:seen:%s:*:winback" % TOPIC)
                    for u, s in c.zrange(k, 0, -1, withscores=True)}
        wait_for(lambda: seen() == marks, 3, "the seen set to hold each member's mark (%s)" % marks)
        self.wait_ids(rep_ids, 15, "the three silences to fire")
        wait_for(self.quiet, 5, "every silence to be spent")
        live = self.assertLiveEqualsReplay(rep_ids)
        by_id = {g["grant_id"]: g for g in rep.grants}
        for g in live:
            m = marks[g["user_id"]]
            self.assertEqual(g["trigger"]["timestamp"], iso(m), g)
            self.assertEqual(g["issued_at"], iso(m + quiet_ms), g)
            self.assertGreaterEqual(g["_pushed_ms"], m + quiet_ms - 50, "fired before the mark's silence: %s" % g)
            self.assertEqual({k: v for k, v in g.items() if k != "_pushed_ms"}, by_id[g["grant_id"]])
            self.assertEqual(c.get("bd:{u:%s}:inact:winback" % g["user_id"]), str(m), "another silence fired")
        self.assertEqual(d.terminate(), 0)
        st = re.findall(r"event=stats .*touches_skipped=(\d+)", d.log())
        self.assertTrue(st, "no stats line")
        self.assertEqual(int(st[-1]), skipped, "touches skipped: the daemon sent a mark it had already sent")

    # ------------------------------------------------------------------ j
    def test_j_held_behind_the_schedule_in_flight(self):
        """Triggers of a rule that reach the daemon in one Kafka batch, while
        their member's first schedule of the rule is in flight, are held
        behind it and answered `already pending` by the daemon once Redis
        has answered it; a cancel of the member sends what is held first, in
        order, so the cancel still removes the wait those triggers found. The
        daemon is stopped while the events are produced, so that it reads
        them in one fetch."""
        cart = rule("cart", "{event: Product Added}", "{benefit: coupon, sku: C, value: 1, channel: email}",
                    "wait: 8s\ncancel_on: [Order Completed]\n")
        d, = self.start({"cart.yaml": cart})
        c = self.env.client()
        b = now_ms() - 500
        events = [tev("Product Added", "p1", "p-1", b),          # scheduled
                  tev("Product Added", "p1", "p-2", b + 1),      # held, then sent before the cancel: Redis says pending
                  tev("Product Added", "p1", "p-3", b + 2),      # likewise
                  tev("Order Completed", "p1", "p-4", b + 3),    # cancels p-1's wait
                  tev("Product Added", "p1", "p-5", b + 4),      # a new wait
                  tev("Product Added", "p1", "p-6", b + 5),      # held, answered by the daemon
                  tev("Product Added", "p2", "q-1", b + 6),      # another member: scheduled
                  tev("Product Added", "p2", "q-2", b + 7)]      # held, answered by the daemon
        path = self.events_file(events, "batch.jsonl")
        d.send(signal.SIGSTOP)
        try:
            self.env.kafka.produce(path)
        finally:
            d.send(signal.SIGCONT)
        self.env.wait_all_committed(timeout=20)
        rep, rep_ids = self.replay_ids(path, b + 60000)
        self.assertEqual({g["trigger"]["message_id"] for g in rep.grants}, {"p-5", "q-1"})
        self.wait_ids(rep_ids, 20, "the waits of p-5 and q-1 to fire")
        wait_for(self.quiet, 10, "every timer to be spent")
        self.assertLiveEqualsReplay(rep_ids)
        stats = c.hgetall("bd:stats:cart:-")
        self.assertEqual((stats.get("triggered"), stats.get("already pending"), stats.get("cancelled"),
                          stats.get("granted")), ("7", "4", "1", "2"), stats)
        self.assertEqual(d.terminate(), 0)
        st = re.findall(r"event=stats .*already_pending=(\d+) pending_known=(\d+) held=(\d+)", d.log())[-1]
        self.assertEqual(st, ("4", "2", "4"), "already pending / answered by the daemon / held")

    # ------------------------------------------------------------------ k
    def test_k_redis_restart_does_not_revive_a_cancelled_wait(self):
        """A schedule and the CANCEL after it are in flight when Redis
        restarts. The daemon resends both in order, so Redis records the wait
        and removes it, and the daemon forgets what it knew of pending waits.
        The resent schedule's answer must not teach it the wait again: the
        member's next trigger would then be answered `already pending` by the
        daemon, with no wait behind it, and its grant lost (seen once in the
        fault suite, a Redis crash with writes in flight)."""
        cart = rule("cart", "{event: Product Added}", "{benefit: coupon, sku: C, value: 1, channel: email}",
                    "wait: 8s\ncancel_on: [Order Completed]\n")
        d, = self.start({"cart.yaml": cart})
        port = int(d.wait_log(r"event=http_listening .*port=(\d+)", 10).group(1))
        c = self.env.client()
        c.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
        b = now_ms()
        events = [tev("Product Added", "p1", "p-1", b),       # scheduled, held by the pause
                  tev("Order Completed", "p1", "p-2", b + 1)]  # cancels it, held behind it
        self.env.kafka.produce(self.events_file(events, "first.jsonl"))
        wait_for(lambda: metric(port, "benefitd_events_total", outcome="decoded") >= 2, 10, "both events decided")
        wait_for(lambda: any("b" in cl.get("flags", "") for cl in c.client_list()), 10,
                 "the daemon's write held by CLIENT PAUSE")
        self.env.redis.stop()
        d.wait_log(r"event=redis_disconnected", 10)
        self.env.redis.start()
        d.wait_log(r"event=redis_ready .*resent=[1-9]", 20)
        wait_for(lambda: metric(port, "benefitd_redis_inflight") == 0, 10, "the resent writes answered")
        self.assertEqual(pending_waits(self.env.client()), 0, "the cancel ran after the resent schedule")
        b3 = now_ms()
        events.append(tev("Product Added", "p1", "p-3", b3))  # a new wait, due 8 s later
        self.env.kafka.produce(self.events_file(events[2:], "third.jsonl"))
        rep, rep_ids = self.replay_ids(self.events_file(events, "all.jsonl"), b3 + 60000)
        self.assertEqual({g["trigger"]["message_id"] for g in rep.grants}, {"p-3"})
        self.wait_ids(rep_ids, 30, "the wait of p-3 to fire")
        self.env.wait_all_committed(timeout=20)
        self.assertLiveEqualsReplay(rep_ids)
        self.assertEqual(d.terminate(), 0)
        st = re.findall(r"event=stats .*already_pending=(\d+) pending_known=(\d+)", d.log())[-1]
        self.assertEqual(st, ("0", "0"), "already pending / answered by the daemon: p-3 went to Redis")


if __name__ == "__main__":
    unittest.main(verbosity=2)
