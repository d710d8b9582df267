-- Raw interactions. ReplacingMergeTree on event_id: a redelivered event is one row after merge
-- (queries read with FINAL). Partitioned by day, kept a year.
CREATE TABLE IF NOT EXISTS events
(
    event_id UUID,
    user_id String,
    session_id String,
    occurred_at DateTime64(3, 'UTC'),
    kind LowCardinality(String),
    track_id String,
    artist_id String,
    genre LowCardinality(String),
    rec_id Nullable(UUID),
    position Nullable(UInt16),
    listened_ms Nullable(UInt32),
    track_duration_ms Nullable(UInt32),
    device LowCardinality(String),
    activity LowCardinality(String),
    local_hour UInt8,
    weekday UInt8,
    cohort String,
    ingested_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMMDD(occurred_at)
ORDER BY (user_id, event_id)
TTL toDateTime(occurred_at) + INTERVAL 365 DAY
SETTINGS non_replicated_deduplication_window = 1000;
--;;
-- The recommendation log, one row per slate item, with the propensities OPE needs.
CREATE TABLE IF NOT EXISTS recommendations
(
    rec_id UUID,
    request_id UUID,
    user_id String,
    created_at DateTime64(3, 'UTC'),
    policy_id LowCardinality(String),
    policy_version LowCardinality(String),
    experiment_arm LowCardinality(String),
    position UInt16,
    track_id String,
    score Float64,
    propensity Float64,
    slate_propensity Float64,
    source LowCardinality(String),
    device LowCardinality(String),
    activity LowCardinality(String),
    local_hour UInt8
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(created_at)
ORDER BY (rec_id, position)
TTL toDateTime(created_at) + INTERVAL 180 DAY
SETTINGS non_replicated_deduplication_window = 1000;
--;;
-- Karma changes and unlocks (GamificationEvents); `what` tells them apart for one event.
CREATE TABLE IF NOT EXISTS karma_history
(
    event_id UUID,
    user_id String,
    what String,
    karma_delta Int32,
    karma_total Int64,
    tier LowCardinality(String),
    created_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(created_at)
ORDER BY (user_id, event_id, what)
SETTINGS non_replicated_deduplication_window = 1000;
--;;
-- Leaderboard snapshots (top N per board), for leaderboard history.
CREATE TABLE IF NOT EXISTS leaderboard_snapshots
(
    board LowCardinality(String),
    taken_at DateTime('UTC'),
    rank UInt32,
    user_id String,
    score Float64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(taken_at)
ORDER BY (board, taken_at, rank)
TTL taken_at + INTERVAL 90 DAY;
--;;
-- Experiment exposures and outcomes (filled by experiments/).
CREATE TABLE IF NOT EXISTS experiment_exposures
(
    experiment LowCardinality(String),
    arm LowCardinality(String),
    user_id String,
    first_exposed_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (experiment, user_id);
--;;
CREATE TABLE IF NOT EXISTS experiment_outcomes
(
    experiment LowCardinality(String),
    arm LowCardinality(String),
    user_id String,
    metric LowCardinality(String),
    value Float64,
    event_id UUID,
    occurred_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (experiment, metric, user_id, event_id);
