//! How the case file and the messages of a case's life read: the commission's case (`case`), the
//! messages partner agencies receive and send (information requests and answers, action
//! assignments and progress, review minutes, deadline alerts), and deadlines, each with the
//! Kazakh and Russian labels of `referral_commission::labels` (and of this module for deadlines),
//! and in JSON for `--json`.
//!
//! The case file holds a child's personal data; only commission staff get it (the service
//! decides), and only `case` and `show` print it.

use jiff::{SignedDuration, Timestamp, civil::Date, tz::TimeZone};
use referral_commission::labels::{self, Label};
use referral_proto::v1::{
    ActionAssignment, ActionProgress, ActionProgressState, ActionStatus, CaseCycle, CaseFile,
    CaseStage, CaseView, ClosureCriterion, ClosureRecord, ContactMethod, Deadline, DeadlineAlert,
    DeadlineKind, DeadlineState, DocumentInfo, InformationExchange, InformationRequest,
    InformationResponse, PlanAction, PlanReview, ReviewDecision, ReviewMinutes, RiskLevel,
    Sensitivity, payload::Form,
};
use serde_json::{Value, json};

use crate::{
    form_case::{ActionFile, AssessmentFile, ReviewFile, SupportPlanFile},
    output::{Fields, Table, enum_name, instant, json_time, local_time},
    view,
};

// ---------------------------------------------------------------------------------------------
// Labels.
// ---------------------------------------------------------------------------------------------

/// `name — kk / ru`.
fn bilingual(name: &str, label: Label) -> String {
    format!("{name} — {} / {}", label.kk, label.ru)
}

pub fn stage_name(stage: i32) -> String {
    enum_name(
        CaseStage::try_from(stage)
            .unwrap_or(CaseStage::Unspecified)
            .as_str_name(),
        "CASE_STAGE_",
    )
}

/// `support — Қолдау / Поддержка`.
pub fn stage_text(stage: i32) -> String {
    let s = CaseStage::try_from(stage).unwrap_or(CaseStage::Unspecified);
    bilingual(&stage_name(stage), labels::stage(s))
}

pub fn risk_name(level: i32) -> String {
    enum_name(
        RiskLevel::try_from(level)
            .unwrap_or(RiskLevel::Unspecified)
            .as_str_name(),
        "RISK_LEVEL_",
    )
}

pub fn risk_text(level: i32) -> String {
    let l = RiskLevel::try_from(level).unwrap_or(RiskLevel::Unspecified);
    bilingual(&risk_name(level), labels::risk_level(l))
}

pub fn progress_name(state: i32) -> String {
    match ActionProgressState::try_from(state).unwrap_or(ActionProgressState::Unspecified) {
        ActionProgressState::Unspecified => "not_reported".into(),
        s => enum_name(s.as_str_name(), "ACTION_PROGRESS_STATE_"),
    }
}

pub fn progress_text(state: i32) -> String {
    let s = ActionProgressState::try_from(state).unwrap_or(ActionProgressState::Unspecified);
    bilingual(&progress_name(state), labels::action_progress(s))
}

pub fn method_name(method: i32) -> String {
    enum_name(
        ContactMethod::try_from(method)
            .unwrap_or(ContactMethod::Unspecified)
            .as_str_name(),
        "CONTACT_METHOD_",
    )
}

pub fn method_text(method: i32) -> String {
    let m = ContactMethod::try_from(method).unwrap_or(ContactMethod::Unspecified);
    bilingual(&method_name(method), labels::contact_method(m))
}

pub fn criterion_name(criterion: i32) -> String {
    enum_name(
        ClosureCriterion::try_from(criterion)
            .unwrap_or(ClosureCriterion::Unspecified)
            .as_str_name(),
        "CLOSURE_CRITERION_",
    )
}

pub fn criterion_text(criterion: i32) -> String {
    let c = ClosureCriterion::try_from(criterion).unwrap_or(ClosureCriterion::Unspecified);
    bilingual(&criterion_name(criterion), labels::closure_criterion(c))
}

pub fn review_decision_name(decision: i32) -> String {
    enum_name(
        ReviewDecision::try_from(decision)
            .unwrap_or(ReviewDecision::Unspecified)
            .as_str_name(),
        "REVIEW_DECISION_",
    )
}

pub fn review_decision_text(decision: i32) -> String {
    let d = ReviewDecision::try_from(decision).unwrap_or(ReviewDecision::Unspecified);
    bilingual(&review_decision_name(decision), labels::review_decision(d))
}

/// The kind of a deadline in both languages.
pub fn deadline_kind_label(kind: i32) -> Label {
    match DeadlineKind::try_from(kind).unwrap_or(DeadlineKind::Unspecified) {
        DeadlineKind::HelpRequestDecision => Label {
            kk: "Көмек сұрауы (K) бойынша шешім",
            ru: "Решение по запросу о помощи (K)",
        },
        DeadlineKind::Assessment => Label {
            kk: "Кешенді бағалау (L)",
            ru: "Комплексная оценка (L)",
        },
        DeadlineKind::SupportPlan => Label {
            kk: "Жеке қолдау жоспары (M)",
            ru: "Индивидуальный план поддержки (M)",
        },
        DeadlineKind::PlanReview => Label {
            kk: "Жоспарды қайта қарау",
            ru: "Пересмотр плана",
        },
        DeadlineKind::Action => Label {
            kk: "Жоспардың іс-шарасы",
            ru: "Мероприятие плана",
        },
        DeadlineKind::InvestigationStart => Label {
            kk: "Оқиғаны тексеруді бастау",
            ru: "Начало расследования инцидента",
        },
        DeadlineKind::InvestigationFinish => Label {
            kk: "Оқиғаны тексеруді аяқтау",
            ru: "Завершение расследования инцидента",
        },
        DeadlineKind::WrittenConfirmation => Label {
            kk: "Телефон арқылы хабарламаны 24 сағат ішінде жазбаша жіберу",
            ru: "Письменное подтверждение телефонного сообщения в течение 24 часов",
        },
        DeadlineKind::ProtectionServiceAnswer => Label {
            kk: "Балаларды қорғау қызметінің жауабы (3 жұмыс күні)",
            ru: "Ответ службы защиты детей (3 рабочих дня)",
        },
        DeadlineKind::AllegationToDirector => Label {
            kk: "Қызметкерге қарсы айып директорға (1 жұмыс күні)",
            ru: "Обвинение против сотрудника директору (1 рабочий день)",
        },
        DeadlineKind::WeeklyProgress => Label {
            kk: "Апта сайынғы есеп",
            ru: "Еженедельный отчёт",
        },
        DeadlineKind::Unspecified => Label {
            kk: "Көрсетілмеген",
            ru: "Не указано",
        },
    }
}

