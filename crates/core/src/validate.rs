//! Validation of the requests that carry forms: every field of the help request K and of the
//! commission's decision on it.
//!
//! Validators add one [`FieldViolations`] entry per bad field (at most one per field), with the
//! field's path in the request (`help_request.child.full_name`, `help_request.destinations[1]`) and
//! a description of what is expected. Descriptions never repeat the submitted value, so that no
//! personal data reaches an error message or a log line.
//!
//! Common rules for text:
//! - "required" is trim-aware: a value of only whitespace counts as missing;
//! - lengths are counted in characters (Unicode scalar values), not bytes, so Kazakh and Russian
//!   Cyrillic (ә і ң ғ ү ұ қ ө һ ...) count the same as Latin;
//! - control characters are refused everywhere, except line feed and tab (and a carriage return
//!   directly before a line feed) in the long free-text fields; bidirectional-override characters,
//!   which can make a printed name read differently from what is stored, are refused as well;
//! - a person's name must contain at least one letter.

use jiff::{Span, Timestamp, civil::Date, tz::TimeZone};
use referral_proto::v1::{
    CalendarDate, ChildReferred, Consultation, DecideHelpRequestRequest, HelpRequest, IncidentRole,
    ParentInfo, ReferralDestination, ReferringPerson, ReportCircumstances, Sex, Signature,
    decide_help_request_request::Outcome,
};

use crate::{error::FieldViolations, iin};

/// The oldest age form K accepts: a child is under 18, and a child who has just turned 18 (whose
/// referral was prepared before the birthday) is still accepted, so the rule is "under 19".
pub const MAX_CHILD_AGE_YEARS: i32 = 18;

/// How far in the future a signature's time may be, to allow for clock skew between machines.
pub const SIGNATURE_CLOCK_SKEW_MINUTES: i64 = 5;

/// Length bounds of an idempotency key, in characters.
pub const IDEMPOTENCY_KEY_MIN: usize = 8;
pub const IDEMPOTENCY_KEY_MAX: usize = 128;

/// Each known destination at most once: a list longer than this cannot be valid.
const MAX_DESTINATIONS: usize = 6;

/// The rule for one text field. Every form checks its text through it, in the agencies and in
/// the gateway, so that the same field is judged the same way everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Text {
    required: bool,
    /// Minimum length of the trimmed value, in characters (checked when the value is present).
    min: usize,
    /// Maximum length of the value as sent, in characters.
    max: usize,
    /// Line feeds and tabs allowed (long free text).
    multiline: bool,
    /// A person's name: must contain a letter.
    name: bool,
}

impl Text {
    /// A required value of `min` to `max` characters (the minimum applies to the trimmed value).
    pub const fn required(min: usize, max: usize) -> Self {
        Self {
            required: true,
            min,
            max,
            multiline: false,
            name: false,
        }
    }

    /// An optional value of at most `max` characters.
    pub const fn optional(max: usize) -> Self {
        Self {
            required: false,
            min: 0,
            max,
            multiline: false,
            name: false,
        }
    }

    /// Free text: line breaks and tabs allowed.
    pub const fn multiline(self) -> Self {
        Self {
            multiline: true,
            ..self
        }
    }

    /// A person's name: must contain a letter.
    pub const fn name(self) -> Self {
        Self { name: true, ..self }
    }
}

/// A person's full name: required, 2 to 200 characters, with a letter.
pub const PERSON_NAME: Text = Text::required(2, 200).name();
/// A person's name that may be left empty.
pub const OPTIONAL_PERSON_NAME: Text = Text::optional(200).name();
/// A position, a relation, a short label: required, at most 200 characters.
pub const SHORT_TEXT: Text = Text::required(1, 200);
/// The longest free-text field, in characters.
pub const LONG_TEXT_MAX: usize = 4000;
/// Free text of a form section: optional, at most 4000 characters, line breaks allowed.
pub const LONG_TEXT: Text = Text::optional(LONG_TEXT_MAX).multiline();
/// Free text a form cannot do without.
pub const REQUIRED_LONG_TEXT: Text = Text::required(1, LONG_TEXT_MAX).multiline();
const ADDRESS: Text = Text::optional(500);

/// Checks one text field against `rule`, adding at most one violation: too long, then missing
/// (whitespace-only counts as missing), then control characters, then too short, then a name
/// without a letter.
pub fn text(v: &mut FieldViolations, field: &str, value: &str, rule: Text) {
    let len = value.chars().count();
    if len > rule.max {
        v.add(field, format!("must be at most {} characters", rule.max));
        return;
    }
    let trimmed = value.trim();
    if trimmed.is_empty() {
        if rule.required {
            v.add(field, "required");
        } else if has_forbidden_control(value, rule.multiline) {
            v.add(field, control_description(rule.multiline));
        }
        return;
    }
    if has_forbidden_control(value, rule.multiline) {
        v.add(field, control_description(rule.multiline));
        return;
    }
    if trimmed.chars().count() < rule.min {
        v.add(field, format!("must be at least {} characters", rule.min));
        return;
    }
    if rule.name && !trimmed.chars().any(char::is_alphabetic) {
        v.add(field, "must contain letters");
    }
}

fn control_description(multiline: bool) -> &'static str {
    if multiline {
        "must not contain control characters other than line breaks and tabs"
    } else {
        "must not contain control characters or line breaks"
    }
}

/// Whether `value` holds a control character not allowed in this kind of field.
fn has_forbidden_control(value: &str, multiline: bool) -> bool {
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        let allowed = match c {
            '\n' | '\t' => multiline,
            '\r' => multiline && chars.peek() == Some(&'\n'),
            // Bidirectional embeddings, overrides and isolates.
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => false,
            c => !c.is_control(),
        };
        if !allowed {
            return true;
        }
    }
    false
}

/// `prefix.field`, or `field` alone when there is no prefix.
fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else {
        format!("{prefix}.{field}")
    }
}

