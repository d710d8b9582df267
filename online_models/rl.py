"""Session-level reinforcement learning: a DQN over session state, in torch.

The listener's session is the episode. The state is what the session has been so far (activity,
daypart, skips, completions, the current run of skips, slates served, the last reward, the
position in the slate); an action is a candidate track (its feature row from :mod:`features`).
A small network scores Q(state, track): the expected reward of playing that track now *plus*
the discounted value of what the session can still bring, so tracks that keep a listener going
(and avoid the skip streaks that end sessions) are worth more than their own reward.

Learning is DQN with a replay buffer and a target network. Each item the listener reached in a
slate is one transition; the next state is the state after that item's outcome, the next
actions are the items still below it in the slate, and the transition is terminal where the
listener stopped. Slates are drawn with a Boltzmann (softmax) policy so every item has an exact
propensity.

``learn()`` only appends to the buffer (cheap, in the stream); ``train()`` runs gradient steps
and is meant to run beside the stream (the worker calls it in a thread). Pure apart from torch:
no I/O, no clock; seeded.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from online_models.context import ACTIVITIES, DAYPARTS, ListeningContext
from online_models.slate import Chooser, softmax_chooser

STATE_NAMES = (
    tuple(f"activity={a}" for a in ACTIVITIES) + tuple(f"daypart={d}" for d in DAYPARTS)
    + ("skips", "completions", "skip_run", "slates", "last_reward", "position")
)
N_STATE = len(STATE_NAMES)


@dataclass
class SessionState:
    activity: int = 0
    daypart: int = 0
    skips: int = 0
    completions: int = 0
    skip_run: int = 0
    slates: int = 0
    last_reward: float = 0.0
    position: int = 0

    @classmethod
    def start(cls, ctx: ListeningContext) -> SessionState:
        return cls(ACTIVITIES.index(ctx.activity) if ctx.activity in ACTIVITIES else 0, ctx.daypart)

    def after(self, reward: float) -> SessionState:
        """The state once an item's outcome is known (reward > 0: listened; < 0: skipped)."""
        skipped = reward < 0
        return SessionState(self.activity, self.daypart, self.skips + skipped, self.completions + (reward > 0),
                            self.skip_run + 1 if skipped else 0, self.slates, reward, self.position + 1)

    def vector(self) -> np.ndarray:
        v = np.zeros(N_STATE, dtype=np.float32)
        v[self.activity] = 1
        v[len(ACTIVITIES) + self.daypart] = 1
        base = len(ACTIVITIES) + len(DAYPARTS)
        v[base:] = (np.log1p(self.skips), np.log1p(self.completions), self.skip_run / 3, np.log1p(self.slates),
                    self.last_reward, self.position / 10)
        return v


@dataclass
class _Buffer:
    capacity: int
    n_features: int
    s: np.ndarray = field(init=False)
    x: np.ndarray = field(init=False)
    r: np.ndarray = field(init=False)
    s2: np.ndarray = field(init=False)
    x2: np.ndarray = field(init=False)  # next actions, padded; mask says which exist
    m2: np.ndarray = field(init=False)
    size: int = 0
    head: int = 0
    max_next: int = 10

    def __post_init__(self) -> None:
        c, d = self.capacity, self.n_features
        self.s = np.zeros((c, N_STATE), np.float32)
        self.x = np.zeros((c, d), np.float32)
        self.r = np.zeros(c, np.float32)
        self.s2 = np.zeros((c, N_STATE), np.float32)
        self.x2 = np.zeros((c, self.max_next, d), np.float32)
        self.m2 = np.zeros((c, self.max_next), bool)

    def add(self, s: np.ndarray, x: np.ndarray, r: float, s2: np.ndarray, x2: np.ndarray) -> None:
        i = self.head
        self.s[i], self.x[i], self.r[i], self.s2[i] = s, x, r, s2
        n = min(len(x2), self.max_next)
        self.x2[i] = 0
        self.m2[i] = False
        self.x2[i, :n], self.m2[i, :n] = x2[:n], True
        self.head = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)


