//! The school's incident reports D and monthly summary E (issue 5), each on SQLite and on
//! PostgreSQL, through the real school service over mTLS and the real gateway:
//!
//! * every bad field of D refused with `INVALID_ARGUMENT` naming it, and nothing stored;
//! * the investigation clocks (M:1588-1622) with the manual clock: an injury reported on the
//!   Friday before a Monday holiday, a report without injury the same day; impossible steps
//!   (finish before start, start twice, finish twice) refused and changing nothing;
//! * E equal to what the reports say, exported as CSV and XLSX (read back with calamine) with
//!   Kazakh and Russian headings, sent to the commission and received there with no child's
//!   name in it; the residential institution keeps D through the same service.

use std::io::Cursor;

use calamine::{Data, Reader as _, Xlsx, open_workbook_from_rs};
use jiff::{SignedDuration, Timestamp, civil::Date, tz::TimeZone};
use prost::Message as _;
use referral_core::{error::field_violations, validate::to_calendar_date};
use referral_proto::v1::{
    ExportFormat, ExportMonthlySummaryRequest, FormKind, GetIncidentRequest, GetMessageRequest,
    Incident, IncidentReport, IncidentRole, IncidentSummary, InjuredPerson, InvestigationState,
    InvestigationStepRequest, InvolvedChild, ListIncidentsRequest, MonthlySummaryRequest,
    ProblemBehaviour, RecordIncidentRequest, ReporterStatus, RiskTier, SendMonthlySummaryRequest,
    payload,
};
use referral_tests::{Backend, StaffClient, TestHub, both_backends};
use tonic::Code;

both_backends!(
    bad_reports_are_refused_and_the_clocks_run_on_working_days,
    the_monthly_summary_counts_the_reports_and_names_nobody,
);

/// Every child's name the reports use: none may reach the summary.
const CHILDREN: [&str; 5] = [
    "Ерасыл Қанатұлы",
    "Дәурен Серікұлы",
    "Айым Болатқызы",
    "Нұрсұлтан Асқарұлы",
    "Әлия Маратқызы",
];

fn almaty() -> TimeZone {
    TimeZone::get("Asia/Almaty").unwrap()
}

fn today(hub: &TestHub) -> Date {
    hub.clock.now().to_zoned(almaty()).date()
}

/// An instant at `hh:mm` local time in Almaty on `date`.
fn at(date: Date, hour: i8, minute: i8) -> Timestamp {
    date.at(hour, minute, 0, 0)
        .to_zoned(almaty())
        .unwrap()
        .timestamp()
}

fn child(name: &str, role: IncidentRole, tier: RiskTier) -> InvolvedChild {
    InvolvedChild {
        full_name: name.into(),
        role: role as i32,
        risk_tier: tier as i32,
        iin: String::new(),
    }
}

/// A fight with one injured pupil, reported by a teacher on `on`.
fn fight(on: Date) -> IncidentReport {
    IncidentReport {
        report_date: Some(to_calendar_date(on)),
        reporter_name: "Асель Маратқызы Нұрова".into(),
        reporter_status: ReporterStatus::Teacher as i32,
        incident_date: Some(to_calendar_date(on)),
        description: "Үзілісте дәлізде төбелес болды.".into(),
        behaviours: vec![ProblemBehaviour::FightOrPhysicalAggression as i32],
        behaviour_other: String::new(),
        anyone_harmed: true,
        number_harmed: 1,
        injured: vec![InjuredPerson {
            full_name: CHILDREN[0].into(),
            injuries: "мұрнынан қан кетті".into(),
        }],
        sent_for_medical_help: true,
        children: vec![
            child(CHILDREN[0], IncidentRole::Victim, RiskTier::AtRisk),
            child(CHILDREN[1], IncidentRole::Perpetrator, RiskTier::HighRisk),
        ],
        pupil_witnesses: vec![CHILDREN[2].into()],
        staff_witnesses: vec!["Гүлнар Серікқызы Әбенова".into()],
        repeated_behaviour: true,
        additional_information: String::new(),
    }
}

