/* state_redis.c - the Redis store (state_redis.h). Same outcomes as
 * state_mem.c for the same intents; the layout is in docs/time.md.
 *
 * Per member (hash tag {u:ID}, one cluster slot):
 *   P{u:ID}:grant:GID   claim (string, TTL claim_ttl), as for event triggers
 *   P{u:ID}:w           hash: the member's pending waits, field = rule id,
 *                       value = a short body (see "waits"); field RS = the
 *                       member's subjects (device US ip). Gone with the last wait.
 *   P{u:ID}:cnt:RULE    zset messageId -> ts, the count window
 *   P{u:ID}:inact:RULE  string: the `last` whose silence fired
 * Per Kafka partition:
 *   Ptimers:m:TOPIC:PART    zset member -> its earliest due wait
 *   Pseen:TOPIC:PART:RULE   zset ID -> last activity (ms), per inactivity rule
 * Shared:
 *   Pwtpl               hash template id -> a wait template (content-addressed,
 *                       written once, read by the poll and by CANCEL)
 * The layout of the builds before this one (a string body and a timer per
 * wait: P{u:ID}:waits, P{u:ID}:wait:GID, Ptimers:TOPIC:PART) is still read:
 * its waits fire, cancel and count as pending until none is left.
 * (RS = \x1e, cancel_on names are \x1f-delimited.) */
#include "state_redis.h"
#include "policy.h"
#include "../core/log.h"
#include "../core/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define POLL_LIMIT 500
#define GID_LEN 33

/* ---- scripts ---------------------------------------------------------------
 * All arguments in ARGV, read in order by nx(); numkeys is 0. A standalone
 * Redis runs them as they are; under Redis Cluster the member's keys would be
 * declared as KEYS and the timer set and queue hash-tagged by partition. */
#define LUA_PRELUDE \
    "local A, i\n" \
    "local function nx() i = i + 1; return A[i] end\n" \
    "local RS, US = '\\30', '\\31'\n" \
    "local function parts(s, n)\n" \
    "  local t, p = {}, 1\n" \
    "  for k = 1, n - 1 do\n" \
    "    local q = string.find(s, RS, p, true)\n" \
    "    if not q then break end\n" \
    "    t[k] = string.sub(s, p, q - 1); p = q + 1\n" \
    "  end\n" \
    "  t[#t + 1] = string.sub(s, p)\n" \
    "  return t\n" \
    "end\n" \
    /* Redis does not roll a script back on error: whatever ran before a \
     * failing command stays written. So every script checks the one \
     * command that can fail (a push to a queue of the wrong type) before \
     * its first write, and push() sets the claim only after the push. */ \
    /* once per queue and batch: nothing else runs while a batch does, and \
     * its own pushes keep the type */ \
    "local guarded = {}\n" \
    /* Counters (HINCRBY) summed over the batch and written once per (key, \
     * field) at its end, in the same atomic EVALSHA as the calls that \
     * counted; best effort (pcall): a counter must not fail the grants. */ \
    "local sums, sum_order = {}, {}\n" \
    "local function count(key, field, n)\n" \
    "  local id = key .. RS .. field\n" \
    "  local e = sums[id]\n" \
    "  if not e then e = {key, field, 0}; sums[id] = e; sum_order[#sum_order + 1] = e end\n" \
    "  e[3] = e[3] + (n or 1)\n" \
    "end\n" \
    "local function batch_end()\n" \
    "  for _, e in ipairs(sum_order) do redis.pcall('HINCRBY', e[1], e[2], e[3]) end\n" \
    "end\n" \
    "local function guard(queue, kind)\n" \
    "  if guarded[queue] == kind then return end\n" \
    "  local t = redis.call('TYPE', queue)\n" \
    "  t = t['ok'] or t\n" \
    "  if t ~= 'none' and t ~= kind then\n" \
    "    error({err = 'WRONGTYPE grant queue ' .. queue .. ' is a ' .. t .. ', not a ' .. kind})\n" \
    "  end\n" \
    "  guarded[queue] = kind\n" \
    "end\n" \
    /* Guards the issue block that follows the arguments read so far. */ \
    "local function precheck() if A[i + 1] == 'g' then guard(A[i + 4], A[i + 5]) end end\n" \
    /* The policy block of a grant step (docs/policy.md): read after the \
     * grant's own arguments; '0' = none. Keys are built here from the \
     * prefix, rule and subjects, so FIRE can take the subjects kept in a \
     * wait's body. */ \
    "local function read_pol()\n" \
    "  if nx() ~= '1' then return nil end\n" \
    /* one constructor: the table is sized once (fields are read in order); \
     * the limits come as one argument, '' when the rule and the daemon set \
     * none (most grants: an argument costs Redis a Lua string), else \
     * per_user, per_device, per_ip (count, period each), budget, daily \
     * budget, its day, frequency cap (count, period), RS-separated */ \
    "  local p = {at = tonumber(nx()), iso = nx(), gid = nx(), rule = nx(), user = nx(), target = nx(),\n" \
    "          dev = nx(), ip = nx(), pool = nx(), P = nx(), lim = nx(), skey = nx(), variant = nx(),\n" \
    "          lw = tonumber(nx()), keep = tonumber(nx()), grp = nx(), quiet = nx(), checks = false, bkey = false,\n" \
    "          dkey = false, lu = 0, pu = 0, ld = 0, pd = 0, li = 0, pi = 0, budget = 0, daily = 0, day = '',\n" \
    "          fc = 0, fp = 0}\n" \
    "  if p.lim ~= '' then\n" \
    "    local f = parts(p.lim, 11)\n" \
    "    p.lu, p.pu, p.ld, p.pd = tonumber(f[1]), tonumber(f[2]), tonumber(f[3]), tonumber(f[4])\n" \
    "    p.li, p.pi, p.budget, p.daily = tonumber(f[5]), tonumber(f[6]), tonumber(f[7]), tonumber(f[8])\n" \
    "    p.day, p.fc, p.fp = f[9], tonumber(f[10]), tonumber(f[11])\n" \
    "  end\n" \
    "  return p\n" \
    "end\n" \
    /* the cancel_on names of the wait templates read so far (a template never \
     * changes: its id is its content's hash) */ \
    "local tplnames = {}\n" \
    /* the blocklist's keys, per prefix, and whether any exists (once per batch) */ \
    "local blk = {}\n" \
    /* The closed loop's recent hash of a member (docs/policy.md): a field \
     * is "rule RS variant RS ms RS window" (window: its rule's attribution \
     * window; dflt for a field written before windows were per rule). Fields \
     * older than their window + margin are trimmed on each write; the key \
     * lives as long as its longest-lived field. */ \
    /* Returns the field count before the trim (0: a new key). */ \
    "local function recent_trim(rk, at, margin, dflt)\n" \
    /* every read checks a field's age, so trimming only bounds memory: \
     * a member's few fields are left to the key's TTL */ \
    "  local n = redis.call('HLEN', rk)\n" \
    "  if n <= 16 then return n end\n" \
    "  local all = redis.call('HGETALL', rk)\n" \
    "  for k = 1, #all, 2 do\n" \
    "    local f = parts(all[k + 1], 4)\n" \
    "    if (tonumber(f[3]) or 0) <= at - (tonumber(f[4]) or dflt) - margin then redis.call('HDEL', rk, all[k]) end\n" \
    "  end\n" \
    "  return n\n" \
    "end\n" \
    /* GT never sets a first TTL (no TTL counts as infinite): a new key's is \
     * set outright */ \
    "local function recent_expire(rk, keep, new)\n" \
    "  if new then redis.call('PEXPIRE', rk, keep) else redis.call('PEXPIRE', rk, keep, 'GT') end\n" \
    "end\n" \
    /* Read-only checks: the blocklist, then each limit (grants inside \
     * (at - period, +inf)), then the budgets. Returns the reason or nil. */ \
    "local function pol_check(p)\n" \
    "  p.checks = {}\n" \
    "  if p.lu > 0 then p.checks[#p.checks + 1] = {p.P .. '{u:' .. p.target .. '}:lim:' .. p.rule, p.lu, p.pu, 'limit per_user'} end\n" \
    "  if p.ld > 0 and p.dev ~= '' then p.checks[#p.checks + 1] = {p.P .. 'lim:' .. p.rule .. ':dev:' .. p.dev, p.ld, p.pd, 'limit per_device'} end\n" \
    "  if p.li > 0 and p.ip ~= '' then p.checks[#p.checks + 1] = {p.P .. 'lim:' .. p.rule .. ':ip:' .. p.ip, p.li, p.pi, 'limit per_ip'} end\n" \
    "  if p.fc > 0 then p.checks[#p.checks + 1] = {p.P .. '{u:' .. p.target .. '}:fcap', p.fc, p.fp, 'frequency cap'} end\n" \
    "  if p.budget > 0 then p.bkey = p.P .. 'budget:' .. p.rule end\n" \
    "  if p.daily > 0 then p.dkey = p.P .. 'budget:' .. p.rule .. ':' .. p.day end\n" \
    "  local B = blk[p.P]\n" \
    /* most deployments block nobody: one EXISTS per batch spares the four \
     * lookups (nothing else writes while a batch runs) */ \
    "  if not B then\n" \
    "    B = {p.P .. 'block:user', p.P .. 'block:device', p.P .. 'block:ip'}\n" \
    "    B[4] = redis.call('EXISTS', B[1], B[2], B[3]) > 0\n" \
    "    blk[p.P] = B\n" \
    "  end\n" \
    "  if B[4] and (redis.call('SISMEMBER', B[1], p.target) == 1\n" \
    "     or (p.user ~= p.target and redis.call('SISMEMBER', B[1], p.user) == 1)\n" \
    "     or (p.dev ~= '' and redis.call('SISMEMBER', B[2], p.dev) == 1)\n" \
    "     or (p.ip ~= '' and redis.call('SISMEMBER', B[3], p.ip) == 1)) then return 'blocklist' end\n" \
    "  for _, c in ipairs(p.checks) do\n" \
    "    if redis.call('ZCOUNT', c[1], '(' .. string.format('%d', p.at - c[3]), '+inf') >= c[2] then return c[4] end\n" \
    "  end\n" \
    "  if p.bkey and tonumber(redis.call('GET', p.bkey) or '0') >= p.budget then return 'budget' end\n" \
    "  if p.dkey and tonumber(redis.call('GET', p.dkey) or '0') >= p.daily then return 'daily budget' end\n" \
    "  return nil\n" \
    "end\n" \
    "local function pol_spend(p, code)\n" \
    "  for _, c in ipairs(p.checks) do\n" \
    "    redis.call('ZREMRANGEBYSCORE', c[1], '-inf', string.format('%d', p.at - c[3]))\n" \
    "    redis.call('ZADD', c[1], p.at, p.gid)\n" \
    "    redis.call('PEXPIRE', c[1], c[3] + 60000)\n" \
    "  end\n" \
    "  if p.bkey then redis.call('INCR', p.bkey) end\n" \
    "  if p.dkey then redis.call('INCR', p.dkey); redis.call('PEXPIRE', p.dkey, 259200000) end\n" \
    "  if code then\n" \
    "    redis.call('HSET', p.P .. 'pool:' .. p.pool .. ':issued', code,\n" \
    "      cjson.encode({grant_id = p.gid, user_id = p.target, rule = p.rule, issued_at = p.iso}))\n" \
    "  end\n" \
    "end\n" \
    /* The grant step: a repeat first; then policy (read-only), the queue's \
     * guard, and only then the writes: the code's SPOP, the push, the \
     * spending, the claim last. A suppression takes no claim. */ \
    /* Stats (docs/policy.md): the grant step counts what it decides in \
     * Pstats:RULE:VARIANT; {5, why, 1} tells the daemon it is counted. */ \
    "local function supp(p, why)\n" \
    "  if p.skey ~= '' then count(p.skey, why) end\n" \
    "  return {5, why, 1}\n" \
    "end\n" \
    "local function push(claim, ttl, queue, kind, maxlen, json, p)\n" \
    "  if redis.call('EXISTS', claim) == 1 then return {0} end\n" \
    /* the trigger's group, taken by another rule's grant (engine.c "groups") */ \
    "  if p and p.grp ~= '' then\n" \
    "    local g = redis.call('GET', p.grp)\n" \
    "    if g and g ~= p.gid then return supp(p, 'group lost') end\n" \
    "  end\n" \
    "  if p then\n" \
    "    local why = pol_check(p)\n" \
    "    if why then return supp(p, why) end\n" \
    "  end\n" \
    "  guard(queue, kind)\n" \
    "  local code\n" \
    "  if p and p.pool ~= '' then\n" \
    "    code = redis.call('SPOP', p.P .. 'pool:' .. p.pool)\n" \
    "    if not code then return supp(p, 'pool empty') end\n" \
    "    local s = string.find(json, '\"code\":null,\"expires_at\":', 1, true)\n" \
    "    if s then json = string.sub(json, 1, s + 6) .. '\"' .. code .. '\"' .. string.sub(json, s + 11) end\n" \
    "  end\n" \
    "  if kind == 'list' then redis.call('LPUSH', queue, json)\n" \
    "  elseif tonumber(maxlen) > 0 then redis.call('XADD', queue, 'MAXLEN', '~', maxlen, '*', 'grant', json)\n" \
    "  else redis.call('XADD', queue, '*', 'grant', json) end\n" \
    "  if p then pol_spend(p, code) end\n" \
    "  if p and p.lw > 0 then\n" \
    "    local rk = p.P .. '{u:' .. p.target .. '}:recent'\n" \
    "    local n = recent_trim(rk, p.at, p.keep - p.lw, p.lw)\n" \
    "    redis.call('HSET', rk, p.gid, p.rule .. RS .. p.variant .. RS .. string.format('%d', p.at) .. RS .. string.format('%d', p.lw))\n" \
    "    recent_expire(rk, p.keep, n == 0)\n" \
    "  end\n" \
    "  if p and p.skey ~= '' then\n" \
    "    count(p.skey, 'granted')\n" \
    /* quiet hours held it back: the daemon says so ('1'/'0'); a record it \
     * did not build (a wait of the earlier layout) ends with the two times */ \
    "    local q = p.quiet == '1'\n" \
    "    if p.quiet == '' then\n" \
    "      local ia, da = string.match(string.sub(json, -120), '\"issued_at\":\"([^\"]*)\",\"deliver_after\":\"([^\"]*)\"}$')\n" \
    "      q = ia and ia ~= da\n" \
    "    end\n" \
    "    if q then count(p.skey, 'quiet hours') end\n" \
    "  end\n" \
    "  if p and p.grp ~= '' then redis.call('SET', p.grp, p.gid, 'PX', ttl) end\n" \
    "  redis.call('SET', claim, '1', 'PX', ttl)\n" \
    "  return {1}\n" \
    "end\n" \
    /* Waits (docs/time.md "Waits in Redis"): a body starts with its due \
     * time; its third part is the trigger's occurrence (what the grant id \
     * is made of), the same for a resend and for a redelivered trigger. */ \
    "local function wait_due(b) return tonumber(string.match(b, '^[^\\30]*'), 36) end\n" \
    "local function wait_occ(b) return parts(b, 4)[3] end\n" \
    /* The member's entry in the timer set is the earliest due time of its \
     * waits; none left: the hash (its subjects alone) and the entry go. \
     * A caller that read the hash and deleted fields of it since passes \
     * what it read and what it deleted (one HGETALL fewer). */ \
    "local function retime(w, tkey, user, all, gone)\n" \
    "  local min\n" \
    "  all, gone = all or redis.call('HGETALL', w), gone or {}\n" \
    "  for k = 1, #all, 2 do\n" \
    "    if all[k] ~= RS and not gone[all[k]] then\n" \
    "      local d = wait_due(all[k + 1])\n" \
    "      if not min or d < min then min = d end\n" \
    "    end\n" \
    "  end\n" \
    "  if min then redis.call('ZADD', tkey, min, user)\n" \
    "  else redis.call('DEL', w); redis.call('ZREM', tkey, user) end\n" \
    "end\n" \
    /* A pending wait: at most one per rule and member (a second trigger is \
     * `already pending`); the field is the rule's id, or id US due when an \
     * overdue one of the rule has not fired yet. The member's subjects \
     * (device US ip) are kept once, in field RS, by its first wait; a body's \
     * fourth part is '' (the member's) or '=' and its own. The template (the \
     * grant's constant text, content-addressed) is written once. */ \
    "local function schedule(claim)\n" \
    "  local w, legacy, tkey, user, rule = nx(), nx(), nx(), nx(), nx()\n" \
    "  local now, due, head, tail, subj, T, id, tpl = tonumber(nx()), tonumber(nx()), nx(), nx(), nx(), nx(), nx(), nx()\n" \
    /* the template before any answer, so that every answer tells the daemon \
     * it is written; '' = the daemon knows it is */ \
    "  if tpl ~= '' and redis.call('HEXISTS', T, id) == 0 then redis.call('HSET', T, id, tpl) end\n" \
    "  if redis.call('EXISTS', claim) == 1 then return {0} end\n" \
    "  local occ = wait_occ(head)\n" \
    /* the member's waits, read once: most schedules that reach Redis now \
     * record a new wait (the daemon answers most `already pending` itself), \
     * and a small hash costs one HGETALL as it costs one HGET */ \
    "  local all, meta, taken, other = redis.call('HGETALL', w), nil, false, false\n" \
    /* the common answer first: the rule's wait, pending, of another trigger, \
     * with its due and occurrence, which the daemon learns */ \
    "  for k = 1, #all, 2 do\n" \
    "    if all[k] == rule then\n" \
    "      local cur = all[k + 1]\n" \
    "      if wait_due(cur) >= now and wait_occ(cur) ~= occ then return {3, wait_due(cur), wait_occ(cur)} end\n" \
    "      break\n" \
    "    end\n" \
    "  end\n" \
    /* a wait of the rule kept in the layout of the builds before this one */ \
    "  local old = redis.call('HGETALL', legacy)\n" \
    "  for k = 1, #old, 2 do\n" \
    "    local o = parts(old[k + 1], 3)\n" \
    "    if o[2] == rule and tonumber(o[1]) >= now then return {3} end\n" \
    "  end\n" \
    "  for k = 1, #all, 2 do\n" \
    "    local f = all[k]\n" \
    "    if f == RS then meta = all[k + 1]\n" \
    "    elseif f == rule or string.sub(f, 1, #rule + 1) == rule .. US then\n" \
    "      if f == rule then taken = true end\n" \
    /* this very wait (a resend, a redelivery) before another pending one */ \
    "      if wait_occ(all[k + 1]) == occ then return {2} end\n" \
    "      if wait_due(all[k + 1]) >= now then other = true end\n" \
    "    end\n" \
    "  end\n" \
    "  if other then return {3} end\n" \
    "  local field = taken and (rule .. US .. string.format('%d', due)) or rule\n" \
    "  if not meta then redis.call('HSET', w, RS, subj, field, head .. RS .. RS .. tail)\n" \
    "  else redis.call('HSET', w, field, head .. RS .. (meta == subj and '' or '=' .. subj) .. RS .. tail) end\n" \
    "  redis.call('ZADD', tkey, 'LT', due, user)\n" \
    "  return {2}\n" \
    "end\n" \
    /* issue: 'x' report only; 'g' claim+push; 's' record a pending wait */ \
    "local function issue()\n" \
    "  local mode = nx()\n" \
    "  if mode == 'x' then return {5} end\n" \
    "  local claim, ttl = nx(), nx()\n" \
    "  if mode == 's' then return schedule(claim) end\n" \
    "  local queue, kind, maxlen, json = nx(), nx(), nx(), nx()\n" \
    "  return push(claim, ttl, queue, kind, maxlen, json, read_pol())\n" \
    "end\n"

