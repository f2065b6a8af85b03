-- Read models (the seed's tables). Money is numeric(12,2), never float.
CREATE TABLE sessions (
    session_id uuid PRIMARY KEY,
    name       text,
    scenario   jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE buyer_configs (
    session_id uuid    NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    item_name  text    NOT NULL,
    quantity   integer NOT NULL CHECK (quantity > 0),
    min_price  numeric(12, 2) NOT NULL,
    max_price  numeric(12, 2) NOT NULL,
    PRIMARY KEY (session_id, item_name),
    CHECK (min_price <= max_price)
);

CREATE TABLE seller_configs (
    session_id                 uuid NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    handle                     text NOT NULL,
    agent_id                   text NOT NULL,
    style                      text,
    customer_retention_weight  numeric(4, 3),
    profit_maximization_weight numeric(4, 3),
    PRIMARY KEY (session_id, handle)
);

CREATE TABLE seller_inventory (
    session_id    uuid NOT NULL,
    handle        text NOT NULL,
    item_name     text NOT NULL,
    cost_price    numeric(12, 2) NOT NULL,
    selling_price numeric(12, 2) NOT NULL,
    least_price   numeric(12, 2) NOT NULL,
    PRIMARY KEY (session_id, handle, item_name),
    FOREIGN KEY (session_id, handle)
        REFERENCES seller_configs (session_id, handle) ON DELETE CASCADE
);

CREATE TABLE negotiation_runs (
    negotiation_id uuid PRIMARY KEY,
    session_id     uuid    NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    item_name      text    NOT NULL,
    status         text    NOT NULL CHECK (status IN ('running', 'completed', 'aborted')),
    brain          text,
    max_rounds     integer,
    seed           bigint,
    rounds         integer NOT NULL DEFAULT 0,
    started_at     timestamptz NOT NULL DEFAULT now(),
    ended_at       timestamptz
);

-- Lists: a session's negotiations, newest first; recent negotiations overall.
CREATE INDEX negotiation_runs_session_idx ON negotiation_runs (session_id, started_at);
CREATE INDEX negotiation_runs_started_idx ON negotiation_runs (started_at);

CREATE TABLE messages (
    negotiation_id   uuid    NOT NULL REFERENCES negotiation_runs (negotiation_id)
                                 ON DELETE CASCADE,
    seq              integer NOT NULL,
    message_id       uuid    NOT NULL UNIQUE,
    round            integer NOT NULL,
    sender           text    NOT NULL,
    recipients       text[]  NOT NULL,
    text             text,
    offer_unit_price numeric(12, 2),
    offer_quantity   integer,
    sent_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (negotiation_id, seq)
);

CREATE TABLE outcomes (
    negotiation_id uuid PRIMARY KEY REFERENCES negotiation_runs (negotiation_id)
                       ON DELETE CASCADE,
    type           text NOT NULL CHECK (type IN ('deal', 'no_deal', 'max_rounds')),
    seller         text,
    unit_price     numeric(12, 2),
    quantity       integer,
    total          numeric(14, 2),
    rounds         integer,
    decided_at     timestamptz NOT NULL DEFAULT now()
);
