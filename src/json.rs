//! JSON written by hand on the signing path (the token, the audit line, the sign
//! response), where serde's escape scan showed in profiles: a string that needs no escape
//! is copied as it is, with one check per byte; any other goes through serde. The bytes are
//! serde's either way.

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