/* Every script that reads its arguments with nx() starts here: the
 * prelude is shared by the batch, its cursor is per call. */
#define LUA_START "A, i = ARGV, base\n"
static const char LUA_SHARED[] = LUA_PRELUDE;

/* GRANT and SCHEDULE intents. */
static const char LUA_ISSUE[] = LUA_START "return issue()\n";

/* COUNT_GRANT: key, ts, floor ("(ts-within"), ttl, N, occurrence, then an issue block. */
static const char LUA_COUNT[] = LUA_START
    "local key, ts, floor, ttl, n, occ = nx(), nx(), nx(), nx(), tonumber(nx()), nx()\n"
    "precheck()\n"
    "redis.call('ZREMRANGEBYSCORE', key, '-inf', floor)\n"
    "local before = redis.call('ZCARD', key)\n"
    "local after = before + redis.call('ZADD', key, 'NX', ts, occ)\n"
    "redis.call('PEXPIRE', key, ttl)\n"
    "if before == n - 1 and after == n then return issue() end\n"
    "return {4, after}\n";

/* CANCEL: the member's waits, its legacy waits hash and wait-key prefix
 * (builds before this one), the timer set, the member, ts, the event name,
 * the templates' hash. Waits due before ts have fired (or are firing): never
 * cancelled. A wait's cancel_on names lead its template. */
static const char LUA_CANCEL[] = LUA_START
    "local w, waits, wpfx, tkey, user, ts, name, T = nx(), nx(), nx(), nx(), nx(), tonumber(nx()), nx(), nx()\n"
    "local out = {6}\n"
    "local all = redis.call('HGETALL', waits)\n"
    "for k = 1, #all, 2 do\n"
    "  local gid, o = all[k], parts(all[k + 1], 3)\n"
    "  if tonumber(o[1]) >= ts and string.find(o[3], US .. name .. US, 1, true) then\n"
    "    local body = redis.call('GET', wpfx .. gid)\n"
    "    redis.call('HDEL', waits, gid)\n"
    "    redis.call('DEL', wpfx .. gid)\n"
    "    if body then local b = parts(body, 3); redis.call('ZREM', b[1], b[2]) end\n"
    "    out[#out + 1] = o[2]\n"
    "  end\n"
    "end\n"
    "all = redis.call('HGETALL', w)\n"
    "local names, gone = tplnames, nil\n"
    "for k = 1, #all, 2 do\n"
    "  local f, b = all[k], all[k + 1]\n"
    "  if f ~= RS and wait_due(b) >= ts then\n"
    "    local id = parts(b, 3)[2]\n"
    "    local c = names[id]\n"
    "    if not c then\n"
    "      local t = redis.call('HGET', T, id)\n"
    "      c = t and string.sub(t, 1, (string.find(t, RS, 1, true) or (#t + 1)) - 1) or ''\n"
    "      if t then names[id] = c end\n"
    "    end\n"
    "    if string.find(c, US .. name .. US, 1, true) then\n"
    "      redis.call('HDEL', w, f)\n"
    "      gone = gone or {}\n"
    "      gone[f] = true\n"
    "      out[#out + 1] = string.match(f, '^[^\\31]*')\n"
    "    end\n"
    "  end\n"
    "end\n"
    "if gone then retime(w, tkey, user, all, gone) end\n"
    "return out\n";

/* TOUCHES: the TOUCH intents of a batch of events, grouped by last-seen set
 * (one per partition and inactivity rule): the number of groups, then per
 * group the set, n, and n (ts, member) pairs, in the order the intents came.
 * One ZADD GT per set: a call from Lua costs Redis more than the work of one
 * element, and every argument of a batch costs Redis a Lua string (the set's
 * name is sent once per group, not per pair). GT is applied element by
 * element, in order, so the result is that of one call per pair, and a
 * resend changes nothing. */
static const char LUA_TOUCHES[] = LUA_START
    "local k = i + 2\n"
    "for _ = 1, tonumber(A[i + 1]) do\n"
    "  local n = tonumber(A[k + 1])\n"
    "  redis.call('ZADD', A[k], 'GT', unpack(A, k + 2, k + 1 + 2 * n))\n"
    "  k = k + 2 + 2 * n\n"
    "end\n"
    "return {7}\n";

/* FIRE_W a due wait: the member's waits, the timer set, the member, the
 * wait's field and body as the poll read them (anything else: it was
 * cancelled or fired meanwhile), mode ('g' or 'd' = drop: the rule is gone
 * or disabled), claim, ttl, queue, kind, maxlen, the grant (rebuilt by the
 * daemon from the body and its template), the soft reason, then the policy
 * block of the rule as it is now (limits are checked at the grant moment). */
static const char LUA_FIRE_W[] = LUA_START
    "local w, tkey, user, field, body, mode = nx(), nx(), nx(), nx(), nx(), nx()\n"
    "local claim, ttl, queue, kind, maxlen, json, why = nx(), nx(), nx(), nx(), nx(), nx(), nx()\n"
    "local p = read_pol()\n"
    "if redis.call('HGET', w, field) ~= body then return {8} end\n"
    "if mode ~= 'd' and why == '' then guard(queue, kind) end\n"
    "redis.call('HDEL', w, field)\n"
    "retime(w, tkey, user)\n"
    "if mode == 'd' then return {9} end\n"
    "if why ~= '' then return {5, why} end\n"
    "return push(claim, ttl, queue, kind, maxlen, json, p)\n";

/* RETIME: waits, timer set, member: a timer entry that the poll found with
 * nothing due (left by a cancel on another partition, after the topic's
 * partitions changed) gets the member's earliest due time again. */
static const char LUA_RETIME[] = LUA_START "retime(nx(), nx(), nx())\nreturn {8}\n";

/* The poll of a partition's waits (read only, sent with EVAL): the timer
 * set, the key prefix, now, the limit. Returns {members read, quads,
 * (member, field, body, subjects)..., (template id, template)...}; a
 * member with nothing due comes with field '' (RETIME it). Each member's
 * waits come in due order. */
static const char LUA_POLL_W[] =
    "local RS = '\\30'\n"
    "local tkey, P, now, lim = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]\n"
    "local us = redis.call('ZRANGEBYSCORE', tkey, '-inf', ARGV[3], 'LIMIT', 0, lim)\n"
    "local out, ids, seen = {#us, 0}, {}, {}\n"
    "for _, u in ipairs(us) do\n"
    "  local all = redis.call('HGETALL', P .. '{u:' .. u .. '}:w')\n"
    "  local meta, due = '', {}\n"
    "  for k = 1, #all, 2 do\n"
    "    if all[k] == RS then meta = all[k + 1]\n"
    "    else\n"
    "      local b = all[k + 1]\n"
    /* wait_due of the prelude: the poll runs outside the batch script */
    "      local d = tonumber(string.match(b, '^[^\\30]*'), 36)\n"
    "      if d and d <= now then due[#due + 1] = {d, all[k], b} end\n"
    "    end\n"
    "  end\n"
    "  table.sort(due, function(x, y) return x[1] < y[1] end)\n"
    "  if #due == 0 then due[1] = {0, '', ''} end\n"
    "  for _, e in ipairs(due) do\n"
    "    out[#out + 1] = u; out[#out + 1] = e[2]; out[#out + 1] = e[3]; out[#out + 1] = meta\n"
    "    out[2] = out[2] + 1\n"
    "    if e[2] ~= '' then\n"
    "      local id = string.match(e[3], '^[^\\30]*\\30([^\\30]*)')\n"
    "      if id and not seen[id] then seen[id] = true; ids[#ids + 1] = id end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "for _, id in ipairs(ids) do\n"
    "  out[#out + 1] = id; out[#out + 1] = redis.call('HGET', P .. 'wtpl', id) or ''\n"
    "end\n"
    "return out\n";

/* FIRE a due wait of the layout of the builds before this one (a
 * hash field plus a string body per wait, a timer per wait): waits, wait
 * key, gid, timers, timer member, mode ('g' or
 * 'd' = drop: the rule is gone or disabled), claim, ttl, then the policy
 * block of the rule as it is now (limits are checked at the grant moment);
 * its subjects come from the body (written by this build: 11 fields; a body
 * of the previous build has 7 and no subjects). */
static const char LUA_FIRE[] = LUA_START
    "local waits, wkey, gid, timers, tm, mode, claim, ttl = nx(), nx(), nx(), nx(), nx(), nx(), nx(), nx()\n"
    "local p = read_pol()\n"
    "local body = redis.call('GET', wkey)\n"
    "local b = body and parts(body, 11)\n"
    "local json = b and b[#b]\n"
    "if p and b then\n"
    "  if #b == 11 then p.target, p.dev, p.ip, p.pool = b[7], b[8], b[9], b[10]\n"
    "  else p.target, p.dev, p.ip, p.pool = p.user, '', '', '' end\n"
    "end\n"
    "if b and mode ~= 'd' and b[6] == '' then guard(b[3], b[4]) end\n"
    "redis.call('ZREM', timers, tm)\n"
    "local known = redis.call('HDEL', waits, gid)\n"
    "if not body then return {8} end\n"
    "redis.call('DEL', wkey)\n"
    "if mode == 'd' then return {9} end\n"
    "if b[6] ~= '' then return {5, b[6]} end\n"
    "return push(claim, ttl, b[3], b[4], b[5], json, p)\n";

