-- One investigation per incident, linked to the case of every child involved (issue 5,
-- M:3215-3220), opened on the commission's request or on an institution's direct referral; and the
-- preventive registration of offending children (M:3240-3260).
--
-- `investigations` loses its one case (a direct referral has none yet, an incident has several):
-- the table is rebuilt without it, and the links move to `investigation_cases`. Each change's
-- update now goes once to every linked case (`investigation_deliveries`). The rebuild is portable:
-- new tables, copies, drops, renames (SQLite rewrites the references on rename, PostgreSQL follows
-- the table).

CREATE TABLE investigations_v2 (
    investigation_id      TEXT PRIMARY KEY,
    -- Who referred it: the commission (on a case) or the institution (INCIDENT_REFERRAL).
    referred_by_agency_id TEXT NOT NULL,
    received_message_id   TEXT NOT NULL,
    -- The institution's reference of the incident; NULL when the commission referred it.
    incident_reference    TEXT,
    -- The IncidentReferral received, encoded (the children's identities: police store only).
    incident_referral     BYTEA,
    -- INVESTIGATION_STATUS_*
    status                TEXT NOT NULL,
    -- ISO dates (YYYY-MM-DD) in the district's calendar.
    status_on             TEXT NOT NULL,
    hearing_on            TEXT,
    summary               TEXT NOT NULL,
    version               BIGINT NOT NULL,
    received_at           BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL
);

-- An institution's incident is investigated once, however often it is referred.
CREATE UNIQUE INDEX investigations_by_incident
    ON investigations_v2 (referred_by_agency_id, incident_reference);

INSERT INTO investigations_v2 (investigation_id, referred_by_agency_id, received_message_id,
    incident_reference, incident_referral, status, status_on, hearing_on, summary, version,
    received_at, updated_at)
SELECT investigation_id, commission_agency_id, received_message_id, NULL, NULL, status,
    status_on, hearing_on, summary, version, received_at, updated_at
FROM investigations;

-- The cases the commission asked the police about, each linked to one investigation with the
-- role of its child in the incident (INCIDENT_ROLE_*).
CREATE TABLE investigation_cases (
    case_reference       TEXT PRIMARY KEY,
    investigation_id     TEXT NOT NULL REFERENCES investigations_v2 (investigation_id),
    commission_agency_id TEXT NOT NULL,
    -- The request or assignment that told the police of the case.
    received_message_id  TEXT NOT NULL,
    child_role           TEXT NOT NULL,
    linked_at            BIGINT NOT NULL,
    -- The inspector who linked it; empty when linked on receipt.
    linked_by            TEXT NOT NULL
);

CREATE INDEX investigation_cases_by_investigation
    ON investigation_cases (investigation_id, linked_at);

INSERT INTO investigation_cases (case_reference, investigation_id, commission_agency_id,
    received_message_id, child_role, linked_at, linked_by)
SELECT case_reference, investigation_id, commission_agency_id, received_message_id,
    'INCIDENT_ROLE_UNSPECIFIED', received_at, ''
FROM investigations;

-- Every accepted change, as before; `message_key` is now the change's own key, and
-- `update_sent` the update without a case (each delivery adds its case and child's role).
CREATE TABLE investigation_changes_v2 (
    message_key      TEXT PRIMARY KEY,
    investigation_id TEXT NOT NULL REFERENCES investigations_v2 (investigation_id),
    version          BIGINT NOT NULL,
    request_sha256   TEXT NOT NULL,
    update_sent      BYTEA NOT NULL,
    prev_status      TEXT NOT NULL,
    prev_status_on   TEXT NOT NULL,
    prev_hearing_on  TEXT,
    prev_summary     TEXT NOT NULL,
    recorded_by      TEXT NOT NULL,
    recorded_at      BIGINT NOT NULL,
    UNIQUE (investigation_id, version)
);

INSERT INTO investigation_changes_v2 (message_key, investigation_id, version, request_sha256,
    update_sent, prev_status, prev_status_on, prev_hearing_on, prev_summary, recorded_by,
    recorded_at)
SELECT message_key, investigation_id, version, request_sha256, update_sent, prev_status,
    prev_status_on, prev_hearing_on, prev_summary, recorded_by, recorded_at
FROM investigation_changes;

-- One INVESTIGATION_UPDATE per change and linked case, queued in `sent_messages` under
-- `message_key`; REFUSED when the gateway refused it for good (sent or queued is read from
-- `sent_messages`).
CREATE TABLE investigation_deliveries (
    message_key    TEXT PRIMARY KEY,
    change_key     TEXT NOT NULL REFERENCES investigation_changes_v2 (message_key),
    case_reference TEXT NOT NULL,
    refused        BIGINT NOT NULL,
    queued_at      BIGINT NOT NULL,
    UNIQUE (change_key, case_reference)
);

-- A change made before this migration was sent under its own key, to its one case.
INSERT INTO investigation_deliveries (message_key, change_key, case_reference, refused, queued_at)
SELECT c.message_key, c.message_key, i.case_reference, 0, c.recorded_at
FROM investigation_changes c JOIN investigations i ON i.investigation_id = c.investigation_id;

DROP TABLE investigation_changes;
DROP TABLE investigations;
ALTER TABLE investigations_v2 RENAME TO investigations;
ALTER TABLE investigation_changes_v2 RENAME TO investigation_changes;

-- Preventive registrations (M:3240-3260): of the child of a case linked as perpetrator or both,
-- at most one current per case. Each registration and each end is one PREVENTIVE_REGISTRATION to
-- the commission for that case only, queued under `register_key` / `end_key`.
CREATE TABLE preventive_registrations (
    registration_id  TEXT PRIMARY KEY,
    case_reference   TEXT NOT NULL REFERENCES investigation_cases (case_reference),
    investigation_id TEXT NOT NULL,
    registered_on    TEXT NOT NULL,
    grounds          TEXT NOT NULL,
    inspector        TEXT NOT NULL,
    registered_by    TEXT NOT NULL,
    register_key     TEXT NOT NULL UNIQUE,
    register_sha256  TEXT NOT NULL,
    ended_on         TEXT,
    end_reason       TEXT,
    end_key          TEXT UNIQUE,
    end_sha256       TEXT,
    ended_by         TEXT,
    recorded_at      BIGINT NOT NULL
);

CREATE UNIQUE INDEX preventive_registrations_current
    ON preventive_registrations (case_reference) WHERE ended_on IS NULL;
