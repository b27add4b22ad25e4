//! The monthly summary E (M:3569-3624), computed from the month's reports D, and its exports.
//!
//! E counts; it names nobody: the `IncidentSummary` message has no field for a name, and the
//! only text it carries is the school's name (the gateway refuses one holding an IIN).
//!
//! What D does not record, E cannot count: behaviour assessments (form F) and children in
//! secondary or tertiary measures (form G) are the school's internal work, not kept by the hub
//! (DOMAIN.md section 2), so those three counts are 0 until they are.

use referral_proto::v1::{
    BehaviourCount, IncidentReport, IncidentRole, IncidentSummary, ProblemBehaviour,
    ReporterStatus, RiskTier,
};

/// One month's reports D, with whether each one's investigation has finished.
pub struct MonthReport<'a> {
    pub report: &'a IncidentReport,
    pub investigation_finished: bool,
}

/// The problem behaviours in the order of form D, with the headings of form E in Kazakh (from
/// the source) and Russian.
pub const BEHAVIOURS: [(ProblemBehaviour, &str, &str); 12] = [
    (
        ProblemBehaviour::NonCompliance,
        "Үйлеспейтін",
        "Несоблюдение правил",
    ),
    (ProblemBehaviour::BadLanguage, "Жаман сөз", "Сквернословие"),
    (
        ProblemBehaviour::RobberyOrTheft,
        "Ұрлық",
        "Грабёж или кража",
    ),
    (ProblemBehaviour::Hooliganism, "Бұзақылық", "Хулиганство"),
    (
        ProblemBehaviour::FightOrPhysicalAggression,
        "Төбелес/физикалық агрессия",
        "Драка/физическая агрессия",
    ),
    (
        ProblemBehaviour::Extortion,
        "Қорқытып ақша алушылық",
        "Вымогательство",
    ),
    (ProblemBehaviour::Disrespect, "Сыйламау", "Неуважение"),
    (
        ProblemBehaviour::ThreateningPeersOrTeacher,
        "Қатарластарын/мұғалімді қорқыту",
        "Угрозы сверстникам/учителю",
    ),
    (ProblemBehaviour::Vandalism, "Вандализм", "Вандализм"),
    (ProblemBehaviour::Lateness, "Кешігу", "Опоздания"),
    (
        ProblemBehaviour::NameCallingOrTeasing,
        "Қатарластарын ғайбаттау/мазақтау",
        "Оскорбления/насмешки над сверстниками",
    ),
    (ProblemBehaviour::Other, "Басқа", "Другое"),
];