/* INACT: a silent member: seen key, member, last, marker key, marker ttl,
 * then an issue block. Once per silence: the marker holds the `last` that
 * fired; the member leaves the index until its next activity re-adds it, so
 * a poll reads only silences not yet fired. */
static const char LUA_INACT[] = LUA_START
    "local seen, user, last, marker, mttl = nx(), nx(), nx(), nx(), nx()\n"
    "precheck()\n"
    "local s = redis.call('ZSCORE', seen, user)\n"
    "if not s or tonumber(s) ~= tonumber(last) then return {8} end\n"
    "redis.call('ZREM', seen, user)\n"
    "if redis.call('GET', marker) == last then return {8} end\n"
    "redis.call('SET', marker, last, 'PX', mttl)\n"
    "return issue()\n";

/* STATS: the counters decided in C (reasons of the engine, soft reasons of a
 * fired wait, cancelled, already pending, dropped waits, triggered), as
 * (op, key, field) triples: 'h' HINCRBY key field 1, a number N HINCRBY key
 * field N (the daemon sums a batch's counts), 's' SADD key field,
 * 'r' a holdout assignment into the recent hash key: field is
 * "h:RULE RS variant RS at RS window RS keep", window being the rule's
 * attribution window (kept while one inside its window stands). */
static const char LUA_STATS[] =
    /* counters are summed with the batch's: one HINCRBY per (key, field) */
    "for k = 1, #ARGV, 3 do\n"
    "  if ARGV[k] == 'h' then count(ARGV[k + 1], ARGV[k + 2])\n"
    "  elseif ARGV[k] == 'r' then\n"
    "    local rk, f = ARGV[k + 1], parts(ARGV[k + 2], 5)\n"
    "    local at, lw, keep = tonumber(f[3]), tonumber(f[4]), tonumber(f[5])\n"
    "    local n = recent_trim(rk, at, keep - lw, lw)\n"
    "    local cur = redis.call('HGET', rk, f[1])\n"
    "    local c = cur and parts(cur, 4)\n"
    "    if not c or tonumber(c[3]) <= at - (tonumber(c[4]) or lw) then\n"
    "      redis.call('HSET', rk, f[1], string.sub(f[1], 3) .. RS .. f[2] .. RS .. f[3] .. RS .. f[4])\n"
    "    end\n"
    "    recent_expire(rk, keep, n == 0)\n"
    "  elseif ARGV[k] == 's' then redis.call('SADD', ARGV[k + 1], ARGV[k + 2])\n"
    "  else count(ARGV[k + 1], ARGV[k + 2], tonumber(ARGV[k])) end\n"
    "end\n"
    "return {7}\n";

/* LOOP: a redemption ('r': the grant id looked up in the member's recent
 * hash, counted once per grant id by SET NX) or a conversion ('c': every
 * grant / holdout assignment of the member inside its rule's window, counted
 * once per grant id (SET NX) or per holdout member (SADD :conv)). Arguments:
 * kind, prefix, member, ts, window, keep, grant id; window is the default
 * for a field that carries none, keep - window the margin. */
static const char LUA_LOOP[] = LUA_START
    "local kind, P, user, ts, lw, keep, gid = nx(), nx(), nx(), tonumber(nx()), tonumber(nx()), tonumber(nx()), nx()\n"
    "local M = P .. '{u:' .. user .. '}:'\n"
    "local rk = M .. 'recent'\n"
    "if kind == 'r' then\n"
    "  local v = gid ~= '' and string.sub(gid, 1, 2) ~= 'h:' and redis.call('HGET', rk, gid)\n"
    "  local f = v and parts(v, 4)\n"
    "  local fk = f and (tonumber(f[4]) or lw) + keep - lw\n"
    "  if not f or tonumber(f[3]) <= ts - fk then\n"
    "    count(P .. 'loop:stats', 'redemption_unknown')\n"
    "    return {10, 0}\n"
    "  end\n"
    "  if redis.call('SET', M .. 'redeemed:' .. gid, '1', 'NX', 'PX', fk) then\n"
    "    count(P .. 'stats:' .. f[1] .. ':' .. f[2], 'redeemed')\n"
    "    return {10, 1}\n"
    "  end\n"
    "  return {10, 0}\n"
    "end\n"
    "local n, all = 0, redis.call('HGETALL', rk)\n"
    "for k = 1, #all, 2 do\n"
    "  local f = parts(all[k + 1], 4)\n"
    "  local ms, w = tonumber(f[3]) or 0, tonumber(f[4]) or lw\n"
    "  if ms > ts - w and ms <= ts then\n"
    "    local skey, first = P .. 'stats:' .. f[1] .. ':' .. f[2]\n"
    "    if string.sub(all[k], 1, 2) == 'h:' then first = redis.call('SADD', skey .. ':conv', user) == 1\n"
    "    else first = redis.call('SET', M .. 'conv:' .. all[k], '1', 'NX', 'PX', w + keep - lw) end\n"
    "    if first then count(skey, 'converted'); n = n + 1 end\n"
    "  end\n"
    "end\n"
    "return {10, n}\n";

enum { S_ISSUE, S_COUNT, S_CANCEL, S_TOUCHES, S_FIRE, S_INACT, S_STATS, S_LOOP, S_FIRE_W, S_RETIME, S_N };

/* ---- argument vectors ------------------------------------------------------ */

/* Grows as needed: a batch of touches has up to 3 x TOUCH_BATCH arguments. */
typedef struct argv_b {
    strbuf buf;
    size_t *off, *len;
    int n, cap;
    int view;   /* points into a block it does not own (a held schedule's): a_free leaves it */
} argv_b;

static void a_init(argv_b *a) {
    sb_init(&a->buf);
    a->off = a->len = NULL;
    a->n = a->cap = 0;
    a->view = 0;
}
static void a_free(argv_b *a) {
    if (!a->view) {
        sb_free(&a->buf);
        free(a->off);
        free(a->len);
    }
    a_init(a);
}
static void a_reset(argv_b *a) { /* keeps capacity */
    sb_reset(&a->buf);
    a->n = 0;
}
/* Room for one more argument. */
static void a_room(argv_b *a) {
    if (a->n < a->cap) return;
    a->cap = a->cap ? 2 * a->cap : 32;
    a->off = xrealloc(a->off, (size_t)a->cap * sizeof *a->off);
    a->len = xrealloc(a->len, (size_t)a->cap * sizeof *a->len);
}
static void a_add(argv_b *a, const char *s, size_t n) {
    a_room(a);
    a->off[a->n] = a->buf.len;
    sb_append(&a->buf, s, n);
    a->len[a->n++] = n;
}

/* ---- the store ------------------------------------------------------------- */

/* Touches are sent in batches of at most this many (set, ts, member) triples;
 * counters likewise. */
#define TOUCH_BATCH 256

typedef struct touch_cb {
    rs_done_cb cb;
    void *ud;
} touch_cb;

/* An enabled inactivity rule of the current ruleset, copied (the cache must
 * not point into a ruleset that a reload may have freed). */
typedef struct inact_rule {
    char *id;
    char **events;
    size_t n_events;   /* 0 = any event */
    long long resolution_ms;
    uint64_t id_hash;  /* of id, for the activity marks known written */
} inact_rule;

/* ---- waits known pending ---------------------------------------------------
 * Most triggers of a rule that waits come while the member's wait of that rule
 * is pending (44% of the bench's schedules answered `already pending`). While
 * this daemon owns a member's partition it is the only writer of the member's
 * waits, so it can answer that itself: a direct-mapped table of members with
 * the (rule, due, occurrence) of waits whose schedule Redis acknowledged as
 * recorded. A trigger of such a rule with due >= now and another occurrence
 * is what the schedule script would call `already pending`. Anything else
 * (a miss, an overdue or unconfirmed wait, the same occurrence, a layout of
 * earlier builds) asks Redis. A CANCEL of the member drops its slot when it
 * is sent, and a schedule's answer is kept only if no CANCEL touched its slot
 * since it was sent; redis_store_forget drops everything, those CANCELs'
 * marks with it, so an answer to a call sent before the forget is not kept
 * either: a schedule resent after a Redis restart is answered `recorded`
 * while the CANCEL resent behind it is about to remove the wait. */
/* 131072 slots of 144 bytes (18 MB in huge pages, xcalloc_huge): at 32768 a
 * bench of 100,000 members found 17% of its pending triggers here, the rest
 * evicted by other members of the slot. A member is known by a 64-bit hash
 * of its id (two members that collide would need 2^32 members to be likely). */
#define PEND_SLOTS 131072
#define PEND_RULES 4

struct call_ctx;

typedef struct pend_slot {
    uint64_t user;              /* pend_hash of the member's id; 0 = free */
    uint64_t cancel_sent;       /* send number of the last CANCEL that hashed here */
    struct {
        uint64_t rule, occ;     /* rule 0 = free */
        int64_t due;            /* INT64_MIN: no wait known (only a schedule in flight) */
        struct call_ctx *fly;   /* the rule's schedule sent and not answered yet, or NULL */
    } w[PEND_RULES];
} pend_slot;

/* ---- activity marks known written -----------------------------------------
 * With a `resolution`, a member's activity mark (engine_activity_mark) moves
 * once per step, and every other event of the step would send a score the
 * last-seen set already holds (ZADD GT: no change). Per (member, rule) the
 * store keeps the mark it last sent, and sends a touch only for a later one.
 * A hit needs only that Redis holds at least that mark, which stays true:
 * scores only grow, and the one removal (the silence firing) comes
 * inactive_for >= resolution after the mark, so every event after it has a
 * later mark. Set-associative (a member evicts the way with the oldest
 * mark); a miss only sends what would have been sent anyway. Allocated when
 * a rule first has a resolution; dropped by redis_store_forget. */
#define SEEN_SETS (1 << 16)
#define SEEN_WAYS 4

typedef struct seen_slot {
    uint64_t key;   /* hash of member and rule; 0 = free */
    int64_t mark;
} seen_slot;

/* ---- wait templates known written ------------------------------------------
 * A template (docs/time.md) is written once and never removed, and a daemon
 * schedules waits of a handful of them: once a schedule's answer says its
 * template is in Redis, later schedules send its id alone. Ids are 8 base62
 * characters, kept as a uint64 in an open-addressed table, cleared when 3/4
 * full (and by redis_store_forget). */
#define TPLK_SLOTS 4096
#define TPL_ID_LEN 8

/* ---- counters summed per stats batch (stat_add) ---------------------------- */
#define CTR_MAX 256
#define CTR_SLOTS 512

typedef struct stat_ctr {
    uint64_t h;       /* of (rule, variant, field) */
    size_t off;       /* its text in ctr_text */
    long long n;
} stat_ctr;

