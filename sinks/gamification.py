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
from schemas.events import GamificationEvent

PREFIX = "enc"
WEEKLY_TTL_S = 5 * 7 * 86_400

APPLY = r"""
local args = cjson.decode(ARGV[1])
local effects = cjson.decode(ARGV[2])
local now = tonumber(ARGV[3])
local S, M, D, ACH, AV = KEYS[1], KEYS[2], KEYS[6], KEYS[7], KEYS[8]
local setkey = {artists = KEYS[3], genres = KEYS[4], playlists = KEYS[5]}
local horizon, gap, bonus = args.horizon_ms, args.link_gap, args.streak_bonus
redis.call('ZREMRANGEBYSCORE', M, '-inf', now - horizon)

local function num(f) return tonumber(redis.call('HGET', S, f) or '0') end
local function shown(raw) if raw < args.floor then return args.floor end return raw end
local function week(day) return math.floor((day - 1) / 7) end
local function week_at(ms) return week(math.floor(ms / 86400000) + 719163) end
-- counters that can return to zero are removed there, so state never depends on the path taken
local function incr(f, v)
  local x = redis.call('HINCRBY', S, f, v)
  if x == 0 then redis.call('HDEL', S, f) end
  return x
end
local function in_window(c, ms) return ms >= c[2] and ms < c[3] end
local function neighbour(day, dir)
  local r
  if dir < 0 then r = redis.call('ZREVRANGEBYSCORE', D, '(' .. day, '-inf', 'LIMIT', 0, 1)
  else r = redis.call('ZRANGEBYSCORE', D, '(' .. day, '+inf', 'LIMIT', 0, 1) end
  return tonumber(r[1])
end

local results, weeks, genres = {}, {}, {}
for _, e in ipairs(effects) do
  local r = {id = e.id}
  if e.at < now - horizon then
    r.status = 'stale'
  elseif redis.call('ZSCORE', M, e.id) then
    r.status = 'duplicate'
  else
    r.status = 'applied'
    redis.call('ZADD', M, math.max(e.at, now), e.id)
    local before = shown(num('karma'))
    local by_week, delta, gain = {}, 0, 0
    -- every amount is booked to a week; the sum is the karma change
    -- (moving an amount between weeks books -v and +v and earns nothing)
    local function book(w, v)
      by_week[w] = (by_week[w] or 0) + v; delta = delta + v
    end
    book(week_at(e.at), e.karma)
    gain = math.max(e.karma, 0)
    if e.genre ~= '' and e.karma ~= 0 then genres[e.genre] = incr('gk:' .. e.genre, e.karma) end
    local function progress(stat, at, n)
      for c, spec in pairs(args.challenges) do
        if spec[1] == stat and in_window(spec, at) then incr('ch:' .. c, n) end
      end
    end
    local touched = {}
    for stat, n in pairs(e.incr) do
      if n ~= 0 then redis.call('HINCRBY', S, stat, n); touched[stat] = true; progress(stat, e.at, n) end
    end
    -- sets remember when the listener first met each member; its bonus and any challenge
    -- progress belong to that first time, whatever order the events arrive in
    for _, s in ipairs(e.sets) do
      local key, member, stat, bonus = setkey[s[1]], s[2], s[3], s[4]
      local first = tonumber(redis.call('ZSCORE', key, member))
      if not first then
        redis.call('ZADD', key, e.at, member)
        redis.call('HINCRBY', S, stat, 1); touched[stat] = true
        book(week_at(e.at), bonus); gain = gain + bonus; progress(stat, e.at, 1)
      elseif e.at < first then
        redis.call('ZADD', key, e.at, member)
        book(week_at(first), -bonus); book(week_at(e.at), bonus)
        progress(stat, first, -1); progress(stat, e.at, 1)
      end
    end
    -- streaks: a link joins two listening days at most `gap` days apart; each link is worth
    -- the streak bonus, booked to the week of its later day
    if e.listen and redis.call('ZADD', D, 'NX', e.day, e.day) == 1 then
      local p, n = neighbour(e.day, -1), neighbour(e.day, 1)
      local links = 0
      if p and e.day - p <= gap then book(week(e.day), bonus); links = links + 1 end
      if n and n - e.day <= gap then book(week(n), bonus); links = links + 1 end
      if p and n and n - p <= gap then book(week(n), -bonus); links = links - 1 end
      gain = gain + links * bonus
      local run, cur = 1, e.day
      while true do local q = neighbour(cur, -1); if q and cur - q <= gap then run = run + 1; cur = q else break end end
      cur = e.day
      while true do local q = neighbour(cur, 1); if q and q - cur <= gap then run = run + 1; cur = q else break end end
      if run > num('best_streak') then redis.call('HSET', S, 'best_streak', run); touched['best_streak'] = true end
    end
    for w, v in pairs(by_week) do
      if v ~= 0 then weeks[tostring(w)] = incr('wk:' .. w, v) end
    end
    local raw = redis.call('HINCRBY', S, 'karma', delta)
    local earned = redis.call('HINCRBY', S, 'earned', gain)
    local unlocked = {}
    for _, a in ipairs(args.achievements) do
      if redis.call('SISMEMBER', ACH, a[1]) == 0 then
        local value = (a[2] == 'karma') and earned or num(a[2])
        if value >= a[3] then
          redis.call('SADD', ACH, a[1]); unlocked[#unlocked + 1] = {'achievement', a[1]}
          if a[4] ~= '' and redis.call('SADD', AV, a[4]) == 1 then unlocked[#unlocked + 1] = {'avatar', a[4]} end
        end
      end
    end
    local tier = ''
    for _, t in ipairs(args.tiers) do
      if earned >= t[2] then
        tier = t[1]
        if redis.call('SADD', AV, t[3]) == 1 then unlocked[#unlocked + 1] = {'avatar', t[3]} end
      end
    end
    r.delta = shown(raw) - before
    r.karma = shown(raw)
    r.tier = tier
    r.unlocked = unlocked
    r.seq = redis.call('HINCRBY', S, 'seq', 1)
  end
  results[#results + 1] = r
end
return cjson.encode({results = results, seq = num('seq'), karma = shown(num('karma')), weeks = weeks, genres = genres})
"""

