//! Conversions between the clock's instants, protobuf timestamps and stored values.
//!
//! Instants are stored as microseconds since the Unix epoch in a BIGINT column: the same on
//! SQLite and PostgreSQL, ordered, and compared with plain `<=` in queries.

use jiff::Timestamp;

pub fn to_proto(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    }
}

/// A protobuf timestamp as an instant; `None` when it is out of range.
pub fn from_proto(t: &prost_types::Timestamp) -> Option<Timestamp> {
    Timestamp::new(t.seconds, t.nanos).ok()
}

pub fn to_micros(t: Timestamp) -> i64 {
    t.as_microsecond()
}

pub fn from_micros(micros: i64) -> Timestamp {
    Timestamp::from_microsecond(micros).unwrap_or(Timestamp::UNIX_EPOCH)
}

pub fn micros_to_proto(micros: i64) -> prost_types::Timestamp {
    to_proto(from_micros(micros))
}
