-- The school's incident reports D (M:3457-3568) and the monthly summaries E it sent.
--
-- Portable SQL for SQLite and PostgreSQL, as the agency's own migrations: TEXT, BIGINT (instants
-- as microseconds since the Unix epoch, flags as 0 or 1) and BYTEA (the encoded protobuf).
-- Versions of the school's own migrations start at 1000, after the agency's.

-- One row per report D. `report` is the form as recorded; the other columns are what lists,
-- summaries and clocks select on. Lists of codes are stored as `,1,5,` so that one code is found
-- with `LIKE '%,5,%'`.
CREATE TABLE school_incidents (
    incident_id                 TEXT PRIMARY KEY,
    idempotency_key             TEXT NOT NULL UNIQUE,
    -- SHA-256 of the request, to tell a retry from another report under the same key.
    request_sha256              TEXT NOT NULL,
    report                      BYTEA NOT NULL,
    -- Dates as YYYY-MM-DD, the month (of the report date) as YYYY-MM.
    report_date                 TEXT NOT NULL,
    incident_date               TEXT NOT NULL,
    month                       TEXT NOT NULL,
    -- Protobuf numbers: REPORTER_STATUS_*, PROBLEM_BEHAVIOUR_*, INCIDENT_ROLE_*, RISK_TIER_*.
    reporter_status             BIGINT NOT NULL,
    behaviours                  TEXT NOT NULL,
    roles                       TEXT NOT NULL,
    risk_tiers                  TEXT NOT NULL,
    injured                     BIGINT NOT NULL,
    risk_of_injury              BIGINT NOT NULL,
    urgent                      BIGINT NOT NULL,
    start_by                    TEXT NOT NULL,
    recorded_at                 BIGINT NOT NULL,
    recorded_by_user_id         TEXT NOT NULL,
    recorded_by_name            TEXT NOT NULL,
    investigation_started_at    BIGINT,
    investigation_started_by    TEXT,
    investigation_finished_at   BIGINT,
    investigation_finished_by   TEXT
);

-- A month's reports in order (incident ids are UUIDv7, ordered by creation).
CREATE INDEX school_incidents_by_month ON school_incidents (month, incident_id);
CREATE INDEX school_incidents_by_incident_date ON school_incidents (incident_date);
CREATE INDEX school_incidents_open ON school_incidents (investigation_finished_at, start_by);

-- The summaries E handed to the gateway, one per idempotency key: a retry with the same key
-- pushes the message queued the first time (the agency's `sent_messages` row under the same key).
CREATE TABLE school_summaries_sent (
    idempotency_key TEXT PRIMARY KEY,
    year            BIGINT NOT NULL,
    month           BIGINT NOT NULL,
    sent_by_user_id TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);
