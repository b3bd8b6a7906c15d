//! ECDSA signatures from KMS (DER, RFC 3279 `Ecdsa-Sig-Value`) to JOSE form (RFC 7518
//! section 3.4: r and s as fixed-length big-endian integers, concatenated).
//!
//! The parser is strict DER: anything KMS would never send (BER long forms, trailing bytes,
//! negative or non-minimal integers, values wider than the curve) is refused rather than
//! guessed at, because a misread signature would go out in a token.

/// Converts `SEQUENCE { r INTEGER, s INTEGER }` to `r || s`, each left-padded to
/// `field_len` bytes (32 for P-256, 48 for P-384, 66 for P-521).
pub(crate) fn der_to_jose(der: &[u8], field_len: usize) -> Result<Vec<u8>, &'static str> {
    let (body, rest) = read_tlv(der, 0x30)?;
    if !rest.is_empty() {
        return Err("trailing bytes after the signature");
    }
    let (r, body) = read_tlv(body, 0x02)?;
    let (s, body) = read_tlv(body, 0x02)?;
    if !body.is_empty() {
        return Err("trailing bytes inside the signature");
    }
    let mut out = vec![0u8; 2 * field_len];
    put_integer(r, &mut out[..field_len])?;
    put_integer(s, &mut out[field_len..])?;
    Ok(out)
}

/// Reads one element with tag `tag`; returns its contents and what follows it.
fn read_tlv(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), &'static str> {
    let [found, first, rest @ ..] = input else {
        return Err("truncated");
    };
    if *found != tag {
        return Err("unexpected tag");
    }
    let (len, rest) = match *first {
        short @ 0..=0x7f => (usize::from(short), rest),
        // One length byte covers every ECDSA signature up to P-521 (at most 139 bytes).
        0x81 => match rest {
            [len @ 0x80..=0xff, rest @ ..] => (usize::from(*len), rest),
            [_, ..] => return Err("non-minimal length"),
            [] => return Err("truncated"),
        },
        _ => return Err("unsupported length form"),
    };
    if rest.len() < len {
        return Err("truncated");
    }
    Ok(rest.split_at(len))
}

