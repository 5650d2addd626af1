-- sevpipe store, version 3: the effects ledger (store/effects.py).
--
-- One row per effect on the world, keyed by the caller's deterministic effect id. Tokens come
-- from one sequence, so every claim ever granted is fenced by a higher token than those before
-- it. Lease times are the server's clock (clock_timestamp()), the one clock all replicas share.
-- `outcome` is json, not jsonb, as in 0001: the text reads back as written, \u0000 included.

CREATE SEQUENCE effect_tokens AS bigint;

CREATE TABLE effects (
    effect_id    text PRIMARY KEY,
    state        text NOT NULL CHECK (state IN ('held', 'released', 'succeeded', 'failed')),
    token        bigint NOT NULL,
    holder       text,
    lease_until  timestamptz,
    attempts     integer NOT NULL CHECK (attempts > 0),
    outcome      json,
    error        text,
    updated_at   timestamptz NOT NULL
);
