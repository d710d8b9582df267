-- When the listener did what earned the karma (the source event's time), for progression charts
-- on the listener's own timeline rather than the worker's processing time.
ALTER TABLE karma_history ADD COLUMN IF NOT EXISTS occurred_at DateTime64(3, 'UTC') DEFAULT created_at;