BOARD = r"""
local out = {}
for _, u in ipairs(cjson.decode(ARGV[1])) do
  local v = tonumber(redis.call('HGET', KEYS[2], u[1]) or '-1')
  if u[3] > v then
    local old = redis.call('ZREVRANK', KEYS[1], u[1])
    redis.call('ZADD', KEYS[1], u[2], u[1])
    redis.call('HSET', KEYS[2], u[1], u[3])
    out[#out + 1] = {u[1], old or -1, redis.call('ZREVRANK', KEYS[1], u[1])}
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
    outputs: list[GamificationEvent] = field(default_factory=list)
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
            payload = json.dumps([e.to_lua() for e in by_user[user]])
            self._apply(keys=user_keys(user, self.prefix), args=[self.rules.lua_args, payload, now_ms], client=pipe)
        replies = [json.loads(r) for r in pipe.execute()]

        boards: dict[str, list[list[Any]]] = defaultdict(list)
        last_applied: dict[str, str] = {}
        for user, reply in zip(users, replies, strict=True):
            effects_by_id = {e.event_id: e for e in by_user[user]}
            for r in reply["results"]:
                if r["status"] == "duplicate":
                    out.duplicates += 1
                    continue
                if r["status"] == "stale":
                    out.stale += 1
                    continue
                out.applied += 1
                last_applied[user] = r["id"]
                out.outputs.extend(self._events_for(user, r, now))
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
            del effects_by_id
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
                    if old_rank != new + 1:
                        out.rank_changes[user] = (old_rank, new + 1)
                        out.outputs.append(GamificationEvent(
                            event_id=UUID(last_applied[user]), user_id=user, karma_delta=0,
                            karma_total=next(r["karma"] for u, r in zip(users, replies, strict=True) if u == user),
                            board="global", old_rank=old_rank, new_rank=new + 1, created_at=now,
                        ))
        return out

    def _events_for(self, user: str, r: dict[str, Any], now: datetime) -> list[GamificationEvent]:
        base = {"event_id": UUID(r["id"]), "user_id": user, "karma_total": r["karma"],
                "tier": r["tier"] or None, "created_at": now}
        events = []
        if r["delta"] != 0:
            events.append(GamificationEvent(karma_delta=r["delta"], **base))
        for kind, name in r["unlocked"] or []:
            field_name = "achievement_unlocked" if kind == "achievement" else "avatar_unlocked"
            events.append(GamificationEvent(karma_delta=0, **{field_name: name}, **base))
        return events

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