/// Computes E for `school_name`, `year`, `month` from that month's reports.
pub fn compute(
    school_name: &str,
    year: i32,
    month: i32,
    reports: &[MonthReport<'_>],
) -> IncidentSummary {
    let mut e = IncidentSummary {
        school_name: school_name.to_owned(),
        year,
        month,
        ..IncidentSummary::default()
    };
    let mut behaviours = [0_u32; BEHAVIOURS.len()];
    for r in reports {
        let d = r.report;
        e.total_reports += 1;
        match ReporterStatus::try_from(d.reporter_status).unwrap_or(ReporterStatus::Other) {
            ReporterStatus::Pupil => e.reported_by_pupils += 1,
            ReporterStatus::Teacher => e.reported_by_teachers += 1,
            ReporterStatus::Staff => e.reported_by_staff += 1,
            ReporterStatus::Parent => e.reported_by_parents += 1,
            ReporterStatus::Other | ReporterStatus::Unspecified => e.reported_by_others += 1,
        }
        if r.investigation_finished {
            e.forms_d_completed += 1;
        }
        for &b in &d.behaviours {
            if let Some(i) = BEHAVIOURS.iter().position(|(k, _, _)| *k as i32 == b) {
                behaviours[i] += 1;
            }
        }
        for child in &d.children {
            match IncidentRole::try_from(child.role).unwrap_or(IncidentRole::Unspecified) {
                IncidentRole::Perpetrator => e.perpetrators += 1,
                IncidentRole::Victim => e.victims += 1,
                IncidentRole::Both => {
                    e.perpetrators += 1;
                    e.victims += 1;
                }
                IncidentRole::Witness => e.witnesses += 1,
                IncidentRole::Unspecified => {}
            }
            match RiskTier::try_from(child.risk_tier).unwrap_or(RiskTier::Unspecified) {
                RiskTier::NotAtRisk => e.children_not_at_risk += 1,
                RiskTier::AtRisk => e.children_at_risk += 1,
                RiskTier::HighRisk => e.children_high_risk += 1,
                RiskTier::Unspecified => {}
            }
        }
        // Pupil witnesses named apart from the children involved are witnesses too.
        e.witnesses += d.pupil_witnesses.len() as u32;
        e.children_injured += d.injured.len() as u32;
    }
    e.behaviours = BEHAVIOURS
        .iter()
        .zip(behaviours)
        .filter(|(_, count)| *count > 0)
        .map(|((b, _, _), count)| BehaviourCount {
            behaviour: *b as i32,
            count,
        })
        .collect();
    e
}

/// One column of the export: Kazakh heading, Russian heading, value.
struct Column {
    kk: &'static str,
    ru: &'static str,
    value: Value,
}

enum Value {
    Text(String),
    Count(u32),
}

fn columns(e: &IncidentSummary) -> Vec<Column> {
    let count = |kk, ru, n| Column {
        kk,
        ru,
        value: Value::Count(n),
    };
    let mut cols = vec![
        Column {
            kk: "Мектептің атауы",
            ru: "Наименование школы",
            value: Value::Text(e.school_name.clone()),
        },
        Column {
            kk: "Айы",
            ru: "Месяц",
            value: Value::Text(format!("{:04}-{:02}", e.year, e.month)),
        },
        count(
            "Хабарланған зорлық-зомбылық жағдайларының жалпы саны",
            "Общее число сообщённых случаев насилия",
            e.total_reports,
        ),
        count(
            "Хабарлаған оқушылар",
            "Сообщили учащиеся",
            e.reported_by_pupils,
        ),
        count(
            "Хабарлаған мұғалімдер",
            "Сообщили учителя",
            e.reported_by_teachers,
        ),
        count(
            "Хабарлаған қосымша қызметкерлер",
            "Сообщили другие сотрудники",
            e.reported_by_staff,
        ),
        count(
            "Хабарлаған ата-аналар",
            "Сообщили родители",
            e.reported_by_parents,
        ),
        count(
            "Хабарлаған басқалар",
            "Сообщили другие лица",
            e.reported_by_others,
        ),
        count(
            "Толтырылған оқиғалардың хабарламалары мен тергеу нысандарының жалпы саны",
            "Число заполненных форм сообщения и расследования",
            e.forms_d_completed,
        ),
    ];
    for (b, kk, ru) in BEHAVIOURS {
        let n = e
            .behaviours
            .iter()
            .find(|c| c.behaviour == b as i32)
            .map_or(0, |c| c.count);
        cols.push(count(kk, ru, n));
    }
    cols.extend([
        count("Бәлеқор балалар", "Дети-агрессоры", e.perpetrators),
        count("Құрбан балалар", "Дети-жертвы", e.victims),
        count("Куәгер балалар", "Дети-свидетели", e.witnesses),
        count(
            "Тәуекелден тыс бала",
            "Дети вне группы риска",
            e.children_not_at_risk,
        ),
        count(
            "Тәуекел тобындағы бала",
            "Дети группы риска",
            e.children_at_risk,
        ),
        count(
            "Жоғары тәуекел тобындағы бала",
            "Дети группы высокого риска",
            e.children_high_risk,
        ),
        count(
            "Зорлық-зомбылықтың салдарынан жарақат алған балалар",
            "Дети, получившие травмы в результате насилия",
            e.children_injured,
        ),
        count(
            "Орындалған мінез-құлықты бағалау",
            "Проведённые оценки поведения",
            e.behaviour_assessments_done,
        ),
        count(
            "Екінші қайтара әсер ету шараларына қатысқан балалар",
            "Дети, охваченные мерами вторичного воздействия",
            e.children_in_secondary_measures,
        ),
        count(
            "Үшінші қайтара әсер ету шараларына қатысқан балалар",
            "Дети, охваченные мерами третичного воздействия",
            e.children_in_tertiary_measures,
        ),
    ]);
    cols
}

/// The file name of an export.
pub fn file_name(agency_id: &str, e: &IncidentSummary, extension: &str) -> String {
    format!(
        "incident-summary-{agency_id}-{:04}-{:02}.{extension}",
        e.year, e.month
    )
}

pub const CSV_CONTENT_TYPE: &str = "text/csv; charset=utf-8";
pub const XLSX_CONTENT_TYPE: &str =
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

/// E as CSV (RFC 4180, UTF-8 with a byte-order mark so that spreadsheet programs read the
/// Cyrillic right): a row of Kazakh headings, a row of Russian headings, a row of values.
pub fn csv(e: &IncidentSummary) -> Vec<u8> {
    let cols = columns(e);
    csv_table([
        cols.iter().map(|c| c.kk.to_owned()).collect(),
        cols.iter().map(|c| c.ru.to_owned()).collect(),
        cols.iter()
            .map(|c| match &c.value {
                Value::Text(t) => t.clone(),
                Value::Count(n) => n.to_string(),
            })
            .collect(),
    ])
}

/// A table as CSV (RFC 4180, UTF-8 with a byte-order mark so that spreadsheet programs read the
/// Cyrillic right), a line per row: the writer of both exports, E and J.
pub(crate) fn csv_table(rows: impl IntoIterator<Item = Vec<String>>) -> Vec<u8> {
    let mut out = String::from("\u{FEFF}");
    for cells in rows {
        let line: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out.into_bytes()
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

/// E as an XLSX workbook with one sheet laid out like the CSV.
pub fn xlsx(e: &IncidentSummary) -> Result<Vec<u8>, rust_xlsxwriter::XlsxError> {
    let cols = columns(e);
    let mut workbook = rust_xlsxwriter::Workbook::new();
    let bold = rust_xlsxwriter::Format::new().set_bold().set_text_wrap();
    let sheet = workbook.add_worksheet();
    sheet.set_name(format!("E {:04}-{:02}", e.year, e.month))?;
    for (i, c) in cols.iter().enumerate() {
        let col = u16::try_from(i).unwrap_or(u16::MAX);
        sheet.set_column_width(col, 22)?;
        sheet.write_string_with_format(0, col, c.kk, &bold)?;
        sheet.write_string_with_format(1, col, c.ru, &bold)?;
        match &c.value {
            Value::Text(t) => sheet.write_string(2, col, t)?,
            Value::Count(n) => sheet.write_number(2, col, f64::from(*n))?,
        };
    }
    workbook.save_to_buffer()
}

/// The Kazakh and Russian headings of the export, in order (for tests and documentation).
pub fn headings() -> Vec<(&'static str, &'static str)> {
    columns(&IncidentSummary::default())
        .into_iter()
        .map(|c| (c.kk, c.ru))
        .collect()
}

#[cfg(test)]
mod tests {
    use jiff::civil::date;
    use referral_proto::v1::InvolvedChild;

    use super::*;
    use crate::validation::tests::sample;

    #[test]
    fn counts_follow_the_reports_and_name_nobody() {
        let a = sample(date(2026, 11, 2));
        let mut b = sample(date(2026, 11, 3));
        b.reporter_status = ReporterStatus::Parent as i32;
        b.behaviours = vec![
            ProblemBehaviour::FightOrPhysicalAggression as i32,
            ProblemBehaviour::Other as i32,
        ];
        b.children.push(InvolvedChild {
            full_name: "Айым Болатқызы".into(),
            role: IncidentRole::Both as i32,
            risk_tier: RiskTier::NotAtRisk as i32,
            iin: String::new(),
        });
        let reports = [
            MonthReport {
                report: &a,
                investigation_finished: true,
            },
            MonthReport {
                report: &b,
                investigation_finished: false,
            },
        ];
        let e = compute("№1 мектеп", 2026, 11, &reports);
        assert_eq!(e.total_reports, 2);
        assert_eq!((e.reported_by_teachers, e.reported_by_parents), (1, 1));
        assert_eq!(e.forms_d_completed, 1);
        assert_eq!(
            e.behaviours,
            vec![
                BehaviourCount {
                    behaviour: ProblemBehaviour::FightOrPhysicalAggression as i32,
                    count: 2
                },
                BehaviourCount {
                    behaviour: ProblemBehaviour::Other as i32,
                    count: 1
                },
            ]
        );
        assert_eq!((e.perpetrators, e.victims, e.witnesses), (3, 3, 2));
        assert_eq!(
            (
                e.children_not_at_risk,
                e.children_at_risk,
                e.children_high_risk
            ),
            (1, 2, 2)
        );
        assert_eq!(e.children_injured, 2);
        let csv = String::from_utf8(csv(&e)).unwrap();
        assert!(!csv.contains("Ерасыл") && !csv.contains("Айым"));
        let lines: Vec<&str> = csv.trim_start_matches('\u{FEFF}').lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("Мектептің атауы,Айы,"));
        assert!(lines[1].starts_with("Наименование школы,Месяц,"));
        assert!(lines[2].starts_with("№1 мектеп,2026-11,2,0,1,0,1,0,1,"));
        assert!(!xlsx(&e).unwrap().is_empty());
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("«a» \"b\""), "\"«a» \"\"b\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
