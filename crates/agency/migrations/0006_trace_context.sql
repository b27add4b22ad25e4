-- Issue 6, traces: the W3C `traceparent` of the call that queued a message this agency sends
-- (version, trace id, span id and flags; never personal data), so that a push made later by a
-- retry loop continues the trace of the request that made the message: one referral, one trace.
-- NULL when the call had no trace (rows queued before this migration, tracing off).
-- Portable SQL: SQLite and PostgreSQL.
ALTER TABLE sent_messages ADD COLUMN trace_context TEXT;
