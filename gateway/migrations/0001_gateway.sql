-- The gateway's store: the agency directory, every message it acknowledged, the outbox the
-- delivery worker drains, and the hash-chained ledger. Portable SQL: SQLite and PostgreSQL.

CREATE TABLE districts (
    district_id TEXT PRIMARY KEY,
    name_kk     TEXT NOT NULL,
    name_ru     TEXT NOT NULL,
    time_zone   TEXT NOT NULL
);

CREATE TABLE agencies (
    agency_id   TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    district_id TEXT NOT NULL REFERENCES districts (district_id),
    name_kk     TEXT NOT NULL,
    name_ru     TEXT NOT NULL,
    endpoint    TEXT NOT NULL
);

-- One row per acknowledged message. The same sender and idempotency key can exist only once.
CREATE TABLE messages (
    message_id          TEXT PRIMARY KEY,
    sender_agency_id    TEXT NOT NULL,
    idempotency_key     TEXT NOT NULL,
    recipient_agency_id TEXT NOT NULL,
    form_kind           TEXT NOT NULL,
    in_reply_to         TEXT,
    -- The whole envelope (with payload) as protobuf, exactly as it is delivered.
    envelope            BYTEA NOT NULL,
    payload_sha256      TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    -- queued | delivered | answered
    state               TEXT NOT NULL,
    delivery_attempts   BIGINT NOT NULL DEFAULT 0,
    delivered_at        BIGINT,
    answered_at         BIGINT,
    answer_message_id   TEXT,
    UNIQUE (sender_agency_id, idempotency_key)
);

CREATE INDEX messages_by_reply ON messages (in_reply_to);

-- Messages still to deliver. A row is leased by one worker at a time (several gateway replicas
-- can share one PostgreSQL database) and removed in the transaction that records the delivery.
CREATE TABLE outbox (
    message_id      TEXT PRIMARY KEY REFERENCES messages (message_id),
    next_attempt_at BIGINT NOT NULL,
    lease_owner     TEXT,
    lease_until     BIGINT,
    -- The gRPC code of the last failure (never a message text: it could carry data).
    last_error      TEXT
);

CREATE INDEX outbox_due ON outbox (next_attempt_at);

-- The head of the ledger: updating this single row serialises appenders on both back ends.
CREATE TABLE ledger_head (
    id        INTEGER PRIMARY KEY,
    last_seq  BIGINT NOT NULL,
    last_hash TEXT NOT NULL
);

INSERT INTO ledger_head (id, last_seq, last_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Append-only: every entry carries the hash of the previous one.
CREATE TABLE ledger (
    seq                 BIGINT PRIMARY KEY,
    recorded_at         BIGINT NOT NULL,
    event               TEXT NOT NULL,
    message_id          TEXT NOT NULL,
    sender_agency_id    TEXT NOT NULL,
    recipient_agency_id TEXT NOT NULL,
    acting_user_id      TEXT NOT NULL,
    acting_role         TEXT NOT NULL,
    purpose_of_use      TEXT NOT NULL,
    form_kind           TEXT NOT NULL,
    case_reference      TEXT NOT NULL,
    confidentiality     TEXT NOT NULL,
    payload_sha256      TEXT NOT NULL,
    prev_hash           TEXT NOT NULL,
    entry_hash          TEXT NOT NULL
);