class _QNet(nn.Module):
    def __init__(self, n_features: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(N_STATE + n_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """s: (..., N_STATE), x: (..., n_features) broadcastable -> Q (...)."""
        s = s.expand(*x.shape[:-1], s.shape[-1])
        return self.net(torch.cat([s, x], dim=-1)).squeeze(-1)


class SessionDQN:
    policy_id = "session-dqn"
    policy_version = "1"
    exact = True

    def __init__(self, n_features: int, *, hidden: int = 64, gamma: float = 0.5, lr: float = 3e-3,
                 temperature: float = 0.1, buffer_size: int = 50_000, batch_size: int = 256,
                 target_every: int = 100, seed: int = 0) -> None:
        if n_features < 1 or hidden < 1:
            raise ValueError("n_features and hidden must be >= 1")
        if not 0 <= gamma < 1:
            raise ValueError(f"gamma must be in [0, 1), got {gamma}")
        if lr <= 0 or temperature <= 0:
            raise ValueError("lr and temperature must be > 0")
        if buffer_size < batch_size or batch_size < 1:
            raise ValueError("need 1 <= batch_size <= buffer_size")
        self.d, self.hidden, self.gamma, self.lr = n_features, hidden, gamma, lr
        self.temperature, self.batch_size, self.target_every = temperature, batch_size, target_every
        self.seed = seed
        with torch.random.fork_rng(devices=[]):  # seeded weights; the global RNG is left as it was
            torch.manual_seed(seed)
            self.q = _QNet(n_features, hidden)
            self.target = _QNet(n_features, hidden)
        self.target.load_state_dict(self.q.state_dict())
        self.opt = torch.optim.Adam(self.q.parameters(), lr=lr)
        self.buffer = _Buffer(buffer_size, n_features)
        self._rng = np.random.default_rng(seed)
        self.lock = threading.Lock()  # training may run in another thread than scoring
        self.steps = 0
        self.n_updates = 0
        self.last_loss = float("nan")

    def q_values(self, state: SessionState, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.d:
            raise ValueError(f"features must be (n_candidates, {self.d}), got {X.shape}")
        with self.lock, torch.no_grad():
            return self.q(torch.from_numpy(state.vector()), torch.from_numpy(X)).numpy().astype(float)

    # --- the Ranker protocol (online_models.slate) ------------------------------------------
    def exploit_scores(self, features: Callable[[], np.ndarray], linear: Callable[[np.ndarray], np.ndarray],
                       state: SessionState) -> np.ndarray:
        return self.q_values(state, features())

    def chooser(self, X: np.ndarray, rng: np.random.Generator, offset: np.ndarray | None = None,
                spread: np.ndarray | None = None, state: SessionState | None = None) -> Chooser:
        """Boltzmann draws over Q (+ the listener layer's ``offset``; ``spread`` is not used)."""
        q = self.q_values(state or SessionState(), X)
        return softmax_chooser(q if offset is None else q + offset, self.temperature, rng)

    def contributions(self, X: np.ndarray) -> None:
        return None  # a network's Q has no per-feature split

    def learn_slate(self, X: np.ndarray, rewards: tuple[float | None, ...], state: SessionState,
                    offset: np.ndarray | float) -> tuple[np.ndarray, None]:
        seen = [i for i, r in enumerate(rewards) if r is not None]
        r = np.array([rewards[i] for i in seen], dtype=float)
        residual = r - self.q_values(state, X[seen]) - offset
        self.learn(state, X, list(rewards))
        return residual, None

    def learn(self, state: SessionState, X_shown: np.ndarray, rewards: list[float | None]) -> int:
        """Add the transitions of one closed slate; returns how many were added."""
        added, s = 0, state
        for p, r in enumerate(rewards):
            if r is None:
                break
            s.position = p
            nxt = s.after(r)
            reached_next = p + 1 < len(rewards) and rewards[p + 1] is not None
            x2 = X_shown[p + 1:] if reached_next else X_shown[:0]
            self.buffer.add(s.vector(), X_shown[p], r, nxt.vector(), x2)
            s = nxt
            added += 1
        self.n_updates += added
        return added

    def train(self, steps: int = 1) -> float:
        """Gradient steps on minibatches from the buffer; returns the last TD loss."""
        if self.buffer.size < self.batch_size:
            return float("nan")
        for _ in range(steps):
            i = self._rng.integers(0, self.buffer.size, self.batch_size)
            b = self.buffer
            s, x, r = torch.from_numpy(b.s[i]), torch.from_numpy(b.x[i]), torch.from_numpy(b.r[i])
            s2, x2, m2 = torch.from_numpy(b.s2[i]), torch.from_numpy(b.x2[i]), torch.from_numpy(b.m2[i])
            with torch.no_grad():
                q2 = self.target(s2.unsqueeze(1), x2).masked_fill(~m2, -1e9).max(dim=1).values
                q2 = torch.where(m2.any(dim=1), q2, torch.zeros_like(q2))
                y = r + self.gamma * q2
            with self.lock:
                loss = nn.functional.smooth_l1_loss(self.q(s, x), y)
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()
            self.steps += 1
            if self.steps % self.target_every == 0:
                self.target.load_state_dict(self.q.state_dict())
            self.last_loss = float(loss.detach())
        return self.last_loss

    def snapshot(self) -> bytes:
        buf = io.BytesIO()
        with self.lock:
            torch.save({"q": self.q.state_dict(), "target": self.target.state_dict(), "opt": self.opt.state_dict(),
                        "steps": self.steps, "n_updates": self.n_updates, "rng": self._rng.bit_generator.state,
                        "buffer": self.buffer.__dict__}, buf)
        return buf.getvalue()

    def restore(self, blob: bytes) -> None:
        state = torch.load(io.BytesIO(blob), weights_only=False)
        with self.lock:
            self.q.load_state_dict(state["q"])
            self.target.load_state_dict(state["target"])
            self.opt.load_state_dict(state["opt"])
            self.steps, self.n_updates = state["steps"], state["n_updates"]
            self._rng.bit_generator.state = state["rng"]
            self.buffer.__dict__.update(state["buffer"])
