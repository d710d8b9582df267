"""Closed-loop simulator benchmark: every policy against the same simulated listeners.

    python -m bench.closed_loop                      # 100k events per policy, seed 7
    python -m bench.closed_loop --events 20000 --policies linucb,popularity

For each policy the simulator's listeners (hidden tastes, seeded) ask for slates, the policy
answers, the listeners react event by event, and the policy learns from those events and from
the rewards joined to its decisions (the same :class:`RewardJoin` the worker uses). In process,
no broker: this measures the learning, not the transport.

Reward here is the *expected* completion probability of each item the listener reached (the
simulator knows it), which has far less noise than the sampled outcome. The oracle knows every
listener's hidden taste and fills the same positions with the best slate the product's rules
allow (recently played tracks excluded, at most ``--artist-cap`` tracks per artist, the
discovery positions filled with a track by an artist new to the listener or a hidden gem), so
it is the best any policy could do under the same rules. Regret = oracle reward - policy
reward, summed over impressions. The unconstrained oracle (the best tracks, no rules) is
reported too: the gap between the two is what the diversity rules cost.
Prints a table and writes ``bench/out/closed_loop.png`` (cumulative reward and regret by events)
and ``bench/out/closed_loop.json``.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from agents.recommend import listening_context
from online_models import embeddings, lists
from online_models.candidates import FriendTracks
from online_models.policy import POLICIES, HybridPolicy, make_policy
from online_models.reward import Decision, Feedback, RewardJoin
from online_models.rl import SessionDQN
from online_models.slate import SlateRules, fill
from streams.simulator import World, synthetic_catalogue

OUT = Path(__file__).resolve().parent / "out"
RECENT = 50


@dataclass
class Curve:
    policy: str
    events: list[int] = field(default_factory=list)  # cumulative events after each slate
    reward: list[float] = field(default_factory=list)  # cumulative expected reward
    oracle: list[float] = field(default_factory=list)  # cumulative oracle reward (same slate rules)
    free_oracle: list[float] = field(default_factory=list)  # cumulative oracle reward without the rules
    impressions: list[int] = field(default_factory=list)
    seconds: float = 0.0
    shifted: list[str] = field(default_factory=list)  # listeners whose taste changed mid-run
    sessions: int = 0
    plays: int = 0
    completions: int = 0
    discoveries: int = 0  # completions of an artist the listener had never finished before
    friend_picks: int = 0  # slate items from the friends source
    list_sessions: int = 0  # sessions that began by playing one of the listener's lists

    def engagement(self) -> dict[str, float]:
        """Completion rate, discovery share of completions, plays per session."""
        return {"completion_rate": self.completions / max(self.plays, 1),
                "discovery_share": self.discoveries / max(self.completions, 1),
                "session_length": self.plays / max(self.sessions, 1)}

    def rate_between(self, start: int, end: int) -> tuple[float, float]:
        """(policy, oracle) reward per impression between two event counts."""
        ev = np.array(self.events)
        i, j = int(np.searchsorted(ev, start)), min(int(np.searchsorted(ev, end)), len(ev) - 1)
        n = self.impressions[j] - self.impressions[i]
        return (self.reward[j] - self.reward[i]) / n, (self.oracle[j] - self.oracle[i]) / n

    def rate_last(self, events: int, oracle: str = "oracle") -> tuple[float, float]:
        """(policy, oracle) reward per impression over the last ``events`` events."""
        ev = np.array(self.events)
        j = int(np.searchsorted(ev, ev[-1] - events))
        n = self.impressions[-1] - self.impressions[j]
        o = getattr(self, oracle)
        return (self.reward[-1] - self.reward[j]) / n, (o[-1] - o[j]) / n

    def share_per_window(self, width: int = 5_000) -> tuple[np.ndarray, list[float]]:
        """(window ends, % of the oracle's reward rate in each window of ``width`` events)."""
        ends = np.arange(width, self.events[-1] + 1, width)
        return ends, [100 * a / b for a, b in (self.rate_between(e - width, e) for e in ends)]

    @property
    def regret(self) -> float:
        return self.oracle[-1] - self.reward[-1]


def run(policy_name: str, *, events: int = 100_000, seed: int = 7, n_listeners: int = 300,
        n_tracks: int = 2000, slate_size: int = 10, train_every: int = 20, train_steps: int = 10,
        rules: SlateRules | None = None, params: dict | None = None, progress: bool = True,
        factory: Callable[[World, SlateRules], Any] | None = None, communities: int = 8, mood_sd: float = 0.0,
        embeddings_every: int = 0, on_slate: Callable[[Any, Any], None] | None = None,
        shift_at: int = 0, shift_share: float = 0.5, friends: dict[str, list[str]] | None = None,
        lists_share: float = 0.0) -> Curve:
    """``factory(world, rules)`` builds the policy instead of ``make_policy(policy_name)``
    (the ceiling bench's informed learners, which are handed part of the world's truth).
    ``embeddings_every`` > 0: every that many events the embedding job refits on the completions
    so far and the policy serves the new version (what the worker does with each publication).
    ``friends`` (listener -> whom they follow): before each slate the policy is told what they
    finished lately (the worker reads the same from the listener store)."""
    catalogue = synthetic_catalogue(seed, n_tracks)
    world = World(catalogue, n_listeners=n_listeners, seed=seed + 1, run_id=f"bench-{policy_name}",
                  communities=communities, mood_sd=mood_sd)
    rules = rules or SlateRules()
    policy = (factory(world, rules) if factory is not None
              else make_policy(policy_name, catalogue, seed=seed, rules=rules, **(params or {})))
    artist_of = world._artist_of
    gem = catalogue.popularity <= np.quantile(catalogue.popularity, 0.3)
    played_artists: dict[str, set[int]] = {}
    join = RewardJoin(window_s=3600)
    rng = np.random.default_rng(seed + 2)
    recent: dict[str, deque[int]] = {}
    curve = Curve(policy_name)
    clock = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
    n_events = n_imp = slates = 0
    cum_r = cum_o = cum_free = 0.0
    started = time.perf_counter()
    next_report = 10_000
    plays: dict[tuple[str, str], list[int]] = {}  # (listener, track) -> [plays, finishes]: the embedding job's input
    next_refit = embeddings_every
    finished: dict[str, deque[int]] = {}  # listener -> latest completions (what their followers see)
    completed_artists: dict[str, set[int]] = {}

    def engaged(e: Any) -> None:
        """Engagement counters of one event (slates and lists alike)."""
        i = catalogue.index[e.track_id]
        if e.kind == "play_end":
            curve.completions += 1
            done = completed_artists.setdefault(e.user_id, set())
            curve.discoveries += int(artist_of[i]) not in done
            done.add(int(artist_of[i]))
            finished.setdefault(e.user_id, deque(maxlen=30)).append(i)
        elif e.kind == "play_start":
            curve.plays += 1

    def from_a_list(session: Any, ctx_of: Any) -> int:
        """The session plays one of the listener's lists (online_models.lists) from the top, a
        slate's worth at a time, until they leave; the plays teach the model as any play does.
        Returns the events it took."""
        built = lists.build(policy.gen, session.listener.user_id)
        tracks = [[catalogue.index[i["id"]] for i in one["items"]] for name, ones in built.items()
                  if name != "artists_you_may_like" for one in ones if one["items"]]
        if not tracks:
            return 0
        queue = [t for t in tracks[int(rng.integers(len(tracks)))] if t not in recent.get(session.listener.user_id, ())]
        n = 0
        curve.list_sessions += 1
        while session.active and queue and n_events + n < events:
            chunk, queue = queue[:slate_size], queue[slate_size:]
            request = world.request(session, slate_size)
            ctx = ctx_of(request)
            out = world.react(session, uuid.uuid4(), [catalogue.track_ids[t] for t in chunk])
            n += 1 + len(out)
            for e in out:
                engaged(e)
                i = catalogue.index[e.track_id]
                if e.kind == "play_start":
                    recent.setdefault(e.user_id, deque(maxlen=RECENT)).append(i)
                    played_artists.setdefault(e.user_id, set()).add(int(artist_of[i]))
                policy.observe(e.user_id, session.session_id, str(e.kind), i, ctx, e.rating)
        return n
    while n_events < events:
        if shift_at and n_events >= shift_at and not curve.shifted:
            curve.shifted = world.shift_tastes(shift_share, seed)
        listener = world.listeners[int(rng.integers(len(world.listeners)))]
        clock += timedelta(seconds=int(rng.integers(1, 60)))
        session = world.start_session(listener, clock)
        curve.sessions += 1
        if lists_share and isinstance(policy, HybridPolicy) and rng.random() < lists_share:
            n_events += from_a_list(session, listening_context)  # then back to slates while they stay
        while session.active and n_events < events:
            request = world.request(session, slate_size)
            n_events += 1
            ctx = listening_context(request)
            played = recent.setdefault(listener.user_id, deque(maxlen=RECENT))
            exclude = np.fromiter(played, dtype=np.int64) if played else None
            if friends is not None and isinstance(policy, HybridPolicy):
                pairs = [(f, t) for f in friends.get(listener.user_id, ()) for t in list(finished.get(f, ()))[::-1][:10]]
                policy.gen.social = {listener.user_id: _friend_tracks(pairs)} if pairs else {}
            decided = policy.recommend(listener.user_id, session.session_id, ctx, slate_size,
                                       np.random.default_rng([seed, slates]), exclude)
            curve.friend_picks += sum(p.source == "friends" for p in decided.slate.picks)
            slates += 1
            rec_id = uuid.uuid5(uuid.NAMESPACE_OID, f"{policy_name}:{request.event_id}")
            tracks = [catalogue.track_ids[p.track_idx] for p in decided.slate.picks]
            join.decide(Decision(rec_id, listener.user_id, request.occurred_at, tuple(tracks), policy_name,
                                 decided.payload), request.occurred_at)
            out = world.react(session, rec_id, tracks)
            n_events += len(out)
            # expected reward of what was reached vs the oracle's slate, position by position
            p_all = session.p_complete
            if on_slate is not None:
                on_slate(decided, session)
            allowed_p = p_all.copy()
            if exclude is not None:
                allowed_p[exclude] = -np.inf
            free = np.sort(allowed_p)[::-1][:slate_size]
            new_artist = ~np.isin(artist_of, list(played_artists.get(listener.user_id, ())))
            best = oracle_slate(allowed_p, artist_of, new_artist | gem, rules, slate_size)
            reached = [e for e in out if e.kind == "play_start"]
            for j, e in enumerate(reached):
                cum_r += float(p_all[catalogue.index[e.track_id]])
                cum_o += float(best[j])
                cum_free += float(free[j])
            n_imp += len(reached)
            for e in out:
                i = catalogue.index[e.track_id]
                engaged(e)
                if e.kind == "play_start":
                    played.append(i)
                    played_artists.setdefault(listener.user_id, set()).add(int(artist_of[i]))
                policy.observe(listener.user_id, session.session_id, str(e.kind), i, ctx, e.rating)
                join.feedback(Feedback(e.event_id, rec_id, e.user_id, e.track_id, str(e.kind), e.occurred_at,
                                       e.listened_ms, e.position), e.occurred_at)
            for e in out:  # what ClickHouse's events table gives the job: plays and finishes per track
                if e.kind in ("play_start", "play_end"):
                    got = plays.setdefault((e.user_id, e.track_id), [0, 0])
                    got[e.kind == "play_end"] += 1
            if embeddings_every and n_events >= next_refit:
                policy.set_embeddings(embeddings.train_on_plays(
                    plays, lambda t: catalogue.genre_of(catalogue.index[t]), seed=seed))
                next_refit += embeddings_every
            for closed in join.close_due(all_open=True):  # all its feedback is in: close now
                policy.learn(closed.decision.payload, closed.rewards)
            if isinstance(policy, HybridPolicy) and isinstance(policy.ranker, SessionDQN) and slates % train_every == 0:
                policy.ranker.train(train_steps)
            curve.events.append(n_events)
            curve.reward.append(cum_r)
            curve.oracle.append(cum_o)
            curve.free_oracle.append(cum_free)
            curve.impressions.append(n_imp)
            if progress and n_events >= next_report:
                print(f"  {policy_name:<12} {n_events:>7,} events  reward/impression {cum_r / max(n_imp, 1):.3f}"
                      f"  oracle {cum_o / max(n_imp, 1):.3f}", flush=True)
                next_report += 10_000
    curve.seconds = time.perf_counter() - started
    return curve


def _friend_tracks(pairs: list[tuple[str, int]]) -> FriendTracks:
    names = tuple(dict.fromkeys(f for f, _ in pairs))
    at = {f: i for i, f in enumerate(names)}
    return FriendTracks(np.array([t for _, t in pairs], dtype=np.int64), np.array([at[f] for f, _ in pairs]), names)


def oracle_slate(p: np.ndarray, artists: np.ndarray, discovery: np.ndarray, rules: SlateRules, k: int) -> np.ndarray:
    """Expected rewards of the best slate under the rules, by position (greedy: the best allowed
    track at each position, the same position-by-position filling every policy goes through)."""
    def best(allowed: np.ndarray) -> tuple[int, float, float]:
        i = int(np.argmax(np.where(allowed, p, -np.inf)))
        return i, 1.0, float(p[i])

    _, _, scores = fill(best, len(p), k, rules, artists, discovery)
    return scores


def plot(curves: list[Curve], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, r) = plt.subplots(1, 3, figsize=(19, 5))
    for c in curves:
        a.plot(c.events, c.reward, label=c.policy)
        b.plot(c.events, np.array(c.oracle) - np.array(c.reward), label=c.policy)
        ev, rew, orc = np.array(c.events), np.array(c.reward), np.array(c.oracle)
        edges = np.searchsorted(ev, np.arange(5_000, ev[-1] + 1, 5_000))
        edges = edges[edges < len(ev)]
        prev = np.concatenate(([0], edges[:-1]))
        share = (rew[edges] - np.where(prev > 0, rew[prev], 0)) / (orc[edges] - np.where(prev > 0, orc[prev], 0))
        r.plot(ev[edges], 100 * share, marker=".", label=c.policy)
    r.axhline(90, color="k", ls=":", label="goal: 90% of the oracle")
    r.set(title="Reward rate as % of the oracle's, per 5k events", xlabel="events", ylabel="%", ylim=(0, 100))
    a.plot(curves[0].events, curves[0].oracle, "k--", label="oracle under the slate rules (first policy's impressions)")
    a.set(title="Cumulative expected reward", xlabel="events", ylabel="sum of completion probability")
    b.set(title="Cumulative regret vs oracle", xlabel="events", ylabel="oracle - policy")
    for ax in (a, b, r):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--listeners", type=int, default=300)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--communities", type=int, default=8,
                    help="taste communities (the default world: 8); 0 for the old world of independent tastes")
    ap.add_argument("--embeddings-every", type=int, default=0,
                    help="refit the track embeddings every this many events and serve them (0: off)")
    ap.add_argument("--discovery-share", type=float, default=SlateRules().discovery_share,
                    help="share of slate positions kept for discovery candidates (the product default)")
    ap.add_argument("--artist-cap", type=int, default=SlateRules().artist_cap)
    ap.add_argument("--params", type=json.loads, default={},
                    help='JSON hyperparameters for every policy run, e.g. \'{"alpha": 0.1}\'')
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    curves = []
    for name in args.policies.split(","):
        print(f"{name}: running {args.events:,} events (seed {args.seed}, {args.listeners} listeners)", flush=True)
        curves.append(run(name, events=args.events, seed=args.seed, n_listeners=args.listeners,
                          rules=SlateRules(artist_cap=args.artist_cap, discovery_share=args.discovery_share),
                          params=dict(args.params), communities=args.communities,
                          embeddings_every=args.embeddings_every))
    pop = next((c for c in curves if c.policy == "popularity"), None)
    print(f"\n{'policy':<12} {'reward/imp':>10} {'last10k':>8} {'oracle10k':>9} {'%oracle':>8} "
          f"{'regret':>9} {'%pop regret':>11} {'%free oracle':>12} {'seconds':>8}")
    summary = []
    for c in curves:
        last, olast = c.rate_last(10_000)
        rel = c.regret / pop.regret if pop else float("nan")
        _, flast = c.rate_last(10_000, "free_oracle")
        print(f"{c.policy:<12} {c.reward[-1] / c.impressions[-1]:>10.3f} {last:>8.3f} {olast:>9.3f} "
              f"{100 * last / olast:>7.1f}% {c.regret:>9.1f} {100 * rel:>10.1f}% {100 * last / flast:>11.1f}% "
              f"{c.seconds:>8.1f}")
        summary.append({"policy": c.policy, "reward_per_impression": c.reward[-1] / c.impressions[-1],
                        "last_10k_rate": last, "last_10k_oracle_rate": olast, "pct_of_oracle_last_10k": last / olast,
                        "regret": c.regret, "regret_vs_popularity": rel, "impressions": c.impressions[-1],
                        "pct_of_unconstrained_oracle_last_10k": last / flast,
                        "seconds": c.seconds})
    best = max(summary, key=lambda s: s["pct_of_oracle_last_10k"])
    print(f"\nbest: {best['policy']}  {100 * best['pct_of_oracle_last_10k']:.1f}% of oracle in the last 10k events "
          f"(goal >= 90%), regret {100 * best['regret_vs_popularity']:.1f}% of popularity's (goal <= 30%)")
    png = args.out / "closed_loop.png"
    plot(curves, png)
    (args.out / "closed_loop.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                           "summary": summary,
                                                           "curves": [asdict(c) for c in curves]}))
    print(f"plot: {png}")


if __name__ == "__main__":
    main()
