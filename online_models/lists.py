"""A listener's lists, built from what the recommender learned of them.

- **Daily Mix**, one per taste cluster of the listener: the genres they finish most, each a mix of
  what they finished there (the familiar half) and tracks of that genre close to their sound that
  they have not played (the new half).
- **Discovery Weekly**: tracks they never played, by artists they never played, closest to their
  sound and, with embeddings, to what listeners like them finish.
- **Artists you may like**: artists they never played, scored from the co-listening graph of the
  artists they act on (completions, likes, shares, follows; an unfollow counts against) and from
  how those artists sound.
- **Hidden Gems**: the least played part of the catalogue (bottom 30% of popularity) by artists
  they never played, closest to their sound.

Every item says why it is there. Pure functions of the candidate generator and one profile: the
worker that owns the listener computes them (on a schedule and on demand) and stores them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from online_models.candidates import CandidateGenerator, ListenerProfile
from online_models.context import ListeningContext

NEUTRAL = ListeningContext("unknown", 12, 2, "unknown")
LISTS = ("daily_mix", "discovery_weekly", "artists_you_may_like", "hidden_gems")
REFRESH_S = {"daily_mix": 86_400, "discovery_weekly": 7 * 86_400, "artists_you_may_like": 86_400,
             "hidden_gems": 86_400}


@dataclass(frozen=True)
class Item:
    id: str  # a track id, or an artist id for artists_you_may_like
    why: str
    score: float


@dataclass(frozen=True)
class ListOf:
    name: str
    title: str
    items: tuple[Item, ...]

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "title": self.title, "items": [asdict(i) for i in self.items]}


ARTIST_CAP = 2  # tracks per artist in a list: a list is a tour, not one artist's catalogue


def _top(scores: np.ndarray, k: int, artists: np.ndarray | None = None) -> np.ndarray:
    """Rows of the k best finite scores, best first; with ``artists``, at most ARTIST_CAP per artist."""
    ok = np.flatnonzero(np.isfinite(scores))
    ranked = ok[np.lexsort((ok, -scores[ok]))]
    if artists is None:
        return ranked[:k]
    out: list[int] = []
    per: dict[int, int] = {}
    for i in ranked:
        a = int(artists[i])
        if per.get(a, 0) < ARTIST_CAP:
            per[a] = per.get(a, 0) + 1
            out.append(int(i))
            if len(out) == k:
                break
    return np.array(out, dtype=np.int64)


def _fit(gen: CandidateGenerator, prof: ListenerProfile) -> np.ndarray:
    """How well each track fits the listener: their sound and genre rates, plus (with served
    embeddings) what listeners like them finish."""
    every = np.arange(len(gen.catalogue))
    cf, cf_genre, cf_artist = gen.cf_scores(prof, every)
    return gen.content_scores(prof, NEUTRAL) + 0.5 * (cf + cf_genre + cf_artist)


def daily_mixes(gen: CandidateGenerator, prof: ListenerProfile, *, mixes: int = 3, size: int = 20) -> list[ListOf]:
    cat = gen.catalogue
    rate = (prof.genre_pos + 0.5) / (prof.genre_shown + 1.0)
    ranked = [g for g in np.argsort(-(prof.genre_pos * rate)) if prof.genre_pos[g] >= 2][:mixes]
    history = gen.track_history(prof)
    fit = _fit(gen, prof)
    out = []
    for g in ranked:
        genre = cat.genres[int(g)]
        in_genre = cat.genre_idx == g
        known = _top(np.where(in_genre & (history > 0.5), history, -np.inf), size // 2)
        new = _top(np.where(in_genre & ~np.isfinite(history), fit, -np.inf), size - len(known), gen.artist_of)
        items = [Item(cat.track_ids[i], f"you finished it before: {genre} you come back to", float(history[i]))
                 for i in known]
        items += [Item(cat.track_ids[i], f"new to you, close to the {genre} you finish", float(fit[i])) for i in new]
        mixed = tuple(items[j] for j in _interleave(len(known), len(new)))  # familiar and new, alternating
        out.append(ListOf("daily_mix", f"Daily Mix: {genre}", mixed))
    return out


def _interleave(a: int, b: int) -> list[int]:
    """Indices into [a familiar..., b new...], alternating while both last."""
    out, i, j = [], 0, a
    while i < a or j < a + b:
        if i < a:
            out.append(i)
            i += 1
        if j < a + b:
            out.append(j)
            j += 1
    return out


def discovery_weekly(gen: CandidateGenerator, prof: ListenerProfile, *, size: int = 30) -> ListOf:
    cat = gen.catalogue
    _, shown, _, _ = prof.artist_arrays(len(gen.artists))
    new_artist = shown[gen.artist_of] == 0
    fit = _fit(gen, prof)
    art, anchor = gen.artist_scores(prof)
    picks = _top(np.where(new_artist, fit, -np.inf), size, gen.artist_of)
    items = tuple(Item(cat.track_ids[i], f"new to you: close to {gen.artists[anchor[i]]}, whom you finish"
                       if anchor[i] >= 0 and art[i] > 0.3 else f"new to you, in the {cat.genre_of(i)} you finish",
                       float(fit[i])) for i in picks)
    return ListOf("discovery_weekly", "Discovery Weekly", items)


def artists_you_may_like(gen: CandidateGenerator, prof: ListenerProfile, *, size: int = 10) -> ListOf:
    """Artists from the co-listening graph of the artists the listener acts on, and by sound."""
    n_art = len(gen.artists)
    finished, shown, _, _ = prof.artist_arrays(n_art)
    votes = prof.__dict__.get("artist_votes", {})
    weight = finished.copy()  # completions (likes and shares add through the co-listening graph below)
    for a, v in votes.items():
        weight[a] += 3.0 * v  # a follow is worth three completions; an unfollow takes as much
    liked = [a for a in np.argsort(-weight) if weight[a] > 0][:8]
    if not liked:
        return ListOf("artists_you_may_like", "Artists you may like", ())
    graph = np.zeros(n_art)  # co-listening, lifted from tracks to artists
    anchor_graph = np.full(n_art, -1)
    best = np.zeros(n_art)
    liked_set = set(int(a) for a in liked)
    for t, row in gen.co.items():
        a = int(gen.artist_of[t])
        if a not in liked_set or not row:
            continue
        idx = np.fromiter(row.keys(), dtype=np.int64, count=len(row))
        w = np.fromiter(row.values(), dtype=float, count=len(row)) * weight[a]
        arts = gen.artist_of[idx]
        np.add.at(graph, arts, w)
        for b, wb in zip(arts.tolist(), w.tolist(), strict=True):
            if wb > best[b]:
                best[b], anchor_graph[b] = wb, a
    sims = gen.artist_vec @ gen.artist_vec[liked].T
    sound, sound_anchor = np.clip(sims.max(axis=1), 0, None), np.asarray(liked)[sims.argmax(axis=1)]
    score = np.log1p(graph) + sound
    blocked = (shown > 0) | np.isin(np.arange(n_art), [a for a, v in votes.items() if v < 0])
    picks = _top(np.where(blocked, -np.inf, score), size)
    items = []
    for b in picks:
        if anchor_graph[b] >= 0 and np.log1p(graph[b]) >= sound[b]:
            why = f"listeners who finish {gen.artists[anchor_graph[b]]} also finish them"
        else:
            why = f"they sound like {gen.artists[sound_anchor[b]]}, whom you " + (
                "follow" if votes.get(int(sound_anchor[b]), 0) > 0 else "finish")
        items.append(Item(gen.artists[b], why, float(score[b])))
    return ListOf("artists_you_may_like", "Artists you may like", tuple(items))


def hidden_gems(gen: CandidateGenerator, prof: ListenerProfile, *, size: int = 20) -> ListOf:
    cat = gen.catalogue
    _, shown, _, _ = prof.artist_arrays(len(gen.artists))
    fit = _fit(gen, prof)
    picks = _top(np.where(gen.gem & (shown[gen.artist_of] == 0), fit, -np.inf), size, gen.artist_of)
    items = tuple(Item(cat.track_ids[i], f"a hidden {cat.genre_of(i)} gem: few have played it, and it fits your sound",
                       float(fit[i])) for i in picks)
    return ListOf("hidden_gems", "Hidden Gems", items)


def build(gen: CandidateGenerator, user_id: str) -> dict[str, list[dict[str, object]]]:
    """Every list of one listener, JSON-ready: name -> [list, ...] (Daily Mix has one per cluster)."""
    prof = gen.profile(user_id)
    return {"daily_mix": [m.to_json() for m in daily_mixes(gen, prof)],
            "discovery_weekly": [discovery_weekly(gen, prof).to_json()],
            "artists_you_may_like": [artists_you_may_like(gen, prof).to_json()],
            "hidden_gems": [hidden_gems(gen, prof).to_json()]}
