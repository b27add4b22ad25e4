//! `RecordCaseEvent`: a commission reports what happened to a case (opened, assessment filed,
//! plan filed, review held, closed, reopened). The event is checked, stored and appended to the
//! ledger in one transaction; the engine then applies it from the ledger like any other entry.

use prost::Message as _;
use referral_core::{
    FieldViolations, ServiceError, ServiceResult,
    directory::{AgencyEntry, role_name},
    time, validate,
};
use referral_proto::v1::{
    AgencyKind, CaseEvent, CaseEventKind, RecordCaseEventRequest, RecordCaseEventResponse,
    RiskLevel, Role,
};
use sqlx::Row as _;

use crate::{
    Shared,
    forms::{self, CheckedEvent},
    ledger::{self, EntryFields},
};

/// The recipient the ledger names for a case event: the gateway itself.
pub(crate) const GATEWAY_RECIPIENT: &str = "gateway";

/// The ledger's event name of a case event: `case.` and the kind in lower snake case
/// (`case.assessment_filed`).
pub(crate) fn ledger_event_name(kind: CaseEventKind) -> String {
    format!(
        "case.{}",
        kind.as_str_name()
            .trim_start_matches("CASE_EVENT_KIND_")
            .to_ascii_lowercase()
    )
}

/// The case event kind a ledger event name stands for.
pub(crate) fn kind_from_ledger_event(event: &str) -> Option<CaseEventKind> {
    let kind = event.strip_prefix("case.")?;
    CaseEventKind::from_str_name(&format!("CASE_EVENT_KIND_{}", kind.to_ascii_uppercase()))
        .filter(|k| *k != CaseEventKind::Unspecified)
}

