"""Gamification inside the recommender: goals a slate can help a listener reach.

Some achievements count things a recommendation decides: finishing tracks by artists new to the
listener (``new_artists``), finishing tracks of genres they have not finished yet (``genres``).
While such a goal is open for a listener (their count below its target), a candidate that would
count towards it *advances* it. That is the ``challenge_advance`` feature (1 or 0); with a
``bonus`` > 0 the policy also adds that much reward to a finished track that advanced a goal, so
the ranker learns to favour them (off by default: ``bench/challenges.py`` measures what it
costs in reward and what it buys in goals reached).

The counts come from the listener's profile (what the recommender saw them finish), not from
the gamification store: the profile forgets its least played artists past its bound, so for a
long-time listener "new" means "not among the artists they finish most". Time-boxed challenges
need their progress within the window, which only the gamification store has; they are not used
here. Pure: arrays in, arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

RECOMMENDABLE = ("new_artists", "genres")  # stats a recommendation moves


@dataclass(frozen=True)
class Goal:
    id: str
    stat: str  # one of RECOMMENDABLE
    target: int

    def __post_init__(self) -> None:
        if self.stat not in RECOMMENDABLE:
            raise ValueError(f"{self.id}: a recommendation cannot advance {self.stat!r}; only {RECOMMENDABLE}")
        if self.target < 1:
            raise ValueError(f"{self.id}: target must be >= 1")


def goals_from(achievements: Any) -> tuple[Goal, ...]:
    """The achievements (objects with id, stat, target) a recommendation can advance."""
    return tuple(Goal(a.id, a.stat, int(a.target)) for a in achievements if a.stat in RECOMMENDABLE)


def advance(goals: tuple[Goal, ...], artists_finished: int, genres_finished: np.ndarray,
            new_artist: np.ndarray, genre: np.ndarray) -> np.ndarray:
    """Per candidate, 1.0 if finishing it would advance an open goal.

    ``artists_finished``: artists the listener finished so far; ``genres_finished``: their finished
    count per genre; ``new_artist``: per candidate, whether its artist is new to them; ``genre``:
    per candidate, its genre index."""
    out = np.zeros(len(genre))
    for g in goals:
        if g.stat == "new_artists" and artists_finished < g.target:
            out = np.maximum(out, new_artist.astype(float))
        elif g.stat == "genres" and int((genres_finished > 0).sum()) < g.target:
            out = np.maximum(out, (genres_finished[genre] == 0).astype(float))
    return out
