-- Exposures (agents/lanes.py): one row per (experiment, listener, event) that first treated the
-- listener in a worker's life; the analysis takes the earliest. The table of V001 kept one row
-- per listener with no event, so a row produced again after a restart replaced the first one.
-- Nothing wrote to it before this migration.
DROP TABLE IF EXISTS experiment_exposures;
--;;
CREATE TABLE IF NOT EXISTS experiment_exposures
(
    experiment LowCardinality(String),
    arm LowCardinality(String),
    user_id String,
    exposed_at DateTime64(3, 'UTC'),
    event_id UUID
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(exposed_at)
ORDER BY (experiment, user_id, event_id);
