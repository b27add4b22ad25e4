-- The school's safeguarding procedure (P:66-80, P:130-178): the lead's absences, the concerns
-- staff report to the lead (or the deputy), and allegations against staff.
--
-- Portable SQL for SQLite and PostgreSQL, as the school's other migrations: TEXT, BIGINT
-- (instants as microseconds since the Unix epoch, flags as 0 or 1), dates as YYYY-MM-DD.
-- States are stored as their protobuf names (`CONCERN_STATE_REPORTED`), which never change.

-- The lead is away from `first_day` to `last_day` (district dates): concerns reported then go to
-- the deputy (P:80). A cancelled absence keeps its row.
CREATE TABLE safeguarding_lead_absences (
    absence_id          TEXT PRIMARY KEY,
    idempotency_key     TEXT NOT NULL UNIQUE,
    request_sha256      TEXT NOT NULL,
    lead_user_id        TEXT NOT NULL,
    first_day           TEXT NOT NULL,
    last_day            TEXT NOT NULL,
    note                TEXT NOT NULL,
    recorded_by_user_id TEXT NOT NULL,
    recorded_at         BIGINT NOT NULL,
    cancelled_at        BIGINT
);

CREATE INDEX safeguarding_lead_absences_by_day ON safeguarding_lead_absences (last_day, first_day);

-- One row per concern. Each step of the procedure is one conditional UPDATE on `state`, so an
-- impossible step changes nothing. The pupil's name and what was seen stay here, in the school.
CREATE TABLE safeguarding_concerns (
    concern_id              TEXT PRIMARY KEY,
    idempotency_key         TEXT NOT NULL UNIQUE,
    request_sha256          TEXT NOT NULL,
    pupil_name              TEXT NOT NULL,
    pupil_class             TEXT NOT NULL,
    what_happened           TEXT NOT NULL,
    observed_on             TEXT NOT NULL,
    at_risk_now             BIGINT NOT NULL,
    state                   TEXT NOT NULL,
    reported_by_user_id     TEXT NOT NULL,
    reported_by_name        TEXT NOT NULL,
    reported_at             BIGINT NOT NULL,
    -- The lead, or the deputy while the lead was absent; ROLE_* name.
    assigned_to_user_id     TEXT NOT NULL,
    assigned_to_role        TEXT NOT NULL,
    consultation_message_id TEXT,
    phoned_at               BIGINT,
    -- The help request K of the written report: one concern per K.
    written_message_id      TEXT UNIQUE,
    written_at              BIGINT,
    answered_at             BIGINT,
    answer_message_id       TEXT,
    answer_note             TEXT,
    closed_at               BIGINT,
    close_reason            TEXT,
    last_step_by_user_id    TEXT NOT NULL
);

-- Lists are newest first (concern ids are UUIDv7, ordered by creation).
CREATE INDEX safeguarding_concerns_by_reporter ON safeguarding_concerns (reported_by_user_id, concern_id);

-- Allegations against a member of staff (P:170-178). The accused never sees one.
CREATE TABLE safeguarding_allegations (
    allegation_id       TEXT PRIMARY KEY,
    idempotency_key     TEXT NOT NULL UNIQUE,
    request_sha256      TEXT NOT NULL,
    -- The accused: a user id of this school when listed ('' otherwise), and a name.
    accused_user_id     TEXT NOT NULL,
    accused_name        TEXT NOT NULL,
    allegation          TEXT NOT NULL,
    happened_on         TEXT NOT NULL,
    state               TEXT NOT NULL,
    recorded_by_user_id TEXT NOT NULL,
    recorded_by_name    TEXT NOT NULL,
    recorded_at         BIGINT NOT NULL,
    -- The director; the lead (or deputy) when the director is accused; ROLE_* name.
    assigned_to_user_id TEXT NOT NULL,
    assigned_to_role    TEXT NOT NULL,
    received_at         BIGINT
);

CREATE INDEX safeguarding_allegations_by_assignee ON safeguarding_allegations (assigned_to_user_id, allegation_id);
CREATE INDEX safeguarding_allegations_by_recorder ON safeguarding_allegations (recorded_by_user_id, allegation_id);
