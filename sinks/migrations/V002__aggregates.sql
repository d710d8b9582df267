-- Per-track, per-context aggregates kept by a materialised view. Counts are uniqExact states
-- over event ids, so a redelivered event adds nothing.
CREATE TABLE IF NOT EXISTS track_context_hourly
(
    hour DateTime('UTC'),
    track_id String,
    artist_id String,
    genre LowCardinality(String),
    device LowCardinality(String),
    activity LowCardinality(String),
    plays AggregateFunction(uniqExact, UUID),
    completions AggregateFunction(uniqExact, UUID),
    skips AggregateFunction(uniqExact, UUID),
    likes AggregateFunction(uniqExact, UUID)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, track_id, device, activity, artist_id, genre);
--;;
CREATE MATERIALIZED VIEW IF NOT EXISTS track_context_hourly_mv TO track_context_hourly AS
SELECT
    toStartOfHour(occurred_at) AS hour, track_id, artist_id, genre, device, activity,
    uniqExactStateIf(event_id, kind = 'play_start') AS plays,
    uniqExactStateIf(event_id, kind = 'play_end') AS completions,
    uniqExactStateIf(event_id, kind = 'skip') AS skips,
    uniqExactStateIf(event_id, kind = 'like') AS likes
FROM events
WHERE track_id != ''
GROUP BY hour, track_id, artist_id, genre, device, activity;
