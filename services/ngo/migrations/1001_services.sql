-- The NGO's services (issue 5, M:2247-2255): one per SERVICE_REFERRAL a school sent or
-- ACTION_ASSIGNMENT (a support-plan row) the commission assigned, with where it stands.
--
-- Portable SQL for SQLite and PostgreSQL: TEXT, BIGINT (instants as microseconds since the Unix
-- epoch), BYTEA. Dates as YYYY-MM-DD in the district's calendar.
CREATE TABLE ngo_services (
    service_id          TEXT PRIMARY KEY,
    -- SERVICE_SOURCE_*
    source              TEXT NOT NULL,
    -- The school (referral) or the commission (assignment).
    referrer_agency_id  TEXT NOT NULL,
    -- The SERVICE_REFERRAL's or ACTION_ASSIGNMENT's gateway message id.
    received_message_id TEXT NOT NULL UNIQUE,
    -- The school's reference (referral) or '' ; the case and row (assignment) or '' and 0.
    referral_reference  TEXT NOT NULL,
    case_reference      TEXT NOT NULL,
    action_number       BIGINT NOT NULL,
    -- The pupil's full name (referral) or the child's first name (assignment), and what is asked.
    child_name          TEXT NOT NULL,
    requested           TEXT NOT NULL,
    -- REFERRAL_STATUS_* and SERVICE_BUSINESS_STATUS_*
    status              TEXT NOT NULL,
    business_status     TEXT NOT NULL,
    session_on          TEXT,
    support_received    TEXT NOT NULL,
    reason              TEXT NOT NULL,
    version             BIGINT NOT NULL,
    received_at         BIGINT NOT NULL,
    last_progress_at    BIGINT,
    updated_at          BIGINT NOT NULL
);

CREATE INDEX ngo_services_by_received ON ngo_services (received_at);

-- Every accepted step, with what it replaced (so a step the gateway refuses is undone) and the
-- SERVICE_UPDATE or ACTION_PROGRESS sent for it, queued in `sent_messages` under `message_key`.
CREATE TABLE ngo_service_steps (
    message_key                TEXT PRIMARY KEY,
    service_id                 TEXT NOT NULL REFERENCES ngo_services (service_id),
    version                    BIGINT NOT NULL,
    request_sha256             TEXT NOT NULL,
    -- SERVICE_EVENT_*
    event                      TEXT NOT NULL,
    prev_status                TEXT NOT NULL,
    prev_business_status       TEXT NOT NULL,
    prev_session_on            TEXT,
    prev_support_received      TEXT NOT NULL,
    prev_reason                TEXT NOT NULL,
    prev_last_progress_at      BIGINT,
    recorded_by                TEXT NOT NULL,
    recorded_at                BIGINT NOT NULL,
    UNIQUE (service_id, version)
);

-- The safety-team meetings schools fixed for pupils the NGO serves (SAFETY_MEETING_NOTICE).
CREATE TABLE ngo_meeting_notices (
    message_id       TEXT PRIMARY KEY,
    -- The service the notice is about, when one matches.
    service_id       TEXT,
    school_agency_id TEXT NOT NULL,
    -- The SafetyMeetingNotice, encoded.
    notice           BYTEA NOT NULL,
    meeting_at       BIGINT NOT NULL,
    received_at      BIGINT NOT NULL
);
