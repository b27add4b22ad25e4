//! Output for people and scripts: a small aligned-table printer, aligned "label: value" blocks,
//! names of protobuf enums, and instants shown in the district's time zone.
//!
//! Widths are counted in characters, which is right for the Latin, Kazakh and Russian Cyrillic
//! text the hub shows (every one of those letters takes one column in a terminal).

use std::fmt::Write as _;

use jiff::{Timestamp, tz::TimeZone};

/// Whether the command prints tables for people or JSON for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

/// Writes the CLI's output to stdout. When the reader has gone away (a closed pipe, as after
/// `| head -1`), the command ends at once and quietly, as a command killed by `SIGPIPE` would
/// (Rust ignores that signal, so `print!` would panic instead), but with status 0 rather than
/// 141: the reader chose to stop reading, which is no failure of the command. Any other failure
/// to write ends it with one line on stderr and status 1. Only the CLI's commands print here;
/// the servers (`up`, `gateway`, `agency`) log through `tracing`.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(args).and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }
}

/// Prints a JSON value, pretty, on stdout.
pub fn print_json(value: &serde_json::Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// The number of terminal columns `s` takes (one per character, see the module docs).
fn width(s: &str) -> usize {
    s.chars().count()
}

/// A table with a header row; columns are padded to their widest cell, separated by two spaces.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped. Line breaks inside a cell
    /// are shown as spaces so that one row stays one line.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut row: Vec<String> = cells
            .into_iter()
            .map(|c| one_line(&c.into()))
            .take(self.headers.len())
            .collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, each ending with a line feed; no trailing spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', w - width(cell)));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Lines of "label  value", with the values of one block starting in the same column. A value
/// of several lines continues in that column.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    rows: Vec<(String, String)>,
}

impl Fields {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, label: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.rows.push((label.into(), value.into()));
        self
    }

    /// The block as text, each line starting with `indent` spaces.
    pub fn render(&self, indent: usize) -> String {
        let label_width = self
            .rows
            .iter()
            .map(|(l, _)| width(l) + 1)
            .max()
            .unwrap_or(0);
        let pad = " ".repeat(indent);
        let mut out = String::new();
        for (label, value) in &self.rows {
            let mut lines = value.lines();
            let first = lines.next().unwrap_or("");
            let head = if label.is_empty() {
                String::new()
            } else {
                format!("{label}:")
            };
            let line = format!(
                "{pad}{head}{}  {first}",
                " ".repeat(label_width - width(&head))
            );
            let _ = writeln!(out, "{}", line.trim_end());
            for more in lines {
                let line = format!("{pad}{}  {more}", " ".repeat(label_width));
                let _ = writeln!(out, "{}", line.trim_end());
            }
        }
        out
    }
}

/// Line breaks and tabs as spaces.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The short name of a protobuf enum value: `REFERRAL_STATUS_IN_PROGRESS` with prefix
/// `REFERRAL_STATUS_` becomes `in_progress`.
pub fn enum_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
}

/// A protobuf timestamp as an instant, if it is a valid one.
pub fn instant(t: &prost_types::Timestamp) -> Option<Timestamp> {
    Timestamp::new(t.seconds, t.nanos).ok()
}

/// An instant for people, in `tz`: `2025-03-10 10:00 +05:00`; empty when absent.
pub fn local_time(t: Option<&prost_types::Timestamp>, tz: &TimeZone) -> String {
    t.and_then(instant)
        .map(|t| {
            t.to_zoned(tz.clone())
                .strftime("%Y-%m-%d %H:%M %:z")
                .to_string()
        })
        .unwrap_or_default()
}

/// A calendar date for scripts: `YYYY-MM-DD`, or JSON null when absent.
pub fn json_date(d: Option<referral_proto::v1::CalendarDate>) -> Option<String> {
    d.map(|d| format!("{:04}-{:02}-{:02}", d.year, d.month, d.day))
}

/// An instant for scripts: RFC 3339 in UTC, or JSON null when absent.
pub fn json_time(t: Option<&prost_types::Timestamp>) -> serde_json::Value {
    t.and_then(instant)
        .map(|t| serde_json::Value::String(t.to_string()))
        .unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns_to_the_widest_cell_counting_characters() {
        let mut t = Table::new(["AGENCY", "USER", "NAME"]);
        t.row(["school-1", "director", "Гүлнар Әбенова"]);
        t.row(["commission", "secretary", "Айгүл"]);
        assert_eq!(
            t.render(),
            "AGENCY      USER       NAME\n\
             school-1    director   Гүлнар Әбенова\n\
             commission  secretary  Айгүл\n"
        );
    }

    #[test]
    fn table_rows_stay_on_one_line_and_keep_the_header_width() {
        let mut t = Table::new(["A", "B"]);
        t.row(["x\ny"]);
        t.row(["1", "2", "dropped"]);
        assert_eq!(t.render(), "A    B\nx y\n1    2\n");
        assert!(!t.is_empty());
        assert_eq!(Table::new(["ONLY"]).render(), "ONLY\n");
    }

    #[test]
    fn fields_align_values_and_continue_multiline_values() {
        let mut f = Fields::new();
        f.add("Аты-жөні / ФИО", "Әлия")
            .add("Age", "12\nyears")
            .add("", "continued");
        assert_eq!(
            f.render(2),
            "  Аты-жөні / ФИО:  Әлия\n  Age:             12\n                   years\n                   continued\n"
        );
    }

    #[test]
    fn enum_names_and_times_read_well() {
        assert_eq!(
            enum_name("REFERRAL_STATUS_IN_PROGRESS", "REFERRAL_STATUS_"),
            "in_progress"
        );
        let t = prost_types::Timestamp {
            seconds: 1_741_582_800, // 2025-03-10T05:00:00Z
            nanos: 0,
        };
        let almaty = TimeZone::get("Asia/Almaty").unwrap();
        assert_eq!(local_time(Some(&t), &almaty), "2025-03-10 10:00 +05:00");
        assert_eq!(local_time(None, &almaty), "");
        assert_eq!(json_time(Some(&t)), "2025-03-10T05:00:00Z");
    }
}
