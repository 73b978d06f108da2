#!/usr/bin/python3
"""benefitd as a production service: /metrics, /healthz, /readyz, sd_notify
and the watchdog, the `http` config check, and the systemd unit.

One real run (redis-server, the librdkafka mock cluster, build/benefitd with
its HTTP listener on a free port and NOTIFY_SOCKET pointing at a socket of
this test) is scraped and its counters compared with what the run did: the
events produced, the dead letters and the grants found in Redis.

Run from the repo root: /usr/bin/python3 -m unittest -v tests/integration/test_ops.py
(or tests/integration/run-all). Needs `make all`.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest
from collections import Counter
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    BENEFITD, REPO, IntegrationTest, Scrape, check, free_port, http_get, read_dead_letters, read_grants, sig_mod,
    wait_for)

# Every family the daemon must register (issue 6), with its type.
FAMILIES = {
    "benefitd_events_total": "counter",
    "benefitd_decode_errors_total": "counter",
    "benefitd_rule_matches_total": "counter",
    "benefitd_grants_total": "counter",
    "benefitd_grant_writes_total": "counter",
    "benefitd_suppressions_total": "counter",
    "benefitd_redis_roundtrip_seconds": "histogram",
    "benefitd_redis_inflight": "gauge",
    "benefitd_redis_up": "gauge",
    "benefitd_heap_bytes": "gauge",
    "benefitd_redis_reconnects_total": "counter",
    "benefitd_kafka_consumer_lag": "gauge",
    "benefitd_kafka_paused": "gauge",
    "benefitd_pending_timers": "gauge",
    "benefitd_pool_codes_available": "gauge",
    "benefitd_rules_info": "gauge",
    "benefitd_rules_loaded": "gauge",
    "benefitd_rules_reloads_total": "counter",
}

RULES = {
    "order-coupon.yaml": """\
id: order-coupon
trigger:
  event: Order Completed
  where: properties.total >= 100
grant: {benefit: coupon, sku: OC, value: 5, channel: email}
""",
    # two channels for one rule: grants{rule,channel} has two series
    "cart-push.yaml": """\
id: cart-push
trigger:
  event: Product Added
grant: {benefit: coupon, sku: CP, value: 1, channel: push}
variants:
  - {name: a, weight: 50}
  - {name: b, weight: 50, grant: {channel: sms}}
""",
    # one code per grant from the pool `vip` (docs/policy.md): its stock is a metric
    "welcome-code.yaml": """\
id: welcome-code
trigger: {event: Signed Up}
grant: {benefit: code, sku: WELCOME, pool: vip, channel: email}
""",
    # every match is a suppression with reason shadow
    "order-shadow.yaml": """\
id: order-shadow
mode: shadow
trigger:
  event: Order Completed
grant: {benefit: points, sku: OS, value: 1}
""",
}

N_ORDERS = 24
N_CARTS = 16
N_SIGNUPS = 2
POOL_CODES = 5
BAD = {  # payload -> decode_errors reason
    "not json at all": "not_json",
    '{"type": "track", "userId": "u1"}': "no_event_name",
    '{"type": "page", "userId": "u1", "event": "x"}': "unsupported_type",
    '[1, 2]': "not_object",
}


def events():
    out = []
    for i in range(N_ORDERS):
        out.append({"type": "track", "event": "Order Completed", "userId": "u%d" % (i % 9),
                    "messageId": "o-%d" % i, "timestamp": "2026-03-01T10:00:%02d.000Z" % i,
                    "properties": {"total": 15 * i}})
    for i in range(N_CARTS):
        out.append({"type": "track", "event": "Product Added", "userId": "u%d" % (i % 11),
                    "messageId": "c-%d" % i, "timestamp": "2026-03-01T11:00:%02d.000Z" % i,
                    "properties": {"price": 3}})
    for i in range(N_SIGNUPS):
        out.append({"type": "track", "event": "Signed Up", "userId": "new%d" % i, "messageId": "s-%d" % i,
                    "timestamp": "2026-03-01T12:00:00.000Z"})
    return out


class NotifySocket:
    """A stand-in for systemd's notification socket (sd_notify(3))."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages = []

    def drain(self):
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.extend(data.decode().split("\n"))

    def has(self, pred):
        return any(pred(m) for m in self.drain())

    def close(self):
        self.sock.close()


