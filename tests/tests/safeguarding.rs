//! The school's safeguarding procedure (issue 5; P:66-80, P:130-178), each on SQLite and on
//! PostgreSQL, through the real school service over mTLS, the real gateway and its deadline
//! engine, with the manual clock:
//!
//! * a concern goes to the safeguarding lead, to the deputy while the lead is recorded absent;
//!   a reporter sees only their own concerns; bad fields are named and nothing is stored;
//! * a phone report starts the 24-hour written-confirmation deadline, which alerts the school
//!   when the clock passes it; linking the school's K meets it and starts the 3-working-day
//!   answer deadline, met when the commission decides the K, and in another concern alerted as
//!   the reminder to the lead when the clock passes 3 working days over a weekend;
//! * an allegation against a member of staff reaches the director within 1 working day, never
//!   the accused; one against the director goes to the lead, and its deadline, overdue and
//!   escalated, is the lead's alone: the director neither lists nor watches it, and no alert of
//!   it (nor any alert addressed to someone else) shows in the director's or a teacher's inbox;
//! * impossible steps (a K linked twice, a closed concern closed, an acknowledgement by someone
//!   else) are refused and change nothing; another school's K is refused.

use jiff::{SignedDuration, Timestamp, civil::Date};
use referral_core::{time, validate::to_calendar_date};
use referral_proto::v1::{
    AcknowledgeAllegationRequest, Allegation, AllegationState, CancelLeadAbsenceRequest,
    CloseConcernRequest, Concern, ConcernState, ConsultRequest, Consultation, Deadline,
    DeadlineAlert, DeadlineKind, DeadlineState, GetConcernRequest, LinkWrittenReportRequest,
    ListAllegationsRequest, ListConcernsRequest, ListDeadlinesRequest, ListOverdueRequest,
    NoFurtherAction, RecordAllegationRequest, RecordAnswerRequest, RecordConsultationRequest,
    RecordPhoneReportRequest, ReportConcernRequest, Role, SetLeadAbsenceRequest,
    WatchDeadlinesRequest, decide_help_request_request::Outcome,
};
use referral_tests::{Backend, StaffClient, TestHub, almaty, both_backends};
use tonic::Code;

both_backends!(
    concerns_go_to_the_lead_or_the_deputy_and_reporters_see_their_own,
    a_phoned_concern_is_confirmed_in_writing_and_answered,
    no_answer_in_three_working_days_reminds_the_lead,
    allegations_reach_the_director_and_never_the_accused,
    an_allegation_against_the_director_never_reaches_the_director_as_a_deadline,
);

fn at(date: Date, hour: i8, minute: i8) -> Timestamp {
    date.at(hour, minute, 0, 0)
        .to_zoned(almaty())
        .unwrap()
        .timestamp()
}

fn concern_request(key: &str, pupil: &str, on: Date) -> ReportConcernRequest {
    ReportConcernRequest {
        idempotency_key: key.into(),
        pupil_name: pupil.into(),
        pupil_class: "7 «Б»".into(),
        what_happened: "Сабақта қолында көгерген іздер байқалды; үйде ұрады деп айтты.".into(),
        observed_on: Some(to_calendar_date(on)),
        at_risk_now: false,
    }
}

async fn report(
    staff: &StaffClient,
    request: ReportConcernRequest,
) -> Result<Concern, tonic::Status> {
    staff
        .safeguarding()
        .report_concern(staff.req(request))
        .await
        .map(|r| r.into_inner())
}

async fn list(staff: &StaffClient) -> Vec<Concern> {
    staff
        .safeguarding()
        .list_concerns(staff.req(ListConcernsRequest::default()))
        .await
        .expect("concerns list")
        .into_inner()
        .concerns
}

async fn get(staff: &StaffClient, id: &str) -> Result<Concern, tonic::Status> {
    staff
        .safeguarding()
        .get_concern(staff.req(GetConcernRequest {
            concern_id: id.into(),
        }))
        .await
        .map(|r| r.into_inner())
}

async fn phone(staff: &StaffClient, id: &str, when: Timestamp) -> Result<Concern, tonic::Status> {
    staff
        .safeguarding()
        .record_phone_report(staff.req(RecordPhoneReportRequest {
            concern_id: id.into(),
            phoned_at: Some(time::to_proto(when)),
        }))
        .await
        .map(|r| r.into_inner())
}

