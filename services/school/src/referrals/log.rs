//! The monthly log J (J ҚОСЫМШАСЫ, M:4757-4796): one row per referral of a pupil to a service
//! outside education made in the month, and its exports.
//!
//! The headings are the form's own, in Kazakh (M:4766-4796), with Russian translations. J names
//! pupils: its exports are personal data, for the school and the district's commission only.

use referral_proto::v1::{ReferralLog, ReferralLogRow};

/// The column headings of J, Kazakh (from the form) and Russian.
pub const HEADINGS: [(&str, &str); 6] = [
    ("Оқушының аты", "Имя учащегося"),
    (
        "Оқушы жіберілген білім беруші секторға жатпайтын қызмет атауы",
        "Наименование службы вне сферы образования, в которую направлен учащийся",
    ),
    (
        "Оқушының білім беруші секторға жатпайтын қызметтен алатын қолдауы",
        "Поддержка, получаемая учащимся от службы вне сферы образования",
    ),
    ("Жіберілген күн", "Дата направления"),
    ("Байланыс жасаушы адам", "Контактное лицо"),
    ("Тексерген күн", "Дата проверки"),
];

pub use crate::summary::{CSV_CONTENT_TYPE, XLSX_CONTENT_TYPE};

/// The file name of an export.
pub fn file_name(agency_id: &str, j: &ReferralLog, extension: &str) -> String {
    format!(
        "referral-log-{agency_id}-{:04}-{:02}.{extension}",
        j.year, j.month
    )
}

fn date_text(d: Option<&referral_proto::v1::CalendarDate>) -> String {
    d.filter(|d| d.year != 0)
        .map(|d| format!("{:04}-{:02}-{:02}", d.year, d.month, d.day))
        .unwrap_or_default()
}

fn cells(row: &ReferralLogRow) -> [String; 6] {
    [
        row.pupil_name.clone(),
        row.service.clone(),
        row.support_received.clone(),
        date_text(row.date_referred.as_ref()),
        row.contact_person.clone(),
        date_text(row.date_checked.as_ref()),
    ]
}

/// J as CSV (RFC 4180, UTF-8 with a byte-order mark so that spreadsheet programs read the
/// Cyrillic right): a row of Kazakh headings, a row of Russian headings, a row per referral.
pub fn csv(j: &ReferralLog) -> Vec<u8> {
    crate::summary::csv_table(
        [
            HEADINGS.map(|(kk, _)| kk.to_owned()).to_vec(),
            HEADINGS.map(|(_, ru)| ru.to_owned()).to_vec(),
        ]
        .into_iter()
        .chain(j.rows.iter().map(|row| cells(row).to_vec())),
    )
}

/// J as an XLSX workbook with one sheet laid out like the CSV.
pub fn xlsx(j: &ReferralLog) -> Result<Vec<u8>, rust_xlsxwriter::XlsxError> {
    let mut workbook = rust_xlsxwriter::Workbook::new();
    let bold = rust_xlsxwriter::Format::new().set_bold().set_text_wrap();
    let sheet = workbook.add_worksheet();
    sheet.set_name(format!("J {:04}-{:02}", j.year, j.month))?;
    for (i, (kk, ru)) in HEADINGS.iter().enumerate() {
        let col = u16::try_from(i).unwrap_or(u16::MAX);
        sheet.set_column_width(col, 28)?;
        sheet.write_string_with_format(0, col, *kk, &bold)?;
        sheet.write_string_with_format(1, col, *ru, &bold)?;
    }
    for (r, row) in j.rows.iter().enumerate() {
        let at = u32::try_from(r + 2).unwrap_or(u32::MAX);
        for (c, value) in cells(row).iter().enumerate() {
            sheet.write_string(at, u16::try_from(c).unwrap_or(u16::MAX), value)?;
        }
    }
    workbook.save_to_buffer()
}

#[cfg(test)]
mod tests {
    use referral_core::validate::to_calendar_date;

    use super::*;

    #[test]
    fn csv_has_both_headings_and_a_line_per_referral() {
        let j = ReferralLog {
            school_name: "№1 мектеп".into(),
            year: 2026,
            month: 11,
            rows: vec![ReferralLogRow {
                pupil_name: "Ерасыл Нұрланұлы".into(),
                service: "«Бала қорғаны», қоры".into(),
                support_received: String::new(),
                date_referred: Some(to_calendar_date(jiff::civil::date(2026, 11, 20))),
                contact_person: "Асель Нұрова".into(),
                date_checked: None,
            }],
            ..Default::default()
        };
        let text = String::from_utf8(csv(&j)).unwrap();
        let lines: Vec<&str> = text.trim_start_matches('\u{FEFF}').lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("Оқушының аты,"));
        assert!(lines[1].starts_with("Имя учащегося,"));
        assert_eq!(
            lines[2],
            "Ерасыл Нұрланұлы,\"«Бала қорғаны», қоры\",,2026-11-20,Асель Нұрова,"
        );
        assert!(!xlsx(&j).unwrap().is_empty());
    }
}
