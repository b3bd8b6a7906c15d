//! A strict JWT verifier, for `keyturn verify` and for checking our own tokens.
//!
//! It refuses the known attack classes: `alg` none or HMAC, an `alg` that differs from the
//! JWK's, keys embedded in or referenced from the header (`jwk`, `jku`, `x5u`, `x5c`),
//! unknown `crit` extensions, a missing or unknown `kid`, DER-encoded or out-of-range ECDSA
//! signatures, and wrong `typ`, `iss` or `aud` (exact matches only), expired and
//! not-yet-valid tokens. `exp`, `nbf` and `iat` must be whole seconds within years 1970 to
//! 9999, and a header or claims set with a name given twice (in any object) is refused, by
//! the rule the signing side keeps ([`crate::core::json::strict`]).
//!
//! Where the keys come from matters as much: [`check_url`] refuses plain `http://` except to
//! this machine, and a JWKS body is read up to [`MAX_JWKS`] only.
//!
//! A token with a `status` claim (draft-ietf-oauth-status-list) is valid only while its
//! entry in the Status List Token at `status.status_list.uri` is VALID: [`status_ref`]
//! reads the claim, [`status_list`] verifies the list (fetched by the same URL rule, signed
//! by a key of the same JWKS) and [`check_status`] reads the token's entry.

use crate::core::statuslist::bits::Packed;
use crate::core::statuslist::doc::Status;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use keyturn_backend::{Algorithm, Jwk};
use serde_json::{Map, Value};

/// Longest token accepted.
const MAX_TOKEN: usize = 16 * 1024;

/// Largest JWKS body read: keyturn's own hold at most 50 keys, tens of KiB; a body past
/// this is refused as it arrives.
pub const MAX_JWKS: usize = 1 << 20;

/// Largest Status List Token read: keyturn's lists are at most 256 KiB of statuses, which
/// compress to far less; the same cap as a JWKS.
pub const MAX_STATUS_LIST: usize = MAX_JWKS;

/// Largest list a Status List Token may inflate to (16 Mi entries of 8 bits): a 1 MiB body
/// of zlib can inflate to a thousand times its size.
const MAX_STATUSES: usize = 16 << 20;

/// The media type of a Status List Token in JWT form, and its `typ`.
pub const STATUS_LIST_TYPE: &str = "application/statuslist+jwt";

/// The latest time claim accepted.
const MAX_TIME: i64 = crate::core::json::LAST_NUMERIC_DATE;

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// Not three base64url parts of JSON.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header asks for something we never accept.
    #[error("refused header: {0}")]
    Header(String),
    /// No published key with that kid.
    #[error("no key with kid {0:?} in the JWKS")]
    UnknownKid(String),
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// A claim check failed.
    #[error("{0}")]
    Claims(String),
    /// The JWKS could not be used.
    #[error("bad JWKS: {0}")]
    Jwks(String),
    /// The token's status is not VALID, or cannot be read.
    #[error("{0}")]
    Status(String),
}

/// A key from a JWKS.
#[derive(Debug, Clone)]
pub struct JwksKey {
    /// Its kid.
    pub kid: String,
    /// The `alg` it is pinned to, if the JWK says.
    pub alg: Option<Algorithm>,
    /// The public key.
    pub jwk: Jwk,
}

/// Refuses a URL (of a JWKS or a status list) whose answer could be replaced on the way,
/// before any connection: plain `http://` is accepted only to a loopback host
/// ([`keyturn_backend::is_loopback_host`]).
pub fn check_url(url: &str) -> Result<(), String> {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return Ok(()); // not a URL: the fetch says so
    };
    if uri.scheme_str() == Some("http")
        && !uri.host().is_some_and(keyturn_backend::is_loopback_host)
    {
        return Err(format!(
            "{url:?}: what is fetched over plain http from another machine could be replaced \
             on the way; use https:// (http:// is accepted for loopback hosts only: \
             127.0.0.0/8, ::1, localhost)"
        ));
    }
    Ok(())
}