/// Name-calling without injury, reported by a parent on `on`.
fn teasing(on: Date) -> IncidentReport {
    IncidentReport {
        reporter_status: ReporterStatus::Parent as i32,
        reporter_name: "Сәуле Ахметова".into(),
        description: "Сыныптастары мазақтайды.".into(),
        behaviours: vec![
            ProblemBehaviour::NameCallingOrTeasing as i32,
            ProblemBehaviour::Other as i32,
        ],
        behaviour_other: "әлеуметтік желіде қорлау".into(),
        anyone_harmed: false,
        number_harmed: 0,
        injured: vec![],
        sent_for_medical_help: false,
        children: vec![
            child(CHILDREN[3], IncidentRole::Victim, RiskTier::NotAtRisk),
            child(CHILDREN[4], IncidentRole::Both, RiskTier::AtRisk),
            child(CHILDREN[2], IncidentRole::Witness, RiskTier::NotAtRisk),
        ],
        pupil_witnesses: vec![],
        repeated_behaviour: false,
        ..fight(on)
    }
}

async fn record(
    staff: &StaffClient,
    key: &str,
    report: IncidentReport,
    risk_of_injury: bool,
) -> Result<Incident, tonic::Status> {
    staff
        .school_incidents()
        .record_incident(staff.req(RecordIncidentRequest {
            idempotency_key: key.into(),
            incident: Some(report),
            risk_of_injury,
        }))
        .await
        .map(|r| r.into_inner())
}

async fn step(staff: &StaffClient, id: &str, finish: bool) -> Result<Incident, tonic::Status> {
    let request = staff.req(InvestigationStepRequest {
        incident_id: id.into(),
    });
    let mut client = staff.school_incidents();
    if finish {
        client.finish_investigation(request).await
    } else {
        client.start_investigation(request).await
    }
    .map(|r| r.into_inner())
}

async fn get(staff: &StaffClient, id: &str) -> Incident {
    staff
        .school_incidents()
        .get_incident(staff.req(GetIncidentRequest {
            incident_id: id.into(),
        }))
        .await
        .expect("the incident reads")
        .into_inner()
}

fn date(y: i16, m: i8, d: i8) -> Option<referral_proto::v1::CalendarDate> {
    Some(to_calendar_date(jiff::civil::date(y, m, d)))
}