impl Shared {
    /// Checks, stores and chains a case event; idempotent by (commission, idempotency key).
    pub(crate) async fn record_case_event(
        &self,
        caller: &AgencyEntry,
        req: RecordCaseEventRequest,
    ) -> ServiceResult<RecordCaseEventResponse> {
        // 1. Who may record: the commission, for one of its curators, secretary or chair.
        if caller.kind() != AgencyKind::Commission {
            return Err(ServiceError::PermissionDenied(
                "only a commission records case events".into(),
            ));
        }
        let acting = req.acting_user.clone().unwrap_or_default();
        let role = Role::try_from(acting.role).unwrap_or(Role::Unspecified);
        if req.acting_user.is_some() && acting.agency_id != caller.id {
            return Err(ServiceError::PermissionDenied(
                "the calling agency cannot act for a user of another agency".into(),
            ));
        }
        if req.acting_user.is_some()
            && !matches!(
                role,
                Role::CommissionCurator | Role::CommissionSecretary | Role::CommissionChair
            )
        {
            return Err(ServiceError::PermissionDenied(
                "only a commission's curator, secretary or chair records case events".into(),
            ));
        }

        // 2. The request's fields.
        let mut v = FieldViolations::new();
        validate::idempotency_key(&req.idempotency_key, "idempotency_key", &mut v);
        if req.acting_user.is_none() {
            v.add("acting_user", "required");
        } else if acting.user_id.trim().is_empty() || acting.user_id.chars().count() > 200 {
            v.add("acting_user.user_id", "required, at most 200 characters");
        }
        let Some(event) = req.event.as_ref() else {
            v.add("event", "required");
            return Err(ServiceError::InvalidArgument(v));
        };
        let checked = forms::case_event(event, &mut v, "event");
        if let Some(checked) = checked {
            self.check_event_against_settings(caller, event, checked, &mut v);
        }
        v.into_result()?;
        let Some(checked) = checked else {
            return Err(ServiceError::invalid_field("event", "required"));
        };
        // Need to know: no curator on both sides of an incident, and no row for an agency the
        // case must never reach (its deadlines and alerts would tell it of the case).
        self.check_event_access(caller, &acting, event).await?;
        // 3. Store: idempotency, the case's cycles, the event and its ledger entry, together.
        let bytes = event.encode_to_vec();
        let sha = ledger::payload_sha256(&bytes);
        let now = self.clock.now();
        let now_us = time::to_micros(now);
        let mut tx = self.db.begin().await?;
        // The ledger's lock first: concurrent recordings with one key then see each other.
        let mut head = ledger::lock_head(&mut tx).await?;
        if let Some(existing) = sqlx::query(
            "SELECT event_id, event_sha256 FROM case_events \
             WHERE commission_agency_id = $1 AND idempotency_key = $2",
        )
        .bind(&caller.id)
        .bind(&req.idempotency_key)
        .fetch_optional(&mut *tx)
        .await?
        {
            tx.rollback().await?;
            let stored_sha: String = existing.try_get("event_sha256")?;
            if stored_sha != sha {
                return Err(ServiceError::AlreadyExists(
                    "this idempotency key was used for a different case event".into(),
                ));
            }
            return Ok(RecordCaseEventResponse {
                event_id: existing.try_get("event_id")?,
                duplicate: true,
            });
        }
        let last = sqlx::query(
            "SELECT kind, cycle FROM case_events WHERE district_id = $1 AND case_reference = $2 \
             ORDER BY ledger_seq DESC LIMIT 1",
        )
        .bind(&caller.district)
        .bind(&event.case_reference)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| -> Result<_, sqlx::Error> {
            let kind: String = r.try_get("kind")?;
            let kind = CaseEventKind::from_str_name(&kind).unwrap_or(CaseEventKind::Unspecified);
            Ok((kind, r.try_get::<i64, _>("cycle")?))
        })
        .transpose()?;
        check_sequence(checked.kind, i64::from(event.cycle), last)?;
        let event_id = uuid::Uuid::now_v7().to_string();
        let fields = EntryFields {
            event: ledger_event_name(checked.kind),
            message_id: event_id.clone(),
            sender_agency_id: caller.id.clone(),
            recipient_agency_id: GATEWAY_RECIPIENT.to_owned(),
            acting_user_id: acting.user_id.clone(),
            acting_role: role_name(role),
            purpose_of_use: "PURPOSE_OF_USE_CARE_MANAGEMENT".to_owned(),
            form_kind: String::new(),
            case_reference: event.case_reference.clone(),
            confidentiality: "CONFIDENTIALITY_LABEL_RESTRICTED".to_owned(),
            payload_sha256: sha,
            sections: String::new(),
            outcome: String::new(),
        };
        let seq = head.append(&mut tx, now_us, &fields).await?;
        head.store(&mut tx).await?;
        sqlx::query(
            "INSERT INTO case_events (event_id, commission_agency_id, district_id, \
             idempotency_key, case_reference, kind, cycle, event, event_sha256, recorded_at, \
             ledger_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&event_id)
        .bind(&caller.id)
        .bind(&caller.district)
        .bind(&req.idempotency_key)
        .bind(&event.case_reference)
        .bind(checked.kind.as_str_name())
        .bind(i64::from(event.cycle))
        .bind(bytes)
        .bind(&fields.payload_sha256)
        .bind(now_us)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        crate::access::on_case_event(&mut tx, event, caller, now_us).await?;
        tx.commit().await?;
        tracing::info!(
            event_id = %event_id,
            commission = %caller.id,
            kind = checked.kind.as_str_name(),
            cycle = event.cycle,
            "case event recorded"
        );
        self.ledger_appended();
        Ok(RecordCaseEventResponse {
            event_id,
            duplicate: false,
        })
    }

