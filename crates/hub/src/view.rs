//! How messages read: form K with its Kazakh and Russian labels (the section headings of the
//! paper form, K ҚОСЫМШАСЫ), the commission's decision, and the JSON shape of both for `--json`.
//!
//! This is the only place that prints a child's personal data, and only `show` uses it: for the
//! staff of the agency that received the form.

use jiff::tz::TimeZone;
use referral_proto::v1::{
    Consultation, ConsultationAnswer, DeliveryState, DisclosureAlert, Envelope, FormKind,
    HelpRequest, HelpRequestDecision, LinkedReferral, PurposeOfUse, ReferralStatus, Role,
    help_request_decision::Outcome, payload::Form,
};
use serde_json::{Value, json};

use crate::{
    case_view,
    form_k::{DestinationArg, HelpRequestFile, IncidentRoleArg},
    output::{Fields, enum_name, json_time, local_time},
};

pub fn status_name(status: i32) -> String {
    ReferralStatus::try_from(status)
        .map(|s| enum_name(s.as_str_name(), "REFERRAL_STATUS_"))
        .unwrap_or_else(|_| format!("unknown ({status})"))
}

pub fn state_name(state: i32) -> String {
    DeliveryState::try_from(state)
        .map(|s| enum_name(s.as_str_name(), "DELIVERY_STATE_"))
        .unwrap_or_else(|_| format!("unknown ({state})"))
}

/// A delivery state for people: a withheld message says why it never reaches its recipient.
pub fn state_text(state: i32) -> String {
    if state == DeliveryState::Withheld as i32 {
        "withheld (kept from the recipient by the need-to-know rules)".into()
    } else {
        state_name(state)
    }
}

/// `coordination_of_care`, from the enumeration's value.
pub fn purpose_name(purpose: i32) -> String {
    PurposeOfUse::try_from(purpose)
        .map(|p| enum_name(p.as_str_name(), "PURPOSE_OF_USE_"))
        .unwrap_or_else(|_| format!("unknown ({purpose})"))
}

/// `coordination_of_care`, from the ledger's `PURPOSE_OF_USE_COORDINATION_OF_CARE`.
pub fn purpose_short(full: &str) -> String {
    enum_name(full, "PURPOSE_OF_USE_")
}

pub fn form_name(kind: i32) -> String {
    FormKind::try_from(kind)
        .map(|k| enum_name(k.as_str_name(), "FORM_KIND_"))
        .unwrap_or_else(|_| format!("unknown ({kind})"))
}

pub fn role_label(role: i32) -> String {
    Role::try_from(role)
        .map(|r| enum_name(r.as_str_name(), "ROLE_"))
        .unwrap_or_else(|_| format!("unknown ({role})"))
}

/// A form kind for people: `help request (K)`.
pub fn form_title(kind: i32) -> String {
    match FormKind::try_from(kind) {
        Ok(FormKind::HelpRequest) => "help request (K)".into(),
        Ok(FormKind::HelpRequestDecision) => "decision on a help request".into(),
        Ok(FormKind::ReferralLog) => "referral log (J)".into(),
        Ok(FormKind::Assessment) => "assessment (L)".into(),
        Ok(FormKind::SupportPlan) => "support plan (M)".into(),
        Ok(FormKind::IncidentReport) => "incident report (D)".into(),
        Ok(FormKind::IncidentSummary) => "incident summary (E)".into(),
        Ok(FormKind::InformationRequest) => "information request".into(),
        Ok(FormKind::InformationResponse) => "answer to an information request".into(),
        Ok(FormKind::ActionAssignment) => "action assignment (row of M)".into(),
        Ok(FormKind::ActionProgress) => "action progress".into(),
        Ok(FormKind::ReviewMinutes) => "review minutes".into(),
        Ok(FormKind::DeadlineAlert) => "deadline alert".into(),
        Ok(FormKind::Consultation) => "consultation (no names)".into(),
        Ok(FormKind::ConsultationAnswer) => "answer to a consultation".into(),
        Ok(FormKind::DisclosureAlert) => "disclosure alert (break the glass)".into(),
        _ => form_name(kind),
    }
}

