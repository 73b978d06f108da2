#!/usr/bin/python3
"""Integration harness for benefitd: real processes on loopback.

Everything here starts real programs - a private redis-server, the
librdkafka mock cluster served by build/kafkatool, build/benefitd itself -
each in its own process group, and stops every one of them when the test
ends, pass or fail. Waiting is always "poll a condition until a deadline";
a fixed sleep is never what makes a test pass.

Standard library + redis-py only (Debian's python3-redis): run it with
/usr/bin/python3.
"""
import json
import os
import re
import shutil
import signal as sig_mod
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[2]
# BENEFITD_BIN runs the suite against another build (make test-integration-san).
BENEFITD = Path(os.environ.get("BENEFITD_BIN") or REPO / "build" / "benefitd")
KAFKATOOL = REPO / "build" / "kafkatool"
GEN_EVENTS = REPO / "scripts" / "gen-events"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

TOPIC = "events"
GROUP = "benefitd"
PREFIX = "bd:"

# Grant fields that depend on the clock of the decision: live decisions use
# the wall clock, replay the event time.
CLOCK_FIELDS = ("issued_at", "deliver_after")
CLOCK_BENEFIT_FIELDS = ("expires_at",)


class HarnessError(AssertionError):
    """A precondition of the harness failed (a process did not start, a
    condition was not reached in time). An AssertionError, so unittest
    reports it as a test failure with the message."""


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout, what, interval=0.05):
    """Polls cond() until it returns something truthy; returns that value.
    Raises HarnessError naming `what` when the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise HarnessError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def tail(path, lines=60):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return "(cannot read %s: %s)" % (path, e)
    text = data.decode("utf-8", "replace").splitlines()
    return "\n".join(text[-lines:])


class Proc:
    """A child in its own session/process group, output to a log file."""

    def __init__(self, name, argv, log_path, cwd=None, env=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "ab")
        self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                  cwd=cwd, env=env, start_new_session=True)
        self.pid = self.p.pid

    def alive(self):
        return self.p.poll() is None

    def send(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout):
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError("%s (pid %d) did not exit within %.1fs" % (self.name, self.pid, timeout))

    def kill_group(self, sig=sig_mod.SIGKILL):
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, sig=sig_mod.SIGTERM, timeout=10.0):
        """Stops the process (and anything it started): sig, then SIGKILL to
        the whole group when it does not go in time. Returns the exit status."""
        if self.alive():
            self.send(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                # the leader is still there, so the group id is still ours
                self.kill_group(sig_mod.SIGKILL)
                self.p.wait(5)
        self._log.close()
        return self.p.returncode

    def log(self):
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""


class RedisServer:
    """A private redis-server: its own port and directory, AOF on, no RDB, so
    a stop and a start on the same dir keep the data."""

    def __init__(self, workdir, port=None):
        self.dir = Path(workdir) / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc = None
        self.starts = 0

    def start(self, timeout=10.0):
        self.starts += 1
        argv = [REDIS_SERVER, "--port", self.port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                "--dir", self.dir, "--daemonize", "no", "--protected-mode", "no"]
        self.proc = Proc("redis-server", argv, self.dir.parent / ("redis-%d.log" % self.starts))

        def pong():
            if not self.proc.alive():
                raise HarnessError("redis-server exited (status %s):\n%s" % (self.proc.p.returncode,
                                                                             tail(self.proc.log_path)))
            try:
                return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping()
            except redis.exceptions.RedisError:
                return False
        wait_for(pong, timeout, "redis-server PING on port %d" % self.port)
        return self

    def stop(self, timeout=10.0):
        """SIGTERM: Redis writes the AOF out and exits."""
        if self.proc:
            rc = self.proc.stop(sig_mod.SIGTERM, timeout)
            self.proc = None
            return rc
        return None

    def client(self):
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=10)


class KafkaMock:
    """`kafkatool mock`: a librdkafka mock cluster on loopback, with a
    control FIFO for fault injection."""

    def __init__(self, workdir, topics=("events:4",)):
        self.dir = Path(workdir)
        self.bootstrap_file = self.dir / "kafka.bootstrap"
        self.fifo = self.dir / "kafka.control"
        self.topics = topics
        self.proc = None
        self.brokers = None

    def start(self, timeout=15.0):
        argv = [KAFKATOOL, "mock", "--bootstrap-file", self.bootstrap_file, "--control-fifo", self.fifo]
        for t in self.topics:
            argv += ["--topic", t]
        self.proc = Proc("kafkatool mock", argv, self.dir / "kafka-mock.log")

        def ready():
            if not self.proc.alive():
                raise HarnessError("kafkatool mock exited:\n" + tail(self.proc.log_path))
            if self.bootstrap_file.exists():
                return self.bootstrap_file.read_text().strip()
            return None
        self.brokers = wait_for(ready, timeout, "the kafka mock's bootstrap file")
        return self

    def stop(self):
        if self.proc:
            self.proc.stop(sig_mod.SIGTERM, 10)
            self.proc = None

    def control(self, line):
        # O_NONBLOCK|O_WRONLY fails when nobody reads: the mock keeps it open.
        fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, (line.rstrip("\n") + "\n").encode())
        finally:
            os.close(fd)

    def _tool(self, *args, timeout=60, check=True, input_bytes=None):
        argv = [str(KAFKATOOL)] + [str(a) for a in args]
        r = subprocess.run(argv, input=input_bytes, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        if check and r.returncode != 0:
            raise HarnessError("%s failed (%d): %s" % (" ".join(argv), r.returncode, r.stderr.decode(errors="replace")))
        return r

    def produce(self, path=None, lines=None, topic=TOPIC):
        """Produces a JSON Lines file (or a list of lines / dicts), key = userId."""
        if lines is not None:
            data = "".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines).encode()
            r = self._tool("produce", "--brokers", self.brokers, "--topic", topic, "-", input_bytes=data)
        else:
            r = self._tool("produce", "--brokers", self.brokers, "--topic", topic, path)
        return r

    def produce_background(self, path, rate, log_path, topic=TOPIC):
        """A paced producer that keeps running while the test does other things."""
        return Proc("kafkatool produce", [KAFKATOOL, "produce", "--brokers", self.brokers, "--topic", topic,
                                          "--rate", rate, path], log_path)

    def count(self, topic=TOPIC):
        return int(self._tool("count", "--brokers", self.brokers, "--topic", topic).stdout.decode().strip())

    def lag(self, group=GROUP, topic=TOPIC):
        """Messages of the topic past the group's committed offsets, or None
        when the probe fails (a transient broker hiccup)."""
        r = self._tool("committed", "--brokers", self.brokers, "--topic", topic, "--group", group, "--lag",
                       check=False, timeout=30)
        if r.returncode != 0:
            return None
        try:
            return int(r.stdout.decode().strip())
        except ValueError:
            return None

    def committed(self, group=GROUP, topic=TOPIC):
        """Sum of the group's committed offsets (partitions without one count 0)."""
        r = self._tool("committed", "--brokers", self.brokers, "--topic", topic, "--group", group)
        return int(r.stdout.decode().strip())


