//! Acceptance tests of the commission's case lifecycle (issue 3): K, case opened, information
//! request answered, L filed, M with rows for other agencies who report back, review with
//! minutes, closure, reopening; stale changes refused; bad input changes nothing. Each on SQLite
//! and on PostgreSQL, through the real services and the real gateway.

use jiff::{ToSpan as _, civil::Date, tz::TimeZone};
use referral_proto::v1::{
    ActionProgressState, AnswerInformationRequestRequest, CaseFile, CaseStage, CloseCaseRequest,
    ClosureCriterion, Contact, ContactMethod, FileAssessmentRequest, FileSupportPlanRequest,
    FormKind, GetCaseRequest, PlanReview, RecordContactRequest, RecordReviewRequest,
    ReopenCaseRequest, ReportActionProgressRequest, RequestInformationRequest, ReviewDecision,
    RiskLevel, UploadDocumentChunk, UploadDocumentMetadata, upload_document_chunk,
};
use referral_tests::{
    Backend, StaffClient, TestHub, both_backends,
    samples::{cd, row, sample_assessment, sample_plan},
};
use tonic::Code;

fn almaty() -> TimeZone {
    TimeZone::get("Asia/Almaty").unwrap()
}

fn today(hub: &TestHub) -> Date {
    hub.clock.now().to_zoned(almaty()).date()
}

async fn get_case(curator: &StaffClient, case: &str) -> CaseFile {
    curator
        .case_files()
        .get_case(curator.req(GetCaseRequest {
            case_reference: case.into(),
            ..Default::default()
        }))
        .await
        .expect("the case file reads")
        .into_inner()
}

fn version(file: &CaseFile) -> u64 {
    file.summary.as_ref().unwrap().version
}

fn stage(file: &CaseFile) -> CaseStage {
    CaseStage::try_from(file.summary.as_ref().unwrap().stage).unwrap()
}

