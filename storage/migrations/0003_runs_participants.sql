-- Who took part in a negotiation, so message rows can name sender and recipients.
ALTER TABLE negotiation_runs ADD COLUMN buyer text;
ALTER TABLE negotiation_runs ADD COLUMN sellers text[] NOT NULL DEFAULT '{}';
