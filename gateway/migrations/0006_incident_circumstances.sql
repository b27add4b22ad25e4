-- Issue 5, need to know: what the gateway must remember of the forms of issue 5 that belong to no
-- case (or come from the police) to decide later who may receive a case's messages. Ids and names
-- of roles only, no personal data. Portable SQL: SQLite and PostgreSQL; instants are
-- microseconds in BIGINT.

-- The circumstances of every accepted INCIDENT_REFERRAL (one row per copy the gateway accepted):
-- an institution implicated by a report bypassing its director, or the residence a referral
-- named, stays excluded from every case whose K names the same incident (the same district,
-- referring agency and incident reference), even when the K leaves them out.
CREATE TABLE incident_referrals (
    message_id           TEXT PRIMARY KEY,
    district_id          TEXT NOT NULL,
    referring_agency_id  TEXT NOT NULL,
    -- The referring agency's own reference of the incident.
    incident_reference   TEXT NOT NULL,
    -- The institution whose director the referral implicates; empty when none.
    implicated_agency_id TEXT NOT NULL,
    -- The residential institution the children live in, when another than the referrer's.
    residence_agency_id  TEXT NOT NULL,
    referred_at          BIGINT NOT NULL
);

CREATE INDEX incident_referrals_by_incident
    ON incident_referrals (district_id, referring_agency_id, incident_reference);

-- The child's role in the investigated incident as the police's latest INVESTIGATION_UPDATE on a
-- case says it (IncidentRole name without its prefix; empty while unknown): a preventive
-- registration is admitted only on a case known to be the offender's.
CREATE TABLE case_police_roles (
    case_reference   TEXT NOT NULL,
    police_agency_id TEXT NOT NULL,
    child_role       TEXT NOT NULL,
    -- The update that said it.
    message_id       TEXT NOT NULL,
    recorded_at      BIGINT NOT NULL,
    PRIMARY KEY (case_reference, police_agency_id)
);
