"""Collaborative models over a sparse listener x item matrix, fitted offline in batch.

Every model learns from *everyone's* interactions (what the online bandits cannot: they learn
each listener alone) and scores whole batches of listeners at once:

- ``popularity``: how many listeners have the item (the floor every model must beat).
- ``item-knn``:   cosine similarity between item columns, the ``neighbours`` most similar kept
                  per item; a listener's score is the sum of similarities to their items.
- ``ease``:       EASE (Steck 2019): a closed-form item-item regression with a zero diagonal,
                  B = I - P / diag(P), P = (X^T X + l2 I)^-1, over the ``max_items`` most popular
                  items (the inverse is dense: items^2 memory, items^3 time).
- ``als``:        implicit-feedback matrix factorisation (Hu, Koren & Volinsky), the ``implicit``
                  library's alternating least squares, confidence 1 + alpha * weight.
- ``bpr``:        Bayesian personalised ranking, the ``implicit`` library's.
- ``lightgcn``:   LightGCN (He et al. 2020), PyTorch Geometric's implementation, over the
                  bipartite listener-item graph, trained with the BPR loss on sampled negatives.
- ``multvae``:    Mult-VAE (Liang et al. 2018) in torch: a variational autoencoder of each
                  listener's row with a multinomial likelihood and an annealed KL term.

Weights (play counts, ratings) enter as ``log1p(weight)`` by default: play counts are heavy
tailed and a listener who played one artist 5,000 times should not drown the rest.

Models implement :class:`Model`: ``fit(X)`` then ``scores(users)``, a dense (users, items) block.
:func:`evaluate` ranks in batches with numpy (no per-listener Python loop) and reports
NDCG@k, Recall@k2, MRR, catalogue coverage and novelty. Embeddings for serving come from
:meth:`ALS.factors` / :meth:`LightGCNModel.factors` (see :mod:`online_models.embeddings`).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.linalg import lapack

Progress = Callable[[str], None]  # a message per epoch / stage (the harness shows it on its progress bar)


def _quiet(_: str) -> None:
    return None


@dataclass
class Interactions:
    """A listener x item matrix with the labels of its rows and columns."""

    matrix: sp.csr_matrix  # float32 weights
    users: np.ndarray
    items: np.ndarray

    @classmethod
    def from_frame(cls, df: pd.DataFrame, user: str, item: str, weight: str | None = None,
                   weighting: str = "log", users: pd.Index | None = None, items: pd.Index | None = None
                   ) -> Interactions:
        """Duplicated (user, item) pairs add up. ``weighting``: ``log`` (log1p of the summed
        weight), ``raw`` or ``binary``. ``users`` / ``items`` fix the label order (so a train
        and a test matrix share it)."""
        users = pd.Index(users if users is not None else pd.unique(df[user]))
        items = pd.Index(items if items is not None else pd.unique(df[item]))
        r = users.get_indexer(df[user])
        c = items.get_indexer(df[item])
        w = df[weight].to_numpy(dtype=np.float64) if weight else np.ones(len(df))
        ok = (r >= 0) & (c >= 0) & np.isfinite(w) & (w > 0)
        m = sp.csr_matrix((w[ok], (r[ok], c[ok])), shape=(len(users), len(items)), dtype=np.float64)
        m.sum_duplicates()
        if weighting == "log":
            m.data = np.log1p(m.data)
        elif weighting == "binary":
            m.data[:] = 1.0
        elif weighting != "raw":
            raise ValueError(f"weighting must be log, raw or binary, got {weighting!r}")
        return cls(m.astype(np.float32), np.asarray(users), np.asarray(items))


class Model(Protocol):
    name: str

    def fit(self, X: sp.csr_matrix, progress: Progress = _quiet) -> Model: ...

    def scores(self, users: np.ndarray) -> np.ndarray: ...


# --- neighbourhood and linear models ----------------------------------------------------------


def listeners_per_item(X: sp.csr_matrix) -> np.ndarray:
    return np.asarray((X > 0).sum(axis=0)).ravel()


def most_listened(X: sp.csr_matrix, n: int) -> np.ndarray:
    """Column ids of the ``n`` items most listeners have, in column order (models whose cost
    grows with items squared keep these and rank the rest last)."""
    return np.sort(np.argsort(-listeners_per_item(X), kind="stable")[:n])


class Popularity:
    name = "popularity"

    def fit(self, X: sp.csr_matrix, progress: Progress = _quiet) -> Popularity:
        self.counts = listeners_per_item(X).astype(np.float32)
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(users), len(self.counts))).copy()


class ItemKNN:
    name = "item-knn"

    def __init__(self, neighbours: int = 100, block: int = 2048) -> None:
        self.neighbours, self.block = neighbours, block

    def fit(self, X: sp.csr_matrix, progress: Progress = _quiet) -> ItemKNN:
        self.X = X.tocsr()
        norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=0)).ravel())
        Xn = (X @ sp.diags(1.0 / np.maximum(norms, 1e-9))).tocsc().astype(np.float32)
        XnT = Xn.T.tocsr()
        n = X.shape[1]
        k = min(self.neighbours, n - 1)
        rows, cols, vals = [], [], []
        for start in range(0, n, self.block):  # one block of item columns at a time: bounded memory
            stop = min(start + self.block, n)
            S = (XnT @ Xn[:, start:stop]).toarray()  # (items, block)
            S[np.arange(start, stop), np.arange(stop - start)] = 0.0  # an item is not its own neighbour
            top = np.argpartition(-S, k, axis=0)[:k] if k < n else np.tile(np.arange(n)[:, None], stop - start)
            v = np.take_along_axis(S, top, axis=0)
            keep = v > 0
            rows.append(top[keep])
            cols.append(np.broadcast_to(np.arange(start, stop), top.shape)[keep])
            vals.append(v[keep])
            progress(f"neighbours {stop:,}/{n:,} items")
        self.S = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        return np.asarray((self.X[users] @ self.S).todense(), dtype=np.float32)


class EASE:
    name = "ease"

    def __init__(self, l2: float = 200.0, max_items: int = 12_000) -> None:
        self.l2, self.max_items = l2, max_items

    def fit(self, X: sp.csr_matrix, progress: Progress = _quiet) -> EASE:
        self.X = X.tocsr()
        self.keep = most_listened(X, self.max_items)
        Xk = self.X[:, self.keep]
        G = (Xk.T @ Xk).toarray().astype(np.float32)
        G[np.diag_indices_from(G)] += self.l2
        progress(f"inverting the {len(self.keep):,}^2 Gram matrix")
        # symmetric positive definite: Cholesky and its inverse (LAPACK potrf / potri), float32,
        # about 4x faster than a general inverse; potri fills the upper triangle only
        chol, info = lapack.spotrf(G, overwrite_a=True)
        P, info2 = lapack.spotri(chol, overwrite_c=True)
        if info or info2:
            raise np.linalg.LinAlgError(f"EASE: the Gram matrix is not positive definite (LAPACK {info}, {info2})")
        P = np.triu(P) + np.triu(P, 1).T
        B = -P / np.diag(P)
        B[np.diag_indices_from(B)] = 0.0
        self.B = B.astype(np.float32)
        self.n_items = X.shape[1]
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        out = np.full((len(users), self.n_items), -1e9, dtype=np.float32)  # items left out rank last
        out[:, self.keep] = self.X[users][:, self.keep] @ self.B
        return out


# --- matrix factorisation (implicit) --------------------------------------------------------


class _Factorised:
    name = "mf"
    user_factors: np.ndarray
    item_factors: np.ndarray

    def scores(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors[users] @ self.item_factors.T

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        """(listener vectors, item vectors): what serving loads."""
        return self.user_factors, self.item_factors


class ALS(_Factorised):
    name = "als"

    def __init__(self, factors: int = 32, regularization: float = 5.0, alpha: float = 2.0, iterations: int = 15,
                 seed: int = 0) -> None:
        self.params = dict(factors=factors, regularization=regularization, alpha=alpha, iterations=iterations,
                           random_state=seed)

    def fit(self, X: sp.csr_matrix, progress: Progress = _quiet) -> ALS:
        from implicit.cpu.als import AlternatingLeastSquares

        model = AlternatingLeastSquares(**self.params)
        step = iter(range(1, 1_000))
        model.fit(X.tocsr(), show_progress=False,
                  callback=lambda *_: progress(f"iteration {next(step)}/{self.params['iterations']}"))
        self.user_factors, self.item_factors = np.asarray(model.user_factors), np.asarray(model.item_factors)
        self.regularization, self.alpha = self.params["regularization"], self.params["alpha"]
        return self

    def fold_in(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """A new listener's vector from their first items (one ALS half-step against the fixed
        item factors): cold start without refitting."""
        return fold_in(self.item_factors, items, weights, self.regularization, self.alpha)


def fold_in(item_factors: np.ndarray, items: np.ndarray, weights: np.ndarray, regularization: float,
            alpha: float, gram: np.ndarray | None = None) -> np.ndarray:
    """The implicit-ALS listener vector given item vectors: solve
    (Y^T Y + Y_u^T (C_u - I) Y_u + reg I) x = Y_u^T C_u 1, C_u = 1 + alpha * w.
    ``gram``: Y^T Y computed once, when many listeners are folded into the same vectors."""
    Y = item_factors
    if len(items) == 0:
        return np.zeros(Y.shape[1])
    Yu = Y[items]
    c = 1.0 + alpha * np.asarray(weights, dtype=np.float64)
    A = (Y.T @ Y if gram is None else gram) + (Yu.T * (c - 1.0)) @ Yu + regularization * np.eye(Y.shape[1])
    return np.linalg.solve(A, Yu.T @ c)


class BPR(_Factorised):
    name = "bpr"

    def __init__(self, factors: int = 64, learning_rate: float = 0.01, regularization: float = 0.01,
                 iterations: int = 200, seed: int = 0) -> None:
        self.params = dict(factors=factors, learning_rate=learning_rate, regularization=regularization,
                           iterations=iterations, random_state=seed)

    def fit(self, X: sp.csr_matrix, progress: Progress = _quiet) -> BPR:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        model = BayesianPersonalizedRanking(**self.params)
        progress(f"{self.params['iterations']} epochs of sampled triples")
        model.fit((X > 0).astype(np.float32).tocsr(), show_progress=False)
        self.user_factors, self.item_factors = np.asarray(model.user_factors), np.asarray(model.item_factors)
        return self


# --- neural models (torch) ------------------------------------------------------------------


def _edges(X: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    coo = X.tocoo()
    return coo.row.astype(np.int64), coo.col.astype(np.int64)


class LightGCNModel(_Factorised):
    """LightGCN from PyTorch Geometric over the bipartite graph (listeners 0..U-1, items U..)."""

    name = "lightgcn"

    def __init__(self, dim: int = 64, layers: int = 2, epochs: int = 30, lr: float = 0.01, l2: float = 1e-4,
                 batches_per_epoch: int = 20, min_batch: int = 4096, max_seconds: float = 240.0,
                 seed: int = 0) -> None:
        """``max_seconds``: training stops after the epoch that crosses it (big tables train
        fewer epochs; ``epochs_done`` says how many)."""
        self.dim, self.layers, self.epochs, self.lr, self.l2 = dim, layers, epochs, lr, l2
        self.batches_per_epoch, self.min_batch, self.seed = batches_per_epoch, min_batch, seed
        self.max_seconds = max_seconds

    def fit(self, X: sp.csr_matrix, progress: Progress = _quiet) -> LightGCNModel:
        import torch
        from torch_geometric.nn import LightGCN
        from torch_geometric.utils import to_torch_csr_tensor

        started = time.perf_counter()
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        n_users, n_items = X.shape
        u, i = _edges(X)
        src = torch.from_numpy(np.concatenate([u, i + n_users]))
        dst = torch.from_numpy(np.concatenate([i + n_users, u]))
        # a CSR adjacency: propagation is a sparse matrix product, ~4x faster than scattering edges
        edge_index = to_torch_csr_tensor(torch.stack([src, dst]), size=(n_users + n_items, n_users + n_items))
        model = LightGCN(n_users + n_items, self.dim, self.layers)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        batch = max(self.min_batch, -(-len(u) // self.batches_per_epoch))
        for epoch in range(self.epochs):
            order = rng.permutation(len(u))
            total = 0.0
            for start in range(0, len(u), batch):
                b = order[start:start + batch]
                neg = rng.integers(n_items, size=len(b))
                users = torch.from_numpy(u[b])
                pos = torch.from_numpy(i[b] + n_users)
                negs = torch.from_numpy(neg + n_users)
                emb = model.get_embedding(edge_index)
                pos_rank = (emb[users] * emb[pos]).sum(-1)
                neg_rank = (emb[users] * emb[negs]).sum(-1)
                loss = model.recommendation_loss(pos_rank, neg_rank, node_id=torch.cat([users, pos, negs]),
                                                 lambda_reg=self.l2)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
            self.epochs_done = epoch + 1
            progress(f"epoch {epoch + 1}/{self.epochs} loss {total / len(u):.4f}")
            if time.perf_counter() - started > self.max_seconds:
                progress(f"stopped after {epoch + 1} epochs: the {self.max_seconds:.0f} s budget")
                break
        with torch.no_grad():
            emb = model.get_embedding(edge_index).numpy()
        self.user_factors, self.item_factors = emb[:n_users], emb[n_users:]
        return self


class MultVAE:
    """Mult-VAE: encoder items -> hidden -> (mu, logvar) of a ``latent``-dim z, decoder back to a
    softmax over items; trained on the listeners' (normalised, dropped-out) rows.

    Over the ``max_items`` most popular items (the rest rank last), and the encoder reads each
    row as a sparse tensor: the only dense product is the decoder's softmax over the items."""

    name = "multvae"

    def __init__(self, hidden: int = 600, latent: int = 200, epochs: int = 50, batch: int = 500, lr: float = 1e-3,
                 beta_max: float = 0.2, dropout: float = 0.5, max_items: int = 20_000, max_seconds: float = 240.0,
                 seed: int = 0) -> None:
        """``max_seconds`` as for LightGCN (the KL weight is annealed over the planned epochs)."""
        self.hidden, self.latent, self.epochs, self.batch, self.lr = hidden, latent, epochs, batch, lr
        self.beta_max, self.dropout, self.seed, self.max_seconds = beta_max, dropout, seed, max_seconds
        self.max_items = max_items

    def _net(self, n_items: int) -> Any:
        import torch
        from torch import nn

        vae = self

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.w_in = nn.Parameter(torch.empty(n_items, vae.hidden).uniform_(-1, 1) * (6 / (n_items + vae.hidden)) ** 0.5)
                self.b_in = nn.Parameter(torch.zeros(vae.hidden))
                self.enc = nn.Sequential(nn.Tanh(), nn.Linear(vae.hidden, 2 * vae.latent))
                self.dec = nn.Sequential(nn.Linear(vae.latent, vae.hidden), nn.Tanh(), nn.Linear(vae.hidden, n_items))

            def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
                """``x``: the batch's normalised (and dropped-out) rows, a sparse tensor."""
                mu, logvar = self.enc(torch.sparse.mm(x, self.w_in) + self.b_in).chunk(2, dim=1)
                z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
                return self.dec(z), mu, logvar

        return Net()

    def _rows(self, rows: np.ndarray, rng: np.random.Generator | None) -> tuple[Any, sp.coo_matrix]:
        """The rows as a torch sparse tensor, L2-normalised, with dropout when ``rng`` is given."""
        import torch

        x = self.X[rows].tocoo()
        vals = x.data.astype(np.float32)
        if rng is not None:
            vals = vals * (rng.random(len(vals)) >= self.dropout) / (1 - self.dropout)
        norms = np.sqrt(np.bincount(x.row, weights=vals.astype(np.float64) ** 2, minlength=len(rows)))
        vals = (vals / np.maximum(norms[x.row], 1e-9)).astype(np.float32)
        t = torch.sparse_coo_tensor(torch.from_numpy(np.vstack([x.row, x.col]).astype(np.int64)), torch.from_numpy(vals),
                                    size=x.shape)
        return t, x

    def fit(self, X: sp.csr_matrix, progress: Progress = _quiet) -> MultVAE:
        import torch

        started = time.perf_counter()
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.keep = most_listened(X, self.max_items)
        self.n_items = X.shape[1]
        self.X = X.tocsr()[:, self.keep].tocsr()
        n_users, n_items = self.X.shape
        self.net = self._net(n_items)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        steps = self.epochs * -(-n_users // self.batch)
        step = 0
        for epoch in range(self.epochs):
            self.net.train()
            total = 0.0
            order = rng.permutation(n_users)
            for start in range(0, n_users, self.batch):
                rows = order[start:start + self.batch]
                x, raw = self._rows(rows, rng)
                logits, mu, logvar = self.net(x)
                # multinomial log-likelihood of the (undropped) row: only its nonzero entries count
                logp = torch.log_softmax(logits, 1)[torch.from_numpy(raw.row), torch.from_numpy(raw.col)]
                nll = -(logp * torch.from_numpy(raw.data.astype(np.float32))).sum() / len(rows)
                kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1))
                beta = min(self.beta_max, self.beta_max * step / max(1, steps * 0.8))
                loss = nll + beta * kl
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                total += float(loss.detach()) * len(rows)
            self.epochs_done = epoch + 1
            progress(f"epoch {epoch + 1}/{self.epochs} loss {total / n_users:.2f}")
            if time.perf_counter() - started > self.max_seconds:
                progress(f"stopped after {epoch + 1} epochs: the {self.max_seconds:.0f} s budget")
                break
        self.net.eval()
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        import torch

        out = np.full((len(users), self.n_items), -1e9, dtype=np.float32)  # items left out rank last
        with torch.no_grad():
            logits, _, _ = self.net(self._rows(users, None)[0])
        out[:, self.keep] = logits.numpy()
        return out


