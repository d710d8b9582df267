"""Content journeys: from where a listener's taste is to a genre or a mood, in small steps.

A journey is up to ``STEPS`` tracks. Step k aims at the point k/STEPS of the way from the
listener's usual sound (the mean features of what they finish) to the target's sound (a genre's
mean sound, or a mood's). Each step is the track that is:

- closest to its aim;
- close to the step before, in sound and in artist (artist vectors, the artist graph);
- once past halfway, in the target genre.

Tracks the listener played lately are left out, and so is any artist used twice. Every step
says why it is there.

Starting a journey puts it on the listener's profile. Their slates then follow it: the first
position holds the current step, with propensity 1 because it is the listener's choice, not the
policy's. A finished step moves the journey on; when the last one is finished, the journey ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from online_models.candidates import CandidateGenerator, ListenerProfile
from online_models.catalogue import FEATURES

STEPS = 5
#: a mood as a sound: (tempo, energy, valence, danceability, acousticness), scaled 0..1
MOODS: dict[str, np.ndarray] = {
    "calm": np.array([0.30, 0.20, 0.50, 0.30, 0.75]),
    "energetic": np.array([0.80, 0.90, 0.70, 0.80, 0.10]),
    "happy": np.array([0.65, 0.70, 0.90, 0.75, 0.35]),
    "melancholy": np.array([0.35, 0.30, 0.15, 0.30, 0.60]),
    "focus": np.array([0.45, 0.35, 0.50, 0.35, 0.65]),
}


@dataclass
class Journey:
    target: str  # "genre:jazz" or "mood:calm"
    tracks: tuple[int, ...]  # catalogue rows, in order
    why: tuple[str, ...]
    position: int = 0  # the step the listener is on

    @property
    def done(self) -> bool:
        return self.position >= len(self.tracks)

    def current(self) -> tuple[int, str] | None:
        if self.done:
            return None
        return self.tracks[self.position], self.why[self.position]

    def advance(self, track: int) -> None:
        """The listener finished ``track``: on to the next step if it was this one."""
        if not self.done and self.tracks[self.position] == track:
            self.position += 1

    def to_json(self, track_ids: tuple[str, ...]) -> dict[str, object]:
        return {"target": self.target, "position": self.position, "done": self.done,
                "steps": [{"track_id": track_ids[t], "why": w} for t, w in zip(self.tracks, self.why, strict=True)]}


def targets(gen: CandidateGenerator) -> list[str]:
    return [f"genre:{g}" for g in gen.catalogue.genres] + [f"mood:{m}" for m in MOODS]


def plan(gen: CandidateGenerator, prof: ListenerProfile, target: str, *, steps: int = STEPS,
         recent: np.ndarray | None = None) -> Journey:
    """The journey to ``target`` ("genre:<name>" or "mood:<name>"); ValueError for an unknown one."""
    cat = gen.catalogue
    kind, _, name = target.partition(":")
    if kind == "genre" and name in cat.genres:
        g = cat.genres.index(name)
        goal, in_target = cat.features[cat.genre_idx == g].mean(axis=0), cat.genre_idx == g
        label = name
    elif kind == "mood" and name in MOODS:
        goal, in_target, label = MOODS[name], None, f"a {name} mood"
    else:
        raise ValueError(f"unknown journey target {target!r}; one of {targets(gen)}")
    start = prof.usual_sound(0, gen.mean_sound)
    allowed = np.ones(len(cat), dtype=bool)
    if recent is not None and len(recent):
        allowed[recent] = False
    chosen: list[int] = []
    why: list[str] = []
    used_artists: set[int] = set()
    for k in range(1, steps + 1):
        aim = start + (goal - start) * k / steps
        dist = ((cat.features - aim) ** 2).sum(axis=1)
        score = -dist
        if chosen:
            prev = chosen[-1]
            score -= 0.5 * ((cat.features - cat.features[prev]) ** 2).sum(axis=1)  # close to the step before
            score += 0.05 * (gen.artist_vec[gen.artist_of] @ gen.artist_vec[gen.artist_of[prev]])  # artist graph
        mask = allowed & ~np.isin(gen.artist_of, list(used_artists))
        if in_target is not None and k > steps // 2:
            mask &= in_target  # past halfway: in the target genre
        mask[chosen] = False
        if not mask.any():
            break
        i = int(np.argmax(np.where(mask, score, -np.inf)))
        chosen.append(i)
        used_artists.add(int(gen.artist_of[i]))
        moved = cat.features[i] - (cat.features[chosen[-2]] if len(chosen) > 1 else start)
        axis = int(np.argmax(np.abs(moved)))
        direction = "more" if moved[axis] > 0 else "less"
        why.append(f"step {k} of {steps} toward {label}: {direction} {FEATURES[axis]}, {cat.genre_of(i)} "
                   f"by {cat.artist_ids[i]}")
    return Journey(target, tuple(chosen), tuple(why))