struct redis_store {
    redis_sink_t *sink;
    const config_t *cfg;
    ruleset_t *const *rules;
    engine_t *eng;
    int sh[S_N];
    strbuf tmp, json;
    strbuf tpl, queue, rec; /* waits: a template being built, its queue; a record being rebuilt */
    rs_stats_t stats;
    policy_day_cache day;
    /* the pending batch of touches: triples in tb, one (cb, ud) per intent */
    argv_b tb;
    touch_cb *tcb;
    size_t tcb_n, tcb_cap;
    /* the inactivity rules of the ruleset at inact_rs (of version inact_ver) */
    const ruleset_t *inact_rs;
    char inact_ver[32];
    inact_rule *inact;
    size_t n_inact;
    policy_quiet_cache quiet;
    argv_b sb;        /* the pending batch of counters (LUA_STATS triples) */
    /* counters summed until that batch goes (stat_add): entries, and an
     * open-addressed index of them (entry + 1; 0 = free) */
    stat_ctr ctr[CTR_MAX];
    int n_ctr;
    uint16_t ctr_slot[CTR_SLOTS];
    strbuf ctr_text;  /* entries' rule, variant and field, NUL-terminated, back to back */
    int sb_recent;    /* ... holding holdout assignments ('r'), which a LOOP reads */
    int64_t send_at;  /* the decision time of what is being sent (holdout assignments) */
    const char **evp; /* a_eval's argument pointers */
    argv_b scratch;   /* redis_store_apply's call being built */
    size_t evp_cap;
    pend_slot *pend;  /* PEND_SLOTS, allocated on first use */
    seen_slot *seen;  /* SEEN_SETS x SEEN_WAYS, allocated on first use */
    uint64_t sends;   /* calls sent, numbering them for the pend table */
    uint64_t forgot_sent; /* sends at the last redis_store_forget: older answers teach nothing */
    size_t held_now;  /* schedules held behind one in flight, now */
    uint64_t *tplk;   /* TPLK_SLOTS template ids known written, allocated on first use */
    size_t tplk_n;
    uint64_t tpl_sent; /* the template id that add_issue just sent with its text (0: none) */
};
static void a_str(argv_b *a, const char *s) { a_add(a, s ? s : "", s ? strlen(s) : 0); }
static void a_fmt(argv_b *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void a_fmt(argv_b *a, const char *fmt, ...) {
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if ((size_t)n < sizeof tmp) {
        a_add(a, tmp, (size_t)n);
        return;
    }
    char *big = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    a_add(a, big, (size_t)n);
    free(big);
}
/* Integers and keys are most of a call's arguments: formatted here, not by a
 * printf per argument (a tenth of the daemon's time went to vfprintf). */
static void a_ll(argv_b *a, long long v) {
    char b[24], *e = b + sizeof b, *p = e;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do *--p = (char)('0' + u % 10); while (u /= 10);
    if (v < 0) *--p = '-';
    a_add(a, p, (size_t)(e - p));
}

/* One argument: the strings given, up to a NULL, back to back. */
static void a_cat(argv_b *a, ...) __attribute__((sentinel));
static void a_cat(argv_b *a, ...) {
    a_room(a);
    size_t start = a->buf.len;
    va_list ap;
    va_start(ap, a);
    for (const char *p; (p = va_arg(ap, const char *));) sb_append(&a->buf, p, strlen(p));
    va_end(ap);
    if (!a->buf.s) sb_append(&a->buf, "", 0);
    a->off[a->n] = start;
    a->len[a->n++] = a->buf.len - start;
}

typedef struct call_ctx {
    redis_store_t *st;
    int script;
    rs_done_cb cb;
    void *ud;
    /* what the stats need when the reply comes (NULL: count nothing) */
    char *rule, *variant, *user, *reason;
    int64_t at;
    uint64_t tpl;     /* a template sent with its text: known written once answered */
    /* a schedule, to remember when Redis answers RS_SCHEDULED (pend_seen) */
    int pend;
    uint64_t pend_user, pend_rule, pend_occ, pend_sent;  /* pend_user: pend_hash of user */
    int64_t pend_due, pend_ts;
    /* schedules of the same member and rule that came while this one was in
     * flight, held until its answer (see "schedules held behind one in flight") */
    struct parked *parked, **parked_tail;
} call_ctx;

/* A schedule built and not sent: the context its reply would have had, and
 * its arguments, copied into the same block at their exact size (thousands
 * may be held while Redis is behind). */
typedef struct parked {
    struct parked *next;
    call_ctx *c;
    argv_b a;          /* a view of data */
    _Alignas(size_t) char data[];  /* off[n], len[n], then the text */
} parked;


static void stats_flush(redis_store_t *st);
static void pend_seen(redis_store_t *st, uint64_t u, uint64_t rule, uint64_t occ, int64_t due, uint64_t sent);
static void pend_land(redis_store_t *st, call_ctx *c);
static void park_release(redis_store_t *st, parked *list, int decide);
static void call_ctx_free(call_ctx *c);
static void tplk_learn(redis_store_t *st, uint64_t k);
static uint64_t pend_hash_n(const char *s, size_t n);

/* ---- stats decided in C (docs/policy.md "Stats") --------------------------- */

static void k_stats(redis_store_t *st, argv_b *a, const char *rule, const char *variant, const char *tail) {
    a_cat(a, st->cfg->key_prefix, "stats:", rule, ":", variant && *variant ? variant : "-", tail ? tail : "", NULL);
}

/* Counters are summed here until the stats batch goes: a (rule, variant,
 * field) counted 200 times in a Kafka batch (`triggered`, mostly) is one
 * triple for Redis, not 200 (each argument costs Redis a Lua string, each
 * triple a turn of the script's loop). Their text is copied: a reload may
 * free the ruleset before the batch goes. */
static void stat_add(redis_store_t *st, const char *rule, const char *variant, const char *field) {
    if (!variant) variant = "";
    size_t lr = strlen(rule), lv = strlen(variant), lf = strlen(field);
    uint64_t h = (hash_words(rule, lr) * 31 + hash_words(variant, lv)) * 31 + hash_words(field, lf);
    size_t j = (size_t)h & (CTR_SLOTS - 1);
    for (;;) {
        int e = st->ctr_slot[j] - 1;
        if (e < 0) break;
        stat_ctr *c = &st->ctr[e];
        const char *t = st->ctr_text.s + c->off;
        if (c->h == h && !strcmp(t, rule) && !strcmp(t + lr + 1, variant) && !strcmp(t + lr + lv + 2, field)) {
            c->n++;
            return;
        }
        j = (j + 1) & (CTR_SLOTS - 1);
    }
    st->ctr[st->n_ctr] = (stat_ctr){h, st->ctr_text.len, 1};
    st->ctr_slot[j] = ++st->n_ctr;
    sb_append(&st->ctr_text, rule, lr + 1);
    sb_append(&st->ctr_text, variant, lv + 1);
    sb_append(&st->ctr_text, field, lf + 1);
    if (st->n_ctr >= CTR_MAX || st->sb.n >= 3 * TOUCH_BATCH) stats_flush(st);
}

/* A decision that granted nothing; a holdout also adds its member to the
 * variant's set of members held out (its size is the holdout size). */
static void k_member(redis_store_t *st, argv_b *a, const char *user, const char *what, const char *tail);

static void stat_reason(redis_store_t *st, const char *rule, const char *variant, const char *user,
                        const char *reason, int64_t at) {
    if (!rule || !reason) return;
    if (!strcmp(reason, "holdout") && user) {
        a_str(&st->sb, "s");
        k_stats(st, &st->sb, rule, variant, ":held");
        a_str(&st->sb, user);
        if (st->cfg->loop_window_ms > 0) {
            /* the holdout assignment, for the closed loop's conversions */
            long long w = rule_attribution_ms(ruleset_find(*st->rules, rule), st->cfg->loop_window_ms);
            a_str(&st->sb, "r");
            st->sb_recent = 1;
            k_member(st, &st->sb, user, "recent", NULL);
            a_fmt(&st->sb, "h:%s\x1e%s\x1e%lld\x1e%lld\x1e%lld", rule, variant && *variant ? variant : "-",
                  (long long)at, w, w + LOOP_MARGIN_MS);
        }
    }
    stat_add(st, rule, variant, reason);
}

/* The variant a rule gives a member now (decisions at fire time; as state_mem.c). */
static const char *variant_now(redis_store_t *st, const char *rule_id, const char *user) {
    const rule_t *r = ruleset_find(*st->rules, rule_id);
    return r ? engine_variant_name(r, user) : NULL;
}

static int parse_reply_ok(const redisReply *r) {
    return r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 && r->element[0]->type == REDIS_REPLY_INTEGER;
}

static rs_outcome parse_reply(const redisReply *r, long long *n) {
    *n = 0;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element[0]->type != REDIS_REPLY_INTEGER)
        return RS_ERROR;
    long long code = r->element[0]->integer;
    if (code == RS_CANCELLED) *n = (long long)r->elements - 1;
    else if (code == RS_PROGRESS && r->elements > 1 && r->element[1]->type == REDIS_REPLY_INTEGER)
        *n = r->element[1]->integer;
    return code >= 0 && code < RS_ERROR ? (rs_outcome)code : RS_ERROR;
}

static void count_outcome(redis_store_t *st, rs_outcome k, long long n) {
    switch (k) {
    case RS_SCHEDULED: st->stats.scheduled++; break;
    case RS_PENDING: st->stats.pending_hits++; break;
    case RS_CANCELLED: st->stats.cancelled += (uint64_t)n; break;
    case RS_ERROR: st->stats.errors++; break;
    default: break;
    }
}

/* A policy suppression in the grant step: {5, reason}. */
static void count_policy(redis_store_t *st, const redisReply *r) {
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 2 || r->element[1]->type != REDIS_REPLY_STRING) return;
    const char *why = r->element[1]->str;
    if (!strncmp(why, "limit ", 6) || !strcmp(why, "frequency cap")) st->stats.limited++;
    else if (!strcmp(why, "budget") || !strcmp(why, "daily budget")) st->stats.budget++;
    else if (!strcmp(why, "pool empty")) st->stats.pool_empty++;
    else if (!strcmp(why, "blocklist")) st->stats.blocked++;
    else return;
    log_debug("suppressed", "reason=\"%s\"", why);
}

static void on_call_reply(void *ud, const redisReply *reply) {
    call_ctx *c = ud;
    redis_store_t *st = c->st;
    long long n;
    rs_outcome k = parse_reply(reply, &n);
    if (k == RS_ERROR)
        log_error("redis_store_reply", "script=%d type=%d", c->script, reply ? reply->type : -1);
    if (c->pend) pend_land(st, c);
    const char *why = c->reason;
    if (k == RS_EXPLAINED && reply->elements >= 2 && reply->element[1]->type == REDIS_REPLY_STRING)
        why = reply->element[1]->str; /* a policy reason, or a soft reason at fire time */
    if (k == RS_EXPLAINED) count_policy(st, reply);
    count_outcome(st, k, n);
    if (c->rule) {
        if (k == RS_EXPLAINED && reply->elements < 3) stat_reason(st, c->rule, c->variant, c->user, why, c->at);
        else if (k == RS_PENDING) stat_reason(st, c->rule, c->variant, c->user, why = "already pending", c->at);
        else if (k == RS_DROPPED) stat_reason(st, c->rule, c->variant, c->user, why, c->at);
    }
    if (k == RS_CANCELLED && c->user)
        for (size_t i = 1; i < reply->elements; i++)
            if (reply->element[i]->type == REDIS_REPLY_STRING)
                stat_reason(st, reply->element[i]->str, variant_now(st, reply->element[i]->str, c->user), c->user,
                            "cancelled", c->at);
    /* only the schedule step answers these, and it writes the template first
     * (a count below N or a stale silence never reach it) */
    if (c->tpl && (k == RS_REPEAT || k == RS_SCHEDULED || k == RS_PENDING)) tplk_learn(st, c->tpl);
    if (c->pend && k == RS_SCHEDULED) pend_seen(st, c->pend_user, c->pend_rule, c->pend_occ, c->pend_due, c->pend_sent);
    /* `already pending`, with the pending wait's due and occurrence: the next
     * trigger of the rule is answered here (after a CANCEL emptied the
     * member's slot, say, or a restart) */
    if (c->pend && k == RS_PENDING && reply->elements >= 3 && reply->element[1]->type == REDIS_REPLY_INTEGER &&
        reply->element[2]->type == REDIS_REPLY_STRING)
        pend_seen(st, c->pend_user, c->pend_rule, pend_hash_n(reply->element[2]->str, reply->element[2]->len),
                  reply->element[1]->integer, c->pend_sent);
    if (c->cb) c->cb(c->ud, k, n, k == RS_EXPLAINED || k == RS_DROPPED ? why : k == RS_PENDING ? "already pending" : NULL);
    /* the schedules held behind this one, decided now that it is answered */
    parked *held = c->parked;
    c->parked = NULL;
    park_release(st, held, 1);
    call_ctx_free(c);
}

/* Queues the script with a's arguments (the sink copies them). */
static void a_eval(redis_store_t *st, const argv_b *a, int script, sink_reply_cb reply, void *ctx) {
    if ((size_t)a->n > st->evp_cap) {
        st->evp_cap = (size_t)a->n * 2;
        st->evp = xrealloc(st->evp, st->evp_cap * sizeof *st->evp);
    }
    for (int i = 0; i < a->n; i++) st->evp[i] = a->buf.s + a->off[i];
    redis_sink_eval(st->sink, st->sh[script], a->n, st->evp, a->len, reply, ctx);
}


static uint64_t pend_hash_n(const char *s, size_t n) { return hash_words(s, n) | 1; /* never 0: 0 is a free entry */ }
static uint64_t pend_hash(const char *s) { return pend_hash_n(s, strlen(s)); }

static pend_slot *pend_slot_of(redis_store_t *st, uint64_t user_h) {
    if (!st->pend) st->pend = xcalloc_huge(PEND_SLOTS * sizeof *st->pend);
    return &st->pend[(user_h >> 1) & (PEND_SLOTS - 1)];
}

static uint64_t tplk_key(const char *id) {
    uint64_t k = 0;
    memcpy(&k, id, TPL_ID_LEN);
    return k;
}

static size_t tplk_find(const redis_store_t *st, uint64_t k) {
    size_t i = (size_t)(hash_words(&k, sizeof k) & (TPLK_SLOTS - 1));
    while (st->tplk[i] && st->tplk[i] != k) i = (i + 1) & (TPLK_SLOTS - 1);
    return i;
}

static int tplk_known(const redis_store_t *st, uint64_t k) { return st->tplk && st->tplk[tplk_find(st, k)] == k; }

static void tplk_learn(redis_store_t *st, uint64_t k) {
    if (!st->tplk) st->tplk = xcalloc(TPLK_SLOTS, sizeof *st->tplk);
    size_t i = tplk_find(st, k);
    if (st->tplk[i] == k) return;
    if (st->tplk_n >= TPLK_SLOTS / 4 * 3) {
        memset(st->tplk, 0, TPLK_SLOTS * sizeof *st->tplk);
        st->tplk_n = 0;
        i = tplk_find(st, k);
    }
    st->tplk[i] = k;
    st->tplk_n++;
}

static void slot_flush(redis_store_t *st, pend_slot *p);

void redis_store_forget(redis_store_t *st) {
    if (st) st->forgot_sent = st->sends;
    if (st && st->tplk) memset(st->tplk, 0, TPLK_SLOTS * sizeof *st->tplk), st->tplk_n = 0;
    if (st && st->pend) {
        for (size_t i = 0; i < PEND_SLOTS; i++) slot_flush(st, &st->pend[i]);
        memset(st->pend, 0, PEND_SLOTS * sizeof *st->pend);
    }
    if (st && st->seen) memset(st->seen, 0, (size_t)SEEN_SETS * SEEN_WAYS * sizeof *st->seen);
}

/* 1: mark (or a later one) was already sent for (user, the rule whose id
 * hashes to rule_h); else records it as sent and returns 0. */
static int seen_sent(redis_store_t *st, const char *user, uint64_t rule_h, int64_t mark) {
    if (!st->seen) st->seen = xcalloc_huge((size_t)SEEN_SETS * SEEN_WAYS * sizeof *st->seen);
    uint64_t key = hash_words(user, strlen(user)) * 31 + rule_h;
    key |= 1; /* never 0: 0 is a free way */
    seen_slot *set = &st->seen[(key >> 7) % SEEN_SETS * SEEN_WAYS], *victim = set;
    for (int k = 0; k < SEEN_WAYS; k++) {
        if (set[k].key == key) {
            if (set[k].mark >= mark) return 1;
            set[k].mark = mark;
            return 0;
        }
        if (set[k].mark < victim->mark) victim = &set[k];
    }
    victim->key = key;
    victim->mark = mark;
    return 0;
}

/* 1: the member has a pending wait of the rule, due at or after now, from another occurrence. */
static int pend_known(redis_store_t *st, uint64_t u, uint64_t rule, uint64_t occ, int64_t now) {
    pend_slot *p = st->pend ? pend_slot_of(st, u) : NULL;
    if (!p || p->user != u) return 0;
    for (int k = 0; k < PEND_RULES; k++)
        if (p->w[k].rule == rule) return p->w[k].due >= now && p->w[k].occ != occ;
    return 0;
}

