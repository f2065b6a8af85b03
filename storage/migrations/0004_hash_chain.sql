-- A hash chain per stream: each event stores the hash of the previous event of its stream
-- (32 zero bytes for seq 1) and its own hash over that, its identity and its canonical data
-- (see mams.storage.chain). Rows written before this migration keep NULLs; `mams audit`
-- reports them as unhashed.
ALTER TABLE events ADD COLUMN prev_hash bytea;
ALTER TABLE events ADD COLUMN hash bytea;