async fn link(staff: &StaffClient, id: &str, k: &str) -> Result<Concern, tonic::Status> {
    staff
        .safeguarding()
        .link_written_report(staff.req(LinkWrittenReportRequest {
            concern_id: id.into(),
            help_request_message_id: k.into(),
        }))
        .await
        .map(|r| r.into_inner())
}

async fn close(staff: &StaffClient, id: &str, reason: &str) -> Result<Concern, tonic::Status> {
    staff
        .safeguarding()
        .close_concern(staff.req(CloseConcernRequest {
            concern_id: id.into(),
            reason: reason.into(),
        }))
        .await
        .map(|r| r.into_inner())
}

fn fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    referral_tests::fields(status)
}

/// A K from `agency`'s director (with a sample pupil); its gateway message id, once delivered.
async fn submit_k(hub: &TestHub, agency: &str, key: &str) -> String {
    let director = hub.staff(agency, "director").await;
    let k = director
        .submit_k(
            key,
            "",
            referral_core::validate::sample_help_request(hub.today()),
        )
        .await
        .expect("K submitted");
    hub.delivered(&k).await;
    k
}

fn one_of(deadlines: &[Deadline], kind: DeadlineKind) -> Deadline {
    let found: Vec<&Deadline> = deadlines.iter().filter(|d| d.kind == kind as i32).collect();
    assert_eq!(found.len(), 1, "one {kind:?} deadline in {deadlines:?}");
    found[0].clone()
}

fn state(d: &Deadline) -> DeadlineState {
    DeadlineState::try_from(d.state).unwrap()
}

fn due_at(d: &Deadline) -> Timestamp {
    time::from_proto(d.due_at.as_ref().unwrap()).unwrap()
}

