"""The fault suite's event set: gen-events' shop day, re-timed to run now.

`benefitd replay` decides on event time, the daemon on processing time
(docs/time.md). For the two to grant the same ids under faults, no decision
may depend on where processing time falls relative to a rule's duration.
With the sample rules that means three things per member:

- a second `Product Added` / big `Order Completed` is either inside the
  first one's wait (`already pending`) in both worlds or after it in both;
- an `Order Completed` cancels a cart wait before its due time in both, or
  comes after it in both;
- a silence (`inactive_for`) either runs out before the member's next event
  in both, or does not in both.

Processing lags event time by 0..D (D: the longest stall a fault causes,
plus catching up), so a gap g between two events of a member becomes
g - D .. g + D live. The events are therefore laid out in *bursts* per
member: every gap inside a burst is small (a burst spans at most `span`),
every gap between two bursts of a member is large (at least `gap`), and
the rules' durations sit in between:

    span + D  <  wait, inactive_for        (nothing falls due inside a burst)
    inactive_for + D + slack  <  gap       (the poller fires the silence before
    wait + D + slack < gap                  the next burst, even after a stall)

How: the day is compressed linearly into `duration` seconds starting at
`t0` (a 10-minute browsing session becomes well under a second), then each
member's events are walked in order: an event close to the burst's start
joins it, one far enough after the previous event starts a new burst, and
one in between (the forbidden zone) is moved to `previous + gap`, where it
starts a new burst that later events may join, or, when that would be past
the end of the run, to 1 ms after the previous event (it joins the current
burst: a burst grows by 1 ms per such event, far below the margins). Every event is kept, each
member's order is kept, and a member's timestamps strictly increase.
"""
import datetime
import json

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def iso_ms(ms):
    t = _EPOCH + datetime.timedelta(milliseconds=ms)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + ".%03dZ" % (ms % 1000)


def parse_ms(s):
    """gen-events' `2026-11-24T08:00:13.514Z` -> epoch ms, or None."""
    try:
        t = datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    except (TypeError, ValueError):
        return None
    return (t - _EPOCH) // datetime.timedelta(milliseconds=1)


class Line:
    __slots__ = ("idx", "obj", "raw", "member", "ts", "new")

    def __init__(self, idx, raw):
        self.idx, self.raw = idx, raw
        self.obj = self.member = self.ts = self.new = None
        try:
            obj = json.loads(raw)
        except ValueError:
            return
        if isinstance(obj, dict) and isinstance(obj.get("userId"), str):
            ts = parse_ms(obj.get("timestamp"))
            if ts is not None:
                self.obj, self.member, self.ts = obj, obj["userId"], ts


def load(path):
    with open(path, encoding="utf-8") as f:
        return [Line(i, l.rstrip("\n")) for i, l in enumerate(f) if l.strip()]


class Timeline:
    """The re-timed events: `lines` (JSON text, in produce order), `ts`
    (epoch ms when each may be produced), and figures about the layout."""

    def __init__(self, lines, t0, duration_ms, span_ms, gap_ms):
        timed = [l for l in lines if l.ts is not None]
        day0 = min(l.ts for l in timed)
        day = max(l.ts for l in timed) - day0 or 1
        state = {}                        # member -> [burst start, previous]
        self.bursts = self.moved = self.pulled = 0
        end = t0 + duration_ms
        self.max_span = 0
        for l in timed:                   # input order = gen-events' time order
            c = t0 + (l.ts - day0) * duration_ms // day
            st = state.get(l.member)
            if st is None:
                new = c
                state[l.member] = [new, new]
                self.bursts += 1
            else:
                start, prev = st
                if c <= start + span_ms:
                    new = max(c, prev + 1)
                elif c >= prev + gap_ms:
                    new = c
                    st[0] = new
                    self.bursts += 1
                elif prev + gap_ms <= end:   # forbidden zone: a new burst at prev + gap
                    new = prev + gap_ms
                    st[0] = new
                    self.bursts += 1
                    self.moved += 1
                else:                     # ... or, near the end, the current burst
                    new = prev + 1
                    self.pulled += 1
                st[1] = new
                self.max_span = max(self.max_span, new - st[0])
            l.new = new
        # malformed lines keep their place: produced with the event before them
        prev_new = t0
        for l in lines:
            if l.new is None:
                l.new = prev_new
            prev_new = l.new
        order = sorted(lines, key=lambda l: (l.new, l.idx))
        self.ts = [l.new for l in order]
        self.lines = []
        for l in order:
            if l.obj is not None:
                l.obj["timestamp"] = iso_ms(l.new)
                self.lines.append(json.dumps(l.obj, separators=(",", ":"), ensure_ascii=False))
            else:
                self.lines.append(l.raw)
        self.members = len(state)
        self.last_by_member = {m: st[1] for m, st in state.items()}
        self.first_ts, self.last_ts = self.ts[0], self.ts[-1]

    def write(self, path):
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(self.lines) + "\n")
        return path
