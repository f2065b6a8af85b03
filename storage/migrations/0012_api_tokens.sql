-- Tokens the HTTP API's operator mints for players and observers (`mams serve`,
-- POST /api/sessions/{id}/tokens, POST /api/tokens). A token is `mams_<token_id>_<secret>`:
-- `token_id` is public (it names the token in logs and rate limits, and finds its row);
-- only the SHA-256 of the secret is kept, so this table gives nobody a usable token. The
-- server compares the hash of what a caller sends with `secret_sha256` in constant time.
-- `session_id` NULL is an observer of every session; `agent` is the seller (or buyer) the
-- token views as. `revoked_at` set: refused from then on.
CREATE TABLE api_tokens (
    token_id      text        PRIMARY KEY,
    secret_sha256 bytea       NOT NULL CHECK (length(secret_sha256) = 32),
    role          text        NOT NULL CHECK (role IN ('buyer', 'seller', 'observer')),
    session_id    uuid,
    agent         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    CHECK (role = 'observer' OR session_id IS NOT NULL),
    CHECK (role <> 'seller' OR agent IS NOT NULL)
);
CREATE INDEX api_tokens_session ON api_tokens (session_id);
