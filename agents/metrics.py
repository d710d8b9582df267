"""The worker's Prometheus metrics (domain metrics; Faust's sensor adds the stream-level ones)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Domain metrics; Faust's own sensor adds the stream-level ones to the same registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter("encore_events_total", "Valid interactions ingested", ["kind"], registry=registry)
        self.records = Counter("encore_records_total", "Records read from the events topic", registry=registry)
        self.dead = Counter("encore_dead_letters_total", "Records sent to the DLQ", ["reason"], registry=registry)
        self.slates = Counter("encore_recommendations_total", "Slates published", ["policy"], registry=registry)
        self.duplicates = Counter("encore_duplicate_events_total", "Events skipped as already seen", registry=registry)
        self.forgotten_dropped = Counter("encore_forgotten_events_dropped_total", "Events of listeners who asked to "
                                         "be forgotten, dropped unread", registry=registry)
        self.lists_built = Counter("encore_lists_built_total", "Listeners whose lists the schedule rebuilt",
                                   registry=registry)
        self.erased = Counter("encore_listeners_erased_total", "Listeners this worker erased from its stores",
                              registry=registry)
        self.batch = Histogram("encore_batch_records", "Records per processed batch", registry=registry,
                               buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2000))
        self.karma = Counter("encore_karma_events_total", "Events applied to gamification state, by outcome",
                             ["outcome"], registry=registry)
        self.gamification_out = Counter("encore_gamification_events_total", "GamificationEvents published",
                                        registry=registry)
        self.sink_rows = Counter("encore_sink_rows_total", "Rows written to ClickHouse", ["table"], registry=registry)
        self.sink_seconds = Histogram("encore_sink_flush_seconds", "ClickHouse flush time per batch",
                                      registry=registry)
        self.step_failures = Counter("encore_step_failures_total", "Side-effect attempts that failed and were "
                                     "retried (the batch waits)", ["step"], registry=registry)
        self.slates_again = Counter("encore_slates_republished_total",
                                    "Slates published again with their first content, by cause: a "
                                    "redelivered request (replayed) or two deciders of one request (raced)",
                                    ["cause"], registry=registry)
        self.sink_batch = Histogram("encore_sink_batch_rows", "Rows per ClickHouse flush (all tables)",
                                    registry=registry, buckets=(10, 100, 1000, 5000, 10000, 25000, 50000, 100000))
        self.sink_failures = Counter("encore_sink_failures_total", "ClickHouse flushes that failed", registry=registry)
        self.latency = Histogram("encore_recommendation_latency_seconds",
                                 "From a rec_request reaching the broker to its slate being delivered",
                                 registry=registry, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10))
        self.feedback = Counter("encore_policy_feedback_total",
                                "Feedback on recommended tracks, by policy and outcome (reward rate = "
                                "completed / (completed + skipped))", ["policy", "outcome"], registry=registry)
        self.slate_items = Counter("encore_slate_items_total",
                                   "Slate items by policy and candidate source (exploration share = "
                                   "discovery sources (artist, gems, explore, popularity:prior) over all)",
                                   ["policy", "source"], registry=registry)
        self.lag = Gauge("encore_consumer_lag_messages", "Records not yet read, per events partition",
                         ["partition"], registry=registry)
        self.batch_seconds = Histogram("encore_batch_seconds", "Time to process and deliver one batch",
                                       registry=registry)
        self.rewards = Counter("encore_reward_items_total", "Slate items learned from, by policy and reward sign",
                               ["policy", "sign"], registry=registry)
        self.reward = Histogram("encore_reward", "Joined reward per slate item the listener reached, by policy",
                                ["policy"], registry=registry, buckets=(-1.0, -0.5, -0.1, 0.0, 0.5, 1.0, 1.5, 2.0))
        # a histogram with negative buckets exposes no _sum, so the running sum is a gauge:
        # mean reward = encore_reward_accumulated / encore_reward_count
        self.reward_sum = Gauge("encore_reward_accumulated", "Sum of joined rewards, by policy", ["policy"],
                                registry=registry)
        self.join = Gauge("encore_reward_join", "Reward join counters (decisions, feedback, duplicates, late, "
                          "early, orphaned, closed) and open decisions", ["what"], registry=registry)
        self.deltas = Counter("encore_model_deltas_total", "Model deltas published to / merged from other workers",
                              ["direction"], registry=registry)
        self.snapshot_seconds = Histogram("encore_model_snapshot_seconds", "Time to write a model snapshot",
                                          registry=registry)
        self.rl_loss = Gauge("encore_rl_td_loss", "Session DQN's last TD loss", registry=registry)
        self.model_rows = Gauge("encore_model_rows", "Slate items the served model has learned from, its own and "
                                "merged from other workers", ["policy"], registry=registry)
        self.replayed = Counter("encore_replayed_records_total", "Event records replayed after a snapshot restore",
                                registry=registry)
        self.stalled = Gauge("encore_stalled", "1 while a batch waits for a store or the broker (its partitions "
                             "are paused and retried with backoff)", registry=registry)
        self.timer_failures = Counter("encore_timer_failures_total", "Background timer runs that failed (the "
                                      "timer runs again at its next tick)", ["timer"], registry=registry)
        self.redis_lost = Gauge("encore_redis_state_lost", "1 when Redis lost the gamification state (its "
                                "generation marker vanished); run `encore rebuild-gamification`", registry=registry)
        self.control_version = Gauge("encore_control_version", "Version of the experiments / flags control state "
                                     "this worker applies (every worker should read the same)", registry=registry)
        self.embeddings_trained = Gauge("encore_embeddings_trained_timestamp_seconds", "When the embedding "
                                        "version this worker serves was trained (0: none yet); alert on its age",
                                        registry=registry)
        self.embeddings_tracks = Gauge("encore_embeddings_tracks", "Catalogue tracks with a vector in the served "
                                       "embedding version", registry=registry)
        self.taste_shifts = Gauge("encore_taste_shifts_flagged", "Taste shifts ADWIN flagged on this worker's "
                                  "listeners since it started (each fades that listener's profile)", registry=registry)
        self.handoffs = Counter("encore_partition_handoffs_total", "Listener state of an events partition handed "
                                "to its next owner (out) or taken over from its last one (in)", ["direction"],
                                registry=registry)