fn destination_label(d: DestinationArg) -> &'static str {
    match d {
        DestinationArg::Commission => {
            "Кәмелетке толмағандардың ісі жөніндегі комиссия / Комиссия по делам несовершеннолетних"
        }
        DestinationArg::MentalHealthDispensary => {
            "Жүйке аурулары диспансері (ЖАД) / Психоневрологический диспансер"
        }
        DestinationArg::JuvenileAdaptationCentre => {
            "Кәмелеттік жасқа толмағандарды бейімдеу орталықтары / Центры адаптации несовершеннолетних"
        }
        DestinationArg::SocialServices => "Әлеуметтік қызметтер / Социальные службы",
        DestinationArg::PsychologicalServices => "Психологиялық қызметтер / Психологические службы",
        DestinationArg::Other => "т.б. / Другое",
    }
}

fn heading(out: &mut String, text: &str) {
    out.push('\n');
    out.push_str(text);
    out.push('\n');
}

/// Form K with the paper form's headings, in Kazakh and Russian.
pub fn help_request_text(k: &HelpRequest, tz: &TimeZone) -> String {
    let f = HelpRequestFile::from_proto(k);
    let mut out = String::new();

    heading(
        &mut out,
        "Бала / Ребёнок — Қайтара бағыттауды талап ететін тұлға / Лицо, нуждающееся в перенаправлении",
    );
    let c = &f.child;
    let sex = match c.sex {
        Some(crate::form_k::SexArg::Female) => "Қыз / Женский",
        Some(crate::form_k::SexArg::Male) => "Ұл / Мужской",
        None => "",
    };
    let mut fields = Fields::new();
    fields
        .add("Аты-жөні / ФИО", &c.full_name)
        .add(
            "Тіркелген мекен-жайы / Адрес регистрации",
            &c.registered_address,
        )
        .add(
            "Туған күні / Дата рождения",
            c.date_of_birth.map(|d| d.to_string()).unwrap_or_default(),
        )
        .add(
            "Жасы / Возраст",
            c.age_years.map(|a| a.to_string()).unwrap_or_default(),
        )
        .add("Жынысы / Пол", sex)
        .add(
            "Мектебі, сыныбы / Школа, класс",
            format!("{}, {}", c.school_name, c.class_name),
        )
        .add("ЖСН / ИИН", &c.iin);
    out.push_str(&fields.render(2));

    heading(
        &mut out,
        "Қайтара бағыттауды жүзеге асырушы тұлға / Лицо, осуществляющее перенаправление",
    );
    let r = &f.referrer;
    let mut fields = Fields::new();
    fields
        .add("Аты-жөні / ФИО", &r.full_name)
        .add("Қызметі / Должность", &r.position)
        .add("Мекен-жайы / Адрес", &r.address)
        .add("Телефон № / Телефон", &r.phone)
        .add(
            "Жұмыс орны (толық) / Место работы (полностью)",
            &r.workplace,
        );
    out.push_str(&fields.render(2));

    heading(
        &mut out,
        "Баланың ата-аналары туралы мәлімет / Сведения о родителях ребёнка",
    );
    for (label, parent) in [("Анасы / Мать", &f.mother), ("Әкесі / Отец", &f.father)]
    {
        out.push_str(&format!("  {label}\n"));
        match parent {
            Some(p) => {
                let mut fields = Fields::new();
                fields
                    .add("Аты-жөні / ФИО", &p.full_name)
                    .add("Тұрғылықты орны / Место жительства", &p.address)
                    .add("Жұмыс түрі / Род занятий", &p.occupation);
                out.push_str(&fields.render(4));
            }
            None => out.push_str("    мәлімет жоқ / нет сведений\n"),
        }
    }

    heading(
        &mut out,
        "Қайтара бағыттаудың себебі / Причина перенаправления",
    );
    let mut fields = Fields::new();
    fields
        .add(
            "Мәселеге қысқаша сипаттама / Краткое описание проблемы",
            &f.problem_description,
        )
        .add("Қайталану жиілігі / Частота повторения", &f.recurrence);
    out.push_str(&fields.render(2));

    heading(
        &mut out,
        "Қай жерге қайта бағытталуы керек / Куда следует перенаправить",
    );
    for d in &f.destinations {
        if *d == DestinationArg::Other {
            out.push_str(&format!(
                "  - {}: {}\n",
                destination_label(*d),
                f.destination_other
            ));
        } else {
            out.push_str(&format!("  - {}\n", destination_label(*d)));
        }
    }

    heading(
        &mut out,
        "Балаға қатысты қажетті іс-шаралар жоспары / План необходимых мероприятий в отношении ребёнка",
    );
    out.push_str(&indent(&f.measures_plan, 2));

    heading(
        &mut out,
        "Екінші, үшінші қайтара алдын алу жұмыстарының әсері, мектеп қолданған іс-шаралар / \
         Эффект вторичной и третичной профилактики, принятые школой меры",
    );
    out.push_str(&indent(&f.prevention_effect, 2));

    heading(&mut out, "Қолы / Подпись");
    let mut fields = Fields::new();
    fields.add("Аты-жөні / ФИО", &f.signature.signer_name).add(
        "Күні, уақыты / Дата, время",
        local_time(k.signature.as_ref().and_then(|s| s.signed_at.as_ref()), tz),
    );
    out.push_str(&fields.render(2));

    if let Some(c) = &f.circumstances {
        heading(
            &mut out,
            "Хабарламаның мән-жайы / Обстоятельства сообщения (need to know)",
        );
        let mut fields = Fields::new();
        if !c.child_residence_agency_id.is_empty() {
            fields.add(
                "Бала тұратын мекеме / Учреждение, где живёт ребёнок",
                format!(
                    "{} (nothing of this report reaches it)",
                    c.child_residence_agency_id
                ),
            );
        }
        if !c.implicated_director_agency_id.is_empty() {
            fields.add(
                "Директоры қатысы бар мекеме / Учреждение, директор которого причастен",
                format!(
                    "{} (the report never reaches it)",
                    c.implicated_director_agency_id
                ),
            );
        }
        if !c.incident_reference.is_empty() {
            fields.add("Оқиға / Инцидент", &c.incident_reference);
        }
        if let Some(role) = c.incident_role {
            fields.add("Баланың рөлі / Роль ребёнка", incident_role_text(role));
        }
        out.push_str(&fields.render(2));
    }
    out
}

