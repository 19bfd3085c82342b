//! Reading the deduplication key out of a Kafka message value.
//!
//! A message value is a JSON object carrying at least `distinct_id`, `token`, `event` and
//! `timestamp`; every other field (`uuid`, `properties`, …) is skipped without being
//! materialised. The payload itself is never rewritten: the pipeline publishes the
//! original bytes.
//!
//! Accepted forms:
//! - `timestamp`: an RFC 3339 string with any fraction and offset, or epoch milliseconds
//!   as a JSON number or a string of digits. Everything is normalised to epoch ms
//!   (sub-millisecond digits are truncated towards the past), so two spellings of one
//!   instant give one key.
//! - `distinct_id`: a string, or an integer (taken as its decimal text, as PostHog does).
//! - `token`, `event`: strings.
//!
//! Anything else is an [`EventError`] naming the problem; parsing never panics and is
//! bounded by serde_json's nesting limit. What to do with a malformed message (dead-letter
//! or pass through) is the pipeline's decision, not this module's.

use std::borrow::Cow;
use std::fmt;

use chrono::DateTime;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::key::{EventKey, StoredKey};

/// The key fields of one event, borrowed from the payload where no unescaping was needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    pub timestamp_ms: i64,
    pub distinct_id: Cow<'a, str>,
    pub token: Cow<'a, str>,
    pub event: Cow<'a, str>,
}

impl<'a> Event<'a> {
    /// Parses a message value. `None` (a Kafka tombstone) is malformed too.
    pub fn parse(payload: Option<&'a [u8]>) -> Result<Self, EventError> {
        let payload = payload.ok_or(EventError::Empty)?;
        let mut de = serde_json::Deserializer::from_slice(payload);
        let top = de.deserialize_any(TopLevelVisitor).map_err(not_json)??;
        de.end().map_err(not_json)?;
        top.into_event()
    }

    /// The deduplication key of this event.
    pub fn key(&self) -> EventKey<'_> {
        EventKey {
            timestamp_ms: self.timestamp_ms,
            distinct_id: &self.distinct_id,
            token: &self.token,
            event: &self.event,
        }
    }
}

/// Parses a message value straight to its stored key (the hot path).
pub fn stored_key(payload: Option<&[u8]>) -> Result<StoredKey, EventError> {
    Event::parse(payload).map(|event| event.key().stored())
}

/// Refuses a key whose event time is more than `max_skew` ahead of `now_ms` (`max_skew`
/// zero: no bound). Such a key would never leave the window, and under a capacity bound
/// it would outlive every legitimate key: eviction takes the oldest timestamps first.
pub fn within_skew(
    key: StoredKey,
    now_ms: i64,
    max_skew: std::time::Duration,
) -> Result<StoredKey, EventError> {
    let bound = now_ms.saturating_add(max_skew.as_millis().min(i64::MAX as u128) as i64);
    if !max_skew.is_zero() && key.timestamp_ms() > bound {
        return Err(EventError::TimestampInFuture {
            timestamp_ms: key.timestamp_ms(),
            now_ms,
        });
    }
    Ok(key)
}

/// Why a message value has no deduplication key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("message has no value (tombstone)")]
    Empty,
    #[error("message value is not JSON: {0}")]
    NotJson(String),
    #[error("message value is a JSON {0}, expected an object")]
    NotAnObject(&'static str),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("field `{field}` appears more than once")]
    DuplicateField { field: &'static str },
    #[error("field `{field}` is {found}, expected {expected}")]
    WrongType {
        field: &'static str,
        found: &'static str,
        expected: &'static str,
    },
    #[error("field `timestamp` value {value} is not usable: {reason}")]
    BadTimestamp { value: String, reason: &'static str },
    #[error("field `timestamp` is {timestamp_ms} ms, more than MAX_EVENT_TIME_SKEW ahead of now ({now_ms} ms): a clock far off, or a unit mistaken (microseconds read as milliseconds)")]
    TimestampInFuture { timestamp_ms: i64, now_ms: i64 },
}

impl EventError {
    /// Every value [`EventError::kind`] returns.
    pub const KINDS: [&'static str; 8] = [
        "empty",
        "not_json",
        "not_object",
        "missing_field",
        "duplicate_field",
        "wrong_type",
        "bad_timestamp",
        "timestamp_in_future",
    ];

    /// A short, stable label for metrics (`reason` label of the malformed counter).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::NotJson(_) => "not_json",
            Self::NotAnObject(_) => "not_object",
            Self::MissingField(_) => "missing_field",
            Self::DuplicateField { .. } => "duplicate_field",
            Self::WrongType { .. } => "wrong_type",
            Self::BadTimestamp { .. } => "bad_timestamp",
            Self::TimestampInFuture { .. } => "timestamp_in_future",
        }
    }
}

