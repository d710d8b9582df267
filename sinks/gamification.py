"""Gamification state in Redis: applied once per event id, by atomic Lua scripts.

Keys (Redis Cluster ready: ``{...}`` hash tags keep one listener's keys in one slot, and each
board's two keys in one slot)::

    enc:{USER}:s          hash   stats, karma (raw sum), earned, wk:<week>, gk:<genre>, ch:<id>, seq
    enc:{USER}:m          zset   applied event ids (score: when), pruned after the horizon
    enc:{USER}:artists    zset   artists / genres / playlists the listener has met, scored by
    enc:{USER}:genres     zset   the time of the first meeting (so bonuses and challenge
    enc:{USER}:playlists  zset   progress belong to it, in whatever order events arrive)
    enc:{USER}:days       zset   local days with a completed listen (streaks)
    enc:{USER}:ach        set    achievements unlocked
    enc:{USER}:av         set    avatar items unlocked
    enc:lb:{BOARD}        zset   leaderboard; BOARD = global | weekly:<n> | genre:<g> | cohort:<c>
                                 (weekly: Monday-based week number of the UTC time; genre: the
                                 base karma of events on that genre's tracks)
    enc:lb:{BOARD}:v      hash   per-listener version (their seq) of the score on the board

Per batch: one pipeline of APPLY calls (one per listener: their events of the batch, aggregated),
then one pipeline of BOARD calls (one per board touched). APPLY checks every event id of the
listener's batch; if none was applied before it marks them all and applies every change to the
listener's keys atomically, else it changes nothing and names the applied ones, which the client
drops before sending the rest again (a redelivered event id changes nothing). BOARD sets
absolute scores guarded by the listener's seq, so a late or repeated update never overwrites a
newer one. Every rule is order-independent (sums, set membership, streak links between listening
days), so the same events in any order or split give the same state.

Order of ties on a board: equal scores rank by member id, reverse byte order (Redis ZREVRANK).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from agents.gamify import DAY_MS, Effect, Rules, week_of

PREFIX = "enc"
WEEKLY_TTL_S = 5 * 7 * 86_400

APPLY = r"""
-- One listener's batch, aggregated by the client (see _Batch): ARGV = rules (JSON), batch
-- (JSON), now_ms. Either every event of the batch is new and all of it is applied, or nothing
-- is written and the already-applied ids come back ({'dup', ids}) for the client to drop
-- before it sends the rest again. Check and apply are one atomic script.
local args = cjson.decode(ARGV[1])
local b = cjson.decode(ARGV[2])
local now = tonumber(ARGV[3])
local S, M, D, ACH, AV = KEYS[1], KEYS[2], KEYS[6], KEYS[7], KEYS[8]
local setkey = {artists = KEYS[3], genres = KEYS[4], playlists = KEYS[5]}
local horizon, gap, bonus, floor = args.horizon_ms, args.link_gap, args.streak_bonus, args.floor

