//! The gateway's own checks of the service forms (issue 5): a school's referral of a pupil to an
//! NGO, the NGO's updates on it (and the school's request to cancel), the safety team's meeting
//! notices, and the school's monthly log J. The gateway never trusts a client's validation:
//! every field is checked again here, and a violation names the field, never its value.
//!
//! None of these forms belongs to a case: `envelope.case_reference` must stay empty, and the
//! access check lets them through whole to their one recipient (the routing table allows them
//! only between a school or residential institution and an NGO of its district, or from the
//! school to its commission). What a school sends about a referral it made (a cancellation
//! request, a meeting notice) must name a referral that school sent to that NGO
//! ([`check_named_referral`]); the NGO's updates are replies to the referral itself.
//!
//! The `referral_reference` these forms carry (the school's own id of the referral) is not
//! compared with the referral's here: the referral's payload is removed once delivered, and the
//! gateway keeps no clear copy of its reference. The receiving agency is the guard: the school
//! applies an NGO's update to the referral its `in_reply_to` answers and ignores one naming
//! another reference; the NGO keeps a cancellation request or meeting notice only for the service
//! of the referral its `referral_message_id` names, with that referral's reference.

use jiff::civil::Date;
use referral_core::{
    FieldViolations, ServiceError, ServiceResult,
    directory::AgencyEntry,
    time,
    validate::{self, PERSON_NAME, Text},
};
use referral_proto::v1::{
    AgencyKind, Envelope, FormKind, PurposeOfUse, ReferralLog, ReferralLogRow, ReferralStatus,
    RiskTier, SafetyMeetingNotice, ServiceBusinessStatus, ServiceEvent, ServiceReferral,
    ServiceUpdate, payload,
};
use sqlx::{Any, Transaction};

use crate::{forms, store};

/// Longest reference (the school's referral or meeting reference, the NGO's service id).
const REFERENCE_MAX: usize = 100;
/// Most rows one month's log J may carry.
const MAX_LOG_ROWS: usize = 2000;

/// Whether `form` is one of the service forms this module checks.
pub(crate) fn is_service_form(form: &payload::Form) -> bool {
    matches!(
        form,
        payload::Form::ServiceReferral(_)
            | payload::Form::ServiceUpdate(_)
            | payload::Form::SafetyMeetingNotice(_)
            | payload::Form::ReferralLog(_)
    )
}

/// Checks a service form in `env`, sent by `caller`; `today` is the caller's district's date.
pub(crate) fn check(env: &Envelope, caller: &AgencyEntry, today: Date, v: &mut FieldViolations) {
    if !env.case_reference.is_empty() {
        v.add(
            "envelope.case_reference",
            "must be empty: a service form belongs to no case",
        );
    }
    match env.payload.as_ref().and_then(|p| p.form.as_ref()) {
        Some(payload::Form::ServiceReferral(r)) => {
            service_referral(r, today, v, "envelope.payload.service_referral")
        }
        Some(payload::Form::ServiceUpdate(u)) => service_update(
            u,
            caller.kind() == AgencyKind::Ngo,
            &env.in_reply_to,
            v,
            "envelope.payload.service_update",
        ),
        Some(payload::Form::SafetyMeetingNotice(n)) => {
            safety_meeting_notice(n, v, "envelope.payload.safety_meeting_notice")
        }
        Some(payload::Form::ReferralLog(j)) => {
            referral_log(j, today, v, "envelope.payload.referral_log");
            if PurposeOfUse::try_from(env.purpose_of_use).ok()
                == Some(PurposeOfUse::AggregateReporting)
            {
                v.add(
                    "envelope.purpose_of_use",
                    "the log J names pupils: it is not aggregate reporting",
                );
            }
        }
        _ => {}
    }
}

fn reference(v: &mut FieldViolations, field: &str, value: &str, required: bool) {
    if value.trim().is_empty() {
        if required {
            v.add(field, "required");
        }
    } else if value.len() > REFERENCE_MAX || !value.chars().all(|c| c.is_ascii_graphic()) {
        v.add(
            field,
            format!("at most {REFERENCE_MAX} printable ASCII characters"),
        );
    }
}

