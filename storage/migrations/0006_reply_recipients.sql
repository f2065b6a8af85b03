-- A seller's reply goes to the buyer alone (the visibility policy: sellers never see each
-- other), but the messages read model recorded every seller of the room as its
-- recipients. `mams_append` (migration 0005, unchanged otherwise) now records the buyer,
-- and the rows already written are corrected: a row whose sender is not the room's buyer
-- is a seller's reply.

UPDATE messages m SET recipients = ARRAY[COALESCE(n.buyer, 'buyer')]
FROM negotiation_runs n
WHERE n.negotiation_id = m.negotiation_id
  AND m.sender <> COALESCE(n.buyer, 'buyer');

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

        -- Messages come from the events themselves (their jsonb is at hand here): the
        -- buyer's words, sellers' replies, the deal and the walk-away, one row each.
        INSERT INTO messages (negotiation_id, seq, message_id, round, sender, recipients,
                              text, offer_unit_price, offer_quantity)
        SELECT b.stream_id, b.seq, (b.data->>'message_id')::uuid, (b.data->>'round')::int4,
               CASE WHEN b.type = 'seller.replied' THEN b.data->>'seller'
                    ELSE COALESCE(n.buyer, 'buyer') END,
               CASE b.type
                   WHEN 'buyer.said' THEN ARRAY(SELECT jsonb_array_elements_text(b.data->'to'))
                   WHEN 'seller.replied' THEN ARRAY[COALESCE(n.buyer, 'buyer')]
                   WHEN 'deal.closed' THEN ARRAY[b.data->>'seller']
                   ELSE n.sellers END,
               b.data->>'text',
               CASE b.type
                   WHEN 'buyer.said' THEN (b.data->>'counter_price')::numeric
                   WHEN 'seller.replied' THEN (b.data->'offer'->>'unit_price')::numeric
                   WHEN 'deal.closed' THEN (b.data->>'unit_price')::numeric END,
               CASE b.type
                   WHEN 'seller.replied' THEN (b.data->'offer'->>'quantity')::int4
                   WHEN 'deal.closed' THEN (b.data->>'quantity')::int4 END
        FROM unnest(p_stream, p_seq, p_id, p_type, p_data) AS b(stream_id, seq, id, type, data)
        JOIN negotiation_runs n ON n.negotiation_id = b.stream_id
        WHERE b.type IN ('buyer.said', 'seller.replied', 'deal.closed', 'buyer.walked_away')
          AND (all_new OR b.id = ANY (inserted))
        ON CONFLICT DO NOTHING;

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
