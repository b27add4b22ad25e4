-- Payloads sealed at rest (issue 4, part 8). From this migration on, `messages.envelope` holds the
-- envelope WITHOUT its payload: metadata only (ids, agencies, acting user, purpose of use, case
-- reference, form kind, label, times). The payload, which carries the form and so the personal
-- data, is stored apart, sealed with an AEAD key of the gateway's keyring, and removed once the
-- message has been delivered, the retention has passed and the deadline engine has read it.
-- Rows written before this migration keep their whole envelope in `envelope` (`payload_key_id`
-- NULL) and stay readable; the removal after delivery strips their payload the same way.
-- Portable SQL: SQLite and PostgreSQL.

-- The encoded Payload, sealed: format, key id, nonce, ciphertext (see gateway/src/sealing.rs).
-- NULL once removed, and on rows written before this migration.
ALTER TABLE messages ADD COLUMN sealed_payload BYTEA;
-- The id of the key that sealed the payload (also in the sealed bytes), so that the rows still
-- held under a key can be found when keys rotate. NULL: a row written before this migration.
ALTER TABLE messages ADD COLUMN payload_key_id TEXT;
-- When the payload was removed after delivery.
ALTER TABLE messages ADD COLUMN payload_purged_at BIGINT;
-- The assigned row's number of an ACTION_ASSIGNMENT (not personal data), which a progress report
-- answering it must name, kept after the payload is removed. The case reference is in the
-- envelope.
ALTER TABLE messages ADD COLUMN action_number BIGINT;
-- The sequence number of the message's `message.accepted` ledger entry: a payload is removed only
-- once the deadline engine's cursor has passed it.
ALTER TABLE messages ADD COLUMN accepted_seq BIGINT;

UPDATE messages SET accepted_seq = (
    SELECT MIN(l.seq) FROM ledger l
    WHERE l.message_id = messages.message_id AND l.event = 'message.accepted'
);

-- The purge: delivered messages whose payload is still held, oldest delivery first.
CREATE INDEX messages_payload_held ON messages (delivered_at) WHERE payload_purged_at IS NULL;
-- Rotation: the payloads still held under each key.
CREATE INDEX messages_by_payload_key ON messages (payload_key_id) WHERE sealed_payload IS NOT NULL;
