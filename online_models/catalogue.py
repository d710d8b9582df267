"""The track catalogue as arrays: what every candidate generator and simulator reads."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FEATURES = ("tempo", "energy", "valence", "danceability", "acousticness")


@dataclass(frozen=True)
class Catalogue:
    """Public track metadata. ``features`` are scaled to 0..1; ``popularity`` is a 0..1 prior."""

    track_ids: tuple[str, ...]
    artist_ids: tuple[str, ...]
    genres: tuple[str, ...]  # genre names; genre_idx indexes into it
    genre_idx: np.ndarray  # int, one primary genre per track
    features: np.ndarray  # float, (n_tracks, len(FEATURES))
    popularity: np.ndarray  # float, (n_tracks,)
    duration_ms: np.ndarray  # int, (n_tracks,)
    index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.track_ids)
        for name in ("artist_ids", "genre_idx", "features", "popularity", "duration_ms"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"catalogue column {name} has {len(getattr(self, name))} rows, expected {n}")
        if len(set(self.track_ids)) != n:
            raise ValueError("catalogue track ids are not unique")
        self.index.update({t: i for i, t in enumerate(self.track_ids)})

    def __len__(self) -> int:
        return len(self.track_ids)

    def genre_of(self, i: int) -> str:
        return self.genres[int(self.genre_idx[i])]

    def to_jsonl(self, path: Path) -> None:
        with path.open("w") as f:
            for i, tid in enumerate(self.track_ids):
                row = {
                    "track_id": tid,
                    "artist_id": self.artist_ids[i],
                    "genre": self.genre_of(i),
                    "popularity": float(self.popularity[i]),
                    "duration_ms": int(self.duration_ms[i]),
                    **{k: float(v) for k, v in zip(FEATURES, self.features[i], strict=True)},
                }
                f.write(json.dumps(row) + "\n")

    @classmethod
    def from_jsonl(cls, path: Path) -> Catalogue:
        """Rows: track_id, artist_id, genre, popularity (0..1), duration_ms, and FEATURES (0..1)."""
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not rows:
            raise ValueError(f"catalogue {path} is empty")
        genres = tuple(sorted({r["genre"] for r in rows}))
        gpos = {g: i for i, g in enumerate(genres)}
        return cls(
            track_ids=tuple(r["track_id"] for r in rows),
            artist_ids=tuple(r["artist_id"] for r in rows),
            genres=genres,
            genre_idx=np.array([gpos[r["genre"]] for r in rows]),
            features=np.array([[float(r[k]) for k in FEATURES] for r in rows]),
            popularity=np.array([float(r.get("popularity", 0.0)) for r in rows]),
            duration_ms=np.array([int(r.get("duration_ms", 200_000)) for r in rows]),
        )