def default_config(brokers, redis_port, rules_dir, channels=None, kafka_props=None, extra=""):
    """The daemon's YAML config, as text. channels: {name: (kind, key)};
    kafka_props: more librdkafka properties."""
    if channels is None:
        channels = {"push": ("list", "{prefix}queue:{channel}")}
    ch = ", ".join('%s: {kind: %s, key: "%s"}' % (n, k, key) for n, (k, key) in channels.items())
    # A short session: the mock cluster only lets a new member in once the
    # previous one's session has expired, even after a clean close (45 s by
    # default), and tests restart daemons.
    props = {"auto.offset.reset": "earliest", "session.timeout.ms": 4000, "heartbeat.interval.ms": 400}
    props.update(kafka_props or {})
    pr = ", ".join("%s: %s" % (k, json.dumps(str(v))) for k, v in props.items())
    # Any free port for /metrics: a taken port stops the daemon, and tests run
    # several daemons side by side.
    if not re.search(r"^http:", extra, re.M):
        extra = "http: {port: 0}\n" + extra
    return (
        "# written by tests/integration/harness.py\n"
        "kafka: {brokers: \"%s\", topics: [%s], group_id: %s, properties: {%s}}\n"
        "redis: {host: 127.0.0.1, port: %d, key_prefix: \"%s\", claim_ttl: 30d, max_inflight: 10000}\n"
        "rules: {dir: %s, timezone: UTC}\n"
        "output: {default: {kind: stream, key: \"{prefix}grants:{channel}\"}, channels: {%s}}\n"
        "dead_letter: {key: \"{prefix}deadletter\", maxlen: 100000}\n"
        "daemon: {allow_root: true, shutdown_timeout: 10s}\n"
        "%s" % (brokers, TOPIC, GROUP, pr, redis_port, PREFIX, json.dumps(str(rules_dir)), ch, extra))


# ---- the daemon's /metrics page (test_ops checks the format; others read values)