/// Parses a JWK Set, keeping the signing keys keyturn can verify. Keys with private
/// members, unknown types, or `use` other than `sig` are skipped.
pub fn parse_jwks(bytes: &[u8]) -> Result<Vec<JwksKey>, VerifyError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| VerifyError::Jwks(e.to_string()))?;
    let keys = value
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| VerifyError::Jwks("no \"keys\" array".into()))?;
    let mut out = Vec::new();
    for key in keys {
        let Some(obj) = key.as_object() else { continue };
        if ["d", "p", "q", "dp", "dq", "qi", "k"]
            .iter()
            .any(|m| obj.contains_key(*m))
        {
            continue;
        }
        if obj.get("use").is_some_and(|u| u != "sig") {
            continue;
        }
        let Some(kid) = obj.get("kid").and_then(Value::as_str) else {
            continue;
        };
        let alg = match obj.get("alg") {
            None => None,
            Some(a) => match a.as_str().and_then(|a| a.parse().ok()) {
                Some(a) => Some(a),
                None => continue,
            },
        };
        let Ok(jwk) = serde_json::from_value::<Jwk>(key.clone()) else {
            continue;
        };
        out.push(JwksKey {
            kid: kid.to_owned(),
            alg,
            jwk,
        });
    }
    Ok(out)
}

/// What the caller expects of a token.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Exact `iss`; None: any issuer (`keyturn verify` asks for `--any-issuer` to say so).
    pub issuer: Option<String>,
    /// One of the token's `aud` values must equal this exactly; None: any audience
    /// (`--any-audience`).
    pub audience: Option<String>,
    /// Exact `typ` header (case-insensitive, `application/` prefix optional).
    pub typ: Option<String>,
    /// Seconds of tolerated clock skew.
    pub leeway: i64,
}

/// The header or the claims (`refuse` makes the error for a name given twice).
fn decode_json(
    part: &str,
    refuse: fn(String) -> VerifyError,
) -> Result<Map<String, Value>, VerifyError> {
    let bytes = B64
        .decode(part)
        .map_err(|_| VerifyError::Malformed("a part is not base64url"))?;
    // A verifier that takes the first of two names would read another token.
    if let Err(e) = crate::core::json::strict(&bytes) {
        if e.classify() == serde_json::error::Category::Data {
            return Err(refuse(format!("{e}; a name may be given once only")));
        }
    }
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(VerifyError::Malformed("a part is not a JSON object")),
    }
}

fn norm_typ(t: &str) -> String {
    let t = t.to_ascii_lowercase();
    t.strip_prefix("application/")
        .map(str::to_owned)
        .unwrap_or(t)
}

/// Verifies `token` against `keys` at `now`; returns the claims.
pub fn verify(
    token: &str,
    keys: &[JwksKey],
    expect: &Expect,
    now: i64,
) -> Result<Map<String, Value>, VerifyError> {
    verify_jws(token, MAX_TOKEN, keys, expect, now)
}

