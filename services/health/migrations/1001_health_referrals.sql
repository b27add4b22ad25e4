-- The children referred to a health facility (issue 5, M:2945-2955): one per case the commission
-- asked the facility about (an information request or an action assignment received), with the
-- last notice sent.
CREATE TABLE health_referrals (
    case_reference       TEXT PRIMARY KEY,
    commission_agency_id TEXT NOT NULL,
    received_message_id  TEXT NOT NULL,
    received_form_kind   TEXT NOT NULL,
    received_at          BIGINT NOT NULL,
    -- HEALTH_NOTICE_KIND_*: UNSPECIFIED before the first notice.
    last_notice          TEXT NOT NULL,
    -- 1 once an ADMITTED notice was sent.
    admitted             BIGINT NOT NULL,
    version              BIGINT NOT NULL
);

-- Every notice sent, queued in `sent_messages` under `message_key`.
CREATE TABLE health_notices (
    message_key     TEXT PRIMARY KEY,
    case_reference  TEXT NOT NULL REFERENCES health_referrals (case_reference),
    version         BIGINT NOT NULL,
    request_sha256  TEXT NOT NULL,
    -- The HealthNotice sent, encoded.
    notice          BYTEA NOT NULL,
    -- What the notice replaced, so that one the gateway refuses is undone.
    prev_notice     TEXT NOT NULL,
    prev_admitted   BIGINT NOT NULL,
    recorded_by     TEXT NOT NULL,
    recorded_at     BIGINT NOT NULL,
    UNIQUE (case_reference, version)
);
