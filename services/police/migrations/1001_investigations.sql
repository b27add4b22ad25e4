-- The police's investigations (issue 5, M:3215-3220): one per case the commission asked the
-- police about (an information request or an action assignment received), with its status.
CREATE TABLE investigations (
    investigation_id     TEXT PRIMARY KEY,
    case_reference       TEXT NOT NULL UNIQUE,
    commission_agency_id TEXT NOT NULL,
    received_message_id  TEXT NOT NULL,
    -- INVESTIGATION_STATUS_*
    status               TEXT NOT NULL,
    -- ISO dates (YYYY-MM-DD) in the district's calendar.
    status_on            TEXT NOT NULL,
    hearing_on           TEXT,
    summary              TEXT NOT NULL,
    version              BIGINT NOT NULL,
    received_at          BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);

-- Every accepted change, with what it replaced (so a change the gateway refuses is undone) and
-- the INVESTIGATION_UPDATE sent for it, queued in `sent_messages` under `message_key`.
CREATE TABLE investigation_changes (
    message_key      TEXT PRIMARY KEY,
    investigation_id TEXT NOT NULL REFERENCES investigations (investigation_id),
    version          BIGINT NOT NULL,
    request_sha256   TEXT NOT NULL,
    -- The InvestigationUpdate sent, encoded.
    update_sent      BYTEA NOT NULL,
    prev_status      TEXT NOT NULL,
    prev_status_on   TEXT NOT NULL,
    prev_hearing_on  TEXT,
    prev_summary     TEXT NOT NULL,
    recorded_by      TEXT NOT NULL,
    recorded_at      BIGINT NOT NULL,
    UNIQUE (investigation_id, version)
);