/// `victim — Зардап шеккен / Пострадавший`.
pub fn incident_role_text(role: IncidentRoleArg) -> &'static str {
    match role {
        IncidentRoleArg::Victim => "victim — Зардап шеккен / Пострадавший",
        IncidentRoleArg::Perpetrator => "perpetrator — Зиян келтірген / Причинивший вред",
        IncidentRoleArg::Both => {
            "both — Зардап шеккен әрі зиян келтірген / И пострадавший, и причинивший вред"
        }
        IncidentRoleArg::Witness => "witness — Куә / Свидетель",
    }
}

/// Earlier referrals of the same child, as the gateway links them for the commission.
pub fn linked_referrals_text(links: &[LinkedReferral], tz: &TimeZone) -> String {
    let mut out = String::from(
        "Бұл бала бұрын да жолданған / Этот ребёнок уже направлялся раньше \
         (this child was referred before):\n",
    );
    for l in links {
        let case = if l.case_reference.is_empty() {
            "no case opened".to_owned()
        } else {
            format!("case {}", l.case_reference)
        };
        out.push_str(&format!(
            "  - {} by {} (help request {}), {case}\n",
            local_time(l.referred_at.as_ref(), tz),
            l.referring_agency_id,
            l.help_request_message_id
        ));
    }
    out
}

pub fn linked_referrals_json(links: &[LinkedReferral]) -> Value {
    json!(
        links
            .iter()
            .map(|l| json!({
                "help_request_message_id": l.help_request_message_id,
                "referring_agency_id": l.referring_agency_id,
                "referred_at": json_time(l.referred_at.as_ref()),
                "case_reference": l.case_reference,
            }))
            .collect::<Vec<_>>()
    )
}