// Acceptance 1: the whole lifecycle through real services and the gateway.
async fn a_case_runs_from_help_request_to_closure_and_back(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let case = hub.open_case("life").await;
    let curator = hub.staff("commission", "curator-1").await;
    let file = get_case(&curator, &case).await;
    assert_eq!(stage(&file), CaseStage::Assessment);
    assert!(file.help_request.is_some(), "the K is in the case file");
    let mut v = version(&file);

    // Contact log and a scanned document (PDF, detected from its content).
    let changed = curator
        .case_files()
        .record_contact(curator.req(RecordContactRequest {
            case_reference: case.clone(),
            base_version: v,
            contact: Some(Contact {
                date: Some(cd(today(&hub))),
                made_by: "curator-1".into(),
                with_whom: "Анасы / мать".into(),
                method: ContactMethod::HomeVisit as i32,
                summary: "Үйге бару".into(),
            }),
        }))
        .await
        .expect("contact recorded")
        .into_inner();
    assert_eq!(changed.version, v + 1);
    let pdf = b"%PDF-1.4\n% a scanned order\n".repeat(5000);
    let chunks = vec![
        UploadDocumentChunk {
            part: Some(upload_document_chunk::Part::Metadata(
                UploadDocumentMetadata {
                    case_reference: case.clone(),
                    title: "Бұйрық / Приказ".into(),
                    file_name: "order.bin".into(),
                },
            )),
        },
        UploadDocumentChunk {
            part: Some(upload_document_chunk::Part::Data(pdf[..70_000].to_vec())),
        },
        UploadDocumentChunk {
            part: Some(upload_document_chunk::Part::Data(pdf[70_000..].to_vec())),
        },
    ];
    let doc = curator
        .case_files()
        .upload_document(curator.req(tokio_stream::iter(chunks)))
        .await
        .expect("a PDF is accepted")
        .into_inner();
    assert_eq!(doc.content_type, "application/pdf");
    assert_eq!(doc.size_bytes, pdf.len() as u64);
    // A text file named like a PDF is refused: the type comes from the content.
    let disguised = vec![
        UploadDocumentChunk {
            part: Some(upload_document_chunk::Part::Metadata(
                UploadDocumentMetadata {
                    case_reference: case.clone(),
                    title: "Not a scan".into(),
                    file_name: "scan.pdf".into(),
                },
            )),
        },
        UploadDocumentChunk {
            part: Some(upload_document_chunk::Part::Data(
                b"just some text".to_vec(),
            )),
        },
    ];
    let err = curator
        .case_files()
        .upload_document(curator.req(tokio_stream::iter(disguised)))
        .await
        .expect_err("the type is checked from the content");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(get_case(&curator, &case).await.documents.len(), 1);

    // Stage 2: information request to the health facility, answered and filed.
    let changed = curator
        .case_files()
        .request_information(curator.req(RequestInformationRequest {
            case_reference: case.clone(),
            base_version: get_case(&curator, &case).await.summary.unwrap().version,
            idempotency_key: "life-info-1".into(),
            recipient_agency_id: "health-1".into(),
            questions: "Бала емханаға жүгінді ме? / Обращался ли ребёнок?".into(),
            answer_by: Some(cd(today(&hub) + 7.days())),
        }))
        .await
        .expect("information requested")
        .into_inner();
    let _ = changed;
    hub.deliver_everything().await;
    let doctor = hub.staff("health-1", "doctor").await;
    let request = doctor
        .inbox_of(FormKind::InformationRequest)
        .await
        .into_iter()
        .next()
        .expect("the health facility receives the request");
    let answer = doctor
        .client
        .clone()
        .answer_information_request(doctor.req(AnswerInformationRequestRequest {
            message_id: request.message_id.clone(),
            idempotency_key: "life-info-answer".into(),
            answer: "Екі рет жүгінді, жарақат тіркелді".into(),
            responder_position: "Педиатр".into(),
        }))
        .await
        .expect("health answers")
        .into_inner();
    hub.delivered(&answer.response_message_id).await;
    let file = get_case(&curator, &case).await;
    let exchange = file
        .information
        .first()
        .expect("the exchange is in the case");
    assert_eq!(exchange.recipient_agency_id, "health-1");
    assert_eq!(
        exchange
            .response
            .as_ref()
            .expect("the answer is filed")
            .answer,
        "Екі рет жүгінді, жарақат тіркелді"
    );
    v = version(&file);

    // L filed.
    let changed = curator
        .case_files()
        .file_assessment(curator.req(FileAssessmentRequest {
            case_reference: case.clone(),
            base_version: v,
            assessment: Some(sample_assessment(today(&hub))),
            risk_level: RiskLevel::Medium as i32,
        }))
        .await
        .expect("L filed")
        .into_inner();
    assert_eq!(changed.stage, CaseStage::Planning as i32);
    v = changed.version;

    // M with rows for the NGO and the school, and one the commission keeps.
    let t = today(&hub);
    let changed = curator
        .case_files()
        .file_support_plan(curator.req(FileSupportPlanRequest {
            case_reference: case.clone(),
            base_version: v,
            idempotency_key: "life-plan".into(),
            plan: Some(sample_plan(
                t,
                vec![
                    row(1, t + 30.days(), "ngo-1"),
                    row(2, t + 20.days(), "school-1"),
                    row(3, t + 40.days(), "commission"),
                ],
            )),
            first_review_on: None,
        }))
        .await
        .expect("M filed")
        .into_inner();
    assert_eq!(changed.stage, CaseStage::Support as i32);
    hub.deliver_everything().await;
    let ngo = hub.staff("ngo-1", "case-manager").await;
    let school = hub.staff("school-1", "director").await;
    let ngo_rows = ngo.inbox_of(FormKind::ActionAssignment).await;
    let school_rows = school.inbox_of(FormKind::ActionAssignment).await;
    assert_eq!(ngo_rows.len(), 1, "the NGO receives its row");
    assert_eq!(school_rows.len(), 1, "the school receives its row");
    assert!(
        !ngo_rows[0].summary.contains("Нұрланова"),
        "an NGO's list never shows the child's full name"
    );

    // Both report completion (the NGO first reports progress).
    for (staff, item, states) in [
        (
            &ngo,
            &ngo_rows[0],
            vec![
                ActionProgressState::InProgress,
                ActionProgressState::Completed,
            ],
        ),
        (
            &school,
            &school_rows[0],
            vec![ActionProgressState::Completed],
        ),
    ] {
        for (i, state) in states.into_iter().enumerate() {
            let progress = staff
                .client
                .clone()
                .report_action_progress(staff.req(ReportActionProgressRequest {
                    message_id: item.message_id.clone(),
                    idempotency_key: format!("progress-{}-{i}", item.message_id),
                    state: state as i32,
                    note: "Орындалды / выполнено".into(),
                }))
                .await
                .expect("progress reported")
                .into_inner();
            hub.delivered(&progress.progress_message_id).await;
        }
    }
    let file = get_case(&curator, &case).await;
    let cycle = file.cycles.last().unwrap();
    let progress: Vec<i32> = cycle.actions.iter().map(|a| a.progress).collect();
    assert_eq!(
        progress
            .iter()
            .filter(|p| **p == ActionProgressState::Completed as i32)
            .count(),
        2,
        "the curator sees both rows completed: {progress:?}"
    );
    v = version(&file);

    // Review with minutes to both participating agencies.
    let changed = curator
        .case_files()
        .record_review(curator.req(RecordReviewRequest {
            case_reference: case.clone(),
            base_version: v,
            idempotency_key: "life-review-1".into(),
            review: Some(PlanReview {
                meeting_on: Some(cd(t)),
                participants: vec!["Дана Омарова".into(), "Ирина Ким".into()],
                decision: ReviewDecision::ContinueWithChanges as i32,
                revised_actions: vec![row(3, t + 60.days(), "commission")],
                next_review_on: Some(cd(t + 90.days())),
                signed_by: vec!["Дана Омарова".into()],
            }),
            participating_agency_ids: vec!["ngo-1".into(), "school-1".into()],
        }))
        .await
        .expect("review recorded")
        .into_inner();
    v = changed.version;
    hub.deliver_everything().await;
    assert_eq!(ngo.inbox_of(FormKind::ReviewMinutes).await.len(), 1);
    assert_eq!(school.inbox_of(FormKind::ReviewMinutes).await.len(), 1);

    // A last review ends support: it fixes no next review, and its event still reaches the
    // gateway's ledger (the engine then stops the review clock).
    let changed = curator
        .case_files()
        .record_review(curator.req(RecordReviewRequest {
            case_reference: case.clone(),
            base_version: v,
            idempotency_key: "life-review-2".into(),
            review: Some(PlanReview {
                meeting_on: Some(cd(t)),
                participants: vec!["Дана Омарова".into()],
                decision: ReviewDecision::EndSupport as i32,
                revised_actions: vec![],
                next_review_on: None,
                signed_by: vec!["Дана Омарова".into()],
            }),
            participating_agency_ids: vec![],
        }))
        .await
        .expect("a review ending support is recorded")
        .into_inner();
    v = changed.version;
    let reviews: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM ledger WHERE event = 'case.review_held' AND case_reference = $1",
    )
    .bind(&case)
    .fetch_one(hub.gateway().database().pool())
    .await
    .unwrap();
    assert_eq!(reviews, 2, "both reviews reached the deadline engine");

    // Closure, and an L refused on the closed case.
    let changed = curator
        .case_files()
        .close_case(curator.req(CloseCaseRequest {
            case_reference: case.clone(),
            base_version: v,
            criteria: vec![
                ClosureCriterion::RiskReduced as i32,
                ClosureCriterion::ParentsAbleToCare as i32,
            ],
            family_told_how_to_ask_again: "Анасына комиссия телефоны берілді".into(),
            note: String::new(),
        }))
        .await
        .expect("closed")
        .into_inner();
    assert_eq!(changed.stage, CaseStage::Closed as i32);
    v = changed.version;
    let refused = curator
        .case_files()
        .file_assessment(curator.req(FileAssessmentRequest {
            case_reference: case.clone(),
            base_version: v,
            assessment: Some(sample_assessment(today(&hub))),
            risk_level: RiskLevel::Low as i32,
        }))
        .await
        .expect_err("no L for a closed case");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        version(&get_case(&curator, &case).await),
        v,
        "nothing changed"
    );

    // Reopening: every stage again, history kept, clocks restarted.
    let changed = curator
        .case_files()
        .reopen_case(curator.req(ReopenCaseRequest {
            case_reference: case.clone(),
            base_version: v,
            reason: "Мектеп жаңа көгерген іздерді байқады".into(),
        }))
        .await
        .expect("reopened")
        .into_inner();
    assert_eq!(changed.stage, CaseStage::Assessment as i32);
    let file = get_case(&curator, &case).await;
    assert_eq!(file.cycles.len(), 2, "the first cycle is kept");
    assert!(file.cycles[0].assessment.is_some());
    assert!(file.cycles[0].closure.is_some());
    assert_eq!(file.summary.as_ref().unwrap().cycle, 2);
    hub.gateway().settle().await.unwrap();
    let open = hub.open_deadlines(&case).await;
    assert_eq!(
        open,
        vec![("DEADLINE_KIND_ASSESSMENT".to_string(), 2)],
        "after reopening only the new cycle's assessment clock runs"
    );
    hub.shutdown().await;
}