pub fn deadline_kind_name(kind: i32) -> String {
    enum_name(
        DeadlineKind::try_from(kind)
            .unwrap_or(DeadlineKind::Unspecified)
            .as_str_name(),
        "DEADLINE_KIND_",
    )
}

/// `action №2 — Жоспардың іс-шарасы / Мероприятие плана`.
pub fn deadline_kind_text(kind: i32, action_number: u32) -> String {
    let mut name = deadline_kind_name(kind);
    if kind == DeadlineKind::Action as i32 && action_number > 0 {
        name = format!("{name} №{action_number}");
    }
    bilingual(&name, deadline_kind_label(kind))
}

pub fn deadline_state_label(state: i32) -> Label {
    let (kk, ru) = match DeadlineState::try_from(state).unwrap_or(DeadlineState::Unspecified) {
        DeadlineState::Pending => ("Күтілуде", "Ожидается"),
        DeadlineState::Warned => ("Мерзімі жақындады", "Срок приближается"),
        DeadlineState::Due => ("Мерзімі бүгін", "Срок сегодня"),
        DeadlineState::Overdue => ("Мерзімі өтті", "Просрочено"),
        DeadlineState::Escalated => ("Төрағаға жеткізілді", "Доведено до председателя"),
        DeadlineState::Met => ("Орындалды", "Выполнено"),
        DeadlineState::Cancelled => ("Күші жойылды", "Отменено"),
        DeadlineState::Unspecified => ("Көрсетілмеген", "Не указано"),
    };
    Label { kk, ru }
}

pub fn deadline_state_name(state: i32) -> String {
    enum_name(
        DeadlineState::try_from(state)
            .unwrap_or(DeadlineState::Unspecified)
            .as_str_name(),
        "DEADLINE_STATE_",
    )
}

pub fn deadline_state_text(state: i32) -> String {
    bilingual(&deadline_state_name(state), deadline_state_label(state))
}

/// A section (sensitivity class) of a form or case file in both languages.
pub fn section_label(section: i32) -> Label {
    let (kk, ru) = match Sensitivity::try_from(section).unwrap_or(Sensitivity::Unspecified) {
        Sensitivity::CaseStatus => ("Істің жағдайы", "Состояние дела"),
        Sensitivity::Contact => ("Қызметкерлердің байланысы", "Контакты сотрудников"),
        Sensitivity::ChildBasic => ("Баланың аты мен жасы", "Имя и возраст ребёнка"),
        Sensitivity::ChildIdentity => ("Баланың жеке басы", "Личность ребёнка"),
        Sensitivity::Family => ("Отбасы", "Семья"),
        Sensitivity::Concern => ("Хабарланған мәселе", "Сообщённая проблема"),
        Sensitivity::Incident => ("Оқиға", "Инцидент"),
        Sensitivity::Health => ("Денсаулық", "Здоровье"),
        Sensitivity::Assessment => ("Кешенді бағалау (L)", "Комплексная оценка (L)"),
        Sensitivity::Plan => (
            "Жеке қолдау жоспары (M)",
            "Индивидуальный план поддержки (M)",
        ),
        Sensitivity::AssignedWork => ("Тапсырылған жұмыс", "Порученная работа"),
        Sensitivity::CaseRecord => ("Іс материалдары", "Материалы дела"),
        Sensitivity::Unspecified => ("Көрсетілмеген", "Не указано"),
    };
    Label { kk, ru }
}

/// `assessment`, the name `grant --section` takes.
pub fn section_name(section: i32) -> String {
    Sensitivity::try_from(section)
        .map(|s| enum_name(s.as_str_name(), "SENSITIVITY_"))
        .unwrap_or_else(|_| format!("unknown ({section})"))
}

/// `assessment — Кешенді бағалау (L) / Комплексная оценка (L)`.
pub fn section_text(section: i32) -> String {
    bilingual(&section_name(section), section_label(section))
}

/// The sections of a received message the gateway let through, for `show`.
pub fn sections_let_through(sections: &[i32]) -> String {
    if sections_short(sections) == "all" {
        "every section (nothing was removed)".to_owned()
    } else {
        format!(
            "{} (fields of other sections were removed before delivery)",
            section_names(sections)
        )
    }
}

/// Section names for a listing: `all`, or comma separated (`case_status, contact`).
pub fn sections_short(sections: &[i32]) -> String {
    let every = (1..)
        .map_while(|i| Sensitivity::try_from(i).ok())
        .all(|s| sections.contains(&(s as i32)));
    if every {
        "all".to_owned()
    } else {
        section_names(sections)
    }
}