fn not_json(err: serde_json::Error) -> EventError {
    EventError::NotJson(err.to_string())
}

/// One key field as it appeared in the JSON, before its type is checked.
#[derive(Default)]
enum RawField<'a> {
    #[default]
    Missing,
    Str(Cow<'a, str>),
    Int(i128),
    Float(f64),
    Other(&'static str),
}

impl RawField<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Str(_) => "a string",
            Self::Int(_) | Self::Float(_) => "a number",
            Self::Other(kind) => kind,
        }
    }
}

impl<'de> de::Deserialize<'de> for RawField<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawFieldVisitor)
    }
}

struct RawFieldVisitor;

impl<'de> Visitor<'de> for RawFieldVisitor {
    type Value = RawField<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(RawField::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(RawField::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(RawField::Str(Cow::Owned(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(RawField::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(RawField::Int(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(RawField::Float(v))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(RawField::Other("a boolean"))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(RawField::Other("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RawField::Other("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(RawField::Other("an object"))
    }
}

#[derive(Default)]
struct KeyFields<'a> {
    timestamp: RawField<'a>,
    distinct_id: RawField<'a>,
    token: RawField<'a>,
    event: RawField<'a>,
}

impl<'a> KeyFields<'a> {
    fn into_event(self) -> Result<Event<'a>, EventError> {
        Ok(Event {
            distinct_id: distinct_id(self.distinct_id)?,
            token: string_field("token", self.token)?,
            event: string_field("event", self.event)?,
            timestamp_ms: timestamp_ms(self.timestamp)?,
        })
    }
}

/// The top level of the payload: the key fields if it is an object, else what it was.
struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = Result<KeyFields<'de>, EventError>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = KeyFields::default();
        while let Some(name) = map.next_key::<Cow<'de, str>>()? {
            let (field, slot) = match name.as_ref() {
                "timestamp" => ("timestamp", &mut fields.timestamp),
                "distinct_id" => ("distinct_id", &mut fields.distinct_id),
                "token" => ("token", &mut fields.token),
                "event" => ("event", &mut fields.event),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if !matches!(slot, RawField::Missing) {
                // Which copy would count is ambiguous; refuse rather than guess. Read the
                // rest so that a malformed remainder is still reported as not JSON.
                map.next_value::<IgnoredAny>()?;
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                return Ok(Err(EventError::DuplicateField { field }));
            }
            *slot = map.next_value()?;
        }
        Ok(Ok(fields))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Err(EventError::NotAnObject("array")))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err(EventError::NotAnObject("string")))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(EventError::NotAnObject("number")))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(EventError::NotAnObject("number")))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(EventError::NotAnObject("number")))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(EventError::NotAnObject("boolean")))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Err(EventError::NotAnObject("null")))
    }
}

fn string_field<'a>(field: &'static str, raw: RawField<'a>) -> Result<Cow<'a, str>, EventError> {
    match raw {
        RawField::Str(s) => Ok(s),
        RawField::Missing => Err(EventError::MissingField(field)),
        other => Err(EventError::WrongType {
            field,
            found: other.type_name(),
            expected: "a string",
        }),
    }
}