fn long(required: bool) -> Text {
    if required {
        validate::REQUIRED_LONG_TEXT
    } else {
        validate::LONG_TEXT
    }
}

/// A referral of an at-risk or high-risk pupil (M:2247-2271), referred today or earlier.
pub(crate) fn service_referral(r: &ServiceReferral, today: Date, v: &mut FieldViolations, p: &str) {
    reference(
        v,
        &format!("{p}.referral_reference"),
        &r.referral_reference,
        true,
    );
    validate::text(
        v,
        &format!("{p}.pupil_full_name"),
        &r.pupil_full_name,
        PERSON_NAME,
    );
    validate::text(
        v,
        &format!("{p}.class_name"),
        &r.class_name,
        Text::required(1, 20),
    );
    let referred_on = forms::required_date(v, format!("{p}.referred_on"), r.referred_on.as_ref());
    if referred_on.is_some_and(|d| d > today) {
        v.add(format!("{p}.referred_on"), "must not be in the future");
    }
    if let Some(born) =
        forms::required_date(v, format!("{p}.date_of_birth"), r.date_of_birth.as_ref())
    {
        let on = referred_on.unwrap_or(today);
        let age = validate::age_years(born, on);
        if born > on || age >= validate::MAX_CHILD_AGE_YEARS {
            v.add(
                format!("{p}.date_of_birth"),
                "must be the birth date of a child under 18",
            );
        }
    }
    if !matches!(
        RiskTier::try_from(r.risk_tier),
        Ok(RiskTier::AtRisk | RiskTier::HighRisk)
    ) {
        v.add(
            format!("{p}.risk_tier"),
            "at risk or high risk: only those pupils are referred outside education",
        );
    }
    validate::text(
        v,
        &format!("{p}.support_requested"),
        &r.support_requested,
        long(true),
    );
    validate::text(v, &format!("{p}.reason"), &r.reason, long(true));
    validate::text(
        v,
        &format!("{p}.contact_person"),
        &r.contact_person,
        PERSON_NAME,
    );
    validate::text(
        v,
        &format!("{p}.contact_phone"),
        &r.contact_phone,
        Text::optional(50),
    );
    validate::text(
        v,
        &format!("{p}.school_name"),
        &r.school_name,
        Text::required(1, 300),
    );
}

/// The statuses an update with `event` may carry: FHIR status, then BSeR business status.
pub(crate) fn event_statuses(
    event: ServiceEvent,
) -> (&'static [ReferralStatus], &'static [ServiceBusinessStatus]) {
    use ReferralStatus as R;
    use ServiceBusinessStatus as B;
    const ACTIVE: &[B] = &[
        B::Accepted,
        B::Scheduled,
        B::Unattended,
        B::EventCompleted,
        B::CancellationRequested,
    ];
    match event {
        ServiceEvent::Accepted => (&[R::Accepted], &[B::Accepted]),
        ServiceEvent::Declined => (&[R::Rejected], &[B::Declined]),
        ServiceEvent::SessionScheduled => (&[R::InProgress], &[B::Scheduled]),
        ServiceEvent::SessionHeld => (&[R::InProgress], &[B::EventCompleted]),
        ServiceEvent::ChildUnattended => (&[R::InProgress], &[B::Unattended]),
        ServiceEvent::WeeklyProgress => (&[R::Accepted, R::InProgress], ACTIVE),
        ServiceEvent::Completed => (&[R::Completed], &[B::FulfilmentCompleted]),
        ServiceEvent::Cancelled => (&[R::Cancelled], &[B::FulfilmentCancelled]),
        ServiceEvent::CancellationRequested => (
            &[R::Requested, R::Received, R::Accepted, R::InProgress],
            &[B::CancellationRequested],
        ),
        ServiceEvent::Unspecified => (&[], &[]),
    }
}