/// A consultation, as the commission receives it: no names, by design.
pub fn consultation_text(c: &Consultation) -> String {
    let mut fields = Fields::new();
    fields
        .add("Мәселе / Проблема", &c.concern)
        .add("Сұрақ / Вопрос", &c.question);
    if c.child_age_years > 0 {
        fields.add(
            "Баланың жасы / Возраст ребёнка",
            c.child_age_years.to_string(),
        );
    }
    fields.add("Сұраған / Спросил(а)", &c.consulted_by);
    fields.render(2)
}

pub fn consultation_json(c: &Consultation) -> Value {
    json!({
        "concern": c.concern,
        "question": c.question,
        "child_age_years": c.child_age_years,
        "consulted_by": c.consulted_by,
    })
}

/// The commission's answer to a consultation.
pub fn consultation_answer_text(a: &ConsultationAnswer) -> String {
    let mut fields = Fields::new();
    fields
        .add("Кеңес / Совет", &a.advice)
        .add("Жауап берген / Ответил(а)", &a.answered_by)
        .add("Кеңес сұрау / Консультация", &a.consultation_message_id);
    fields.render(2)
}

pub fn consultation_answer_json(a: &ConsultationAnswer) -> Value {
    json!({
        "consultation_message_id": a.consultation_message_id,
        "advice": a.advice,
        "answered_by": a.answered_by,
    })
}

/// The gateway's notice to a curator that their case was opened outside the case team.
pub fn disclosure_alert_text(a: &DisclosureAlert, tz: &TimeZone) -> String {
    let mut fields = Fields::new();
    fields
        .add("Іс / Дело", &a.case_reference)
        .add("Кімге / Кому", &a.addressed_to_user_id)
        .add(
            "Ашқан / Открыл(а)",
            format!(
                "{}/{} ({})",
                a.opened_by_agency_id,
                a.opened_by_user_id,
                role_label(a.opened_by_role)
            ),
        )
        .add("Мақсаты / Цель", purpose_name(a.purpose_of_use))
        .add("Себебі / Причина", &a.reason)
        .add("Уақыты / Время", local_time(a.opened_at.as_ref(), tz))
        .add("Журнал жазбасы / Запись журнала", a.ledger_seq.to_string());
    fields.render(2)
}

pub fn disclosure_alert_json(a: &DisclosureAlert) -> Value {
    json!({
        "case_reference": a.case_reference,
        "addressed_to_user_id": a.addressed_to_user_id,
        "opened_by_user_id": a.opened_by_user_id,
        "opened_by_role": role_label(a.opened_by_role),
        "opened_by_agency_id": a.opened_by_agency_id,
        "purpose_of_use": purpose_name(a.purpose_of_use),
        "reason": a.reason,
        "opened_at": json_time(a.opened_at.as_ref()),
        "ledger_seq": a.ledger_seq,
    })
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(format!("{pad}{line}").trim_end());
        out.push('\n');
    }
    out
}

/// The commission's decision, for people.
pub fn decision_text(d: &HelpRequestDecision, tz: &TimeZone) -> String {
    let mut fields = Fields::new();
    match &d.outcome {
        Some(Outcome::CaseOpened(c)) => {
            fields
                .add("Шешім / Решение", "Іс ашылды / Заведено дело (case opened)")
                .add("Іс нөмірі / Номер дела", &c.case_reference)
                .add(
                    "Куратор",
                    format!("{} ({})", c.curator_name, c.curator_user_id),
                )
                .add("Байланыс / Контакт", &c.curator_contact);
        }
        Some(Outcome::NoFurtherAction(n)) => {
            fields
                .add(
                    "Шешім / Решение",
                    "Қосымша шаралар қажет емес / Дальнейшие меры не требуются (no further action)",
                )
                .add("Себебі / Причина", &n.reason);
        }
        None => {
            fields.add("Шешім / Решение", "(empty)");
        }
    }
    fields
        .add("Шешім қабылдаған / Решение принял", &d.decided_by)
        .add("Күні / Дата", local_time(d.decided_at.as_ref(), tz));
    fields.render(2)
}