/// [`verify`] for a JWS of at most `max_len` bytes.
fn verify_jws(
    token: &str,
    max_len: usize,
    keys: &[JwksKey],
    expect: &Expect,
    now: i64,
) -> Result<Map<String, Value>, VerifyError> {
    if token.len() > max_len {
        return Err(VerifyError::Malformed("token too long"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed("expected three dot-separated parts"));
    };
    let header = decode_json(h, VerifyError::Header)?;
    let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let alg: Algorithm = alg_name.parse().map_err(|_| {
        VerifyError::Header(format!(
            "alg {alg_name:?} is not an accepted asymmetric algorithm"
        ))
    })?;
    for member in ["jwk", "jku", "x5u", "x5c"] {
        if header.contains_key(member) {
            return Err(VerifyError::Header(format!(
                "\"{member}\" in the header: keys come from the JWKS only"
            )));
        }
    }
    if header.contains_key("crit") {
        return Err(VerifyError::Header(
            "\"crit\" lists extensions this verifier does not understand".into(),
        ));
    }
    if let Some(expected) = &expect.typ {
        let typ = header.get("typ").and_then(Value::as_str).unwrap_or("");
        if norm_typ(typ) != norm_typ(expected) {
            return Err(VerifyError::Header(format!(
                "typ {typ:?} is not {expected:?}"
            )));
        }
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or_else(|| VerifyError::Header("no \"kid\"".into()))?;
    let key = keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or_else(|| VerifyError::UnknownKid(kid.chars().take(100).collect()))?;
    if key.alg.is_some_and(|pinned| pinned != alg) {
        return Err(VerifyError::Header(format!(
            "alg {alg} does not match the key's alg"
        )));
    }
    let sig = B64
        .decode(s)
        .map_err(|_| VerifyError::Malformed("signature is not base64url"))?;
    let signing_input = &token[..h.len() + 1 + c.len()];
    if !key.jwk.verify(alg, signing_input.as_bytes(), &sig) {
        return Err(VerifyError::Signature);
    }

    let claims = decode_json(c, |e| VerifyError::Claims(format!("claims: {e}")))?;
    // NumericDates as JSON integers only: a float such as 1e300 would have to be rounded
    // or saturated into some time, and verifiers would not agree on which.
    let time = |name: &str| -> Result<Option<i64>, VerifyError> {
        let Some(value) = claims.get(name) else {
            return Ok(None);
        };
        match value.as_i64() {
            Some(t) if (0..=MAX_TIME).contains(&t) => Ok(Some(t)),
            _ => Err(VerifyError::Claims(format!(
                "\"{name}\" must be an integer number of seconds from 0 to {MAX_TIME} (year \
                 9999), not {}",
                value.to_string().chars().take(40).collect::<String>()
            ))),
        }
    };
    // The leeway moves the present, never the token's times.
    let out_of_range = || VerifyError::Claims("the leeway is out of range".into());
    let earliest = now.checked_sub(expect.leeway).ok_or_else(out_of_range)?;
    let latest = now.checked_add(expect.leeway).ok_or_else(out_of_range)?;
    let exp = time("exp")?.ok_or_else(|| VerifyError::Claims("no \"exp\"".into()))?;
    if exp < earliest {
        return Err(VerifyError::Claims(format!(
            "expired {}s ago",
            now.abs_diff(exp)
        )));
    }
    if let Some(nbf) = time("nbf")? {
        if latest < nbf {
            return Err(VerifyError::Claims(format!(
                "not valid for another {}s (nbf)",
                nbf.abs_diff(now)
            )));
        }
    }
    if let Some(iat) = time("iat")? {
        if latest < iat {
            return Err(VerifyError::Claims("issued in the future (iat)".into()));
        }
    }
    if let Some(issuer) = &expect.issuer {
        if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
            return Err(VerifyError::Claims(format!("iss is not {issuer:?}")));
        }
    }
    if let Some(audience) = &expect.audience {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => a == audience,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience.as_str())),
            _ => false,
        };
        if !ok {
            return Err(VerifyError::Claims(format!(
                "aud does not contain {audience:?}"
            )));
        }
    }
    Ok(claims)
}

/// Where a token's status is: its `status.status_list` claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRef {
    /// The Status List Token's URL (and its `sub`).
    pub uri: String,
    /// The token's entry in the list.
    pub idx: u64,
}

/// The token's `status.status_list`, if it has a `status` claim. A `status` claim this
/// verifier cannot read is refused, not ignored: it may be the one that revokes the token.
pub fn status_ref(claims: &Map<String, Value>) -> Result<Option<StatusRef>, VerifyError> {
    let Some(status) = claims.get("status") else {
        return Ok(None);
    };
    let list = status.get("status_list");
    let idx = list.and_then(|l| l.get("idx")).and_then(Value::as_u64);
    let uri = list.and_then(|l| l.get("uri")).and_then(Value::as_str);
    match (idx, uri) {
        (Some(idx), Some(uri)) => Ok(Some(StatusRef {
            uri: uri.to_owned(),
            idx,
        })),
        _ => Err(VerifyError::Status(
            "the \"status\" claim is not {\"status_list\": {\"idx\": <non-negative integer>, \
             \"uri\": <string>}}: the token's status cannot be checked"
                .into(),
        )),
    }
}

