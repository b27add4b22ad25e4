-- The commission's case files (M:2377-2575): the state of every case opened by a decision on a
-- help request (the agency's `cases` table), its cycles (opening or reopening to closure), the
-- assessment L, the support plan M and its action rows with the progress the agencies report,
-- the contact log, documents, information requests and their answers, and the outbox of what
-- must reach the gateway (case events for the deadline engine, messages to other agencies).
--
-- Portable SQL for SQLite and PostgreSQL, as the agency's own migrations: TEXT, BIGINT (instants
-- as microseconds since the Unix epoch, flags as 0 or 1) and BYTEA (encoded protobuf, document
-- content). Enumerations are stored as their protobuf names. Versions of the commission's own
-- migrations start at 1000, after the agency's.

-- One row per case: what every change checks and moves on. `version` starts at 1 when the case
-- is opened and increments on every change (`UPDATE … WHERE version = <base>`), so a change
-- based on an older version is refused instead of overwriting another caseworker's work.
CREATE TABLE case_files (
    case_reference  TEXT PRIMARY KEY REFERENCES cases (case_reference),
    version         BIGINT NOT NULL,
    -- CASE_STAGE_*
    stage           TEXT NOT NULL,
    -- 1, then 2 after the first reopening, and so on.
    cycle           BIGINT NOT NULL,
    curator_user_id TEXT NOT NULL,
    -- RISK_LEVEL_* of the current cycle; RISK_LEVEL_UNSPECIFIED until its L is filed.
    risk_level      TEXT NOT NULL,
    opened_at       BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

CREATE INDEX case_files_by_curator ON case_files (curator_user_id, opened_at);

-- One row per cycle of a case. The forms are kept encoded (Assessment, SupportPlan with its
-- reviews appended, ClosureRecord); the plain columns hold only what queries need.
CREATE TABLE case_cycles (
    case_reference        TEXT NOT NULL REFERENCES case_files (case_reference),
    cycle                 BIGINT NOT NULL,
    opened_at             BIGINT NOT NULL,
    reopen_reason         TEXT NOT NULL,
    assessment            BYTEA,
    risk_level            TEXT NOT NULL,
    assessment_filed_at   BIGINT,
    support_plan          BYTEA,
    support_plan_filed_at BIGINT,
    closure               BYTEA,
    PRIMARY KEY (case_reference, cycle)
);

-- The action rows of a cycle's plan: revision 0 is the plan, revision n the n-th review's
-- revised rows. A review's rows replace the rows in force (`in_force` 1 → 0); an unchanged row
-- keeps its assignment and the progress reported on it.
CREATE TABLE case_actions (
    case_reference        TEXT NOT NULL,
    cycle                 BIGINT NOT NULL,
    revision              BIGINT NOT NULL,
    number                BIGINT NOT NULL,
    -- The PlanAction, encoded.
    action                BYTEA NOT NULL,
    responsible_agency_id TEXT NOT NULL,
    in_force              BIGINT NOT NULL,
    -- The `sent_messages` key of the ACTION_ASSIGNMENT; NULL for the commission's own rows.
    assignment_key        TEXT,
    -- ACTION_PROGRESS_STATE_*: UNSPECIFIED until the agency reports.
    progress              TEXT NOT NULL,
    last_note             TEXT NOT NULL,
    last_reported_at      BIGINT,
    PRIMARY KEY (case_reference, cycle, revision, number),
    FOREIGN KEY (case_reference, cycle) REFERENCES case_cycles (case_reference, cycle)
);

CREATE INDEX case_actions_by_assignment ON case_actions (assignment_key);

-- The contact log ("барлық қатынастарды тіркеу", M:2403), in the order recorded: each entry is
-- keyed by the case version its recording produced.
CREATE TABLE case_contacts (
    case_reference TEXT NOT NULL REFERENCES case_files (case_reference),
    case_version   BIGINT NOT NULL,
    -- The Contact, encoded.
    contact        BYTEA NOT NULL,
    recorded_by    TEXT NOT NULL,
    recorded_at    BIGINT NOT NULL,
    PRIMARY KEY (case_reference, case_version)
);

-- Documents of the case file (orders, letters, certificates, minutes), stored whole: a document
-- is inserted in one statement once all of it has arrived, so no partial document is ever kept.
CREATE TABLE case_documents (
    document_id    TEXT PRIMARY KEY,
    case_reference TEXT NOT NULL REFERENCES case_files (case_reference),
    title          TEXT NOT NULL,
    file_name      TEXT NOT NULL,
    -- Detected from the content, never from the name.
    content_type   TEXT NOT NULL,
    size_bytes     BIGINT NOT NULL,
    sha256         TEXT NOT NULL,
    content        BYTEA NOT NULL,
    uploaded_by    TEXT NOT NULL,
    uploaded_at    BIGINT NOT NULL
);

CREATE INDEX case_documents_by_case ON case_documents (case_reference, uploaded_at);

-- Information requests the curator sent (keyed by their `sent_messages` key) and the answers
-- filed when they arrive in the inbox.
CREATE TABLE information_requests (
    request_key         TEXT PRIMARY KEY,
    case_reference      TEXT NOT NULL REFERENCES case_files (case_reference),
    cycle               BIGINT NOT NULL,
    recipient_agency_id TEXT NOT NULL,
    -- The InformationRequest, encoded.
    request             BYTEA NOT NULL,
    requested_by        TEXT NOT NULL,
    requested_at        BIGINT NOT NULL,
    response_message_id TEXT,
    -- The InformationResponse, encoded.
    response            BYTEA,
    answered_at         BIGINT
);

CREATE INDEX information_requests_by_case ON information_requests (case_reference, requested_at);

-- Changes made with an idempotency key: the same key and request again answers with the same
-- result instead of applying twice.
CREATE TABLE case_changes (
    case_reference  TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_sha256  TEXT NOT NULL,
    version         BIGINT NOT NULL,
    stage           TEXT NOT NULL,
    PRIMARY KEY (case_reference, idempotency_key)
);

-- What must reach the gateway, written in the change's own transaction and pushed after the
-- commit (retried until taken; the gateway de-duplicates by key): case events (an encoded
-- RecordCaseEventRequest) and messages (whose envelope is the `sent_messages` row under the same
-- key). Nothing of a case is pushed before the decision that opened it has reached the gateway.
CREATE TABLE case_outbox (
    outbox_key     TEXT PRIMARY KEY,
    case_reference TEXT NOT NULL,
    case_version   BIGINT NOT NULL,
    position       BIGINT NOT NULL,
    -- event | message
    item_kind      TEXT NOT NULL,
    event          BYTEA,
    -- pending | done | refused
    state          TEXT NOT NULL,
    attempts       BIGINT NOT NULL,
    -- The gRPC code of the last failure, for an operator.
    last_code      TEXT,
    created_at     BIGINT NOT NULL,
    done_at        BIGINT
);

CREATE INDEX case_outbox_pending ON case_outbox (state, created_at, case_version, position);
