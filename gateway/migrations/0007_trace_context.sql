-- Issue 6, traces: the W3C `traceparent` of the Send call that accepted a message (version, trace
-- id, span id and flags; never personal data). The delivery worker pushes the message later, in
-- another task, perhaps in another replica or after a restart; its span takes this as its parent,
-- so that one referral is one trace from the sender's service to the recipient's inbox.
-- NULL when the call had no trace (rows written before this migration, the deadline engine's
-- own alerts, tracing off). Portable SQL: SQLite and PostgreSQL.
ALTER TABLE messages ADD COLUMN trace_context TEXT;
