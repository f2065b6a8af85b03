-- Which broker serves which open room, so that a broker only takes over (resumes) rooms
-- whose broker is gone, never those a live broker (another `mams broker`, or the one
-- inside a `mams run`) is serving. A broker is alive while its session holds the advisory
-- lock mams_broker_key(owner); PostgreSQL releases it when the broker's connection ends,
-- however the process died. A room with no row (opened before this table) has no owner.
CREATE TABLE room_owners (
    negotiation_id uuid        PRIMARY KEY,
    owner          uuid        NOT NULL,
    claimed_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX room_owners_owner ON room_owners (owner);

CREATE FUNCTION mams_broker_key(owner uuid) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT hashtextextended('mams.broker:' || owner::text, 0) $$;

-- Whether the broker `owner` is alive: some session of this database holds its lock. Read
-- from pg_locks (a bigint advisory key is classid = high 32 bits, objid = low 32 bits,
-- objsubid = 1), so asking never takes the lock, even for an instant.
CREATE FUNCTION mams_broker_alive(owner uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.classid = ((mams_broker_key(owner) >> 32) & 4294967295)::oid
          AND l.objid = (mams_broker_key(owner) & 4294967295)::oid
    )
$$;