/// Writes the positive DER INTEGER `value` right-aligned into `field`.
fn put_integer(value: &[u8], field: &mut [u8]) -> Result<(), &'static str> {
    let magnitude = match value {
        [] => return Err("empty integer"),
        [b, ..] if b & 0x80 != 0 => return Err("negative integer"),
        // A leading zero is only allowed to keep the next byte from reading as negative.
        [0, next, ..] if next & 0x80 == 0 => return Err("non-minimal integer"),
        [0, rest @ ..] => rest,
        all => all,
    };
    if magnitude.iter().all(|b| *b == 0) {
        return Err("zero integer");
    }
    if magnitude.len() > field.len() {
        return Err("integer wider than the curve");
    }
    let start = field.len() - magnitude.len();
    field[start..].copy_from_slice(magnitude);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![0x02, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    fn seq(r: &[u8], s: &[u8]) -> Vec<u8> {
        let body = [int(r), int(s)].concat();
        let mut out = vec![0x30];
        if body.len() >= 0x80 {
            out.push(0x81);
        }
        out.push(body.len() as u8);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn full_width_values_pass_through() {
        let r = [0x11u8; 32];
        let s = [0x22u8; 32];
        let jose = der_to_jose(&seq(&r, &s), 32).unwrap();
        assert_eq!(jose, [r, s].concat());
    }

    #[test]
    fn sign_bytes_are_dropped() {
        let mut r = vec![0x00];
        r.extend_from_slice(&[0xffu8; 32]);
        let mut s = vec![0x00];
        s.extend_from_slice(&[0x80u8; 32]);
        let jose = der_to_jose(&seq(&r, &s), 32).unwrap();
        assert_eq!(&jose[..32], &[0xffu8; 32]);
        assert_eq!(&jose[32..], &[0x80u8; 32]);
    }

    #[test]
    fn short_values_are_left_padded() {
        let jose = der_to_jose(&seq(&[0x01], &[0x00, 0x80]), 32).unwrap();
        let mut expected = vec![0u8; 64];
        expected[31] = 0x01;
        expected[63] = 0x80;
        assert_eq!(jose, expected);
        // 31-byte r: one byte of padding.
        let jose = der_to_jose(&seq(&[0x7fu8; 31], &[0x7fu8; 32]), 32).unwrap();
        assert_eq!(jose[0], 0);
        assert_eq!(&jose[1..32], &[0x7fu8; 31]);
    }

    #[test]
    fn p521_uses_66_byte_fields_and_long_form_lengths() {
        // P-521 values are at most 521 bits: 66 bytes whose top byte is 0x01.
        let mut r = vec![0x01];
        r.extend_from_slice(&[0xabu8; 65]);
        let s = [0x55u8; 64];
        let der = seq(&r, &s);
        assert_eq!(
            &der[..2],
            &[0x30, 0x81],
            "test vector must use a long-form length"
        );
        let jose = der_to_jose(&der, 66).unwrap();
        assert_eq!(jose.len(), 132);
        assert_eq!(&jose[..66], r.as_slice());
        assert_eq!(&jose[66..68], &[0, 0]);
        assert_eq!(&jose[68..], &s);
    }

    #[test]
    fn real_signature_round_trips_through_aws_lc() {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair};
        let rng = SystemRandom::new();
        for (der_alg, fixed_alg, field) in [
            (
                &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                &signature::ECDSA_P256_SHA256_FIXED,
                32,
            ),
            (
                &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                &signature::ECDSA_P384_SHA384_FIXED,
                48,
            ),
            (
                &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
                &signature::ECDSA_P521_SHA512_FIXED,
                66,
            ),
        ] {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(der_alg, &rng).unwrap();
            let pair = EcdsaKeyPair::from_pkcs8(der_alg, pkcs8.as_ref()).unwrap();
            // Enough signatures that short r and s values turn up for P-256.
            for _ in 0..200 {
                let der = pair.sign(&rng, b"msg").unwrap();
                let jose = der_to_jose(der.as_ref(), field).unwrap();
                signature::UnparsedPublicKey::new(fixed_alg, pair.public_key().as_ref())
                    .verify(b"msg", &jose)
                    .unwrap();
            }
        }
    }

    #[test]
    fn malformed_der_is_refused() {
        let good = seq(&[0x01; 32], &[0x02; 32]);
        let cases: Vec<(&str, Vec<u8>, usize)> = vec![
            ("empty", vec![], 32),
            ("trailing bytes", [good.clone(), vec![0]].concat(), 32),
            ("truncated", good[..good.len() - 1].to_vec(), 32),
            ("truncated header", vec![0x30], 32),
            (
                "wrong outer tag",
                [vec![0x31], good[1..].to_vec()].concat(),
                32,
            ),
            (
                "wrong inner tag",
                {
                    let mut d = good.clone();
                    d[2] = 0x04;
                    d
                },
                32,
            ),
            ("overlong r", seq(&[0x01; 33], &[0x02; 32]), 32),
            ("p521 overlong", seq(&[0x01; 67], &[0x02; 32]), 66),
            ("negative r", seq(&[0x80; 32], &[0x02; 32]), 32),
            ("negative s", seq(&[0x01; 32], &[0xff]), 32),
            ("non-minimal r", seq(&[0x00, 0x01], &[0x02]), 32),
            ("zero s", seq(&[0x01], &[0x00]), 32),
            ("empty r", seq(&[], &[0x02]), 32),
            (
                "missing s",
                {
                    let body = int(&[0x01; 32]);
                    [vec![0x30, body.len() as u8], body].concat()
                },
                32,
            ),
            (
                "extra integer",
                {
                    let body = [int(&[1]), int(&[2]), int(&[3])].concat();
                    [vec![0x30, body.len() as u8], body].concat()
                },
                32,
            ),
            (
                "non-minimal long length",
                {
                    let body = [int(&[1]), int(&[2])].concat();
                    [vec![0x30, 0x81, body.len() as u8], body].concat()
                },
                32,
            ),
            (
                "two-byte length",
                [vec![0x30, 0x82, 0x00, 0x44], good[2..].to_vec()].concat(),
                32,
            ),
            (
                "indefinite length",
                [vec![0x30, 0x80], good[2..].to_vec(), vec![0, 0]].concat(),
                32,
            ),
            (
                "length past end",
                vec![0x30, 0x81, 0x90, 0x02, 0x01, 0x01],
                66,
            ),
        ];
        for (what, der, field) in cases {
            assert!(der_to_jose(&der, field).is_err(), "{what} was accepted");
        }
    }
}