class OpsTest(IntegrationTest):

    def start(self, notify=None, watchdog_usec=None):
        env = self.env
        env.start_backends()
        env.client().sadd("bd:pool:vip", *["CODE-%d" % i for i in range(POOL_CODES)])
        env.write_rules(RULES)
        self.port = free_port()
        env.write_config(extra="http: {enabled: true, bind: 127.0.0.1, port: %d, allow_remote: false}\n" % self.port)
        saved = {k: os.environ.get(k) for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        try:
            if notify:
                os.environ["NOTIFY_SOCKET"] = notify.path
                os.environ["WATCHDOG_USEC"] = str(watchdog_usec)
                os.environ.pop("WATCHDOG_PID", None)
            return env.start_daemon()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def scrape(self):
        code, body = http_get(self.port, "/metrics")
        self.assertEqual(code, 200)
        return Scrape(body)

    def test_metrics_health_and_notify(self):
        notify = NotifySocket(self.env.dir / "notify.sock")
        self.addCleanup(notify.close)
        d = self.start(notify, watchdog_usec=1500000)
        port = self.port

        # systemd: READY=1 once the group is joined, Redis up, rules loaded
        wait_for(lambda: notify.has(lambda m: m == "READY=1"), 10, "READY=1 on the notify socket")
        wait_for(lambda: notify.has(lambda m: re.fullmatch(r"STATUS=consuming 4 partitions, 4 rules, redis up", m)),
                 10, "STATUS=consuming 4 partitions, 4 rules, redis up")
        # WATCHDOG_USEC=1.5 s: keep-alives every 0.5 s
        wait_for(lambda: sum(m == "WATCHDOG=1" for m in notify.drain()) >= 3, 5, "3 WATCHDOG=1 keep-alives")

        self.assertEqual(http_get(port, "/healthz"), (200, "ok\n"))
        self.assertEqual(http_get(port, "/readyz"), (200, "ok\n"))
        self.assertEqual(http_get(port, "/nope")[0], 404)

        # a small run
        evs = events()
        self.env.kafka.produce(lines=evs + list(BAD))
        self.env.wait_all_committed(30)
        client = self.env.client()
        grants = read_grants(client)
        dead = read_dead_letters(client)
        self.assertEqual(len(dead), len(BAD))
        self.assertTrue(grants)

        s = self.scrape()
        for fam, typ in FAMILIES.items():
            self.assertIn(fam, s.help, "no # HELP for %s" % fam)
            self.assertTrue(s.help[fam], "empty # HELP for %s" % fam)
            self.assertEqual(s.type.get(fam), typ, "# TYPE of %s" % fam)

        self.assertEqual(s.value("benefitd_events_total", outcome="decoded"), len(evs))
        self.assertEqual(s.value("benefitd_events_total", outcome="dead_letter"), len(BAD))
        for reason, n in Counter(BAD.values()).items():
            self.assertEqual(s.value("benefitd_decode_errors_total", reason=reason), n, reason)
        self.assertEqual(sum(v for _, v in s.series("benefitd_decode_errors_total")), len(BAD))

        # grants by rule and channel == the grants in Redis
        in_redis = Counter((g["rule"], g["channel"]) for g in grants)
        on_page = {(l["rule"], l["channel"]): v for l, v in s.series("benefitd_grants_total") if v}
        self.assertEqual(on_page, dict(in_redis))
        self.assertEqual({c for _, c in in_redis if _ == "cart-push"}, {"push", "sms"})
        self.assertEqual(s.value("benefitd_grant_writes_total", result="pushed"), len(grants))
        self.assertEqual(s.value("benefitd_grant_writes_total", result="repeat"), 0)

        orders_matched = sum(1 for e in evs if e["event"] == "Order Completed" and e["properties"]["total"] >= 100)
        self.assertEqual(s.value("benefitd_rule_matches_total", rule="order-coupon"), orders_matched)
        self.assertEqual(s.value("benefitd_rule_matches_total", rule="cart-push"), N_CARTS)
        self.assertEqual(s.value("benefitd_rule_matches_total", rule="order-shadow"), N_ORDERS)
        self.assertEqual(s.value("benefitd_suppressions_total", rule="order-shadow", reason="shadow"), N_ORDERS)
        self.assertEqual(s.value("benefitd_rule_matches_total", rule="welcome-code"), N_SIGNUPS)
        self.assertEqual(in_redis[("welcome-code", "email")], N_SIGNUPS)

        self.assertGreater(s.value("benefitd_redis_roundtrip_seconds_count", op="script"), 0)
        self.assertEqual(s.value("benefitd_redis_roundtrip_seconds_bucket", op="script", le="+Inf"),
                         s.value("benefitd_redis_roundtrip_seconds_count", op="script"))
        self.assertEqual(s.value("benefitd_redis_up"), 1)
        self.assertEqual(s.value("benefitd_redis_inflight"), 0)
        # malloc's bytes in use: the rules, the tables' bookkeeping, librdkafka's
        # buffers; a daemon this small holds more than 64 KiB and far less than 1 GiB
        self.assertGreater(s.value("benefitd_heap_bytes"), 64 << 10)
        self.assertLess(s.value("benefitd_heap_bytes"), 1 << 30)
        self.assertEqual(s.value("benefitd_kafka_paused"), 0)
        lag = s.series("benefitd_kafka_consumer_lag", topic="events")
        self.assertTrue(lag, "no consumer lag series")
        self.assertTrue(all(v == 0 for _, v in lag), lag)
        self.assertTrue({l["partition"] for l, _ in lag} <= {"0", "1", "2", "3"})
        self.assertEqual(s.value("benefitd_pending_timers", kind="wait"), 0)
        self.assertEqual(s.value("benefitd_pending_timers", kind="inactivity"), 0)
        self.assertEqual(s.value("benefitd_rules_loaded"), 4)
        self.assertEqual(len(s.series("benefitd_rules_info")), 1)
        self.assertEqual(s.value("benefitd_rules_reloads_total", result="ok"), 0)

        # Redis away: not ready (503 with the reason), STATUS says so, redis_up 0
        self.env.redis.stop()
        wait_for(lambda: http_get(port, "/readyz") == (503, "redis down\n"), 10, "/readyz 503 redis down")
        self.assertEqual(http_get(port, "/healthz")[0], 200)
        self.assertEqual(self.scrape().value("benefitd_redis_up"), 0)
        wait_for(lambda: notify.has(lambda m: m == "STATUS=consuming 4 partitions, 4 rules, redis down"), 5,
                 "STATUS=... redis down")
        self.env.redis.start()
        wait_for(lambda: http_get(port, "/readyz")[0] == 200, 15, "/readyz 200 after Redis is back")
        self.assertGreaterEqual(self.scrape().value("benefitd_redis_reconnects_total"), 1)

        # reload: RELOADING=1 then READY=1, reloads{ok}, rules_info moves to the new version
        old_version = s.series("benefitd_rules_info")[0][0]["version"]
        self.env.write_rules({"extra.yaml": "id: extra\ntrigger: {event: Signed Up}\ngrant: {benefit: coupon, sku: E}\n"})
        notify.drain()
        notify.messages.clear()
        start = d.log_size()
        d.send(sig_mod.SIGHUP)
        m = d.wait_log(r"event=reloaded rules=5 version=(\w+)", 10, start=start)
        wait_for(lambda: "READY=1" in notify.drain(), 5, "READY=1 after the reload")
        msgs = notify.messages
        self.assertIn("RELOADING=1", msgs)
        self.assertLess(msgs.index("RELOADING=1"), msgs.index("READY=1"))
        s = self.scrape()
        self.assertEqual(s.value("benefitd_rules_reloads_total", result="ok"), 1)
        info = s.series("benefitd_rules_info")
        self.assertEqual([(l["version"], v) for l, v in info], [(m.group(1), 1)])
        self.assertNotEqual(m.group(1), old_version)
        self.assertEqual(s.value("benefitd_rules_loaded"), 5)
        self.assertEqual(s.value("benefitd_rule_matches_total", rule="extra"), 0)
        wait_for(lambda: self.scrape().series("benefitd_pool_codes_available", pool="vip") ==
                 [({"pool": "vip"}, POOL_CODES - N_SIGNUPS)], 5, "pool stock %d" % (POOL_CODES - N_SIGNUPS))

        # a broken set is refused and counted
        self.env.write_rules({"broken.yaml": "id: broken\ntrigger: {event: X}\ngrant: {benefit: coupon, sku: }\nwiat: 1h\n"})
        start = d.log_size()
        d.send(sig_mod.SIGHUP)
        d.wait_log(r"event=reload_refused", 10, start=start)
        s = self.scrape()
        self.assertEqual(s.value("benefitd_rules_reloads_total", result="error"), 1)
        self.assertEqual(s.value("benefitd_rules_loaded"), 5)

        # stop: STOPPING=1, exit 0
        self.assertEqual(d.terminate(30), 0)
        self.assertIn("STOPPING=1", notify.drain())

    def test_check_refuses_remote_bind(self):
        rules = self.env.write_rules(RULES)
        cfg = self.env.dir / "remote.yaml"
        cfg.write_text("rules: {dir: %s}\nhttp:\n  port: 9464\n  bind: 0.0.0.0\n" % rules)
        rc, out, err = check("-c", cfg)
        self.assertEqual(rc, 1, out + err)
        self.assertIn("%s:4:9: http bind address '0.0.0.0' is not loopback; set http.allow_remote: true" % cfg, err)
        cfg.write_text("rules: {dir: %s}\nhttp: {bind: 0.0.0.0, allow_remote: true}\n" % rules)
        rc, out, err = check("-c", cfg)
        self.assertEqual(rc, 0, out + err)
        cfg.write_text("rules: {dir: %s}\nhttp: {bind: 127.0.0.1, port: 65536}\n" % rules)
        rc, out, err = check("-c", cfg)
        self.assertEqual(rc, 1, out + err)
        self.assertIn("%s:2:31: 'port' must be between 0 and 65535" % cfg, err)


class UnitFileTest(unittest.TestCase):
    """`systemd-analyze verify` on the unit as `make install` installs it."""

    def test_systemd_analyze_verify(self):
        sa = shutil.which("systemd-analyze")
        if not sa:
            self.skipTest("systemd-analyze is not installed (Debian package: systemd)")
        root = Path(tempfile.mkdtemp(prefix="benefitd-unit-"))
        self.addCleanup(shutil.rmtree, root, True)
        for target in ("install", "install-extra"):
            r = subprocess.run(["make", "-s", target, "PREFIX=/usr", "DESTDIR=%s" % root], cwd=str(REPO),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
            self.assertEqual(r.returncode, 0, r.stdout.decode(errors="replace"))
        unit = root / "usr/lib/systemd/system/benefitd.service"
        self.assertTrue(unit.is_file())
        sysusers = root / "usr/lib/sysusers.d/benefitd.conf"
        self.assertIn('u benefitd - "benefitd" /var/lib/benefitd', sysusers.read_text())
        text = unit.read_text()
        for line in ("Type=notify", "WatchdogSec=30", "User=benefitd", "ExecReload=/bin/kill -HUP $MAINPID"):
            self.assertIn(line + "\n", text)
        # verify checks that the commands exist: point them at the built
        # binary (the installed path is only there on a real install).
        checked = root / "benefitd.service"
        checked.write_text(text.replace("/usr/bin/benefitd", str(BENEFITD)))
        r = subprocess.run([sa, "verify", str(checked)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout.decode(errors="replace"))
        self.assertEqual(r.stdout.decode().strip(), "")
        # exposure score (offline: no running systemd needed), where supported
        r = subprocess.run([sa, "security", "--offline=true", str(checked)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout.decode(errors="replace"))
        if m:
            print("\nsystemd-analyze security: exposure %s" % m.group(1), file=sys.stderr)
            self.assertLessEqual(float(m.group(1)), 2.0)


if __name__ == "__main__":
    unittest.main()
