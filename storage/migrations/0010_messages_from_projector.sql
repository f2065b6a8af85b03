-- The read-model projection in one language. `mams_append` (migration 0005, redefined
-- whole in 0006) derived the `messages` rows itself from the events' JSON, reading their
-- fields by name (a renamed event field would have emptied columns silently), and decided
-- the recipients by a second copy of the visibility rule. Its message rows now come, like
-- the runs, rounds, ends and outcomes, from the document the Python projector computes
-- from the typed events (mams.storage.readmodels.ReadModelProjector.rows; recipients by
-- mams.domain.visibility.told). The rows are the ones 0006 wrote (tests/storage/
-- test_projection.py checks so for every kind of message), written for the events this
-- call inserted only, ON CONFLICT DO NOTHING on the per-room key of 0009. Nothing else
-- changes: the chain check, the events' insert and the other tables.
--
-- `models` is NULL (no projector: no read models) or {"runs": [...], "rounds": [...],
-- "messages": [...], "ends": [...], "outcomes": [...]} (a key only where the batch has
-- rows), each row an object carrying `e`, the event_id it comes from. Returns NULL when
-- every event was new, else the event_ids this call inserted. Raises SQLSTATE MA001 when
-- the batch does not continue a stream's stored hash chain.
CREATE OR REPLACE FUNCTION mams_append(
    p_stream uuid[], p_seq int4[], p_id uuid[], p_type text[], p_data jsonb[],
    p_prev bytea[], p_hash bytea[], models jsonb
) RETURNS uuid[] LANGUAGE plpgsql
-- The planner takes unnest() and jsonb_to_recordset() for 100 rows and would hash the
-- whole events (or negotiation_runs) table to join a batch against it: a scan growing
-- with the log on every commit (3.3 ms for a 13-event batch on a 30k-event log). Index
-- lookups per batch row are right at any batch size here.
SET enable_hashjoin = off SET enable_mergejoin = off AS $$
DECLARE
    inserted uuid[];
    all_new boolean;  -- every event was new (the usual case): no row needs filtering
    genesis constant bytea := decode(repeat('00', 32), 'hex');
BEGIN
    -- Each stream's first event here must continue the stored chain: its prev_hash is
    -- the hash of the stored row before it (zeros for a stream's first event, or when
    -- that row is missing or older than the chain). Writers chain from memory, and may
    -- chain from a batch still committing; this keeps a stale memory from ever storing a
    -- broken link. The writer catches MA001 and chains again from the log.
    IF EXISTS (
        SELECT 1
        FROM (SELECT DISTINCT ON (b.stream_id) b.stream_id, b.seq, b.prev
              FROM unnest(p_stream, p_seq, p_prev) AS b(stream_id, seq, prev)
              ORDER BY b.stream_id, b.seq) f
        LEFT JOIN events e ON e.stream_id = f.stream_id AND e.seq = f.seq - 1
        WHERE f.prev IS DISTINCT FROM coalesce(e.hash, genesis)
    ) THEN
        RAISE EXCEPTION 'a stream''s first event does not continue its stored hash chain'
            USING ERRCODE = 'MA001';
    END IF;

    WITH ins AS (
        INSERT INTO events (stream_id, seq, event_id, type, data, prev_hash, hash)
        SELECT * FROM unnest(p_stream, p_seq, p_id, p_type, p_data, p_prev, p_hash)
        ON CONFLICT (event_id) DO NOTHING
        RETURNING event_id
    )
    SELECT coalesce(array_agg(event_id), '{}') INTO inserted FROM ins;
    all_new := cardinality(inserted) = cardinality(p_id);

    IF models IS NOT NULL AND cardinality(inserted) > 0 THEN
        -- Order matters: runs exist before their messages, outcomes after their runs.
        -- Each table is touched only if the batch has rows for it (a key of `models`).

        IF models ? 'runs' THEN
            INSERT INTO negotiation_runs (negotiation_id, session_id, item_name, status, brain,
                                          max_rounds, seed, rounds, buyer, sellers)
            SELECT r.nid, r.session, r.item, 'running', r.brain, r.max_rounds, r.seed, 0,
                   r.buyer, r.sellers
            FROM jsonb_to_recordset(models->'runs') AS r(
                e uuid, nid uuid, session uuid, item text, brain text, max_rounds int4,
                seed int8, buyer text, sellers text[])
            WHERE (all_new OR r.e = ANY (inserted))
            ON CONFLICT (negotiation_id) DO NOTHING;
        END IF;

        IF models ? 'rounds' THEN
            UPDATE negotiation_runs n SET rounds = GREATEST(n.rounds, x.round)
            FROM (SELECT r.nid, max(r.round) AS round
                  FROM jsonb_to_recordset(models->'rounds') AS r(e uuid, nid uuid, round int4)
                  WHERE (all_new OR r.e = ANY (inserted))
                  GROUP BY r.nid) x
            WHERE n.negotiation_id = x.nid;
        END IF;

        -- One row per message event (the buyer's words, a seller's reply, the deal, the
        -- walk-away), computed by the projector from the typed events: sender, recipients
        -- (the visibility policy's rule), words, price and quantity. A row's run exists
        -- (the foreign key was dropped in 0005 for this check's sake).
        IF models ? 'messages' THEN
            INSERT INTO messages (negotiation_id, seq, message_id, round, sender, recipients,
                                  text, offer_unit_price, offer_quantity)
            SELECT r.nid, r.seq, r.mid, r.round, r.sender, r."to", r.text, r.price, r.qty
            FROM jsonb_to_recordset(models->'messages') AS r(
                e uuid, nid uuid, seq int4, mid uuid, round int4, sender text, "to" text[],
                text text, price numeric, qty int4)
            WHERE (all_new OR r.e = ANY (inserted))
              AND EXISTS (SELECT 1 FROM negotiation_runs n WHERE n.negotiation_id = r.nid)
            ON CONFLICT DO NOTHING;
        END IF;

        IF models ? 'ends' THEN
            UPDATE negotiation_runs n SET status = x.status, rounds = x.rounds, ended_at = now()
            FROM (SELECT DISTINCT ON (r.nid) r.nid, r.status, r.rounds
                  FROM jsonb_to_recordset(models->'ends') AS r(
                      e uuid, nid uuid, status text, rounds int4)
                  WHERE (all_new OR r.e = ANY (inserted))) x
            WHERE n.negotiation_id = x.nid;
        END IF;

        IF models ? 'outcomes' THEN
            INSERT INTO outcomes (negotiation_id, type, seller, unit_price, quantity, total, rounds)
            SELECT r.nid, r.type, r.seller, r.price, r.qty, r.total, r.rounds
            FROM jsonb_to_recordset(models->'outcomes') AS r(
                e uuid, nid uuid, type text, seller text, price numeric, qty int4,
                total numeric, rounds int4)
            WHERE (all_new OR r.e = ANY (inserted))
            ON CONFLICT (negotiation_id) DO NOTHING;
        END IF;
    END IF;

    IF all_new THEN
        RETURN NULL;
    END IF;
    RETURN inserted;
END
$$;
