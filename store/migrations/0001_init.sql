-- sevpipe store, version 1: incident groups, incidents, and their events (outbox + timeline).
--
-- Documents are `json`, not `jsonb`: json keeps the text exactly as written (so an Incident
-- reads back byte for byte) and accepts \u0000, which jsonb rejects but an alert label may hold.
-- Times used for ordering are epoch milliseconds, as in the embedded store, so that both
-- backends filter and order identically.

CREATE TABLE incident_groups (
    key          text PRIMARY KEY,
    version      bigint NOT NULL CHECK (version > 0),
    incident_id  text,
    marks        json NOT NULL
);

CREATE TABLE incidents (
    id           text PRIMARY KEY,
    key          text NOT NULL,
    status       text NOT NULL,
    severity     text NOT NULL,
    opened_ms    bigint NOT NULL,
    updated_ms   bigint NOT NULL,
    version      bigint NOT NULL,
    doc          json NOT NULL
);

CREATE INDEX incidents_updated ON incidents (updated_ms DESC, id DESC);

CREATE TABLE incident_events (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id  text NOT NULL,
    topic        text NOT NULL,
    event_id     text NOT NULL UNIQUE,
    envelope     json NOT NULL,
    relayed      boolean NOT NULL DEFAULT false
);

CREATE INDEX incident_events_by_incident ON incident_events (incident_id, seq);
-- The relay's scan: small, as relayed rows leave it.
CREATE INDEX incident_events_unrelayed ON incident_events (seq) WHERE NOT relayed;
