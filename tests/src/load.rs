//! Load for the fault tests: help requests K about many different children (one child's many
//! referrals would each carry all the earlier ones, linked by the IIN's keyed hash), and clients
//! that retry a call under the same idempotency key until the hub acknowledges it, as a real
//! client does across an outage.

use std::time::{Duration, Instant};

use jiff::civil::Date;
use referral_core::{iin::Iin, validate};
use referral_proto::v1::{HelpRequest, Sex};
use tonic::Code;

use crate::StaffClient;

/// How long a client waits before trying a failed call again.
pub const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The sample K ([`validate::sample_help_request`]) about child number `n`: its own IIN (and so
/// its own keyed hash at the gateway), sex and, for every ten thousand children, a birth date
/// one day earlier. Distinct for every `n` below 3,650,000.
pub fn child_k(today: Date, n: u32) -> HelpRequest {
    let mut k = validate::sample_help_request(today);
    let child = k.child.as_mut().expect("the sample K names a child");
    let sample_born = child
        .date_of_birth
        .as_ref()
        .map(|d| {
            Date::new(
                i16::try_from(d.year).expect("a year"),
                i8::try_from(d.month).expect("a month"),
                i8::try_from(d.day).expect("a day"),
            )
            .expect("a date")
        })
        .expect("the sample K has a date of birth");
    let born = sample_born
        .checked_sub(jiff::Span::new().days(i64::from(n / 10_000)))
        .expect("a date of birth");
    let within = n % 10_000;
    // Each child has two serials of its own (about 1 serial in 121 has no check digit); the
    // first 5,000 are girls, the next 5,000 boys.
    let sex = if within < 5_000 {
        Sex::Female
    } else {
        Sex::Male
    };
    let pair = u16::try_from(within % 5_000).expect("below 5,000") * 2;
    let iin = [pair, pair + 1]
        .into_iter()
        .find_map(|serial| Iin::generate(born, sex, serial))
        .expect("one of two serials has a check digit");
    child.iin = iin.into_string();
    child.sex = sex as i32;
    child.date_of_birth = Some(validate::to_calendar_date(born));
    child.age_years = u32::try_from(validate::age_years(born, today)).expect("an age");
    k
}

/// Whether a failed call may succeed when tried again with the same idempotency key: the hub
/// (or the connection to it) was down, overloaded or cut off mid-call. `INTERNAL` is not: it
/// would hide a bug.
pub fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
    )
}

/// What one acknowledged submission took.
#[derive(Debug, Clone)]
pub struct Acknowledged {
    pub message_id: String,
    /// Failed attempts before the acknowledgement.
    pub failures: u32,
}

/// Submits `k` to the district's commission under `key` until the agency service acknowledges it
/// with a message id, trying again after [`RETRY_PAUSE`] on every retryable failure. Panics on a
/// refusal (the K is valid: a refusal is a bug) and at `deadline`.
pub async fn submit_until_acknowledged(
    staff: &StaffClient,
    key: &str,
    k: &HelpRequest,
    deadline: Instant,
) -> Acknowledged {
    let mut failures = 0;
    loop {
        match staff.submit_k(key, "", k.clone()).await {
            Ok(message_id) => {
                return Acknowledged {
                    message_id,
                    failures,
                };
            }
            Err(status) if retryable(status.code()) => {
                failures += 1;
                assert!(
                    Instant::now() < deadline,
                    "K {key} not acknowledged by the deadline (last: {:?} {})",
                    status.code(),
                    status.message()
                );
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(status) => panic!("K {key} refused: {status:?}"),
        }
    }
}