/// A protobuf calendar date as a civil date; `None` when it is unset (all zero), the year is not
/// 1 to 9999, or the month and day do not make a real date (30 February).
pub fn calendar_date(d: &CalendarDate) -> Option<Date> {
    if !(1..=9999).contains(&d.year) {
        return None;
    }
    let year = i16::try_from(d.year).ok()?;
    let month = i8::try_from(d.month).ok()?;
    let day = i8::try_from(d.day).ok()?;
    Date::new(year, month, day).ok()
}

/// A civil date as a protobuf calendar date.
pub fn to_calendar_date(d: Date) -> CalendarDate {
    CalendarDate {
        year: i32::from(d.year()),
        month: i32::from(d.month()),
        day: i32::from(d.day()),
    }
}

/// Completed years of age on `on` of someone born on `date_of_birth` (negative when `on` is
/// before the birth). Someone born on 29 February turns a year older on 1 March in common years.
pub fn age_years(date_of_birth: Date, on: Date) -> i32 {
    let mut age = i32::from(on.year()) - i32::from(date_of_birth.year());
    if (on.month(), on.day()) < (date_of_birth.month(), date_of_birth.day()) {
        age -= 1;
    }
    age
}

/// Checks an idempotency key: 8 to 128 printable ASCII characters, no spaces.
pub fn idempotency_key(key: &str, field: &str, v: &mut FieldViolations) {
    if key.trim().is_empty() {
        v.add(field, "required");
        return;
    }
    let len = key.chars().count();
    if !(IDEMPOTENCY_KEY_MIN..=IDEMPOTENCY_KEY_MAX).contains(&len) {
        v.add(
            field,
            format!("must be {IDEMPOTENCY_KEY_MIN} to {IDEMPOTENCY_KEY_MAX} characters"),
        );
        return;
    }
    if !key.chars().all(|c| c.is_ascii_graphic()) {
        v.add(
            field,
            "must contain only printable ASCII characters, without spaces",
        );
    }
}

/// Checks every field of a help request K, adding violations under `prefix` (for example
/// `help_request`, giving `help_request.child.full_name`).
///
/// `now` is the current instant and `tz` the district's time zone: the child's age and "not in
/// the future" for the date of birth are judged on today's date in `tz`; the signature may be at
/// most [`SIGNATURE_CLOCK_SKEW_MINUTES`] after `now`.
pub fn help_request(
    k: &HelpRequest,
    now: Timestamp,
    tz: &TimeZone,
    v: &mut FieldViolations,
    prefix: &str,
) {
    let today = now.to_zoned(tz.clone()).date();
    let field = |name: &str| join(prefix, name);

    match &k.child {
        Some(child) => child_referred(child, today, v, &field("child")),
        None => v.add(field("child"), "required"),
    }
    match &k.referrer {
        Some(referrer) => referring_person(referrer, v, &field("referrer")),
        None => v.add(field("referrer"), "required"),
    }
    if let Some(mother) = &k.mother {
        parent(mother, v, &field("mother"));
    }
    if let Some(father) = &k.father {
        parent(father, v, &field("father"));
    }
    text(
        v,
        &field("problem_description"),
        &k.problem_description,
        Text::required(1, LONG_TEXT_MAX).multiline(),
    );
    text(
        v,
        &field("recurrence"),
        &k.recurrence,
        Text::required(1, 500).multiline(),
    );
    destinations(k, v, prefix);
    text(
        v,
        &field("measures_plan"),
        &k.measures_plan,
        Text::optional(LONG_TEXT_MAX).multiline(),
    );
    text(
        v,
        &field("prevention_effect"),
        &k.prevention_effect,
        Text::required(1, LONG_TEXT_MAX).multiline(),
    );
    match &k.signature {
        Some(signature) => signature_block(signature, now, v, &field("signature")),
        None => v.add(field("signature"), "required"),
    }
    if let Some(c) = &k.circumstances {
        circumstances(c, v, &field("circumstances"));
    }
}

/// Whether a text holds something that identifies a child by number: twelve digits in a row
/// that are a valid IIN (check digit and birth date).
pub fn holds_iin(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        if !bytes[start].is_ascii_digit() {
            start += 1;
            continue;
        }
        let end = bytes[start..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(bytes.len(), |n| start + n);
        // Any 12-digit window of a run of digits.
        let run = &text[start..end];
        if run.len() >= 12
            && (0..=run.len() - 12).any(|i| crate::iin::parse(&run[i..i + 12]).is_ok())
        {
            return true;
        }
        start = end;
    }
    false
}

/// Text that must not identify a child (consultations, aggregate reports): refused when it
/// holds an IIN. Names cannot be told from other words; the form has no field for them.
pub fn no_identity(v: &mut FieldViolations, field: &str, value: &str) {
    if holds_iin(value) {
        v.add(
            field,
            "must not identify the child: it holds an IIN (ЖСН/ИИН); describe the concern without it",
        );
    }
}

/// A consultation about a concern, without the child's or family's identity (P:153-157).
pub fn consultation(c: &Consultation, v: &mut FieldViolations, prefix: &str) {
    let field = |name: &str| join(prefix, name);
    text(
        v,
        &field("concern"),
        &c.concern,
        Text::required(10, LONG_TEXT_MAX).multiline(),
    );
    text(
        v,
        &field("question"),
        &c.question,
        Text::required(3, 2000).multiline(),
    );
    text(
        v,
        &field("consulted_by"),
        &c.consulted_by,
        Text::required(1, 200),
    );
    if c.child_age_years > 18 {
        v.add(field("child_age_years"), "at most 18");
    }
    no_identity(v, &field("concern"), &c.concern);
    no_identity(v, &field("question"), &c.question);
    no_identity(v, &field("consulted_by"), &c.consulted_by);
}

