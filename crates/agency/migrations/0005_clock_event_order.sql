-- The clock events' order taken from a counter row (issue 5 review): `position` was
-- MAX(position) + 1 read inside the queuing transaction, which two concurrent transactions on
-- PostgreSQL read alike. Now each queuing transaction takes the next position with
-- `UPDATE clock_event_order SET last_position = last_position + 1 … RETURNING`, which holds the
-- row until it commits (serialising the writers of clock events, a few a day), and positions are
-- unique. Rows queued before are renumbered 1..n in the order they were pushed in
-- (position, then key), so equal positions the race may have left stay in that order.

-- (The new numbers are computed into a table of their own first: an UPDATE whose subquery reads
-- the table being updated may see rows it already renumbered.)
CREATE TABLE clock_event_renumbering AS
SELECT e.idempotency_key AS idempotency_key, (
    SELECT COUNT(*) FROM clock_events AS earlier
    WHERE earlier.position < e.position
       OR (earlier.position = e.position AND earlier.idempotency_key <= e.idempotency_key)
) AS new_position
FROM clock_events AS e;

UPDATE clock_events SET position = (
    SELECT r.new_position FROM clock_event_renumbering AS r
    WHERE r.idempotency_key = clock_events.idempotency_key
);

DROP TABLE clock_event_renumbering;

CREATE UNIQUE INDEX clock_events_by_position ON clock_events (position);

CREATE TABLE clock_event_order (
    id            INTEGER PRIMARY KEY,
    last_position BIGINT NOT NULL
);

INSERT INTO clock_event_order (id, last_position)
SELECT 1, COALESCE(MAX(position), 0) FROM clock_events;