/* ---- schedules held behind one in flight -----------------------------------
 * A member's triggers of a rule often come in one Kafka batch (a session's
 * cart adds): the first schedule is in flight when the next ones are decided,
 * so the table above cannot answer them yet, and each cost Redis a script
 * call that says `already pending`. Such a schedule is held (built, not
 * sent) behind the one in flight, found through the member's slot. When that
 * one is answered, each held one is decided as if it came then: answered here
 * if the table now knows the wait, else sent (or held again behind another).
 * Nothing else a member's later events send reads or writes the rule's wait
 * except a CANCEL, and a CANCEL of the member sends whatever is held first,
 * in order; so does anything that drops the slot (another member taking it,
 * redis_store_forget). The held schedule's offset stays uncommitted until it
 * is answered, like any write. */

/* Sends what is held behind *fly, in order, and forgets the call in flight
 * (its answer still comes). */
static void fly_flush(redis_store_t *st, call_ctx **fly) {
    call_ctx *f = *fly;
    if (!f) return;
    *fly = NULL;
    parked *list = f->parked;
    f->parked = NULL;
    f->parked_tail = &f->parked;
    park_release(st, list, 0);
}

/* Likewise for every rule of slot p. */
static void slot_flush(redis_store_t *st, pend_slot *p) {
    for (int k = 0; k < PEND_RULES; k++) fly_flush(st, &p->w[k].fly);
}

/* Slot p for member u, emptied (what it held sent) if another member had it. */
static void slot_take(redis_store_t *st, pend_slot *p, uint64_t u) {
    if (p->user == u) return;
    slot_flush(st, p);
    uint64_t c = p->cancel_sent;
    memset(p, 0, sizeof *p);
    p->cancel_sent = c;
    p->user = u;
}

/* The entry of rule in p: its own, else a free one, else one emptied for it. */
static int slot_rule(redis_store_t *st, pend_slot *p, uint64_t rule) {
    int k = 0;
    while (k < PEND_RULES && p->w[k].rule && p->w[k].rule != rule) k++;
    if (k < PEND_RULES) return k;
    k = (int)(rule % PEND_RULES); /* full: any will do */
    fly_flush(st, &p->w[k].fly);
    p->w[k].rule = 0;
    return k;
}

/* A schedule that Redis recorded (sent as call number sent). */
static void pend_seen(redis_store_t *st, uint64_t u, uint64_t rule, uint64_t occ, int64_t due, uint64_t sent) {
    pend_slot *p = pend_slot_of(st, u);
    /* a CANCEL sent after it may have removed it, or a forget dropped the
     * mark of such a CANCEL */
    if (p->cancel_sent >= sent || st->forgot_sent >= sent) return;
    slot_take(st, p, u);
    int k = slot_rule(st, p, rule);
    p->w[k].rule = rule;
    p->w[k].occ = occ;
    p->w[k].due = due;
}

/* c, a schedule, was just sent: later ones of its member and rule wait for it. */
static void pend_fly(redis_store_t *st, call_ctx *c) {
    uint64_t u = c->pend_user;
    pend_slot *p = pend_slot_of(st, u);
    slot_take(st, p, u);
    int k = slot_rule(st, p, c->pend_rule);
    if (p->w[k].rule != c->pend_rule) {
        p->w[k].rule = c->pend_rule;
        p->w[k].occ = 0;
        p->w[k].due = INT64_MIN;
    }
    p->w[k].fly = c;
}

/* The schedule in flight for (user, rule), if the slot still knows it. */
static call_ctx *pend_flying(redis_store_t *st, uint64_t u, uint64_t rule) {
    pend_slot *p = st->pend ? pend_slot_of(st, u) : NULL;
    if (!p || p->user != u) return NULL;
    for (int k = 0; k < PEND_RULES; k++)
        if (p->w[k].rule == rule) return p->w[k].fly;
    return NULL;
}

/* c's answer came: it is no longer in flight. */
static void pend_land(redis_store_t *st, call_ctx *c) {
    uint64_t u = c->pend_user;
    pend_slot *p = st->pend ? pend_slot_of(st, u) : NULL;
    if (!p || p->user != u) return;
    for (int k = 0; k < PEND_RULES; k++)
        if (p->w[k].fly == c) p->w[k].fly = NULL;
}

/* A CANCEL of user is being sent: whatever its slot holds may be gone, and
 * what is held there goes first. */
static void pend_cancel(redis_store_t *st, const char *user) {
    if (!st->pend) return;
    pend_slot *p = pend_slot_of(st, pend_hash(user));
    slot_flush(st, p);
    uint64_t c = st->sends;
    memset(p, 0, sizeof *p);
    p->cancel_sent = c;
}

/* The context of a call about to be sent; rule/variant/user/reason (copied
 * after it: one allocation, there is one per write) are what its reply is
 * counted under (rule NULL: nothing to count but cancels of user). */
static call_ctx *a_ctx_new(redis_store_t *st, int script, rs_done_cb cb, void *ud, const char *rule,
                           const char *variant, const char *user, const char *reason) {
    const char *in[4] = {rule, variant, user, reason};
    size_t len[4], total = 0;
    for (int k = 0; k < 4; k++) total += in[k] ? (len[k] = strlen(in[k])) + 1 : 0;
    call_ctx *c = xmalloc(sizeof *c + total);
    char *o = (char *)(c + 1), *out[4];
    for (int k = 0; k < 4; k++) {
        out[k] = in[k] ? memcpy(o, in[k], len[k] + 1) : NULL;
        if (in[k]) o += len[k] + 1;
    }
    *c = (call_ctx){st, script, cb, ud, out[0], out[1], out[2], out[3], st->send_at, st->tpl_sent,
                    0, 0, 0, 0, 0, 0, 0, NULL, NULL};
    c->parked_tail = &c->parked;
    st->tpl_sent = 0;
    return c;
}

/* Done with a: the store's own vector is kept for the next call. */
static void a_release(redis_store_t *st, argv_b *a) {
    if (a == &st->scratch) a_reset(a);
    else a_free(a);
}

static void a_send_ctx(redis_store_t *st, argv_b *a, call_ctx *c) {
    c->pend_sent = ++st->sends;
    a_eval(st, a, c->script, on_call_reply, c);
    a_release(st, a);
}

/* Sends the script with a new context (a_ctx_new). */
static call_ctx *a_send_x(redis_store_t *st, argv_b *a, int script, rs_done_cb cb, void *ud, const char *rule,
                          const char *variant, const char *user, const char *reason) {
    call_ctx *c = a_ctx_new(st, script, cb, ud, rule, variant, user, reason);
    a_send_ctx(st, a, c);
    return c; /* valid until the reply: the caller fills in at once */
}

static void call_ctx_free(call_ctx *c) { free(c); }

/* `already pending` without a call: what the reply would have done. */
static void answer_pending(redis_store_t *st, call_ctx *c) {
    count_outcome(st, RS_PENDING, 0);
    stat_reason(st, c->rule, c->variant, c->user, "already pending", c->at);
    if (c->cb) c->cb(c->ud, RS_PENDING, 0, "already pending");
}

/* A schedule c with arguments a that the table does not know pending:
 * held behind the rule's schedule in flight, else sent and then in flight
 * itself. Takes a and c; returns 1. */
static int schedule_send(redis_store_t *st, argv_b *a, call_ctx *c) {
    call_ctx *f = pend_flying(st, c->pend_user, c->pend_rule);
    if (f) {
        size_t idx = (size_t)a->n * sizeof(size_t);
        parked *h = xmalloc(sizeof *h + 2 * idx + a->buf.len + 1);
        h->next = NULL;
        h->c = c;
        h->a = (argv_b){{h->data + 2 * idx, a->buf.len, a->buf.len + 1}, (size_t *)h->data,
                        (size_t *)(h->data + idx), a->n, a->n, 1};
        memcpy(h->a.off, a->off, idx);
        memcpy(h->a.len, a->len, idx);
        memcpy(h->a.buf.s, a->buf.s ? a->buf.s : "", a->buf.len);
        h->a.buf.s[a->buf.len] = '\0';
        a_release(st, a);
        *f->parked_tail = h;
        f->parked_tail = &h->next;
        st->stats.held++;
        st->held_now++;
        return 1;
    }
    a_send_ctx(st, a, c);
    pend_fly(st, c);
    return 1;
}

/* A schedule c with arguments a, decided now: answered here when the table
 * knows the rule's wait pending (2), else as schedule_send (1). Takes a and c. */
static int schedule_go(redis_store_t *st, argv_b *a, call_ctx *c) {
    if (pend_known(st, c->pend_user, c->pend_rule, c->pend_occ, c->pend_ts)) {
        st->stats.pending_known++;
        answer_pending(st, c);
        a_release(st, a);
        call_ctx_free(c);
        return 2;
    }
    return schedule_send(st, a, c);
}

/* Decides (decide: as schedule_go) or sends (0: in order, now) each held schedule of list. */
static void park_release(redis_store_t *st, parked *list, int decide) {
    while (list) {
        parked *h = list;
        list = h->next;
        st->held_now--;
        if (decide) schedule_go(st, &h->a, h->c);
        else a_send_ctx(st, &h->a, h->c);
        free(h);
    }
}


/* The reply of a batch of touches: every intent of the batch gets what a
 * single TOUCH would have got (RS_TOUCHED, or RS_ERROR, counted per intent). */
typedef struct batch_ctx {
    redis_store_t *st;
    touch_cb *cbs;
    size_t n;
} batch_ctx;

static void on_batch_reply(void *ud, const redisReply *reply) {
    batch_ctx *c = ud;
    long long n;
    rs_outcome k = parse_reply(reply, &n);
    if (k == RS_ERROR)
        log_error("redis_store_reply", "script=%d type=%d touches=%zu", S_TOUCHES, reply ? reply->type : -1, c->n);
    for (size_t i = 0; i < c->n; i++) {
        count_outcome(c->st, k, n);
        if (c->cbs[i].cb) c->cbs[i].cb(c->cbs[i].ud, k, n, NULL);
    }
    free(c->cbs);
    free(c);
}

static void on_stats_reply(void *ud, const redisReply *reply) {
    if (parse_reply_ok(reply)) return;
    log_error("redis_store_reply", "script=%d type=%d", S_STATS, reply ? reply->type : -1);
}

static void stats_flush(redis_store_t *st) {
    for (int e = 0; e < st->n_ctr; e++) {
        const stat_ctr *c = &st->ctr[e];
        const char *rule = st->ctr_text.s + c->off, *variant = rule + strlen(rule) + 1;
        if (c->n == 1) a_str(&st->sb, "h");
        else a_ll(&st->sb, c->n);
        k_stats(st, &st->sb, rule, variant, NULL);
        a_str(&st->sb, variant + strlen(variant) + 1);
    }
    if (st->n_ctr) {
        memset(st->ctr_slot, 0, sizeof st->ctr_slot);
        st->n_ctr = 0;
        sb_reset(&st->ctr_text);
    }
    if (!st->sb.n) return;
    a_eval(st, &st->sb, S_STATS, on_stats_reply, NULL);
    a_reset(&st->sb);
    st->sb_recent = 0;
}

/* The batch's (set, ts, member) triples in tb as LUA_TOUCHES takes them:
 * grouped by set in the order each set first comes, pairs in their order. */
static void touches_grouped(const argv_b *tb, argv_b *out) {
    int n = tb->n / 3, ng = 0;
    /* group[i]: the group of triple i; first[g], cnt[g]: its first triple, its size */
    int *group = xmalloc(3 * ((size_t)n + 1) * sizeof *group), *first = group + n + 1, *cnt = first + n + 1;
#define TKEY(i) (tb->buf.s + tb->off[3 * (i)])
#define TLEN(i) (tb->len[3 * (i)])
    for (int i = 0; i < n; i++) {
        int g = 0;
        while (g < ng && !(TLEN(first[g]) == TLEN(i) && !memcmp(TKEY(first[g]), TKEY(i), TLEN(i)))) g++;
        if (g == ng) first[ng] = i, cnt[ng++] = 0;
        group[i] = g;
        cnt[g]++;
    }
    a_ll(out, ng);
    for (int g = 0; g < ng; g++) {
        a_add(out, TKEY(first[g]), TLEN(first[g]));
        a_ll(out, cnt[g]);
        for (int i = first[g]; i < n; i++) {
            if (group[i] != g) continue;
            a_add(out, tb->buf.s + tb->off[3 * i + 1], tb->len[3 * i + 1]);
            a_add(out, tb->buf.s + tb->off[3 * i + 2], tb->len[3 * i + 2]);
        }
    }
#undef TKEY
#undef TLEN
    free(group);
}

void redis_store_flush(redis_store_t *st) {
    if (!st) return;
    stats_flush(st);
    if (!st->tcb_n) return;
    batch_ctx *c = xmalloc(sizeof *c);
    *c = (batch_ctx){st, st->tcb, st->tcb_n};
    st->tcb = NULL;
    st->tcb_n = st->tcb_cap = 0;
    argv_b g;
    a_init(&g);
    touches_grouped(&st->tb, &g);
    a_eval(st, &g, S_TOUCHES, on_batch_reply, c);
    a_free(&g);
    a_reset(&st->tb);
}

/* ---- keys ------------------------------------------------------------------ */

static void k_member(redis_store_t *st, argv_b *a, const char *user, const char *what, const char *tail) {
    a_cat(a, st->cfg->key_prefix, "{u:", user, "}:", what, tail ? tail : "", NULL);
}
static const char *part_str(int32_t part, char *b, size_t n) {
    snprintf(b, n, "%d", (int)part);
    return b;
}
/* the timer sets of a partition: per wait (the layout of the builds before
 * this one, still polled) and per member (m:) */
static void k_timers(redis_store_t *st, argv_b *a, const char *topic, int32_t part) {
    char pb[16];
    a_cat(a, st->cfg->key_prefix, "timers:", topic, ":", part_str(part, pb, sizeof pb), NULL);
}
static void k_wtimers(redis_store_t *st, argv_b *a, const char *topic, int32_t part) {
    char pb[16];
    a_cat(a, st->cfg->key_prefix, "timers:m:", topic, ":", part_str(part, pb, sizeof pb), NULL);
}
static void k_seen(redis_store_t *st, argv_b *a, const char *topic, int32_t part, const char *rule) {
    char pb[16];
    a_cat(a, st->cfg->key_prefix, "seen:", topic, ":", part_str(part, pb, sizeof pb), ":", rule, NULL);
}

/* The policy block (LUA_PRELUDE's read_pol()) of a grant of rule r issued
 * at `at`: r's limits as they are now, the subjects of the grant (empty in
 * FIRE: the script takes them from the wait's body). */