def http_get(port, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def parse_exposition(text):
    """-> (help {family: text}, type {family: type}, samples [(name, {labels}, value)])."""
    helps, types, samples = {}, {}, []
    for line in text.splitlines():
        if not line:
            continue
        m = re.match(r"# (HELP|TYPE) (\S+) ?(.*)$", line)
        if m:
            (helps if m.group(1) == "HELP" else types)[m.group(2)] = m.group(3)
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m:
            raise AssertionError("unparsable exposition line: %r" % line)
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        samples.append((m.group(1), labels, float(m.group(3))))
    return helps, types, samples


class Scrape:
    def __init__(self, text):
        self.text = text
        self.help, self.type, self.samples = parse_exposition(text)

    def series(self, name, **match):
        return [(l, v) for n, l, v in self.samples if n == name and all(l.get(k) == w for k, w in match.items())]

    def value(self, name, **match):
        s = self.series(name, **match)
        if len(s) != 1:
            raise AssertionError("%d series of %s%s on the page:\n%s" % (len(s), name, match, self.text))
        return s[0][1]


class Daemon:
    """One run of `benefitd run -c CONFIG`; stderr goes to its own log file,
    so a wait for a log line never matches an earlier run's."""

    def __init__(self, config_path, log_path):
        self.config_path = Path(config_path)
        self.log_path = Path(log_path)
        self.proc = Proc("benefitd", [BENEFITD, "run", "-c", self.config_path], self.log_path, cwd=str(REPO))
        self.pid = self.proc.pid

    def log(self):
        return self.proc.log()

    def alive(self):
        return self.proc.alive()

    def wait_log(self, pattern, timeout=30.0, start=0, count=1):
        """Waits until the log holds `count` lines matching the regex (from
        byte offset `start`); returns the last match. Fails at once if the
        daemon exits meanwhile."""
        rx = re.compile(pattern)

        def found():
            text = self.log()[start:]
            ms = [m for m in (rx.search(l) for l in text.splitlines()) if m]
            if len(ms) >= count:
                return ms[count - 1]
            if not self.alive():
                raise HarnessError("benefitd exited (status %s) before logging /%s/:\n%s" %
                                   (self.proc.p.returncode, pattern, tail(self.log_path)))
            return None
        return wait_for(found, timeout, "benefitd log line /%s/ in %s" % (pattern, self.log_path), interval=0.05)

    def log_size(self):
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def wait_assigned(self, timeout=30.0):
        """Waits for the consumer group to hand the daemon partitions."""
        return self.wait_log(r"event=kafka_assigned partitions=\d+ total=[1-9]", timeout)

    def send(self, sig):
        self.proc.send(sig)

    def kill9(self):
        self.proc.send(sig_mod.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout=30.0):
        """SIGTERM and wait; returns the exit status."""
        self.proc.send(sig_mod.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self):
        return self.proc.stop(sig_mod.SIGTERM, 15)


def parse_kv_line(line):
    """`ts=... level=info event=stats a=1 b="x y"` -> dict."""
    out = {}
    for m in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)', line):
        v = m.group(2)
        if v.startswith('"'):
            v = v[1:-1]
        out[m.group(1)] = v
    return out


class ReplayResult:
    def __init__(self, rc, stdout, stderr, events_path):
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.lines = [json.loads(l) for l in stdout.splitlines() if l.strip()]
        self.grants = [g for g in self.lines if "grant_id" in g]
        self.explained = [g for g in self.lines if "grant_id" not in g]
        # FILE:LINE: reason
        rx = re.compile(r"^%s:(\d+): (.*)$" % re.escape(str(events_path)))
        self.bad_lines = [(int(m.group(1)), m.group(2)) for m in (rx.match(l) for l in stderr.splitlines()) if m]


def replay(rules_dir, events_path, config=None, explain=False, until=None):
    argv = [str(BENEFITD), "replay", "--rules", str(rules_dir)]
    if config:
        argv += ["--config", str(config)]
    if explain:
        argv.append("--explain")
    if until:
        argv += ["--until", until]
    argv.append(str(events_path))
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    res = ReplayResult(r.returncode, r.stdout.decode("utf-8"), r.stderr.decode("utf-8", "replace"), events_path)
    if r.returncode not in (0, 3):
        raise HarnessError("replay failed (%d):\n%s" % (r.returncode, res.stderr))
    return res


