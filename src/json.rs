//! JSON written by hand on the signing path, where serde's escape scan showed in profiles:
//! strings that need no escape are copied as they are, with one check per byte; anything
//! else is left to serde.

/// Whether `s` can stand in a JSON string as it is: no quote, backslash or control
/// character. Non-ASCII needs no escape either, but is left to serde to keep this check one
/// comparison per byte.
pub fn plain(s: &str) -> bool {
    !s.bytes().fold(false, |any, b| {
        any | (b < 0x20 || b == b'"' || b == b'\\' || b >= 0x80)
    })
}

/// Appends `,"key":"value"` (`key` given as `,"key":"`) for a [`plain`] value.
pub fn push_str(out: &mut Vec<u8>, key: &[u8], value: &str) {
    out.extend_from_slice(key);
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
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
        let mut out = Vec::new();
        push_int(&mut out, -42);
        push_str(&mut out, b",\"k\":\"", "v");
        assert_eq!(out, b"-42,\"k\":\"v\"");
    }
}
