-- A step's clock event for the gateway's deadline engine (service started, progress reported,
-- service ended), held here until the step's SERVICE_UPDATE or ACTION_PROGRESS is acknowledged
-- by the gateway; only then is it queued in the agency's `clock_events` outbox (and the row
-- deleted, in one transaction). A step the gateway refuses is undone with its held event, so the
-- engine never hears of a step that did not happen.
--
-- Portable SQL for SQLite and PostgreSQL: TEXT, BYTEA.
CREATE TABLE ngo_step_clock_events (
    message_key TEXT PRIMARY KEY REFERENCES ngo_service_steps (message_key),
    -- The ActingUser and the AgencyClockEvent, encoded.
    acting_user BYTEA NOT NULL,
    event       BYTEA NOT NULL
);
