//! JSON helpers shared by the signing and the verifying side.
//!
//! [`strict`] is the one rule for what a token's header and claims may be: JSON as
//! `serde_json::Value` reads it, with no name given twice in any object (verifiers that take
//! the first of two names and those that take the last would read different tokens). The
//! signing path refuses claims that break it, the verifier refuses tokens that do.
//!
//! [`push_str`] and [`push_int`] write JSON by hand on the signing path (the token, the
//! audit line, the sign response), where serde's escape scan showed in profiles: a string
//! that needs no escape is copied as it is, with one check per byte; any other goes through
//! serde. The bytes are serde's either way.

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};

/// The latest NumericDate (`exp`, `nbf`, `iat`) keyturn reads: 9999-12-31T23:59:59Z, the
/// last instant an HTTP date can hold. Every time read from outside lies in 0 to this, so
/// differences between two of them cannot overflow.
pub const LAST_NUMERIC_DATE: i64 = 253_402_300_799;
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// A JSON string, borrowed from the input unless it holds escapes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct Text<'a>(#[serde(borrow)] pub Cow<'a, str>);

/// Any JSON value, parsed as `serde_json::Value` would parse it and then dropped: a lone
/// surrogate, a number out of range or nesting deeper than 128 fails here as it would there
/// (a syntax error), and so does an object with a name given twice (a data error).
struct Valid;

impl<'de> Deserialize<'de> for Valid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Valid)
    }
}

impl<'de> Visitor<'de> for Valid {
    type Value = Valid;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_str<E>(self, _: &str) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_unit<E>(self) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Valid, A::Error> {
        while seq.next_element::<Valid>()?.is_some() {}
        Ok(Valid)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Valid, A::Error> {
        let mut names = Vec::new();
        while let Some(Text(name)) = map.next_key::<Text<'de>>()? {
            map.next_value::<Valid>()?;
            names.push(name);
        }
        names.sort_unstable();
        match names.windows(2).find(|pair| pair[0] == pair[1]) {
            Some(pair) => Err(serde::de::Error::custom(format_args!(
                "the name {:?} is given twice in one object",
                pair[0].chars().take(64).collect::<String>()
            ))),
            None => Ok(Valid),
        }
    }
}

/// Checks that `json` is one JSON value as `serde_json::Value` takes it, with no name given
/// twice in any object (an escaped spelling of a name is the same name). A name twice is a
/// data error ([`serde_json::error::Category::Data`]); anything else is not JSON
/// `serde_json::Value` takes.
pub fn strict(json: &[u8]) -> Result<(), serde_json::Error> {
    serde_json::from_slice::<Valid>(json).map(|Valid| ())
}

/// Whether `s` can stand in a JSON string as it is: no quote, backslash or control
/// character. Non-ASCII needs no escape either, but is left to serde to keep this check one
/// comparison per byte.
fn plain(s: &str) -> bool {
    !s.bytes().fold(false, |any, b| {
        any | (b < 0x20 || b == b'"' || b == b'\\' || b >= 0x80)
    })
}

/// Appends `s` as a JSON string.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    if plain(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Serializing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Appends an integer.
pub fn push_int(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_strings_are_those_serde_copies_unchanged() {
        for s in ["", "abc", "a-b_c.d~", "user:1", "https://x/y?z=1", "\u{7f}"] {
            assert!(plain(s), "{s:?}");
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
        }
        for s in ["a\"b", "a\\b", "a\nb", "\u{1}", "\u{e9}"] {
            assert!(!plain(s), "{s:?}");
        }
        for s in ["v", "a\"b", "\u{e9}\n"] {
            let mut out = Vec::new();
            push_int(&mut out, -42);
            push_str(&mut out, s);
            assert_eq!(
                out,
                format!("-42{}", serde_json::to_string(s).unwrap()).as_bytes()
            );
        }
    }
}