MODELS: dict[str, Callable[..., Model]] = {
    "popularity": Popularity, "item-knn": ItemKNN, "ease": EASE, "als": ALS, "bpr": BPR,
    "lightgcn": LightGCNModel, "multvae": MultVAE,
}
NEURAL = frozenset({"lightgcn", "multvae"})
#: what the harness runs unless told: BPR is left out (on every table measured here it ranks below
#: popularity; see docs/recommenders.md), the neural models need --neural
DEFAULT = ("popularity", "item-knn", "ease", "als")


# --- evaluation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    ndcg: float  # NDCG@k, binary relevance
    recall: float  # Recall@k2: hits in the top k2 / the listener's held-out items
    mrr: float  # 1 / rank of the first hit in the top k2 (0 if none)
    coverage: float  # share of the catalogue in anyone's top k
    novelty: float  # mean self-information -log2(share of listeners who have the item) of the top k
    users: int
    fit_seconds: float
    score_seconds: float


def evaluate(model: Model, train: sp.csr_matrix, test: sp.csr_matrix, *, k: int = 10, k2: int = 20,
             batch: int = 1024, fit: bool = True, progress: Progress = _quiet) -> Report:
    """Fit on ``train`` (unless ``fit`` is False), rank every item the listener has not got in
    ``train`` for each listener with held-out items in ``test``, and score the ranking."""
    started = time.perf_counter()
    if fit:
        model.fit(train, progress)
    fitted = time.perf_counter()
    train, test = train.tocsr(), test.tocsr()
    n_users, n_items = train.shape
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    depth = min(max(k, k2), n_items)
    discounts = 1.0 / np.log2(np.arange(2, depth + 2))
    counts = listeners_per_item(train)
    info = -np.log2((counts + 1.0) / (n_users + 1.0))
    shown = np.zeros(n_items, dtype=bool)
    sums = np.zeros(4)
    for start in range(0, len(users), batch):
        b = users[start:start + batch]
        S = np.asarray(model.scores(b), dtype=np.float32)
        seen = train[b]
        S[np.repeat(np.arange(len(b)), np.diff(seen.indptr)), seen.indices] = -np.inf  # no re-recommending
        top = np.argpartition(-S, depth - 1, axis=1)[:, :depth]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(S, top, axis=1), axis=1, kind="stable"), axis=1)
        truth = test[b]
        hits = np.asarray(truth[np.arange(len(b))[:, None], top].todense()) > 0
        n_rel = np.diff(truth.indptr)
        ideal = np.cumsum(discounts[:k])[np.minimum(n_rel, k) - 1]
        sums[0] += float(((hits[:, :k] * discounts[:k]).sum(1) / ideal).sum())
        sums[1] += float((hits[:, :k2].sum(1) / n_rel).sum())
        first = np.where(hits[:, :k2].any(1), hits[:, :k2].argmax(1) + 1, np.inf)
        sums[2] += float((1.0 / first).sum())
        sums[3] += float(info[top[:, :k]].mean(1).sum())
        shown[top[:, :k].ravel()] = True
        progress(f"ranked {min(start + batch, len(users)):,}/{len(users):,} listeners")
    n = max(len(users), 1)
    return Report(ndcg=sums[0] / n, recall=sums[1] / n, mrr=sums[2] / n, coverage=float(shown.mean()),
                  novelty=sums[3] / n, users=len(users), fit_seconds=fitted - started,
                  score_seconds=time.perf_counter() - fitted)