/// The decision as JSON.
pub fn decision_json(d: &HelpRequestDecision) -> Value {
    let outcome = match &d.outcome {
        Some(Outcome::CaseOpened(c)) => json!({
            "case_opened": {
                "case_reference": c.case_reference,
                "curator_user_id": c.curator_user_id,
                "curator_name": c.curator_name,
                "curator_contact": c.curator_contact,
            }
        }),
        Some(Outcome::NoFurtherAction(n)) => json!({
            "no_further_action": { "reason": n.reason }
        }),
        None => Value::Null,
    };
    json!({
        "help_request_message_id": d.help_request_message_id,
        "outcome": outcome,
        "decided_by": d.decided_by,
        "decided_at": json_time(d.decided_at.as_ref()),
    })
}

/// A decision in one line, for lists and summaries (no personal data of the child).
pub fn decision_summary(d: &HelpRequestDecision) -> String {
    match &d.outcome {
        Some(Outcome::CaseOpened(c)) => format!(
            "case {} opened, curator {} ({})",
            c.case_reference, c.curator_name, c.curator_user_id
        ),
        Some(Outcome::NoFurtherAction(n)) => format!("no further action: {}", n.reason),
        None => "(empty decision)".into(),
    }
}

/// The decision an envelope carries, if it carries one.
pub fn carried_decision(envelope: &Envelope) -> Option<&HelpRequestDecision> {
    match envelope.payload.as_ref()?.form.as_ref()? {
        Form::HelpRequestDecision(d) => Some(d),
        _ => None,
    }
}

/// An envelope as JSON: its metadata and its form (K in the shape `submit-k --file` reads).
pub fn envelope_json(e: &Envelope) -> Value {
    let user = e.acting_user.as_ref().map(|u| {
        json!({
            "user_id": u.user_id,
            "agency_id": u.agency_id,
            "role": role_label(u.role),
            "display_name": u.display_name,
        })
    });
    let (form_key, form) = match e.payload.as_ref().and_then(|p| p.form.as_ref()) {
        Some(Form::HelpRequest(k)) => (
            "help_request",
            serde_json::to_value(HelpRequestFile::from_proto(k)).unwrap_or(Value::Null),
        ),
        Some(Form::HelpRequestDecision(d)) => ("help_request_decision", decision_json(d)),
        Some(Form::InformationRequest(r)) => (
            "information_request",
            case_view::information_request_json(r),
        ),
        Some(Form::InformationResponse(r)) => (
            "information_response",
            case_view::information_response_json(r),
        ),
        Some(Form::ActionAssignment(a)) => {
            ("action_assignment", case_view::action_assignment_json(a))
        }
        Some(Form::ActionProgress(p)) => ("action_progress", case_view::action_progress_json(p)),
        Some(Form::ReviewMinutes(m)) => ("review_minutes", case_view::review_minutes_json(m)),
        Some(Form::DeadlineAlert(a)) => ("deadline_alert", case_view::alert_json(a)),
        Some(Form::Consultation(c)) => ("consultation", consultation_json(c)),
        Some(Form::ConsultationAnswer(a)) => ("consultation_answer", consultation_answer_json(a)),
        Some(Form::DisclosureAlert(a)) => ("disclosure_alert", disclosure_alert_json(a)),
        Some(_) => ("other_form", json!("not shown by this version of the CLI")),
        None => ("form", Value::Null),
    };
    let mut value = json!({
        "message_id": e.message_id,
        "idempotency_key": e.idempotency_key,
        "sender_agency_id": e.sender_agency_id,
        "recipient_agency_id": e.recipient_agency_id,
        "acting_user": user,
        "form_kind": form_name(e.form_kind),
        "case_reference": e.case_reference,
        "in_reply_to": e.in_reply_to,
        "created_at": json_time(e.created_at.as_ref()),
        "purpose_of_use": purpose_name(e.purpose_of_use),
        "linked_referrals": linked_referrals_json(&e.linked_referrals),
        "view_sections": e.view_sections.iter().map(|s| case_view::section_name(*s)).collect::<Vec<_>>(),
    });
    value[form_key] = form;
    value
}

