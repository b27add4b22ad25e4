//! Complete, valid forms L and M (and their parts) for tests and demos.

use jiff::{ToSpan as _, civil::Date, tz::TimeZone};
use referral_proto::v1::{
    Assessment, CalendarDate, ChronologyEntry, FamilyMember, PlanAction, PlanChild, PlanParent,
    Sex, Signature, SupportPlan,
};

fn almaty() -> TimeZone {
    TimeZone::get("Asia/Almaty").expect("the tz database knows Almaty")
}

/// A date as the protobuf carries it.
pub fn cd(d: Date) -> CalendarDate {
    CalendarDate {
        year: d.year().into(),
        month: d.month().into(),
        day: d.day().into(),
    }
}

/// A complete assessment L, assessed and discussed with the family on `on`.
pub fn sample_assessment(on: Date) -> Assessment {
    Assessment {
        family: vec![
            FamilyMember {
                full_name: "Әлия Серікқызы Нұрланова".into(),
                relation: "child".into(),
                age_years: 12,
                address: "Алматы қ., Жетісу-2 ш.а., 14-үй".into(),
                ..Default::default()
            },
            FamilyMember {
                full_name: "Сәуле Бекқызы Нұрланова".into(),
                relation: "mother".into(),
                age_years: 38,
                address: "Алматы қ., Жетісу-2 ш.а., 14-үй".into(),
                occupation: "Сатушы".into(),
                phone: "+7 701 111 2233".into(),
                email: String::new(),
            },
        ],
        assessed_on: Some(cd(on)),
        responsible_person: "Дана Ерланқызы Омарова".into(),
        others_involved: vec!["Мектеп психологы".into()],
        history: vec![ChronologyEntry {
            date: Some(cd(on - 30.days())),
            event: "Мектеп психологымен алғашқы кездесу".into(),
        }],
        physical_health: "Сау, бірақ шаршаңқы".into(),
        emotional_development: "Мазасыз".into(),
        behavioural_development: "Сабаққа кешігеді".into(),
        relationships: "Сыныптастарымен араласпайды".into(),
        self_care: "Жасына сай".into(),
        ability_to_keep_safe: "Анасы тырысады".into(),
        stability_and_supervision: "Кешке қадағалау жоқ".into(),
        parents_understanding_and_will_to_change: "Анасы көмекке дайын".into(),
        relatives_and_friends: "Әжесі көрші ауданда".into(),
        access_to_local_services: "Емхана жақын".into(),
        housing: "Екі бөлмелі пәтер".into(),
        income: "Төмен".into(),
        family_strengths: "Анасы баланы жақсы көреді".into(),
        family_weaknesses: "Әкесі жоқ, ақша жетіспейді".into(),
        concerns_and_risks: "Үйде ұрсыс, көгерген іздер".into(),
        likely_consequences: "Мектептен шығып қалу қаупі".into(),
        effect_on_parents: "Анасы күйзелісте".into(),
        capacity_to_keep_child_safe: "Қолдаумен мүмкін".into(),
        capacity_to_change: "Бар".into(),
        help_needed: "Психолог, әлеуметтік көмек".into(),
        recommendations: "Қолдау жоспарын құру".into(),
        family_comment: "Келісеміз".into(),
        family_signature: Some(Signature {
            signer_name: "Сәуле Нұрланова".into(),
            // The first minute of the day: a test on a real clock fills the form in `today`, and
            // a later time of day was "in the future" from midnight until then (Almaty time).
            signed_at: Some(referral_core::time::to_proto(
                on.at(0, 0, 0, 0)
                    .to_zoned(almaty())
                    .expect("a local time exists")
                    .timestamp(),
            )),
        }),
        discussed_with_family_on: Some(cd(on)),
        discussion_participants: vec!["Сәуле Нұрланова".into(), "Дана Омарова".into()],
    }
}

/// An action row due on `due`, carried out by `agency`.
pub fn row(number: u32, due: Date, agency: &str) -> PlanAction {
    PlanAction {
        number,
        action: format!("Іс-шара {number}"),
        due_on: Some(cd(due)),
        responsible_person: "Жауапты маман".into(),
        responsible_agency_id: agency.into(),
        method: "Апта сайын кездесу".into(),
    }
}

/// A complete support plan M reported on `on`.
pub fn sample_plan(on: Date, rows: Vec<PlanAction>) -> SupportPlan {
    SupportPlan {
        parents: vec![PlanParent {
            full_name: "Сәуле Бекқызы Нұрланова".into(),
            age_years: 38,
            social_status: "Жалғыз басты ана".into(),
            contacts: "+7 701 111 2233".into(),
        }],
        child: Some(PlanChild {
            full_name: "Әлия Серікқызы Нұрланова".into(),
            age_years: 12,
            sex: Sex::Female as i32,
            address: "Алматы қ., Жетісу-2 ш.а., 14-үй".into(),
        }),
        report_date: Some(cd(on)),
        needs: vec!["Қауіпсіздік".into(), "Психологиялық қолдау".into()],
        specialists: vec![],
        actions: rows,
        recommendations: "Ай сайын бақылау".into(),
        social_worker_signature: Some(Signature {
            signer_name: "Дана Омарова".into(),
            // Signed after the assessment, still within the signature's allowance for skew.
            signed_at: Some(referral_core::time::to_proto(
                on.at(0, 1, 0, 0)
                    .to_zoned(almaty())
                    .expect("a local time exists")
                    .timestamp(),
            )),
        }),
        reviews: vec![],
    }
}