async fn bad_reports_are_refused_and_the_clocks_run_on_working_days(backend: Backend) {
    let hub = TestHub::start(backend).await;
    // Friday 5 March 2027, 10:00 in Almaty; Monday 8 March is a holiday.
    let friday = jiff::civil::date(2027, 3, 5);
    hub.clock.set(at(friday, 10, 0));
    let staff = hub.staff("school-1", "safety-team").await;

    // Every bad field is refused, named, and nothing is stored.
    type Spoil = Box<dyn Fn(&mut IncidentReport)>;
    let tomorrow = friday.tomorrow().unwrap();
    let spoilers: Vec<(&str, Spoil)> = vec![
        ("incident.report_date", Box::new(|d| d.report_date = None)),
        (
            "incident.report_date",
            Box::new(move |d| d.report_date = Some(to_calendar_date(tomorrow))),
        ),
        (
            "incident.incident_date",
            Box::new(|d| {
                d.incident_date = Some(referral_proto::v1::CalendarDate {
                    year: 2027,
                    month: 2,
                    day: 30,
                })
            }),
        ),
        (
            "incident.incident_date",
            Box::new(|d| d.report_date = date(2027, 3, 1)),
        ),
        (
            "incident.reporter_name",
            Box::new(|d| d.reporter_name = "1".into()),
        ),
        (
            "incident.reporter_status",
            Box::new(|d| d.reporter_status = 0),
        ),
        ("incident.description", Box::new(|d| d.description.clear())),
        ("incident.behaviours", Box::new(|d| d.behaviours.clear())),
        (
            "incident.behaviours[1]",
            Box::new(|d| d.behaviours.push(42)),
        ),
        (
            "incident.behaviour_other",
            Box::new(|d| d.behaviours.push(ProblemBehaviour::Other as i32)),
        ),
        ("incident.number_harmed", Box::new(|d| d.number_harmed = 3)),
        (
            "incident.injured",
            Box::new(|d| {
                d.injured.clear();
                d.number_harmed = 0;
            }),
        ),
        (
            "incident.injured[0].injuries",
            Box::new(|d| d.injured[0].injuries = " ".into()),
        ),
        ("incident.children", Box::new(|d| d.children.clear())),
        (
            "incident.children[1].risk_tier",
            Box::new(|d| d.children[1].risk_tier = 0),
        ),
        (
            "incident.children[0].role",
            Box::new(|d| d.children[0].role = 0),
        ),
        (
            "incident.children[1].iin",
            Box::new(|d| d.children[1].iin = "000000000001".into()),
        ),
        (
            "incident.pupil_witnesses[0]",
            Box::new(|d| d.pupil_witnesses[0] = "a\nb".into()),
        ),
        (
            "incident.staff_witnesses[0]",
            Box::new(|d| d.staff_witnesses[0] = "x".repeat(201)),
        ),
        (
            "incident.additional_information",
            Box::new(|d| d.additional_information = "\u{202E}".into()),
        ),
    ];
    for (i, (field, spoil)) in spoilers.iter().enumerate() {
        let mut report = fight(friday);
        spoil(&mut report);
        let status = record(&staff, &format!("bad-report-{i}"), report, false)
            .await
            .expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        let fields: Vec<String> = field_violations(&status)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, vec![field.to_string()], "{field}");
        // The refusal names the field and never repeats what was sent.
        assert!(!status.message().contains(CHILDREN[0]));
    }
    let missing = record(&staff, "bad-report-none", IncidentReport::default(), false)
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert_eq!(hub.agency_count("school-1", "school_incidents").await, 0);

    // An injury on the Friday before the holiday: start the same day, finish by Wednesday.
    let injury = record(&staff, "injury-friday", fight(friday), false)
        .await
        .unwrap();
    assert!(injury.urgent);
    assert_eq!(injury.state, InvestigationState::NotStarted as i32);
    assert_eq!(injury.start_by, date(2027, 3, 5));
    assert_eq!(injury.finish_by, date(2027, 3, 10));
    assert!(!injury.start_overdue);
    // No injury and no risk of one: two working days to start (Tuesday, Wednesday), two to
    // finish.
    let quiet = record(&staff, "teasing-friday", teasing(friday), false)
        .await
        .unwrap();
    assert!(!quiet.urgent);
    assert_eq!(quiet.start_by, date(2027, 3, 10));
    assert_eq!(quiet.finish_by, date(2027, 3, 12));
    // The same teasing judged a risk of injury: the same day.
    let risky = record(&staff, "teasing-risk", teasing(friday), true)
        .await
        .unwrap();
    assert!(risky.urgent);
    assert_eq!(risky.start_by, date(2027, 3, 5));

    // Idempotent: the same key and report answer the same incident; another report, refused.
    let again = record(&staff, "injury-friday", fight(friday), false)
        .await
        .unwrap();
    assert_eq!(again.incident_id, injury.incident_id);
    let reused = record(&staff, "injury-friday", teasing(friday), false)
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists);
    assert_eq!(hub.agency_count("school-1", "school_incidents").await, 3);

    // Finishing before starting changes nothing.
    let early = step(&staff, &injury.incident_id, true).await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition);
    assert_eq!(
        get(&staff, &injury.incident_id).await.state,
        InvestigationState::NotStarted as i32
    );

    // Started at 11:00 on Friday; a second start is refused and keeps the first.
    hub.clock.set(at(friday, 11, 0));
    let started = step(&staff, &injury.incident_id, false).await.unwrap();
    assert_eq!(started.state, InvestigationState::InProgress as i32);
    assert_eq!(started.investigation_started_by, "Асель Маратқызы Нұрова");
    assert_eq!(started.finish_by, date(2027, 3, 10));
    hub.clock.set(at(friday, 12, 0));
    let twice = step(&staff, &injury.incident_id, false).await.unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition);
    assert_eq!(
        get(&staff, &injury.incident_id)
            .await
            .investigation_started_at,
        started.investigation_started_at
    );
    // An unknown incident.
    let unknown = step(&staff, "no-such-incident", false).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // Over the holiday weekend nothing is overdue; Thursday morning both are.
    hub.clock.set(at(jiff::civil::date(2027, 3, 9), 9, 0));
    let staff = hub.staff("school-1", "safety-team").await;
    let quiet_now = get(&staff, &quiet.incident_id).await;
    assert!(!quiet_now.start_overdue);
    assert!(!get(&staff, &injury.incident_id).await.finish_overdue);
    hub.clock.set(at(jiff::civil::date(2027, 3, 11), 9, 0));
    let staff = hub.staff("school-1", "safety-team").await;
    assert!(get(&staff, &quiet.incident_id).await.start_overdue);
    assert!(get(&staff, &injury.incident_id).await.finish_overdue);
    assert!(get(&staff, &risky.incident_id).await.start_overdue);

    // Finished late, once: the second finish is refused.
    let finished = step(&staff, &injury.incident_id, true).await.unwrap();
    assert_eq!(finished.state, InvestigationState::Finished as i32);
    assert!(!finished.finish_overdue);
    let twice = step(&staff, &injury.incident_id, true).await.unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition);
    assert_eq!(
        get(&staff, &injury.incident_id)
            .await
            .investigation_finished_at,
        finished.investigation_finished_at
    );

    // The residential institution keeps D through the same service.
    let institution = hub.staff("residential-1", "staff").await;
    let kept = record(&institution, "home-injury", fight(today(&hub)), false)
        .await
        .unwrap();
    assert_eq!(kept.start_by, Some(to_calendar_date(today(&hub))));
    // One agency's staff never reach another's incidents.
    let other = staff.with_token(hub.token("residential-1", "staff"));
    let foreign = other
        .school_incidents()
        .get_incident(other.req(GetIncidentRequest {
            incident_id: injury.incident_id.clone(),
        }))
        .await;
    assert!(foreign.is_err());

    hub.shutdown().await;
}

