"""How close to the oracle can a learner get in the closed loop? Informed learners bound it.

    python -m bench.ceiling                          # 100k events, seed 7, 300 listeners
    python -m bench.ceiling --listeners 30,100,300 --seeds 7,8,9   # what make bench-ceiling runs

The closed-loop goal (>= 90% of the oracle's reward rate in the last 10k events, see
:mod:`bench.closed_loop`) asks how much of each listener's hidden taste the events of the run
can teach. This bench runs, in the same loop, learners that are *handed* part of the
simulator's hidden truth (:meth:`streams.simulator.World.affinity_parts`) and learn the rest
online from the completions they observe:

- ``truth``:           told everything; greedy on the true completion probability. A check of
                       the harness: it must match the oracle (100%).
- ``all-but-favs``:    told everything except each listener's five favourite artists; learns
                       a per-listener artist effect.
- ``population+genre``: told the population model and each listener's genre taste; learns
                       the listener's sound shift and artist effects.
- ``population+communities``: told the population model and the *communities' mean* genre
                       tastes, but not which listener belongs to which: it keeps a posterior over
                       each listener's community (from their completions, under the told terms)
                       and learns the listener's own deviation from that mix. The bound for any
                       learner that borrows a listener's taste from the right community without
                       being told it (``--communities`` > 0 worlds).
- ``population``:      told only the population model (what an activity asks of the sound,
                       the pull of popularity; the same for every listener); learns each
                       listener's genre taste, sound shift and artist effects.

What is learned is a per-listener Bayesian logistic regression (the right model: the
simulator's completion probability is the sigmoid of a sum of these terms), updated online
after every reached item with the Laplace / extended-Kalman step (Gaussian posterior, one
Newton step per observation), and slates are greedy on the posterior mean under the same
slate rules (``--ucb`` / ``--thompson`` explore instead; neither scored higher). Priors match the
simulator's scales (``--prior-*``). ``population`` is therefore
a generous bound for any policy that must also learn the population model, which every
serving policy must. Prints a table per listener count (mean, min and max over ``--seeds``) and writes
``bench/out/ceiling.json``, and with several listener counts ``bench/out/ceiling.png`` (% of the
oracle against events per listener); the serving policies in ``--policies`` run beside them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.closed_loop import OUT, run
from online_models.candidates import CandidateGenerator
from online_models.catalogue import FEATURES
from online_models.context import ListeningContext
from online_models.policy import POLICIES, Decided, _allowed
from online_models.slate import Slate, SlatePick, SlateRules, fill
from streams.simulator import World

#: learner -> the affinity terms it is told; it learns the rest
TOLD: dict[str, tuple[str, ...]] = {
    "truth": ("population", "sound_shift", "genre", "temper", "favourites"),
    "all-but-favs": ("population", "sound_shift", "genre", "temper"),
    "population+genre": ("population", "genre", "temper"),
    "population+communities": ("population",),  # and the community means, see InformedLearner
    "population": ("population",),
}


class InformedLearner:
    """Greedy on (told terms + posterior mean of the learned per-listener terms)."""

    policy_id = "informed"
    policy_version = "1"

    def __init__(self, world: World, rules: SlateRules, told: tuple[str, ...], *,
                 prior_genre: float = 1.5, prior_shift: float = 0.8, prior_artist: float = 0.7,
                 genre_mean: float = 0.0, ucb: float = 0.0, thompson: float = 0.0,
                 communities: bool = False, prior_deviation: float = 0.7) -> None:
        """Greedy by default; ``ucb`` adds that many posterior sds of the learned terms,
        ``thompson`` > 0 draws them from the posterior widened by that factor. ``communities``:
        told the communities' mean genre terms (not the membership), see ``population+communities``;
        the learned genre block is then the listener's deviation (prior sd ``prior_deviation``)."""
        self.world, self.rules, self.told = world, rules, told
        self.means: np.ndarray | None = None  # (communities, genres): each community's mean genre term
        if communities:
            if not world.community:
                raise ValueError("population+communities needs a world with communities (--communities > 0)")
            labels = np.array(world.community)
            terms = np.array([world.affinity_parts(u, "unknown")["genre"][
                np.unique(world.catalogue.genre_idx, return_index=True)[1]] for u in world.listeners])
            self.means = np.array([terms[labels == c].mean(axis=0) for c in range(labels.max() + 1)])
            self.loglik: dict[str, np.ndarray] = {}
            prior_genre = prior_deviation
        self.ucb, self.thompson = ucb, thompson
        cat = world.catalogue
        self.gen = CandidateGenerator(cat, n_candidates=1)  # artist ids and "discovery" as the policies see them
        self.n_genres, self.n_artists = len(cat.genres), len(self.gen.artists)
        # dense per-listener block: genre one-hot (unless told, with temper) and the centred
        # sound features (unless the shift is told); artists as a separate diagonal block
        self.learn_genre = "genre" not in told
        self.learn_shift = "sound_shift" not in told
        self.learn_artist = "favourites" not in told
        blocks = []
        if self.learn_genre:
            blocks.append(np.full(self.n_genres, prior_genre**2))
        if self.learn_shift:
            blocks.append(np.full(len(FEATURES), prior_shift**2))
        self.prior = np.diag(np.concatenate(blocks)) if blocks else np.zeros((0, 0))
        self.prior_mean = np.zeros(len(self.prior))
        if self.learn_genre:
            self.prior_mean[:self.n_genres] = genre_mean
        self.prior_artist = prior_artist**2
        centred = cat.features - cat.features.mean(axis=0)
        genre_1h = np.eye(self.n_genres)[cat.genre_idx]
        cols = ([genre_1h] if self.learn_genre else []) + ([centred] if self.learn_shift else [])
        self.X = np.hstack(cols) if cols else np.zeros((len(cat), 0))
        self.state: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    def _listener(self, user_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        s = self.state.get(user_id)
        if s is None:
            s = self.state[user_id] = (self.prior_mean.copy(), self.prior.copy(), np.zeros(self.n_artists),
                                       np.full(self.n_artists, self.prior_artist))
        return s

    def _told(self, user_id: str, activity: str) -> np.ndarray:
        parts = self.world.affinity_parts(self.world.by_id[user_id], activity)
        told = sum(parts[k] for k in self.told)
        if self.means is not None:  # the communities' genre terms, mixed by the posterior over membership
            told = told + (self._membership(user_id) @ self.means)[self.world.catalogue.genre_idx]
        return told

    def _membership(self, user_id: str) -> np.ndarray:
        ll = self.loglik.get(user_id)
        if ll is None:
            return np.full(len(self.means), 1.0 / len(self.means))  # type: ignore[arg-type]
        w = np.exp(ll - ll.max())
        return w / w.sum()

    def _score(self, user_id: str, activity: str, rng: np.random.Generator) -> np.ndarray:
        mean, cov, art_mean, art_var = self._listener(user_id)
        if self.thompson > 0:  # one draw of the learned terms from the (widened) posterior
            mean = rng.multivariate_normal(mean, self.thompson**2 * cov, method="cholesky") if len(mean) else mean
            art_mean = art_mean + self.thompson * np.sqrt(art_var) * rng.standard_normal(len(art_mean))
        arts = self.gen.artist_of
        z = self._told(user_id, activity) + self.X @ mean + (art_mean[arts] if self.learn_artist else 0.0)
        if self.ucb > 0:
            var = ((self.X @ cov) * self.X).sum(axis=1) + (art_var[arts] if self.learn_artist else 0.0)
            z = z + self.ucb * np.sqrt(var)
        return z

    def recommend(self, user_id: str, session_id: str, ctx: ListeningContext, k: int,
                  rng: np.random.Generator, exclude: np.ndarray | None = None) -> Decided:
        rows = np.flatnonzero(_allowed(len(self.world.catalogue), exclude))
        z = self._score(user_id, ctx.activity, rng)[rows]

        def choose(allowed: np.ndarray) -> tuple[int, float, float]:
            i = int(np.argmax(np.where(allowed, z, -np.inf)))
            return i, 1.0, float(z[i])

        order, _, scores = fill(choose, len(rows), k, self.rules, self.gen.artist_of[rows],
                                self.gen.discovery(user_id, rows))
        picks = tuple(SlatePick(int(rows[i]), float(s), 1.0, "for-you", "informed") for i, s in zip(order, scores, strict=True))
        return Decided(Slate(picks, 1.0, self.policy_id, self.policy_version), (user_id, ctx.activity, rows[order]))

    def observe(self, user_id: str, session_id: str, kind: str, track_idx: int, ctx: ListeningContext,
                rating: float | None = None) -> None:
        self.gen.observe(user_id, session_id, kind, track_idx, ctx, rating)  # artists played (discovery)

    def learn(self, payload: Any, rewards: tuple[float | None, ...]) -> int:
        """One Laplace / EKF step per reached item; the outcome is completion (reward > 0)."""
        user_id, activity, tracks = payload
        mean, cov, art_mean, art_var = self._listener(user_id)
        told = self._told(user_id, activity)
        if self.means is not None:  # membership: the likelihood of each outcome under each community
            base = told - (self._membership(user_id) @ self.means)[self.world.catalogue.genre_idx]
            ll = self.loglik.setdefault(user_id, np.zeros(len(self.means)))
            for i, r in zip(tracks, rewards, strict=True):
                if r is None:
                    continue
                x, a = self.X[i], int(self.gen.artist_of[i])
                own = x @ mean + (art_mean[a] if self.learn_artist else 0.0)
                pc = 1.0 / (1.0 + np.exp(-(base[i] + own + self.means[:, self.world.catalogue.genre_idx[i]])))
                ll += np.log(np.clip(pc if r > 0 else 1.0 - pc, 1e-9, 1.0))
        n = 0
        for i, r in zip(tracks, rewards, strict=True):
            if r is None:
                continue
            n += 1
            x, a = self.X[i], int(self.gen.artist_of[i])
            z = told[i] + x @ mean + (art_mean[a] if self.learn_artist else 0.0)
            p = 1.0 / (1.0 + np.exp(-z))
            h = max(p * (1.0 - p), 1e-3)
            cx = cov @ x
            s = x @ cx + (art_var[a] if self.learn_artist else 0.0)  # predictive variance of z
            gain = (float(r > 0) - p) / (1.0 + h * s)
            mean += cx * gain
            cov -= np.outer(cx, cx) * h / (1.0 + h * s)
            if self.learn_artist:
                art_mean[a] += art_var[a] * gain
                art_var[a] -= art_var[a] ** 2 * h / (1.0 + h * s)
        return n

    def snapshot(self) -> bytes:  # the closed loop never restarts a policy
        return b""

    def restore(self, blob: bytes) -> None:
        return None


def plot(results: dict[int, dict[str, list[float]]], events: int, path: Path) -> None:
    """% of the oracle against events per listener: mean over seeds, bars from min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    counts = sorted(results)
    per_listener = [events / n for n in counts]
    for name in results[counts[0]]:
        v = np.array([[100 * x for x in results[n][name]] for n in counts])
        mean = v.mean(axis=1)
        ax.errorbar(per_listener, mean, yerr=[mean - v.min(axis=1), v.max(axis=1) - mean], marker="o",
                    capsize=3, label=f"{name} (serving policy)" if name not in TOLD else f"told {'+'.join(TOLD[name])}" if name != "truth"
                    else "told everything (harness check)")
    ax.axhline(90, color="k", ls=":", label="goal: 90% of the oracle")
    ax.set(xscale="log", xlabel="events per listener in the run (100k events / listeners)",
           ylabel="% of the oracle's reward rate, last 10k events",
           title="What share of the oracle is reachable, by how much each listener is seen")
    ax.set_xticks(per_listener, [f"{p:,.0f}\n({n} listeners)" for p, n in zip(per_listener, counts, strict=True)])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--seeds", default="7", help="comma-separated; each learner runs once per seed")
    ap.add_argument("--listeners", default="300", help="comma-separated listener counts; several give a plot")
    ap.add_argument("--learners", default=",".join(TOLD))
    ap.add_argument("--policies", default="linucb", help="production policies to run beside them ('' for none)")
    ap.add_argument("--prior-genre", type=float, default=1.5, help="prior sd of a listener's genre effect (logit)")
    ap.add_argument("--prior-shift", type=float, default=0.8, help="prior sd of a sound-shift slope (logit)")
    ap.add_argument("--prior-artist", type=float, default=0.7, help="prior sd of an artist effect (logit)")
    ap.add_argument("--prior-genre-mean", type=float, default=0.0,
                    help="prior mean of a genre effect (0 is optimistic: the average genre effect is about -1.1)")
    ap.add_argument("--ucb", type=float, default=0.0, help="learners add this many posterior sds (0: greedy)")
    ap.add_argument("--thompson", type=float, default=0.0,
                    help="> 0: learners draw from the posterior widened by this factor (Thompson sampling)")
    ap.add_argument("--communities", type=int, default=8,
                    help="taste communities in the world (the default: 8; 0: the old world, independent tastes)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    counts = [int(n) for n in args.listeners.split(",")]
    names = [n for n in args.learners.split(",") if n] + [p for p in args.policies.split(",") if p]
    for name in names:
        if name not in TOLD and name not in POLICIES:
            raise SystemExit(f"unknown learner or policy {name!r}: learners are {', '.join(TOLD)}; "
                             f"policies are {', '.join(POLICIES)}")
    priors = {"prior_genre": args.prior_genre, "prior_shift": args.prior_shift, "prior_artist": args.prior_artist,
              "genre_mean": args.prior_genre_mean, "ucb": args.ucb, "thompson": args.thompson}
    results: dict[int, dict[str, list[float]]] = {n: {name: [] for name in names} for n in counts}
    started = time.perf_counter()
    for n_listeners in counts:
        for seed in seeds:
            for name in names:
                factory = None
                if name in TOLD:
                    told = TOLD[name]

                    def factory(world: World, rules: SlateRules, told: tuple[str, ...] = told,
                                communities: bool = name == "population+communities") -> InformedLearner:
                        return InformedLearner(world, rules, told, communities=communities, **priors)
                curve = run(name, events=args.events, seed=seed, n_listeners=n_listeners, progress=False,
                            factory=factory, communities=args.communities)
                last, olast = curve.rate_last(10_000)
                results[n_listeners][name].append(last / olast)
                print(f"  {n_listeners} listeners  seed {seed}  {name:<17} {100 * last / olast:6.1f}% of oracle "
                      f"in the last 10k events  ({curve.seconds:.0f} s, {time.perf_counter() - started:.0f} s so far)",
                      flush=True)
    for n_listeners in counts:
        print(f"\n{n_listeners} listeners ({args.events / n_listeners:,.0f} events each), {args.communities} "
              f"communities, {args.events:,} events, seeds {args.seeds}: % of the oracle's reward rate in the last 10k events")
        print(f"{'learner':<18} {'told':<48} {'mean':>6} {'min':>6} {'max':>6}")
        for name, vals in results[n_listeners].items():
            told = "+".join(TOLD[name]) if name in TOLD else "(serving policy: learns everything)"
            v = 100 * np.array(vals)
            print(f"{name:<18} {told:<48} {v.mean():6.1f} {v.min():6.1f} {v.max():6.1f}")
    (args.out / "ceiling.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "pct_of_oracle_last_10k": results}, indent=1))
    print(f"\nwrote {args.out / 'ceiling.json'}")
    if len(counts) > 1:
        plot(results, args.events, args.out / "ceiling.png")
        print(f"plot: {args.out / 'ceiling.png'}")


if __name__ == "__main__":
    main()