local scores = redis.call('ZMSCORE', M, unpack(b.ids))
local dups = {}
for i, id in ipairs(b.ids) do if scores[i] then dups[#dups + 1] = id end end
if #dups > 0 then return {'dup', dups} end
redis.call('ZREMRANGEBYSCORE', M, '-inf', now - horizon)
local marks = {}
for i, id in ipairs(b.ids) do marks[#marks + 1] = math.max(b.ats[i], now); marks[#marks + 1] = id end
for i = 1, #marks, 4000 do redis.call('ZADD', M, unpack(marks, i, math.min(i + 3999, #marks))) end

-- the state hash is cached here: each field read at most once, written back once at the end
local st, dirty = {}, {}
local function get(f)
  local v = st[f]
  if v == nil then v = tonumber(redis.call('HGET', S, f) or '0'); st[f] = v end
  return v
end
local function add(f, n) if n ~= 0 then st[f] = get(f) + n; dirty[f] = true end end
do  -- one HMGET for every field this batch is known to read
  local fields = {'karma', 'earned', 'seq', 'best_streak'}
  for w, _ in pairs(b.weeks) do fields[#fields + 1] = 'wk:' .. w end
  for g, _ in pairs(b.genres) do fields[#fields + 1] = 'gk:' .. g end
  for stat, _ in pairs(b.incr) do fields[#fields + 1] = stat end
  for c, spec in pairs(args.challenges) do fields[#fields + 1] = 'ch:' .. c end
  for _, a in ipairs(args.achievements) do fields[#fields + 1] = a[2] end
  for _, list in pairs(b.members) do if list[1] then fields[#fields + 1] = list[1][2] end end
  local values = redis.call('HMGET', S, unpack(fields))
  for i, f in ipairs(fields) do st[f] = tonumber(values[i] or '0') end
end
local function week(day) return math.floor((day - 1) / 7) end
local function week_at(ms) return week(math.floor(ms / 86400000) + 719163) end
local function progress(stat, at, n)
  for c, spec in pairs(args.challenges) do
    if spec[1] == stat and at >= spec[2] and at < spec[3] then add('ch:' .. c, n) end
  end
end
local function neighbour(day, dir)
  local r
  if dir < 0 then r = redis.call('ZREVRANGEBYSCORE', D, '(' .. day, '-inf', 'LIMIT', 0, 1)
  else r = redis.call('ZRANGEBYSCORE', D, '(' .. day, '+inf', 'LIMIT', 0, 1) end
  return tonumber(r[1])
end

local raw_before, earned_before, first = get('karma'), get('earned'), get('seq') == 0
local weeks, genres = {}, {}
-- every amount is booked to a week; their sum is the karma change
local delta, gain = b.karma, b.gain
local function book(w, v) weeks[w] = true; add('wk:' .. w, v) end
for w, v in pairs(b.weeks) do book(tonumber(w), v) end
for g, v in pairs(b.genres) do genres[g] = true; add('gk:' .. g, v) end
for stat, n in pairs(b.incr) do add(stat, n) end
for c, n in pairs(b.ch) do add('ch:' .. c, n) end

-- sets remember when the listener first met each member; its bonus and any challenge progress
-- belong to that first time, whatever order the events arrive in (b.members[set]: member,
-- stat, bonus, earliest time in this batch)
local bonus_members = {}
for name, list in pairs(b.members) do
  if #list > 0 then
    local names = {}
    for i, m in ipairs(list) do names[i] = m[1] end
    local met = redis.call('ZMSCORE', setkey[name], unpack(names))
    local changed = {}
    for i, m in ipairs(list) do
      local member, stat, v, at = m[1], m[2], m[3], m[4]
      local first_met = tonumber(met[i])
      if not first_met then
        changed[#changed + 1] = at; changed[#changed + 1] = member
        add(stat, 1); book(week_at(at), v); delta = delta + v; gain = gain + v; progress(stat, at, 1)
        if v ~= 0 then bonus_members[#bonus_members + 1] = name .. '\t' .. member end
      elseif at < first_met then
        changed[#changed + 1] = at; changed[#changed + 1] = member
        book(week_at(first_met), -v); book(week_at(at), v)
        progress(stat, first_met, -1); progress(stat, at, 1)
      end
    end
    for i = 1, #changed, 4000 do redis.call('ZADD', setkey[name], unpack(changed, i, math.min(i + 3999, #changed))) end
  end
end

-- streaks: a link joins two listening days at most `gap` days apart; each link is worth the
-- streak bonus, booked to the week of its later day
local day_bonus = {}
for _, day in ipairs(b.days) do
  if redis.call('ZADD', D, 'NX', day, day) == 1 then
    local p, n = neighbour(day, -1), neighbour(day, 1)
    local links = 0
    if p and day - p <= gap then book(week(day), bonus); links = links + 1 end
    if n and n - day <= gap then book(week(n), bonus); links = links + 1 end
    if p and n and n - p <= gap then book(week(n), -bonus); links = links - 1 end
    delta = delta + links * bonus; gain = gain + links * bonus
    if links ~= 0 then day_bonus[#day_bonus + 1] = {day, links * bonus} end
    local run, cur = 1, day
    while true do local q = neighbour(cur, -1); if q and cur - q <= gap then run = run + 1; cur = q else break end end
    cur = day
    while true do local q = neighbour(cur, 1); if q and q - cur <= gap then run = run + 1; cur = q else break end end
    if run > get('best_streak') then add('best_streak', run - get('best_streak')) end
  end
end
add('karma', delta)
add('earned', gain)
add('seq', #b.ids)
local earned = get('earned')

local unlocked = {}
local achieved = {}
for _, a in ipairs(redis.call('SMEMBERS', ACH)) do achieved[a] = true end
for _, a in ipairs(args.achievements) do
  if not achieved[a[1]] then
    local value = (a[2] == 'karma') and earned or get(a[2])
    if value >= a[3] then
      redis.call('SADD', ACH, a[1]); unlocked[#unlocked + 1] = 'achievement:' .. a[1]
      if a[4] ~= '' and redis.call('SADD', AV, a[4]) == 1 then unlocked[#unlocked + 1] = 'avatar:' .. a[4] end
    end
  end
end
-- earned never falls, so a tier is unlocked exactly when earned first reaches it
local tier = ''
for _, t in ipairs(args.tiers) do
  if earned >= t[2] then
    tier = t[1]
    if (first or t[2] > earned_before) and redis.call('SADD', AV, t[3]) == 1 then
      unlocked[#unlocked + 1] = 'avatar:' .. t[3]
    end
  end
end

-- write back; fields back at zero are removed, so the state never depends on the path taken
local hset, hdel = {}, {}
for f, _ in pairs(dirty) do
  if st[f] == 0 then hdel[#hdel + 1] = f else hset[#hset + 1] = f; hset[#hset + 1] = st[f] end
end
for i = 1, #hset, 4000 do redis.call('HSET', S, unpack(hset, i, math.min(i + 3999, #hset))) end
for i = 1, #hdel, 4000 do redis.call('HDEL', S, unpack(hdel, i, math.min(i + 3999, #hdel))) end
local week_scores, genre_scores = {}, {}
for w, _ in pairs(weeks) do week_scores[tostring(w)] = get('wk:' .. w) end
for g, _ in pairs(genres) do genre_scores[g] = get('gk:' .. g) end
return {'ok', cjson.encode({raw_before = raw_before, raw = get('karma'), seq = get('seq'), tier = tier,
  weeks = week_scores, genres = genre_scores, unlocked = unlocked, bonus_members = bonus_members,
  day_bonus = day_bonus})}
"""

BOARD = r"""
local out = {}
for _, u in ipairs(cjson.decode(ARGV[1])) do
  local v = tonumber(redis.call('HGET', KEYS[2], u[1]) or '-1')
  if u[3] > v then
    local old = redis.call('ZREVRANK', KEYS[1], u[1])
    -- a score of 0 is no entry: a board holds the same members whatever path led there
    if u[2] == 0 then redis.call('ZREM', KEYS[1], u[1]) else redis.call('ZADD', KEYS[1], u[2], u[1]) end
    redis.call('HSET', KEYS[2], u[1], u[3])
    out[#out + 1] = {u[1], old or -1, redis.call('ZREVRANK', KEYS[1], u[1]) or -1}
  end
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl); redis.call('EXPIRE', KEYS[2], ttl) end
if #out == 0 then return '[]' end
return cjson.encode(out)
"""


def _week_at(ms: int) -> int:
    """Monday-based week number of a UTC time in ms (as week_of, and as the script's week_at)."""
    return (ms // DAY_MS + 719_163 - 1) // 7


class _Batch:
    """One listener's events of a batch, aggregated for the APPLY script: event ids (to mark)
    and distinct set members and listening days go one by one; everything else as sums."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.effects: list[Effect] = []
        self.ids: set[str] = set()
        self.cohort: str | None = None

    def add(self, e: Effect) -> bool:
        """False if this event id is already in the batch."""
        if e.event_id in self.ids:
            return False
        self.ids.add(e.event_id)
        self.effects.append(e)
        if e.cohort:
            self.cohort = e.cohort
        return True

    def without(self, ids: set[str]) -> _Batch:
        other = _Batch(self.rules)
        for e in self.effects:
            if e.event_id not in ids:
                other.add(e)
        return other

    def payload(self) -> str:
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
                    members[name][member] = [member, stat, bonus, e.at_ms]
            if e.listening_day:
                days.add(e.day)
        # (cjson reads an empty object as an empty array and the reverse: "_" keeps them objects)
        return json.dumps({
            "ids": [e.event_id for e in self.effects], "ats": [e.at_ms for e in self.effects],
            "karma": karma, "gain": gain, "weeks": {str(w): v for w, v in weeks.items()} or {"_": 0},
            "genres": genres or {"_": 0}, "incr": incr or {"_": 0}, "ch": ch or {"_": 0},
            "members": {n: list(m.values()) for n, m in members.items()} or {"_": []},
            "days": sorted(days),
        }, separators=(",", ":"))

    def outputs(self, user: str, reply: dict[str, Any], floor: int, now: datetime,
                into: list[dict[str, Any]]) -> None:
        """GamificationEvent fields for every event that moved the karma, in event order;
        unlocks are reported on the listener's last event of the batch. A bonus goes to the event
        that earned it: the earliest one meeting a new artist / playlist, the first listen of a
        new day."""
        first_meet: dict[tuple[str, str], tuple[int, str, int]] = {}
        first_listen: dict[int, str] = {}
        for e in self.effects:
            for name, member, _, bonus in e.sets:
                key = (name, member)
                if key not in first_meet or e.at_ms < first_meet[key][0]:
                    first_meet[key] = (e.at_ms, e.event_id, bonus)
            if e.listening_day and e.day not in first_listen:
                first_listen[e.day] = e.event_id
        extra: dict[str, int] = defaultdict(int)
        for item in reply["bonus_members"] or []:
            name, member = item.split("\t", 1)
            _, event_id, bonus = first_meet[(name, member)]
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


def user_keys(user: str, prefix: str = PREFIX) -> list[str]:
    tag = f"{prefix}:{{{user}}}"
    return [f"{tag}:s", f"{tag}:m", f"{tag}:artists", f"{tag}:genres", f"{tag}:playlists",
            f"{tag}:days", f"{tag}:ach", f"{tag}:av"]


def board_key(board: str, prefix: str = PREFIX) -> str:
    return f"{prefix}:lb:{{{board}}}"


@dataclass
class Applied:
    applied: int = 0
    duplicates: int = 0
    stale: int = 0
    outputs: list[dict[str, Any]] = field(default_factory=list)  # GamificationEvent fields
    rank_changes: dict[str, tuple[int | None, int]] = field(default_factory=dict)


class GamificationStore:
    """Applies effects to Redis and reads profiles and boards back."""

    def __init__(self, client: redis.Redis, rules: Rules, prefix: str = PREFIX, retries: int = 3) -> None:
        self.redis = client
        self.rules = rules
        self.prefix = prefix
        self.retries = retries
        self._apply = client.register_script(APPLY)
        self._board = client.register_script(BOARD)

    # --- write side ---------------------------------------------------------------------
    def apply(self, effects: list[Effect], now: datetime | None = None) -> Applied:
        """Apply a batch: one pipeline of per-listener scripts, one of board updates.
        Retries with backoff on connection errors (safe: every step is idempotent)."""
        for attempt in range(self.retries + 1):
            try:
                return self._apply_once(effects, now or datetime.now(UTC))
            except (redis.ConnectionError, redis.TimeoutError):
                if attempt == self.retries:
                    raise
                time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    def _apply_once(self, effects: list[Effect], now: datetime) -> Applied:
        out = Applied()
        if not effects:
            return out
        now_ms = int(now.timestamp() * 1000)
        oldest = now_ms - int(self.rules.horizon_days * DAY_MS)
        pending: dict[str, _Batch] = {}
        for e in effects:
            if e.at_ms < oldest:
                out.stale += 1  # too old to be sure it was not applied before: refused
                continue
            batch = pending.get(e.user_id)
            if batch is None:
                batch = pending[e.user_id] = _Batch(self.rules)
            if not batch.add(e):
                out.duplicates += 1
        done: dict[str, tuple[_Batch, dict[str, Any]]] = {}
        for _ in range(5):  # one more round per redelivery found: already-applied ids are dropped
            users = [u for u, b in pending.items() if b.effects]
            if not users:
                break
            pipe = self.redis.pipeline(transaction=False)
            for user in users:
                self._apply(keys=user_keys(user, self.prefix),
                            args=[self.rules.lua_args, pending[user].payload(), now_ms], client=pipe)
            retry: dict[str, _Batch] = {}
            for user, (status, body) in zip(users, pipe.execute(), strict=True):
                if status == b"ok":
                    done[user] = (pending[user], json.loads(body))
                else:
                    already = {i.decode() for i in body}
                    out.duplicates += len(already)
                    retry[user] = pending[user].without(already)
            pending = retry
        else:
            raise RuntimeError("listener batches kept meeting concurrent writers; retry the batch")

        boards: dict[str, list[list[Any]]] = defaultdict(list)
        floor = self.rules.karma["floor"]
        for user, (batch, reply) in done.items():
            out.applied += len(batch.effects)
            batch.outputs(user, reply, floor, now, out.outputs)
            seq, karma = reply["seq"], max(floor, reply["raw"])
            boards["global"].append([user, karma, seq])
            if batch.cohort:
                boards[f"cohort:{batch.cohort}"].append([user, karma, seq])
            for wk, value in (reply["weeks"] or {}).items():
                boards[f"weekly:{wk}"].append([user, value, seq])
            for genre, value in (reply["genres"] or {}).items():
                boards[f"genre:{genre}"].append([user, value, seq])
        if boards:
            names = list(boards)
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                key = board_key(name, self.prefix)
                ttl = WEEKLY_TTL_S if name.startswith("weekly:") else 0
                self._board(keys=[key, f"{key}:v"], args=[json.dumps(boards[name]), ttl], client=pipe)
            for name, reply in zip(names, pipe.execute(), strict=True):
                if name != "global":
                    continue
                for user, old, new in json.loads(reply):
                    old_rank = None if old < 0 else old + 1
                    if new >= 0 and old_rank != new + 1:
                        batch, summary = done[user]
                        out.rank_changes[user] = (old_rank, new + 1)
                        out.outputs.append({
                            "event_id": batch.effects[-1].event_id, "user_id": user, "karma_delta": 0,
                            "karma_total": max(floor, summary["raw"]), "tier": None,
                            "achievement_unlocked": None, "avatar_unlocked": None, "board": "global",
                            "old_rank": old_rank, "new_rank": new + 1, "created_at": now,
                        })
        return out

    # --- read side ----------------------------------------------------------------------
    def profile(self, user: str, today: int | None = None) -> dict[str, Any]:
        """Karma, tier, avatar items, streak, achievements and challenges with progress.
        ``today`` (a local day ordinal) decides whether the streak is still alive; default:
        the listener's last listening day."""
        s, _, _, _, _, d, ach, av = user_keys(user, self.prefix)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(s)
        pipe.smembers(ach)
        pipe.smembers(av)
        pipe.zrevrange(d, 0, 400)
        stats_raw, achieved, avatars, days = pipe.execute()
        stats = {k.decode(): int(v) for k, v in stats_raw.items()}
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
        achieved_s = {x.decode() for x in achieved}
        tier = next((t.name for t in reversed(self.rules.tiers) if earned >= t.min_karma), None)
        return {
            "user_id": user,
            "karma": max(floor, stats.get("karma", 0)),
            "earned": earned,
            "tier": tier,
            "avatar_items": sorted(x.decode() for x in avatars),
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