/// An update on a referral: from the NGO (`from_provider`), a reply to the referral; from the
/// school, only a request to cancel.
pub(crate) fn service_update(
    u: &ServiceUpdate,
    from_provider: bool,
    in_reply_to: &str,
    v: &mut FieldViolations,
    p: &str,
) {
    reference(
        v,
        &format!("{p}.referral_reference"),
        &u.referral_reference,
        true,
    );
    if from_provider {
        if u.referral_message_id != in_reply_to {
            v.add(
                format!("{p}.referral_message_id"),
                "must be the message the envelope replies to",
            );
        }
        reference(
            v,
            &format!("{p}.service_reference"),
            &u.service_reference,
            true,
        );
    } else {
        reference(
            v,
            &format!("{p}.referral_message_id"),
            &u.referral_message_id,
            true,
        );
        reference(
            v,
            &format!("{p}.service_reference"),
            &u.service_reference,
            false,
        );
    }
    let event = match ServiceEvent::try_from(u.event) {
        Ok(ServiceEvent::Unspecified) | Err(_) => {
            v.add(format!("{p}.event"), "required: a known service event");
            None
        }
        Ok(ServiceEvent::CancellationRequested) if from_provider => {
            v.add(
                format!("{p}.event"),
                "a cancellation is requested by the referrer, not the provider",
            );
            None
        }
        Ok(e) if !from_provider && e != ServiceEvent::CancellationRequested => {
            v.add(
                format!("{p}.event"),
                "the referrer may only request cancellation",
            );
            None
        }
        Ok(e) => Some(e),
    };
    if let Some(event) = event {
        let (statuses, business) = event_statuses(event);
        let status = ReferralStatus::try_from(u.status).unwrap_or(ReferralStatus::Unspecified);
        if !statuses.contains(&status) {
            v.add(
                format!("{p}.status"),
                "must be the status the event leads to",
            );
        }
        let b = ServiceBusinessStatus::try_from(u.business_status)
            .unwrap_or(ServiceBusinessStatus::Unspecified);
        if !business.contains(&b) {
            v.add(
                format!("{p}.business_status"),
                "must be the business status the event leads to",
            );
        }
    }
    if u.reported_at.as_ref().and_then(time::from_proto).is_none() {
        v.add(format!("{p}.reported_at"), "required: an instant");
    }
    let needs_reason = matches!(
        event,
        Some(
            ServiceEvent::Declined | ServiceEvent::Cancelled | ServiceEvent::CancellationRequested
        )
    );
    validate::text(v, &format!("{p}.reason"), &u.reason, long(needs_reason));
    validate::text(
        v,
        &format!("{p}.note"),
        &u.note,
        long(event == Some(ServiceEvent::WeeklyProgress)),
    );
    validate::text(
        v,
        &format!("{p}.support_received"),
        &u.support_received,
        long(false),
    );
    let field = format!("{p}.session_on");
    match event {
        Some(ServiceEvent::SessionScheduled) => {
            forms::required_date(v, field.clone(), u.session_on.as_ref());
        }
        Some(ServiceEvent::SessionHeld | ServiceEvent::ChildUnattended)
            if !forms::is_unset(u.session_on.as_ref()) =>
        {
            forms::required_date(v, field.clone(), u.session_on.as_ref());
        }
        Some(ServiceEvent::SessionHeld | ServiceEvent::ChildUnattended) => {}
        _ if !forms::is_unset(u.session_on.as_ref()) => {
            v.add(field, "only for a session scheduled, held or unattended")
        }
        _ => {}
    }
    validate::text(v, &format!("{p}.reported_by"), &u.reported_by, PERSON_NAME);
}

/// A safety-team meeting notice.
pub(crate) fn safety_meeting_notice(n: &SafetyMeetingNotice, v: &mut FieldViolations, p: &str) {
    reference(
        v,
        &format!("{p}.referral_reference"),
        &n.referral_reference,
        true,
    );
    reference(
        v,
        &format!("{p}.referral_message_id"),
        &n.referral_message_id,
        true,
    );
    reference(
        v,
        &format!("{p}.meeting_reference"),
        &n.meeting_reference,
        true,
    );
    if n.meeting_at.as_ref().and_then(time::from_proto).is_none() {
        v.add(format!("{p}.meeting_at"), "required: an instant");
    }
    validate::text(v, &format!("{p}.place"), &n.place, Text::required(1, 200));
    validate::text(v, &format!("{p}.convened_by"), &n.convened_by, PERSON_NAME);
    validate::text(v, &format!("{p}.note"), &n.note, long(false));
}