/// Section names, comma separated: `case_status, contact`.
pub fn section_names(sections: &[i32]) -> String {
    sections
        .iter()
        .map(|s| section_name(*s))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// Small pieces.
// ---------------------------------------------------------------------------------------------

fn date_text(d: Option<&referral_proto::v1::CalendarDate>) -> String {
    d.and_then(referral_core::validate::calendar_date)
        .map(|d| d.to_string())
        .unwrap_or_default()
}

fn date_json(d: Option<&referral_proto::v1::CalendarDate>) -> Value {
    d.and_then(referral_core::validate::calendar_date)
        .map_or(Value::Null, |d| json!(d.to_string()))
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines()
        .map(|line| format!("{pad}{line}").trim_end().to_owned() + "\n")
        .collect()
}

/// `ngo-1 (Ирина Ким)`, or either part alone.
fn responsible(agency: &str, person: &str) -> String {
    match (agency.is_empty(), person.is_empty()) {
        (false, false) => format!("{agency} ({person})"),
        (false, true) => agency.to_owned(),
        _ => person.to_owned(),
    }
}

fn size_text(bytes: u64) -> String {
    if bytes >= 1024 * 1024 {
        format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
    } else if bytes >= 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// An action row as JSON, in the shape of the forms' files plus what its agency reported.
fn action_status_json(a: &ActionStatus) -> Value {
    let mut value = serde_json::to_value(ActionFile::from_proto(
        &a.action.clone().unwrap_or_default(),
    ))
    .unwrap_or(Value::Null);
    value["assignment_message_id"] = json!(a.assignment_message_id);
    value["progress"] = json!(progress_name(a.progress));
    value["last_note"] = json!(a.last_note);
    value["last_reported_at"] = json_time(a.last_reported_at.as_ref());
    value
}

/// The action rows with what their agencies reported; `commission` carries out its own rows,
/// which nobody reports on.
fn actions_table(rows: &[ActionStatus], commission: &str, tz: &TimeZone) -> String {
    let mut table = Table::new([
        "№",
        "ACTION",
        "DUE",
        "RESPONSIBLE",
        "PROGRESS",
        "LAST REPORT",
    ]);
    for status in rows {
        let a = status.action.clone().unwrap_or_default();
        let report = match (
            status.last_reported_at.as_ref(),
            status.last_note.is_empty(),
        ) {
            (None, _) => String::new(),
            (Some(at), true) => local_time(Some(at), tz),
            (Some(at), false) => format!("{}: {}", local_time(Some(at), tz), status.last_note),
        };
        table.row([
            a.number.to_string(),
            a.action.clone(),
            date_text(a.due_on.as_ref()),
            responsible(&a.responsible_agency_id, &a.responsible_person),
            if !commission.is_empty()
                && a.responsible_agency_id == commission
                && status.progress == ActionProgressState::Unspecified as i32
            {
                "the commission's own row".to_owned()
            } else {
                progress_text(status.progress)
            },
            report,
        ]);
    }
    table.render()
}

fn plan_rows_table(rows: &[PlanAction]) -> String {
    let mut table = Table::new(["№", "ACTION", "DUE", "RESPONSIBLE", "HOW"]);
    for a in rows {
        table.row([
            a.number.to_string(),
            a.action.clone(),
            date_text(a.due_on.as_ref()),
            responsible(&a.responsible_agency_id, &a.responsible_person),
            a.method.clone(),
        ]);
    }
    table.render()
}

fn add_closure(fields: &mut Fields, c: &ClosureRecord, tz: &TimeZone) {
    fields.add(
        "Closed",
        format!(
            "{} by {}",
            local_time(c.closed_at.as_ref(), tz),
            c.closed_by
        ),
    );
    let criteria: Vec<String> = c.criteria.iter().map(|k| criterion_text(*k)).collect();
    fields.add("Closure criteria", criteria.join("\n"));
    fields.add("Family told", &c.family_told_how_to_ask_again);
    if !c.note.is_empty() {
        fields.add("Note", &c.note);
    }
}

fn closure_json(c: &ClosureRecord) -> Value {
    json!({
        "criteria": c.criteria.iter().map(|k| criterion_name(*k)).collect::<Vec<_>>(),
        "family_told_how_to_ask_again": c.family_told_how_to_ask_again,
        "note": c.note,
        "closed_at": json_time(c.closed_at.as_ref()),
        "closed_by": c.closed_by,
    })
}

fn review_line(r: &PlanReview) -> String {
    let next = date_text(r.next_review_on.as_ref());
    let next = if next.is_empty() {
        String::new()
    } else {
        format!(", next review {next}")
    };
    format!(
        "{}: {}{next}",
        date_text(r.meeting_on.as_ref()),
        review_decision_text(r.decision)
    )
}

// ---------------------------------------------------------------------------------------------
// The case file.
// ---------------------------------------------------------------------------------------------

/// What of a cycle exists but was not shown to the reader. Best effort: a filtered case file
/// does not list what was removed, so a form counts as withheld when the cycle says it was filed
/// (its filing time, which is case status and shown to whoever sees the cycle at all) and the
/// form itself is absent. (The case's stage says the same for the current cycle only, and a
/// stage without a filing time is inconsistent data rather than a withheld form.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CycleWithheld {
    pub assessment: bool,
    pub support_plan: bool,
}

impl CycleWithheld {
    pub fn of(cycle: &CaseCycle) -> Self {
        Self {
            assessment: cycle.assessment_filed_at.is_some() && cycle.assessment.is_none(),
            support_plan: cycle.support_plan_filed_at.is_some() && cycle.support_plan.is_none(),
        }
    }
}

/// The withheld parts of every cycle, oldest first.
pub fn withheld_of(file: &CaseFile) -> Vec<CycleWithheld> {
    file.cycles.iter().map(CycleWithheld::of).collect()
}

/// One line saying which forms the commission's policy kept from the reader, if any.
pub fn withheld_note(file: &CaseFile) -> Option<String> {
    let withheld = withheld_of(file);
    let several = file.cycles.len() > 1;
    let mut parts = Vec::new();
    for (form, pick) in [
        (
            "the assessment L",
            (|w: &CycleWithheld| w.assessment) as fn(&CycleWithheld) -> bool,
        ),
        ("the support plan M", |w: &CycleWithheld| w.support_plan),
    ] {
        let cycles: Vec<String> = file
            .cycles
            .iter()
            .zip(&withheld)
            .filter(|(_, w)| pick(w))
            .map(|(c, _)| c.cycle.to_string())
            .collect();
        if cycles.is_empty() {
            continue;
        }
        parts.push(if several {
            format!("{form} (cycle {})", cycles.join(", "))
        } else {
            form.to_owned()
        });
    }
    if parts.is_empty() {
        return None;
    }
    Some(format!(
        "Need to know: the commission's policy withheld {} from you (filed, not shown); what is \
         missing of the contact log, documents and answers below may be withheld too.",
        parts.join(" and ")
    ))
}

/// The summary of a case: reference, child, stage, curator and their contact, next review.
fn summary_fields(file: &CaseFile, tz: &TimeZone) -> Fields {
    let s = file.summary.clone().unwrap_or_default();
    let mut fields = Fields::new();
    fields.add("Case", &s.case_reference);
    if !s.child_full_name.is_empty() {
        fields.add("Child", &s.child_full_name);
    }
    fields.add("Stage", stage_text(s.stage));
    if !s.curator_user_id.is_empty() || !s.curator_name.is_empty() {
        let mut curator = format!("{} ({})", s.curator_name, s.curator_user_id);
        if !s.curator_contact.is_empty() {
            curator.push_str(&format!(", {}", s.curator_contact));
        }
        fields.add("Curator", curator);
    }
    let next_review = date_text(s.next_review_on.as_ref());
    if !next_review.is_empty() {
        fields.add("Next review", next_review);
    }
    fields.add("Opened", local_time(s.opened_at.as_ref(), tz));
    if s.risk_level != RiskLevel::Unspecified as i32 {
        fields.add("Risk", risk_text(s.risk_level));
    }
    fields
}

/// One cycle: its L, M, reviews, closure and the action rows in force.
fn cycle_text(
    cycle: &CaseCycle,
    withheld: CycleWithheld,
    commission: &str,
    tz: &TimeZone,
) -> String {
    let mut out = format!(
        "\nCycle {}, opened {}\n",
        cycle.cycle,
        local_time(cycle.opened_at.as_ref(), tz)
    );
    let filed_withheld = |at: Option<&prost_types::Timestamp>| {
        let at = local_time(at, tz);
        if at.is_empty() {
            "filed; withheld from you (need to know)".to_owned()
        } else {
            format!("filed {at}; withheld from you (need to know)")
        }
    };
    let mut fields = Fields::new();
    if !cycle.reopen_reason.is_empty() {
        fields.add("Reopened because", &cycle.reopen_reason);
    }
    match &cycle.assessment {
        Some(l) => fields.add(
            "Assessment L",
            format!(
                "filed {}, risk {}; assessed on {} by {}",
                local_time(cycle.assessment_filed_at.as_ref(), tz),
                risk_text(cycle.risk_level),
                date_text(l.assessed_on.as_ref()),
                l.responsible_person
            ),
        ),
        None if withheld.assessment => fields.add(
            "Assessment L",
            filed_withheld(cycle.assessment_filed_at.as_ref()),
        ),
        None => fields.add("Assessment L", "not filed yet"),
    };
    match &cycle.support_plan {
        Some(m) => {
            fields.add(
                "Support plan M",
                format!(
                    "filed {}, {} needs, {} action rows",
                    local_time(cycle.support_plan_filed_at.as_ref(), tz),
                    m.needs.len(),
                    m.actions.len()
                ),
            );
            if !m.reviews.is_empty() {
                let reviews: Vec<String> = m.reviews.iter().map(review_line).collect();
                fields.add("Reviews", reviews.join("\n"));
            }
        }
        None if withheld.support_plan => {
            fields.add(
                "Support plan M",
                filed_withheld(cycle.support_plan_filed_at.as_ref()),
            );
        }
        None => {
            fields.add("Support plan M", "not filed yet");
        }
    }
    match &cycle.closure {
        Some(c) => add_closure(&mut fields, c, tz),
        None => {
            fields.add("Closed", "no");
        }
    }
    out.push_str(&fields.render(2));
    if !cycle.actions.is_empty() {
        out.push_str("  Action rows in force:\n");
        out.push_str(&indent(&actions_table(&cycle.actions, commission, tz), 4));
    }
    out
}

/// Contacts, documents and information exchanges; `empty` says what an empty list means.
fn record_text(file: &CaseFile, tz: &TimeZone, empty: &str) -> String {
    let mut out = String::new();
    out.push_str("\nContacts\n");
    if file.contacts.is_empty() {
        out.push_str(&format!("  {empty}\n"));
    } else {
        let mut table = Table::new(["DATE", "BY", "WITH", "HOW", "SUMMARY"]);
        for c in &file.contacts {
            table.row([
                date_text(c.date.as_ref()),
                c.made_by.clone(),
                c.with_whom.clone(),
                method_text(c.method),
                c.summary.clone(),
            ]);
        }
        out.push_str(&indent(&table.render(), 2));
    }

    out.push_str("\nDocuments\n");
    if file.documents.is_empty() {
        out.push_str(&format!("  {empty}\n"));
    } else {
        out.push_str(&indent(&documents_table(&file.documents, tz), 2));
    }

    out.push_str("\nInformation exchanges\n");
    if file.information.is_empty() {
        out.push_str(&format!("  {empty}\n"));
    }
    for x in &file.information {
        out.push_str(&indent(&exchange_text(x, tz), 2));
    }
    out
}

/// The commission that keeps the case: the help request's recipient.
fn commission_of(file: &CaseFile) -> &str {
    file.help_request
        .as_ref()
        .map_or("", |k| k.recipient_agency_id.as_str())
}

/// The case file for people: summary, every cycle with its L, M, reviews, rows and closure, then
/// contacts, documents and information exchanges. `hint` starts suggested commands. When the
/// commission's policy withheld L or M from the reader (a secretary, the chair), a line says so.
pub fn case_text(file: &CaseFile, tz: &TimeZone, hint: &str) -> String {
    let s = file.summary.clone().unwrap_or_default();
    let commission = commission_of(file);
    let mut out = String::new();
    let mut fields = summary_fields(file, tz);
    fields
        .add(
            "Version",
            format!(
                "{} (the next change takes --base-version {})",
                s.version, s.version
            ),
        )
        .add("Cycle", s.cycle.to_string());
    if let Some(k) = &file.help_request {
        fields.add(
            "Help request K",
            format!(
                "{} from {} (read it with: {hint} show {})",
                k.message_id, k.sender_agency_id, k.message_id
            ),
        );
    }
    out.push_str(&fields.render(0));
    let note = withheld_note(file);
    if let Some(note) = &note {
        out.push('\n');
        out.push_str(note);
        out.push('\n');
        out.push_str(&format!(
            "The case's curator sees them; the chair may open the whole file with '{hint} case {} \
             --break-the-glass \"<reason>\"', which is recorded and alerts the curator.\n",
            s.case_reference
        ));
    }

    for (cycle, withheld) in file.cycles.iter().zip(withheld_of(file)) {
        out.push_str(&cycle_text(cycle, withheld, commission, tz));
    }
    let empty = if note.is_some() {
        "none shown to you"
    } else {
        "none recorded"
    };
    out.push_str(&record_text(file, tz, empty));
    out
}

/// A case read through the hub (`read-case`): what the gateway's policy let the reader see, the
/// sections shown and withheld, and the ledger entry that records the read.
pub fn shared_case_text(view: &CaseView, tz: &TimeZone) -> String {
    let file = view.case_file.clone().unwrap_or_default();
    let shown = |s: Sensitivity| view.sections_shown.contains(&(s as i32));
    let mut out = String::new();
    let mut fields = summary_fields(&file, tz);
    if let Some(k) = &file.help_request {
        fields.add(
            "Help request K",
            format!(
                "{} from {}, {}",
                k.message_id,
                k.sender_agency_id,
                local_time(k.created_at.as_ref(), tz)
            ),
        );
    }
    let mut recorded = format!("ledger entry {}", view.ledger_seq);
    if view.break_the_glass {
        recorded.push_str(
            "; a break-the-glass read: it showed more than you see otherwise, and the \
             curator is alerted",
        );
    }
    fields.add("Read recorded", recorded);
    out.push_str(&fields.render(0));

    out.push_str("\nБөлімдер / Разделы (sections)\n");
    let mut table = Table::new(["SECTION", "БӨЛІМ / РАЗДЕЛ", "YOU"]);
    let mut all: Vec<(i32, &str)> = view
        .sections_shown
        .iter()
        .map(|s| (*s, "shown"))
        .chain(view.sections_withheld.iter().map(|s| (*s, "withheld")))
        .collect();
    all.sort_by_key(|(s, _)| *s);
    for (section, state) in all {
        let label = section_label(section);
        table.row([
            section_name(section),
            format!("{} / {}", label.kk, label.ru),
            state.to_owned(),
        ]);
    }
    out.push_str(&indent(&table.render(), 2));

    let commission = commission_of(&file);
    for (cycle, withheld) in file.cycles.iter().zip(withheld_of(&file)) {
        out.push_str(&cycle_text(cycle, withheld, commission, tz));
    }
    if [
        Sensitivity::ChildIdentity,
        Sensitivity::Family,
        Sensitivity::Concern,
    ]
    .into_iter()
    .any(shown)
        && let Some(Form::HelpRequest(k)) = file
            .help_request
            .as_ref()
            .and_then(|e| e.payload.as_ref())
            .and_then(|p| p.form.as_ref())
    {
        out.push_str("\nКӨМЕК СҰРАУ ҮЛГІСІ / ЗАПРОС О ПОМОЩИ (K), as shown to you\n");
        out.push_str(&view::help_request_text(k, tz));
    }
    if shown(Sensitivity::CaseRecord) {
        out.push_str(&record_text(&file, tz, "none recorded"));
    }
    out
}

/// A case read through the hub as JSON.
pub fn shared_case_json(view: &CaseView) -> Value {
    let names = |sections: &[i32]| {
        sections
            .iter()
            .map(|s| section_name(*s))
            .collect::<Vec<_>>()
    };
    json!({
        "case": case_json(&view.case_file.clone().unwrap_or_default()),
        "sections_shown": names(&view.sections_shown),
        "sections_withheld": names(&view.sections_withheld),
        "ledger_seq": view.ledger_seq,
        "break_the_glass": view.break_the_glass,
    })
}

fn documents_table(documents: &[DocumentInfo], tz: &TimeZone) -> String {
    let mut table = Table::new(["DOCUMENT ID", "TITLE", "TYPE", "SIZE", "UPLOADED", "BY"]);
    for d in documents {
        table.row([
            d.document_id.clone(),
            d.title.clone(),
            d.content_type.clone(),
            size_text(d.size_bytes),
            local_time(d.uploaded_at.as_ref(), tz),
            d.uploaded_by.clone(),
        ]);
    }
    table.render()
}

fn exchange_text(x: &InformationExchange, tz: &TimeZone) -> String {
    let asked = x.request.clone().unwrap_or_default();
    let mut head = format!(
        "to {}, asked {}",
        x.recipient_agency_id,
        local_time(x.requested_at.as_ref(), tz)
    );
    let answer_by = date_text(asked.answer_by.as_ref());
    if !answer_by.is_empty() {
        head.push_str(&format!(", answer by {answer_by}"));
    }
    if !x.request_message_id.is_empty() {
        head.push_str(&format!(" (message {})", x.request_message_id));
    }
    let mut fields = Fields::new();
    fields.add("Questions", &asked.questions);
    match &x.response {
        Some(r) => {
            let who = [r.responder_name.as_str(), r.responder_position.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(", ");
            fields.add(
                "Answered",
                format!("{} by {who}", local_time(x.answered_at.as_ref(), tz)),
            );
            fields.add("Answer", &r.answer);
        }
        None => {
            fields.add("Answer", "not yet");
        }
    }
    format!("{head}\n{}", fields.render(2))
}

/// The case file as JSON; the forms L and M in the shapes `file-l` and `file-m` read.
pub fn case_json(file: &CaseFile) -> Value {
    let s = file.summary.clone().unwrap_or_default();
    let cycles: Vec<Value> = file
        .cycles
        .iter()
        .zip(withheld_of(file))
        .map(|(c, withheld)| {
            json!({
                "cycle": c.cycle,
                "opened_at": json_time(c.opened_at.as_ref()),
                "reopen_reason": c.reopen_reason,
                "risk_level": risk_name(c.risk_level),
                "assessment_filed_at": json_time(c.assessment_filed_at.as_ref()),
                "assessment": c.assessment.as_ref().map(|l| {
                    serde_json::to_value(AssessmentFile::from_proto(l)).unwrap_or(Value::Null)
                }),
                "support_plan_filed_at": json_time(c.support_plan_filed_at.as_ref()),
                "support_plan": c.support_plan.as_ref().map(|m| {
                    serde_json::to_value(SupportPlanFile::from_proto(m)).unwrap_or(Value::Null)
                }),
                "actions": c.actions.iter().map(action_status_json).collect::<Vec<_>>(),
                "closure": c.closure.as_ref().map(closure_json),
                "assessment_withheld": withheld.assessment,
                "support_plan_withheld": withheld.support_plan,
            })
        })
        .collect();
    json!({
        "case_reference": s.case_reference,
        "stage": stage_name(s.stage),
        "version": s.version,
        "cycle": s.cycle,
        "curator_user_id": s.curator_user_id,
        "curator_name": s.curator_name,
        "curator_contact": s.curator_contact,
        "next_review_on": date_json(s.next_review_on.as_ref()),
        "opened_at": json_time(s.opened_at.as_ref()),
        "risk_level": risk_name(s.risk_level),
        "child_full_name": s.child_full_name,
        "help_request_message_id": file.help_request.as_ref().map(|k| k.message_id.clone()),
        "cycles": cycles,
        "contacts": file.contacts.iter().map(|c| json!({
            "date": date_json(c.date.as_ref()),
            "made_by": c.made_by,
            "with_whom": c.with_whom,
            "method": method_name(c.method),
            "summary": c.summary,
        })).collect::<Vec<_>>(),
        "documents": file.documents.iter().map(document_json).collect::<Vec<_>>(),
        "information": file.information.iter().map(|x| {
            let asked = x.request.clone().unwrap_or_default();
            json!({
                "request_message_id": x.request_message_id,
                "recipient_agency_id": x.recipient_agency_id,
                "questions": asked.questions,
                "answer_by": date_json(asked.answer_by.as_ref()),
                "requested_at": json_time(x.requested_at.as_ref()),
                "answer": x.response.as_ref().map(|r| json!({
                    "answer": r.answer,
                    "responder_name": r.responder_name,
                    "responder_position": r.responder_position,
                })),
                "answered_at": json_time(x.answered_at.as_ref()),
            })
        }).collect::<Vec<_>>(),
    })
}

pub fn document_json(d: &DocumentInfo) -> Value {
    json!({
        "document_id": d.document_id,
        "title": d.title,
        "content_type": d.content_type,
        "size_bytes": d.size_bytes,
        "sha256": d.sha256,
        "uploaded_at": json_time(d.uploaded_at.as_ref()),
        "uploaded_by": d.uploaded_by,
    })
}

// ---------------------------------------------------------------------------------------------
// Messages of a case's life, as partner agencies receive them (`show`).
// ---------------------------------------------------------------------------------------------

pub fn information_request_text(r: &InformationRequest) -> String {
    let mut fields = Fields::new();
    fields
        .add("Іс / Дело", &r.case_reference)
        .add("Бала / Ребёнок", &r.child_full_name)
        .add(
            "Туған күні / Дата рождения",
            date_text(r.child_date_of_birth.as_ref()),
        )
        .add("Сұрақтар / Вопросы", &r.questions);
    let answer_by = date_text(r.answer_by.as_ref());
    if !answer_by.is_empty() {
        fields.add("Жауап беру мерзімі / Ответить до", answer_by);
    }
    fields.add(
        "Куратор",
        format!(
            "{} ({}), {}",
            r.curator_name, r.curator_user_id, r.curator_contact
        ),
    );
    fields.render(2)
}

pub fn information_request_json(r: &InformationRequest) -> Value {
    json!({
        "case_reference": r.case_reference,
        "child_full_name": r.child_full_name,
        "child_date_of_birth": date_json(r.child_date_of_birth.as_ref()),
        "questions": r.questions,
        "answer_by": date_json(r.answer_by.as_ref()),
        "curator_user_id": r.curator_user_id,
        "curator_name": r.curator_name,
        "curator_contact": r.curator_contact,
    })
}

pub fn information_response_text(r: &InformationResponse) -> String {
    let mut fields = Fields::new();
    fields
        .add("Іс / Дело", &r.case_reference)
        .add("Сұрау / Запрос", &r.request_message_id)
        .add("Жауап / Ответ", &r.answer)
        .add(
            "Жауап берген / Ответил",
            [r.responder_name.as_str(), r.responder_position.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(", "),
        );
    fields.render(2)
}

pub fn information_response_json(r: &InformationResponse) -> Value {
    json!({
        "request_message_id": r.request_message_id,
        "case_reference": r.case_reference,
        "answer": r.answer,
        "responder_name": r.responder_name,
        "responder_position": r.responder_position,
    })
}

pub fn action_assignment_text(a: &ActionAssignment) -> String {
    let action = a.action.clone().unwrap_or_default();
    let mut fields = Fields::new();
    fields
        .add("Іс / Дело", &a.case_reference)
        .add(
            "Бала / Ребёнок",
            format!("{}, {} жас / лет", a.child_first_name, a.child_age_years),
        )
        .add("№", action.number.to_string())
        .add("Іс-шара / Мероприятие", &action.action)
        .add("Мерзімі / Срок", date_text(action.due_on.as_ref()))
        .add(
            "Жауапты / Ответственный",
            responsible(&action.responsible_agency_id, &action.responsible_person),
        )
        .add("Қалай / Как", &action.method)
        .add(
            "Куратор",
            format!("{}, {}", a.curator_name, a.curator_contact),
        );
    fields.render(2)
}

pub fn action_assignment_json(a: &ActionAssignment) -> Value {
    json!({
        "case_reference": a.case_reference,
        "action": serde_json::to_value(ActionFile::from_proto(&a.action.clone().unwrap_or_default()))
            .unwrap_or(Value::Null),
        "child_first_name": a.child_first_name,
        "child_age_years": a.child_age_years,
        "curator_name": a.curator_name,
        "curator_contact": a.curator_contact,
    })
}

pub fn action_progress_text(p: &ActionProgress) -> String {
    let mut fields = Fields::new();
    fields
        .add("Іс / Дело", &p.case_reference)
        .add("Тапсырма / Поручение", &p.assignment_message_id)
        .add("№", p.action_number.to_string())
        .add("Жағдайы / Состояние", progress_text(p.state))
        .add("Ескерту / Примечание", &p.note)
        .add(
            "Хабарлады / Сообщил",
            format!("{}, {}", p.reported_by, date_text(p.reported_on.as_ref())),
        );
    fields.render(2)
}

pub fn action_progress_json(p: &ActionProgress) -> Value {
    json!({
        "assignment_message_id": p.assignment_message_id,
        "case_reference": p.case_reference,
        "action_number": p.action_number,
        "state": progress_name(p.state),
        "note": p.note,
        "reported_on": date_json(p.reported_on.as_ref()),
        "reported_by": p.reported_by,
    })
}

pub fn review_minutes_text(m: &ReviewMinutes) -> String {
    let r = m.review.clone().unwrap_or_default();
    let mut fields = Fields::new();
    fields
        .add("Іс / Дело", &m.case_reference)
        .add(
            "Отырыс күні / Дата встречи",
            date_text(r.meeting_on.as_ref()),
        )
        .add("Қатысқандар / Участники", r.participants.join("\n"))
        .add("Шешім / Решение", review_decision_text(r.decision))
        .add(
            "Келесі қайта қарау / Следующий пересмотр",
            date_text(r.next_review_on.as_ref()),
        )
        .add("Қол қойғандар / Подписали", r.signed_by.join("\n"))
        .add(
            "Куратор",
            format!("{}, {}", m.curator_name, m.curator_contact),
        );
    let mut out = fields.render(2);
    if !r.revised_actions.is_empty() {
        out.push_str("  Қайта қаралған іс-шаралар / Пересмотренные мероприятия:\n");
        out.push_str(&indent(&plan_rows_table(&r.revised_actions), 4));
    }
    out
}

pub fn review_minutes_json(m: &ReviewMinutes) -> Value {
    json!({
        "case_reference": m.case_reference,
        "review": serde_json::to_value(ReviewFile::from_proto(&m.review.clone().unwrap_or_default()))
            .unwrap_or(Value::Null),
        "decision": review_decision_name(m.review.as_ref().map_or(0, |r| r.decision)),
        "curator_name": m.curator_name,
        "curator_contact": m.curator_contact,
    })
}

// ---------------------------------------------------------------------------------------------
// Deadlines.
// ---------------------------------------------------------------------------------------------

/// The last minute of the due day (the deadline is overdue from `due_at` on), local time.
pub fn due_text(d: &Deadline, tz: &TimeZone) -> String {
    d.due_at
        .as_ref()
        .and_then(instant)
        .map(|at| {
            (at - SignedDuration::from_secs(1))
                .to_zoned(tz.clone())
                .strftime("%Y-%m-%d %H:%M %:z")
                .to_string()
        })
        .unwrap_or_default()
}

/// Whole days a deadline is late on `today` (0 when it is not yet late).
pub fn days_late(d: &Deadline, now: Timestamp, tz: &TimeZone) -> i64 {
    let Some(due_at) = d.due_at.as_ref().and_then(instant) else {
        return 0;
    };
    if now < due_at {
        return 0;
    }
    let due_day: Date = (due_at - SignedDuration::from_secs(1))
        .to_zoned(tz.clone())
        .date();
    let today = now.to_zoned(tz.clone()).date();
    i64::from((today - due_day).get_days()).max(1)
}

pub fn deadline_responsible(d: &Deadline) -> String {
    if d.responsible_user_id.is_empty() {
        d.responsible_agency_id.clone()
    } else {
        format!("{}/{}", d.responsible_agency_id, d.responsible_user_id)
    }
}

pub fn deadline_json(d: &Deadline) -> Value {
    json!({
        "deadline_id": d.deadline_id,
        "kind": deadline_kind_name(d.kind),
        "case_reference": d.case_reference,
        "cycle": d.cycle,
        "district_id": d.district_id,
        "responsible_agency_id": d.responsible_agency_id,
        "responsible_user_id": d.responsible_user_id,
        "action_number": d.action_number,
        "help_request_message_id": d.help_request_message_id,
        "warn_at": json_time(d.warn_at.as_ref()),
        "due_day_starts_at": json_time(d.due_day_starts_at.as_ref()),
        "due_at": json_time(d.due_at.as_ref()),
        "escalate_at": json_time(d.escalate_at.as_ref()),
        "state": deadline_state_name(d.state),
        "met_at": json_time(d.met_at.as_ref()),
    })
}

/// What a deadline is about: the case (with its cycle once reopened), or the help request for a
/// decision on K.
pub fn deadline_subject(d: &Deadline) -> String {
    if d.case_reference.is_empty() {
        if d.help_request_message_id.is_empty() {
            String::new()
        } else {
            format!("K {}", d.help_request_message_id)
        }
    } else if d.cycle > 1 {
        format!("{}, cycle {}", d.case_reference, d.cycle)
    } else {
        d.case_reference.clone()
    }
}

pub fn alert_json(a: &DeadlineAlert) -> Value {
    json!({
        "alert_id": a.alert_id,
        "state": deadline_state_name(a.state),
        "raised_at": json_time(a.raised_at.as_ref()),
        "addressed_to_role": view::role_label(a.addressed_to_role),
        "addressed_to_user_id": a.addressed_to_user_id,
        "deadline": a.deadline.as_ref().map(deadline_json),
    })
}

/// One alert on one line, for `watch`.
pub fn alert_line(a: &DeadlineAlert, tz: &TimeZone) -> String {
    let d = a.deadline.clone().unwrap_or_default();
    let mut to = view::role_label(a.addressed_to_role);
    if !a.addressed_to_user_id.is_empty() {
        to = format!("{to} {}", a.addressed_to_user_id);
    }
    format!(
        "{}  {}  {}  {}  responsible {}  due {}  for {to}",
        local_time(a.raised_at.as_ref(), tz),
        deadline_state_text(a.state),
        deadline_kind_text(d.kind, d.action_number),
        deadline_subject(&d),
        deadline_responsible(&d),
        due_text(&d, tz),
    )
}

/// A deadline alert received as a message (`show`).
pub fn alert_text(a: &DeadlineAlert, tz: &TimeZone) -> String {
    let d = a.deadline.clone().unwrap_or_default();
    let mut fields = Fields::new();
    fields
        .add("Жағдайы / Состояние", deadline_state_text(a.state))
        .add("Түрі / Вид", deadline_kind_text(d.kind, d.action_number))
        .add("Іс / Дело", deadline_subject(&d))
        .add("Жауапты / Ответственный", deadline_responsible(&d))
        .add("Мерзімі / Срок", due_text(&d, tz))
        .add("Кімге / Кому", view::role_label(a.addressed_to_role))
        .add("Уақыты / Время", local_time(a.raised_at.as_ref(), tz));
    fields.render(2)
}

#[cfg(test)]
mod tests {
    use referral_proto::v1::{CaseSummary, Contact, Envelope, SupportPlan};

    use super::*;

    fn almaty() -> TimeZone {
        TimeZone::get("Asia/Almaty").unwrap()
    }

    fn ts(s: &str) -> Option<prost_types::Timestamp> {
        let t: Timestamp = s.parse().unwrap();
        Some(referral_core::time::to_proto(t))
    }

    #[test]
    fn labels_carry_the_name_and_both_languages() {
        assert_eq!(
            stage_text(CaseStage::Support as i32),
            "support — Қолдау / Поддержка"
        );
        assert_eq!(
            risk_text(RiskLevel::High as i32),
            "high — Жоғары қауіп / Высокий риск"
        );
        assert_eq!(
            progress_text(ActionProgressState::Unspecified as i32),
            "not_reported — Есеп берілмеген / Отчёта нет"
        );
        assert_eq!(
            deadline_kind_text(DeadlineKind::Action as i32, 2),
            "action №2 — Жоспардың іс-шарасы / Мероприятие плана"
        );
        assert_eq!(
            deadline_state_text(DeadlineState::Overdue as i32),
            "overdue — Мерзімі өтті / Просрочено"
        );
        assert!(
            criterion_text(ClosureCriterion::RiskReduced as i32).starts_with("risk_reduced — ")
        );
        let reopened = Deadline {
            case_reference: "KTIZhK-2026-000001".into(),
            cycle: 2,
            ..Default::default()
        };
        assert_eq!(deadline_subject(&reopened), "KTIZhK-2026-000001, cycle 2");
        let decision = Deadline {
            help_request_message_id: "k-1".into(),
            ..Default::default()
        };
        assert_eq!(deadline_subject(&decision), "K k-1");
    }

    #[test]
    fn sections_read_in_both_languages() {
        assert_eq!(
            section_text(Sensitivity::Assessment as i32),
            "assessment — Кешенді бағалау (L) / Комплексная оценка (L)"
        );
        assert_eq!(section_name(Sensitivity::CaseRecord as i32), "case_record");
        assert_eq!(
            section_names(&[Sensitivity::CaseStatus as i32, Sensitivity::Contact as i32]),
            "case_status, contact"
        );
        assert_eq!(section_name(99), "unknown (99)");
        let every: Vec<i32> = (1..=12).collect();
        assert_eq!(sections_short(&every), "all");
        assert_eq!(sections_short(&every[..11]), section_names(&every[..11]));
        assert_eq!(
            sections_let_through(&every),
            "every section (nothing was removed)"
        );
        assert_eq!(
            sections_let_through(&[1, 2]),
            "case_status, contact (fields of other sections were removed before delivery)"
        );
    }

    /// A case as the secretary sees it: L and M filed, neither shown, no case record.
    fn register_view() -> CaseFile {
        CaseFile {
            summary: Some(CaseSummary {
                case_reference: "KTIZhK-2026-000001".into(),
                stage: CaseStage::Support as i32,
                curator_user_id: "curator-1".into(),
                curator_name: "Дана Омарова".into(),
                curator_contact: "+7 701 000 0002".into(),
                next_review_on: Some(referral_proto::v1::CalendarDate {
                    year: 2026,
                    month: 9,
                    day: 1,
                }),
                opened_at: ts("2026-03-02T04:00:00Z"),
                version: 4,
                cycle: 1,
                ..CaseSummary::default()
            }),
            cycles: vec![CaseCycle {
                cycle: 1,
                opened_at: ts("2026-03-02T04:00:00Z"),
                assessment_filed_at: ts("2026-03-10T04:00:00Z"),
                support_plan_filed_at: ts("2026-03-20T04:00:00Z"),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_case_says_which_forms_the_policy_withheld() {
        let file = register_view();
        let note = withheld_note(&file).unwrap();
        assert!(
            note.contains("withheld the assessment L and the support plan M from you"),
            "{note}"
        );
        let text = case_text(&file, &almaty(), "hub");
        for part in [
            "Дана Омарова (curator-1), +7 701 000 0002",
            "Next review:  2026-09-01",
            "Assessment L:    filed 2026-03-10 09:00 +05:00; withheld from you (need to know)",
            "Support plan M:  filed 2026-03-20 09:00 +05:00; withheld from you (need to know)",
            "hub case KTIZhK-2026-000001 --break-the-glass",
            "none shown to you",
        ] {
            assert!(text.contains(part), "{part} missing in\n{text}");
        }
        assert!(!text.contains("not filed yet") && !text.contains("none recorded"));
        let json = case_json(&file);
        assert_eq!(json["cycles"][0]["assessment_withheld"], true);
        assert_eq!(json["next_review_on"], "2026-09-01");

        // The curator's file has both forms: nothing is said to be withheld.
        let mut full = file.clone();
        full.cycles[0].assessment = Some(Default::default());
        full.cycles[0].support_plan = Some(Default::default());
        assert_eq!(withheld_note(&full), None);
        // A later cycle's forms are named with their cycle.
        let mut two = full.clone();
        two.cycles.push(CaseCycle {
            cycle: 2,
            assessment_filed_at: ts("2026-05-10T04:00:00Z"),
            ..Default::default()
        });
        assert!(
            withheld_note(&two)
                .unwrap()
                .contains("withheld the assessment L (cycle 2) from you")
        );
    }

    #[test]
    fn a_shared_case_lists_the_sections_shown_and_withheld() {
        let view = CaseView {
            case_file: Some(register_view()),
            sections_shown: vec![Sensitivity::CaseStatus as i32, Sensitivity::Contact as i32],
            sections_withheld: vec![
                Sensitivity::Assessment as i32,
                Sensitivity::ChildIdentity as i32,
            ],
            ledger_seq: 42,
            break_the_glass: false,
        };
        let text = shared_case_text(&view, &almaty());
        for part in [
            "Дана Омарова (curator-1), +7 701 000 0002",
            "Next review:    2026-09-01",
            "Read recorded:  ledger entry 42",
            "withheld from you (need to know)",
        ] {
            assert!(text.contains(part), "{part} missing in\n{text}");
        }
        let row = |name: &str| {
            text.lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        assert_eq!(
            row("case_status"),
            "case_status Істің жағдайы / Состояние дела shown"
        );
        assert_eq!(
            row("assessment"),
            "assessment Кешенді бағалау (L) / Комплексная оценка (L) withheld"
        );
        assert!(row("child_identity").ends_with("withheld"), "{text}");
        assert!(!text.contains("Contacts"), "no case record shown:\n{text}");
        assert!(!text.contains(" \n"), "no trailing spaces:\n{text}");
        let json = shared_case_json(&view);
        assert_eq!(
            json["sections_withheld"],
            json!(["assessment", "child_identity"])
        );
        assert_eq!(json["ledger_seq"], 42);
        assert_eq!(json["case"]["curator_contact"], "+7 701 000 0002");
    }

    #[test]
    fn lateness_counts_local_days_after_the_due_day() {
        let tz = almaty();
        // Due on 2026-03-02 in Almaty: overdue from 2026-03-03 00:00 +05:00 (19:00 UTC the day before).
        let d = Deadline {
            due_at: ts("2026-03-02T19:00:00Z"),
            ..Default::default()
        };
        assert_eq!(due_text(&d, &tz), "2026-03-02 23:59 +05:00");
        assert_eq!(
            days_late(&d, "2026-03-02T18:59:00Z".parse().unwrap(), &tz),
            0
        );
        assert_eq!(
            days_late(&d, "2026-03-02T19:00:00Z".parse().unwrap(), &tz),
            1
        );
        assert_eq!(
            days_late(&d, "2026-03-05T10:00:00Z".parse().unwrap(), &tz),
            3
        );
    }

    #[test]
    fn a_case_reads_with_its_version_stage_rows_and_exchanges() {
        let file = CaseFile {
            summary: Some(CaseSummary {
                case_reference: "KTIZhK-2026-000001".into(),
                stage: CaseStage::Support as i32,
                curator_user_id: "curator-1".into(),
                curator_name: "Дана Омарова".into(),
                opened_at: ts("2026-03-02T04:00:00Z"),
                risk_level: RiskLevel::Medium as i32,
                version: 4,
                cycle: 1,
                child_full_name: "Әлия Нұрланова".into(),
                ..CaseSummary::default()
            }),
            help_request: Some(Envelope {
                message_id: "k-1".into(),
                sender_agency_id: "school-1".into(),
                recipient_agency_id: "commission".into(),
                ..Default::default()
            }),
            cycles: vec![CaseCycle {
                cycle: 1,
                opened_at: ts("2026-03-02T04:00:00Z"),
                support_plan: Some(SupportPlan::default()),
                actions: vec![
                    ActionStatus {
                        action: Some(PlanAction {
                            number: 1,
                            action: "Психолог".into(),
                            responsible_agency_id: "ngo-1".into(),
                            ..Default::default()
                        }),
                        progress: ActionProgressState::Completed as i32,
                        last_note: "8 кездесу өтті".into(),
                        last_reported_at: ts("2026-03-03T04:00:00Z"),
                        ..Default::default()
                    },
                    ActionStatus {
                        action: Some(PlanAction {
                            number: 2,
                            action: "Үйге бару".into(),
                            responsible_agency_id: "commission".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ],
                closure: Some(ClosureRecord {
                    criteria: vec![ClosureCriterion::RiskReduced as i32],
                    family_told_how_to_ask_again: "телефон берілді".into(),
                    closed_by: "curator-1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            contacts: vec![Contact {
                method: ContactMethod::Phone as i32,
                with_whom: "анасы".into(),
                ..Default::default()
            }],
            information: vec![InformationExchange {
                recipient_agency_id: "health-1".into(),
                request: Some(InformationRequest {
                    questions: "Тіркеуде ме?".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = case_text(&file, &almaty(), "referral-hub");
        for part in [
            "KTIZhK-2026-000001",
            "4 (the next change takes --base-version 4)",
            "support — Қолдау / Поддержка",
            "medium — Орташа қауіп",
            "Assessment L:",
            "not filed yet",
            "completed — Орындалды / Выполнено",
            "2026-03-03 09:00 +05:00: 8 кездесу өтті",
            "the commission's own row",
            "Closure criteria:  risk_reduced — ",
            "Family told:       телефон берілді",
            "phone — Телефон арқылы / По телефону",
            "to health-1",
            "Тіркеуде ме?",
            "not yet",
            "referral-hub show k-1",
        ] {
            assert!(text.contains(part), "{part} missing in\n{text}");
        }
        assert!(!text.contains(" \n"), "no trailing spaces:\n{text}");
        let json = case_json(&file);
        assert_eq!(json["version"], 4);
        assert_eq!(json["stage"], "support");
        assert_eq!(json["cycles"][0]["actions"][0]["progress"], "completed");
        assert_eq!(
            json["cycles"][0]["actions"][0]["responsible_agency_id"],
            "ngo-1"
        );
        assert_eq!(json["contacts"][0]["method"], "phone");
        assert_eq!(json["information"][0]["answer"], Value::Null);
    }
}