#[cfg(test)]
mod tests {
    use jiff::civil::date;
    use referral_core::validate::sample_help_request;
    use referral_proto::v1::{CaseOpened, NoFurtherAction, Payload};

    use super::*;

    fn almaty() -> TimeZone {
        TimeZone::get("Asia/Almaty").unwrap()
    }

    #[test]
    fn form_k_reads_with_the_paper_forms_headings() {
        let text = help_request_text(&sample_help_request(date(2025, 3, 10)), &almaty());
        for heading in [
            "Бала / Ребёнок",
            "Қайтара бағыттауды талап ететін тұлға",
            "Қайтара бағыттауды жүзеге асырушы тұлға",
            "Баланың ата-аналары туралы мәлімет",
            "Қайтара бағыттаудың себебі",
            "Қай жерге қайта бағытталуы керек",
            "Балаға қатысты қажетті іс-шаралар жоспары",
            "Қолы / Подпись",
        ] {
            assert!(text.contains(heading), "{heading} missing in\n{text}");
        }
        assert!(text.contains("Әлия Серікқызы Нұрланова"));
        assert!(text.contains("Қыз / Женский"));
        assert!(text.contains("Психологиялық қызметтер"));
        assert!(text.contains("2025-03-09 09:00 +05:00"), "{text}");
        assert!(!text.contains(" \n"), "no trailing spaces");
    }

    #[test]
    fn decisions_read_for_people_and_scripts() {
        let opened = HelpRequestDecision {
            help_request_message_id: "m".into(),
            outcome: Some(Outcome::CaseOpened(CaseOpened {
                case_reference: "KDN-2025-0001".into(),
                curator_user_id: "curator-1".into(),
                curator_name: "Дана Омарова".into(),
                curator_contact: "+7 701 000 0002".into(),
            })),
            decided_by: "secretary".into(),
            decided_at: None,
        };
        let text = decision_text(&opened, &almaty());
        assert!(text.contains("KDN-2025-0001") && text.contains("Дана Омарова (curator-1)"));
        assert_eq!(
            decision_json(&opened)["outcome"]["case_opened"]["curator_user_id"],
            "curator-1"
        );
        let nfa = HelpRequestDecision {
            outcome: Some(Outcome::NoFurtherAction(NoFurtherAction {
                reason: "resolved by the school".into(),
            })),
            ..opened
        };
        assert_eq!(
            decision_summary(&nfa),
            "no further action: resolved by the school"
        );
        let envelope = Envelope {
            form_kind: FormKind::HelpRequestDecision as i32,
            payload: Some(Payload {
                form: Some(Form::HelpRequestDecision(nfa.clone())),
            }),
            ..Default::default()
        };
        assert_eq!(carried_decision(&envelope), Some(&nfa));
        let json = envelope_json(&envelope);
        assert_eq!(json["form_kind"], "help_request_decision");
        assert_eq!(
            json["help_request_decision"]["outcome"]["no_further_action"]["reason"],
            "resolved by the school"
        );
    }

    #[test]
    fn form_k_shows_its_circumstances() {
        let mut k = sample_help_request(date(2025, 3, 10));
        let text = help_request_text(&k, &almaty());
        assert!(!text.contains("Обстоятельства сообщения"), "none given");
        k.circumstances = Some(referral_proto::v1::ReportCircumstances {
            child_residence_agency_id: "residential-1".into(),
            implicated_director_agency_id: String::new(),
            incident_reference: "INC-7".into(),
            incident_role: referral_proto::v1::IncidentRole::Victim as i32,
        });
        let text = help_request_text(&k, &almaty());
        for part in [
            "Обстоятельства сообщения",
            "residential-1 (nothing of this report reaches it)",
            "INC-7",
            "victim — Зардап шеккен / Пострадавший",
        ] {
            assert!(text.contains(part), "{part} missing in\n{text}");
        }
        assert!(!text.contains("причастен"), "no implicated director given");
        assert!(!text.contains(" \n"), "no trailing spaces");
    }

