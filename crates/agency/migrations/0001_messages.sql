-- An agency's own record of the messages it sent and received through the gateway.
--
-- Portable SQL for SQLite and PostgreSQL: TEXT, BIGINT (instants as microseconds since the Unix
-- epoch) and BYTEA (encoded protobuf). Enumerations are stored as their protobuf names
-- (`FORM_KIND_HELP_REQUEST`), which never change. Forms are kept only inside the encoded
-- envelopes: the plain columns hold ids, kinds, states and instants, never a child's data.

-- What this agency sent. A row is written as `pending` before the gateway is called, keyed by the
-- idempotency key, so that a retry after a lost answer reuses it; it becomes `sent` with the
-- gateway's message id once acknowledged, and is removed if the gateway refuses the message.
CREATE TABLE sent_messages (
    idempotency_key     TEXT PRIMARY KEY,
    -- Assigned by the gateway; NULL while pending.
    message_id          TEXT UNIQUE,
    -- pending | sent
    status              TEXT NOT NULL,
    recipient_agency_id TEXT NOT NULL,
    form_kind           TEXT NOT NULL,
    in_reply_to         TEXT,
    acting_user_id      TEXT NOT NULL,
    -- SHA-256 of what was asked to be sent: the same key with other content is refused.
    request_sha256      TEXT NOT NULL,
    -- The envelope as sent; message id and created-at are filled in once acknowledged.
    envelope            BYTEA NOT NULL,
    created_at          BIGINT NOT NULL,
    sent_at             BIGINT,
    -- Last known DELIVERY_STATE_* and REFERRAL_STATUS_*.
    delivery_state      TEXT NOT NULL,
    referral_status     TEXT NOT NULL,
    -- The recipient's answer (for K: the commission's decision), as an encoded envelope.
    answer_message_id   TEXT,
    answer_envelope     BYTEA,
    updated_at          BIGINT NOT NULL
);

-- ListSent: newest first, keyset pagination on (sent_at, message_id).
CREATE INDEX sent_messages_by_time ON sent_messages (sent_at, message_id);

-- What the gateway delivered to this agency. The message id is the key: a repeated delivery
-- inserts nothing (exactly-once effect).
CREATE TABLE received_messages (
    message_id          TEXT PRIMARY KEY,
    sender_agency_id    TEXT NOT NULL,
    form_kind           TEXT NOT NULL,
    in_reply_to         TEXT,
    case_reference      TEXT NOT NULL,
    -- The envelope as delivered.
    envelope            BYTEA NOT NULL,
    received_at         BIGINT NOT NULL,
    -- REFERRAL_STATUS_*: RECEIVED, then ACCEPTED or REJECTED once decided.
    referral_status     TEXT NOT NULL,
    updated_at          BIGINT NOT NULL
);

-- ListInbox: newest first, keyset pagination on (received_at, message_id).
CREATE INDEX received_messages_by_time ON received_messages (received_at, message_id);
