-- The school's referrals of pupils to services outside education (issue 5, M:2247-2271): each
-- one a row of the monthly log J (M:4757-4796), with what the NGO reported, the follow-up check
-- and the safety team's meetings about the pupil.
--
-- Portable SQL for SQLite and PostgreSQL: TEXT, BIGINT (instants as microseconds since the Unix
-- epoch, flags as 0 or 1), BYTEA. Dates as YYYY-MM-DD in the district's calendar, months YYYY-MM.
CREATE TABLE service_referrals (
    referral_id        TEXT PRIMARY KEY,
    idempotency_key    TEXT NOT NULL UNIQUE,
    request_sha256     TEXT NOT NULL,
    -- The ServiceReferral sent, encoded; queued in `sent_messages` under `message_key`.
    referral           BYTEA NOT NULL,
    message_key        TEXT NOT NULL UNIQUE,
    ngo_agency_id      TEXT NOT NULL,
    service_name       TEXT NOT NULL,
    referred_on        TEXT NOT NULL,
    month              TEXT NOT NULL,
    -- REFERRAL_STATUS_* and SERVICE_BUSINESS_STATUS_*, from the NGO's latest update.
    status             TEXT NOT NULL,
    business_status    TEXT NOT NULL,
    support_received   TEXT NOT NULL,
    reason             TEXT NOT NULL,
    -- The reported_at of the latest update applied (an older one arriving late changes nothing).
    last_update_at     BIGINT,
    date_checked       TEXT,
    cancellation_key   TEXT,
    created_by_user_id TEXT NOT NULL,
    created_by_name    TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);

CREATE INDEX service_referrals_by_month ON service_referrals (month, referred_on);

-- Every SERVICE_UPDATE received about a referral, encoded.
CREATE TABLE service_referral_updates (
    message_id  TEXT PRIMARY KEY,
    referral_id TEXT NOT NULL REFERENCES service_referrals (referral_id),
    update_sent BYTEA NOT NULL,
    received_at BIGINT NOT NULL
);

CREATE INDEX service_referral_updates_by_referral ON service_referral_updates (referral_id);

-- The safety team's meetings about a referred pupil (SAFETY_MEETING_NOTICE to the NGO) and the
-- NGO's attendance (NULL until recorded).
CREATE TABLE safety_meetings (
    meeting_id             TEXT PRIMARY KEY,
    idempotency_key        TEXT NOT NULL UNIQUE,
    request_sha256         TEXT NOT NULL,
    referral_id            TEXT NOT NULL REFERENCES service_referrals (referral_id),
    meeting_at             BIGINT NOT NULL,
    place                  TEXT NOT NULL,
    note                   TEXT NOT NULL,
    message_key            TEXT NOT NULL UNIQUE,
    ngo_attended           BIGINT,
    attendance_recorded_by TEXT,
    created_at             BIGINT NOT NULL
);

-- The logs J sent to the commission, one row per idempotency key.
CREATE TABLE referral_logs_sent (
    idempotency_key TEXT PRIMARY KEY,
    year            BIGINT NOT NULL,
    month           BIGINT NOT NULL,
    sent_by_user_id TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);
