//! Kazakhstan's individual identification number, the IIN (ЖСН / ИИН): parsing and checking.
//!
//! An IIN is 12 ASCII digits (DOMAIN.md section 6):
//!
//! | digits | meaning |
//! |---|---|
//! | 1-6 | date of birth, `YYMMDD` |
//! | 7 | century and sex: 1/2 born in the 1800s, 3/4 in the 1900s, 5/6 in the 2000s; odd male, even female |
//! | 8-11 | serial number |
//! | 12 | check digit |
//!
//! The check digit is the sum of the first 11 digits weighted 1, 2, ..., 11, modulo 11. When that
//! gives 10, the sum is taken again with the weights 3, 4, ..., 11, 1, 2; when that gives 10 as
//! well, no check digit exists and the number is invalid.
//!
//! An IIN is personal data: [`Iin`]'s `Debug` hides the digits and [`IinError`]'s messages never
//! repeat the value, so neither a log line nor an error message can leak it.

use std::{fmt, str::FromStr};

use jiff::civil::Date;
use referral_proto::v1::Sex;

/// Number of digits in an IIN.
pub const LEN: usize = 12;

const WEIGHTS_FIRST: [u32; 11] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
const WEIGHTS_SECOND: [u32; 11] = [3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2];

/// Why a string is not a valid IIN. The messages say what is wrong, never what was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IinError {
    /// Not exactly 12 characters.
    #[error("must be exactly 12 digits")]
    WrongLength,
    /// 12 characters, but not all of them ASCII digits.
    #[error("must contain only the digits 0-9")]
    NotDigits,
    /// The 7th digit is not 1 to 6.
    #[error("the 7th digit (century and sex) must be 1 to 6")]
    BadCenturyDigit,
    /// The first 6 digits (with the century) are not a real calendar date.
    #[error("the first 6 digits must be a real date of birth (YYMMDD)")]
    BadBirthDate,
    /// The 12th digit is not the check digit of the first 11, or no check digit exists for them.
    #[error("check digit does not match")]
    BadCheckDigit,
}

/// A valid IIN: 12 digits with a real birth date, a known century-and-sex digit and a correct check
/// digit.
///
/// `Debug` prints `Iin(***)`; there is deliberately no `Display`: use [`Iin::as_str`] where the
/// digits are really needed (storage, matching two referrals of the same child).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Iin {
    digits: String,
    birth_date: Date,
    sex: Sex,
}

impl Iin {
    /// The 12 digits.
    pub fn as_str(&self) -> &str {
        &self.digits
    }

    /// The 12 digits, owned.
    pub fn into_string(self) -> String {
        self.digits
    }

    /// The date of birth encoded in the first 7 digits.
    pub fn birth_date(&self) -> Date {
        self.birth_date
    }

    /// The sex encoded in the 7th digit: [`Sex::Male`] or [`Sex::Female`], never unspecified.
    pub fn sex(&self) -> Sex {
        self.sex
    }

    /// Builds the IIN of a person born on `birth_date` (1800 to 2099) with `sex` and the 4-digit
    /// `serial` (0 to 9999), adding the check digit.
    ///
    /// `None` when the date is outside 1800-2099, `sex` is unspecified, the serial has more than 4
    /// digits, or no check digit exists for these 11 digits (about 1 serial in 121: try the next
    /// one). Meant for demos and test data: real IINs are issued by the state.
    pub fn generate(birth_date: Date, sex: Sex, serial: u16) -> Option<Iin> {
        if serial > 9999 {
            return None;
        }
        let year = birth_date.year();
        let century_base = match year {
            1800..=1899 => 1,
            1900..=1999 => 3,
            2000..=2099 => 5,
            _ => return None,
        };
        let century_digit = match sex {
            Sex::Male => century_base,
            Sex::Female => century_base + 1,
            Sex::Unspecified => return None,
        };
        let first_eleven = format!(
            "{:02}{:02}{:02}{}{:04}",
            year % 100,
            birth_date.month(),
            birth_date.day(),
            century_digit,
            serial
        );
        let digits = digit_values(&first_eleven)?;
        let check = check_digit(&digits)?;
        parse(&format!("{first_eleven}{check}")).ok()
    }
}

