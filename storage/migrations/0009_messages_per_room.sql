-- A message id is unique within its room, not across the log. Agents choose their own
-- message ids, and nothing stops one from using the same id in two rooms (the domain
-- refuses a repeat only within a room: negotiation.DUPLICATE), but `messages` had
-- message_id UNIQUE on its own, so `mams_append` (whose insert is ON CONFLICT DO NOTHING)
-- silently dropped the second room's row while its event was committed. The key is now
-- (negotiation_id, message_id); `mams_append` is unchanged.
ALTER TABLE messages DROP CONSTRAINT messages_message_id_key;
ALTER TABLE messages
    ADD CONSTRAINT messages_negotiation_message_key UNIQUE (negotiation_id, message_id);

-- The rows dropped so far come back from the log: every message event of a recorded run
-- without its row gets the row `mams_append` (migration 0006) would have written, at the
-- time its event was committed (which is when `mams_append` writes a row).
INSERT INTO messages (negotiation_id, seq, message_id, round, sender, recipients, text,
                      offer_unit_price, offer_quantity, sent_at)
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
           WHEN 'deal.closed' THEN (b.data->>'quantity')::int4 END,
       b.recorded_at
FROM events b
JOIN negotiation_runs n ON n.negotiation_id = b.stream_id
WHERE b.type IN ('buyer.said', 'seller.replied', 'deal.closed', 'buyer.walked_away')
  AND NOT EXISTS (SELECT 1 FROM messages m
                  WHERE m.negotiation_id = b.stream_id AND m.seq = b.seq)
ON CONFLICT DO NOTHING;