    #[test]
    fn need_to_know_messages_read_for_people_and_scripts() {
        let links = [
            LinkedReferral {
                help_request_message_id: "k-0".into(),
                referring_agency_id: "school-2".into(),
                referred_at: Some(prost_types::Timestamp {
                    seconds: 1_741_582_800,
                    nanos: 0,
                }),
                case_reference: "KTIZhK-2025-000003".into(),
            },
            LinkedReferral {
                help_request_message_id: "k-1".into(),
                referring_agency_id: "police-1".into(),
                referred_at: None,
                case_reference: String::new(),
            },
        ];
        let text = linked_referrals_text(&links, &almaty());
        assert!(text.contains("this child was referred before"), "{text}");
        assert!(
            text.contains(
                "- 2025-03-10 10:00 +05:00 by school-2 (help request k-0), case KTIZhK-2025-000003"
            ),
            "{text}"
        );
        assert!(text.contains("by police-1 (help request k-1), no case opened"));

        let alert = DisclosureAlert {
            case_reference: "KTIZhK-2026-000001".into(),
            addressed_to_user_id: "curator-1".into(),
            opened_by_user_id: "chair".into(),
            opened_by_role: Role::CommissionChair as i32,
            opened_by_agency_id: "commission".into(),
            purpose_of_use: PurposeOfUse::BreakTheGlass as i32,
            reason: "the curator is away".into(),
            opened_at: None,
            ledger_seq: 42,
        };
        let text = disclosure_alert_text(&alert, &almaty());
        assert!(
            text.contains("commission/chair (commission_chair)"),
            "{text}"
        );
        assert!(text.contains("break_the_glass") && text.contains("42"));
        let envelope = Envelope {
            form_kind: FormKind::DisclosureAlert as i32,
            purpose_of_use: PurposeOfUse::CareManagement as i32,
            linked_referrals: links.to_vec(),
            view_sections: vec![referral_proto::v1::Sensitivity::CaseStatus as i32],
            payload: Some(Payload {
                form: Some(Form::DisclosureAlert(alert)),
            }),
            ..Default::default()
        };
        let json = envelope_json(&envelope);
        assert_eq!(
            json["disclosure_alert"]["purpose_of_use"],
            "break_the_glass"
        );
        assert_eq!(json["purpose_of_use"], "care_management");
        assert_eq!(
            json["linked_referrals"][0]["case_reference"],
            "KTIZhK-2025-000003"
        );
        assert_eq!(json["view_sections"][0], "case_status");

        let consultation = Consultation {
            concern: "A pupil comes to school hungry".into(),
            question: "Whom should we call?".into(),
            child_age_years: 9,
            consulted_by: "Гүлнар".into(),
        };
        let text = consultation_text(&consultation);
        assert!(text.contains("Возраст ребёнка:  9"), "{text}");
        let answer = ConsultationAnswer {
            consultation_message_id: "c-1".into(),
            advice: "Call the commission's duty officer.".into(),
            answered_by: "Дана".into(),
        };
        assert!(consultation_answer_text(&answer).contains("Call the commission's duty officer."));
        assert_eq!(
            consultation_answer_json(&answer)["consultation_message_id"],
            "c-1"
        );
        assert_eq!(
            form_title(FormKind::Consultation as i32),
            "consultation (no names)"
        );
    }

    #[test]
    fn a_withheld_message_says_why() {
        assert_eq!(
            state_text(DeliveryState::Withheld as i32),
            "withheld (kept from the recipient by the need-to-know rules)"
        );
        assert_eq!(state_name(DeliveryState::Withheld as i32), "withheld");
        assert_eq!(state_text(DeliveryState::Delivered as i32), "delivered");
        assert_eq!(
            purpose_short("PURPOSE_OF_USE_LAW_ENFORCEMENT"),
            "law_enforcement"
        );
    }

    #[test]
    fn enum_values_have_short_names() {
        assert_eq!(
            status_name(ReferralStatus::InProgress as i32),
            "in_progress"
        );
        assert_eq!(state_name(DeliveryState::Answered as i32), "answered");
        assert_eq!(form_name(FormKind::HelpRequest as i32), "help_request");
        assert_eq!(
            role_label(Role::CommissionSecretary as i32),
            "commission_secretary"
        );
        assert_eq!(status_name(99), "unknown (99)");
    }
}