impl fmt::Debug for Iin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Iin(***)")
    }
}

impl AsRef<str> for Iin {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl FromStr for Iin {
    type Err = IinError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

/// Parses and checks an IIN. The string must be exactly the 12 digits: no spaces, no separators.
///
/// # Errors
///
/// The first problem found, checked in this order: length, digits, century digit, birth date,
/// check digit.
pub fn parse(s: &str) -> Result<Iin, IinError> {
    if s.chars().count() != LEN {
        return Err(IinError::WrongLength);
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IinError::NotDigits);
    }
    let d: Vec<u8> = s.bytes().map(|b| b - b'0').collect();
    let (century, sex) = match d[6] {
        1 => (1800, Sex::Male),
        2 => (1800, Sex::Female),
        3 => (1900, Sex::Male),
        4 => (1900, Sex::Female),
        5 => (2000, Sex::Male),
        6 => (2000, Sex::Female),
        _ => return Err(IinError::BadCenturyDigit),
    };
    let two = |i: usize| i16::from(d[i]) * 10 + i16::from(d[i + 1]);
    let year = century + two(0);
    let month = i8::try_from(two(2)).map_err(|_| IinError::BadBirthDate)?;
    let day = i8::try_from(two(4)).map_err(|_| IinError::BadBirthDate)?;
    let birth_date = Date::new(year, month, day).map_err(|_| IinError::BadBirthDate)?;
    let mut first_eleven = [0u8; 11];
    first_eleven.copy_from_slice(&d[..11]);
    match check_digit(&first_eleven) {
        Some(check) if check == d[11] => Ok(Iin {
            digits: s.to_owned(),
            birth_date,
            sex,
        }),
        _ => Err(IinError::BadCheckDigit),
    }
}

/// The check digit of the first 11 digits (values 0-9), or `None` when none exists.
fn check_digit(first_eleven: &[u8; 11]) -> Option<u8> {
    let weighted = |weights: &[u32; 11]| -> u32 {
        first_eleven
            .iter()
            .zip(weights)
            .map(|(&d, &w)| u32::from(d) * w)
            .sum::<u32>()
            % 11
    };
    let first = weighted(&WEIGHTS_FIRST);
    let check = if first == 10 {
        weighted(&WEIGHTS_SECOND)
    } else {
        first
    };
    if check == 10 {
        None
    } else {
        u8::try_from(check).ok()
    }
}

/// The values of 11 ASCII digits, `None` if `s` is anything else.
fn digit_values(s: &str) -> Option<[u8; 11]> {
    let bytes: [u8; 11] = s.as_bytes().try_into().ok()?;
    if !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(bytes.map(|b| b - b'0'))
}

#[cfg(test)]
mod tests {
    use jiff::civil::date;

    use super::*;

    /// An independent implementation of the check digit, straight from the definition, over the
    /// first 11 characters of `s`. `None` when both passes give 10.
    fn reference_check_digit(s: &str) -> Option<u32> {
        let d: Vec<u32> = s
            .chars()
            .take(11)
            .map(|c| c.to_digit(10).unwrap())
            .collect();
        let first: u32 = (0..11).map(|i| d[i] * (i as u32 + 1)).sum::<u32>() % 11;
        if first != 10 {
            return Some(first);
        }
        let second: u32 = (0..11)
            .map(|i| d[i] * ((i as u32 + 2) % 11 + 1))
            .sum::<u32>()
            % 11;
        (second != 10).then_some(second)
    }

    fn with_check(first_eleven: &str) -> String {
        let c = reference_check_digit(first_eleven).expect("a check digit exists");
        format!("{first_eleven}{c}")
    }

