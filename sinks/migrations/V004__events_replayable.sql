-- What a rebuild of the gamification state needs to replay an event exactly: the listener's time
-- zone (local days: streaks, night listens), the playlist and the rating.
ALTER TABLE events ADD COLUMN IF NOT EXISTS timezone LowCardinality(String) DEFAULT 'UTC';
--;;
ALTER TABLE events ADD COLUMN IF NOT EXISTS playlist_id String DEFAULT '';
--;;
ALTER TABLE events ADD COLUMN IF NOT EXISTS rating Nullable(Float32);