/// Verifies the Status List Token `jwt` fetched from `uri` against `keys` (the JWKS the
/// token verified with) at `now`: its `typ`, its signature, its `sub` (`uri`), its `exp`, and
/// a `status_list` of 1, 2, 4 or 8 bits that inflates to at most [`MAX_STATUSES`] bytes.
/// `exp` is required, where the draft only recommends it: an old copy of a list without
/// one, showing a token VALID, could be served for ever.
pub fn status_list(
    jwt: &str,
    uri: &str,
    keys: &[JwksKey],
    leeway: i64,
    now: i64,
) -> Result<Packed, VerifyError> {
    let refused =
        |e: &dyn std::fmt::Display| VerifyError::Status(format!("status list {uri}: {e}"));
    let expect = Expect {
        typ: Some(STATUS_LIST_TYPE.into()),
        leeway,
        ..Expect::default()
    };
    let claims =
        verify_jws(jwt.trim(), MAX_STATUS_LIST, keys, &expect, now).map_err(|e| refused(&e))?;
    if claims.get("sub").and_then(Value::as_str) != Some(uri) {
        return Err(refused(&"its sub is not the URI it was fetched from"));
    }
    let list = claims.get("status_list");
    let bits = list.and_then(|l| l.get("bits")).and_then(Value::as_u64);
    let lst = list.and_then(|l| l.get("lst")).and_then(Value::as_str);
    let (Some(bits), Some(lst)) = (bits.and_then(|b| u8::try_from(b).ok()), lst) else {
        return Err(refused(
            &"\"status_list\" is not {\"bits\": 1, 2, 4 or 8, \"lst\": <string>}",
        ));
    };
    Packed::decode(bits, lst, MAX_STATUSES).map_err(|e| refused(&e))
}

