"""Mood: which way a listener's sound leans *in this session*, from what they finish and skip.

Within a session, the tracks the listener finishes against the tracks they were played show
where today's sound lies: the lean is the contrast

    offset = (mean sound of the finished - mean sound of everything played) * n / (n + PRIOR)

over the session's plays (n of them, shrunk while there are few), in the audio features
(tempo, energy, valence, danceability, acousticness). A contrast within the session, not a
distance to the long-run taste: the policy chose what was played, so only the listener's
choice among it says anything about their mood. The feature ``mood_match`` = (x - usual) .
offset scores how a candidate leans the same way from the listener's usual sound; the content
candidates aim at usual + offset; :func:`phrase` turns a clear lean into words for the
explanation ("something calmer than usual for your relax sessions"). Checked against the
simulator's hidden session mood in ``bench/mood_check.py``. Pure: arrays in, arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from online_models.catalogue import FEATURES

PRIOR = 4.0  # plays before the contrast counts half
CLEAR = 0.03  # a lean in energy this large (features are in [0, 1]) is worth saying
_ENERGY = FEATURES.index("energy")


@dataclass
class SessionMood:
    session_id: str
    played: np.ndarray  # summed sound of the tracks played (finished or skipped)
    finished: np.ndarray  # summed sound of the finished ones
    n: float = 0.0
    n_finished: float = 0.0

    @property
    def offset(self) -> np.ndarray:
        if not self.n_finished or self.n_finished == self.n:
            return np.zeros_like(self.played)  # no contrast yet
        return (self.finished / self.n_finished - self.played / self.n) * self.n / (self.n + PRIOR)


def observe(mood: SessionMood | None, session_id: str, kind: str, x: np.ndarray) -> SessionMood:
    """The session's mood after one finish ("play_end") or skip of a track with sound ``x``."""
    if mood is None or mood.session_id != session_id:
        mood = SessionMood(session_id, np.zeros(len(x)), np.zeros(len(x)))
    if kind in ("play_end", "skip"):
        mood.played += x
        mood.n += 1.0
        if kind == "play_end":
            mood.finished += x
            mood.n_finished += 1.0
    return mood


def phrase(offset: np.ndarray) -> str | None:
    """A few words for a clear lean in energy, else None."""
    e = float(offset[_ENERGY])
    if e <= -CLEAR:
        return "something calmer"
    if e >= CLEAR:
        return "something livelier"
    return None
