-- What the police and health facilities report on a case (issue 5): the police's investigation
-- updates (M:3215-3220) and the health facilities' notices (M:2945-2955), filed as they arrive,
-- once per message, and shown in the case file oldest first.
CREATE TABLE case_partner_reports (
    message_id       TEXT PRIMARY KEY,
    case_reference   TEXT NOT NULL REFERENCES case_files (case_reference),
    -- FORM_KIND_INVESTIGATION_UPDATE or FORM_KIND_HEALTH_NOTICE.
    form_kind        TEXT NOT NULL,
    sender_agency_id TEXT NOT NULL,
    -- The InvestigationUpdate or HealthNotice, encoded.
    report           BYTEA NOT NULL,
    received_at      BIGINT NOT NULL
);

CREATE INDEX case_partner_reports_by_case
    ON case_partner_reports (case_reference, received_at, message_id);