/// The fields of one CSV line (RFC 4180 quoting).
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().unwrap().push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

/// One cell of the first sheet, as text.
fn cell(range: &calamine::Range<Data>, row: usize, col: usize) -> String {
    match range.get((row, col)) {
        Some(Data::String(s)) => s.clone(),
        Some(Data::Float(f)) => f.to_string(),
        Some(Data::Int(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

async fn the_monthly_summary_counts_the_reports_and_names_nobody(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let staff = hub.staff("school-1", "safety-team").await;
    let november = |d| jiff::civil::date(2026, 11, d);

    // Three reports in November: two fights (one reported by a pupil) and one teasing.
    let first = record(&staff, "nov-fight-1", fight(november(2)), false)
        .await
        .unwrap();
    let mut by_pupil = fight(november(9));
    by_pupil.reporter_status = ReporterStatus::Pupil as i32;
    by_pupil.behaviours.push(ProblemBehaviour::Extortion as i32);
    record(&staff, "nov-fight-2", by_pupil, false)
        .await
        .unwrap();
    record(&staff, "nov-teasing", teasing(november(16)), false)
        .await
        .unwrap();
    // One in October, which November does not count.
    record(
        &staff,
        "oct-fight",
        fight(jiff::civil::date(2026, 10, 30)),
        false,
    )
    .await
    .unwrap();
    step(&staff, &first.incident_id, false).await.unwrap();
    step(&staff, &first.incident_id, true).await.unwrap();

    // The list, in pages.
    let page = |token: String| {
        let staff = &staff;
        async move {
            staff
                .school_incidents()
                .list_incidents(staff.req(ListIncidentsRequest {
                    year: 2026,
                    month: 11,
                    page_size: 2,
                    page_token: token,
                }))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let one = page(String::new()).await;
    assert_eq!(one.incidents.len(), 2);
    assert_eq!(one.incidents[0].incident_id, first.incident_id);
    let two = page(one.next_page_token.clone()).await;
    assert_eq!(two.incidents.len(), 1);
    assert!(two.next_page_token.is_empty());

    // E is what the reports say.
    let e: IncidentSummary = staff
        .school_incidents()
        .monthly_summary(staff.req(MonthlySummaryRequest {
            year: 2026,
            month: 11,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.school_name, "№1 жалпы білім беретін мектеп");
    assert_eq!(e.total_reports, 3);
    assert_eq!(
        (
            e.reported_by_pupils,
            e.reported_by_teachers,
            e.reported_by_staff,
            e.reported_by_parents,
            e.reported_by_others
        ),
        (1, 1, 0, 1, 0)
    );
    assert_eq!(e.forms_d_completed, 1);
    let behaviour = |b: ProblemBehaviour| {
        e.behaviours
            .iter()
            .find(|c| c.behaviour == b as i32)
            .map_or(0, |c| c.count)
    };
    assert_eq!(behaviour(ProblemBehaviour::FightOrPhysicalAggression), 2);
    assert_eq!(behaviour(ProblemBehaviour::Extortion), 1);
    assert_eq!(behaviour(ProblemBehaviour::NameCallingOrTeasing), 1);
    assert_eq!(behaviour(ProblemBehaviour::Other), 1);
    assert_eq!(behaviour(ProblemBehaviour::Lateness), 0);
    // Fights: a perpetrator, a victim, a named pupil witness each; teasing: a victim, one
    // who is both, a witness.
    assert_eq!((e.perpetrators, e.victims, e.witnesses), (3, 4, 3));
    assert_eq!(
        (
            e.children_not_at_risk,
            e.children_at_risk,
            e.children_high_risk
        ),
        (2, 3, 2)
    );
    assert_eq!(e.children_injured, 2);
    let e_text = format!("{e:?}");
    for name in CHILDREN {
        assert!(!e_text.contains(name));
    }

    // CSV: Kazakh headings, Russian headings, the counts.
    let export = |format: ExportFormat| {
        let staff = &staff;
        async move {
            staff
                .school_incidents()
                .export_monthly_summary(staff.req(ExportMonthlySummaryRequest {
                    year: 2026,
                    month: 11,
                    format: format as i32,
                }))
                .await
                .map(|r| r.into_inner())
        }
    };
    let csv = export(ExportFormat::Csv).await.unwrap();
    assert_eq!(csv.content_type, "text/csv; charset=utf-8");
    assert_eq!(csv.file_name, "incident-summary-school-1-2026-11.csv");
    let text = String::from_utf8(csv.content).unwrap();
    let lines: Vec<&str> = text.trim_start_matches('\u{FEFF}').lines().collect();
    assert_eq!(lines.len(), 3);
    let kk = split_csv(lines[0]);
    let ru = split_csv(lines[1]);
    let values = split_csv(lines[2]);
    assert_eq!(kk.len(), 31);
    assert_eq!(ru.len(), 31);
    assert_eq!(
        &kk[..3],
        [
            "Мектептің атауы",
            "Айы",
            "Хабарланған зорлық-зомбылық жағдайларының жалпы саны"
        ]
    );
    assert_eq!(&ru[..2], ["Наименование школы", "Месяц"]);
    assert!(ru.contains(&"Дети, получившие травмы в результате насилия".to_owned()));
    let column = |heading: &str| kk.iter().position(|h| *h == heading).unwrap();
    assert_eq!(values[1], "2026-11");
    assert_eq!(values[column("Төбелес/физикалық агрессия")], "2");
    assert_eq!(values[column("Бәлеқор балалар")], "3");
    assert_eq!(values[column("Тәуекел тобындағы бала")], "3");
    for name in CHILDREN {
        assert!(!text.contains(name));
    }

    // XLSX, read back with a spreadsheet reader.
    let xlsx = export(ExportFormat::Xlsx).await.unwrap();
    assert_eq!(xlsx.file_name, "incident-summary-school-1-2026-11.xlsx");
    let mut workbook: Xlsx<_> = open_workbook_from_rs(Cursor::new(xlsx.content)).unwrap();
    let range = workbook.worksheet_range_at(0).unwrap().unwrap();
    assert_eq!(cell(&range, 0, 0), "Мектептің атауы");
    assert_eq!(cell(&range, 1, 0), "Наименование школы");
    assert_eq!(cell(&range, 2, 0), "№1 жалпы білім беретін мектеп");
    for (col, heading) in kk.iter().enumerate() {
        assert_eq!(&cell(&range, 0, col), heading);
        assert_eq!(cell(&range, 1, col), ru[col]);
        if col >= 2 {
            assert_eq!(cell(&range, 2, col), values[col], "{heading}");
        }
    }
    assert_eq!(cell(&range, 2, 2), "3");
    let unknown = export(ExportFormat::Unspecified).await.unwrap_err();
    assert_eq!(unknown.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&unknown)[0].field, "format");

    // Not before the month has ended, not for a month to come.
    let send = |staff: StaffClient, year: i32, month: i32, key: &'static str| async move {
        staff
            .school_incidents()
            .send_monthly_summary(staff.req(SendMonthlySummaryRequest {
                year,
                month,
                idempotency_key: key.into(),
            }))
            .await
            .map(|r| r.into_inner().message_id)
    };
    let early = send(
        hub.staff("school-1", "director").await,
        2026,
        11,
        "e-2026-11",
    )
    .await
    .unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition);
    let future = send(
        hub.staff("school-1", "director").await,
        2026,
        12,
        "e-2026-12",
    )
    .await
    .unwrap_err();
    assert_eq!(future.code(), Code::InvalidArgument);

    // On 1 December the director sends November's E, once.
    hub.clock
        .set(at(jiff::civil::date(2026, 12, 1), 9, 0) + SignedDuration::from_mins(1));
    let director = hub.staff("school-1", "director").await;
    let id = send(
        director.with_token(director.token.clone()),
        2026,
        11,
        "e-2026-11",
    )
    .await
    .unwrap();
    let same = send(
        director.with_token(director.token.clone()),
        2026,
        11,
        "e-2026-11",
    )
    .await
    .unwrap();
    assert_eq!(same, id);
    let reused = send(
        director.with_token(director.token.clone()),
        2026,
        10,
        "e-2026-11",
    )
    .await
    .unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists);
    hub.delivered(&id).await;

    // The commission receives it: the same counts, no child's name anywhere in the message.
    let secretary = hub.staff("commission", "secretary").await;
    let inbox = secretary.inbox_of(FormKind::IncidentSummary).await;
    assert!(inbox.iter().any(|item| item.message_id == id));
    let received = secretary
        .client
        .clone()
        .get_message(secretary.req(GetMessageRequest {
            message_id: id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    let envelope = received.envelope.unwrap();
    assert_eq!(
        envelope.purpose_of_use,
        referral_proto::v1::PurposeOfUse::AggregateReporting as i32
    );
    let Some(payload::Form::IncidentSummary(got)) =
        envelope.payload.as_ref().and_then(|p| p.form.clone())
    else {
        panic!("an incident summary");
    };
    assert_eq!(got, e);
    let bytes = envelope.encode_to_vec();
    let whole = format!("{envelope:?}{}", String::from_utf8_lossy(&bytes));
    for name in CHILDREN {
        assert!(
            !whole.contains(name),
            "a child's name reached the commission"
        );
    }

    hub.shutdown().await;
}

/// Every field of the school's API has a sensitivity class (the gateway's own test walks the
/// forms and the case file).
#[test]
fn every_field_of_the_school_api_has_a_class() {
    let filter = referral_gateway::views::ViewFilter::new().unwrap();
    for root in [
        "referral.v1.RecordIncidentRequest",
        "referral.v1.Incident",
        "referral.v1.ListIncidentsRequest",
        "referral.v1.ListIncidentsResponse",
        "referral.v1.GetIncidentRequest",
        "referral.v1.InvestigationStepRequest",
        "referral.v1.MonthlySummaryRequest",
        "referral.v1.ExportMonthlySummaryRequest",
        "referral.v1.ExportedFile",
        "referral.v1.SendMonthlySummaryRequest",
        "referral.v1.SendMonthlySummaryResponse",
    ] {
        let missing = filter.unclassified_fields(root);
        assert!(
            missing.is_empty(),
            "{root}: fields without a class: {missing:?}"
        );
    }
}
