-- The deadline engine (issue 3): the case events commissions record, the engine's cursor over the
-- ledger, each case's clock state, the deadlines and the alerts raised for them.
-- Portable SQL: SQLite and PostgreSQL; instants are microseconds in BIGINT.

-- Case events as commissions record them (RecordCaseEvent). The same commission and
-- idempotency key exist only once. The event is kept whole, as protobuf: it holds no personal
-- data, only what the clocks need; the ledger entry holds its SHA-256.
CREATE TABLE case_events (
    event_id             TEXT PRIMARY KEY,
    commission_agency_id TEXT NOT NULL,
    -- The commission's district when the event was recorded.
    district_id          TEXT NOT NULL,
    idempotency_key      TEXT NOT NULL,
    case_reference       TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    cycle                BIGINT NOT NULL,
    event                BYTEA NOT NULL,
    event_sha256         TEXT NOT NULL,
    recorded_at          BIGINT NOT NULL,
    -- The event's ledger entry: the order of a case's events.
    ledger_seq           BIGINT NOT NULL,
    UNIQUE (commission_agency_id, idempotency_key)
);

-- A case's events in order (stale events, events of a closed case and reopenings are checked
-- against the last one).
CREATE INDEX case_events_by_case ON case_events (district_id, case_reference, ledger_seq);

-- The last ledger entry the engine applied. Locked first by every ingestion transaction and
-- advanced in the transaction that applies the entries, so each entry takes effect exactly once,
-- across crashes and gateway replicas.
CREATE TABLE deadline_cursor (
    id       INTEGER PRIMARY KEY,
    last_seq BIGINT NOT NULL
);

INSERT INTO deadline_cursor (id, last_seq) VALUES (1, 0);

-- What the clocks of one case need to remember between events: the cycle (1, then 2 after a
-- reopening...), whether it is closed, the curator, and the risk of the cycle's last assessment.
CREATE TABLE case_clocks (
    district_id     TEXT NOT NULL,
    case_reference  TEXT NOT NULL,
    cycle           BIGINT NOT NULL,
    closed          BIGINT NOT NULL,
    curator_user_id TEXT NOT NULL,
    -- A RiskLevel name; RISK_LEVEL_UNSPECIFIED until the cycle's assessment is filed.
    risk_level      TEXT NOT NULL,
    PRIMARY KEY (district_id, case_reference)
);

-- One row per deadline. `key` is what the deadline is: for a case, (district, case, cycle, kind,
-- row number, due date); for a help request's decision, the request. A key is used once
-- (INSERT … ON CONFLICT (key) DO NOTHING): replaying an entry creates nothing twice, and a met
-- or cancelled deadline is never created anew. `kind` and `state` are
-- the protobuf enum names (DEADLINE_KIND_ACTION, DEADLINE_STATE_WARNED): PENDING, WARNED, DUE,
-- OVERDUE, ESCALATED are open; MET and CANCELLED are final and never left again.
-- `next_transition_at` is the instant of the next state change, NULL once final or escalated:
-- the sweep reads only the rows whose instant has come.
CREATE TABLE deadlines (
    deadline_id             TEXT PRIMARY KEY,
    key                     TEXT NOT NULL UNIQUE,
    kind                    TEXT NOT NULL,
    -- Empty for a help request's decision (no case yet).
    case_reference          TEXT NOT NULL,
    cycle                   BIGINT NOT NULL,
    district_id             TEXT NOT NULL,
    responsible_agency_id   TEXT NOT NULL,
    -- Empty when no person is known.
    responsible_user_id     TEXT NOT NULL,
    -- A role as the directory writes it, e.g. commission_secretary; empty when unknown.
    responsible_role        TEXT NOT NULL,
    -- The row's number for an action deadline, else 0.
    action_number           BIGINT NOT NULL,
    help_request_message_id TEXT,
    warn_at                 BIGINT NOT NULL,
    due_day_starts_at       BIGINT NOT NULL,
    due_at                  BIGINT NOT NULL,
    escalate_at             BIGINT NOT NULL,
    -- The local due date, YYYY-MM-DD.
    due_on                  TEXT NOT NULL,
    state                   TEXT NOT NULL,
    next_transition_at      BIGINT,
    met_at                  BIGINT,
    created_at              BIGINT NOT NULL
);

-- The sweep: rows whose next transition has come, earliest first.
CREATE INDEX deadlines_next_transition ON deadlines (next_transition_at);
-- A commission's lists (its district), by state, in order of lateness; the id breaks ties for
-- paging.
CREATE INDEX deadlines_by_district ON deadlines (district_id, state, due_at, deadline_id);
-- An agency's own lists.
CREATE INDEX deadlines_by_agency ON deadlines (responsible_agency_id, state, due_at, deadline_id);
-- The open deadlines of one case (meeting, replacing, cancelling).
CREATE INDEX deadlines_by_case ON deadlines (district_id, case_reference, cycle, kind);

-- The case cycle each action assignment was sent in, so that a completion reported on it meets
-- that cycle's row.
CREATE TABLE action_assignments (
    message_id     TEXT PRIMARY KEY,
    district_id    TEXT NOT NULL,
    case_reference TEXT NOT NULL,
    cycle          BIGINT NOT NULL,
    action_number  BIGINT NOT NULL
);

-- One alert per deadline and state, whoever raised it, across restarts and replicas.
CREATE TABLE deadline_alerts (
    alert_id    TEXT PRIMARY KEY,
    deadline_id TEXT NOT NULL REFERENCES deadlines (deadline_id),
    state       TEXT NOT NULL,
    raised_at   BIGINT NOT NULL,
    UNIQUE (deadline_id, state)
);
