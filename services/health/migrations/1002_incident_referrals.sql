-- An institution's referral of an injured child (INCIDENT_REFERRAL, purpose medical care,
-- M:2940-2955) becomes a health referral before the commission has a case for the child: a
-- referral gets its own id, its case becomes optional (linked later), and each notice records
-- whether it was sent (queued in `sent_messages`) or is held until the case is linked.
-- The rebuild is portable: new tables, copies, drops, renames.

CREATE TABLE health_referrals_v2 (
    referral_id           TEXT PRIMARY KEY,
    -- NULL until the referral is linked to the commission's case.
    case_reference        TEXT UNIQUE,
    commission_agency_id  TEXT,
    -- Who referred: the commission, or the institution.
    referred_by_agency_id TEXT NOT NULL,
    received_message_id   TEXT NOT NULL,
    received_form_kind    TEXT NOT NULL,
    received_at           BIGINT NOT NULL,
    -- From an institution's referral: its reference of the incident and the child (an encoded
    -- IncidentChild: identity and injuries, this store only).
    incident_reference    TEXT,
    child                 BYTEA,
    -- HEALTH_NOTICE_KIND_*: UNSPECIFIED before the first notice.
    last_notice           TEXT NOT NULL,
    admitted              BIGINT NOT NULL,
    version               BIGINT NOT NULL
);

INSERT INTO health_referrals_v2 (referral_id, case_reference, commission_agency_id,
    referred_by_agency_id, received_message_id, received_form_kind, received_at,
    incident_reference, child, last_notice, admitted, version)
SELECT 'HR-' || case_reference, case_reference, commission_agency_id, commission_agency_id,
    received_message_id, received_form_kind, received_at, NULL, NULL, last_notice, admitted,
    version
FROM health_referrals;

CREATE TABLE health_notices_v2 (
    message_key     TEXT PRIMARY KEY,
    referral_id     TEXT NOT NULL REFERENCES health_referrals_v2 (referral_id),
    version         BIGINT NOT NULL,
    request_sha256  TEXT NOT NULL,
    -- The HealthNotice, encoded (its case_reference filled in when it is sent).
    notice          BYTEA NOT NULL,
    prev_notice     TEXT NOT NULL,
    prev_admitted   BIGINT NOT NULL,
    recorded_by     TEXT NOT NULL,
    recorded_at     BIGINT NOT NULL,
    -- 1 once queued in `sent_messages`; 0 while held for the referral's case.
    queued          BIGINT NOT NULL,
    UNIQUE (referral_id, version)
);

INSERT INTO health_notices_v2 (message_key, referral_id, version, request_sha256, notice,
    prev_notice, prev_admitted, recorded_by, recorded_at, queued)
SELECT message_key, 'HR-' || case_reference, version, request_sha256, notice, prev_notice,
    prev_admitted, recorded_by, recorded_at, 1
FROM health_notices;

DROP TABLE health_notices;
DROP TABLE health_referrals;
ALTER TABLE health_referrals_v2 RENAME TO health_referrals;
ALTER TABLE health_notices_v2 RENAME TO health_notices;