/// Who must not learn of a report and the incident it belongs to. Whether the agencies exist is
/// the gateway's check (it has the directory).
fn circumstances(c: &ReportCircumstances, v: &mut FieldViolations, prefix: &str) {
    let field = |name: &str| join(prefix, name);
    for (name, value) in [
        ("child_residence_agency_id", &c.child_residence_agency_id),
        (
            "implicated_director_agency_id",
            &c.implicated_director_agency_id,
        ),
    ] {
        text(v, &field(name), value, Text::optional(100));
    }
    text(
        v,
        &field("incident_reference"),
        &c.incident_reference,
        Text::optional(100),
    );
    let role = IncidentRole::try_from(c.incident_role).unwrap_or(IncidentRole::Unspecified);
    if c.incident_reference.trim().is_empty() {
        if c.incident_role != 0 {
            v.add(field("incident_role"), "only with an incident_reference");
        }
    } else if role == IncidentRole::Unspecified {
        v.add(
            field("incident_role"),
            "required with an incident_reference: perpetrator, victim, both or witness",
        );
    }
}

fn child_referred(c: &ChildReferred, today: Date, v: &mut FieldViolations, prefix: &str) {
    let field = |name: &str| join(prefix, name);
    text(v, &field("full_name"), &c.full_name, PERSON_NAME);
    text(
        v,
        &field("registered_address"),
        &c.registered_address,
        Text::required(1, 500),
    );

    // The date of birth, when it is usable for the checks that depend on it.
    let date_of_birth = match &c.date_of_birth {
        None => {
            v.add(field("date_of_birth"), "required");
            None
        }
        Some(d) if *d == CalendarDate::default() => {
            v.add(field("date_of_birth"), "required");
            None
        }
        Some(d) => match calendar_date(d) {
            None => {
                v.add(field("date_of_birth"), "must be a real calendar date");
                None
            }
            Some(born) if born > today => {
                v.add(field("date_of_birth"), "must not be in the future");
                None
            }
            Some(born) if age_years(born, today) > MAX_CHILD_AGE_YEARS => {
                v.add(
                    field("date_of_birth"),
                    format!(
                        "the child must be under {} years old",
                        MAX_CHILD_AGE_YEARS + 1
                    ),
                );
                None
            }
            Some(born) => Some(born),
        },
    };
    if let Some(born) = date_of_birth {
        let age = age_years(born, today);
        if i64::from(c.age_years) != i64::from(age) {
            v.add(
                field("age_years"),
                "must equal the age computed from date_of_birth",
            );
        }
    }

    let sex = match Sex::try_from(c.sex) {
        Ok(Sex::Unspecified) => {
            v.add(field("sex"), "required");
            None
        }
        Ok(sex) => Some(sex),
        Err(_) => {
            v.add(field("sex"), "unknown value");
            None
        }
    };

    text(
        v,
        &field("school_name"),
        &c.school_name,
        Text::optional(200),
    );
    text(v, &field("class_name"), &c.class_name, Text::optional(200));

    if !c.iin.is_empty() {
        match iin::parse(&c.iin) {
            Err(err) => v.add(field("iin"), err.to_string()),
            Ok(iin) => {
                if date_of_birth.is_some_and(|born| born != iin.birth_date()) {
                    v.add(
                        field("iin"),
                        "the birth date in the IIN does not match date_of_birth",
                    );
                } else if sex.is_some_and(|sex| sex != iin.sex()) {
                    v.add(field("iin"), "the sex digit in the IIN does not match sex");
                }
            }
        }
    }
}

fn referring_person(r: &ReferringPerson, v: &mut FieldViolations, prefix: &str) {
    let field = |name: &str| join(prefix, name);
    text(v, &field("full_name"), &r.full_name, PERSON_NAME);
    text(v, &field("position"), &r.position, Text::required(1, 200));
    phone(v, &field("phone"), &r.phone);
    text(v, &field("address"), &r.address, ADDRESS);
    text(v, &field("workplace"), &r.workplace, Text::required(1, 300));
}

fn parent(p: &ParentInfo, v: &mut FieldViolations, prefix: &str) {
    let field = |name: &str| join(prefix, name);
    text(v, &field("full_name"), &p.full_name, PERSON_NAME);
    text(v, &field("address"), &p.address, ADDRESS);
    text(v, &field("occupation"), &p.occupation, Text::optional(500));
}

/// A phone number: required, 5 to 30 characters of digits, spaces, `+`, `-` and parentheses,
/// with at least 5 digits.
fn phone(v: &mut FieldViolations, field: &str, value: &str) {
    if value.trim().is_empty() {
        v.add(field, "required");
        return;
    }
    let len = value.chars().count();
    if !(5..=30).contains(&len) {
        v.add(field, "must be 5 to 30 characters");
        return;
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '+' | '-' | '(' | ')'))
    {
        v.add(
            field,
            "may contain only digits, spaces, '+', '-' and parentheses",
        );
        return;
    }
    if value.chars().filter(char::is_ascii_digit).count() < 5 {
        v.add(field, "must contain at least 5 digits");
    }
}

/// Destinations: at least one, all known, none twice; `destination_other` iff OTHER is chosen.
fn destinations(k: &HelpRequest, v: &mut FieldViolations, prefix: &str) {
    let field = join(prefix, "destinations");
    let has_other = k
        .destinations
        .contains(&(ReferralDestination::Other as i32));
    if k.destinations.is_empty() {
        v.add(field, "at least one destination is required");
    } else if k.destinations.len() > MAX_DESTINATIONS {
        v.add(field, format!("at most {MAX_DESTINATIONS} destinations"));
    } else {
        let mut seen = Vec::with_capacity(k.destinations.len());
        for (i, &d) in k.destinations.iter().enumerate() {
            let item = format!("{field}[{i}]");
            match ReferralDestination::try_from(d) {
                Ok(ReferralDestination::Unspecified) => v.add(item, "must be specified"),
                Err(_) => v.add(item, "unknown value"),
                Ok(dest) if seen.contains(&dest) => v.add(item, "duplicate destination"),
                Ok(dest) => seen.push(dest),
            }
        }
    }

    let other_field = join(prefix, "destination_other");
    if has_other {
        text(
            v,
            &other_field,
            &k.destination_other,
            Text::required(1, 500),
        );
    } else if !k.destination_other.is_empty() {
        v.add(
            other_field,
            "must be empty unless destinations include OTHER",
        );
    }
}

