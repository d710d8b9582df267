"""Serving policies: what the recommend step calls. Each one turns (listener, context) into a
slate whose items carry a score, a propensity, a source and an explanation, and learns from
feedback events (``observe``) and from joined rewards (``learn``).

- ``random``:      uniform over the catalogue (a floor for the benchmarks).
- ``popularity``:  popularity by context, softmax-sampled.
- ``linucb``, ``lints``, ``eps-greedy``: the hybrid candidate generators, re-ranked by a
                   contextual linear bandit over :mod:`features`.
- ``session-dqn``: the same candidates ranked by the session-level DQN (:mod:`rl`).

Every slate obeys :class:`SlateRules` (artist cap, discovery slots); recently played tracks are
excluded by the caller. Pure: no I/O or clock.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from online_models import mood
from online_models.behaviour import Behaviour
from online_models.candidates import SOURCES, CandidateGenerator, Candidates
from online_models.catalogue import Catalogue
from online_models.challenges import Goal
from online_models.context import ListeningContext
from online_models.embeddings import TrackEmbeddings
from online_models.features import COLUMN, FEATURE_NAMES, N_FEATURES, LinearScorer, build_features
from online_models.linear import EpsilonGreedyLinear, LinTS, LinUCB
from online_models.popularity import ContextPopularity
from online_models.rl import SessionDQN, SessionState
from online_models.slate import (
    Ranker,
    Slate,
    SlatePick,
    SlateRules,
    fill,
    softmax_chooser,
    uniform_chooser,
)

FRIENDS = SOURCES.index("friends")  # rows from friends' listening fill SlateRules.friends_position
_MOODY = frozenset({"for-you", "content"})  # sources whose pick a clear session mood explains
_WHY_NAMES = np.array([*FEATURE_NAMES, "listener_layer"])  # contribution columns: the features, then the layer
POLICIES = ("random", "popularity", "eps-greedy", "linucb", "lints", "session-dqn")


@dataclass(frozen=True)
class Decided:
    slate: Slate
    payload: Any = None  # what ``learn`` needs once the rewards are known


@dataclass
class _Sessions:
    """Session state per session id, bounded (oldest sessions forgotten)."""

    capacity: int = 100_000
    states: OrderedDict[str, SessionState] = field(default_factory=OrderedDict)

    def get(self, session_id: str, ctx: ListeningContext) -> SessionState:
        s = self.states.get(session_id)
        if s is None:
            s = self.states[session_id] = SessionState.start(ctx)
            if len(self.states) > self.capacity:
                self.states.popitem(last=False)
        return s


class RandomPolicy:
    policy_id = "random"
    policy_version = "1"

    def __init__(self, catalogue: Catalogue, rules: SlateRules | None = None) -> None:
        self.catalogue, self.rules = catalogue, rules or SlateRules(discovery_share=0)
        self._artists = CandidateGenerator(catalogue, n_candidates=1).artist_of

    def recommend(self, user_id: str, session_id: str, ctx: ListeningContext, k: int,
                  rng: np.random.Generator, exclude: np.ndarray | None = None) -> Decided:
        allowed = _allowed(len(self.catalogue), exclude)
        rows = np.flatnonzero(allowed)
        order, props, scores = fill(uniform_chooser(rng), len(rows), k, self.rules, self._artists[rows])
        picks = tuple(SlatePick(int(rows[i]), 0.0, float(p), "explore", "a random pick")
                      for i, p in zip(order, props, strict=True))
        return Decided(Slate(picks, float(np.prod(props)), self.policy_id, self.policy_version))

    def observe(self, *args: Any, **kwargs: Any) -> None:
        return None

    def learn(self, payload: Any, rewards: tuple[float | None, ...]) -> int:
        return 0

    def snapshot(self) -> bytes:
        return b""

    def restore(self, blob: bytes) -> None:
        return None

    def set_embeddings(self, emb: TrackEmbeddings | None) -> None:
        return None

    def export_listeners(self, users: set[str]) -> dict[str, Any]:
        """Remove and return what the policy keeps per listener (nothing here)."""
        return {}

    def import_listeners(self, state: dict[str, Any]) -> None:
        return None


class PopularityPolicy(RandomPolicy):
    policy_id = "popularity"

    def __init__(self, catalogue: Catalogue, rules: SlateRules | None = None, *, temperature: float = 1.0) -> None:
        super().__init__(catalogue, rules)
        self.model = ContextPopularity(catalogue, temperature=temperature)
        self.policy_version = self.model.policy_version

    def recommend(self, user_id: str, session_id: str, ctx: ListeningContext, k: int,
                  rng: np.random.Generator, exclude: np.ndarray | None = None) -> Decided:
        scores = self.model.scores(ctx)
        rows = np.flatnonzero(_allowed(len(self.catalogue), exclude))
        order, props, sc = fill(softmax_chooser(scores[rows], self.model.temperature, rng), len(rows), k,
                                self.rules, self._artists[rows])
        picks = tuple(SlatePick(int(rows[i]), float(s), float(p), *self.model._why(int(rows[i]), ctx))
                      for i, p, s in zip(order, props, sc, strict=True))
        return Decided(Slate(picks, float(np.prod(props)), self.policy_id, self.policy_version))

    def observe(self, user_id: str, session_id: str, kind: str, track_idx: int, ctx: ListeningContext,
                rating: float | None = None) -> None:
        self.model.learn(kind, track_idx, ctx, rating)

    def snapshot(self) -> bytes:
        return self.model.snapshot()

    def restore(self, blob: bytes) -> None:
        self.model.restore(blob)


class HybridPolicy:
    """Candidates from every generator -> features -> a ranker (bandit or DQN) -> slate rules."""

    def __init__(self, catalogue: Catalogue, ranker: Ranker, *,
                 rules: SlateRules | None = None, n_candidates: int = 200, listener_layer: bool = True,
                 layer_bonus: float = 0.5, for_you: bool = True, layer_l2: float = 1.0,
                 profile_tracks: int = 500, profile_artists: int = 200, sessions_kept: int = 100_000,
                 behaviour: Behaviour | None = None, fade_on_shift: float = 0.3,
                 goals: tuple[Goal, ...] = (), challenge_bonus: float = 0.0, use_mood: bool = True) -> None:
        if layer_bonus < 0:
            raise ValueError(f"layer_bonus must be >= 0, got {layer_bonus}")
        if challenge_bonus < 0:
            raise ValueError(f"challenge_bonus must be >= 0 (0: goals are context only), got {challenge_bonus}")
        if not 0 <= fade_on_shift <= 1:
            raise ValueError(f"fade_on_shift must be in [0, 1] (1: taste shifts change nothing), got {fade_on_shift}")
        self.catalogue = catalogue
        self.ranker = ranker
        self.rules = rules or SlateRules()
        self.gen = CandidateGenerator(catalogue, n_candidates=n_candidates, max_tracks=profile_tracks,
                                      max_artists=profile_artists)
        self.scorer = LinearScorer(self.gen)
        self.sessions = _Sessions(capacity=sessions_kept)
        self.listener_layer = listener_layer
        self.layer_bonus = layer_bonus
        self.for_you = for_you
        self.layer_l2 = layer_l2
        self.behaviour = behaviour if behaviour is not None else Behaviour()
        self.gen.goals = tuple(goals)
        self.gen.use_mood = use_mood
        self.challenge_bonus = challenge_bonus
        self.fade_on_shift = fade_on_shift
        self.policy_id = ranker.policy_id
        self.policy_version = ranker.policy_version

    def recommend(self, user_id: str, session_id: str, ctx: ListeningContext, k: int,
                  rng: np.random.Generator, exclude: np.ndarray | None = None) -> Decided:
        prof = self.gen.profile(user_id)
        if prof.mood is not None and prof.mood.session_id != session_id:
            prof.mood = None  # a new session: no lean known yet
        state = self.sessions.get(session_id, ctx)
        at_decision = replace(state)
        # the listener layer for the whole catalogue, once: "for-you" and the ranker both use it
        layer = (self.gen.listener_layer(user_id, np.arange(len(self.catalogue)), self.layer_l2)
                 if self.listener_layer else None)

        def model(every: Candidates) -> np.ndarray:  # the "for-you" generator: exploit scores
            score = self.ranker.exploit_scores(lambda: build_features(self.gen, prof, ctx, every),
                                               lambda theta: self.scorer.scores(theta, prof, ctx, every), at_decision)
            return score if layer is None else score + layer[0][every.idx]

        cands = self.gen.generate(user_id, ctx, rng, exclude, model=model if self.for_you else None)
        X = build_features(self.gen, prof, ctx, cands)
        offset = layer[0][cands.idx] if layer is not None else None
        spread = self.layer_bonus * layer[1][cands.idx] if layer is not None else None
        choose = self.ranker.chooser(X, rng, offset=offset, spread=spread, state=at_decision)
        order, props, scores = fill(choose, len(cands), k, self.rules, self.gen.artist_of[cands.idx],
                                    self.gen.discovery(user_id, cands.idx), cands.source == FRIENDS)
        journey = prof.__dict__.get("journey")  # a journey the listener started leads the slate
        step = journey.current() if journey is not None else None
        lead = 0
        if step is not None and (exclude is None or step[0] not in exclude):
            keep = [j for j, i in enumerate(order) if cands.idx[i] != step[0]][:max(k - 1, 0)]
            order, props, scores, lead = order[keep], props[keep], scores[keep], 1
        state.slates += 1
        why = self.contributions(X[order], offset[order] if offset is not None else None)
        lean = mood.phrase(prof.mood.offset) if self.gen.use_mood and prof.mood is not None else None
        matches = X[order, COLUMN["mood_match"]] > 0
        picks = tuple(
            SlatePick(int(cands.idx[i]), float(s), float(p), SOURCES[cands.source[i]],
                      f"{lean} than usual for {ctx.describe()}, going by this session" if lean and m and SOURCES[cands.source[i]] in _MOODY else
                      self.explain(int(cands.idx[i]), int(cands.source[i]), int(cands.anchor[i]), ctx, user_id), c)
            for i, p, s, c, m in zip(order, props, scores, why, matches, strict=True)
        )
        if lead:  # the listener's choice, not the policy's: propensity 1, and it teaches the ranker nothing
            picks = (SlatePick(int(step[0]), 0.0, 1.0, "journey", step[1], ([], [])), *picks)  # type: ignore[index]
        payload = (X[order].astype(np.float32), replace(state), user_id, cands.idx[order], lead)
        return Decided(Slate(picks, float(np.prod(props)), self.policy_id, self.policy_version), payload)

    def contributions(self, X: np.ndarray, offset: np.ndarray | None, top: int = 3
                      ) -> list[tuple[list[str], list[float]]]:
        """Per slate row, the ``top`` features with the largest |value x weight| (exact: a linear
        ranker's exploit score is their sum, with the bias and the listener layer's offset).
        Empty for the DQN, whose score has no such split."""
        parts = self.ranker.contributions(X)
        if parts is None:
            return [([], [])] * len(X)
        if offset is not None:
            parts = np.column_stack([parts, offset])
        best = np.argsort(-np.abs(parts), axis=1)[:, :top]  # a slate is ~10 x 77: one small sort
        vals = parts[np.arange(len(parts))[:, None], best].round(4)
        return list(zip(_WHY_NAMES[best].tolist(), vals.tolist(), strict=True))

    def explain(self, track: int, source: int, anchor: int, ctx: ListeningContext, user_id: str = "") -> str:
        name = SOURCES[source]
        if name == "friends":
            friends = self.gen.social.get(user_id)
            who = friends.names[anchor] if friends is not None and 0 <= anchor < len(friends.names) else "a friend"
            return f"{who}, whom you follow, finished it lately"
        if name == "co-listen" and anchor >= 0:
            return f"because you liked {self.catalogue.track_ids[anchor]}"
        if name == "artist" and anchor >= 0:
            return f"new artist close to {self.gen.artists[anchor]}"
        if name == "familiar" and anchor >= 0:
            return f"more from {self.gen.artists[anchor]}, whom you keep playing"
        if name == "for-you":
            return f"picked for you from what you finish in {ctx.describe()}"
        if name == "again":
            return "you finished it before; back for another listen"
        if name == "gems":
            return f"a hidden {self.catalogue.genre_of(track)} gem close to your taste"
        if name == "content":
            return f"matches the sound of {ctx.describe()}"
        if name == "explore":
            return "something new to try"
        return f"popular in {ctx.describe()}"

    def observe(self, user_id: str, session_id: str, kind: str, track_idx: int, ctx: ListeningContext,
                rating: float | None = None) -> None:
        self.gen.observe(user_id, session_id, kind, track_idx, ctx, rating)
        if kind == "play_end" and (journey := self.gen.profile(user_id).__dict__.get("journey")) is not None:
            journey.advance(track_idx)  # a finished step: on to the next
        if 0 <= track_idx < len(self.catalogue):
            prof = self.gen.profile(user_id)
            if prof.behaviour is None:
                prof.behaviour = self.behaviour.new_state()
            genre = int(self.catalogue.genre_idx[track_idx])
            if self.behaviour.observe(prof.behaviour, session_id, kind, genre, ctx) and self.fade_on_shift < 1:
                prof.fade(self.fade_on_shift)  # their taste moved: let what they play now count more
        s = self.sessions.states.get(session_id)
        if s is not None and kind in ("play_end", "skip"):
            self.sessions.states[session_id] = replace(s.after(1.0 if kind == "play_end" else -1.0), position=0)

    def learn(self, payload: Any, rewards: tuple[float | None, ...]) -> int:
        """Learn from one closed slate: rows the listener reached, with their rewards."""
        X, state, user_id, tracks, *rest = payload
        lead = rest[0] if rest else 0  # a journey step led the slate: its reward is not the ranker's
        rewards = rewards[lead:]
        seen = [i for i, r in enumerate(rewards) if r is not None]
        if not seen:
            return 0
        if self.challenge_bonus:  # a finished track that advanced an open gamification goal pays extra
            advanced = X[:, COLUMN["challenge_advance"]]
            rewards = tuple(r if r is None or r <= 0 else r + self.challenge_bonus * float(advanced[i])
                            for i, r in enumerate(rewards))
        offset = self.gen.listener_layer(user_id, tracks[seen], self.layer_l2)[0] if self.listener_layer else 0.0
        residual, weight = self.ranker.learn_slate(X, rewards, state, offset)
        if self.listener_layer:
            self.gen.learn_residuals(user_id, tracks[seen], residual, weight, self.layer_l2)
        return len(seen)

    def set_embeddings(self, emb: TrackEmbeddings | None) -> None:
        """Serve a published version of the track embeddings (the ``cf_score`` feature and, through
        the ranker's own scores, the for-you candidates); None switches them off."""
        self.gen.set_embeddings(emb.aligned(self.catalogue.track_ids, self.catalogue.genres) if emb is not None else None)

    def export_listeners(self, users: set[str]) -> dict[str, Any]:
        """Remove and return these listeners' profiles (what the candidate generators and the
        listener layer learned of them); the shared model stays."""
        return {"profiles": {u: self.gen.profiles.pop(u) for u in users if u in self.gen.profiles}}

    def import_listeners(self, state: dict[str, Any]) -> None:
        self.gen.profiles.update(state.get("profiles", {}))

    def snapshot(self) -> bytes:
        return pickle.dumps((self.ranker.snapshot(), self.gen.snapshot(), self.sessions, self.behaviour))

    def restore(self, blob: bytes) -> None:
        ranker, gen, self.sessions, *rest = pickle.loads(blob)  # snapshots before behaviour had three parts
        if rest:
            self.behaviour = rest[0]
        self.ranker.restore(ranker)
        self.gen.restore(gen)


def _allowed(n: int, exclude: np.ndarray | None) -> np.ndarray:
    allowed = np.ones(n, dtype=bool)
    if exclude is not None and len(exclude):
        allowed[exclude] = False
    return allowed


def make_policy(name: str, catalogue: Catalogue, *, seed: int = 0, rules: SlateRules | None = None,
                n_candidates: int = 200, **params: Any) -> RandomPolicy | HybridPolicy:
    """A serving policy by name (see POLICIES); ``params`` go to the ranker's constructor, except
    the listener layer's ``layer_bonus`` / ``layer_l2`` / ``listener_layer``, ``for_you``, the
    memory bounds ``profile_tracks`` / ``profile_artists`` / ``sessions_kept`` and
    ``fade_on_shift`` (what a taste shift keeps of a profile), ``shift_delta`` (ADWIN's delta),
    ``goals`` / ``challenge_bonus`` (gamification goals as context, and their reward term) and
    ``use_mood`` (the session mood estimate; hybrid policies)."""
    hybrid = {k: params.pop(k) for k in ("layer_bonus", "layer_l2", "listener_layer", "for_you", "profile_tracks",
                                         "profile_artists", "sessions_kept", "fade_on_shift", "goals", "challenge_bonus", "use_mood") if k in params}
    if "shift_delta" in params:  # ADWIN's confidence: larger flags shifts sooner, and more false ones
        hybrid["behaviour"] = Behaviour(delta=params.pop("shift_delta"), seed=seed)
    if name == "random":
        return RandomPolicy(catalogue, rules)
    if name == "popularity":
        return PopularityPolicy(catalogue, rules, **params)
    rankers = {"linucb": LinUCB, "lints": LinTS, "eps-greedy": EpsilonGreedyLinear}
    if name in rankers:
        return HybridPolicy(catalogue, rankers[name](N_FEATURES, **params), rules=rules, n_candidates=n_candidates,
                            **hybrid)
    if name == "session-dqn":
        return HybridPolicy(catalogue, SessionDQN(N_FEATURES, seed=seed, **params), rules=rules,
                            n_candidates=n_candidates, **hybrid)
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
