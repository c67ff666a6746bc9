//! Strict JSON for the token's header and claims.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// `json` as a JSON object, or `None`: not UTF-8 JSON, not an object, or an object anywhere in
/// it with a duplicate key.
///
/// serde_json keeps the last of duplicate keys and other parsers the first, so
/// `{"alg":"none","alg":"HS256"}` means different things to different verifiers: refuse it.
/// Everything else is serde_json's own rules (numbers past the `f64` range and lone surrogate
/// escapes refused, at most 127 nested arrays or objects), which the Python verifier follows.
pub(crate) fn strict_object(json: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Strict>(json).ok()?.0 {
        Value::Object(object) => Some(object),
        _ => None,
    }
}

/// A [`Value`] whose objects have no duplicate keys.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(value)))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Strict, E> {
        Ok(Strict(Value::from(value)))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Strict, E> {
        Ok(Strict(Value::from(value)))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Strict, E> {
        Number::from_f64(value)
            .map(|number| Strict(Value::Number(number)))
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, value: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(value.to_owned())))
    }

    fn visit_string<E>(self, value: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(value)))
    }

    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }

    fn visit_none<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Strict(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut object = Map::new();
        while let Some((key, Strict(value))) = map.next_entry::<String, Strict>()? {
            if object.insert(key, value).is_some() {
                return Err(de::Error::custom("duplicate key"));
            }
        }
        Ok(Strict(Value::Object(object)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_parse_as_serde_json_parses_them() {
        let text =
            br#"{"a": [1, -2, 1.5, -0, true, null, "\u00e9"], "b": {"c": 18446744073709551616}}"#;
        let expected: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(Value::Object(strict_object(text).unwrap()), expected);
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(strict_object(br#"{"alg": "none", "alg": "HS256"}"#).is_none());
        assert!(strict_object(br#"{"a": [{"b": 1, "b": 1}]}"#).is_none());
        assert!(strict_object(br#"{"a": {"b": 1}, "c": {"b": 1}}"#).is_some());
    }

    #[test]
    fn only_objects_within_serde_json_limits() {
        for refused in [
            &b"[]"[..],
            b"1",
            b"{\"exp\": 1e400}",
            b"{\"x\": \"\\ud800\"}",
            b"{\"x\": NaN}",
            b"{\"x\": 1}{}",
            b"\xef\xbb\xbf{}",
        ] {
            assert!(strict_object(refused).is_none(), "{refused:?}");
        }
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(strict_object(format!("{{\"x\": {}}}", nested(126)).as_bytes()).is_some());
        assert!(strict_object(format!("{{\"x\": {}}}", nested(127)).as_bytes()).is_none());
    }
}
