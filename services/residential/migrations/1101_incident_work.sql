-- The residential institution's own incident work (issue 5, M:2855-3040), beside the reports D
-- of the school's extension (`school_incidents`, migrations 1001-1099), numbered from 1101.
--
-- Portable SQL for SQLite and PostgreSQL: TEXT, BIGINT (instants as microseconds since the Unix
-- epoch, flags as 0 or 1, protobuf enum numbers) and BYTEA (encoded protobuf).

-- One row per incident worked on: a report D (`incident_id` is its id) once its severity is set,
-- or a report bypassing the director (no D: the referral itself is kept, and only its reporter
-- sees it). The two INCIDENT_REFERRALs to the commission and the police are queued in the
-- agency's `sent_messages` under `commission_key` and `police_key`.
CREATE TABLE residential_incident_work (
    incident_id          TEXT PRIMARY KEY,
    director_implicated  BIGINT NOT NULL,
    -- Who created the row: the first assessor, or the reporter bypassing the director.
    created_by_user_id   TEXT NOT NULL,
    -- A report bypassing the director: its request key and fingerprint, and the referral.
    idempotency_key      TEXT UNIQUE,
    request_sha256       TEXT,
    bypass_referral      BYTEA,
    -- INCIDENT_SEVERITY_* number; grounds as `,1,5,` of MANDATORY_REPORT_GROUND_* numbers.
    severity             BIGINT NOT NULL,
    grounds              TEXT NOT NULL,
    grounds_other        TEXT NOT NULL,
    commission_key       TEXT,
    police_key           TEXT,
    referred_by_user_id  TEXT,
    closed_at            BIGINT,
    closed_by            TEXT,
    version              BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);

CREATE INDEX residential_incident_work_commission ON residential_incident_work (commission_key);

-- The referrals of injured children to health, each queued under `message_key`.
CREATE TABLE residential_health_referrals (
    message_key          TEXT PRIMARY KEY,
    incident_id          TEXT NOT NULL,
    request_sha256       TEXT NOT NULL,
    created_by_user_id   TEXT NOT NULL,
    created_at           BIGINT NOT NULL
);

CREATE INDEX residential_health_referrals_by_incident
    ON residential_health_referrals (incident_id, created_at);

-- The commission's protection instructions received (filed by the inbox's transaction), and
-- where each stands: 0 not yet acknowledged, else INSTRUCTION_ACKNOWLEDGEMENT_KIND_*.
CREATE TABLE residential_instructions (
    message_id           TEXT PRIMARY KEY,
    commission_agency_id TEXT NOT NULL,
    case_reference       TEXT NOT NULL,
    instruction          BYTEA NOT NULL,
    received_at          BIGINT NOT NULL,
    state                BIGINT NOT NULL
);

-- Each acknowledgement sent, queued under `message_key`, with the state it replaced (so one the
-- gateway refuses is undone).
CREATE TABLE residential_acknowledgements (
    message_key            TEXT PRIMARY KEY,
    instruction_message_id TEXT NOT NULL,
    kind                   BIGINT NOT NULL,
    prev_state             BIGINT NOT NULL,
    request_sha256         TEXT NOT NULL,
    created_at             BIGINT NOT NULL
);

CREATE INDEX residential_acknowledgements_by_instruction
    ON residential_acknowledgements (instruction_message_id, created_at);