fn signature_block(s: &Signature, now: Timestamp, v: &mut FieldViolations, prefix: &str) {
    let field = |name: &str| join(prefix, name);
    text(v, &field("signer_name"), &s.signer_name, PERSON_NAME);
    match &s.signed_at {
        None => v.add(field("signed_at"), "required"),
        Some(t) => match proto_timestamp(t) {
            None => v.add(field("signed_at"), "must be a valid timestamp"),
            Some(signed_at) => {
                let skew = jiff::SignedDuration::from_mins(SIGNATURE_CLOCK_SKEW_MINUTES);
                if signed_at.duration_since(now) > skew {
                    v.add(field("signed_at"), "must not be in the future");
                }
            }
        },
    }
}

/// A protobuf timestamp as an instant; `None` when it is out of range or not normalised.
fn proto_timestamp(t: &prost_types::Timestamp) -> Option<Timestamp> {
    if t.nanos < 0 {
        return None;
    }
    Timestamp::new(t.seconds, t.nanos).ok()
}

/// Checks a decision request on a help request. Field paths are those of the request:
/// `message_id`, `idempotency_key`, `outcome`, `open_case.curator_user_id`,
/// `no_further_action.reason`.
pub fn decide_help_request(req: &DecideHelpRequestRequest, v: &mut FieldViolations) {
    if req.message_id.trim().is_empty() {
        v.add("message_id", "required");
    } else if req.message_id.len() != 36 || uuid::Uuid::parse_str(&req.message_id).is_err() {
        v.add(
            "message_id",
            "must be a UUID (8-4-4-4-12 hexadecimal digits)",
        );
    }
    idempotency_key(&req.idempotency_key, "idempotency_key", v);
    match &req.outcome {
        None => v.add("outcome", "required: open_case or no_further_action"),
        Some(Outcome::OpenCase(open)) => text(
            v,
            "open_case.curator_user_id",
            &open.curator_user_id,
            Text::required(1, 200),
        ),
        Some(Outcome::NoFurtherAction(nfa)) => text(
            v,
            "no_further_action.reason",
            &nfa.reason,
            Text::required(3, 2000).multiline(),
        ),
    }
}

/// A complete, valid help request K for demos and tests: a 12-year-old girl, Әлия Серікқызы
/// Нұрланова, with an IIN that matches her date of birth and sex, referred by her school's
/// psychologist, signed by the director the day before `today` (at 04:00 UTC, 09:00 in Almaty).
///
/// It validates with [`help_request`] for any `now` whose date, in any time zone, is `today` or
/// up to a couple of months later. All the people in it are invented.
pub fn sample_help_request(today: Date) -> HelpRequest {
    let born = today.saturating_sub(Span::new().years(12).months(3).days(10));
    let age = u32::try_from(age_years(born, today)).unwrap_or_default();
    let iin = (4821..=9999)
        .chain(0..4821)
        .find_map(|serial| iin::Iin::generate(born, Sex::Female, serial))
        .map(iin::Iin::into_string)
        .unwrap_or_default();
    let signed_on = today.yesterday().unwrap_or(today);
    let signed_at = TimeZone::UTC
        .to_timestamp(signed_on.at(4, 0, 0, 0))
        .ok()
        .map(|t| prost_types::Timestamp {
            seconds: t.as_second(),
            nanos: t.subsec_nanosecond(),
        });

    HelpRequest {
        circumstances: None,
        child: Some(ChildReferred {
            full_name: "Әлия Серікқызы Нұрланова".into(),
            registered_address: "Алматы қ., Әуезов ауданы, Жетісу-2 ш.а., 14-үй, 27-пәтер".into(),
            date_of_birth: Some(to_calendar_date(born)),
            age_years: age,
            sex: Sex::Female as i32,
            school_name: "№ 125 жалпы білім беретін мектеп-гимназия".into(),
            class_name: "6 «Ә»".into(),
            iin,
        }),
        referrer: Some(ReferringPerson {
            full_name: "Гүлнар Асқарқызы Төлеуова".into(),
            position: "Мектеп психологы".into(),
            address: "Алматы қ., Әуезов ауданы, Жетісу-2 ш.а., 70а".into(),
            phone: "+7 (727) 255-14-32".into(),
            workplace: "Алматы қаласы Білім басқармасының «№ 125 мектеп-гимназия» КММ".into(),
        }),
        mother: Some(ParentInfo {
            full_name: "Сәуле Бекқызы Нұрланова".into(),
            address: "Алматы қ., Әуезов ауданы, Жетісу-2 ш.а., 14-үй, 27-пәтер".into(),
            occupation: "Сатушы".into(),
        }),
        father: Some(ParentInfo {
            full_name: "Серік Қанатұлы Нұрланов".into(),
            address: "Қарағанды облысы, Теміртау қ.".into(),
            occupation: "Вахталық жұмысшы".into(),
        }),
        problem_description: "Оқушы соңғы екі айда сабаққа жиі кешігеді, сыныптастарымен \
                              араласпайды, қолында көгерген іздер байқалды.\n\
                              Сынып жетекшісімен әңгімеде үйде ұрсыс болатынын айтты."
            .into(),
        recurrence: "Аптасына 2-3 рет".into(),
        destinations: vec![
            ReferralDestination::Commission as i32,
            ReferralDestination::PsychologicalServices as i32,
        ],
        destination_other: String::new(),
        measures_plan: "Баланың жағдайын кешенді бағалау; психологтың жеке кеңесі; \
                        отбасымен әлеуметтік жұмыс."
            .into(),
        prevention_effect: "Мектеп психологымен 4 жеке кездесу өтті, анасымен екі рет \
                            әңгіме жүргізілді; мінез-құлқында оң өзгеріс байқалмады."
            .into(),
        signature: Some(Signature {
            signer_name: "Ержан Болатұлы Сейітов".into(),
            signed_at,
        }),
    }
}

