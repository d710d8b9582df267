"""Gamification state in Redis: applied once per event id, by atomic Lua scripts.

Keys (Redis Cluster ready: ``{...}`` hash tags keep one listener's keys in one slot, and each
board's two keys in one slot)::

    enc:{USER}:s          hash   the listener's state: stats, karma (raw sum), earned, seq,
                                 best_streak, last_day, wk:<week> and gk:<genre> (karma by week /
                                 genre), ch:<id> (challenge progress), a:<artist> g:<genre>
                                 p:<playlist> (first met, ms: bonuses and challenge progress
                                 belong to that time, whatever order events arrive in),
                                 x:<achievement> and v:<avatar item> (unlocked: 1)
    enc:{USER}:m:<day>    set    applied event ids (16 bytes) of events on that UTC day; expires
                                 `horizon` after the day ends
    enc:{USER}:days       zset   local days with a completed listen (streaks)
    enc:{USER}:o          hash   the outbox: f:<seq> / r:<seq> -> what a listener batch was (its
                                 effects) and did (APPLY's reply and time), <event id> -> <seq>;
                                 written by APPLY itself, kept a day (OUTBOX_TTL_S). A redelivered
                                 event id rebuilds from it the outputs it produced.
    enc:lb:{BOARD}        zset   leaderboard; BOARD = global | weekly:<n> | genre:<g> | cohort:<c>
                                 (weekly: Monday-based week number of the UTC time; genre: the
                                 base karma of events on that genre's tracks)
    enc:lb:{BOARD}:v      hash   Redis Cluster only: per-listener version (seq) of the score

Per batch, on one Redis: the listeners go in chunks of ~CHUNK_EVENTS events, one APPLY call per
chunk, all chunks sent over one connection before the first reply is read (Redis runs a chunk
while the client encodes the next). APPLY checks each listener's event ids; if none was applied
before, it marks them and applies every change to the listener's keys and to the boards in the
same atomic step, else it changes nothing of that listener and names the applied ones, which
the client drops before sending the rest again (a redelivered event id changes nothing).
On Redis Cluster a script may touch one slot only: APPLY runs once per slot and the boards are
written after it by BOARD, which sets absolute scores guarded by the listener's seq, so a late
or repeated update never overwrites a newer one. Every rule is order-independent (sums, set
membership, streak links between listening days), so the same events in any order or split
give the same state, on either path.

Order of ties on a board: equal scores rank by member id, reverse byte order (Redis ZREVRANK).
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from redis.crc import key_slot

from agents.gamify import DAY_MS, Effect, Rules, week_of

PREFIX = "enc"
WEEKLY_TTL_S = 5 * 7 * 86_400
SET_FIELDS = {"artists": "a:", "genres": "g:", "playlists": "p:"}  # a listener's sets: fields of the state hash
OUTBOX_TTL_S = 86_400  # a redelivery comes within minutes of a crash or rebalance; a day bounds the memory
CHUNK_EVENTS = 150  # events per APPLY call on one Redis: small enough to overlap encoding with Redis

APPLY = r"""
-- Every listener of a batch (of one cluster slot, on Redis Cluster) in one call. KEYS: 3 per
-- listener (user_keys); ARGV = now_ms, batches (JSON: one per listener, aggregated by the client,
-- see _Batch). The rules are baked into the script text (RULES, a Lua table literal), so no call
-- decodes them. Per listener, either every event of its batch is new and all of it is applied,
-- or nothing of that listener is written and the positions of the already-applied ids come
-- back ({'dup', positions}) for the client to drop before it sends the rest again. Check and
-- apply are one atomic script.
local args = RULES
local now = tonumber(ARGV[1])
local horizon, gap, bonus, floor = args.horizon_ms, args.link_gap, args.streak_bonus, args.floor
-- numbers go to Redis as integer strings (a Lua number would be formatted with %.17g, slower)
local function N(v) return string.format('%d', v) end
-- ARGV[3]: the boards' key prefix when they are written here, in the same step (one Redis);
-- '' when the client writes them with BOARD (Redis Cluster: boards live in other slots)
local LB, expire = ARGV[3], {}  -- ARGV[4]: the weekly boards' time to live (s)
-- ARGV[5]: the event ids, 16 bytes each, listener after listener (in the order of ARGV[2])
local BLOB, pos = ARGV[5], 1
local GLOBAL = LB .. '{global}'
local WEEKLY, GENRE = LB .. '{weekly:', LB .. '{genre:'  -- board keys: prefix .. name .. '}'
-- board writes are gathered per board and made once per call, after every listener (each
-- listener appears once per call, so no two writes of one member meet)
local zadd, zrem, moved, outbox = {}, {}, {}, {}
local function board(key, score, user)
  -- a score of 0 is no entry: a board holds the same members whatever path led there
  local into, item = zadd, {N(score), user}
  if score == 0 then into, item = zrem, {user} end
  local list = into[key]
  if not list then list = {}; into[key] = list end
  for _, x in ipairs(item) do list[#list + 1] = x end
end
local function chunks(cmd, key, list)
  for i = 1, #list, 4000 do redis.call(cmd, key, unpack(list, i, math.min(i + 3999, #list))) end
end
-- a listener's sets live in the state hash as fields a:<artist>, g:<genre>, p:<playlist> (the
-- client sends them prefixed); the other names built here are memoised per call
local memo = {}
local function cat(a, b)
  local t = memo[a]
  if not t then t = {}; memo[a] = t end
  local s = t[b]
  if not s then s = a .. b; t[b] = s end
  return s