fn distinct_id(raw: RawField<'_>) -> Result<Cow<'_, str>, EventError> {
    match raw {
        RawField::Int(n) => Ok(Cow::Owned(n.to_string())),
        RawField::Float(_) => Err(EventError::WrongType {
            field: "distinct_id",
            found: "a fractional number",
            expected: "a string or an integer",
        }),
        other => string_field("distinct_id", other),
    }
}

fn timestamp_ms(raw: RawField<'_>) -> Result<i64, EventError> {
    let bad = |value: String, reason| Err(EventError::BadTimestamp { value, reason });
    match raw {
        RawField::Missing => Err(EventError::MissingField("timestamp")),
        RawField::Int(n) => match i64::try_from(n) {
            Ok(ms) => Ok(ms),
            Err(_) => bad(n.to_string(), "epoch milliseconds out of range"),
        },
        RawField::Float(f) => {
            let floor = f.floor();
            // 2^63 is exactly representable; anything at or beyond it does not fit an i64.
            if f.is_finite() && floor >= -(2f64.powi(63)) && floor < 2f64.powi(63) {
                Ok(floor as i64)
            } else {
                bad(f.to_string(), "epoch milliseconds out of range")
            }
        }
        RawField::Str(s) => parse_timestamp_text(&s).ok_or_else(|| EventError::BadTimestamp {
            value: shorten(&s),
            reason: "expected RFC 3339 (e.g. 2024-05-01T12:00:00.123Z) or epoch milliseconds",
        }),
        RawField::Other(kind) => Err(EventError::WrongType {
            field: "timestamp",
            found: kind,
            expected: "an RFC 3339 string or epoch milliseconds",
        }),
    }
}

fn parse_timestamp_text(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<i64>().ok();
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Quotes a value for an error message without letting a 1 MiB field into the logs.
fn shorten(text: &str) -> String {
    const LIMIT: usize = 64;
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(json: &str) -> Result<Event<'_>, EventError> {
        Event::parse(Some(json.as_bytes()))
    }

    fn key_of(json: &str) -> StoredKey {
        match parse(json) {
            Ok(event) => event.key().stored(),
            Err(err) => panic!("{json}: {err}"),
        }
    }

    fn event_json(ts: &str) -> String {
        format!(r#"{{"uuid":"u-1","distinct_id":"d","token":"t","event":"e","timestamp":{ts}}}"#)
    }

    #[test]
    fn parses_a_posthog_event_and_ignores_other_fields() {
        let json = r#"{"uuid":"0190-aa","event":"$pageview","distinct_id":"user-7",
            "properties":{"$current_url":"https://x","nested":[1,{"a":null}]},
            "token":"phc_123","timestamp":"2024-05-01T12:00:00.123Z","extra":true}"#;
        let event = parse(json).unwrap();
        assert_eq!(event.event, "$pageview");
        assert_eq!(event.distinct_id, "user-7");
        assert_eq!(event.token, "phc_123");
        assert_eq!(event.timestamp_ms, 1_714_564_800_123);
        assert_eq!(
            event.key().to_string(),
            "1714564800123:user-7:phc_123:$pageview"
        );
    }

    #[test]
    fn same_instant_spelled_differently_is_one_key() {
        let spellings = [
            r#""2024-05-01T12:00:00.123Z""#,
            r#""2024-05-01T12:00:00.123000Z""#,
            r#""2024-05-01T12:00:00.123999999Z""#,
            r#""2024-05-01T14:00:00.123+02:00""#,
            r#""2024-05-01T07:30:00.123-04:30""#,
            r#""2024-05-01t12:00:00.123z""#,
            r#""2024-05-01 12:00:00.123+00:00""#,
            "1714564800123",
            "1714564800123.9",
            r#""1714564800123""#,
            "1.714564800123e12",
        ];
        let expected = key_of(&event_json(spellings[0]));
        for ts in spellings {
            assert_eq!(key_of(&event_json(ts)), expected, "spelling {ts}");
        }
        assert_ne!(key_of(&event_json("1714564800124")), expected);
    }

    #[test]
    fn uuid_is_not_part_of_the_key() {
        let a = key_of(r#"{"uuid":"1","distinct_id":"d","token":"t","event":"e","timestamp":5}"#);
        let b = key_of(r#"{"uuid":"2","distinct_id":"d","token":"t","event":"e","timestamp":5}"#);
        let c = key_of(r#"{"distinct_id":"d","token":"t","event":"e","timestamp":5}"#);
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn escaped_strings_are_unescaped_before_hashing() {
        let plain = key_of(r#"{"distinct_id":"é","token":"t","event":"e","timestamp":5}"#);
        let escaped = key_of(r#"{"distinct_id":"\u00e9","token":"t","event":"e","timestamp":5}"#);
        assert_eq!(plain, escaped);
    }

    #[test]
    fn integer_distinct_id_is_its_decimal_text() {
        let n = key_of(r#"{"distinct_id":42,"token":"t","event":"e","timestamp":5}"#);
        let s = key_of(r#"{"distinct_id":"42","token":"t","event":"e","timestamp":5}"#);
        assert_eq!(n, s);
    }

    #[test]
    fn malformed_inputs_name_their_problem() {
        let cases: &[(Option<&[u8]>, EventError)] = &[
            (None, EventError::Empty),
            (Some(b"[1,2]"), EventError::NotAnObject("array")),
            (Some(b"\"text\""), EventError::NotAnObject("string")),
            (Some(b"17"), EventError::NotAnObject("number")),
            (Some(b"null"), EventError::NotAnObject("null")),
            (Some(b"true"), EventError::NotAnObject("boolean")),
            (
                Some(br#"{"token":"t","event":"e","timestamp":1}"#),
                EventError::MissingField("distinct_id"),
            ),
            (
                Some(br#"{"distinct_id":"d","event":"e","timestamp":1}"#),
                EventError::MissingField("token"),
            ),
            (
                Some(br#"{"distinct_id":"d","token":"t","timestamp":1}"#),
                EventError::MissingField("event"),
            ),
            (
                Some(br#"{"distinct_id":"d","token":"t","event":"e"}"#),
                EventError::MissingField("timestamp"),
            ),
            (
                Some(br#"{"distinct_id":"d","token":5,"event":"e","timestamp":1}"#),
                EventError::WrongType {
                    field: "token",
                    found: "a number",
                    expected: "a string",
                },
            ),
            (
                Some(br#"{"distinct_id":null,"token":"t","event":"e","timestamp":1}"#),
                EventError::WrongType {
                    field: "distinct_id",
                    found: "null",
                    expected: "a string",
                },
            ),
            (
                Some(br#"{"distinct_id":1.5,"token":"t","event":"e","timestamp":1}"#),
                EventError::WrongType {
                    field: "distinct_id",
                    found: "a fractional number",
                    expected: "a string or an integer",
                },
            ),
            (
                Some(br#"{"distinct_id":"d","token":"t","event":{"a":1},"timestamp":1}"#),
                EventError::WrongType {
                    field: "event",
                    found: "an object",
                    expected: "a string",
                },
            ),
            (
                Some(br#"{"distinct_id":"d","token":"t","event":"e","timestamp":[1]}"#),
                EventError::WrongType {
                    field: "timestamp",
                    found: "an array",
                    expected: "an RFC 3339 string or epoch milliseconds",
                },
            ),
            (
                Some(br#"{"distinct_id":"d","token":"t","event":"e","event":"f","timestamp":1}"#),
                EventError::DuplicateField { field: "event" },
            ),
        ];
        for (payload, expected) in cases {
            let got = Event::parse(*payload);
            assert_eq!(got.as_ref().err(), Some(expected), "{payload:?}");
        }
    }

    #[test]
    fn bad_timestamps_are_reported_with_their_value() {
        for ts in [
            r#""yesterday""#,
            r#""2024-13-01T00:00:00Z""#,
            r#""2024-05-01T12:00:00""#,
            r#""""#,
            r#""99999999999999999999""#,
            "1e300",
            "-1e300",
            "99999999999999999999",
        ] {
            match parse(&event_json(ts)) {
                Err(EventError::BadTimestamp { .. }) => {}
                other => panic!("{ts}: expected BadTimestamp, got {other:?}"),
            }
        }
        let long = format!(r#""{}""#, "x".repeat(10_000));
        let err = parse(&event_json(&long)).unwrap_err().to_string();
        assert!(
            err.len() < 300,
            "error message is not bounded: {}",
            err.len()
        );
    }

    #[test]
    fn a_timestamp_beyond_the_skew_bound_is_refused_and_its_kind_is_known() {
        let now = 1_800_000_000_000;
        let hour = std::time::Duration::from_secs(3_600);
        let key = |ts: i64| {
            stored_key(Some(
                format!(r#"{{"distinct_id":"d","token":"t","event":"e","timestamp":{ts}}}"#)
                    .as_bytes(),
            ))
            .unwrap()
        };
        assert!(within_skew(key(now + 3_600_000), now, hour).is_ok());
        // Microseconds read as milliseconds: far in the future.
        let error = within_skew(key(now * 1_000), now, hour).unwrap_err();
        assert_eq!(error.kind(), "timestamp_in_future");
        assert!(EventError::KINDS.contains(&error.kind()));
        assert!(error.to_string().contains("MAX_EVENT_TIME_SKEW"), "{error}");
        // Old events are not refused here (the window decides what they mean).
        assert!(within_skew(key(0), now, hour).is_ok());
        // No bound.
        assert!(within_skew(key(now * 1_000), now, std::time::Duration::ZERO).is_ok());
    }

    #[test]
    fn not_json_and_hostile_documents_are_errors_not_panics() {
        let deep = "[".repeat(100_000);
        let garbage: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let inputs: Vec<&[u8]> = vec![
            b"",
            b"{",
            b"{\"distinct_id\":\"d\"} trailing",
            b"\xff\xfe{}",
            b"{\"distinct_id\":\"\xc3\x28\",\"token\":\"t\",\"event\":\"e\",\"timestamp\":1}",
            deep.as_bytes(),
            &garbage,
        ];
        for input in inputs {
            match Event::parse(Some(input)) {
                Err(EventError::NotJson(_)) => {}
                other => panic!(
                    "{:?}: expected NotJson, got {other:?}",
                    &input[..input.len().min(20)]
                ),
            }
        }
    }

    #[test]
    fn error_kinds_are_stable_labels() {
        assert_eq!(EventError::Empty.kind(), "empty");
        assert_eq!(EventError::MissingField("token").kind(), "missing_field");
        for payload in [
            &b""[..],
            b"{",
            b"[]",
            b"{}",
            br#"{"distinct_id":{"a":1},"token":"t","event":"e","timestamp":1}"#,
            br#"{"distinct_id":"d","token":"t","event":"e","timestamp":"x"}"#,
            br#"{"distinct_id":"d","distinct_id":"d","token":"t","event":"e","timestamp":1}"#,
        ] {
            let kind = Event::parse(Some(payload)).unwrap_err().kind();
            assert!(EventError::KINDS.contains(&kind), "{kind}");
        }
    }

    #[test]
    fn hostile_documents_end_in_an_answer() {
        let deep_properties = format!(
            r#"{{"distinct_id":"d","token":"t","event":"e","timestamp":1,"properties":{}1{}}}"#,
            "[".repeat(50_000),
            "]".repeat(50_000)
        );
        for (payload, expect_ok) in [
            ("[".repeat(100_000), false),
            (deep_properties, true),
            (r#"{"distinct_id":"d","token":"t","event":"e","timestamp":1e400}"#.to_string(), false),
            (
                r#"{"distinct_id":"d","token":"t","event":"e","timestamp":123456789012345678901234567890}"#
                    .to_string(),
                false,
            ),
        ] {
            let parsed = Event::parse(Some(payload.as_bytes()));
            assert_eq!(parsed.is_ok(), expect_ok, "{:.80}: {parsed:?}", payload);
        }
    }

    proptest! {
        // A fixed budget of generated hostile documents: key fields of every type,
        // repeated, numbers no integer holds, deep nesting, lone surrogates.
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn generated_documents_parse_or_fail_with_a_known_kind(
            fields in proptest::collection::vec((0usize..6, 0usize..9), 0..10)
        ) {
            let names = ["distinct_id", "token", "event", "timestamp", "properties", "uuid"];
            let values = [
                r#""x""#,
                "1",
                "-1e400",
                "123456789012345678901234567890",
                "null",
                "[[[[[[[[]]]]]]]]",
                r#"{"a":{"b":[1,2,{"c":"\u0000"}]}}"#,
                r#""\ud800""#,
                r#""2024-02-30T25:61:00Z""#,
            ];
            let body: Vec<String> = fields
                .iter()
                .map(|(n, v)| format!("\"{}\":{}", names[*n], values[*v]))
                .collect();
            let doc = format!("{{{}}}", body.join(","));
            let parsed = Event::parse(Some(doc.as_bytes()));
            let keyed = stored_key(Some(doc.as_bytes()));
            prop_assert_eq!(parsed.is_ok(), keyed.is_ok());
            if let Err(error) = parsed {
                prop_assert!(EventError::KINDS.contains(&error.kind()));
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Event::parse(Some(&bytes));
        }

        #[test]
        fn rfc3339_and_epoch_ms_agree(ms in -62_135_596_800_000i64..253_402_300_799_999) {
            let text = chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339();
            let a = key_of(&event_json(&format!("{text:?}")));
            let b = key_of(&event_json(&ms.to_string()));
            prop_assert_eq!(a, b);
        }
    }
}