    #[test]
    fn reference_second_weights_are_3_to_11_then_1_2() {
        let weights: Vec<u32> = (0..11u32).map(|i| (i + 2) % 11 + 1).collect();
        assert_eq!(weights, WEIGHTS_SECOND.to_vec());
    }

    /// Verified by hand: 1·9 + 2·5 + 4·1 + 6·1 + 7·3 = 50, and 50 mod 11 = 6.
    #[test]
    fn known_valid_male_1995() {
        let iin = parse("950101300006").unwrap();
        assert_eq!(iin.birth_date(), date(1995, 1, 1));
        assert_eq!(iin.sex(), Sex::Male);
        assert_eq!(iin.as_str(), "950101300006");
    }

    /// Verified by hand: 1·1 + 2·2 + 4·5 + 5·1 + 6·4 + 7·6 + 9·1 + 10·2 + 11·3 = 158, and
    /// 158 mod 11 = 4.
    #[test]
    fn known_valid_female_2012() {
        let iin = parse("120514601234").unwrap();
        assert_eq!(iin.birth_date(), date(2012, 5, 14));
        assert_eq!(iin.sex(), Sex::Female);
    }

    /// Verified by hand: the first pass gives 164 mod 11 = 10; the second pass gives
    /// 3·1 + 4·2 + 6·3 + 7·1 + 8·5 + 9·6 + 1·7 = 137, and 137 mod 11 = 5.
    #[test]
    fn known_valid_using_second_weights() {
        let iin = parse("120315600705").unwrap();
        assert_eq!(iin.birth_date(), date(2012, 3, 15));
        assert_eq!(iin.sex(), Sex::Female);
    }

    /// Both passes give 10 (252 and 153, mod 11): no 12th digit makes this valid.
    #[test]
    fn no_check_digit_exists() {
        assert_eq!(reference_check_digit("12031560078"), None);
        for last in 0..=9 {
            assert_eq!(
                parse(&format!("12031560078{last}")),
                Err(IinError::BadCheckDigit)
            );
        }
    }

    #[test]
    fn computed_iins_are_valid_for_every_century_and_sex() {
        let cases = [
            ("891231", '1', date(1889, 12, 31), Sex::Male),
            ("891231", '2', date(1889, 12, 31), Sex::Female),
            ("760704", '3', date(1976, 7, 4), Sex::Male),
            ("760704", '4', date(1976, 7, 4), Sex::Female),
            ("080229", '5', date(2008, 2, 29), Sex::Male),
            ("150101", '6', date(2015, 1, 1), Sex::Female),
        ];
        for (yymmdd, century, born, sex) in cases {
            let s = (0..100)
                .map(|serial| format!("{yymmdd}{century}{serial:04}"))
                .find(|first_eleven| reference_check_digit(first_eleven).is_some())
                .map(|first_eleven| with_check(&first_eleven))
                .unwrap();
            let iin = parse(&s).unwrap();
            assert_eq!(iin.birth_date(), born);
            assert_eq!(iin.sex(), sex);
        }
    }

    #[test]
    fn every_serial_agrees_with_the_reference() {
        for serial in 0..2000 {
            let first_eleven = format!("1005145{serial:04}");
            for last in 0..=9u32 {
                let s = format!("{first_eleven}{last}");
                let expected_ok = reference_check_digit(&first_eleven) == Some(last);
                assert_eq!(
                    parse(&s).is_ok(),
                    expected_ok,
                    "serial {serial}, last {last}"
                );
            }
        }
    }