end
-- the state fields every listener's batch reads (achievement flags x:<id> / avatar flags v:<item>
-- are read only when an achievement's target or a tier is reached)
local FIELDS = {'karma', 'earned', 'seq', 'best_streak', 'last_day'}
do
  local seen = {karma = true, earned = true, seq = true, best_streak = true, last_day = true}
  for c, _ in pairs(args.challenges) do if c ~= '_' then FIELDS[#FIELDS + 1] = 'ch:' .. c end end
  for _, a in ipairs(args.achievements) do
    if not seen[a[2]] then seen[a[2]] = true; FIELDS[#FIELDS + 1] = a[2] end
  end
end
local function week(day) return math.floor((day - 1) / 7) end
local function week_at(ms) return week(math.floor(ms / 86400000) + 719163) end

local function apply_one(k, b)
local S, M, D, O = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]

-- event marks: one set per UTC day of the events' own time (M .. ':' .. day), expiring `horizon`
-- after that day; b.mb: [day, count, time to live] per day, the ids in the blob in that order
local dups, days_ids, before = {}, {}, 0
for _, g in ipairs(b.mb) do
  local key, ids = M .. ':' .. g[1], {}
  for i = 1, g[2] do ids[i] = string.sub(BLOB, pos, pos + 15); pos = pos + 16 end
  for i = 1, #ids, 4000 do
    local seen = redis.call('SMISMEMBER', key, unpack(ids, i, math.min(i + 3999, #ids)))
    for j, x in ipairs(seen) do if x == 1 then dups[#dups + 1] = before + i + j - 1 end end
  end
  days_ids[#days_ids + 1] = {key, ids, g[3]}
  before = before + g[2]
end
if #dups > 0 then return {'dup', dups} end
for _, g in ipairs(days_ids) do chunks('SADD', g[1], g[2]); redis.call('EXPIRE', g[1], g[3]) end

-- the state hash is cached here: each field read at most once, written back once at the end
local st, dirty = {}, {}
local function get(f)
  local v = st[f]
  if v == nil then v = tonumber(redis.call('HGET', S, f) or '0'); st[f] = v end
  return v
end
local function add(f, n) if n ~= 0 then st[f] = get(f) + n; dirty[f] = true end end
local function set(f, v) st[f] = v; dirty[f] = true end
do  -- one HMGET for every field this batch is known to read
  local fields = {unpack(FIELDS)}
  for w, _ in pairs(b.weeks) do fields[#fields + 1] = cat('wk:', w) end
  for g, _ in pairs(b.genres) do fields[#fields + 1] = cat('gk:', g) end
  for stat, _ in pairs(b.incr) do fields[#fields + 1] = stat end
  for name, list in pairs(b.members) do
    if list[1] then fields[#fields + 1] = list[1][2] end
    for _, m in ipairs(list) do fields[#fields + 1] = m[1] end
  end
  local values = redis.call('HMGET', S, unpack(fields))
  for i, f in ipairs(fields) do st[f] = tonumber(values[i] or '0') end
end
local function progress(stat, at, n)
  for c, spec in pairs(args.challenges) do
    if spec[1] == stat and at >= spec[2] and at < spec[3] then add('ch:' .. c, n) end
  end
end
-- the days linked to `day` in one direction (each at most `gap` from the next), and the nearest
-- listening day that way; read 64 days per call, so a long streak costs few calls
local function linked(day, dir)
  local count, cur, nearest = 0, day, nil
  while true do
    local r
    if dir < 0 then r = redis.call('ZREVRANGEBYSCORE', D, '(' .. N(cur), '-inf', 'LIMIT', 0, 64)
    else r = redis.call('ZRANGEBYSCORE', D, '(' .. N(cur), '+inf', 'LIMIT', 0, 64) end
    for _, v in ipairs(r) do
      local q = tonumber(v)
      nearest = nearest or q
      if math.abs(q - cur) > gap then return count, nearest end
      count, cur = count + 1, q
    end
    if #r < 64 then return count, nearest end
  end
end

local raw_before, earned_before, first = get('karma'), get('earned'), get('seq') == 0
local weeks, genres = {}, {}
-- every amount is booked to a week; their sum is the karma change
local delta, gain = b.karma, b.gain
-- weeks are kept by their name (a string): a number in a concatenation is formatted with %.14g
-- (a week or genre whose score did not move keeps its board entry as it is)
local function book(w, v) if v ~= 0 then w = N(w); weeks[w] = true; add(cat('wk:', w), v) end end
for w, v in pairs(b.weeks) do if w ~= '_' then book(tonumber(w), v) end end
for g, v in pairs(b.genres) do if v ~= 0 then genres[g] = true; add(cat('gk:', g), v) end end
for stat, n in pairs(b.incr) do add(stat, n) end
for c, n in pairs(b.ch) do add('ch:' .. c, n) end

-- sets remember when the listener first met each member; its bonus and any challenge progress
-- belong to that first time, whatever order the events arrive in (b.members[set]: member,
-- stat, bonus, earliest time in this batch)
local bonus_members = {}
for name, list in pairs(b.members) do
  if #list > 0 then
    for _, m in ipairs(list) do
      local field, stat, v, at = m[1], m[2], m[3], m[4]  -- field: the member, prefixed (a:, g:, p:)
      local first_met = get(field)
      if first_met == 0 then
        set(field, at)
        add(stat, 1); book(week_at(at), v); delta = delta + v; gain = gain + v; progress(stat, at, 1)
        if v ~= 0 then bonus_members[#bonus_members + 1] = field end
      elseif at < first_met then
        set(field, at)
        book(week_at(first_met), -v); book(week_at(at), v)
        progress(stat, first_met, -1); progress(stat, at, 1)
      end
    end
  end
end

-- streaks: a link joins two listening days at most `gap` days apart; each link is worth the
-- streak bonus, booked to the week of its later day
local day_bonus = {}
for _, day in ipairs(b.days) do
  -- last_day (the latest listening day) spares the ZADD for the common case: today, again
  if day ~= get('last_day') and redis.call('ZADD', D, 'NX', N(day), N(day)) == 1 then
    if day > get('last_day') then set('last_day', day) end
    local back, p = linked(day, -1)
    local ahead, n = linked(day, 1)
    local links = 0
    if p and day - p <= gap then book(week(day), bonus); links = links + 1 end
    if n and n - day <= gap then book(week(n), bonus); links = links + 1 end
    if p and n and n - p <= gap then book(week(n), -bonus); links = links - 1 end
    delta = delta + links * bonus; gain = gain + links * bonus
    if links ~= 0 then day_bonus[#day_bonus + 1] = {day, links * bonus} end
    local run = 1 + back + ahead
    if run > get('best_streak') then add('best_streak', run - get('best_streak')) end
  end
end
add('karma', delta)
add('earned', gain)
add('seq', b.n)
local earned = get('earned')

local unlocked = {}
local function unlock(item)
  if get('v:' .. item) == 0 then set('v:' .. item, 1); unlocked[#unlocked + 1] = 'avatar:' .. item end
end
for _, a in ipairs(args.achievements) do
  local value = (a[2] == 'karma') and earned or get(a[2])
  if value >= a[3] and get('x:' .. a[1]) == 0 then  -- (the flag is read only once the target is met)
    set('x:' .. a[1], 1); unlocked[#unlocked + 1] = 'achievement:' .. a[1]
    if a[4] ~= '' then unlock(a[4]) end
  end
end
-- earned never falls, so a tier is unlocked exactly when earned first reaches it
local tier = ''
for _, t in ipairs(args.tiers) do
  if earned >= t[2] then
    tier = t[1]
    if first or t[2] > earned_before then unlock(t[3]) end
  end
end

-- write back; fields back at zero are removed, so the state never depends on the path taken
local hset, hdel = {}, {}
for f, _ in pairs(dirty) do
  if st[f] == 0 then hdel[#hdel + 1] = f else hset[#hset + 1] = f; hset[#hset + 1] = N(st[f]) end
end
for i = 1, #hset, 4000 do redis.call('HSET', S, unpack(hset, i, math.min(i + 3999, #hset))) end
for i = 1, #hdel, 4000 do redis.call('HDEL', S, unpack(hdel, i, math.min(i + 3999, #hdel))) end
local reply = {raw_before = raw_before, raw = get('karma'), seq = get('seq'), tier = tier, unlocked = unlocked,
  bonus_members = bonus_members, day_bonus = day_bonus, old_rank = -1, new_rank = -1}
if LB == '' then  -- the client writes the boards (Redis Cluster): it needs the scores
  reply.weeks, reply.genres = {}, {}
  for w, _ in pairs(weeks) do reply.weeks[w] = get(cat('wk:', w)) end
  for g, _ in pairs(genres) do reply.genres[g] = get(cat('gk:', g)) end
else  -- boards in the same atomic step: always the listener's latest scores
  local karma, before = math.max(floor, reply.raw), math.max(floor, raw_before)
  if karma ~= before then  -- (an unchanged score keeps its entry and its rank)
    -- the rank before this call; the rank after it is read once every board is written
    reply.old_rank = redis.call('ZREVRANK', GLOBAL, b.user) or -1
    board(GLOBAL, karma, b.user)
    moved[#moved + 1] = {reply, b.user}
  end
  if b.cohort ~= '' then board(LB .. '{cohort:' .. b.cohort .. '}', karma, b.user) end
  for w, _ in pairs(weeks) do local key = cat(cat(WEEKLY, w), '}'); board(key, get(cat('wk:', w)), b.user); expire[key] = true end
  for name, _ in pairs(genres) do board(cat(cat(GENRE, name), '}'), get(cat('gk:', name)), b.user) end
end
outbox[#outbox + 1] = {O, b, reply, days_ids}
return {'ok', reply}
end

local out = {}
for i, b in ipairs(cjson.decode(ARGV[2])) do out[i] = apply_one((i - 1) * 4, b) end
for key, list in pairs(zadd) do chunks('ZADD', key, list) end
for key, list in pairs(zrem) do chunks('ZREM', key, list) end
for _, m in ipairs(moved) do m[1].new_rank = redis.call('ZREVRANK', GLOBAL, m[2]) or -1 end
for key, _ in pairs(expire) do redis.call('EXPIRE', key, ARGV[4]) end
-- the outbox, in the same atomic step: what each listener batch was (its effects, b.fx), what
-- it did (the reply, ranks included) and when, under its seq; each event id points to it. A
-- redelivered event id is refused above, and the client rebuilds from here the very outputs
-- it produced the first time. Kept as long as the batch's longest-lived event mark.
local keep = tonumber(ARGV[6])  -- the outbox's time to live (s), at most the marks'
for _, e in ipairs(outbox) do
  local O, b, reply, groups = e[1], e[2], e[3], e[4]
  local bid, ttl = N(reply.seq), 0
  reply.now = now
  local fields = {'f:' .. bid, b.fx, 'r:' .. bid, cjson.encode(reply)}  -- b.fx: the client's JSON, kept as is
  for _, g in ipairs(groups) do
    for _, id in ipairs(g[2]) do fields[#fields + 1] = id; fields[#fields + 1] = bid end
    if tonumber(g[3]) > ttl then ttl = tonumber(g[3]) end
  end
  chunks('HSET', O, fields)
  redis.call('EXPIRE', O, math.min(ttl, keep))
end
return cjson.encode(out)
"""

BOARD = r"""
-- One board, every listener of the batch on it: ARGV = updates (JSON [member, score, version]),
-- ttl (0: none), ranks ('1': return each moved listener's rank before and after the batch).
-- A score is set only if its version (the listener's seq) is newer than the one on the board,
-- so a late or repeated update never overwrites a newer one.
local upd = cjson.decode(ARGV[1])
local ttl, ranks = tonumber(ARGV[2]), ARGV[3] == '1'
local B, V = KEYS[1], KEYS[2]
local function chunks(cmd, key, list)
  for i = 1, #list, 4000 do redis.call(cmd, key, unpack(list, i, math.min(i + 3999, #list))) end
end
local members = {}
for i, u in ipairs(upd) do members[i] = u[1] end
local versions = {}
for i = 1, #members, 4000 do
  local part = redis.call('HMGET', V, unpack(members, i, math.min(i + 3999, #members)))
  for j, v in ipairs(part) do versions[i + j - 1] = v end
end
local fresh, zadd, zrem, hset = {}, {}, {}, {}
for i, u in ipairs(upd) do
  if u[3] > tonumber(versions[i] or '-1') then
    fresh[#fresh + 1] = u[1]
    -- a score of 0 is no entry: a board holds the same members whatever path led there
    if u[2] == 0 then zrem[#zrem + 1] = u[1] else zadd[#zadd + 1] = u[2]; zadd[#zadd + 1] = u[1] end
    hset[#hset + 1] = u[1]; hset[#hset + 1] = u[3]
  end
end
local old = {}
if ranks then for i, m in ipairs(fresh) do old[i] = redis.call('ZREVRANK', B, m) or -1 end end
chunks('ZADD', B, zadd); chunks('ZREM', B, zrem); chunks('HSET', V, hset)
if ttl > 0 then redis.call('EXPIRE', B, ttl); redis.call('EXPIRE', V, ttl) end
local out = {}
if ranks then
  for i, m in ipairs(fresh) do out[i] = {m, old[i], redis.call('ZREVRANK', B, m) or -1} end
end
if #out == 0 then return '[]' end
return cjson.encode(out)
"""


def _week_at(ms: int) -> int:
    """Monday-based week number of a UTC time in ms (as week_of, and as the script's week_at)."""
    return (ms // DAY_MS + 719_163 - 1) // 7


class _Batch:
    """One listener's events of a batch, aggregated for the APPLY script: event ids (to mark)
    and distinct set members and listening days go one by one; everything else as sums."""

    def __init__(self, rules: Rules, effects: list[Effect]) -> None:
        """``effects``: the listener's events of the batch, each event id once."""
        self.rules = rules
        self.effects = effects
        self.cohort = next((e.cohort for e in reversed(effects) if e.cohort), None)
        self.marked = sorted(effects, key=lambda e: e.at_ms // DAY_MS)  # grouped by day (mark sets)

    def mark_days(self, now_ms: int) -> list[list[Any]]:
        """[day, count, time to live (s)] per UTC day of the events' times, in the order of
        ``marked``: a mark lives `horizon` past the end of its event's day, so it outlives
        every redelivery that is not refused as stale (older than `horizon`). The time to live
        is counted from the caller's ``now``, the clock the stale rule uses too."""
        left_s = int(self.rules.horizon_days * 86_400) - now_ms // 1000
        counts: dict[int, int] = {}
        for e in self.marked:
            d = e.at_ms // DAY_MS
            counts[d] = counts.get(d, 0) + 1
        return [[str(d), n, str(max(1, (d + 1) * 86_400 + left_s))] for d, n in counts.items()]

    def blob(self) -> bytes:
        """The event ids as 16-byte strings, back to back, in the order of ``marked``."""
        return b"".join(e.id_bytes for e in self.marked)

    def without(self, ids: set[str]) -> _Batch:
        return _Batch(self.rules, [e for e in self.effects if e.event_id not in ids])

    def payload(self, user: str, now_ms: int) -> dict[str, Any]:
        """The listener's part of an APPLY call; its event ids go separately (blob)."""
        weeks: dict[int, int] = defaultdict(int)
        genres: dict[str, int] = defaultdict(int)
        incr: dict[str, int] = defaultdict(int)
        ch: dict[str, int] = defaultdict(int)
        members: dict[str, dict[str, list[Any]]] = defaultdict(dict)
        days: set[int] = set()
        karma = gain = 0
        windows = self.rules.challenge_windows
        for e in self.effects:
            karma += e.karma
            gain += max(e.karma, 0)
            weeks[_week_at(e.at_ms)] += e.karma
            if e.genre:
                genres[e.genre] += e.karma
            for stat, n in e.incr.items():
                incr[stat] += n
                for cid, (cstat, start, end) in windows.items():
                    if cstat == stat and start <= e.at_ms < end:
                        ch[cid] += n
            for name, member, stat, bonus in e.sets:
                seen = members[name].get(member)
                if seen is None or e.at_ms < seen[3]:
                    members[name][member] = [SET_FIELDS[name] + member, stat, bonus, e.at_ms]
            if e.listening_day:
                days.add(e.day)
        # (cjson reads an empty object as an empty array and the reverse: "_" keeps them objects)
        return {
            "user": user, "cohort": self.cohort or "", "fx": self.fx(),
            "n": len(self.effects), "mb": self.mark_days(now_ms),
            "karma": karma, "gain": gain, "weeks": {str(w): v for w, v in weeks.items()} or {"_": 0},
            "genres": genres or {"_": 0}, "incr": incr or {"_": 0}, "ch": ch or {"_": 0},
            "members": {n: list(m.values()) for n, m in members.items()} or {"_": []},
            "days": sorted(days),
        }

    def fx(self) -> str:
        """The effects as the outbox keeps them: what :meth:`outputs` reads, in event order."""
        return json.dumps([[e.event_id, e.at_ms, e.day, e.karma, [list(x) for x in e.sets], e.listening_day]
                           for e in self.effects], separators=(",", ":"))

    @classmethod
    def from_fx(cls, rules: Rules, user: str, fx: str) -> _Batch:
        return cls(rules, [Effect(event_id=i, user_id=user, at_ms=at, day=day, karma=k, incr={},
                                  sets=tuple(tuple(x) for x in sets), listening_day=ld)  # type: ignore[misc]
                           for i, at, day, k, sets, ld in json.loads(fx)])

    def outputs(self, user: str, reply: dict[str, Any], floor: int, now: datetime,
                into: list[dict[str, Any]]) -> None:
        """GamificationEvent fields for every event that moved the karma, in event order;
        unlocks are reported on the listener's last event of the batch. A bonus goes to the event
        that earned it: the earliest one meeting a new artist / playlist, the first listen of a
        new day."""
        first_meet: dict[str, tuple[int, str, int]] = {}  # by the member's field
        first_listen: dict[int, str] = {}
        for e in self.effects:
            for name, member, _, bonus in e.sets:
                key = SET_FIELDS[name] + member
                if key not in first_meet or e.at_ms < first_meet[key][0]:
                    first_meet[key] = (e.at_ms, e.event_id, bonus)
            if e.listening_day and e.day not in first_listen:
                first_listen[e.day] = e.event_id
        extra: dict[str, int] = defaultdict(int)
        for field_ in reply["bonus_members"] or []:
            _, event_id, bonus = first_meet[field_]
            extra[event_id] += bonus
        for day, amount in reply["day_bonus"] or []:
            extra[first_listen[day]] += amount
        raw = reply["raw_before"]
        shown = max(floor, raw)
        base = {"user_id": user, "tier": reply["tier"] or None, "achievement_unlocked": None,
                "avatar_unlocked": None, "board": None, "old_rank": None, "new_rank": None,
                "created_at": now}
        for e in self.effects:
            raw += e.karma + extra.get(e.event_id, 0)
            before, shown = shown, max(floor, raw)
            if shown != before:
                into.append({**base, "event_id": e.event_id, "karma_delta": shown - before, "karma_total": shown})
        if raw != reply["raw"]:
            raise RuntimeError(f"karma bookkeeping for {user} out of step with Redis ({raw} != {reply['raw']})")
        for item in reply["unlocked"] or []:
            kind, name = item.split(":", 1)
            into.append({**base, "event_id": self.effects[-1].event_id, "karma_delta": 0,
                         "karma_total": shown, f"{kind}_unlocked": name})


def lua_literal(value: Any) -> str:
    """A JSON-like value as Lua source: the rules are baked into the script this way, so a call
    builds them from constants instead of decoding them."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # printable characters as they are (UTF-8), quotes, backslashes and the rest as \ddd bytes
        return '"' + "".join(c if c.isprintable() and c not in '"\\' else "".join(f"\\{b:03d}" for b in c.encode())
                             for c in value) + '"'
    raise TypeError(f"no Lua literal for {type(value).__name__}")


def _rank_output(user: str, batch: _Batch, reply: dict[str, Any], old: int, new: int, floor: int,
                 now: datetime) -> dict[str, Any] | None:
    """The GamificationEvent of a move on the global board (ranks 0-based, -1: absent), if any."""
    old_rank = None if old < 0 else old + 1
    if new < 0 or old_rank == new + 1:
        return None
    return {"event_id": batch.effects[-1].event_id, "user_id": user, "karma_delta": 0,
            "karma_total": max(floor, reply["raw"]), "tier": None, "achievement_unlocked": None,
            "avatar_unlocked": None, "board": "global", "old_rank": old_rank, "new_rank": new + 1,
            "created_at": now}


def user_keys(user: str, prefix: str = PREFIX) -> list[str]:
    """The listener's keys, in the order APPLY takes them: state hash, the prefix of the event
    mark sets (``<prefix>:<day>``, one per day), listening days, outbox."""
    tag = f"{prefix}:{{{user}}}"
    return [f"{tag}:s", f"{tag}:m", f"{tag}:days", f"{tag}:o"]


def board_key(board: str, prefix: str = PREFIX) -> str:
    return f"{prefix}:lb:{{{board}}}"


@dataclass
class Applied:
    applied: int = 0
    duplicates: int = 0
    stale: int = 0
    reemitted: int = 0  # outputs of redelivered events, rebuilt from the outbox
    outputs: list[dict[str, Any]] = field(default_factory=list)  # GamificationEvent fields
    rank_changes: dict[str, tuple[int | None, int]] = field(default_factory=dict)


class GamificationStore:
    """Applies effects to Redis and reads profiles and boards back."""

    def __init__(self, client: redis.Redis, rules: Rules, prefix: str = PREFIX,
                 cluster: bool | None = None) -> None:
        self.redis = client
        # on one Redis the boards are written by APPLY itself; on Redis Cluster by a second pass
        self.cluster = isinstance(client, redis.RedisCluster) if cluster is None else cluster
        self.rules = rules
        self.prefix = prefix
        # the rules are baked into the script (a Lua long string), so each call decodes them once
        self._apply = client.register_script(APPLY.replace("= RULES", "= " + lua_literal(json.loads(rules.lua_args)), 1))
        self._board = client.register_script(BOARD)

    # --- write side ---------------------------------------------------------------------
    def _exchange(self, users: list[str], pending: dict[str, _Batch],
                  now_ms: int) -> Iterator[tuple[list[str], list[Any]]]:
        """Run APPLY over these listeners; yield (listeners, their replies) group by group.

        One Redis: the listeners go in chunks of about CHUNK_EVENTS events over one connection.
        Every chunk is sent before the first reply is read, so Redis runs a chunk while this
        process encodes the next one and reads the results of the last. Redis Cluster: one call
        per hash slot (a script may only touch keys of one slot)."""
        if self.cluster:
            by_slot: dict[int, list[str]] = defaultdict(list)
            for u in users:
                by_slot[key_slot(user_keys(u, self.prefix)[0].encode())].append(u)
            # (redis-py's cluster pipeline refuses EVALSHA: one call per slot, each routed by its keys)
            for group in by_slot.values():
                yield group, json.loads(self._apply(keys=self._keys(group), args=self._args(group, pending, now_ms, "")))
            return
        groups, group, size = [], [], 0
        for u in users:
            group.append(u)
            size += len(pending[u].effects)
            if size >= (CHUNK_EVENTS if groups else CHUNK_EVENTS // 4):  # a small first one: Redis starts sooner
                groups.append(group)
                group, size = [], 0
        if group:
            groups.append(group)
        boards = f"{self.prefix}:lb:"
        conn = self.redis.connection_pool.get_connection()
        try:
            for group in groups:
                keys = self._keys(group)
                conn.send_command("EVALSHA", self._apply.sha, len(keys), *keys,
                                  *self._args(group, pending, now_ms, boards))
            replies = [conn.read_response() for _ in groups[:1]]  # NOSCRIPT shows on the first
        except redis.exceptions.NoScriptError:
            for _ in groups[1:]:  # drain the rest, load the script, and run the round again
                try:
                    conn.read_response()
                except redis.exceptions.NoScriptError:
                    pass
            self.redis.connection_pool.release(conn)
            self.redis.script_load(self._apply.script)
            yield from self._exchange(users, pending, now_ms)
            return
        except BaseException:
            conn.disconnect()
            self.redis.connection_pool.release(conn)
            raise
        try:
            yield groups[0], json.loads(replies[0])
            for group in groups[1:]:
                yield group, json.loads(conn.read_response())
        except BaseException:
            conn.disconnect()  # replies may be left unread on this connection
            raise
        finally:
            self.redis.connection_pool.release(conn)

    def _keys(self, users: list[str]) -> list[str]:
        return [k for u in users for k in user_keys(u, self.prefix)]

    @staticmethod
    def _args(users: list[str], pending: dict[str, _Batch], now_ms: int, boards: str) -> list[Any]:
        """APPLY's ARGV: now, the listeners' batches (JSON), the boards' prefix ('' when the
        client writes them), the weekly boards' TTL, and every event id as 16 bytes."""
        body = json.dumps([pending[u].payload(u, now_ms) for u in users], separators=(",", ":"))
        return [now_ms, body, boards, WEEKLY_TTL_S, b"".join(pending[u].blob() for u in users), OUTBOX_TTL_S]

    def apply(self, effects: list[Effect], now: datetime | None = None) -> Applied:
        """Apply a batch: one pipeline of per-listener scripts, one of board updates. One
        attempt: the caller owns the retry policy (the worker's delivery retries transient
        errors with backoff; every step is idempotent, so that is safe)."""
        return self._apply_once(effects, now or datetime.now(UTC))

    def _apply_once(self, effects: list[Effect], now: datetime) -> Applied:
        out = Applied()
        if not effects:
            return out
        now_ms = int(now.timestamp() * 1000)
        now = datetime.fromtimestamp(now_ms / 1000, UTC)  # the outbox keeps ms: outputs carry the same time
        oldest = now_ms - int(self.rules.horizon_days * DAY_MS)
        by_user: dict[str, list[Effect]] = {}
        seen: set[str] = set()
        for e in effects:
            if e.at_ms < oldest:
                out.stale += 1  # too old to be sure it was not applied before: refused
            elif e.event_id in seen:
                out.duplicates += 1
            elif len(e.id_bytes) != 16:
                raise ValueError(f"effect of {e.event_id} lacks its 16 id bytes; build effects with agents.gamify.effect_for")
            else:
                seen.add(e.event_id)
                mine = by_user.get(e.user_id)
                if mine is None:
                    by_user[e.user_id] = [e]
                else:
                    mine.append(e)
        pending = {user: _Batch(self.rules, mine) for user, mine in by_user.items()}
        done: dict[str, tuple[_Batch, dict[str, Any]]] = {}
        redelivered: dict[str, set[str]] = defaultdict(set)
        floor = self.rules.karma["floor"]
        for _ in range(5):  # one more round per redelivery found: already-applied ids are dropped
            users = [u for u, b in pending.items() if b.effects]
            if not users:
                break
            retry: dict[str, _Batch] = {}
            for group, replies in self._exchange(users, pending, now_ms):
                for user, (status, body) in zip(group, replies, strict=True):
                    batch = pending[user]
                    if status == "ok":
                        done[user] = (batch, body)
                        out.applied += len(batch.effects)
                        batch.outputs(user, body, floor, now, out.outputs)
                    else:
                        already = {batch.marked[i - 1].event_id for i in body}
                        out.duplicates += len(already)
                        redelivered[user] |= already
                        retry[user] = batch.without(already)
            pending = retry
        else:
            raise RuntimeError("listener batches kept meeting concurrent writers; retry the batch")

        ranks = self._write_boards(done) if self.cluster else {
            user: (reply["old_rank"], reply["new_rank"]) for user, (_, reply) in done.items()}
        for user, (old, new) in ranks.items():
            batch, reply = done[user]
            moved = _rank_output(user, batch, reply, old, new, floor, now)
            if moved is not None:
                out.rank_changes[user] = (moved["old_rank"], moved["new_rank"])
                out.outputs.append(moved)
        if redelivered:
            again = self._from_outbox(redelivered)
            out.reemitted += len(again)
            out.outputs.extend(again)
        return out

    def _from_outbox(self, redelivered: dict[str, set[str]]) -> list[dict[str, Any]]:
        """The outputs the first apply of these (already applied) events produced, rebuilt from
        the outbox APPLY kept with them: the same GamificationEvents, created_at included (a rank
        change is in it on one Redis; on Redis Cluster boards are written after APPLY)."""
        floor = self.rules.karma["floor"]
        found: list[dict[str, Any]] = []
        for user, ids in redelivered.items():
            key = user_keys(user, self.prefix)[3]
            bids = {b for b in self.redis.hmget(key, [uuid.UUID(i).bytes for i in sorted(ids)]) if b is not None}
            for bid in sorted(bids):
                fx, raw = self.redis.hmget(key, [b"f:" + bid, b"r:" + bid])
                if fx is None or raw is None:
                    continue
                batch = _Batch.from_fx(self.rules, user, fx)
                reply = json.loads(raw)
                when = datetime.fromtimestamp(reply["now"] / 1000, UTC)
                got: list[dict[str, Any]] = []
                batch.outputs(user, reply, floor, when, got)
                moved = _rank_output(user, batch, reply, reply["old_rank"], reply["new_rank"], floor, when)
                if moved is not None:
                    got.append(moved)
                found.extend(g for g in got if g["event_id"] in ids)
        return found

    def _write_boards(self, done: dict[str, tuple[_Batch, dict[str, Any]]]) -> dict[str, tuple[int, int]]:
        """Redis Cluster: boards live in other slots than the listeners, so they are written in
        a second pass, one BOARD call per board, guarded by the listeners' seq. Returns each
        moved listener's global rank (0-based, -1: absent) before and after the batch."""
        boards: dict[str, list[list[Any]]] = defaultdict(list)
        floor = self.rules.karma["floor"]
        for user, (batch, reply) in done.items():
            seq, karma = reply["seq"], max(floor, reply["raw"])
            boards["global"].append([user, karma, seq])
            if batch.cohort:
                boards[f"cohort:{batch.cohort}"].append([user, karma, seq])
            for wk, value in (reply["weeks"] or {}).items():
                boards[f"weekly:{wk}"].append([user, value, seq])
            for genre, value in (reply["genres"] or {}).items():
                boards[f"genre:{genre}"].append([user, value, seq])
        ranks: dict[str, tuple[int, int]] = {}
        for name, updates in boards.items():  # one call per board (each board is one slot)
            key = board_key(name, self.prefix)
            ttl = WEEKLY_TTL_S if name.startswith("weekly:") else 0
            reply = self._board(keys=[key, f"{key}:v"], args=[json.dumps(updates), ttl, 1 if name == "global" else 0])
            if name == "global":  # rank changes are reported for the global board
                ranks = {user: (old, new) for user, old, new in json.loads(reply)}
        return ranks

    # --- generation marker: did Redis lose its state? ------------------------------------
    def generation_key(self) -> str:
        return f"{self.prefix}:meta:generation"

    def ensure_generation(self, fresh: bool) -> None:
        """Create the store's generation marker when the store is new (``fresh``: no event was
        ever recorded in the analytics store either). A marker that vanishes later means Redis
        lost its state (restarted without persistence, flushed, failed over to an empty
        replica): karma and boards are then incomplete until rebuilt from the event log."""
        if fresh:
            self.redis.set(self.generation_key(), uuid.uuid4().hex, nx=True)

    def check_generation(self) -> str | None:
        """None while the marker stands; else what happened. A missing marker is replaced by
        ``lost:<id>``, so every worker (and every restart) sees the loss until a rebuild
        (``encore rebuild-gamification``) writes a fresh marker."""
        key = self.generation_key()
        got = self.redis.get(key)
        if got is None:
            self.redis.set(key, f"lost:{uuid.uuid4().hex}", nx=True)
            return "the generation marker is gone: Redis lost its state"
        if got.startswith(b"lost:"):
            return "Redis lost its state and has not been rebuilt since"
        return None

    def mark_rebuilt(self) -> str:
        marker = uuid.uuid4().hex
        self.redis.set(self.generation_key(), marker)
        return marker

    def reset(self) -> int:
        """Delete every key under this store's prefix (before a rebuild). Returns how many."""
        n = 0
        batch: list[bytes] = []
        for key in self.redis.scan_iter(match=f"{self.prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                n += self.redis.unlink(*batch)
                batch = []
        if batch:
            n += self.redis.unlink(*batch)
        return n

    # --- read side ----------------------------------------------------------------------
    def profile(self, user: str, today: int | None = None) -> dict[str, Any]:
        """Karma, tier, avatar items, streak, achievements and challenges with progress.
        ``today`` (a local day ordinal) decides whether the streak is still alive; default:
        the listener's last listening day."""
        s, _, d, _ = user_keys(user, self.prefix)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(s)
        pipe.zrevrange(d, 0, 400)
        state, days = pipe.execute()
        fields = {k.decode(): int(v) for k, v in state.items()}
        stats = {k: v for k, v in fields.items() if not k.startswith((*SET_FIELDS.values(), "x:", "v:"))}
        achieved_s = {k[2:] for k in fields if k.startswith("x:")}
        avatars = sorted(k[2:] for k in fields if k.startswith("v:"))
        earned = stats.get("earned", 0)
        floor = self.rules.karma["floor"]
        days_i = [int(x) for x in days]
        streak = 0
        gap = 1 + self.rules.grace_days
        if days_i and (today is None or today - days_i[0] <= gap):
            streak = 1
            for a, b in zip(days_i, days_i[1:], strict=False):
                if a - b > gap:
                    break
                streak += 1
        tier = next((t.name for t in reversed(self.rules.tiers) if earned >= t.min_karma), None)
        return {
            "user_id": user,
            "karma": max(floor, stats.get("karma", 0)),
            "earned": earned,
            "tier": tier,
            "avatar_items": avatars,
            "streak": streak,
            "best_streak": stats.get("best_streak", 0),
            "achievements": [
                {"id": a.id, "title": a.title, "progress": min(earned if a.stat == "karma" else stats.get(a.stat, 0), a.target),
                 "target": a.target, "unlocked": a.id in achieved_s}
                for a in self.rules.achievements
            ],
            "challenges": [
                {"id": c.id, "title": c.title, "progress": min(stats.get(f"ch:{c.id}", 0), c.target),
                 "target": c.target, "completed": f"challenge:{c.id}" in achieved_s,
                 "start": c.start.isoformat(), "end": c.end.isoformat()}
                for c in self.rules.challenges
            ],
            "stats": {k: v for k, v in stats.items() if ":" not in k},
        }

    def top(self, board: str = "global", n: int = 10) -> list[tuple[str, float]]:
        rows = self.redis.zrevrange(board_key(board, self.prefix), 0, n - 1, withscores=True)
        return [(m.decode(), s) for m, s in rows]

    def scores(self, users: list[str], board: str = "global") -> dict[str, float | None]:
        """Each listener's score on a board (None: not on it)."""
        got = self.redis.zmscore(board_key(board, self.prefix), users) if users else []
        return dict(zip(users, got, strict=True))

    def rank(self, user: str, board: str = "global") -> int | None:
        r = self.redis.zrevrank(board_key(board, self.prefix), user)
        return None if r is None else int(r) + 1

    def around(self, user: str, board: str = "global", k: int = 2) -> list[tuple[int, str, float]]:
        """The listener and up to ``k`` neighbours on each side: (rank, user, score)."""
        key = board_key(board, self.prefix)
        r = self.redis.zrevrank(key, user)
        if r is None:
            return []
        start = max(0, int(r) - k)
        rows = self.redis.zrevrange(key, start, int(r) + k, withscores=True)
        return [(start + i + 1, m.decode(), s) for i, (m, s) in enumerate(rows)]


def weekly_board(at: datetime) -> str:
    """The name of the weekly board covering this time."""
    return f"weekly:{week_of(at)}"