/// Refuses a token whose entry in `list` is not VALID. An index past the list's end makes
/// the token invalid, as the draft says.
pub fn check_status(list: &Packed, at: &StatusRef) -> Result<(), VerifyError> {
    let StatusRef { uri, idx } = at;
    let status = match list.get(*idx) {
        None => format!(
            "invalid: index {idx} is past the end of status list {uri} ({} entries)",
            list.len()
        ),
        Some(value) => match Status::of(value) {
            Some(Status::Valid) => return Ok(()),
            Some(status) => format!("{status} (status list {uri}, index {idx})"),
            None => format!(
                "not valid: its status is {value}, application-specific (status list {uri}, \
                 index {idx})"
            ),
        },
    };
    Err(VerifyError::Status(format!("the token is {status}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyturn_backend::software::SoftwareKey;
    use keyturn_backend::KeyType;

    fn b64json(v: &Value) -> String {
        B64.encode(serde_json::to_vec(v).unwrap())
    }

    struct Fixture {
        key: SoftwareKey,
        keys: Vec<JwksKey>,
        kid: String,
    }

    fn fixture(kt: KeyType) -> Fixture {
        let key = SoftwareKey::generate(kt).unwrap();
        let public = key.public_key().unwrap();
        let kid = public.kid();
        let alg = kt.default_algorithm();
        let keys = vec![JwksKey {
            kid: kid.clone(),
            alg: Some(alg),
            jwk: public.jwk().clone(),
        }];
        Fixture { key, keys, kid }
    }

    fn token(f: &Fixture, header: Value, claims: Value) -> String {
        let input = format!("{}.{}", b64json(&header), b64json(&claims));
        let alg: Algorithm = header["alg"]
            .as_str()
            .unwrap_or("ES256")
            .parse()
            .unwrap_or(Algorithm::ES256);
        let sig = f.key.sign(alg, input.as_bytes()).unwrap();
        format!("{input}.{}", B64.encode(sig))
    }

    fn good_claims() -> Value {
        serde_json::json!({"iss": "https://iss", "aud": ["api", "other"], "exp": 2000, "nbf": 1000, "iat": 1000, "sub": "a"})
    }

    fn expect() -> Expect {
        Expect {
            issuer: Some("https://iss".into()),
            audience: Some("api".into()),
            typ: Some("JWT".into()),
            leeway: 60,
        }
    }

    #[test]
    fn accepts_a_good_token() {
        let f = fixture(KeyType::EcP256);
        let t = token(
            &f,
            serde_json::json!({"alg": "ES256", "kid": f.kid, "typ": "JWT"}),
            good_claims(),
        );
        let claims = verify(&t, &f.keys, &expect(), 1500).unwrap();
        assert_eq!(claims["sub"], "a");
    }

    #[test]
    fn rejects_attack_classes() {
        let f = fixture(KeyType::EcP256);
        let kid = f.kid.clone();
        let good = token(
            &f,
            serde_json::json!({"alg": "ES256", "kid": kid, "typ": "JWT"}),
            good_claims(),
        );
        let (h, rest) = good.split_once('.').unwrap();
        let (c, s) = rest.split_once('.').unwrap();
        let with_header = |header: Value| format!("{}.{c}.{s}", b64json(&header));

        // alg none, with and without a signature.
        let none = with_header(serde_json::json!({"alg": "none", "kid": kid}));
        assert!(matches!(
            verify(&none, &f.keys, &expect(), 1500),
            Err(VerifyError::Header(_))
        ));
        let none_unsigned = format!("{}.{c}.", b64json(&serde_json::json!({"alg": "none"})));
        assert!(verify(&none_unsigned, &f.keys, &expect(), 1500).is_err());

        // HMAC signed with the public key as secret.
        let public_x = serde_json::to_vec(&f.keys[0].jwk).unwrap();
        let hs_input = format!(
            "{}.{c}",
            b64json(&serde_json::json!({"alg": "HS256", "kid": kid, "typ": "JWT"}))
        );
        let mac = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &public_x),
            hs_input.as_bytes(),
        );
        let hs = format!("{hs_input}.{}", B64.encode(mac.as_ref()));
        assert!(matches!(
            verify(&hs, &f.keys, &expect(), 1500),
            Err(VerifyError::Header(_))
        ));

        // Embedded or referenced keys.
        for member in ["jwk", "jku", "x5u", "x5c"] {
            let t = with_header(
                serde_json::json!({"alg": "ES256", "kid": kid, "typ": "JWT", member: "x"}),
            );
            assert!(
                matches!(
                    verify(&t, &f.keys, &expect(), 1500),
                    Err(VerifyError::Header(_))
                ),
                "{member}"
            );
        }
        // Unknown crit.
        let t = with_header(
            serde_json::json!({"alg": "ES256", "kid": kid, "typ": "JWT", "crit": ["exp"]}),
        );
        assert!(matches!(
            verify(&t, &f.keys, &expect(), 1500),
            Err(VerifyError::Header(_))
        ));
        // kid tricks: unknown, path-like, missing.
        for k in ["../../etc/passwd", "", "x' OR '1'='1"] {
            let t = with_header(serde_json::json!({"alg": "ES256", "kid": k, "typ": "JWT"}));
            assert!(
                matches!(
                    verify(&t, &f.keys, &expect(), 1500),
                    Err(VerifyError::UnknownKid(_))
                ),
                "{k}"
            );
        }
        let t = with_header(serde_json::json!({"alg": "ES256", "typ": "JWT"}));
        assert!(matches!(
            verify(&t, &f.keys, &expect(), 1500),
            Err(VerifyError::Header(_))
        ));
        // alg confusion against the pinned alg.
        let t = with_header(serde_json::json!({"alg": "ES384", "kid": kid, "typ": "JWT"}));
        assert!(matches!(
            verify(&t, &f.keys, &expect(), 1500),
            Err(VerifyError::Header(_))
        ));
        // Wrong typ.
        let t = with_header(serde_json::json!({"alg": "ES256", "kid": kid, "typ": "at+jwt"}));
        assert!(matches!(
            verify(&t, &f.keys, &expect(), 1500),
            Err(VerifyError::Header(_))
        ));
        let _ = h;
    }

    #[test]
    fn rejects_bad_ecdsa_signatures() {
        let f = fixture(KeyType::EcP256);
        let good = token(
            &f,
            serde_json::json!({"alg": "ES256", "kid": f.kid, "typ": "JWT"}),
            good_claims(),
        );
        let (input, sig) = good.rsplit_once('.').unwrap();
        let sig = B64.decode(sig).unwrap();
        let zero = format!("{input}.{}", B64.encode([0u8; 64]));
        assert_eq!(
            verify(&zero, &f.keys, &expect(), 1500),
            Err(VerifyError::Signature)
        );
        // r and s = n (the P-256 group order): out of range.
        let n = hex_bytes("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
        let out_of_range = format!("{input}.{}", B64.encode([n.clone(), n].concat()));
        assert_eq!(
            verify(&out_of_range, &f.keys, &expect(), 1500),
            Err(VerifyError::Signature)
        );
        // The same signature DER-encoded.
        let mut der = vec![0x30, 0x46, 0x02, 0x21, 0x00];
        der.extend_from_slice(&sig[..32]);
        der.extend_from_slice(&[0x02, 0x21, 0x00]);
        der.extend_from_slice(&sig[32..]);
        let der = format!("{input}.{}", B64.encode(der));
        assert_eq!(
            verify(&der, &f.keys, &expect(), 1500),
            Err(VerifyError::Signature)
        );
        // A flipped bit.
        let mut flipped = sig.clone();
        flipped[10] ^= 1;
        let flipped = format!("{input}.{}", B64.encode(flipped));
        assert_eq!(
            verify(&flipped, &f.keys, &expect(), 1500),
            Err(VerifyError::Signature)
        );
    }

    fn hex_bytes(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn rejects_bad_claims() {
        let f = fixture(KeyType::Ed25519);
        let header = serde_json::json!({"alg": "EdDSA", "kid": f.kid, "typ": "JWT"});
        let t = token(&f, header.clone(), good_claims());
        assert!(verify(&t, &f.keys, &expect(), 1500).is_ok());
        // expired (beyond leeway) and within leeway
        assert!(matches!(
            verify(&t, &f.keys, &expect(), 2061),
            Err(VerifyError::Claims(_))
        ));
        assert!(verify(&t, &f.keys, &expect(), 2060).is_ok());
        // not yet valid
        assert!(matches!(
            verify(&t, &f.keys, &expect(), 900),
            Err(VerifyError::Claims(_))
        ));
        // iss and aud partial matches
        for (iss, aud) in [
            ("https://iss", "ap"),
            ("https://iss", "apix"),
            ("https://is", "api"),
            ("https://iss/", "api"),
        ] {
            let e = Expect {
                issuer: Some(iss.into()),
                audience: Some(aud.into()),
                ..expect()
            };
            assert!(
                matches!(verify(&t, &f.keys, &e, 1500), Err(VerifyError::Claims(_))),
                "{iss} {aud}"
            );
        }
        // missing exp
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("exp");
        let t = token(&f, header, c);
        assert!(matches!(
            verify(&t, &f.keys, &expect(), 1500),
            Err(VerifyError::Claims(_))
        ));
    }

    /// Time claims are JSON integers from 0 to the end of year 9999, compared with no
    /// arithmetic on them: the range's ends pass, anything else names the claim.
    #[test]
    fn time_claims_are_integers_in_range() {
        let f = fixture(KeyType::EcP256);
        let header = serde_json::json!({"alg": "ES256", "kid": f.kid, "typ": "JWT"});
        let with = |name: &str, value: Value| {
            let mut c = good_claims();
            c[name] = value;
            token(&f, header.clone(), c)
        };
        let e = Expect {
            leeway: i64::MAX,
            ..expect()
        };
        // A leeway that overflows the present is refused, not saturated.
        assert!(matches!(
            verify(&with("exp", 2000.into()), &f.keys, &e, 1500),
            Err(VerifyError::Claims(m)) if m.contains("leeway")
        ));
        assert!(verify(&with("exp", MAX_TIME.into()), &f.keys, &expect(), 1500).is_ok());
        assert!(verify(&with("nbf", 0.into()), &f.keys, &expect(), 1500).is_ok());
        for (name, value) in [
            ("exp", Value::from(MAX_TIME + 1)),
            ("exp", Value::from(1e300)),
            ("exp", Value::from(2000.0)),
            ("exp", Value::from(u64::MAX)),
            ("nbf", Value::from(-1)),
            ("nbf", Value::from(i64::MIN)),
            ("iat", Value::from(1000.5)),
            ("iat", Value::from("1000")),
        ] {
            let t = with(name, value.clone());
            match verify(&t, &f.keys, &expect(), 1500) {
                Err(VerifyError::Claims(m)) => {
                    assert!(m.contains(&format!("\"{name}\" must be an integer")), "{m}")
                }
                other => panic!("{name}: {value}: {other:?}"),
            }
        }
    }

    /// A name twice in the header or in the claims, at any depth and however spelled.
    #[test]
    fn a_name_twice_is_refused() {
        let f = fixture(KeyType::EcP256);
        let sign = |header: &str, claims: &str| {
            let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
            let sig = f.key.sign(Algorithm::ES256, input.as_bytes()).unwrap();
            format!("{input}.{}", B64.encode(sig))
        };
        let header = format!(r#"{{"alg":"ES256","kid":"{}","typ":"JWT"}}"#, f.kid);
        let claims = r#"{"iss":"https://iss","aud":"api","exp":2000,"sub":"a"}"#;
        assert!(verify(&sign(&header, claims), &f.keys, &expect(), 1500).is_ok());
        for twice in [
            r#"{"iss":"https://iss","aud":"api","exp":2000,"sub":"a","sub":"b"}"#,
            r#"{"iss":"https://iss","aud":"api","exp":2000,"sub":"a","sub":"b"}"#,
            r#"{"iss":"https://iss","aud":"api","exp":2000,"x":[{"y":1,"y":1}]}"#,
        ] {
            assert!(
                matches!(
                    verify(&sign(&header, twice), &f.keys, &expect(), 1500),
                    Err(VerifyError::Claims(m)) if m.contains("twice")
                ),
                "{twice}"
            );
        }
        let twice = header.replace(r#""typ":"JWT""#, r#""typ":"JWT","alg":"ES256""#);
        assert!(matches!(
            verify(&sign(&twice, claims), &f.keys, &expect(), 1500),
            Err(VerifyError::Header(m)) if m.contains("twice")
        ));
    }

    #[test]
    fn jwks_urls_over_plain_http_only_to_loopback() {
        for ok in [
            "https://jwks.invalid/jwks.json",
            "http://127.0.0.1:8390/.well-known/jwks.json",
            "http://[::1]:8390/jwks.json",
            "http://localhost/jwks.json",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for refused in [
            "http://jwks.invalid/jwks.json",
            "http://user@jwks.invalid/jwks.json",
            "http://127.0.0.1.invalid/",
        ] {
            assert!(check_url(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn jwks_parsing_skips_private_and_foreign_keys() {
        let f = fixture(KeyType::EcP256);
        let mut public = serde_json::to_value(&f.keys[0].jwk).unwrap();
        public["kid"] = Value::from("a");
        let mut private = public.clone();
        private["kid"] = Value::from("b");
        private["d"] = Value::from("AAAA");
        let mut enc = public.clone();
        enc["kid"] = Value::from("c");
        enc["use"] = Value::from("enc");
        let oct = serde_json::json!({"kty": "oct", "kid": "d", "k": "AAAA"});
        let set = serde_json::json!({"keys": [public, private, enc, oct, 5]});
        let keys = parse_jwks(&serde_json::to_vec(&set).unwrap()).unwrap();
        assert_eq!(
            keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        assert!(parse_jwks(b"[]").is_err());
        assert!(parse_jwks(b"\xff").is_err());
    }

    const LIST_URI: &str = "https://iss/keysets/k/statuslists/0";

    /// Statuses 0 (VALID), 1 (INVALID), 2 (SUSPENDED) and 3 at indexes 0 to 3, 2 bits each.
    fn four_statuses() -> Packed {
        let mut p = Packed::new(2, 4);
        for idx in 0..4 {
            assert!(p.set(idx, idx as u8));
        }
        p
    }

    /// The claims of a Status List Token for [`LIST_URI`] holding [`four_statuses`].
    fn list_claims() -> Value {
        serde_json::json!({
            "exp": 2000, "iat": 1000, "iss": "https://iss", "sub": LIST_URI, "ttl": 300,
            "status_list": {"bits": 2, "lst": four_statuses().encode()},
        })
    }

    fn list_header(f: &Fixture) -> Value {
        serde_json::json!({"alg": "ES256", "kid": f.kid, "typ": "statuslist+jwt"})
    }

    fn status_of(claims: Value) -> Result<Option<StatusRef>, VerifyError> {
        let Value::Object(claims) = claims else {
            panic!("not an object")
        };
        status_ref(&claims)
    }

    #[test]
    fn the_status_claim_is_read_or_refused() {
        assert_eq!(status_of(good_claims()), Ok(None));
        let at = serde_json::json!({"status_list": {"idx": 7, "uri": LIST_URI}});
        assert_eq!(
            status_of(serde_json::json!({"status": at})),
            Ok(Some(StatusRef {
                uri: LIST_URI.into(),
                idx: 7
            }))
        );
        for malformed in [
            serde_json::json!(null),
            serde_json::json!("revoked"),
            serde_json::json!({}),
            serde_json::json!({"status_list": [7, LIST_URI]}),
            serde_json::json!({"status_list": {"idx": 7}}),
            serde_json::json!({"status_list": {"uri": LIST_URI}}),
            serde_json::json!({"status_list": {"idx": -1, "uri": LIST_URI}}),
            serde_json::json!({"status_list": {"idx": 1.5, "uri": LIST_URI}}),
            serde_json::json!({"status_list": {"idx": "7", "uri": LIST_URI}}),
            serde_json::json!({"status_list": {"idx": 7, "uri": 5}}),
        ] {
            assert!(
                matches!(
                    status_of(serde_json::json!({"status": malformed})),
                    Err(VerifyError::Status(m)) if m.contains("\"status\" claim")
                ),
                "{malformed}"
            );
        }
    }

    #[test]
    fn a_status_list_verifies_with_the_jwks_and_decodes() {
        let f = fixture(KeyType::EcP256);
        let jwt = token(&f, list_header(&f), list_claims());
        assert_eq!(
            status_list(&jwt, LIST_URI, &f.keys, 60, 1500),
            Ok(four_statuses())
        );
        // The media type's long form is the same typ; the exp is read with the leeway.
        let long = serde_json::json!({"alg": "ES256", "kid": f.kid, "typ": STATUS_LIST_TYPE});
        let jwt = token(&f, long, list_claims());
        assert!(status_list(&jwt, LIST_URI, &f.keys, 60, 2060).is_ok());
    }

    /// Each way a list can be wrong, with the words its refusal must hold.
    #[test]
    fn a_wrong_status_list_is_refused() {
        let f = fixture(KeyType::EcP256);
        let other = fixture(KeyType::EcP256);
        let with = |name: &str, value: Value| {
            let mut claims = list_claims();
            claims[name] = value;
            token(&f, list_header(&f), claims)
        };
        let mut no_exp = list_claims();
        no_exp.as_object_mut().unwrap().remove("exp");
        let typ = |typ: Value| {
            let mut header = list_header(&f);
            header["typ"] = typ;
            token(&f, header, list_claims())
        };
        let mut no_typ = list_header(&f);
        no_typ.as_object_mut().unwrap().remove("typ");
        let lst = |bits: u64, lst: &str| serde_json::json!({"bits": bits, "lst": lst});
        let huge = Packed::new(8, (MAX_STATUSES + 1) as u32).encode();
        for (jwt, now, words) in [
            (
                with("sub", LIST_URI.replace("/0", "/1").into()),
                1500,
                "sub",
            ),
            (with("sub", Value::Null), 1500, "sub"),
            (typ("JWT".into()), 1500, "typ"),
            (typ("statuslist+json".into()), 1500, "typ"),
            (token(&f, no_typ, list_claims()), 1500, "typ"),
            (token(&f, list_header(&f), list_claims()), 2061, "expired"),
            (token(&f, list_header(&f), no_exp), 1500, "exp"),
            (
                token(&other, list_header(&other), list_claims()),
                1500,
                "kid",
            ),
            (with("status_list", lst(3, "eNrbuRgAAhcBXQ")), 1500, "bits"),
            (
                with("status_list", lst(258, "eNrbuRgAAhcBXQ")),
                1500,
                "bits",
            ),
            (with("status_list", Value::Null), 1500, "status_list"),
            (with("status_list", lst(2, "not zlib")), 1500, "lst"),
            (with("status_list", lst(8, &huge)), 1500, "more than"),
        ] {
            match status_list(&jwt, LIST_URI, &f.keys, 60, now) {
                Err(VerifyError::Status(m)) => assert!(
                    m.starts_with(&format!("status list {LIST_URI}: ")) && m.contains(words),
                    "{words}: {m}"
                ),
                other => panic!("{words}: {other:?}"),
            }
        }
    }

    #[test]
    fn only_a_valid_entry_passes() {
        let list = four_statuses();
        let at = |idx| StatusRef {
            uri: LIST_URI.into(),
            idx,
        };
        assert_eq!(check_status(&list, &at(0)), Ok(()));
        for (idx, words) in [
            (1, "the token is revoked"),
            (2, "the token is suspended"),
            (3, "the token is not valid: its status is 3"),
            (4, "the token is invalid: index 4 is past the end"),
            (u64::MAX, "the token is invalid"),
        ] {
            match check_status(&list, &at(idx)) {
                Err(VerifyError::Status(m)) => assert!(m.starts_with(words), "{idx}: {m}"),
                other => panic!("{idx}: {other:?}"),
            }
        }
        // The draft's 1-bit example, decoded as a verifier receives it: statuses
        // 1,0,0,1,1,1,0,1, 1,1,0,0,0,1,0,1.
        let draft = Packed::decode(1, "eNrbuRgAAhcBXQ", MAX_STATUSES).unwrap();
        let refused: Vec<u64> = (0..16)
            .filter(|&idx| check_status(&draft, &at(idx)).is_err())
            .collect();
        assert_eq!(refused, [0, 3, 4, 5, 7, 8, 9, 13, 15]);
    }
}
