-- sevpipe store, version 2: one row per mark and per incident alert.
--
-- Version 1 kept a group's marks and an incident's alerts inside one document each, so every
-- batch rewrote them whole and a group of n alerts cost O(n^2). Existing documents are split
-- into rows here; incident documents lose their alert list and gain their counts.

CREATE TABLE group_marks (
    key          text NOT NULL,
    fingerprint  text NOT NULL,
    starts_at    text NOT NULL,
    status       text NOT NULL,
    at           text NOT NULL DEFAULT '',
    event_id     text NOT NULL DEFAULT '',
    PRIMARY KEY (key, fingerprint)
);

INSERT INTO group_marks (key, fingerprint, starts_at, status)
SELECT g.key, m.fp, m.mark->>0, m.mark->>1
FROM incident_groups g, json_each(g.marks) AS m(fp, mark);

ALTER TABLE incident_groups DROP COLUMN marks;

CREATE TABLE incident_alerts (
    incident_id  text NOT NULL,
    fingerprint  text NOT NULL,
    status       text NOT NULL,
    doc          json NOT NULL,
    PRIMARY KEY (incident_id, fingerprint)
);

INSERT INTO incident_alerts (incident_id, fingerprint, status, doc)
SELECT i.id, a->>'fingerprint', a->>'status', a
FROM incidents i, json_array_elements(i.doc->'alerts') AS a
ON CONFLICT DO NOTHING;

-- json, not jsonb (see 0001), so the document is rebuilt key by key.
UPDATE incidents i SET doc = (
    SELECT json_object_agg(kv.k, kv.v) FROM (
        SELECT e.k, e.v FROM json_each(i.doc) AS e(k, v) WHERE e.k <> 'alerts'
        UNION ALL
        SELECT 'counts', json_build_object('alerts', c.n, 'firing', c.f, 'resolved', c.n - c.f)
        FROM (
            SELECT count(*) AS n, count(*) FILTER (WHERE a->>'status' = 'firing') AS f
            FROM json_array_elements(i.doc->'alerts') AS a
        ) c
    ) kv
)
WHERE i.doc->'alerts' IS NOT NULL;

ALTER TABLE incidents ADD COLUMN resolving_ms bigint;

UPDATE incidents
SET resolving_ms = (extract(epoch FROM (doc->>'resolving_since')::timestamptz) * 1000)::bigint
WHERE status = 'open' AND doc->>'resolving_since' IS NOT NULL;

CREATE INDEX incidents_resolving ON incidents (resolving_ms) WHERE resolving_ms IS NOT NULL;

-- A relayer counts its attempt before it publishes: a row it leaves unmarked (it died) may be
-- in the log already, and the next relayer looks there before publishing it again.
ALTER TABLE incident_events ADD COLUMN relay_attempts integer NOT NULL DEFAULT 0;