static void add_policy(redis_store_t *st, argv_b *a, const rule_t *r, const char *variant, const char *gid,
                       const char *user, const char *target, const char *dev, const char *ip, const char *pool,
                       const char *group, const char *group_occ, int64_t at, int quiet) {
    char iso[32];
    format_iso8601_ms(at, iso, sizeof iso);
    a_str(a, "1");
    a_ll(a, at);
    a_str(a, iso);
    a_str(a, gid);
    a_str(a, r->id);
    a_str(a, user);
    a_str(a, target);
    a_str(a, dev);
    a_str(a, ip);
    a_str(a, pool);
    a_str(a, st->cfg->key_prefix);
    if (r->per_user.count > 0 || r->per_device.count > 0 || r->per_ip.count > 0 || r->budget > 0 ||
        r->daily_budget > 0 || st->cfg->fcap_count > 0) {
        char lim[320];
        snprintf(lim, sizeof lim, "%lld\x1e%lld\x1e%lld\x1e%lld\x1e%lld\x1e%lld\x1e%lld\x1e%lld\x1e%s\x1e%lld\x1e%lld",
                 (long long)r->per_user.count, (long long)r->per_user.period_ms, (long long)r->per_device.count,
                 (long long)r->per_device.period_ms, (long long)r->per_ip.count, (long long)r->per_ip.period_ms,
                 (long long)r->budget, (long long)r->daily_budget,
                 r->daily_budget ? policy_day(&st->day, st->cfg->timezone, at) : "", (long long)st->cfg->fcap_count,
                 (long long)st->cfg->fcap_period_ms);
        a_str(a, lim);
    } else {
        a_str(a, ""); /* no limit: the script reads zeros */
    }
    k_stats(st, a, r->id, variant, NULL);
    a_str(a, variant && *variant ? variant : "-");
    long long w = rule_attribution_ms(r, st->cfg->loop_window_ms);
    a_ll(a, w);
    a_ll(a, w + LOOP_MARGIN_MS);
    /* the trigger's group claim (engine.c "groups"), in the trigger member's slot */
    if (group) a_cat(a, st->cfg->key_prefix, "{u:", user, "}:grp:", group, ":", group_occ ? group_occ : "", NULL);
    else a_str(a, "");
    a_str(a, quiet < 0 ? "" : quiet ? "1" : "0"); /* quiet hours delay the grant (-1: unknown) */
}

/* ---- waits -------------------------------------------------------------------
 * A pending wait is kept as a body of a few short values in the member's
 * hash and a template shared by the waits of one rule version, variant,
 * channel and trigger name (docs/time.md "Waits in Redis"): the open grant
 * record with the parts that come from the trigger (state.h REC_*) replaced
 * by marker bytes; JSON text never holds raw control characters. A part that
 * cannot be rebuilt from the body (a grant id not made the usual way, a
 * message id that needs escaping) stays in the template as it is: such a
 * template serves one wait, and the wait is still exact. The poll returns the
 * due bodies with their templates and the daemon rebuilds each grant. */
enum { M_GID = 1, M_TARGET, M_VALUE, M_CUT, M_MESSAGE, M_TMSGID, M_TUSER, M_TTS, M_END };
/* template: cancel_on, soft reason, queue, kind, maxlen, expires_in, pool, flags ('i': an inactivity trigger), record */
#define TPL_PARTS 9
enum { T_CANCEL, T_WHY, T_QUEUE, T_KIND, T_MAXLEN, T_EXPIRES, T_POOL, T_FLAGS, T_REC };
/* body: due (base 36), template id, occurrence, subjects ('' = the member's, '=' dev US ip: set by the
 * schedule script), due - trigger time (base 36), value, target ('' = the member), message ('' = null),
 * deliver_after - due (base 36, '' = 0); empty parts at the end are left out. Every byte counts: a body
 * of at most 64 bytes keeps the member's hash in Redis's compact encoding (hash-max-listpack-value). */
#define BODY_PARTS 9
#define BODY_MIN 5
enum { B_DUE, B_TPL, B_OCC, B_SUBJ, B_TDELTA, B_VALUE, B_TARGET, B_MESSAGE, B_DELIVER };

/* v in base 36 (what Lua's tonumber(s, 36) reads) */
static void sb_b36(strbuf *b, long long v) {
    char t[24];
    int n = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        t[n++] = "0123456789abcdefghijklmnopqrstuvwxyz"[u % 36];
        u /= 36;
    } while (u);
    if (v < 0) sb_putc(b, '-');
    while (n) sb_putc(b, t[--n]);
}

static int hole_is(const char *rec, const size_t h[2], const char *s, size_t n) {
    return h[1] - h[0] == n && !memcmp(rec + h[0], s, n);
}

static int has_sep(const char *s) { return strchr(s, '\x1e') || strchr(s, '\x1f'); }

/* The occurrence a wait's body keeps (wait_split), what its grant id is
 * made of: occ when the record has no message id (inactivity), else the
 * trigger's message id when the record holds it as a plain JSON string;
 * otherwise (no record, a message id that needs escaping) the grant id,
 * unique per occurrence all the same. */
static const char *wait_occ_of(const intent_t *in, const char *occ, char *buf, size_t cap) {
    if (!in->rec || in->reason) return in->grant_id;
    if (occ) return has_sep(occ) ? in->grant_id : occ;
    const size_t *h = in->rec_holes[REC_TMSGID];
    const char *p = in->rec + h[0];
    size_t n = h[1] - h[0];
    if (n < 2 || p[0] != '"' || p[n - 1] != '"' || n - 2 >= cap || memchr(p, '\\', n)) return in->grant_id;
    memcpy(buf, p + 1, n - 2);
    buf[n - 2] = '\0';
    return has_sep(buf) ? in->grant_id : buf;
}

/* Splits the wait of intent in (due at `due`, delivered from `deliver`) into
 * its template (tpl) and body. occ: the occurrence when the record has no
 * message id (inactivity); trig_ts: the trigger's time. */
static void wait_split(redis_store_t *st, const intent_t *in, const char *occ, int64_t trig_ts, int64_t due,
                       int64_t deliver, const char *queue, size_t qlen, int list, long long maxlen, strbuf *tpl,
                       strbuf *body) {
    const rule_t *r = in->rule;
    int inact = r->kind == TRIG_INACTIVITY;
    char obuf[128], gid[40], iso[40];
    const char *rec = in->rec && !in->reason ? in->rec : NULL;
    const char *o = wait_occ_of(in, occ, obuf, sizeof obuf);
    for (size_t k = 0; rec && k < in->rec_len; k++)
        if ((unsigned char)rec[k] < M_END) rec = NULL; /* cannot happen in JSON; never mistake a byte for a marker */

    sb_reset(tpl);
    for (size_t i = 0; i < in->n_cancel_on; i++) {
        if (!i) sb_putc(tpl, '\x1f');
        sb_puts(tpl, in->cancel_on[i]);
        sb_putc(tpl, '\x1f');
    }
    char num[64];
    sb_putc(tpl, '\x1e');
    sb_puts(tpl, in->reason ? in->reason : "");
    sb_putc(tpl, '\x1e');
    sb_append(tpl, queue, qlen);
    sb_putc(tpl, '\x1e');
    sb_puts(tpl, list ? "list" : "stream");
    snprintf(num, sizeof num, "\x1e%lld\x1e%lld\x1e", maxlen, rec ? in->expires_in_ms : -1LL);
    sb_puts(tpl, num);
    sb_puts(tpl, in->pool ? in->pool : "");
    sb_puts(tpl, inact ? "\x1ei\x1e" : "\x1e\x1e");

    sb_reset(body);
    /* the body's target and value are only read through their markers */
    const char *target = "", *value = "", *message = "";
    size_t value_n = 0, message_n = 0;
    if (rec) {
        const size_t(*h)[2] = (const size_t(*)[2])in->rec_holes;
        strbuf *t = &st->tmp;
        int mark[REC_N_HOLES];
        engine_grant_id(r->id, in->user, o, gid);
        sb_reset(t);
        sb_putc(t, '"');
        sb_puts(t, gid);
        sb_putc(t, '"');
        mark[REC_GID] = hole_is(rec, h[REC_GID], t->s, t->len);
        sb_reset(t);
        sb_json_str(t, in->user, strlen(in->user));
        mark[REC_TUSER] = hole_is(rec, h[REC_TUSER], t->s, t->len);
        if (!hole_is(rec, h[REC_TARGET], t->s, t->len)) target = in->target_user;
        mark[REC_TARGET] = !has_sep(target);
        if (!mark[REC_TARGET]) target = "";
        value = rec + h[REC_VALUE][0];
        value_n = h[REC_VALUE][1] - h[REC_VALUE][0];
        mark[REC_VALUE] = 1;
        message = rec + h[REC_MESSAGE][0];
        message_n = h[REC_MESSAGE][1] - h[REC_MESSAGE][0];
        if (message_n == 4 && !memcmp(message, "null", 4)) message_n = 0;
        mark[REC_MESSAGE] = 1;
        sb_reset(t);
        if (inact) sb_puts(t, "null");
        else sb_json_str(t, o, strlen(o));
        mark[REC_TMSGID] = hole_is(rec, h[REC_TMSGID], t->s, t->len);
        format_iso8601_ms(trig_ts, iso + 1, sizeof iso - 2);
        iso[0] = '"';
        size_t il = strlen(iso);
        iso[il] = '"';
        mark[REC_TTS] = trig_ts != INT64_MIN && hole_is(rec, h[REC_TTS], iso, il + 1);
        static const char markers[REC_N_HOLES] = {M_GID, M_TARGET, M_VALUE, M_MESSAGE, M_TMSGID, M_TUSER, M_TTS};
        size_t at = 0;
        for (int k = 0; k < REC_N_HOLES; k++) {
            if (k == REC_MESSAGE) { /* the cut (expires_at's value) lies between value and message */
                sb_append(tpl, rec + at, in->rec_cut - at);
                sb_putc(tpl, M_CUT);
                at = in->rec_cut;
            }
            if (!mark[k]) continue;
            sb_append(tpl, rec + at, h[k][0] - at);
            sb_putc(tpl, markers[k]);
            at = h[k][1];
        }
        sb_append(tpl, rec + at, in->rec_len - at);
    }
    uint64_t h1, h2;
    hash64x2(tpl->s, tpl->len, 0x77a17, 0x7e3b1a7e, &h1, &h2);
    char id[TPL_ID_LEN + 1]; /* 47 bits */
    for (int k = 0; k < TPL_ID_LEN; k++, h1 /= 62)
        id[k] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"[h1 % 62];
    id[TPL_ID_LEN] = '\0';

    /* head: due, id, occurrence; the schedule script adds the subjects; then the tail */
    sb_b36(body, due);
    sb_putc(body, '\x1e');
    sb_puts(body, id);
    sb_putc(body, '\x1e');
    sb_puts(body, o);
    sb_putc(body, '\0');
    sb_b36(body, trig_ts != INT64_MIN ? due - trig_ts : 0);
    sb_putc(body, '\x1e');
    sb_append(body, value, value_n);
    sb_putc(body, '\x1e');
    sb_puts(body, target);
    sb_putc(body, '\x1e');
    sb_append(body, message, message_n);
    sb_putc(body, '\x1e');
    if (deliver > due) sb_b36(body, deliver - due);
    while (body->len && body->s[body->len - 1] == '\x1e') body->len--;
}

/* The issue block (LUA_PRELUDE's issue()) for a decision whose moment has
 * come at `at`: a hard reason is reported; a rule that waits schedules (see
 * "waits": occ and trig_ts as for wait_split); a soft reason is reported;
 * otherwise claim + push the grant issued at `at`. */
static void add_issue(redis_store_t *st, argv_b *a, const intent_t *in, int64_t at, const char *topic, int32_t part,
                      const char *occ, int64_t trig_ts) {
    int hard = in->reason && !in->reason_soft;
    if (hard || (in->reason && in->wait_ms <= 0)) {
        a_str(a, "x");
        return;
    }
    int waits = in->wait_ms > 0;
    int64_t when = waits ? at + in->wait_ms : at;
    a_str(a, waits ? "s" : "g");
    k_member(st, a, in->user, "grant:", in->grant_id);
    a_ll(a, st->cfg->claim_ttl_ms > 0 ? st->cfg->claim_ttl_ms : 1);
    const channel_cfg_t *ch = config_channel(st->cfg, in->channel);
    sb_reset(&st->tmp);
    config_channel_key(st->cfg, ch, in->channel, &st->tmp);
    /* quiet hours: delivered at their end, in the member's zone (else the configured one) */
    int64_t deliver = when;
    if (in->rec && !in->reason)
        deliver = policy_quiet_until(&st->quiet, in->tz ? in->tz : st->cfg->timezone, st->cfg->quiet_start_min,
                                     st->cfg->quiet_end_min, when);
    if (waits) {
        /* wait_split takes st->tmp for its own work */
        sb_reset(&st->queue);
        sb_append(&st->queue, st->tmp.s ? st->tmp.s : "", st->tmp.len);
        strbuf *tpl = &st->tpl;
        wait_split(st, in, occ, trig_ts, when, deliver, st->queue.s, st->queue.len, ch->kind == OUT_LIST,
                   ch->kind == OUT_LIST ? 0 : ch->maxlen, tpl, &st->json);
        k_member(st, a, in->user, "w", NULL);
        k_member(st, a, in->user, "waits", NULL);
        k_wtimers(st, a, topic, part);
        a_str(a, in->user);
        a_str(a, in->rule->id);
        a_ll(a, at);
        a_ll(a, when);
        size_t head = strlen(st->json.s); /* wait_split: head NUL tail */
        a_add(a, st->json.s, head);
        a_add(a, st->json.s + head + 1, st->json.len - head - 1);
        a_cat(a, in->device ? in->device : "", "\x1f", in->ip ? in->ip : "", NULL);
        a_cat(a, st->cfg->key_prefix, "wtpl", NULL);
        const char *id = st->json.s + strcspn(st->json.s, "\x1e") + 1;
        a_add(a, id, TPL_ID_LEN);
        uint64_t k = tplk_key(id);
        if (tplk_known(st, k)) {
            a_add(a, "", 0);
        } else {
            a_add(a, tpl->s ? tpl->s : "", tpl->len);
            st->tpl_sent = k;
        }
        return;
    }
    a_add(a, st->tmp.s, st->tmp.len);
    a_str(a, ch->kind == OUT_LIST ? "list" : "stream");
    a_ll(a, ch->kind == OUT_LIST ? 0 : ch->maxlen);
    sb_reset(&st->json);
    if (in->rec && !in->reason) engine_finish_grant_at(in->rec, in->rec_len, in->rec_cut, in->expires_in_ms, when, deliver, &st->json);
    a_add(a, st->json.s ? st->json.s : "", st->json.len);
    add_policy(st, a, in->rule, in->variant, in->grant_id, in->user, in->target_user, in->device ? in->device : "",
               in->ip ? in->ip : "", in->pool ? in->pool : "", in->group, in->group_occ, at, deliver > when);
}

