-- The commission's decisions on help requests K and the case files they open.
--
-- Every agency runs the same migrations (one store layout for every kind), so these tables exist
-- in every agency's store; only the commission writes to them.

-- One row per year: case numbers are allocated from it in the decision's own transaction, so a
-- number is never handed out twice (a refused decision may leave a gap).
CREATE TABLE case_counters (
    case_year   BIGINT PRIMARY KEY,
    last_number BIGINT NOT NULL
);

-- A case file opened on a help request, with its curator (M:2409-2413).
CREATE TABLE cases (
    -- KTIZhK-<year>-<number, 6 digits>
    case_reference          TEXT PRIMARY KEY,
    case_year               BIGINT NOT NULL,
    case_number             BIGINT NOT NULL,
    help_request_message_id TEXT NOT NULL UNIQUE REFERENCES received_messages (message_id),
    curator_user_id         TEXT NOT NULL,
    opened_by               TEXT NOT NULL,
    opened_at               BIGINT NOT NULL,
    UNIQUE (case_year, case_number)
);

-- The decision on a help request: at most one per request.
CREATE TABLE decisions (
    help_request_message_id TEXT PRIMARY KEY REFERENCES received_messages (message_id),
    -- The secretary's idempotency key: deciding again with it returns this decision.
    idempotency_key         TEXT NOT NULL,
    -- case_opened | no_further_action
    outcome                 TEXT NOT NULL,
    case_reference          TEXT REFERENCES cases (case_reference),
    decided_by              TEXT NOT NULL,
    decided_at              BIGINT NOT NULL,
    -- The HelpRequestDecision, encoded.
    decision                BYTEA NOT NULL,
    -- The sent_messages row that carries the decision back to the sender.
    outgoing_key            TEXT NOT NULL UNIQUE REFERENCES sent_messages (idempotency_key),
    -- decision_pending_send (the gateway was not reachable) | decision_sent
    state                   TEXT NOT NULL,
    -- The gateway's id of the decision message, once sent.
    decision_message_id     TEXT
);