async fn concerns_go_to_the_lead_or_the_deputy_and_reporters_see_their_own(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let friday = hub.today();
    let teacher = hub.staff("school-1", "safety-team").await;
    let director = hub.staff("school-1", "director").await;

    // Every bad field named; nothing stored.
    let bad = report(
        &teacher,
        ReportConcernRequest {
            idempotency_key: "bad".into(),
            pupil_name: " ".into(),
            pupil_class: String::new(),
            what_happened: "x".repeat(4001),
            observed_on: Some(to_calendar_date(friday.tomorrow().unwrap())),
            at_risk_now: true,
        },
    )
    .await
    .unwrap_err();
    let mut named = fields(&bad);
    named.sort();
    assert_eq!(
        named,
        [
            "idempotency_key",
            "observed_on",
            "pupil_class",
            "pupil_name",
            "what_happened"
        ]
    );
    assert_eq!(
        hub.agency_count("school-1", "safeguarding_concerns").await,
        0
    );

    // The lead receives a concern.
    let first = report(
        &teacher,
        concern_request("concern-0001", "Ерасыл Қанатұлы", friday),
    )
    .await
    .unwrap();
    assert_eq!(first.assigned_to_user_id, "safeguarding-lead");
    assert_eq!(first.assigned_to_role, Role::SafeguardingLead as i32);
    assert_eq!(first.state, ConcernState::Reported as i32);
    assert_eq!(first.reported_by_user_id, "safety-team");
    // The same request again is the same concern.
    let again = report(
        &teacher,
        concern_request("concern-0001", "Ерасыл Қанатұлы", friday),
    )
    .await
    .unwrap();
    assert_eq!(again.concern_id, first.concern_id);
    let other = report(
        &teacher,
        concern_request("concern-0001", "Дәурен Серікұлы", friday),
    )
    .await
    .unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists);

    // The lead's absence: only the lead or the director records it, with valid days.
    let absence = |key: &str, first: Date, last: Date| SetLeadAbsenceRequest {
        idempotency_key: key.into(),
        first_day: Some(to_calendar_date(first)),
        last_day: Some(to_calendar_date(last)),
        note: "Біліктілікті арттыру курсы / курсы повышения квалификации".into(),
    };
    let monday = at(friday, 12, 0) + SignedDuration::from_hours(72);
    let monday = monday.to_zoned(almaty()).date();
    let denied = teacher
        .safeguarding()
        .set_lead_absence(teacher.req(absence("absence-01", friday, monday)))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let bad = director
        .safeguarding()
        .set_lead_absence(director.req(absence("absence-01", monday, friday)))
        .await
        .unwrap_err();
    assert_eq!(fields(&bad), ["last_day"]);
    let bad = director
        .safeguarding()
        .set_lead_absence(director.req(absence("absence-01", friday.yesterday().unwrap(), monday)))
        .await
        .unwrap_err();
    assert_eq!(fields(&bad), ["first_day"]);
    assert_eq!(
        hub.agency_count("school-1", "safeguarding_lead_absences")
            .await,
        0
    );
    let away = director
        .safeguarding()
        .set_lead_absence(director.req(absence("absence-01", friday, monday)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(away.lead_user_id, "safeguarding-lead");

    // While the lead is away, the deputy receives concerns.
    let second = report(
        &teacher,
        concern_request("concern-0002", "Айым Болатқызы", friday),
    )
    .await
    .unwrap();
    assert_eq!(second.assigned_to_user_id, "safeguarding-deputy");
    assert_eq!(second.assigned_to_role, Role::SafeguardingDeputy as i32);
    // ... and still on Monday, the last day; on Tuesday the lead again.
    hub.clock.set(at(monday, 9, 0));
    // Tokens last a working day: each person logs in again after the weekend.
    let director = hub.staff("school-1", "director").await;
    let third = report(
        &director,
        concern_request("concern-0003", "Нұрсұлтан Асқарұлы", monday),
    )
    .await
    .unwrap();
    assert_eq!(third.assigned_to_user_id, "safeguarding-deputy");
    hub.clock.set(at(monday.tomorrow().unwrap(), 9, 0));
    let (teacher, lead, deputy, director) = (
        hub.staff("school-1", "safety-team").await,
        hub.staff("school-1", "safeguarding-lead").await,
        hub.staff("school-1", "safeguarding-deputy").await,
        hub.staff("school-1", "director").await,
    );
    let fourth = report(
        &deputy,
        concern_request("concern-0004", "Әлия Маратқызы", monday),
    )
    .await
    .unwrap();
    assert_eq!(fourth.assigned_to_user_id, "safeguarding-lead");

    // A cancelled absence sends concerns to the lead again.
    let tuesday = hub.today();
    let away = lead
        .safeguarding()
        .set_lead_absence(lead.req(absence("absence-02", tuesday, tuesday)))
        .await
        .unwrap()
        .into_inner();
    let cancelled = lead
        .safeguarding()
        .cancel_lead_absence(lead.req(CancelLeadAbsenceRequest {
            absence_id: away.absence_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(cancelled.cancelled_at.is_some());
    let twice = lead
        .safeguarding()
        .cancel_lead_absence(lead.req(CancelLeadAbsenceRequest {
            absence_id: away.absence_id,
        }))
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition);
    let fifth = report(
        &teacher,
        concern_request("concern-0005", "Ерасыл Қанатұлы", tuesday),
    )
    .await
    .unwrap();
    assert_eq!(fifth.assigned_to_user_id, "safeguarding-lead");

    // Who sees what: the reporter their own; the lead, the deputy and the director all.
    let mine: Vec<String> = list(&teacher)
        .await
        .into_iter()
        .map(|c| c.concern_id)
        .collect();
    assert_eq!(
        mine,
        [
            fifth.concern_id.clone(),
            second.concern_id.clone(),
            first.concern_id.clone()
        ],
        "newest first, only the teacher's own"
    );
    assert_eq!(
        get(&teacher, &third.concern_id).await.unwrap_err().code(),
        Code::NotFound,
        "another's concern is not shown"
    );
    for staff in [&lead, &deputy, &director] {
        assert_eq!(list(staff).await.len(), 5);
    }
    // The teacher takes no step; the director neither.
    for staff in [&teacher, &director] {
        let refused = close(staff, &first.concern_id, "Қажет емес")
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
    }

    // A school whose directory names no lead or deputy: its director receives the concern.
    let other_director = hub.staff("school-2", "director").await;
    let elsewhere = report(
        &other_director,
        concern_request("concern-0006", "Ерасыл", tuesday),
    )
    .await
    .unwrap();
    assert_eq!(elsewhere.assigned_to_role, Role::SchoolDirector as i32);
    // A residential institution has no safeguarding lead (its staff report to its director).
    let institution = hub.staff("residential-1", "staff").await;
    let none = report(
        &institution,
        concern_request("concern-0007", "Ерасыл", tuesday),
    )
    .await
    .unwrap_err();
    assert_eq!(none.code(), Code::Unimplemented);
    hub.shutdown().await;
}

async fn a_phoned_concern_is_confirmed_in_writing_and_answered(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let friday = hub.today();
    let teacher = hub.staff("school-1", "safety-team").await;
    let lead = hub.staff("school-1", "safeguarding-lead").await;
    let concern = report(
        &teacher,
        concern_request("concern-0001", "Ерасыл Қанатұлы", friday),
    )
    .await
    .unwrap();
    let id = concern.concern_id.clone();

    // The lead consults the commission without naming the child (P:154-156).
    let consultation = lead
        .client
        .clone()
        .consult(lead.req(ConsultRequest {
            idempotency_key: "consult-0001".into(),
            consultation: Some(Consultation {
                concern: "7-сынып оқушысының қолында көгерген іздер бар.".into(),
                question: "Балаларды қорғау қызметіне жіберу керек пе?".into(),
                child_age_years: 13,
                consulted_by: String::new(),
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .message_id;
    let k_of_school_1 = submit_k(&hub, "school-1", "k-school-1").await;
    let bad = lead
        .safeguarding()
        .record_consultation(lead.req(RecordConsultationRequest {
            concern_id: id.clone(),
            consultation_message_id: k_of_school_1.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(
        fields(&bad),
        ["consultation_message_id"],
        "a K is not a consultation"
    );
    let consulted = lead
        .safeguarding()
        .record_consultation(lead.req(RecordConsultationRequest {
            concern_id: id.clone(),
            consultation_message_id: consultation.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(consulted.state, ConcernState::Consulted as i32);
    assert_eq!(consulted.consultation_message_id, consultation);

    // The lead phones the service: the written report is due within 24 hours.
    let bad = phone(&lead, &id, hub.clock.now() + SignedDuration::from_hours(2))
        .await
        .unwrap_err();
    assert_eq!(fields(&bad), ["phoned_at"]);
    let phoned_at = hub.clock.now() - SignedDuration::from_mins(10);
    let phoned = phone(&lead, &id, phoned_at).await.unwrap();
    assert_eq!(phoned.state, ConcernState::Phoned as i32);
    hub.settle().await;
    let written = one_of(
        &lead.deadlines_about(&id).await,
        DeadlineKind::WrittenConfirmation,
    );
    assert_eq!(written.responsible_agency_id, "school-1");
    assert_eq!(written.responsible_user_id, "safeguarding-lead");
    assert_eq!(due_at(&written), phoned_at + SignedDuration::from_hours(24));
    assert!(lead.alerts_about(&id).await.is_empty());

    // Past 24 hours without the written report: the school is alerted.
    hub.clock
        .set(phoned_at + SignedDuration::from_hours(24) + SignedDuration::from_mins(1));
    let (teacher, lead) = (
        hub.staff("school-1", "safety-team").await,
        hub.staff("school-1", "safeguarding-lead").await,
    );
    hub.settle().await;
    let written = one_of(
        &lead.deadlines_about(&id).await,
        DeadlineKind::WrittenConfirmation,
    );
    assert_eq!(state(&written), DeadlineState::Overdue);
    let alerts = lead.alerts_about(&id).await;
    assert!(
        alerts
            .iter()
            .any(|a| a.state == DeadlineState::Overdue as i32
                && a.deadline.as_ref().unwrap().kind == DeadlineKind::WrittenConfirmation as i32),
        "the overdue written report is alerted: {alerts:?}"
    );

    // Another school's K, or a K of this school that is not a K, is refused; nothing changes.
    let k_of_school_2 = submit_k(&hub, "school-2", "k-school-2").await;
    for wrong in [k_of_school_2.as_str(), consultation.as_str()] {
        let refused = link(&lead, &id, wrong).await.unwrap_err();
        assert_eq!(fields(&refused), ["help_request_message_id"]);
    }
    assert_eq!(get(&lead, &id).await.unwrap(), phoned);

    // The written report: this school's K. It meets the 24-hour deadline and starts the answer's.
    let linked = link(&lead, &id, &k_of_school_1).await.unwrap();
    assert_eq!(linked.state, ConcernState::ReferredInWriting as i32);
    assert_eq!(linked.written_message_id, k_of_school_1);
    // Linked twice, or the same K for another concern: refused, nothing changed.
    let twice = link(&lead, &id, &k_of_school_1).await.unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition);
    let other = report(
        &teacher,
        concern_request("concern-0002", "Айым Болатқызы", friday),
    )
    .await
    .unwrap();
    let taken = link(&lead, &other.concern_id, &k_of_school_1)
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::FailedPrecondition);
    assert_eq!(get(&lead, &id).await.unwrap(), linked);
    assert_eq!(
        get(&lead, &other.concern_id).await.unwrap().state,
        ConcernState::Reported as i32
    );
    // Awaiting the answer, the concern cannot be closed.
    let early = close(&lead, &id, "Жабу").await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition);
    hub.settle().await;
    let deadlines = lead.deadlines_about(&id).await;
    assert_eq!(
        state(&one_of(&deadlines, DeadlineKind::WrittenConfirmation)),
        DeadlineState::Met
    );
    let answer = one_of(&deadlines, DeadlineKind::ProtectionServiceAnswer);
    assert_eq!(state(&answer), DeadlineState::Pending);
    assert_eq!(answer.help_request_message_id, k_of_school_1);

    // The commission decides the K: that is the answer, in the school and in the engine.
    let secretary = hub.staff("commission", "secretary").await;
    let decision = secretary
        .decide(
            &k_of_school_1,
            "decision-0001",
            Outcome::NoFurtherAction(NoFurtherAction {
                reason: "Отбасымен әлеуметтік қызмет жұмыс істейді".into(),
            }),
        )
        .await
        .unwrap();
    hub.delivered(&decision.decision_message_id).await;
    let answered = get(&lead, &id).await.unwrap();
    assert_eq!(answered.state, ConcernState::Answered as i32);
    assert_eq!(answered.answer_message_id, decision.decision_message_id);
    hub.settle().await;
    assert_eq!(
        state(&one_of(
            &lead.deadlines_about(&id).await,
            DeadlineKind::ProtectionServiceAnswer
        )),
        DeadlineState::Met
    );
    // Answered twice: refused.
    let again = lead
        .safeguarding()
        .record_answer(lead.req(RecordAnswerRequest {
            concern_id: id.clone(),
            answer_note: "Телефон арқылы жауап берді".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    // Closed once; closing a closed concern is refused and changes nothing.
    let bad = close(&lead, &id, "").await.unwrap_err();
    assert_eq!(fields(&bad), ["reason"]);
    let closed = close(&lead, &id, "Комиссия шешім қабылдады").await.unwrap();
    assert_eq!(closed.state, ConcernState::Closed as i32);
    let twice = close(&lead, &id, "Тағы да").await.unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition);
    assert_eq!(get(&lead, &id).await.unwrap(), closed);
    // The other concern needs no referral: closed straight from reported, with no deadline.
    let closed = close(&lead, &other.concern_id, "Жолдама қажет емес")
        .await
        .unwrap();
    assert_eq!(closed.state, ConcernState::Closed as i32);
    hub.settle().await;
    assert!(lead.deadlines_about(&other.concern_id).await.is_empty());
    hub.shutdown().await;
}

async fn no_answer_in_three_working_days_reminds_the_lead(backend: Backend) {
    let hub = TestHub::start(backend).await;
    // Friday 20 November 2026: 3 working days are Monday 23, Tuesday 24 and Wednesday 25.
    let friday = hub.today();
    assert_eq!(friday.weekday(), jiff::civil::Weekday::Friday);
    let teacher = hub.staff("school-1", "safety-team").await;
    let lead = hub.staff("school-1", "safeguarding-lead").await;
    let concern = report(
        &teacher,
        concern_request("concern-0001", "Дәурен Серікұлы", friday),
    )
    .await
    .unwrap();
    let id = concern.concern_id;
    let k = submit_k(&hub, "school-1", "k-school-1").await;
    // Written without a phone call first: no written-confirmation deadline, only the answer's.
    link(&lead, &id, &k).await.unwrap();
    hub.settle().await;
    let deadlines = lead.deadlines_about(&id).await;
    assert_eq!(deadlines.len(), 1, "{deadlines:?}");
    let answer = one_of(&deadlines, DeadlineKind::ProtectionServiceAnswer);
    let wednesday = jiff::civil::date(2026, 11, 25);
    assert_eq!(
        due_at(&answer),
        at(wednesday.tomorrow().unwrap(), 0, 0),
        "due at the end of Wednesday"
    );
    assert_eq!(answer.responsible_user_id, "safeguarding-lead");

    // Over the weekend and until Wednesday's end nothing is overdue.
    hub.clock.set(at(wednesday, 23, 59));
    let lead = hub.staff("school-1", "safeguarding-lead").await;
    hub.settle().await;
    let alerts = lead.alerts_about(&id).await;
    assert!(
        alerts
            .iter()
            .all(|a| a.state != DeadlineState::Overdue as i32),
        "{alerts:?}"
    );
    // Thursday: no answer in 3 working days; the lead is reminded to contact the service again.
    hub.clock.set(at(wednesday.tomorrow().unwrap(), 0, 1));
    let lead = hub.staff("school-1", "safeguarding-lead").await;
    hub.settle().await;
    let alerts = lead.alerts_about(&id).await;
    let overdue = alerts
        .iter()
        .find(|a| a.state == DeadlineState::Overdue as i32)
        .expect("the reminder arrives");
    assert_eq!(
        overdue.deadline.as_ref().unwrap().kind,
        DeadlineKind::ProtectionServiceAnswer as i32
    );
    // An answer given outside the hub, recorded by the lead, meets it.
    let answered = lead
        .safeguarding()
        .record_answer(lead.req(RecordAnswerRequest {
            concern_id: id.clone(),
            answer_note: "Қызмет телефон арқылы жауап берді: отбасыға барады.".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answered.state, ConcernState::Answered as i32);
    hub.settle().await;
    assert_eq!(
        state(&one_of(
            &lead.deadlines_about(&id).await,
            DeadlineKind::ProtectionServiceAnswer
        )),
        DeadlineState::Met
    );
    hub.shutdown().await;
}

async fn record(
    staff: &StaffClient,
    request: RecordAllegationRequest,
) -> Result<Allegation, tonic::Status> {
    staff
        .safeguarding()
        .record_allegation(staff.req(request))
        .await
        .map(|r| r.into_inner())
}

async fn allegations(staff: &StaffClient) -> Vec<Allegation> {
    staff
        .safeguarding()
        .list_allegations(staff.req(ListAllegationsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .allegations
}

async fn acknowledge(staff: &StaffClient, id: &str) -> Result<Allegation, tonic::Status> {
    staff
        .safeguarding()
        .acknowledge_allegation(staff.req(AcknowledgeAllegationRequest {
            allegation_id: id.into(),
        }))
        .await
        .map(|r| r.into_inner())
}

async fn allegations_reach_the_director_and_never_the_accused(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let friday = hub.today();
    let teacher = hub.staff("school-1", "safety-team").await;
    let lead = hub.staff("school-1", "safeguarding-lead").await;
    let deputy = hub.staff("school-1", "safeguarding-deputy").await;
    let director = hub.staff("school-1", "director").await;
    let allegation = |key: &str, user: &str, name: &str| RecordAllegationRequest {
        idempotency_key: key.into(),
        accused_user_id: user.into(),
        accused_name: name.into(),
        allegation: "Оқушыға дауыс көтеріп, итеріп жіберді.".into(),
        happened_on: Some(to_calendar_date(friday)),
    };

    // Bad fields named, nothing stored.
    let bad = record(
        &teacher,
        allegation("allegation-01", "safeguarding-deputy", "Сәуле"),
    )
    .await
    .unwrap_err();
    assert_eq!(fields(&bad), ["accused_name"]);
    let bad = record(&teacher, allegation("allegation-01", "nobody-here", ""))
        .await
        .unwrap_err();
    assert_eq!(fields(&bad), ["accused_user_id"]);
    let bad = record(
        &teacher,
        RecordAllegationRequest {
            allegation: String::new(),
            happened_on: None,
            ..allegation("short", "", "")
        },
    )
    .await
    .unwrap_err();
    let mut named = fields(&bad);
    named.sort();
    assert_eq!(
        named,
        [
            "accused_user_id",
            "allegation",
            "happened_on",
            "idempotency_key"
        ]
    );
    assert_eq!(
        hub.agency_count("school-1", "safeguarding_allegations")
            .await,
        0
    );

    // Against the deputy: to the director, due within 1 working day (Friday → Monday's end).
    let against_deputy = record(
        &teacher,
        allegation("allegation-01", "safeguarding-deputy", ""),
    )
    .await
    .unwrap();
    assert_eq!(against_deputy.assigned_to_user_id, "director");
    assert_eq!(against_deputy.assigned_to_role, Role::SchoolDirector as i32);
    assert_eq!(against_deputy.accused_name, "Сәуле Қайратқызы Ибраева");
    assert_eq!(against_deputy.state, AllegationState::Recorded as i32);
    let id = against_deputy.allegation_id.clone();
    hub.settle().await;
    let due = one_of(
        &director.deadlines_about(&id).await,
        DeadlineKind::AllegationToDirector,
    );
    assert_eq!(due.responsible_user_id, "director");
    assert_eq!(
        due_at(&due),
        at(jiff::civil::date(2026, 11, 24), 0, 0),
        "due at the end of Monday"
    );
    assert!(
        matches!(state(&due), DeadlineState::Pending | DeadlineState::Warned),
        "open: {due:?}"
    );

    // The accused never sees it; only the director acknowledges it.
    assert!(allegations(&deputy).await.is_empty());
    assert_eq!(
        acknowledge(&deputy, &id).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        acknowledge(&lead, &id).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        acknowledge(&teacher, &id).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        allegations(&teacher).await,
        std::slice::from_ref(&against_deputy)
    );
    assert_eq!(
        allegations(&director).await,
        std::slice::from_ref(&against_deputy)
    );
    let received = acknowledge(&director, &id).await.unwrap();
    assert_eq!(received.state, AllegationState::Received as i32);
    assert!(received.received_at.is_some());
    let twice = acknowledge(&director, &id).await.unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition);
    assert_eq!(allegations(&director).await, [received]);
    hub.settle().await;
    assert_eq!(
        state(&one_of(
            &director.deadlines_about(&id).await,
            DeadlineKind::AllegationToDirector
        )),
        DeadlineState::Met
    );

    // Against the director (by name, as the directory spells it in another case): to the lead.
    let against_director = record(
        &teacher,
        allegation("allegation-02", "", "гүлнар серікқызы  ӘБЕНОВА"),
    )
    .await
    .unwrap();
    assert_eq!(against_director.assigned_to_user_id, "safeguarding-lead");
    assert_eq!(
        against_director.assigned_to_role,
        Role::SafeguardingLead as i32
    );
    let by_id = record(&deputy, allegation("allegation-03", "director", ""))
        .await
        .unwrap();
    assert_eq!(by_id.assigned_to_user_id, "safeguarding-lead");
    assert_eq!(
        allegations(&director).await.len(),
        1,
        "the director sees neither allegation against the director"
    );
    assert_eq!(
        acknowledge(&director, &by_id.allegation_id)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(allegations(&lead).await.len(), 2);
    let received = acknowledge(&lead, &by_id.allegation_id).await.unwrap();
    assert_eq!(received.state, AllegationState::Received as i32);
    // The stored rows hold what was asked, once each.
    assert_eq!(
        hub.agency_count("school-1", "safeguarding_allegations")
            .await,
        3
    );
    hub.shutdown().await;
}

/// Whether `alert` is addressed to `staff` (user `user_id` in `role`): the person it names, or,
/// naming nobody, the role it names, or the whole school.
fn addressed_to(alert: &DeadlineAlert, user_id: &str, role: Role) -> bool {
    if alert.addressed_to_user_id.is_empty() {
        alert.addressed_to_role == Role::Unspecified as i32
            || alert.addressed_to_role == role as i32
    } else {
        alert.addressed_to_user_id == user_id
    }
}

async fn an_allegation_against_the_director_never_reaches_the_director_as_a_deadline(
    backend: Backend,
) {
    let hub = TestHub::start(backend).await;
    let friday = hub.today();
    let teacher = hub.staff("school-1", "safety-team").await;
    let director = hub.staff("school-1", "director").await;
    let against = |key: &str, user: &str, on: Date| RecordAllegationRequest {
        idempotency_key: key.into(),
        accused_user_id: user.into(),
        accused_name: String::new(),
        allegation: "Оқушыға дауыс көтеріп, итеріп жіберді.".into(),
        happened_on: Some(to_calendar_date(on)),
    };
    let accused = record(&teacher, against("allegation-11", "director", friday))
        .await
        .unwrap();
    assert_eq!(accused.assigned_to_user_id, "safeguarding-lead");
    let id = accused.allegation_id.clone();
    hub.settle().await;
    // The director watches the school's deadlines (theirs and everyone's) from now on.
    let mut watch = director
        .client
        .clone()
        .watch_deadlines(director.req(WatchDeadlinesRequest::default()))
        .await
        .expect("watching")
        .into_inner();

    // Nobody acknowledges it: due by Monday's end, overdue, and escalated weeks later.
    let later = jiff::civil::date(2026, 12, 31);
    hub.clock.set(at(later, 10, 0));
    hub.settle().await;
    let lead = hub.staff("school-1", "safeguarding-lead").await;
    let director = hub.staff("school-1", "director").await;
    let teacher = hub.staff("school-1", "safety-team").await;

    // The lead is told of every state, and lists it.
    let to_lead = lead.alerts_about(&id).await;
    for s in [DeadlineState::Overdue, DeadlineState::Escalated] {
        assert!(
            to_lead.iter().any(|a| a.state == s as i32),
            "{s:?} to the lead: {to_lead:?}"
        );
    }
    assert!(
        to_lead
            .iter()
            .all(|a| a.addressed_to_user_id == "safeguarding-lead"),
        "{to_lead:?}"
    );
    let theirs = one_of(
        &lead.deadlines_about(&id).await,
        DeadlineKind::AllegationToDirector,
    );
    assert_eq!(state(&theirs), DeadlineState::Escalated);
    assert_eq!(theirs.responsible_user_id, "safeguarding-lead");

    // The director: no alert in the inbox, nothing in the school's list, the overdue list, or the
    // lead's list asked for by name.
    assert!(director.alerts_about(&id).await.is_empty());
    assert!(director.deadlines_about(&id).await.is_empty());
    let overdue = director
        .client
        .clone()
        .list_overdue(director.req(ListOverdueRequest {
            page_size: 500,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .deadlines;
    assert!(
        overdue.iter().all(|d| d.subject_reference != id),
        "{overdue:?}"
    );
    let leads_by_name = director
        .client
        .clone()
        .list_deadlines(director.req(ListDeadlinesRequest {
            responsible_user_id: "safeguarding-lead".into(),
            states: vec![DeadlineState::Escalated as i32],
            page_size: 500,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .deadlines;
    assert!(
        leads_by_name.iter().all(|d| d.subject_reference != id),
        "{leads_by_name:?}"
    );
    // A teacher sees no alert addressed to someone else: none of the lead's.
    assert!(teacher.alerts_about(&id).await.is_empty());
    for alert in teacher.deadline_alerts().await {
        assert!(
            addressed_to(&alert, "safety-team", Role::SafetyTeamMember),
            "{alert:?}"
        );
    }

    // An ordinary allegation (against the deputy) is the director's: its alerts are the first the
    // director's watch passes on, the lead's having been dropped.
    let ordinary = record(
        &teacher,
        against("allegation-12", "safeguarding-deputy", later),
    )
    .await
    .unwrap();
    assert_eq!(ordinary.assigned_to_user_id, "director");
    hub.settle().await;
    hub.clock.set(at(jiff::civil::date(2027, 2, 26), 10, 0));
    hub.settle().await;
    let mut watched = Vec::new();
    while !watched
        .iter()
        .any(|a: &DeadlineAlert| a.state == DeadlineState::Escalated as i32)
    {
        let alert = tokio::time::timeout(std::time::Duration::from_secs(30), watch.message())
            .await
            .expect("an alert arrives")
            .expect("the stream is healthy")
            .expect("an alert");
        watched.push(alert);
    }
    assert!(
        watched.iter().all(|a| a
            .deadline
            .as_ref()
            .is_some_and(|d| d.subject_reference == ordinary.allegation_id)),
        "{watched:?}"
    );
    let director = hub.staff("school-1", "director").await;
    assert!(
        director
            .alerts_about(&ordinary.allegation_id)
            .await
            .iter()
            .any(|a| a.state == DeadlineState::Escalated as i32),
        "the director is told of their own"
    );
    assert!(director.alerts_about(&id).await.is_empty());
    hub.shutdown().await;
}
