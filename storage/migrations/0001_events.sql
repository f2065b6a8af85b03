-- The append-only event log. (stream_id, seq) gives optimistic concurrency,
-- event_id gives idempotent appends, global_pos a total order for catch-up readers.
CREATE TABLE events (
    stream_id   uuid        NOT NULL,
    seq         integer     NOT NULL,
    event_id    uuid        NOT NULL UNIQUE,
    type        text        NOT NULL,
    data        jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    global_pos  bigserial   NOT NULL,
    PRIMARY KEY (stream_id, seq),
    CHECK (seq > 0)
);

CREATE UNIQUE INDEX events_global_pos_idx ON events (global_pos);
