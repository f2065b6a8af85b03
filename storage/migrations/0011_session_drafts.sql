-- Sessions assembled piece by piece through the HTTP API (`mams serve`): a description,
-- then the buyer's items, then sellers one at a time. Until its first room opens a draft's
-- `config` is the scenario mapping as assembled so far (each part validated as scenario
-- files are); the first start validates it whole, stores it in `sessions` as any session
-- (the one configuration every later run reads) and sets `frozen_at`: from then on a
-- change is refused, so every room of a session runs the same configuration.
CREATE TABLE session_drafts (
    session_id  uuid PRIMARY KEY,
    description text        NOT NULL DEFAULT '',
    config      jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    frozen_at   timestamptz
);
CREATE INDEX session_drafts_created ON session_drafts (created_at DESC);
