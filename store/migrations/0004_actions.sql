-- sevpipe store, version 4: the actions book (store/actions.py).
--
-- One row per remediation action as it stands, written by the actions stage after each of its
-- events, and by a person's decision (approve, deny) or the expiry sweep, which also put the
-- action.<decision> event in incident_events (the outbox) in the same transaction. Times are
-- epoch milliseconds, as in the embedded store. expires_ms is set only while the action
-- awaits approval, so the sweep's partial index holds only what waits.

CREATE TABLE actions (
    action_id    text PRIMARY KEY,
    incident_id  text NOT NULL,
    state        text NOT NULL,
    expires_ms   bigint,
    updated_ms   bigint NOT NULL,
    doc          json NOT NULL
);

CREATE INDEX actions_by_incident ON actions (incident_id, updated_ms DESC);
CREATE INDEX actions_by_update ON actions (updated_ms DESC, action_id DESC);
CREATE INDEX actions_awaiting ON actions (expires_ms) WHERE state = 'awaiting_approval';