#[cfg(test)]
mod tests {
    use jiff::civil::date;

    use super::*;

    const P: &str = "help_request";

    fn almaty() -> TimeZone {
        TimeZone::get("Asia/Almaty").unwrap()
    }

    /// 2025-03-10 10:00 in Almaty (UTC+5).
    fn now() -> Timestamp {
        "2025-03-10T05:00:00Z".parse().unwrap()
    }

    fn today() -> Date {
        date(2025, 3, 10)
    }

    fn check(k: &HelpRequest) -> FieldViolations {
        let mut v = FieldViolations::new();
        help_request(k, now(), &almaty(), &mut v, P);
        v
    }

    fn fields(v: &FieldViolations) -> Vec<String> {
        let mut f: Vec<String> = v.iter().map(|x| x.field.clone()).collect();
        f.sort();
        f
    }

    fn sample() -> HelpRequest {
        sample_help_request(today())
    }

    fn child(k: &mut HelpRequest) -> &mut ChildReferred {
        k.child.as_mut().unwrap()
    }

    #[test]
    fn sample_is_valid() {
        let v = check(&sample());
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn sample_is_valid_on_many_days_and_zones() {
        let zones = [
            "Asia/Almaty",
            "UTC",
            "Pacific/Kiritimati",
            "Pacific/Pago_Pago",
        ];
        let mut day = date(2024, 1, 1);
        while day < date(2025, 1, 1) {
            for zone in zones {
                let tz = TimeZone::get(zone).unwrap();
                for hour in [0, 12, 23] {
                    let now = day.at(hour, 30, 0, 0).to_zoned(tz.clone()).unwrap();
                    let k = sample_help_request(now.date());
                    let mut v = FieldViolations::new();
                    help_request(&k, now.timestamp(), &tz, &mut v, P);
                    assert!(v.is_empty(), "{day} {zone} {hour}: {v:?}");
                }
            }
            day = day.tomorrow().unwrap();
        }
    }

    #[test]
    fn sample_has_a_matching_iin() {
        let k = sample();
        let c = k.child.as_ref().unwrap();
        let iin = iin::parse(&c.iin).unwrap();
        assert_eq!(
            Some(iin.birth_date()),
            calendar_date(c.date_of_birth.as_ref().unwrap())
        );
        assert_eq!(iin.sex(), Sex::Female);
        assert_eq!(c.age_years, 12);
    }

    #[test]
    fn empty_prefix_gives_bare_paths() {
        let mut k = sample();
        child(&mut k).full_name.clear();
        let mut v = FieldViolations::new();
        help_request(&k, now(), &almaty(), &mut v, "");
        assert_eq!(fields(&v), ["child.full_name"]);
    }

    #[test]
    fn missing_child_name() {
        let mut k = sample();
        child(&mut k).full_name = String::new();
        assert_eq!(fields(&check(&k)), ["help_request.child.full_name"]);
    }

    #[test]
    fn whitespace_only_names_fail() {
        let mut k = sample();
        child(&mut k).full_name = " \t ".into();
        k.referrer.as_mut().unwrap().full_name = "   ".into();
        k.mother.as_mut().unwrap().full_name = "\u{3000}".into();
        k.signature.as_mut().unwrap().signer_name = "  ".into();
        let v = check(&k);
        assert_eq!(
            fields(&v),
            [
                "help_request.child.full_name",
                "help_request.mother.full_name",
                "help_request.referrer.full_name",
                "help_request.signature.signer_name",
            ]
        );
        for x in v.iter() {
            assert_eq!(x.description, "required");
        }
        let mut k = sample();
        child(&mut k).full_name = "    ".into();
        let v = check(&k);
        assert_eq!(fields(&v), ["help_request.child.full_name"]);
        assert_eq!(v.iter().next().unwrap().description, "required");
    }

    #[test]
    fn wrong_iin_check_digit() {
        let mut k = sample();
        let c = child(&mut k);
        let last = c.iin.pop().unwrap();
        let wrong = if last == '9' { '0' } else { '9' };
        c.iin.push(wrong);
        let v = check(&k);
        assert_eq!(fields(&v), ["help_request.child.iin"]);
        assert_eq!(
            v.iter().next().unwrap().description,
            "check digit does not match"
        );
    }

    #[test]
    fn iin_must_match_birth_date_and_sex() {
        let born = date(2012, 5, 14);
        let mut k = sample();
        let c = child(&mut k);
        c.date_of_birth = Some(to_calendar_date(born));
        c.age_years = 12;
        c.iin = "120514601234".into();
        assert!(check(&k).is_empty());

        // Same person, one day off.
        child(&mut k).date_of_birth = Some(to_calendar_date(date(2012, 5, 15)));
        assert_eq!(fields(&check(&k)), ["help_request.child.iin"]);

        let mut k2 = k.clone();
        child(&mut k2).date_of_birth = Some(to_calendar_date(born));
        child(&mut k2).sex = Sex::Male as i32;
        assert_eq!(fields(&check(&k2)), ["help_request.child.iin"]);

        // Unknown IIN is fine.
        child(&mut k2).sex = Sex::Female as i32;
        child(&mut k2).iin.clear();
        assert!(check(&k2).is_empty());

        for bad in ["12051460123", "12051460123X", " 120514601234"] {
            child(&mut k2).iin = bad.into();
            assert_eq!(fields(&check(&k2)), ["help_request.child.iin"], "{bad}");
        }
    }

    #[test]
    fn future_birth_date() {
        let mut k = sample();
        let c = child(&mut k);
        c.date_of_birth = Some(to_calendar_date(date(2025, 3, 11)));
        c.age_years = 0;
        c.iin.clear();
        assert_eq!(fields(&check(&k)), ["help_request.child.date_of_birth"]);
        // With the IIN kept: an unusable date of birth is reported once, not again on the IIN.
        let mut k = sample();
        child(&mut k).date_of_birth = Some(to_calendar_date(date(2025, 3, 11)));
        child(&mut k).age_years = 0;
        let v = check(&k);
        assert_eq!(fields(&v), ["help_request.child.date_of_birth"]);
        assert_eq!(
            v.iter().next().unwrap().description,
            "must not be in the future"
        );
    }

    #[test]
    fn birth_date_today_is_age_zero() {
        let mut k = sample();
        let c = child(&mut k);
        c.date_of_birth = Some(to_calendar_date(today()));
        c.age_years = 0;
        c.iin.clear();
        assert!(check(&k).is_empty());
        child(&mut k).age_years = 1;
        assert_eq!(fields(&check(&k)), ["help_request.child.age_years"]);
    }

    #[test]
    fn birth_date_must_be_real_and_present() {
        for (d, expected) in [
            (None, "required"),
            (Some(CalendarDate::default()), "required"),
            (
                Some(CalendarDate {
                    year: 2015,
                    month: 2,
                    day: 29,
                }),
                "must be a real calendar date",
            ),
            (
                Some(CalendarDate {
                    year: 2015,
                    month: 13,
                    day: 1,
                }),
                "must be a real calendar date",
            ),
        ] {
            let mut k = sample();
            child(&mut k).date_of_birth = d;
            child(&mut k).iin.clear();
            let v = check(&k);
            assert_eq!(fields(&v), ["help_request.child.date_of_birth"]);
            assert_eq!(v.iter().next().unwrap().description, expected);
        }
    }

    #[test]
    fn age_limit_is_under_19() {
        let mut k = sample();
        let c = child(&mut k);
        c.iin.clear();
        // 18 today: accepted.
        c.date_of_birth = Some(to_calendar_date(date(2007, 3, 10)));
        c.age_years = 18;
        assert!(check(&k).is_empty());
        // 19 today: refused.
        child(&mut k).date_of_birth = Some(to_calendar_date(date(2006, 3, 10)));
        child(&mut k).age_years = 19;
        assert_eq!(fields(&check(&k)), ["help_request.child.date_of_birth"]);
    }

    #[test]
    fn age_must_match_birth_date() {
        let mut k = sample();
        child(&mut k).age_years = 13;
        assert_eq!(fields(&check(&k)), ["help_request.child.age_years"]);
        child(&mut k).age_years = 0;
        assert_eq!(fields(&check(&k)), ["help_request.child.age_years"]);
    }

    #[test]
    fn age_years_counts_completed_years() {
        assert_eq!(age_years(date(2010, 3, 10), date(2025, 3, 10)), 15);
        assert_eq!(age_years(date(2010, 3, 11), date(2025, 3, 10)), 14);
        assert_eq!(age_years(date(2012, 2, 29), date(2025, 2, 28)), 12);
        assert_eq!(age_years(date(2012, 2, 29), date(2025, 3, 1)), 13);
        assert_eq!(age_years(date(2025, 3, 11), date(2025, 3, 10)), -1);
    }

    #[test]
    fn sex_required_and_known() {
        let mut k = sample();
        child(&mut k).sex = Sex::Unspecified as i32;
        // The IIN cannot be compared with an unknown sex: only sex is reported.
        assert_eq!(fields(&check(&k)), ["help_request.child.sex"]);
        child(&mut k).sex = 7;
        assert_eq!(fields(&check(&k)), ["help_request.child.sex"]);
    }

    #[test]
    fn kazakh_russian_and_latin_names_are_accepted() {
        for name in [
            "Әлия Серікқызы Нұрланова",
            "Ғалымжан Үсенұлы Қөңһіров",
            "ӘІҢҒҮҰҚӨҺ әіңғүұқөһ",
            "Иванов Пётр Сергеевич",
            "Aliya Nurlanova",
            "Ким Д.",
            "O'Brien-Жақсылықова",
        ] {
            let mut k = sample();
            child(&mut k).full_name = name.into();
            assert!(check(&k).is_empty(), "{name}");
        }
    }

    #[test]
    fn names_count_characters_not_bytes() {
        let mut k = sample();
        // 200 two-byte Cyrillic letters: 400 bytes, 200 characters.
        child(&mut k).full_name = "ә".repeat(200);
        assert!(check(&k).is_empty());
        child(&mut k).full_name = "ә".repeat(201);
        assert_eq!(fields(&check(&k)), ["help_request.child.full_name"]);
        child(&mut k).full_name = "Ә".into();
        assert_eq!(fields(&check(&k)), ["help_request.child.full_name"]);
        child(&mut k).full_name = "12345".into();
        assert_eq!(fields(&check(&k)), ["help_request.child.full_name"]);
    }

    #[test]
    fn control_characters_are_refused() {
        for name in [
            "Әлия\nНұрланова",
            "Әлия\u{0}",
            "Әлия\u{7}Н",
            "Әлия\u{202E}авон",
        ] {
            let mut k = sample();
            child(&mut k).full_name = name.into();
            assert_eq!(fields(&check(&k)), ["help_request.child.full_name"]);
        }
        // Free text may hold line breaks and tabs, but not other controls or a lone CR.
        let mut k = sample();
        k.problem_description = "Бірінші жол.\r\nЕкінші жол.\n\tТретий.".into();
        assert!(check(&k).is_empty());
        k.problem_description = "Бірінші\rжол".into();
        assert_eq!(fields(&check(&k)), ["help_request.problem_description"]);
        k.problem_description = "Бірінші\u{1b}[31m".into();
        assert_eq!(fields(&check(&k)), ["help_request.problem_description"]);
    }

    #[test]
    fn long_texts_have_limits() {
        let mut k = sample();
        k.problem_description = "а".repeat(4000);
        k.measures_plan = "а".repeat(4000);
        k.prevention_effect = "а".repeat(4000);
        k.recurrence = "а".repeat(500);
        assert!(check(&k).is_empty());
        k.problem_description.push('а');
        k.measures_plan.push('а');
        k.prevention_effect.push('а');
        k.recurrence.push('а');
        assert_eq!(
            fields(&check(&k)),
            [
                "help_request.measures_plan",
                "help_request.prevention_effect",
                "help_request.problem_description",
                "help_request.recurrence",
            ]
        );
        let mut k = sample();
        k.measures_plan.clear();
        assert!(check(&k).is_empty());
        k.prevention_effect = " \n ".into();
        k.problem_description.clear();
        k.recurrence.clear();
        assert_eq!(
            fields(&check(&k)),
            [
                "help_request.prevention_effect",
                "help_request.problem_description",
                "help_request.recurrence",
            ]
        );
    }

    #[test]
    fn missing_blocks() {
        let mut k = sample();
        k.child = None;
        k.referrer = None;
        k.signature = None;
        k.mother = None;
        k.father = None;
        assert_eq!(
            fields(&check(&k)),
            [
                "help_request.child",
                "help_request.referrer",
                "help_request.signature",
            ]
        );
        let v = check(&HelpRequest::default());
        assert_eq!(
            fields(&v),
            [
                "help_request.child",
                "help_request.destinations",
                "help_request.prevention_effect",
                "help_request.problem_description",
                "help_request.recurrence",
                "help_request.referrer",
                "help_request.signature",
            ]
        );
    }

    #[test]
    fn empty_child_reports_every_required_field() {
        let mut k = sample();
        k.child = Some(ChildReferred::default());
        assert_eq!(
            fields(&check(&k)),
            [
                "help_request.child.date_of_birth",
                "help_request.child.full_name",
                "help_request.child.registered_address",
                "help_request.child.sex",
            ]
        );
    }

    #[test]
    fn referrer_rules() {
        let mut k = sample();
        k.referrer = Some(ReferringPerson::default());
        assert_eq!(
            fields(&check(&k)),
            [
                "help_request.referrer.full_name",
                "help_request.referrer.phone",
                "help_request.referrer.position",
                "help_request.referrer.workplace",
            ]
        );
        for (phone, ok) in [
            ("+7 (727) 255-14-32", true),
            ("87012345678", true),
            ("12345", true),
            ("1234", false),
            ("+7 701 ABC 45 67", false),
            ("+7-701-123-45-67 доб. 12", false),
            ("((((( )))))", false),
            ("1234567890123456789012345678901", false),
        ] {
            let mut k = sample();
            k.referrer.as_mut().unwrap().phone = phone.into();
            let v = check(&k);
            if ok {
                assert!(v.is_empty(), "{phone}: {v:?}");
            } else {
                assert_eq!(fields(&v), ["help_request.referrer.phone"], "{phone}");
            }
        }
        let mut k = sample();
        k.referrer.as_mut().unwrap().address.clear();
        assert!(check(&k).is_empty());
        k.referrer.as_mut().unwrap().workplace = "ж".repeat(301);
        assert_eq!(fields(&check(&k)), ["help_request.referrer.workplace"]);
    }

    #[test]
    fn parents_are_optional_but_named_when_present() {
        let mut k = sample();
        k.mother = None;
        k.father = None;
        assert!(check(&k).is_empty());
        k.father = Some(ParentInfo::default());
        assert_eq!(fields(&check(&k)), ["help_request.father.full_name"]);
        k.father = Some(ParentInfo {
            full_name: "Серік Нұрланов".into(),
            address: String::new(),
            occupation: "ж".repeat(501),
        });
        assert_eq!(fields(&check(&k)), ["help_request.father.occupation"]);
    }

    #[test]
    fn other_destination_needs_a_description() {
        let mut k = sample();
        k.destinations.push(ReferralDestination::Other as i32);
        assert_eq!(fields(&check(&k)), ["help_request.destination_other"]);
        k.destination_other = "   ".into();
        assert_eq!(fields(&check(&k)), ["help_request.destination_other"]);
        k.destination_other = "Қамқоршылық органы".into();
        assert!(check(&k).is_empty());
    }

    #[test]
    fn destination_other_without_other_fails() {
        let mut k = sample();
        k.destination_other = "Қамқоршылық органы".into();
        assert_eq!(fields(&check(&k)), ["help_request.destination_other"]);
    }

    #[test]
    fn destinations_rules() {
        let mut k = sample();
        k.destinations.clear();
        assert_eq!(fields(&check(&k)), ["help_request.destinations"]);

        k.destinations = vec![
            ReferralDestination::Commission as i32,
            ReferralDestination::Unspecified as i32,
            99,
            ReferralDestination::Commission as i32,
        ];
        assert_eq!(
            fields(&check(&k)),
            [
                "help_request.destinations[1]",
                "help_request.destinations[2]",
                "help_request.destinations[3]",
            ]
        );

        k.destinations = vec![ReferralDestination::Commission as i32; 7];
        assert_eq!(fields(&check(&k)), ["help_request.destinations"]);

        k.destinations = (1..=5).collect();
        assert!(check(&k).is_empty());
    }

    #[test]
    fn signature_rules() {
        let at = |t: Timestamp| {
            Some(prost_types::Timestamp {
                seconds: t.as_second(),
                nanos: t.subsec_nanosecond(),
            })
        };
        let mut k = sample();
        let s = k.signature.as_mut().unwrap();
        s.signed_at = at(now());
        assert!(check(&k).is_empty());
        let s = k.signature.as_mut().unwrap();
        s.signed_at = at(now() + jiff::SignedDuration::from_mins(5));
        assert!(check(&k).is_empty());
        let s = k.signature.as_mut().unwrap();
        s.signed_at = at(now() + jiff::SignedDuration::from_secs(5 * 60 + 1));
        assert_eq!(fields(&check(&k)), ["help_request.signature.signed_at"]);
        let s = k.signature.as_mut().unwrap();
        s.signed_at = None;
        assert_eq!(fields(&check(&k)), ["help_request.signature.signed_at"]);
        let s = k.signature.as_mut().unwrap();
        s.signed_at = Some(prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        });
        assert_eq!(fields(&check(&k)), ["help_request.signature.signed_at"]);
        let s = k.signature.as_mut().unwrap();
        s.signed_at = Some(prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        });
        assert_eq!(fields(&check(&k)), ["help_request.signature.signed_at"]);
    }

    #[test]
    fn descriptions_never_echo_values() {
        let secret_name = "Секретбек";
        let mut k = sample();
        child(&mut k).full_name = format!("{secret_name}\u{0}");
        child(&mut k).iin = "120514601230".into();
        k.referrer.as_mut().unwrap().phone = "+7 701 секрет".into();
        k.destination_other = "секрет".into();
        k.problem_description = "секрет".repeat(1000);
        let v = check(&k);
        assert_eq!(v.iter().count(), 5);
        for x in v.iter() {
            let d = x.description.to_lowercase();
            assert!(!d.contains("секрет"), "{x:?}");
            assert!(!d.contains("120514"), "{x:?}");
        }
    }

    #[test]
    fn calendar_date_conversion() {
        let d = |year, month, day| CalendarDate { year, month, day };
        assert_eq!(calendar_date(&d(2024, 2, 29)), Some(date(2024, 2, 29)));
        assert_eq!(calendar_date(&d(2023, 2, 29)), None);
        assert_eq!(calendar_date(&d(0, 0, 0)), None);
        assert_eq!(calendar_date(&d(0, 1, 1)), None);
        assert_eq!(calendar_date(&d(10_000, 1, 1)), None);
        assert_eq!(calendar_date(&d(2024, 0, 1)), None);
        assert_eq!(calendar_date(&d(2024, 1, 0)), None);
        assert_eq!(calendar_date(&d(2024, 1, 300)), None);
        assert_eq!(calendar_date(&d(2024, -1, 1)), None);
        assert_eq!(calendar_date(&d(i32::MAX, 1, 1)), None);
        assert_eq!(
            calendar_date(&to_calendar_date(date(1999, 12, 31))),
            Some(date(1999, 12, 31))
        );
    }

    fn decision() -> DecideHelpRequestRequest {
        DecideHelpRequestRequest {
            message_id: "0190f4c2-5b7e-7a3c-9d2e-4f1a2b3c4d5e".into(),
            idempotency_key: "decide-0001".into(),
            outcome: Some(Outcome::OpenCase(referral_proto::v1::OpenCase {
                curator_user_id: "curator-1".into(),
            })),
        }
    }

    fn check_decision(req: &DecideHelpRequestRequest) -> Vec<String> {
        let mut v = FieldViolations::new();
        decide_help_request(req, &mut v);
        fields(&v)
    }

    #[test]
    fn valid_decisions_pass() {
        assert!(check_decision(&decision()).is_empty());
        let mut req = decision();
        req.outcome = Some(Outcome::NoFurtherAction(
            referral_proto::v1::NoFurtherAction {
                reason: "Мектеп шаралары жеткілікті.\nҚайта бағалау қажет емес.".into(),
            },
        ));
        assert!(check_decision(&req).is_empty());
    }

    #[test]
    fn empty_decision_reports_every_field() {
        assert_eq!(
            check_decision(&DecideHelpRequestRequest::default()),
            ["idempotency_key", "message_id", "outcome"]
        );
    }

    #[test]
    fn decision_message_id_must_be_a_uuid() {
        for bad in [
            "not-a-uuid",
            "0190f4c25b7e7a3c9d2e4f1a2b3c4d5e",
            "{0190f4c2-5b7e-7a3c-9d2e-4f1a2b3c4d5e}",
            "0190f4c2-5b7e-7a3c-9d2e-4f1a2b3c4d5g",
        ] {
            let mut req = decision();
            req.message_id = bad.into();
            assert_eq!(check_decision(&req), ["message_id"], "{bad}");
        }
    }

    #[test]
    fn decision_outcomes_are_checked() {
        let mut req = decision();
        req.outcome = Some(Outcome::OpenCase(referral_proto::v1::OpenCase {
            curator_user_id: "  ".into(),
        }));
        assert_eq!(check_decision(&req), ["open_case.curator_user_id"]);
        req.outcome = Some(Outcome::OpenCase(referral_proto::v1::OpenCase {
            curator_user_id: "c".repeat(201),
        }));
        assert_eq!(check_decision(&req), ["open_case.curator_user_id"]);
        for reason in ["", "   ", "жо", &"ж".repeat(2001)] {
            req.outcome = Some(Outcome::NoFurtherAction(
                referral_proto::v1::NoFurtherAction {
                    reason: reason.into(),
                },
            ));
            assert_eq!(check_decision(&req), ["no_further_action.reason"]);
        }
    }

    #[test]
    fn idempotency_key_rules() {
        let check_key = |key: &str| {
            let mut v = FieldViolations::new();
            idempotency_key(key, "key", &mut v);
            fields(&v)
        };
        assert!(check_key("abcdefgh").is_empty());
        assert!(check_key(&"k".repeat(128)).is_empty());
        assert!(check_key("0190f4c2-5b7e-7a3c-9d2e-4f1a2b3c4d5e").is_empty());
        assert!(check_key("~!@#$%^&*()_+").is_empty());
        for bad in [
            String::new(),
            "        ".into(),
            "abcdefg".into(),
            "k".repeat(129),
            "abcd efgh".into(),
            "abcdefgh\n".into(),
            "кілт-12345".into(),
        ] {
            assert_eq!(check_key(&bad), ["key"], "{bad:?}");
        }
    }
}
