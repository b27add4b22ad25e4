-- Need to know (issue 4): what the gateway knows of each report and case so that its policy can
-- decide who may see what. No names, no IINs, no addresses: agency and user ids, references, and
-- the keyed hash of the child's IIN.

-- One row per help request K the gateway accepted.
CREATE TABLE referrals (
    help_request_message_id TEXT PRIMARY KEY,
    district_id             TEXT NOT NULL,
    referring_agency_id     TEXT NOT NULL,
    commission_agency_id    TEXT NOT NULL,
    -- HMAC-SHA-256 of the child's IIN under the deployment's secret; NULL when the IIN is unknown.
    child_pseudonym         TEXT,
    -- The residential institution the child lives in, when the report must not flow back to it.
    residence_agency_id     TEXT NOT NULL,
    -- The institution whose director the report implicates.
    implicated_agency_id    TEXT NOT NULL,
    incident_reference      TEXT NOT NULL,
    -- IncidentRole name without its prefix (VICTIM, PERPETRATOR...), empty without an incident.
    incident_role           TEXT NOT NULL,
    -- The case opened on it, once decided.
    case_reference          TEXT,
    referred_at             BIGINT NOT NULL
);

CREATE INDEX referrals_by_child ON referrals (child_pseudonym);
CREATE INDEX referrals_by_case ON referrals (case_reference);
CREATE INDEX referrals_by_incident ON referrals (incident_reference);

-- Messages that carry or answer a report outside any case: its copies to the police (a report
-- implicating a director), the decision on it. A child's disclosure history includes them.
CREATE TABLE report_messages (
    message_id              TEXT PRIMARY KEY,
    help_request_message_id TEXT NOT NULL
);

CREATE INDEX report_messages_by_report ON report_messages (help_request_message_id);

-- One row per case the commission opened through the gateway.
CREATE TABLE access_cases (
    case_reference          TEXT PRIMARY KEY,
    district_id             TEXT NOT NULL,
    commission_agency_id    TEXT NOT NULL,
    help_request_message_id TEXT NOT NULL,
    curator_user_id         TEXT NOT NULL,
    -- 1 while the case is open, 0 once closed.
    is_open                 BIGINT NOT NULL,
    opened_at               BIGINT NOT NULL
);

CREATE INDEX access_cases_by_curator ON access_cases (curator_user_id, is_open);

-- How other agencies relate to a case: referrer, assignee (an action row), informant (asked for
-- information), participant (receives review minutes), direct (received a report that bypassed
-- an implicated director).
CREATE TABLE case_relations (
    case_reference TEXT NOT NULL,
    agency_id      TEXT NOT NULL,
    relation       TEXT NOT NULL,
    since          BIGINT NOT NULL,
    PRIMARY KEY (case_reference, agency_id, relation)
);

-- The commission's grants: one section of one case to an agency (grantee_user_id empty) or to
-- one person, until expires_at, unless revoked.
CREATE TABLE disclosure_grants (
    grant_id            TEXT PRIMARY KEY,
    case_reference      TEXT NOT NULL,
    grantee_agency_id   TEXT NOT NULL,
    grantee_user_id     TEXT NOT NULL,
    section             TEXT NOT NULL,
    reason              TEXT NOT NULL,
    granted_by_user_id  TEXT NOT NULL,
    granted_at          BIGINT NOT NULL,
    expires_at          BIGINT NOT NULL,
    revoked_at          BIGINT,
    revoked_by_user_id  TEXT
);

CREATE INDEX disclosure_grants_by_case ON disclosure_grants (case_reference, expires_at);

-- Audit events in the ledger: the sections disclosed (or asked for) and the outcome. Entries
-- written before this migration have both empty, and their hashes do not cover them.
ALTER TABLE ledger ADD COLUMN sections TEXT NOT NULL DEFAULT '';
ALTER TABLE ledger ADD COLUMN outcome TEXT NOT NULL DEFAULT '';

CREATE INDEX ledger_by_case ON ledger (case_reference, seq);
CREATE INDEX ledger_by_message ON ledger (message_id, seq);