/* ---- lifecycle ---------------------------------------------------------------- */

redis_store_t *redis_store_new(redis_sink_t *sink, const config_t *cfg, ruleset_t *const *rules, engine_t *eng) {
    redis_store_t *st = xcalloc(1, sizeof *st);
    st->sink = sink;
    st->cfg = cfg;
    st->rules = rules;
    st->eng = eng;
    sb_init(&st->tmp);
    sb_init(&st->json);
    sb_init(&st->tpl);
    sb_init(&st->queue);
    sb_init(&st->rec);
    a_init(&st->tb);
    a_init(&st->sb);
    static const char *const lua[S_N] = {LUA_ISSUE, LUA_COUNT,  LUA_CANCEL, LUA_TOUCHES, LUA_FIRE,
                                         LUA_INACT, LUA_STATS, LUA_LOOP,   LUA_FIRE_W,  LUA_RETIME};
    if (redis_sink_set_prelude(sink, LUA_SHARED) != 0) {
        redis_store_free(st);
        return NULL;
    }
    for (int i = 0; i < S_N; i++) {
        /* the nx() readers take their arguments in place */
        st->sh[i] = i == S_STATS ? redis_sink_add_script(sink, lua[i]) : redis_sink_add_cursor_script(sink, lua[i]);
        if (st->sh[i] < 0) {
            redis_store_free(st);
            return NULL;
        }
    }
    return st;
}

static void inact_clear(redis_store_t *st) {
    for (size_t i = 0; i < st->n_inact; i++) {
        inact_rule *r = &st->inact[i];
        for (size_t j = 0; j < r->n_events; j++) free(r->events[j]);
        free(r->events);
        free(r->id);
    }
    free(st->inact);
    st->inact = NULL;
    st->n_inact = 0;
    st->inact_rs = NULL;
}

/* The enabled inactivity rules of the current ruleset, rebuilt when the
 * ruleset changes (another pointer, or the same address with another version). */
static void inact_refresh(redis_store_t *st) {
    const ruleset_t *rs = *st->rules;
    const char *ver = ruleset_version(rs);
    if (st->inact_rs == rs && rs && !strcmp(st->inact_ver, ver)) return;
    inact_clear(st);
    size_t n = ruleset_count(rs);
    if (n) st->inact = xcalloc(n, sizeof *st->inact);
    for (size_t i = 0; i < n; i++) {
        const rule_t *r = ruleset_rule(rs, i);
        if (!r->enabled || r->kind != TRIG_INACTIVITY) continue;
        inact_rule *c = &st->inact[st->n_inact++];
        c->id = xstrdup(r->id);
        c->n_events = r->n_events;
        c->resolution_ms = r->resolution_ms;
        c->id_hash = hash_words(r->id, strlen(r->id));
        c->events = r->n_events ? xcalloc(r->n_events, sizeof *c->events) : NULL;
        for (size_t j = 0; j < r->n_events; j++) c->events[j] = xstrdup(r->events[j]);
    }
    st->inact_rs = rs;
    snprintf(st->inact_ver, sizeof st->inact_ver, "%s", ver);
}

void redis_store_free(redis_store_t *st) {
    if (!st) return;
    /* a batch not sent is dropped: its callbacks never run (as for any call
     * still in the sink when it is freed) */
    free(st->tcb);
    a_free(&st->tb);
    a_free(&st->sb);
    a_free(&st->scratch);
    sb_free(&st->ctr_text);
    inact_clear(st);
    xfree_huge(st->pend, PEND_SLOTS * sizeof *st->pend);
    free(st->evp);
    xfree_huge(st->seen, (size_t)SEEN_SETS * SEEN_WAYS * sizeof *st->seen);
    free(st->tplk);
    sb_free(&st->tmp);
    sb_free(&st->json);
    sb_free(&st->tpl);
    sb_free(&st->queue);
    sb_free(&st->rec);
    free(st);
}

void redis_store_stats(const redis_store_t *st, rs_stats_t *out) { *out = st->stats; }

size_t redis_store_held(const redis_store_t *st) { return st ? st->held_now : 0; }

/* ---- intents ------------------------------------------------------------------- */

int redis_store_apply(redis_store_t *st, const intent_t *in, const char *topic, int32_t partition, rs_done_cb cb,
                      void *ud) {
    /* the store's vector, kept with its capacity from call to call */
    argv_b *a = &st->scratch;
    a_reset(a);
    st->send_at = in->ts;
    if (in->kind != INTENT_TOUCH && in->kind != INTENT_CANCEL && in->kind != INTENT_LOOP && in->rule)
        stat_add(st, in->rule->id, in->variant, "triggered");
    switch (in->kind) {
    case INTENT_LOOP:
        /* holdout assignments still in the counters' batch go first (the
         * counters alone may wait: increments commute) */
        if (st->sb_recent) stats_flush(st);
        a_str(a, in->loop_kind == 'r' ? "r" : "c");
        a_str(a, st->cfg->key_prefix);
        a_str(a, in->user);
        a_ll(a, in->ts);
        a_ll(a, in->within_ms);
        a_ll(a, in->within_ms + LOOP_MARGIN_MS);
        a_str(a, in->grant_id ? in->grant_id : "");
        a_send_x(st, a, S_LOOP, cb, ud, NULL, NULL, NULL, NULL);
        return 1;
    case INTENT_EXPLAIN:
        stat_reason(st, in->rule->id, in->variant, in->user, in->reason, in->ts);
        return 0;
    case INTENT_GRANT:
    case INTENT_SCHEDULE: {
        int sched = in->wait_ms > 0 && !(in->reason && !in->reason_soft) && in->user;
        uint64_t user_h = 0, rule_h = 0, occ_h = 0;
        if (sched) {
            char obuf[128];
            user_h = pend_hash(in->user);
            rule_h = pend_hash(in->rule->id);
            occ_h = pend_hash(wait_occ_of(in, NULL, obuf, sizeof obuf));
            if (pend_known(st, user_h, rule_h, occ_h, in->ts)) {
                /* before building the call: the common answer costs no arguments */
                a_reset(a);
                count_outcome(st, RS_PENDING, 0);
                st->stats.pending_known++;
                stat_reason(st, in->rule->id, in->variant, in->user, "already pending", in->ts);
                if (cb) cb(ud, RS_PENDING, 0, "already pending");
                return 2;
            }
        }
        add_issue(st, a, in, in->ts, topic, partition, NULL, in->trigger ? in->trigger->ts_ms : INT64_MIN);
        if (a->len[0] == 1 && a->buf.s[0] == 'x') { /* nothing to write */
            stat_reason(st, in->rule->id, in->variant, in->user, in->reason, in->ts);
            a_reset(a);
            return 0;
        }
        call_ctx *c = a_ctx_new(st, S_ISSUE, cb, ud, in->rule->id, in->variant, in->user, in->reason);
        if (!sched) {
            a_send_ctx(st, a, c);
            return 1;
        }
        c->pend = 1;
        c->pend_user = user_h;
        c->pend_rule = rule_h;
        c->pend_occ = occ_h;
        c->pend_due = in->ts + in->wait_ms;
        c->pend_ts = in->ts;
        return schedule_send(st, a, c); /* the table was asked above, before the call was built */
    }
    case INTENT_COUNT_GRANT:
        k_member(st, a, in->user, "cnt:", in->rule->id);
        a_ll(a, in->ts);
        a_fmt(a, "(%lld", (long long)(in->ts - in->within_ms));
        a_ll(a, in->within_ms + 60000); /* the window's own pruning is exact; the TTL only collects garbage */
        a_ll(a, in->count);
        a_str(a, in->occurrence);
        add_issue(st, a, in, in->ts, topic, partition, NULL, in->trigger ? in->trigger->ts_ms : INT64_MIN);
        a_send_x(st, a, S_COUNT, cb, ud, in->rule->id, in->variant, in->user, in->reason);
        return 1;
    case INTENT_CANCEL:
        pend_cancel(st, in->user);
        k_member(st, a, in->user, "w", NULL);
        k_member(st, a, in->user, "waits", NULL);
        k_member(st, a, in->user, "wait:", NULL);
        k_wtimers(st, a, topic, partition);
        a_str(a, in->user);
        a_ll(a, in->ts);
        a_str(a, in->event);
        a_cat(a, st->cfg->key_prefix, "wtpl", NULL);
        a_send_x(st, a, S_CANCEL, cb, ud, NULL, NULL, in->user, NULL);
        return 1;
    case INTENT_TOUCH: {
        /* Appended to the pending batch (redis_store_flush sends it). */
        inact_refresh(st);
        size_t added = 0;
        for (size_t i = 0; i < st->n_inact; i++) {
            const inact_rule *r = &st->inact[i];
            int counts = r->n_events == 0;
            for (size_t j = 0; !counts && j < r->n_events; j++) counts = !strcmp(r->events[j], in->event);
            if (!counts) continue;
            int64_t mark = engine_activity_mark(r->resolution_ms, in->user, in->ts);
            if (r->resolution_ms > 1 && seen_sent(st, in->user, r->id_hash, mark)) {
                st->stats.touches_skipped++;
                continue;
            }
            k_seen(st, &st->tb, topic, partition, r->id);
            a_ll(&st->tb, mark);
            a_str(&st->tb, in->user);
            added++;
        }
        if (!added) return 0;
        if (st->tcb_n == st->tcb_cap) {
            st->tcb_cap = st->tcb_cap ? 2 * st->tcb_cap : 64;
            st->tcb = xrealloc(st->tcb, st->tcb_cap * sizeof *st->tcb);
        }
        st->tcb[st->tcb_n++] = (touch_cb){cb, ud};
        if (st->tb.n >= 3 * TOUCH_BATCH) redis_store_flush(st);
        return 1;
    }
    }
    a_reset(a);
    return 0;
}

/* ---- polling -------------------------------------------------------------------- */

typedef struct round {
    redis_store_t *st;
    char *topic;
    int32_t part;
    int64_t now;
    int outstanding, more, ok;
    void (*done)(void *ud, int more, int ok);
    void *ud;
} round_t;

typedef struct read_ctx {
    round_t *r;
    char *rule_id;   /* NULL: a timers read */
    int waits;       /* the per-member timers (LUA_POLL_W), else the per-wait ones */
} read_ctx;

static void round_step(round_t *r) {
    if (--r->outstanding > 0) return;
    r->done(r->ud, r->more, r->ok);
    free(r->topic);
    free(r);
}

static void on_fire_reply(void *ud, rs_outcome k, long long n, const char *why) {
    redis_store_t *st = ud;
    switch (k) {
    case RS_GRANTED: st->stats.fired++; break;
    case RS_REPEAT: st->stats.fired_repeats++; break;
    case RS_DROPPED: st->stats.dropped++; break;
    case RS_STALE: st->stats.stale++; break;
    default: break;
    }
}

static void on_inact_reply(void *ud, rs_outcome k, long long n, const char *why) {
    redis_store_t *st = ud;
    if (k == RS_GRANTED || k == RS_SCHEDULED || k == RS_EXPLAINED) st->stats.inact_fired++;
    else if (k == RS_REPEAT) st->stats.fired_repeats++;
    else if (k == RS_STALE) st->stats.stale++;
}

static void fire_timers(round_t *r, const redisReply *rep) {
    redis_store_t *st = r->st;
    const ruleset_t *rs = *st->rules;
    for (size_t i = 0; i + 1 < rep->elements; i += 2) {
        const redisReply *m = rep->element[i];
        if (m->type != REDIS_REPLY_STRING || m->len < GID_LEN + 3 || m->str[GID_LEN] != '|') continue;
        char gid[GID_LEN + 1], rule[256], user[512];
        memcpy(gid, m->str, GID_LEN);
        gid[GID_LEN] = '\0';
        const char *p = m->str + GID_LEN + 1, *bar = memchr(p, '|', m->len - GID_LEN - 1);
        if (!bar || (size_t)(bar - p) >= sizeof rule || m->len - (size_t)(bar + 1 - m->str) >= sizeof user) continue;
        memcpy(rule, p, (size_t)(bar - p));
        rule[bar - p] = '\0';
        size_t ulen = m->len - (size_t)(bar + 1 - m->str);
        memcpy(user, bar + 1, ulen);
        user[ulen] = '\0';
        const rule_t *rl = ruleset_find(rs, rule);
        const char *why = !rl ? "rule removed" : !rl->enabled ? "rule disabled" : NULL;
        if (why) log_info("wait_dropped", "rule=%s user=%s grant_id=%s reason=\"%s\"", rule, user, gid, why);
        argv_b a;
        a_init(&a);
        k_member(st, &a, user, "waits", NULL);
        k_member(st, &a, user, "wait:", gid);
        a_str(&a, gid);
        k_timers(st, &a, r->topic, r->part);
        a_add(&a, m->str, m->len);
        a_str(&a, why ? "d" : "g");
        k_member(st, &a, user, "grant:", gid);
        a_ll(&a, st->cfg->claim_ttl_ms > 0 ? st->cfg->claim_ttl_ms : 1);
        const char *variant = rl ? engine_variant_name(rl, user) : NULL;
        const redisReply *sc = rep->element[i + 1];
        int64_t due = sc->type == REDIS_REPLY_STRING ? (int64_t)strtod(sc->str, NULL) : r->now;
        st->send_at = due;
        if (why) a_str(&a, "0");
        else add_policy(st, &a, rl, variant, gid, user, "", "", "", "", NULL, NULL, due, -1);
        a_send_x(st, &a, S_FIRE, on_fire_reply, st, rule, variant, user, why);
    }
}

/* Splits s (n bytes) at RS into at most max parts (the last takes the rest);
 * returns how many. */
