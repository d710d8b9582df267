"""The topic catalogue: every topic Encore uses, with its shape. Created up front by
``create_topics`` (tansu cannot add partitions later, and an auto-created 1-partition topic next
to a 4-partition one crashes Faust with PartitionsMismatch)."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka.admin import AdminClient, NewTopic

from streams.settings import Settings

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    value: str
    retention_ms: int
    compacted: bool = False
    partitions: int | None = None  # None: settings.partitions
    doc: str = ""


EVENTS = TopicSpec(
    "encore.events", "user_id", "Interaction | EventBatch (Avro) or JSON", 7 * DAY_MS,
    doc="every listener interaction; keyed by user so one user's events stay ordered",
)
DLQ = TopicSpec(
    "encore.events.dlq", "original key", "DeadLetter", 30 * DAY_MS,
    doc="records the ingest step refused, with the reason and the raw bytes",
)
RECOMMENDATIONS = TopicSpec(
    "encore.recommendations", "user_id", "Recommendation", 3 * DAY_MS,
    doc="slates with per-item propensities, explanations and policy id",
)
GAMIFICATION = TopicSpec(
    "encore.gamification", "user_id", "GamificationEvent", 7 * DAY_MS,
    doc="karma changes, unlocks and rank changes for apps",
)
REWARDS = TopicSpec(
    "encore.rewards", "user_id", "RewardRecord", 30 * DAY_MS,
    doc="every decision with its joined rewards and propensities (logged bandit feedback)",
)
MODELS = TopicSpec(
    "encore.models", "worker id", "ModelDelta (npz bytes, see agents/learn.py)", 7 * DAY_MS, partitions=1,
    doc="linear bandits' sufficient-statistics deltas, read by every worker",
)

CATALOGUE: tuple[TopicSpec, ...] = (EVENTS, DLQ, RECOMMENDATIONS, GAMIFICATION, REWARDS, MODELS)


def create_topics(settings: Settings, timeout: float = 15.0) -> dict[str, str]:
    """Create every catalogue topic that does not exist yet. Returns name -> 'created'|'exists'."""
    admin = AdminClient(settings.kafka_config())
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = []
    status = {}
    for spec in CATALOGUE:
        name = settings.topic(spec.name)
        if name in existing:
            status[name] = "exists"
            continue
        config = {
            "retention.ms": str(spec.retention_ms),
            "cleanup.policy": "compact" if spec.compacted else "delete",
        }
        wanted.append(
            NewTopic(
                name,
                num_partitions=spec.partitions or settings.partitions,
                replication_factor=settings.replication_factor,
                config=config,
            )
        )
    if not wanted:
        return status
    for name, future in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            future.result(timeout)
            status[name] = "created"
        except Exception as exc:  # a concurrent creator won the race
            if "TOPIC_ALREADY_EXISTS" in str(exc) or "already exists" in str(exc):
                status[name] = "exists"
            else:
                raise RuntimeError(
                    f"could not create topic {name} on {settings.kafka_bootstrap}: {exc}"
                ) from exc
    return status
