"""Every dashboard query, parameterised, in one place. Each takes a ``query(sql, params)``
callable (``ClickHouseStore.query``) and returns plain JSON-able data.

Time windows are relative to the newest data (not the wall clock), so a replayed or simulated
history reads the same as live traffic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from online_models.catalogue import FEATURES, Catalogue

Query = Callable[[str, dict[str, Any]], list[dict[str, Any]]]
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _plays_by(q: Query, column: str, user: str | None) -> list[dict[str, Any]]:
    """Plays per (column, local hour), overall or for one listener. ``column`` is one of ours."""
    if column not in ("weekday", "activity"):
        raise ValueError(f"cannot group plays by {column!r}")
    return q(
        f"SELECT {column}, local_hour, count() AS plays FROM events FINAL "
        "WHERE kind = 'play_start' AND ({user:String} = '' OR user_id = {user:String}) "
        f"GROUP BY {column}, local_hour ORDER BY {column}, local_hour",
        {"user": user or ""},
    )


def listening_heatmap(q: Query, user: str | None = None) -> dict[str, Any]:
    """Plays by local weekday x hour: a 7 x 24 matrix (overall, or one listener's)."""
    rows = _plays_by(q, "weekday", user)
    z = [[0] * 24 for _ in range(7)]
    for r in rows:
        z[int(r["weekday"])][int(r["local_hour"])] = int(r["plays"])
    return {"weekdays": list(WEEKDAYS), "hours": list(range(24)), "plays": z}


def activity_by_hour(q: Query, user: str | None = None) -> dict[str, Any]:
    """Mood / activity patterns over the day: plays per local hour for each activity."""
    rows = _plays_by(q, "activity", user)
    series: dict[str, list[int]] = {}
    for r in rows:
        series.setdefault(r["activity"], [0] * 24)[int(r["local_hour"])] = int(r["plays"])
    return {"hours": list(range(24)), "series": series}


def recommendation_rates(q: Query) -> list[dict[str, Any]]:
    """Per policy: items shown, and the share played, completed, skipped and liked."""
    rows = q(
        """
        WITH feedback AS (
            SELECT assumeNotNull(rec_id) AS rec_id, track_id,
                   max(kind = 'play_start') AS played, max(kind = 'play_end') AS completed,
                   max(kind = 'skip') AS skipped, max(kind = 'like') AS liked
            FROM events FINAL WHERE rec_id IS NOT NULL GROUP BY rec_id, track_id
        )
        SELECT r.policy_id AS policy, count() AS shown, sum(f.played) AS played,
               sum(f.completed) AS completed, sum(f.skipped) AS skipped, sum(f.liked) AS liked
        FROM recommendations AS r FINAL
        LEFT JOIN feedback AS f ON r.rec_id = f.rec_id AND r.track_id = f.track_id
        GROUP BY policy ORDER BY policy
        """,
        {},
    )
    out = []
    for r in rows:
        shown, played = int(r["shown"]), int(r["played"])
        out.append({
            "policy": r["policy"], "shown": shown, "played": played,
            "completion_rate": int(r["completed"]) / played if played else 0.0,
            "skip_rate": int(r["skipped"]) / played if played else 0.0,
            "like_rate": int(r["liked"]) / played if played else 0.0,
            "play_rate": played / shown if shown else 0.0,
        })
    return out


def top_tracks(q: Query, n: int = 10, hours: int = 24) -> list[dict[str, Any]]:
    """Most completed tracks in the last ``hours`` of data (from the aggregate table)."""
    return q(
        "SELECT track_id, any(artist_id) AS artist_id, any(genre) AS genre, "
        "sum(completions) AS completions, sum(skips) AS skips "
        "FROM track_context_hourly WHERE hour > (SELECT max(hour) FROM track_context_hourly) "
        "- toIntervalHour({hours:UInt32}) GROUP BY track_id ORDER BY completions DESC, track_id LIMIT {n:UInt32}",
        {"n": n, "hours": hours},
    )


def rising_artists(q: Query, n: int = 10, hours: int = 6) -> list[dict[str, Any]]:
    """Artists whose completions grew most in the last ``hours`` of data vs the ``hours`` before."""
    return q(
        """
        WITH (SELECT max(hour) FROM track_context_hourly) AS newest
        SELECT artist_id,
               sumIf(c, hour > newest - toIntervalHour({hours:UInt32})) AS recent,
               sumIf(c, hour <= newest - toIntervalHour({hours:UInt32})) AS before,
               recent - before AS growth
        FROM (
            SELECT hour, artist_id, sum(completions) AS c FROM track_context_hourly
            WHERE hour > newest - toIntervalHour(2 * {hours:UInt32}) GROUP BY hour, artist_id
        )
        GROUP BY artist_id HAVING recent > 0 ORDER BY growth DESC, artist_id LIMIT {n:UInt32}
        """,
        {"n": n, "hours": hours},
    )


def karma_progression(q: Query, user: str) -> list[dict[str, Any]]:
    """A listener's karma total after each change, in time order."""
    return q(
        "SELECT occurred_at AS at, karma_total AS karma FROM karma_history FINAL "
        "WHERE user_id = {user:String} AND what = 'karma' ORDER BY created_at, occurred_at, event_id",
        {"user": user},
    )


def unlocks(q: Query, user: str) -> list[dict[str, Any]]:
    """Achievements and avatar items a listener unlocked, with when."""
    return q(
        "SELECT what, min(occurred_at) AS at FROM karma_history FINAL WHERE user_id = {user:String} "
        "AND (startsWith(what, 'achievement:') OR startsWith(what, 'avatar:')) GROUP BY what ORDER BY at",
        {"user": user},
    )


def leaderboard_history(q: Query, board: str = "global", top: int = 5) -> dict[str, Any]:
    """Score over time of the listeners who are in the top ``top`` of the latest snapshot."""
    rows = q(
        """
        WITH leaders AS (
            SELECT user_id FROM leaderboard_snapshots FINAL WHERE board = {board:String}
              AND taken_at = (SELECT max(taken_at) FROM leaderboard_snapshots WHERE board = {board:String})
              AND rank <= {top:UInt32}
        )
        SELECT taken_at, user_id, score, rank FROM leaderboard_snapshots FINAL
        WHERE board = {board:String} AND user_id IN leaders ORDER BY taken_at, rank
        """,
        {"board": board, "top": top},
    )
    series: dict[str, dict[str, list[Any]]] = {}
    for r in rows:
        s = series.setdefault(r["user_id"], {"at": [], "score": [], "rank": []})
        s["at"].append(r["taken_at"].isoformat())
        s["score"].append(float(r["score"]))
        s["rank"].append(int(r["rank"]))
    return {"board": board, "series": series}


def artist_graph(q: Query, user: str, n: int = 12) -> dict[str, Any]:
    """The listener's most completed artists as a graph people can read: two artists are linked
    when listeners who finish one finish the other more than the listener set's typical pair
    (Jaccard similarity of their listener sets above the median of the pairs); communities by
    Louvain modularity and positions by a force layout (networkx, seeded: the same data draws
    the same picture). An edge's weight is how many listeners completed both artists."""
    import networkx as nx

    nodes = q(
        "SELECT artist_id, count() AS plays FROM events FINAL WHERE user_id = {user:String} "
        "AND kind = 'play_end' AND artist_id != '' GROUP BY artist_id ORDER BY plays DESC, artist_id "
        "LIMIT {n:UInt32}",
        {"user": user, "n": n},
    )
    if not nodes:
        return {"nodes": [], "edges": []}
    artists = [r["artist_id"] for r in nodes]
    listened = (
        "WITH listened AS (SELECT DISTINCT user_id, artist_id FROM events FINAL "
        "WHERE kind = 'play_end' AND has({artists:Array(String)}, artist_id)) "
    )
    fans = {r["artist_id"]: int(r["n"]) for r in q(
        listened + "SELECT artist_id, count() AS n FROM listened GROUP BY artist_id", {"artists": artists})}
    edges = q(
        listened + "SELECT a.artist_id AS source, b.artist_id AS target, count() AS weight "
        "FROM listened AS a INNER JOIN listened AS b ON a.user_id = b.user_id "
        "WHERE a.artist_id < b.artist_id GROUP BY source, target ORDER BY weight DESC, source, target",
        {"artists": artists},
    )
    for e in edges:
        e["jaccard"] = e["weight"] / max(1, fans.get(e["source"], 0) + fans.get(e["target"], 0) - e["weight"])
    cut = float(np.median([e["jaccard"] for e in edges])) if edges else 0.0
    kept = [e for e in edges if e["jaccard"] > cut or len(edges) <= len(artists)]
    g = nx.Graph()
    g.add_nodes_from(artists)
    g.add_weighted_edges_from((e["source"], e["target"], e["jaccard"]) for e in kept)
    groups = nx.community.louvain_communities(g, weight="weight", seed=0) if kept else [{a} for a in artists]
    community = {a: i for i, members in enumerate(sorted(groups, key=lambda m: (-len(m), min(m)))) for a in members}
    pos = nx.spring_layout(g, weight="weight", seed=0)
    return {"nodes": [{"id": r["artist_id"], "plays": int(r["plays"]), "community": community[r["artist_id"]],
                       "x": round(float(pos[r["artist_id"]][0]), 4), "y": round(float(pos[r["artist_id"]][1]), 4)}
                      for r in nodes],
            "edges": [{"source": e["source"], "target": e["target"], "weight": int(e["weight"]),
                       "jaccard": round(float(e["jaccard"]), 4)} for e in kept]}


def track_map(q: Query, catalogue: Catalogue, user: str | None = None, method: str = "pca",
              limit: int = 3000) -> dict[str, Any]:
    """The catalogue on two axes of its audio features (PCA by default; t-SNE with
    ``method=tsne``), coloured by genre, with the tracks ``user`` finished marked. At most
    ``limit`` tracks (the most popular) so a big catalogue still draws."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if method not in ("pca", "tsne"):
        raise ValueError("method must be pca or tsne")
    rows = np.sort(np.argsort(-catalogue.popularity, kind="stable")[:limit])
    X = catalogue.features[rows]
    X = (X - X.mean(axis=0)) / np.maximum(X.std(axis=0), 1e-9)
    if method == "pca":
        pca = PCA(n_components=2, random_state=0).fit(X)
        xy, explained = pca.transform(X), [round(float(v), 3) for v in pca.explained_variance_ratio_]
    else:
        perplexity = min(30.0, (len(X) - 1) / 3)
        xy, explained = TSNE(n_components=2, random_state=0, init="pca", perplexity=perplexity).fit_transform(X), None
    mine: set[str] = set()
    if user:
        mine = {r["track_id"] for r in q("SELECT DISTINCT track_id FROM events FINAL WHERE user_id = {user:String} "
                                         "AND kind = 'play_end'", {"user": user})}
    return {"method": method, "explained_variance": explained, "features": list(FEATURES),
            "tracks": [{"id": catalogue.track_ids[i], "genre": catalogue.genre_of(i), "x": round(float(a), 3),
                        "y": round(float(b), 3), "finished": catalogue.track_ids[i] in mine}
                       for i, (a, b) in zip(rows, xy, strict=True)]}


def latest_slate(q: Query, catalogue: Catalogue | None, user: str) -> dict[str, Any]:
    """The listener's latest slate, item by item: where it came from, the explanation, the top
    feature contributions (value x weight) and the track's audio features."""
    rows = q(
        "SELECT rec_id, created_at, policy_id, position, track_id, source, explanation, why_features, why_values "
        "FROM recommendations FINAL WHERE user_id = {user:String} AND rec_id = (SELECT argMax(rec_id, created_at) "
        "FROM recommendations WHERE user_id = {user:String}) ORDER BY position",
        {"user": user},
    )
    items = []
    for r in rows:
        i = catalogue.index.get(r["track_id"]) if catalogue is not None else None
        items.append({
            "position": r["position"], "track_id": r["track_id"], "source": r["source"],
            "explanation": r["explanation"],
            "why": [{"feature": f, "value": round(float(v), 4)} for f, v in zip(r["why_features"], r["why_values"],
                                                                                 strict=True)],
            "genre": catalogue.genre_of(i) if i is not None else None,
            "audio": ({f: round(float(v), 3) for f, v in zip(FEATURES, catalogue.features[i], strict=True)}
                      if i is not None else {}),
        })
    head = rows[0] if rows else {}
    return {"rec_id": str(head.get("rec_id", "")) or None, "created_at": head.get("created_at"),
            "policy_id": head.get("policy_id"), "items": items}


def throughput(q: Query, minutes: int = 60, bucket_s: int = 10) -> list[dict[str, Any]]:
    """Events ingested per second, averaged over ``bucket_s`` buckets, for the last ``minutes``
    of ingestion."""
    return q(
        "SELECT toStartOfInterval(ingested_at, toIntervalSecond({b:UInt32})) AS at, "
        "count() / {b:UInt32} AS events_per_s FROM events "
        "WHERE ingested_at > (SELECT max(ingested_at) FROM events) - toIntervalMinute({m:UInt32}) "
        "GROUP BY at ORDER BY at",
        {"m": minutes, "b": bucket_s},
    )


def listeners(q: Query, n: int = 20) -> list[str]:
    """The most active listeners (to pick one in the listener view)."""
    return [r["user_id"] for r in q(
        "SELECT user_id, count() AS c FROM events FINAL WHERE kind = 'play_end' GROUP BY user_id "
        "ORDER BY c DESC, user_id LIMIT {n:UInt32}", {"n": n})]