def check(*args):
    r = subprocess.run([str(BENEFITD), "check"] + [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60, cwd=str(REPO))
    return r.returncode, r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")


def gen_events(path, seed=42, members=200, events=2000, bad=0, start=None, hours=None):
    argv = [str(GEN_EVENTS), "--seed", str(seed), "--members", str(members), "--events", str(events)]
    if bad:
        argv += ["--bad", str(bad)]
    if start:
        argv += ["--start", start]
    if hours:
        argv += ["--hours", str(hours)]
    with open(path, "wb") as f:
        r = subprocess.run(argv, stdout=f, stderr=subprocess.PIPE, timeout=120)
    if r.returncode != 0:
        raise HarnessError("gen-events failed (%d): %s" % (r.returncode, r.stderr.decode(errors="replace")))
    return path


def read_grants(client, prefix=PREFIX):
    """Every grant in Redis: stream entries of {prefix}grants:* (field
    `grant`) and list items of {prefix}queue:*, oldest first. Each is the
    parsed grant dict; the key it came from is in grant['_key']."""
    out = []
    for pattern in (prefix + "grants:*", prefix + "queue:*"):
        for key in sorted(client.scan_iter(match=pattern, count=1000)):
            kind = client.type(key)
            if kind == "stream":
                for _id, fields in client.xrange(key):
                    g = json.loads(fields["grant"])
                    g["_key"] = key
                    out.append(g)
            elif kind == "list":
                for item in reversed(client.lrange(key, 0, -1)):  # LPUSH: newest first
                    g = json.loads(item)
                    g["_key"] = key
                    out.append(g)
    return out


def count_grants(client, prefix=PREFIX):
    n = 0
    for pattern in (prefix + "grants:*", prefix + "queue:*"):
        for key in client.scan_iter(match=pattern, count=1000):
            kind = client.type(key)
            n += client.xlen(key) if kind == "stream" else client.llen(key) if kind == "list" else 0
    return n


def read_dead_letters(client, key=PREFIX + "deadletter"):
    return [dict(fields, _id=_id) for _id, fields in client.xrange(key)]


def strip_clock(grant):
    """A grant without the fields that depend on the decision clock, nor the
    harness's own _key."""
    g = {k: v for k, v in grant.items() if k not in CLOCK_FIELDS and k != "_key"}
    if isinstance(g.get("benefit"), dict):
        g["benefit"] = {k: v for k, v in g["benefit"].items() if k not in CLOCK_BENEFIT_FIELDS}
    return g


def duplicates(ids):
    return {k: n for k, n in Counter(ids).items() if n > 1}


class Env:
    """One test's world: a temp dir, Redis, the Kafka mock and daemons.
    close() stops everything it started, in reverse order."""

    def __init__(self, name="benefitd-it"):
        self.dir = Path(tempfile.mkdtemp(prefix=name + "-"))
        self.redis = None
        self.kafka = None
        self.daemons = []
        self.procs = []
        self.config_path = None
        self.rules_dir = self.dir / "rules"

    # -- setup
    def start_redis(self):
        self.redis = RedisServer(self.dir).start()
        return self.redis

    def start_kafka(self, topics=("events:4",)):
        self.kafka = KafkaMock(self.dir, topics).start()
        return self.kafka

    def start_backends(self):
        self.start_redis()
        self.start_kafka()
        return self

    def write_rules(self, files, rules_dir=None):
        """files: {name.yaml: text}. Returns the rules dir."""
        d = Path(rules_dir) if rules_dir else self.rules_dir
        d.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (d / name).write_text(text)
        return d

    def write_config(self, rules_dir=None, **kw):
        rules_dir = Path(rules_dir) if rules_dir else self.rules_dir
        self.config_path = self.dir / "benefitd.yaml"
        self.config_path.write_text(default_config(self.kafka.brokers, self.redis.port, rules_dir, **kw))
        return self.config_path

    def start_daemon(self, wait_assigned=True, timeout=30.0):
        log = self.dir / ("benefitd-%d.log" % (len(self.daemons) + 1))
        d = Daemon(self.config_path, log)
        self.daemons.append(d)
        if wait_assigned:
            d.wait_assigned(timeout)
        return d

    def background(self, proc):
        self.procs.append(proc)
        return proc

    def client(self):
        return self.redis.client()

    # -- waiting
    def wait_all_committed(self, timeout=60.0, group=GROUP):
        """Waits until the group's committed offsets reach the end of every
        partition (kafkatool committed --lag says 0), i.e. every event was
        processed and every Redis write it caused was acknowledged."""
        def done():
            for d in self.daemons:
                if d is self.daemons[-1] and not d.alive():
                    raise HarnessError("benefitd exited (status %s) while waiting for commits:\n%s" %
                                       (d.proc.p.returncode, tail(d.log_path)))
            return self.kafka.lag(group) == 0
        wait_for(done, timeout, "consumer group '%s' to commit everything (lag 0)" % group, interval=0.25)

    def wait_grants(self, n, timeout=60.0):
        c = self.client()
        return wait_for(lambda: count_grants(c) >= n, timeout, "%d grants in Redis" % n)

    # -- teardown
    def sanitizer_reports(self):
        """Names of daemon logs holding an ASan/UBSan report."""
        return [d.log_path.name for d in self.daemons if d.log_path.exists() and
                re.search(r"ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer",
                          d.log_path.read_text(errors="replace"))]

    def close(self, keep=False):
        """Stops everything; one failing stop does not spare the others."""
        stops = [lambda p=p: p.stop(sig_mod.SIGTERM, 5) for p in reversed(self.procs)]
        stops += [lambda d=d: d.proc.stop(sig_mod.SIGTERM, 15) for d in reversed(self.daemons)]
        stops += [lambda: self.kafka and self.kafka.stop(), lambda: self.redis and self.redis.stop()]
        for stop in stops:
            try:
                stop()
            except Exception as e:  # noqa: BLE001 - report and go on stopping
                print("harness: while stopping: %r" % e, file=sys.stderr)
        if not keep and not os.environ.get("BENEFITD_IT_KEEP") and not self.sanitizer_reports():
            shutil.rmtree(self.dir, ignore_errors=True)

    def dump(self, out=sys.stderr, lines=60):
        """The tail of every log, for a failing test's report."""
        print("\n===== integration logs in %s =====" % self.dir, file=out)
        for d in self.daemons:
            print("----- %s (last %d lines) -----\n%s" % (d.log_path.name, lines, tail(d.log_path, lines)), file=out)
        if self.kafka and self.kafka.proc:
            print("----- kafka-mock.log -----\n%s" % tail(self.kafka.proc.log_path, 15), file=out)
        for p in sorted(self.dir.glob("redis-*.log")):
            print("----- %s -----\n%s" % (p.name, tail(p, 10)), file=out)
        for p in self.procs:
            print("----- %s -----\n%s" % (p.log_path.name, tail(p.log_path, 10)), file=out)
        out.flush()


class IntegrationTest(unittest.TestCase):
    """Base class: self.env is a fresh Env; on failure the daemon's log tail
    is printed and the temp dir kept (its path is printed)."""

    def setUp(self):
        for exe in (BENEFITD, KAFKATOOL):
            if not os.access(exe, os.X_OK):
                self.fail("%s is missing: run `make all` first" % exe)
        self.env = Env("benefitd-" + self._testMethodName)
        self.addCleanup(self._close_env)

    def _failed(self):
        outcome = getattr(self, "_outcome", None)
        if outcome is None:
            return True
        if hasattr(outcome, "errors"):          # Python <= 3.10
            return any(exc for _, exc in outcome.errors)
        # 3.11+: failures are in the result as they happen (outcome.success
        # is reset for each cleanup, so it cannot tell)
        result = getattr(outcome, "result", None)
        if result is None:
            return True
        return any(t is self for t, _ in list(result.failures) + list(result.errors))

    def _close_env(self):
        failed = self._failed()
        try:
            if failed:
                self.env.dump()
        finally:
            self.env.close(keep=failed)
        # Checked after the stop, which is when a sanitizer reports most, and
        # for every daemon, even one killed on purpose whose exit status no
        # test looks at.
        reports = self.env.sanitizer_reports()
        if reports:
            self.env.dump()
            self.fail("sanitizer report in %s (logs kept in %s)" % (", ".join(reports), self.env.dir))

    # -- assertions shared by the tests
    def assertGrantsMatchReplay(self, live, replayed, msg=""):
        """Same grant ids, no duplicates on either side, and every field of
        every grant equal except the decision-clock ones."""
        live_ids = [g["grant_id"] for g in live]
        rep_ids = [g["grant_id"] for g in replayed]
        self.assertEqual(duplicates(live_ids), {}, "duplicate grants in Redis " + msg)
        self.assertEqual(duplicates(rep_ids), {}, "duplicate grants in replay " + msg)
        missing = set(rep_ids) - set(live_ids)
        extra = set(live_ids) - set(rep_ids)
        self.assertEqual((len(missing), len(extra)), (0, 0),
                         "grant ids differ %s: %d only in replay (e.g. %s), %d only in Redis (e.g. %s)" %
                         (msg, len(missing), sorted(missing)[:3], len(extra), sorted(extra)[:3]))
        self.assertEqual(len(live), len(replayed))
        by_id = {g["grant_id"]: g for g in replayed}
        for g in live:
            self.assertEqual(strip_clock(g), strip_clock(by_id[g["grant_id"]]),
                             "grant %s differs from replay %s" % (g["grant_id"], msg))
