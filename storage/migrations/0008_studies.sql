-- The plan of each `mams run` (runs, seed, round limit and timeout, models, items, rooms
-- at once), so that `mams run --session ID --resume` completes a study as it was planned
-- without its flags given again. A session's newest row is its current plan.
CREATE TABLE studies (
    study_id   uuid        PRIMARY KEY,
    session_id uuid        NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    plan       jsonb       NOT NULL
);
CREATE INDEX studies_session_idx ON studies (session_id, created_at);
