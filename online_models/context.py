"""Listening context as small integers that models index arrays with."""

from __future__ import annotations

from dataclasses import dataclass

ACTIVITIES = ("unknown", "workout", "commute", "study", "relax", "sleep", "party", "work")
DAYPARTS = ("night", "morning", "afternoon", "evening")  # 0-5, 6-11, 12-17, 18-23 local


@dataclass(frozen=True)
class ListeningContext:
    activity: str = "unknown"
    local_hour: int = 12
    weekday: int = 0
    device: str = "unknown"

    @property
    def daypart(self) -> int:
        return self.local_hour // 6

    @property
    def key(self) -> int:
        """Index of (activity, daypart); unknown activities fall back to 'unknown'."""
        a = ACTIVITIES.index(self.activity) if self.activity in ACTIVITIES else 0
        return a * len(DAYPARTS) + self.daypart

    def describe(self) -> str:
        if self.activity != "unknown":
            return f"your {self.activity} sessions"
        return f"the {DAYPARTS[self.daypart]}"


N_CONTEXTS = len(ACTIVITIES) * len(DAYPARTS)