/// A month's log J: the period within the month (not after today), every row within the period.
pub(crate) fn referral_log(j: &ReferralLog, today: Date, v: &mut FieldViolations, p: &str) {
    validate::text(
        v,
        &format!("{p}.school_name"),
        &j.school_name,
        Text::required(1, 300),
    );
    let month = match (i16::try_from(j.year), i8::try_from(j.month)) {
        (Ok(y), Ok(m)) if (2000..=2100).contains(&y) && (1..=12).contains(&m) => {
            Date::new(y, m, 1).ok()
        }
        _ => None,
    };
    if month.is_none() {
        v.add(format!("{p}.month"), "year 2000 to 2100 and month 1 to 12");
    }
    let from = forms::required_date(v, format!("{p}.period_from"), j.period_from.as_ref());
    let to = forms::required_date(v, format!("{p}.period_to"), j.period_to.as_ref());
    if let (Some(first), Some(from), Some(to)) = (month, from, to) {
        let in_month = |d: Date| d.year() == first.year() && d.month() == first.month();
        if !in_month(from) || !in_month(to) || from > to {
            v.add(
                format!("{p}.period_to"),
                "the period must lie within the log's month, from its start to its end",
            );
        }
        if to > today {
            v.add(format!("{p}.period_to"), "must not be in the future");
        }
    }
    if j.rows.len() > MAX_LOG_ROWS {
        v.add(format!("{p}.rows"), format!("at most {MAX_LOG_ROWS} rows"));
        return;
    }
    for (i, row) in j.rows.iter().enumerate() {
        log_row(row, from.zip(to), v, &format!("{p}.rows[{i}]"));
    }
}

fn log_row(row: &ReferralLogRow, period: Option<(Date, Date)>, v: &mut FieldViolations, p: &str) {
    validate::text(v, &format!("{p}.pupil_name"), &row.pupil_name, PERSON_NAME);
    validate::text(
        v,
        &format!("{p}.service"),
        &row.service,
        Text::required(1, 300),
    );
    validate::text(
        v,
        &format!("{p}.support_received"),
        &row.support_received,
        long(false),
    );
    validate::text(
        v,
        &format!("{p}.contact_person"),
        &row.contact_person,
        PERSON_NAME,
    );
    let referred =
        forms::required_date(v, format!("{p}.date_referred"), row.date_referred.as_ref());
    if let (Some(d), Some((from, to))) = (referred, period)
        && (d < from || d > to)
    {
        v.add(
            format!("{p}.date_referred"),
            "must lie within the log's period",
        );
    }
    if !forms::is_unset(row.date_checked.as_ref()) {
        let checked =
            forms::required_date(v, format!("{p}.date_checked"), row.date_checked.as_ref());
        if let (Some(c), Some(r)) = (checked, referred)
            && c < r
        {
            v.add(
                format!("{p}.date_checked"),
                "must not be before the date referred",
            );
        }
    }
}

/// The field naming a referral, and the message id it names, when `env` is a form that must name
/// one ([`check_named_referral`]).
pub(crate) fn named_referral<'e>(
    caller: &AgencyEntry,
    env: &'e Envelope,
) -> Option<(&'static str, &'e str)> {
    match env.payload.as_ref().and_then(|p| p.form.as_ref()) {
        Some(payload::Form::SafetyMeetingNotice(n)) => Some((
            "envelope.payload.safety_meeting_notice.referral_message_id",
            n.referral_message_id.as_str(),
        )),
        Some(payload::Form::ServiceUpdate(u)) if caller.kind() != AgencyKind::Ngo => Some((
            "envelope.payload.service_update.referral_message_id",
            u.referral_message_id.as_str(),
        )),
        _ => None,
    }
}

