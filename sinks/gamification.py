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

Per batch: one pipeline of APPLY calls (one per listener, all their events of the batch), then
one pipeline of BOARD calls (one per board touched). APPLY marks each event id and applies every
change to the listener's keys atomically; a redelivered event id changes nothing. BOARD sets
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
from uuid import UUID

import redis

from agents.gamify import Effect, Rules, week_of

PREFIX = "enc"
WEEKLY_TTL_S = 5 * 7 * 86_400

APPLY = r"""
-- ARGV: rules (JSON), effects (JSON list of [id, at_ms, day, karma, listen, genre,
--       {stat: n}, [[set, member, stat, bonus], ...]]), now_ms
local args = cjson.decode(ARGV[1])
local effects = cjson.decode(ARGV[2])
local now = tonumber(ARGV[3])
local S, M, D, ACH, AV = KEYS[1], KEYS[2], KEYS[6], KEYS[7], KEYS[8]
local setkey = {artists = KEYS[3], genres = KEYS[4], playlists = KEYS[5]}
local horizon, gap, bonus, floor = args.horizon_ms, args.link_gap, args.streak_bonus, args.floor
redis.call('ZREMRANGEBYSCORE', M, '-inf', now - horizon)

-- Everything this batch touches is read up front in a few calls (ZMSCORE, SMEMBERS, HGET on
-- first use), applied event by event in Lua tables, and written back once at the end.
local st, dirty = {}, {}
local function get(f)
  local v = st[f]
  if v == nil then v = tonumber(redis.call('HGET', S, f) or '0'); st[f] = v end
  return v
end
local function add(f, n) local v = get(f) + n; st[f] = v; dirty[f] = true; return v end
local achieved = {}
for _, a in ipairs(redis.call('SMEMBERS', ACH)) do achieved[a] = true end

local ids, wanted = {}, {artists = {}, genres = {}, playlists = {}}
for i, e in ipairs(effects) do
  ids[i] = e[1]
  for _, s in ipairs(e[8]) do wanted[s[1]][#wanted[s[1]] + 1] = s[2] end
end
local marked = {}
if #ids > 0 then
  local scores = redis.call('ZMSCORE', M, unpack(ids))
  for i, id in ipairs(ids) do if scores[i] then marked[id] = true end end
end
local met, changed = {}, {}
for name, members in pairs(wanted) do
  met[name], changed[name] = {}, {}
  if #members > 0 then
    local scores = redis.call('ZMSCORE', setkey[name], unpack(members))
    for i, m in ipairs(members) do if scores[i] then met[name][m] = tonumber(scores[i]) end end
  end
end

local function shown(raw) if raw < floor then return floor end return raw end
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

-- per event, six flat fields: id, status (0 applied, 1 duplicate, 2 stale), karma change,
-- karma total, tier, unlocks ("achievement:x|avatar:y|"); flat arrays cross to the client fastest
local results, weeks, genres, marks = {}, {}, {}, {}
local function result(id, status, d, total, tier, unl)
  local n = #results
  results[n + 1] = id; results[n + 2] = status; results[n + 3] = d
  results[n + 4] = total; results[n + 5] = tier; results[n + 6] = unl
end
local delta, gain = 0, 0
-- every amount is booked to a week; their sum is the karma change
-- (moving an amount between weeks books -v and +v and earns nothing)
local function book(w, v) weeks[w] = true; add('wk:' .. w, v); delta = delta + v end
for _, e in ipairs(effects) do
  local id, at, day, karma, listen, genre, incr, sets = e[1], e[2], e[3], e[4], e[5], e[6], e[7], e[8]
  if at < now - horizon then
    result(id, 2, 0, 0, '', '')
  elseif marked[id] then
    result(id, 1, 0, 0, '', '')
  else
    marked[id] = true
    marks[#marks + 1] = math.max(at, now); marks[#marks + 1] = id
    local before = shown(get('karma'))
    local first = get('seq') == 0
    delta, gain = 0, math.max(karma, 0)
    book(week_at(at), karma)
    if genre ~= '' then genres[genre] = true; add('gk:' .. genre, karma) end
    for stat, n in pairs(incr) do
      if n ~= 0 then add(stat, n); progress(stat, at, n) end
    end
    -- sets remember when the listener first met each member; its bonus and any challenge
    -- progress belong to that first time, whatever order the events arrive in
    for _, s in ipairs(sets) do
      local name, member, stat, b = s[1], s[2], s[3], s[4]
      local first_met = met[name][member]
      if not first_met then
        met[name][member] = at; changed[name][member] = true
        add(stat, 1); book(week_at(at), b); gain = gain + b; progress(stat, at, 1)
      elseif at < first_met then
        met[name][member] = at; changed[name][member] = true
        book(week_at(first_met), -b); book(week_at(at), b)
        progress(stat, first_met, -1); progress(stat, at, 1)
      end
    end
    -- streaks: a link joins two listening days at most `gap` days apart; each link is worth
    -- the streak bonus, booked to the week of its later day
    if listen == 1 and redis.call('ZADD', D, 'NX', day, day) == 1 then
      local p, n = neighbour(day, -1), neighbour(day, 1)
      local links = 0
      if p and day - p <= gap then book(week(day), bonus); links = links + 1 end
      if n and n - day <= gap then book(week(n), bonus); links = links + 1 end
      if p and n and n - p <= gap then book(week(n), -bonus); links = links - 1 end
      gain = gain + links * bonus
      local run, cur = 1, day
      while true do local q = neighbour(cur, -1); if q and cur - q <= gap then run = run + 1; cur = q else break end end
      cur = day
      while true do local q = neighbour(cur, 1); if q and q - cur <= gap then run = run + 1; cur = q else break end end
      if run > get('best_streak') then add('best_streak', run - get('best_streak')) end
    end
    local raw = add('karma', delta)
    local old_earned = get('earned')
    local earned = add('earned', gain)
    local unlocked = ''
    for _, a in ipairs(args.achievements) do
      if not achieved[a[1]] then
        local value = (a[2] == 'karma') and earned or get(a[2])
        if value >= a[3] then
          achieved[a[1]] = true
          redis.call('SADD', ACH, a[1]); unlocked = unlocked .. 'achievement:' .. a[1] .. '|'
          if a[4] ~= '' and redis.call('SADD', AV, a[4]) == 1 then unlocked = unlocked .. 'avatar:' .. a[4] .. '|' end
        end
      end
    end
    -- earned never falls, so a tier is unlocked exactly when earned first reaches it
    local tier = ''
    for _, t in ipairs(args.tiers) do
      if earned >= t[2] then
        tier = t[1]
        if (first or t[2] > old_earned) and redis.call('SADD', AV, t[3]) == 1 then
          unlocked = unlocked .. 'avatar:' .. t[3] .. '|'
        end
      end
    end
    add('seq', 1)
    result(id, 0, shown(raw) - before, shown(raw), tier, unlocked)
  end
end

-- write back: marks and set members in one ZADD each, the hash in one HSET; fields back at
-- zero are removed, so the state never depends on the path taken
local function zadd_all(key, flat)
  for i = 1, #flat, 4000 do redis.call('ZADD', key, unpack(flat, i, math.min(i + 3999, #flat))) end
end
zadd_all(M, marks)
for name, members in pairs(changed) do
  local flat = {}
  for m, _ in pairs(members) do flat[#flat + 1] = met[name][m]; flat[#flat + 1] = m end
  zadd_all(setkey[name], flat)
end
local hset, hdel = {}, {}
for f, _ in pairs(dirty) do
  if st[f] == 0 then hdel[#hdel + 1] = f else hset[#hset + 1] = f; hset[#hset + 1] = st[f] end
end
for i = 1, #hset, 4000 do redis.call('HSET', S, unpack(hset, i, math.min(i + 3999, #hset))) end
for i = 1, #hdel, 4000 do redis.call('HDEL', S, unpack(hdel, i, math.min(i + 3999, #hdel))) end
local week_scores, genre_scores = {}, {}
for w, _ in pairs(weeks) do week_scores[tostring(w)] = get('wk:' .. w) end
for g, _ in pairs(genres) do genre_scores[g] = get('gk:' .. g) end
return {cjson.encode({seq = get('seq'), karma = shown(get('karma')), weeks = week_scores,
                     genres = genre_scores}), results}
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
        by_user: dict[str, list[Effect]] = defaultdict(list)
        for e in effects:
            by_user[e.user_id].append(e)
        users = list(by_user)
        pipe = self.redis.pipeline(transaction=False)
        for user in users:
            payload = json.dumps([e.to_lua() for e in by_user[user]], separators=(",", ":"))
            self._apply(keys=user_keys(user, self.prefix), args=[self.rules.lua_args, payload, now_ms], client=pipe)
        replies = []
        for summary, flat in pipe.execute():
            reply = json.loads(summary)
            reply["results"] = [flat[i:i + 6] for i in range(0, len(flat), 6)]
            replies.append(reply)

        boards: dict[str, list[list[Any]]] = defaultdict(list)
        last_applied: dict[str, str] = {}
        totals = {user: reply["karma"] for user, reply in zip(users, replies, strict=True)}
        for user, reply in zip(users, replies, strict=True):
            for r in reply["results"]:
                if r[1] == 1:
                    out.duplicates += 1
                elif r[1] == 2:
                    out.stale += 1
                else:
                    out.applied += 1
                    last_applied[user] = r[0].decode()
                    self._events_for(user, r, now, out.outputs)
            if user not in last_applied:
                continue
            seq = reply["seq"]
            boards["global"].append([user, reply["karma"], seq])
            cohort = next((e.cohort for e in reversed(by_user[user]) if e.cohort), None)
            if cohort:
                boards[f"cohort:{cohort}"].append([user, reply["karma"], seq])
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
                        out.rank_changes[user] = (old_rank, new + 1)
                        out.outputs.append({
                            "event_id": UUID(last_applied[user]), "user_id": user, "karma_delta": 0,
                            "karma_total": totals[user], "tier": None, "achievement_unlocked": None,
                            "avatar_unlocked": None, "board": "global", "old_rank": old_rank,
                            "new_rank": new + 1, "created_at": now,
                        })
        return out

    @staticmethod
    def _events_for(user: str, r: list[Any], now: datetime, into: list[dict[str, Any]]) -> None:
        """GamificationEvent fields (dicts: Serde.encode_fields writes them without a model)."""
        event_id, _, delta, total, tier, unlocked = r
        base = {"event_id": UUID(event_id.decode()), "user_id": user, "karma_delta": 0, "karma_total": total,
                "tier": tier.decode() or None, "achievement_unlocked": None, "avatar_unlocked": None,
                "board": None, "old_rank": None, "new_rank": None, "created_at": now}
        if delta != 0:
            into.append({**base, "karma_delta": delta})
        for item in filter(None, unlocked.decode().split("|")):
            kind, name = item.split(":", 1)
            into.append({**base, f"{kind}_unlocked": name})

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