// Acceptance 5: a stale update answers ABORTED with the current version; no update is lost.
async fn a_stale_change_is_aborted_and_nothing_is_lost(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let case = hub.open_case("stale").await;
    let curator = hub.staff("commission", "curator-1").await;
    let secretary = hub.staff("commission", "secretary").await;
    let base = version(&get_case(&curator, &case).await);
    let contact = |who: &str| Contact {
        date: Some(cd(today(&hub))),
        made_by: who.into(),
        with_whom: "Сынып жетекшісі".into(),
        method: ContactMethod::Phone as i32,
        summary: format!("{who} called"),
    };
    secretary
        .case_files()
        .record_contact(secretary.req(RecordContactRequest {
            case_reference: case.clone(),
            base_version: base,
            contact: Some(contact("secretary")),
        }))
        .await
        .expect("the first change wins");
    let stale = curator
        .case_files()
        .record_contact(curator.req(RecordContactRequest {
            case_reference: case.clone(),
            base_version: base,
            contact: Some(contact("curator-1")),
        }))
        .await
        .expect_err("a change on an old version is refused");
    assert_eq!(stale.code(), Code::Aborted);
    assert!(
        stale.message().contains(&(base + 1).to_string()),
        "the answer names the current version: {}",
        stale.message()
    );
    let file = get_case(&curator, &case).await;
    assert_eq!(file.contacts.len(), 1);
    assert_eq!(version(&file), base + 1);
    curator
        .case_files()
        .record_contact(curator.req(RecordContactRequest {
            case_reference: case.clone(),
            base_version: base + 1,
            contact: Some(contact("curator-1")),
        }))
        .await
        .expect("the retry on the current version succeeds");
    let file = get_case(&curator, &case).await;
    let authors: Vec<&str> = file.contacts.iter().map(|c| c.made_by.as_str()).collect();
    assert_eq!(authors, ["secretary", "curator-1"], "both changes kept");
    hub.shutdown().await;
}