/// What a school sends about a referral it made (a meeting notice, a cancellation request) must
/// name a SERVICE_REFERRAL that school sent to that NGO. Inside `Send`'s transaction.
pub(crate) async fn check_named_referral(
    tx: &mut Transaction<'static, Any>,
    caller: &AgencyEntry,
    recipient: &AgencyEntry,
    env: &Envelope,
) -> ServiceResult<()> {
    let Some((field, named)) = named_referral(caller, env) else {
        return Ok(());
    };
    let found = store::message_by_id(&mut **tx, named)
        .await?
        .is_some_and(|m| {
            m.sender_agency_id == caller.id
                && m.recipient_agency_id == recipient.id
                && m.form_kind == FormKind::ServiceReferral.as_str_name()
        });
    if found {
        Ok(())
    } else {
        Err(ServiceError::invalid_field(
            field,
            "must be a service referral you sent to the recipient",
        ))
    }
}

#[cfg(test)]
mod tests {
    use jiff::civil::date;
    use referral_core::validate::to_calendar_date;

    use super::*;

    fn referral() -> ServiceReferral {
        ServiceReferral {
            referral_reference: "SR-1".into(),
            pupil_full_name: "Ерасыл Нұрланұлы".into(),
            class_name: "7 Б".into(),
            date_of_birth: Some(to_calendar_date(date(2013, 3, 4))),
            risk_tier: RiskTier::HighRisk as i32,
            support_requested: "Психологтың кеңесі".into(),
            reason: "Агрессия".into(),
            contact_person: "Асель Нұрова".into(),
            contact_phone: "+7 702 000 0002".into(),
            referred_on: Some(to_calendar_date(date(2026, 11, 20))),
            school_name: "№1 мектеп".into(),
        }
    }

    fn fields(v: FieldViolations) -> Vec<String> {
        v.iter().map(|f| f.field.clone()).collect()
    }

    #[test]
    fn a_referral_is_for_an_at_risk_child_and_names_every_bad_field() {
        let today = date(2026, 11, 20);
        let mut v = FieldViolations::new();
        service_referral(&referral(), today, &mut v, "r");
        assert!(fields(v).is_empty());
        let mut bad = referral();
        bad.risk_tier = RiskTier::NotAtRisk as i32;
        bad.pupil_full_name.clear();
        bad.referred_on = Some(to_calendar_date(date(2026, 11, 21)));
        bad.date_of_birth = Some(to_calendar_date(date(2000, 1, 1)));
        let mut v = FieldViolations::new();
        service_referral(&bad, today, &mut v, "r");
        assert_eq!(
            fields(v),
            [
                "r.pupil_full_name",
                "r.referred_on",
                "r.date_of_birth",
                "r.risk_tier"
            ]
        );
    }

    #[test]
    fn an_update_carries_the_statuses_its_event_leads_to() {
        let update = ServiceUpdate {
            referral_reference: "SR-1".into(),
            referral_message_id: "m-1".into(),
            service_reference: "SVC-1".into(),
            event: ServiceEvent::Declined as i32,
            status: ReferralStatus::Rejected as i32,
            business_status: ServiceBusinessStatus::Declined as i32,
            reported_at: Some(time::to_proto(jiff::Timestamp::UNIX_EPOCH)),
            reason: "Орын жоқ".into(),
            reported_by: "Ирина Ким".into(),
            ..Default::default()
        };
        let mut v = FieldViolations::new();
        service_update(&update, true, "m-1", &mut v, "u");
        assert!(fields(v).is_empty());
        let mut bad = update.clone();
        bad.status = ReferralStatus::Completed as i32;
        bad.reason.clear();
        let mut v = FieldViolations::new();
        service_update(&bad, true, "m-2", &mut v, "u");
        assert_eq!(fields(v), ["u.referral_message_id", "u.status", "u.reason"]);
        // A school may only ask to cancel.
        let mut v = FieldViolations::new();
        service_update(&update, false, "", &mut v, "u");
        assert_eq!(fields(v), ["u.event"]);
    }
}