    #[test]
    fn generate_builds_valid_iins() {
        let born = date(2013, 9, 1);
        let iin = (0..100)
            .find_map(|serial| Iin::generate(born, Sex::Female, serial))
            .unwrap();
        assert_eq!(iin.birth_date(), born);
        assert_eq!(iin.sex(), Sex::Female);
        assert!(iin.as_str().starts_with("1309016"));
        assert_eq!(iin.as_str(), with_check(&iin.as_str()[..11]));
        assert_eq!(Iin::generate(born, Sex::Unspecified, 1), None);
        assert_eq!(Iin::generate(date(2100, 1, 1), Sex::Male, 1), None);
        assert_eq!(Iin::generate(born, Sex::Male, 10_000), None);
        // The serial whose 11 digits have no check digit.
        assert_eq!(Iin::generate(date(2012, 3, 15), Sex::Female, 78), None);
    }

    #[test]
    fn wrong_length() {
        assert_eq!(parse(""), Err(IinError::WrongLength));
        assert_eq!(parse("95010130000"), Err(IinError::WrongLength));
        assert_eq!(parse("9501013000060"), Err(IinError::WrongLength));
        assert_eq!(parse(" 950101300006"), Err(IinError::WrongLength));
    }

    #[test]
    fn not_digits() {
        assert_eq!(parse("95010130000X"), Err(IinError::NotDigits));
        assert_eq!(parse("950101 00006"), Err(IinError::NotDigits));
        assert_eq!(parse("9501-1300006"), Err(IinError::NotDigits));
        // 12 characters, but Arabic-Indic digits are not ASCII digits.
        assert_eq!(parse("٩٥٠١٠١٣٠٠٠٠٦"), Err(IinError::NotDigits));
    }

    #[test]
    fn bad_century_digit() {
        for century in ['0', '7', '8', '9'] {
            let first_eleven = format!("950101{century}0000");
            let s = match reference_check_digit(&first_eleven) {
                Some(c) => format!("{first_eleven}{c}"),
                None => format!("{first_eleven}0"),
            };
            assert_eq!(parse(&s), Err(IinError::BadCenturyDigit));
        }
    }

    #[test]
    fn bad_birth_date() {
        for yymmdd in ["951301", "950001", "950100", "950230", "010229", "950132"] {
            let s = with_check(&format!("{yymmdd}30000"));
            assert_eq!(parse(&s), Err(IinError::BadBirthDate), "{yymmdd}");
        }
        // 2000 was a leap year; 1900 and 2001 were not.
        assert!(parse(&with_check("00022950000")).is_ok());
        assert_eq!(
            parse(&with_check("00022930000")),
            Err(IinError::BadBirthDate)
        );
    }

    #[test]
    fn bad_check_digit() {
        assert_eq!(parse("950101300007"), Err(IinError::BadCheckDigit));
        assert_eq!(parse("120514601230"), Err(IinError::BadCheckDigit));
        // A changed digit among the first 10 is caught here (their first-pass weights are not 0
        // mod 11). The 11th digit's first-pass weight is 11, which is 0 mod 11: the algorithm
        // itself cannot catch a change there when the first pass decides, as the next lines show.
        let good = "120514601234";
        assert!(parse("120514601244").is_ok());
        for i in 0..10 {
            let mut bytes = good.as_bytes().to_vec();
            bytes[i] = if bytes[i] == b'9' { b'8' } else { bytes[i] + 1 };
            let s = String::from_utf8(bytes).unwrap();
            assert!(parse(&s).is_err(), "digit {i}");
        }
    }

    #[test]
    fn debug_and_errors_never_show_the_digits() {
        let iin = parse("950101300006").unwrap();
        assert_eq!(format!("{iin:?}"), "Iin(***)");
        assert_eq!(format!("{:?}", Some(&iin)), "Some(Iin(***))");
        for bad in [
            "950101300007",
            "95010130000",
            "95010130000X",
            "951301300006",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(!err.to_string().contains("950101"), "{err}");
            assert!(!format!("{err:?}").contains("950101"), "{err:?}");
        }
    }

    #[test]
    fn from_str_matches_parse() {
        let iin: Iin = "950101300006".parse().unwrap();
        assert_eq!(iin, parse("950101300006").unwrap());
        assert_eq!("x".parse::<Iin>(), Err(IinError::WrongLength));
    }
}