static int split_rs(const char *s, size_t n, const char **p, size_t *l, int max) {
    int k = 0;
    while (k < max - 1) {
        const char *q = memchr(s, '\x1e', n);
        if (!q) break;
        p[k] = s;
        l[k++] = (size_t)(q - s);
        n -= (size_t)(q - s) + 1;
        s = q + 1;
    }
    p[k] = s;
    l[k++] = n;
    return k;
}

/* a number of n bytes at s: base 36 in a body (sb_b36), 10 in a template */
static long long num_of(const char *s, size_t n, int base) {
    char b[32];
    if (n >= sizeof b) n = sizeof b - 1;
    memcpy(b, s, n);
    b[n] = '\0';
    return strtoll(b, NULL, base);
}

/* Rebuilds a wait's open record from its template record (t, tn bytes) and
 * body parts into rec; *cut is where expires_at's value goes. */
static void wait_rebuild(const char *t, size_t tn, const char *const *bp, const size_t *bl, const char *rule,
                         const char *user, const char *occ, const char *target, int inact, int64_t due, strbuf *rec,
                         size_t *cut) {
    sb_reset(rec);
    *cut = 0;
    char gid[40], iso[40];
    for (size_t k = 0; k < tn; k++) {
        unsigned char c = (unsigned char)t[k];
        if (c >= M_END) {
            size_t run = 1;
            while (k + run < tn && (unsigned char)t[k + run] >= M_END) run++;
            sb_append(rec, t + k, run);
            k += run - 1;
            continue;
        }
        switch (c) {
        case M_GID:
            engine_grant_id(rule, user, occ, gid);
            sb_putc(rec, '"');
            sb_puts(rec, gid);
            sb_putc(rec, '"');
            break;
        case M_TARGET: sb_json_str(rec, *target ? target : user, strlen(*target ? target : user)); break;
        case M_VALUE:
            if (bl[B_VALUE]) sb_append(rec, bp[B_VALUE], bl[B_VALUE]);
            else sb_puts(rec, "null");
            break;
        case M_CUT: *cut = rec->len; break;
        case M_MESSAGE:
            if (bl[B_MESSAGE]) sb_append(rec, bp[B_MESSAGE], bl[B_MESSAGE]);
            else sb_puts(rec, "null");
            break;
        case M_TMSGID:
            if (inact) sb_puts(rec, "null");
            else sb_json_str(rec, occ, strlen(occ));
            break;
        case M_TUSER: sb_json_str(rec, user, strlen(user)); break;
        case M_TTS:
            format_iso8601_ms(due - num_of(bp[B_TDELTA], bl[B_TDELTA], 36), iso, sizeof iso);
            sb_putc(rec, '"');
            sb_puts(rec, iso);
            sb_putc(rec, '"');
            break;
        default: break;
        }
    }
}

/* The templates of a poll's reply: (id, text) pairs from element `from`. */
static const redisReply *tpl_find(const redisReply *rep, size_t from, const char *id, size_t n) {
    for (size_t i = from; i + 1 < rep->elements; i += 2) {
        const redisReply *k = rep->element[i], *v = rep->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && k->len == n && !memcmp(k->str, id, n) && v->type == REDIS_REPLY_STRING &&
            v->len)
            return v;
    }
    return NULL;
}

/* The reply of LUA_POLL_W: every due wait is rebuilt and fired (FIRE_W). */
static void fire_waits(round_t *r, const redisReply *rep) {
    redis_store_t *st = r->st;
    const ruleset_t *rs = *st->rules;
    if (rep->elements < 2 || rep->element[0]->type != REDIS_REPLY_INTEGER ||
        rep->element[1]->type != REDIS_REPLY_INTEGER)
        return;
    if (rep->element[0]->integer >= POLL_LIMIT) r->more = 1;
    size_t nq = (size_t)rep->element[1]->integer, tfrom = 2 + 4 * nq;
    if (tfrom > rep->elements) return;
    strbuf *rec = &st->rec;
    for (size_t q = 0; q < nq; q++) {
        const redisReply *const *e = (const redisReply *const *)rep->element + 2 + 4 * q;
        if (e[0]->type != REDIS_REPLY_STRING || e[1]->type != REDIS_REPLY_STRING || e[2]->type != REDIS_REPLY_STRING ||
            e[3]->type != REDIS_REPLY_STRING)
            continue;
        char *user = xstrndup(e[0]->str, e[0]->len);
        argv_b a;
        a_init(&a);
        if (!e[1]->len) { /* nothing due: the entry was early */
            k_member(st, &a, user, "w", NULL);
            k_wtimers(st, &a, r->topic, r->part);
            a_str(&a, user);
            a_send_x(st, &a, S_RETIME, on_fire_reply, st, NULL, NULL, NULL, NULL);
            free(user);
            continue;
        }
        char *rule = xstrndup(e[1]->str, strcspn(e[1]->str, "\x1f"));
        const char *bp[BODY_PARTS], *tp[TPL_PARTS];
        size_t bl[BODY_PARTS], tl[TPL_PARTS];
        int nb = split_rs(e[2]->str, e[2]->len, bp, bl, BODY_PARTS);
        for (int k = nb; k < BODY_PARTS; k++) bp[k] = "", bl[k] = 0;
        const redisReply *tv = nb >= BODY_MIN ? tpl_find(rep, tfrom, bp[B_TPL], bl[B_TPL]) : NULL;
        int nt = tv ? split_rs(tv->str, tv->len, tp, tl, TPL_PARTS) : 0;
        const rule_t *rl = ruleset_find(rs, rule);
        const char *why = !rl ? "rule removed" : !rl->enabled ? "rule disabled" : NULL;
        if (!why && nt != TPL_PARTS) {
            why = "wait unreadable";
            log_error("wait_unreadable", "rule=%s user=%s body=\"%.*s\" template=%s", rule, user, (int)e[2]->len,
                      e[2]->str, tv ? "malformed" : "missing");
        }
        int64_t due = nb >= BODY_MIN ? num_of(bp[B_DUE], bl[B_DUE], 36) : r->now;
        char *occ = xstrndup(bp[B_OCC], bl[B_OCC]);
        char *target = xstrndup(bp[B_TARGET], bl[B_TARGET]);
        /* the subjects: the member's (field RS), or the wait's own */
        const char *sj = e[3]->str;
        size_t sjn = e[3]->len;
        if (bl[B_SUBJ] && bp[B_SUBJ][0] == '=') sj = bp[B_SUBJ] + 1, sjn = bl[B_SUBJ] - 1;
        const char *us = memchr(sj, '\x1f', sjn);
        char *dev = xstrndup(sj, us ? (size_t)(us - sj) : sjn);
        char *ip = us ? xstrndup(us + 1, sjn - (size_t)(us + 1 - sj)) : xstrdup("");
        char gid[40];
        snprintf(gid, sizeof gid, "%s", occ);
        int quiet = 0;
        sb_reset(&st->json);
        if (nt == TPL_PARTS && tl[T_REC]) {
            size_t cut;
            int inact = tl[T_FLAGS] == 1 && tp[T_FLAGS][0] == 'i';
            wait_rebuild(tp[T_REC], tl[T_REC], bp, bl, rule, user, occ, target, inact, due, rec, &cut);
            int64_t deliver = due + num_of(bp[B_DELIVER], bl[B_DELIVER], 36);
            quiet = deliver > due;
            engine_finish_grant_at(rec->s, rec->len, cut, num_of(tp[T_EXPIRES], tl[T_EXPIRES], 10), due, deliver,
                                   &st->json);
            if (!strncmp(st->json.s, "{\"grant_id\":\"", 13) && st->json.len > 13 + GID_LEN) {
                memcpy(gid, st->json.s + 13, GID_LEN);
                gid[GID_LEN] = '\0';
            }
        }
        if (why && strcmp(why, "wait unreadable"))
            log_info("wait_dropped", "rule=%s user=%s grant_id=%s reason=\"%s\"", rule, user, gid, why);
        k_member(st, &a, user, "w", NULL);
        k_wtimers(st, &a, r->topic, r->part);
        a_str(&a, user);
        a_add(&a, e[1]->str, e[1]->len);
        a_add(&a, e[2]->str, e[2]->len);
        a_str(&a, why ? "d" : "g");
        k_member(st, &a, user, "grant:", gid);
        a_ll(&a, st->cfg->claim_ttl_ms > 0 ? st->cfg->claim_ttl_ms : 1);
        for (int k = T_QUEUE; k <= T_MAXLEN; k++) a_add(&a, nt == TPL_PARTS ? tp[k] : "", nt == TPL_PARTS ? tl[k] : 0);
        a_add(&a, st->json.s ? st->json.s : "", st->json.len);
        a_add(&a, nt == TPL_PARTS ? tp[T_WHY] : "", nt == TPL_PARTS ? tl[T_WHY] : 0);
        const char *variant = rl ? engine_variant_name(rl, user) : NULL;
        st->send_at = due;
        if (why) {
            a_str(&a, "0");
        } else {
            char *pool = xstrndup(tp[T_POOL], tl[T_POOL]);
            add_policy(st, &a, rl, variant, gid, user, *target ? target : user, dev, ip, pool, NULL, NULL, due,
                       quiet);
            free(pool);
        }
        a_send_x(st, &a, S_FIRE_W, on_fire_reply, st, rule, variant, user, why);
        free(occ);
        free(target);
        free(dev);
        free(ip);
        free(rule);
        free(user);
    }
}

static void fire_inactivity(round_t *r, const rule_t *rl, const redisReply *rep) {
    redis_store_t *st = r->st;
    for (size_t i = 0; i + 1 < rep->elements; i += 2) {
        const redisReply *m = rep->element[i], *sc = rep->element[i + 1];
        if (m->type != REDIS_REPLY_STRING || sc->type != REDIS_REPLY_STRING) continue;
        char *user = xstrndup(m->str, m->len);
        int64_t last = (int64_t)strtod(sc->str, NULL);
        int64_t at = last + rl->inactive_ms;
        intent_t in;
        engine_decide_inactivity(st->eng, rl, user, last, at, &in);
        argv_b a;
        a_init(&a);
        k_seen(st, &a, r->topic, r->part, rl->id);
        a_str(&a, user);
        a_ll(&a, last);
        k_member(st, &a, user, "inact:", rl->id);
        a_ll(&a, st->cfg->claim_ttl_ms > 0 ? st->cfg->claim_ttl_ms : 1);
        char occ[40];
        engine_inactivity_occurrence(last, occ);
        add_issue(st, &a, &in, at, r->topic, r->part, occ, last);
        stat_add(st, rl->id, in.variant, "triggered");
        st->send_at = at;
        a_send_x(st, &a, S_INACT, on_inact_reply, st, rl->id, in.variant, user, in.reason);
        free(user);
    }
}

static void on_poll_reply(void *ud, const redisReply *rep) {
    read_ctx *c = ud;
    round_t *r = c->r;
    if (!rep) {
        r->ok = 0;
    } else if (rep->type != REDIS_REPLY_ARRAY) {
        log_error("timer_poll_failed", "topic=%s partition=%d error=\"%.200s\"", r->topic, (int)r->part,
                  rep->type == REDIS_REPLY_ERROR ? rep->str : "?");
        r->ok = 0;
    } else {
        if (c->waits) {
            fire_waits(r, rep);
        } else if (!c->rule_id) {
            if (rep->elements >= 2 * POLL_LIMIT) r->more = 1;
            fire_timers(r, rep);
        } else {
            if (rep->elements >= 2 * POLL_LIMIT) r->more = 1;
            const rule_t *rl = ruleset_find(*r->st->rules, c->rule_id);
            if (rl && rl->enabled && rl->kind == TRIG_INACTIVITY) fire_inactivity(r, rl, rep);
        }
    }
    free(c->rule_id);
    free(c);
    round_step(r);
}

static void poll_read(round_t *r, const char *rule_id, const char *key, int64_t max) {
    char maxs[32], lim[16];
    snprintf(maxs, sizeof maxs, "%lld", (long long)max);
    snprintf(lim, sizeof lim, "%d", POLL_LIMIT);
    const char *argv[8] = {"ZRANGEBYSCORE", key, "-inf", maxs, "WITHSCORES", "LIMIT", "0", lim};
    size_t lens[8];
    for (int i = 0; i < 8; i++) lens[i] = strlen(argv[i]);
    read_ctx *c = xcalloc(1, sizeof *c);
    c->r = r;
    c->rule_id = rule_id ? xstrdup(rule_id) : NULL;
    r->outstanding++;
    redis_sink_read(r->st->sink, 8, argv, lens, on_poll_reply, c);
}

static void poll_waits(round_t *r, const char *key, int64_t max) {
    char maxs[32], lim[16];
    snprintf(maxs, sizeof maxs, "%lld", (long long)max);
    snprintf(lim, sizeof lim, "%d", POLL_LIMIT);
    const char *argv[7] = {"EVAL_RO", LUA_POLL_W, "0", key, r->st->cfg->key_prefix, maxs, lim};
    size_t lens[7];
    for (int i = 0; i < 7; i++) lens[i] = strlen(argv[i]);
    read_ctx *c = xcalloc(1, sizeof *c);
    c->r = r;
    c->waits = 1;
    r->outstanding++;
    redis_sink_read(r->st->sink, 7, argv, lens, on_poll_reply, c);
}

void redis_store_poll(redis_store_t *st, const char *topic, int32_t partition, int64_t now, int64_t inact_now,
                      void (*done)(void *ud, int more, int ok), void *ud) {
    round_t *r = xcalloc(1, sizeof *r);
    r->st = st;
    r->topic = xstrdup(topic);
    r->part = partition;
    r->now = now;
    r->ok = 1;
    r->done = done;
    r->ud = ud;
    r->outstanding = 1; /* held until every read is queued */
    redis_store_flush(st); /* the reads see every touch before them */
    argv_b k;
    a_init(&k);
    k_wtimers(st, &k, topic, partition);
    poll_waits(r, k.buf.s, now);
    a_reset(&k);
    k_timers(st, &k, topic, partition);
    poll_read(r, NULL, k.buf.s, now);
    const ruleset_t *rs = *st->rules;
    for (size_t i = 0; i < ruleset_count(rs); i++) {
        const rule_t *rl = ruleset_rule(rs, i);
        if (!rl->enabled || rl->kind != TRIG_INACTIVITY) continue;
        a_reset(&k);
        k_seen(st, &k, topic, partition, rl->id);
        poll_read(r, rl->id, k.buf.s, inact_now - rl->inactive_ms);
    }
    a_free(&k);
    round_step(r);
}
