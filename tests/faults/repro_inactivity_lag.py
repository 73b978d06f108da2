#!/usr/bin/python3
"""Regression (run by `make test-faults`): a silence must not be granted live
for a member who was active, when the event that ended the silence is still
unconsumed in Kafka as the silence falls due on the wall clock. Fixed by
judging silences against how far the partition has been read (docs/time.md).

Rule `inactive_for: 5s`. Member x is active at A, then at B = A + 3 s: replay
grants one silence, `inactive:B`. Live: the daemon is stopped after A (a clean
SIGTERM; any outage or consumer lag does the same); B and 20,000 events of
other members are produced on time but wait in Kafka; the daemon restarts at
A + 12 s. Its timer poller runs at once on assignment, finds x last seen at A
(wall clock - 5 s >= A) and grants `inactive:A` before the consumer reaches B.
The grant id differs from replay's and the member was never silent for 5 s.

The poller compares the wall clock with event-time `last`, so any consumer
lag longer than `inactive_for` minus the member's real gap produces such
grants (with `inactive_for: 2h`, a 2-hour outage; or re-reading a topic).

Exit status 0 when live equals replay, 1 when the extra grant appears.
    /usr/bin/python3 tests/faults/repro_inactivity_lag.py
"""
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from harness import Env, read_grants, replay  # noqa: E402


def iso(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def ev(user, mid, ts):
    return {"type": "track", "event": "Product Viewed", "userId": user, "messageId": mid, "timestamp": iso(ts),
            "properties": {}}


def main():
    env = Env("benefitd-inact-lag")
    try:
        env.start_backends()
        env.write_rules({"wb.yaml": "id: wb\ntrigger: {inactive_for: 5s}\n"
                                    "grant: {benefit: coupon, sku: WB, value: 1, channel: email}\n"})
        env.write_config(channels={})
        d1 = env.start_daemon()
        a = int(time.time() * 1000)
        first = ev("x", "a", a)
        env.kafka.produce(lines=[first])
        env.wait_all_committed(20)
        d1.terminate()
        b = a + 3000
        time.sleep(max(0, (b - time.time() * 1000) / 1000))
        filler = [ev("f%d" % i, "f%d" % i, b - 1) for i in range(20000)]
        second = ev("x", "b", b)
        env.kafka.produce(lines=filler + [second])
        time.sleep(max(0, (a + 12000 - time.time() * 1000) / 1000))
        env.start_daemon()
        env.wait_all_committed(60)
        time.sleep(7)   # x's real silence (B + 5 s) falls due and fires
        path = env.dir / "events.jsonl"
        path.write_text("".join(json.dumps(e) + "\n" for e in [first] + filler + [second]))
        rep = replay(env.rules_dir, path, config=env.config_path, until=iso(b + 6000))
        want = sorted((g["grant_id"], g["trigger"]["timestamp"]) for g in rep.grants if g["user_id"] == "x")
        got = sorted((g["grant_id"], g["trigger"]["timestamp"]) for g in read_grants(env.client())
                     if g["user_id"] == "x")
        print("A=%s B=%s\nreplay: %s\nlive:   %s" % (iso(a), iso(b), want, got))
        return 0 if want == got else 1
    finally:
        env.close()


if __name__ == "__main__":
    sys.exit(main())