def split_frame(df: pd.DataFrame, how: str, test_frac: float, time_col: str | None, user: str,
                seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``random``: rows at random; ``chrono``: the last ``test_frac`` of all rows by time;
    ``user-chrono``: each listener's last ``test_frac`` of rows (vectorised)."""
    if not 0 < test_frac < 1:
        raise ValueError("--test-frac must be between 0 and 1")
    if how in ("chrono", "user-chrono"):
        if time_col is None or time_col not in df.columns:
            raise ValueError(f"--split {how} needs a time column (--time-col)")
        df = df.sort_values(time_col, kind="stable")
        if how == "chrono":
            cut = int(len(df) * (1 - test_frac))
            return df.iloc[:cut], df.iloc[cut:]
        rank = df.groupby(user, sort=False).cumcount()
        size = df.groupby(user, sort=False)[user].transform("size")
        test = rank >= np.ceil(size * (1 - test_frac))
        return df[~test], df[test]
    if how != "random":
        raise ValueError(f"unknown split {how!r}")
    mask = np.random.default_rng(seed).random(len(df)) < test_frac
    return df[~mask], df[mask]


def matrices(df: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame, user: str, item: str, weight: str | None,
             weighting: str) -> tuple[Interactions, sp.csr_matrix]:
    """Train and test matrices over the same listener and item labels (every one in ``df``)."""
    users, items = pd.Index(pd.unique(df[user])), pd.Index(pd.unique(df[item]))
    tr = Interactions.from_frame(train, user, item, weight, weighting, users, items)
    te = Interactions.from_frame(test, user, item, weight, "binary", users, items).matrix
    te = te - te.multiply(tr.matrix > 0)  # held-out items the listener already has in train do not count
    te.eliminate_zeros()
    return tr, te.tocsr()


def run_all(names: Iterable[str], train: sp.csr_matrix, test: sp.csr_matrix, *, k: int = 10, k2: int = 20,
            seed: int = 0, params: dict[str, dict[str, Any]] | None = None, progress: bool = True
            ) -> dict[str, Report]:
    """Fit and score each model, with a progress bar per model."""
    from tqdm import tqdm

    out: dict[str, Report] = {}
    for name in names:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        kw = dict((params or {}).get(name, {}))
        if "seed" in inspect.signature(MODELS[name]).parameters:
            kw.setdefault("seed", seed)
        model = MODELS[name](**kw)
        with tqdm(desc=f"{name:<10}", disable=not progress, bar_format="{desc} {elapsed} {postfix}",
                  leave=True) as bar:
            out[name] = evaluate(model, train, test, k=k, k2=k2,
                                 progress=lambda msg: bar.set_postfix_str(msg, refresh=True))
            r = out[name]
            bar.set_postfix_str(f"NDCG@{k} {r.ndcg:.4f}  fit {r.fit_seconds:.1f}s", refresh=True)
    return out
