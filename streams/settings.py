"""One frozen settings object for every process, read from the environment first.

Every address Encore talks to lives here, so the same code runs against the local stack
(tansu, a loopback Redis, an embedded chDB store) or against real Kafka / Redis / ClickHouse:
set ``ENCORE_KAFKA_BOOTSTRAP``, ``ENCORE_REDIS_URL`` and ``ENCORE_CLICKHOUSE_DSN``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Encore configuration. Each field is read from ``ENCORE_<FIELD>`` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="ENCORE_", frozen=True, extra="ignore")

    # --- where things live -------------------------------------------------------------
    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    redis_url: str = "redis://127.0.0.1:16379/0"  # the local stack's own, persistent (not a machine's 6379)
    clickhouse_dsn: str = f"chdb://{ROOT / 'var' / 'chdb'}"
    schema_registry_url: str | None = None
    state_dir: Path = ROOT / "var"

    # --- topics --------------------------------------------------------------------------
    topic_prefix: str = ""
    partitions: int = Field(4, ge=1, le=1024)
    replication_factor: int = Field(1, ge=1)

    # --- worker -------------------------------------------------------------------------
    app_id: str = "encore"
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=0, le=65535)
    take_max: int = Field(1000, ge=1, description="most records in one batch (batches size themselves to load)")
    take_within_s: float = Field(0.002, ge=0, description="once a batch has a record, wait at most this for more")
    max_record_bytes: int = Field(1_048_576, ge=256, description="larger records go to the DLQ")
    max_batch_events: int = Field(1000, ge=1, description="events allowed in one batch record")
    batches_in_flight: int = Field(2, ge=1, le=16, description="computed batches whose writes may wait (the "
                                   "worker computes the next while Redis / ClickHouse take the last)")
    commit_interval_s: float = Field(0.5, gt=0, le=60, description="delivered batches are checkpointed "
                                     "(ClickHouse flush, sends confirmed, offsets acknowledged) this often")
    fetch_max_wait_ms: int = Field(5, ge=1, le=1500, description="longest a fetch waits for records (latency "
                                   "of an idle worker; see streams.app)")
    session_timeout_s: float = Field(6.0, gt=0, description="see INFRA: tansu joins take half of it")

    # --- HTTP API (on the worker's web port) --------------------------------------------
    api_keys: SecretStr | None = Field(None, description="comma-separated service keys (X-API-Key): any "
                                       "listener's events and reads")
    token_secret: SecretStr | None = Field(None, description="signs listener tokens (agents.auth); unset: "
                                           "derived from the first API key")
    friends_enabled: bool = Field(True, description="friend edges, friends' listening as candidates, the feed "
                                  "(one more Redis write per batch with completions, likes or follows)")
    friends_cache_s: float = Field(30.0, ge=0, description="how long a listener's friends' recent listening is "
                                   "reused for their slates before Redis is asked again")
    offline_window_s: float = Field(7 * 86_400.0, gt=0, description="an offline pack's decision waits this long "
                                    "for the plays the device reports when it is back online")
    offline_kbps: int = Field(160, gt=0, description="bitrate an offline pack's size is estimated at")
    lists_poll_s: float = Field(10.0, gt=0, description="how often the lists schedule looks for active listeners")
    forget_poll_s: float = Field(2.0, gt=0, description="how often a worker looks for new erasure requests")
    token_ttl_s: float = Field(7 * 86_400.0, gt=0, description="how long a listener token is valid")
    log_json: bool = Field(True, description="structured JSON logs from the worker")
    shutdown_grace_s: float = Field(5.0, ge=0, description="on SIGTERM, wait this long at most for batches in "
                                    "flight (the rest is delivered again after the restart)")
    drills_enabled: bool = Field(False, description="POST /drills/... fault drills (game days, make test-faults)")

    # --- recommender -------------------------------------------------------------------
    policy: Literal["random", "popularity", "eps-greedy", "linucb", "lints", "session-dqn"] = Field(
        "linucb", description="serving policy (online_models.policy.POLICIES)")
    n_candidates: int = Field(200, ge=10, le=5000, description="candidates re-ranked per slate")
    artist_cap: int = Field(2, ge=1, description="max tracks by one artist in a slate")
    discovery_share: float = Field(0.2, ge=0, le=1, description="share of slate positions kept for discovery")
    rewards_file: Path = ROOT / "deploy" / "config" / "rewards.toml"
    reward_window_s: float = Field(120.0, gt=0, description="feedback joined to a decision within this")
    model_sync_interval_s: float = Field(5.0, gt=0, description="publish / merge model deltas this often")
    model_snapshot_interval_s: float = Field(30.0, gt=0, description="write a model snapshot this often")
    rl_train_steps: int = Field(10, ge=0, description="DQN gradient steps per second, off the stream")
    worker_id: str | None = Field(None, description="unique per worker; default host:port")
    slate_size: int = Field(10, ge=1, le=100)
    catalogue: str = Field("synthetic:7:2000", description="'synthetic:SEED:N' or a JSONL path")
    popularity_temperature: float = Field(1.0, gt=0)
    explore_temperature: float = Field(0.05, ge=0, description="LinUCB draws each slate position with P ∝ "
                                       "exp(score / this): exact propensities, so the rewards log can score "
                                       "other policies off-policy (0: the greedy ranking, propensity 1)")
    challenge_bonus: float = Field(0.0, ge=0, description="extra reward for a finished track that advanced a "
                                   "gamification goal the listener has open (new artists, genres); 0: the goals are "
                                   "only a feature (bench/challenges.py measures the trade)")
    explore_floor: float = Field(0.05, ge=0, le=1, description="share of LinUCB's draw that is uniform over the "
                                 "candidates, so every candidate keeps a propensity (needs explore_temperature > 0)")
    dedupe_window: int = Field(1_000_000, ge=1, description="event ids remembered per worker")
    profile_tracks: int = Field(500, ge=4, description="tracks whose counts are kept per listener (the least "
                                "shown are forgotten past it)")
    sessions_kept: int = Field(100_000, ge=1, description="session states kept by the session-aware policies")
    slate_ttl_s: float = Field(3600.0, gt=0, description="a published slate is kept this long under its rec_id, "
                               "so a redelivered request gets it again (must outlast any redelivery)")

    # --- gamification ------------------------------------------------------------------
    gamification_enabled: bool = True
    gamification_rules: Path = ROOT / "deploy" / "config" / "gamification.toml"
    redis_prefix: str = Field("enc", description="prefix of every Redis key")

    # --- experiments ----------------------------------------------------------------------
    experiments_file: Path = ROOT / "deploy" / "config" / "experiments.toml"
    control_poll_s: float = Field(2.0, gt=0, description="how often a worker reads the control state "
                                  "(experiments started / stopped, flags) from Redis")

    # --- embeddings (online_models.embeddings) ------------------------------------------
    embeddings_dir: Path | None = Field(None, description="where the embedding job publishes versions "
                                        "(default: <state_dir>/embeddings)")
    embeddings_poll_s: float = Field(10.0, gt=0, description="how often a worker looks for a new version")

    # --- analytics ----------------------------------------------------------------------
    analytics_enabled: bool = True
    snapshot_interval_s: float = Field(10.0, gt=0, description="leaderboard snapshot period")

    # --- producer SDK --------------------------------------------------------------------
    producer_linger_ms: int = Field(20, ge=0)
    producer_batch_events: int = Field(200, ge=1, le=1000)

    def api_key_set(self) -> frozenset[str]:
        raw = self.api_keys.get_secret_value() if self.api_keys else ""
        return frozenset(k.strip() for k in raw.split(",") if k.strip())

    def topic(self, base: str) -> str:
        """The real topic name for a catalogue name (adds the optional prefix)."""
        return f"{self.topic_prefix}{base}"

    def kafka_config(self) -> dict[str, str]:
        """librdkafka settings shared by every confluent-kafka client."""
        conf = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
            conf["sasl.username"] = self.kafka_sasl_username or ""
            conf["sasl.password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else ""
            )
        return conf

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def embeddings_path(self) -> Path:
        return self.embeddings_dir or self.state_dir / "embeddings"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides on top (tests use these)."""
    return Settings(**overrides)  # type: ignore[arg-type]


def service_headers() -> dict[str, str]:
    """For a client of a worker's operator data on another host (the embedding job, the
    experiment report): the first service key of ENCORE_API_KEYS, when set."""
    keys = sorted(k.strip() for k in os.environ.get("ENCORE_API_KEYS", "").split(",") if k.strip())
    return {"X-API-Key": keys[0]} if keys else {}
