-- follow_user / unfollow_user events name the listener followed: the friend graph can be rebuilt
-- from the event log, and erasing a listener also erases the edges others drew to them.
ALTER TABLE events ADD COLUMN IF NOT EXISTS friend_id String DEFAULT '';