    /// What needs the directory and the settings: each action row's agency belongs to the
    /// commission's district, and a fixed review date lies within the review period.
    fn check_event_against_settings(
        &self,
        caller: &AgencyEntry,
        event: &CaseEvent,
        checked: CheckedEvent,
        v: &mut FieldViolations,
    ) {
        let directory = self.directory();
        for (i, row) in event.actions.iter().enumerate() {
            if row.responsible_agency_id.is_empty() {
                continue;
            }
            let known = directory
                .agency(&row.responsible_agency_id)
                .is_some_and(|a| a.district == caller.district);
            if !known {
                v.add(
                    format!("event.actions[{i}].responsible_agency_id"),
                    "must be an agency of the commission's district (or empty for the commission)",
                );
            }
        }
        if let (Some(next), Some(calendar)) =
            (checked.next_review_on, self.calendar(&caller.district))
        {
            let from = calendar.local_date(checked.occurred_at);
            let high_risk = event.risk_level == RiskLevel::High as i32;
            if let Err(e) =
                referral_deadlines::review_due(from, Some(next), high_risk, &self.deadlines)
            {
                // The message names the limit (a date computed from the settings), never input.
                v.add("event.next_review_on", e.to_string());
            }
        }
    }
}

/// A case's events follow its life: nothing is recorded for a cycle the case has left or for
/// a closed case (except its reopening), a reopening starts a later cycle, and any other event
/// belongs to the cycle in force. `last` is the case's last recorded event (kind and cycle).
fn check_sequence(
    kind: CaseEventKind,
    cycle: i64,
    last: Option<(CaseEventKind, i64)>,
) -> ServiceResult<()> {
    use CaseEventKind as K;
    let refuse = |m: String| Err(ServiceError::FailedPrecondition(m));
    let Some((last_kind, current)) = last else {
        return match kind {
            K::CaseOpened => Ok(()),
            _ => refuse("the case was never opened".into()),
        };
    };
    if cycle < current {
        return refuse(format!(
            "the case is in cycle {current}: an event of an earlier cycle cannot be recorded"
        ));
    }
    match kind {
        K::CaseReopened if cycle == current => refuse(format!(
            "a reopening starts a new cycle: the case is in cycle {current}"
        )),
        K::CaseReopened => Ok(()),
        _ if last_kind == K::CaseClosed => refuse("the case is closed: reopen it first".into()),
        K::CaseOpened if cycle == current => Ok(()),
        _ if cycle > current => refuse(format!(
            "the case is in cycle {current}: reopen it before recording events of a later cycle"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_event_names_are_lower_snake_and_round_trip() {
        assert_eq!(
            ledger_event_name(CaseEventKind::AssessmentFiled),
            "case.assessment_filed"
        );
        for kind in [
            CaseEventKind::CaseOpened,
            CaseEventKind::AssessmentFiled,
            CaseEventKind::SupportPlanFiled,
            CaseEventKind::ReviewHeld,
            CaseEventKind::CaseClosed,
            CaseEventKind::CaseReopened,
        ] {
            assert_eq!(kind_from_ledger_event(&ledger_event_name(kind)), Some(kind));
        }
        assert_eq!(kind_from_ledger_event("message.accepted"), None);
        assert_eq!(kind_from_ledger_event("case.unspecified"), None);
    }

    #[test]
    fn events_follow_the_cases_life() {
        use CaseEventKind as K;
        let ok = |kind, cycle, last| check_sequence(kind, cycle, last).is_ok();
        assert!(ok(K::CaseOpened, 1, None));
        assert!(!ok(K::AssessmentFiled, 1, None));
        assert!(!ok(K::CaseReopened, 1, None));
        assert!(ok(K::AssessmentFiled, 1, Some((K::CaseOpened, 1))));
        assert!(!ok(K::AssessmentFiled, 2, Some((K::CaseOpened, 1))));
        assert!(!ok(K::AssessmentFiled, 1, Some((K::CaseClosed, 1))));
        assert!(ok(K::CaseReopened, 2, Some((K::CaseClosed, 1))));
        assert!(!ok(K::CaseReopened, 1, Some((K::CaseClosed, 1))));
        assert!(!ok(K::SupportPlanFiled, 1, Some((K::CaseReopened, 2))));
        assert!(ok(K::SupportPlanFiled, 2, Some((K::ReviewHeld, 2))));
        // Opening again in the current cycle (a retried opening under a new key) is harmless.
        assert!(ok(K::CaseOpened, 1, Some((K::CaseOpened, 1))));
    }
}
