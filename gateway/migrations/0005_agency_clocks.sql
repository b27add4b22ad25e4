-- Agency clocks (issue 5): the clock events schools, residential institutions and NGOs record
-- (RecordAgencyClockEvent) and what the deadline engine needs to keep their deadlines beside the
-- case clocks. Portable SQL: SQLite and PostgreSQL; instants are microseconds in BIGINT.

-- Clock events as agencies record them. The same agency and idempotency key exist only once.
-- The event is kept whole, as protobuf: it holds no personal data (the subject reference is the
-- agency's own id of the matter, never a name or IIN); the ledger entry holds its SHA-256.
CREATE TABLE agency_clock_events (
    event_id           TEXT PRIMARY KEY,
    agency_id          TEXT NOT NULL,
    -- The agency's district when the event was recorded.
    district_id        TEXT NOT NULL,
    idempotency_key    TEXT NOT NULL,
    subject_reference  TEXT NOT NULL,
    -- An AgencyClockEventKind name.
    kind               TEXT NOT NULL,
    event              BYTEA NOT NULL,
    event_sha256       TEXT NOT NULL,
    acting_user_id     TEXT NOT NULL,
    recorded_at        BIGINT NOT NULL,
    -- The event's ledger entry: the order of a subject's events.
    ledger_seq         BIGINT NOT NULL,
    UNIQUE (agency_id, idempotency_key)
);

-- A subject's events in order (an event that meets a deadline before the event that creates it
-- was applied makes the later one be created met).
CREATE INDEX agency_clock_events_by_subject
    ON agency_clock_events (agency_id, subject_reference, kind, ledger_seq);

-- What an agency clock is about: the agency's own reference of the matter (empty for the case
-- clocks), and the agency that referred a service (WEEKLY_PROGRESS: told when a report is late).
ALTER TABLE deadlines ADD COLUMN subject_reference TEXT NOT NULL DEFAULT '';
ALTER TABLE deadlines ADD COLUMN related_agency_id TEXT NOT NULL DEFAULT '';

-- One agency's deadlines of one subject (meeting, cancelling, numbering the next report).
CREATE INDEX deadlines_by_subject ON deadlines (responsible_agency_id, subject_reference, kind);
-- The child-protection service's answer is met when the commission decides the K it names.
CREATE INDEX deadlines_by_help_request ON deadlines (help_request_message_id);
