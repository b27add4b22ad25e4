-- The durable outbox of clock events (Gateway.RecordAgencyClockEvent): queued in the transaction
-- of the change that causes them, pushed after commit and by the service's retry loop until the
-- gateway records them. The idempotency key is the primary key, so a replay queues nothing; the
-- gateway de-duplicates by (agency, key), so a repeated push records nothing twice.
-- `position` orders the events (an incident's start never overtakes its report); `state` is
-- pending, recorded or refused (never retried).

CREATE TABLE clock_events (
    idempotency_key TEXT PRIMARY KEY,
    position        BIGINT NOT NULL,
    subject_reference TEXT NOT NULL,
    event_kind      TEXT NOT NULL,
    request_sha256  TEXT NOT NULL,
    acting_user     BYTEA NOT NULL,
    event           BYTEA NOT NULL,
    state           TEXT NOT NULL,
    queued_at       BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_code       TEXT,
    event_id        TEXT,
    done_at         BIGINT
);

CREATE INDEX clock_events_pending ON clock_events (state, position);
