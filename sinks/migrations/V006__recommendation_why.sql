-- Why each slate item was picked: its explanation and, for the linear policies, the top feature
-- contributions (value x weight), shown on the listener page next to the track's audio features.
ALTER TABLE recommendations ADD COLUMN IF NOT EXISTS explanation String DEFAULT '';
--;;
ALTER TABLE recommendations ADD COLUMN IF NOT EXISTS why_features Array(LowCardinality(String));
--;;
ALTER TABLE recommendations ADD COLUMN IF NOT EXISTS why_values Array(Float32);
