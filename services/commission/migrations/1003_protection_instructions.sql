-- The commission's protection instructions to residential institutions (issue 5, M:3010-3040)
-- and the institutions' acknowledgements of them, filed in the case.
--
-- Portable SQL for SQLite and PostgreSQL: TEXT, BIGINT (instants as microseconds since the Unix
-- epoch) and BYTEA (encoded protobuf).

-- One row per instruction; the PROTECTION_INSTRUCTION itself is queued in `sent_messages` (and
-- the case outbox) under `instruction_key`, which gives it its gateway message id once sent.
CREATE TABLE case_instructions (
    instruction_key     TEXT PRIMARY KEY,
    case_reference      TEXT NOT NULL,
    recipient_agency_id TEXT NOT NULL,
    instruction         BYTEA NOT NULL,
    -- The commission's written weighing of confidentiality before telling the institution.
    weighing_reason     TEXT NOT NULL,
    sent_by_user_id     TEXT NOT NULL,
    sent_by_name        TEXT NOT NULL,
    sent_at             BIGINT NOT NULL
);

CREATE INDEX case_instructions_by_case ON case_instructions (case_reference, sent_at);

-- Each INSTRUCTION_ACKNOWLEDGEMENT received for an instruction, once per message.
CREATE TABLE case_instruction_acknowledgements (
    message_id       TEXT PRIMARY KEY,
    instruction_key  TEXT NOT NULL,
    case_reference   TEXT NOT NULL,
    acknowledgement  BYTEA NOT NULL,
    received_at      BIGINT NOT NULL
);

CREATE INDEX case_instruction_acknowledgements_by_key
    ON case_instruction_acknowledgements (instruction_key, received_at);
