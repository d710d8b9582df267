"""Are the lists any good? Each simulated listener's lists, scored against their hidden tastes.

LinUCB learns in the closed loop for ``--events`` events. Then, for every listener with a list,
each list item's true completion probability is read from the simulator (averaged over the
listener's activities). Compared, per listener, with:

- the recommender's own slate in the same neutral context;
- the same number of random tracks they never played (for Discovery Weekly and Hidden Gems,
  random unplayed tracks of new artists / random unplayed gems);
- for Artists you may like, random artists they never played (each artist: their tracks' mean).

Reported per list: the expected completion rate of a session played from it, its discovery share
(items by an artist new to the listener) and expected completions per 10 items, against the
baseline. A session length follows from them: the simulator's listeners leave after skips
(``streams.simulator``), so a list that finishes more keeps them longer.

    python -m bench.lists [--events 60000] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.closed_loop import run
from online_models import lists
from online_models.policy import HybridPolicy, make_policy
from online_models.slate import SlateRules
from streams.simulator import ACTIVITY_TARGET, World

OUT = Path(__file__).resolve().parent / "out"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    held: dict[str, object] = {}

    def factory(world: World, rules: SlateRules) -> HybridPolicy:
        policy = make_policy("linucb", world.catalogue, seed=args.seed, rules=rules)
        held["world"], held["policy"] = world, policy
        return policy  # type: ignore[return-value]

    run("linucb", events=args.events, seed=args.seed, progress=False, factory=factory)
    world: World = held["world"]  # type: ignore[assignment]
    policy: HybridPolicy = held["policy"]  # type: ignore[assignment]
    gen, cat = policy.gen, world.catalogue
    rng = np.random.default_rng(args.seed)
    rows: dict[str, dict[str, list[float]]] = {}

    def add(name: str, key: str, value: float) -> None:
        rows.setdefault(name, {}).setdefault(key, []).append(value)

    for listener in world.listeners:
        prof = gen.profiles.get(listener.user_id)
        if prof is None or prof.genre_pos.sum() < 5:
            continue
        p = np.mean([world.completion_prob(listener, a) for a in ACTIVITY_TARGET], axis=0)  # their hidden taste
        played = np.zeros(len(cat), dtype=bool)
        played[list(prof.track_shown)] = True
        _, shown, _, _ = prof.artist_arrays(len(gen.artists))
        new_artist = shown[gen.artist_of] == 0
        built = lists.build(gen, listener.user_id)
        for name, got in built.items():
            for one in got:
                ids = [i["id"] for i in one["items"]]
                if not ids:
                    continue
                if name == "artists_you_may_like":
                    arts = [gen._artist_pos[a] for a in ids]
                    value = np.mean([p[gen.artist_of == a].mean() for a in arts])
                    pool = np.flatnonzero(shown == 0)
                    base = np.mean([p[gen.artist_of == a].mean() for a in rng.choice(pool, len(arts), replace=False)])
                    add(name, "list", float(value))
                    add(name, "random new artists", float(base))
                    continue
                idx = np.array([cat.index[t] for t in ids])
                add(name, "list", float(p[idx].mean()))
                add(name, "discovery share", float(new_artist[idx].mean()))
                pool_mask = ~played & (new_artist if name != "daily_mix" else True)
                if name == "hidden_gems":
                    pool_mask &= gen.gem
                pool = np.flatnonzero(pool_mask)
                add(name, "random", float(p[rng.choice(pool, min(len(idx), len(pool)), replace=False)].mean()))
        slate = policy.recommend(listener.user_id, "bench-lists", lists.NEUTRAL, 10, np.random.default_rng(0),
                                 np.flatnonzero(played)[-50:])
        picks = np.array([pk.track_idx for pk in slate.slate.picks])
        add("slate", "list", float(p[picks].mean()))
        add("slate", "discovery share", float(new_artist[picks].mean()))

    print(f"{len(rows.get('slate', {}).get('list', []))} listeners with lists, after {args.events:,} events "
          "(expected completion rate of a session played from each; hidden tastes)")
    summary = {}
    for name, got in rows.items():
        summary[name] = {k: float(np.mean(v)) for k, v in got.items()}
        parts = "  ".join(f"{k} {v:.3f}" for k, v in summary[name].items())
        print(f"  {name:<22} {parts}")
    OUT.mkdir(exist_ok=True)
    (OUT / "lists.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
