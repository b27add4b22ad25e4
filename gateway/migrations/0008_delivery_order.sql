-- Issue 6, delivery order: messages of one case reach each recipient in the order the gateway
-- accepted them. The delivery worker does not lease an outbox row while an earlier row of the same
-- recipient and case (a smaller `accepted_seq`: the ledger orders acceptances) is still in the
-- outbox, queued or being pushed. Messages without a case reference (a help request K before the
-- commission opens a case) are not ordered among themselves.
-- Portable SQL: SQLite and PostgreSQL.
ALTER TABLE outbox ADD COLUMN recipient_agency_id TEXT;
-- NULL when the message belongs to no case.
ALTER TABLE outbox ADD COLUMN case_reference TEXT;
-- The message's `message.accepted` ledger sequence number (as `messages.accepted_seq`).
ALTER TABLE outbox ADD COLUMN accepted_seq BIGINT;

-- Rows queued before this migration keep their recipient and sequence; their case reference is in
-- the stored envelope only, so they stay unordered (NULL) and are delivered as before.
UPDATE outbox SET
    recipient_agency_id = (SELECT m.recipient_agency_id FROM messages m WHERE m.message_id = outbox.message_id),
    accepted_seq = (SELECT m.accepted_seq FROM messages m WHERE m.message_id = outbox.message_id);

-- "Is an earlier message of this case to this recipient still queued?": one index probe.
CREATE INDEX outbox_by_case ON outbox (recipient_agency_id, case_reference, accepted_seq);