// Bad input: each answers with the field or the precondition named, and changes nothing.
async fn bad_case_changes_are_refused_and_change_nothing(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let case = hub.open_case("bad").await;
    let curator = hub.staff("commission", "curator-1").await;
    let v = version(&get_case(&curator, &case).await);
    let t = today(&hub);
    let filed = curator
        .case_files()
        .file_assessment(curator.req(FileAssessmentRequest {
            case_reference: case.clone(),
            base_version: v,
            assessment: Some(sample_assessment(t)),
            risk_level: RiskLevel::High as i32,
        }))
        .await
        .unwrap()
        .into_inner();
    let v = filed.version;

    // An action row without a responsible agency.
    let err = curator
        .case_files()
        .file_support_plan(curator.req(FileSupportPlanRequest {
            case_reference: case.clone(),
            base_version: v,
            idempotency_key: "bad-plan-1".into(),
            plan: Some(sample_plan(t, vec![row(1, t + 10.days(), "")])),
            first_review_on: None,
        }))
        .await
        .expect_err("a row needs its agency");
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = referral_core::error::field_violations(&err)
        .into_iter()
        .map(|f| f.field)
        .collect();
    assert!(
        fields
            .iter()
            .any(|f| f.contains("actions[0].responsible_agency_id")),
        "{fields:?}"
    );
    // A first review more than 6 months ahead.
    let err = curator
        .case_files()
        .file_support_plan(curator.req(FileSupportPlanRequest {
            case_reference: case.clone(),
            base_version: v,
            idempotency_key: "bad-plan-2".into(),
            plan: Some(sample_plan(t, vec![row(1, t + 10.days(), "ngo-1")])),
            first_review_on: Some(cd(t + 7.months())),
        }))
        .await
        .expect_err("a review more than 6 months ahead");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        referral_core::error::field_violations(&err)
            .iter()
            .any(|f| f.field.contains("first_review_on"))
    );
    // A closure without criteria.
    let err = curator
        .case_files()
        .close_case(curator.req(CloseCaseRequest {
            case_reference: case.clone(),
            base_version: v,
            criteria: vec![],
            family_told_how_to_ask_again: "Телефон берілді".into(),
            note: String::new(),
        }))
        .await
        .expect_err("closure needs criteria");
    assert_eq!(err.code(), Code::InvalidArgument);
    let file = get_case(&curator, &case).await;
    assert_eq!(version(&file), v, "nothing changed");
    assert_eq!(stage(&file), CaseStage::Planning);
    assert!(
        hub.messages_to("ngo-1").await.is_empty(),
        "no assignment went out"
    );
    // Another curator cannot touch this curator's case.
    let other = hub.staff("commission", "curator-2").await;
    let err = other
        .case_files()
        .record_contact(other.req(RecordContactRequest {
            case_reference: case.clone(),
            base_version: v,
            contact: Some(Contact {
                date: Some(cd(t)),
                made_by: "curator-2".into(),
                with_whom: "x".into(),
                method: ContactMethod::Phone as i32,
                summary: "x".into(),
            }),
        }))
        .await
        .expect_err("not this curator's case");
    assert_eq!(err.code(), Code::PermissionDenied);
    hub.shutdown().await;
}

both_backends!(
    a_case_runs_from_help_request_to_closure_and_back,
    a_stale_change_is_aborted_and_nothing_is_lost,
    bad_case_changes_are_refused_and_change_nothing,
);
