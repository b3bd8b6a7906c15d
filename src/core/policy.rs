//! Per-client signing policy and the construction of the token to sign.
//!
//! [`prepare`] is pure: a request, a client, a key set, `now` and a kid in; the JWS signing
//! input and the audit facts out, or a [`Refusal`] that says what to change. The reserved
//! claims (`iat`, `nbf`, `exp`, `jti`) and `iss` are always set here, never by the caller.
//! A client may set only what its `[[client]]` entry grants: no `sub` without
//! `subject_pattern`, no claim beyond `sub` and `aud` without `allowed_claims`.
//!
//! The request borrows from the body: the caller's claims are read as names and raw JSON
//! values, checked, and copied into the token as written (compact JSON stays compact,
//! numbers keep their digits), so no tree of them is ever built. They are still parsed
//! once, as `serde_json::Value` would parse them (escapes, number range, nesting depth),
//! and a name given twice in any object is refused ([`crate::core::json::strict`], the rule
//! `keyturn verify` applies too), so verifiers that take the first of two names and those
//! that take the last read the same token. A claim name holding a control character is
//! refused too.

use crate::config::RESERVED_CLAIMS;
use crate::config::{human, ClientConfig, KeySetConfig, ALL};
use crate::core::json::Text;
use crate::core::json::{push_int, push_str};
use crate::core::statuslist::Slot;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// Why a request is refused, in the caller's terms: a stable code and a message that says
/// what to change. The server maps the kind to an HTTP status (or a gRPC code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What kind of refusal.
    pub kind: Refused,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What to change.
    pub message: String,
}

/// The kinds of [`Refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The request is not what the API takes (HTTP 400).
    Malformed,
    /// The client's policy does not allow it (HTTP 403).
    Forbidden,
    /// Well-formed, but a value is not acceptable (HTTP 422).
    Invalid,
    /// Something failed on our side (HTTP 500).
    Internal,
}

impl Refusal {
    /// A refusal of `kind`.
    pub fn new(kind: Refused, code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            kind,
            code,
            message: message.into(),
        }
    }

    /// Not what the API takes.
    pub fn malformed(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Refused::Malformed, code, message)
    }

    /// Not allowed by the client's policy.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Refused::Forbidden, code, message)
    }
}

/// Longest `sub`, each `aud` value, and `typ`.
const MAX_STRING: usize = 256;
/// Most `aud` values in one token.
const MAX_AUDIENCES: usize = 16;
/// Most extra claims in one token.
const MAX_CLAIMS: usize = 64;

/// The body of `POST /v1/keysets/{name}/sign` (and each item of a batch), borrowed from
/// the request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest<'a> {
    /// The token's claims (an object), as the caller wrote them.
    #[serde(borrow)]
    pub claims: &'a RawValue,
    /// Lifetime, e.g. "5m"; default: the client's (or key set's) maximum.
    #[serde(default, borrow)]
    pub ttl: Option<Text<'a>>,
    /// The `typ` header; default "JWT".
    #[serde(default, borrow)]
    pub typ: Option<Text<'a>>,
}

/// A token's audience, for the audit log: one name or several, as the caller gave it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Audience<'a> {
    /// `"aud": "name"`.
    One(Cow<'a, str>),
    /// `"aud": ["name", ...]`.
    Many(Vec<Cow<'a, str>>),
}

impl Audience<'static> {
    /// A JSON `aud` that is a string or an array of strings.
    pub fn from_value(value: &serde_json::Value) -> Option<Self> {
        use serde_json::Value;
        let owned = |v: &Value| v.as_str().map(|s| Cow::Owned(s.to_owned()));
        match value {
            Value::Array(items) => items
                .iter()
                .map(owned)
                .collect::<Option<_>>()
                .map(Audience::Many),
            _ => owned(value).map(Audience::One),
        }
    }
}

impl Audience<'_> {
    fn names(&self) -> &[Cow<'_, str>] {
        match self {
            Audience::One(name) => std::slice::from_ref(name),
            Audience::Many(names) => names,
        }
    }
}

/// A token ready to be signed; the audit facts borrow the request's claims.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared<'a> {
    /// `base64url(header) "." base64url(claims)`.
    pub signing_input: String,
    /// Token id.
    pub jti: String,
    /// Expiry.
    pub exp: i64,
    /// Subject, for the audit log.
    pub sub: Option<Cow<'a, str>>,
    /// Audience, for the audit log.
    pub aud: Option<Audience<'a>>,
}

/// The caller's claims: each name (borrowed unless escaped) with its value as written.
struct ClaimList<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for ClaimList<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = ClaimList<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Text(name), value)) = map.next_entry::<Text<'de>, &RawValue>()? {
                    entries.push((name, value));
                }
                Ok(ClaimList(entries))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// The caller's claims, checked as JSON: an object whose values parse, sorted by name,
/// each name once, in every object.
fn claim_list(claims: &RawValue) -> Result<Vec<(Cow<'_, str>, &RawValue)>, Refusal> {
    // Positions in serde's messages count from the start of the claims.
    let invalid = |e: serde_json::Error| {
        Refusal::malformed(
            "invalid_json",
            format!("\"claims\" cannot be read: {e} (within \"claims\")"),
        )
    };
    let mut list = match serde_json::from_str::<ClaimList>(claims.get()) {
        Ok(ClaimList(list)) => list,
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            return Err(unprocessable(
                "claims_not_object",
                "\"claims\" must be a JSON object",
            ))
        }
        Err(e) => return Err(invalid(e)),
    };
    if list.len() > MAX_CLAIMS {
        return Err(unprocessable(
            "too_many_claims",
            format!("at most {MAX_CLAIMS} claims per token"),
        ));
    }
    list.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if let Some(pair) = list.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(unprocessable(
            "duplicate_claim",
            format!(
                "claim {:?} is given twice; give each claim once",
                short(&pair[0].0)
            ),
        ));
    }
    if let Some((name, _)) = list
        .iter()
        .find(|(name, _)| name.chars().any(char::is_control))
    {
        return Err(unprocessable(
            "invalid_claim_name",
            format!("claim name {:?} holds a control character", short(name)),
        ));
    }
    // The whole claims at once, not each value: nesting is counted from the token
    // payload's top, as a verifier counts it.
    match crate::core::json::strict(claims.get().as_bytes()) {
        Ok(()) => {}
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            return Err(unprocessable(
                "duplicate_claim",
                format!("{e} (within \"claims\"); give each name once"),
            ))
        }
        Err(e) => return Err(invalid(e)),
    }
    Ok(list)
}

/// A claim value that is a JSON string, as text (already checked by [`claim_list`]).
fn string(value: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<Text>(value.get()).ok().map(|t| t.0)
}

/// `aud`: one name, or an array of 1 to [`MAX_AUDIENCES`] names.
fn audience(value: &RawValue) -> Result<Audience<'_>, Refusal> {
    if let Some(name) = string(value) {
        return Ok(Audience::One(name));
    }
    let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(value.get()) else {
        return Err(unprocessable(
            "invalid_aud",
            "\"aud\" must be a string or an array of strings",
        ));
    };
    if items.is_empty() || items.len() > MAX_AUDIENCES {
        return Err(unprocessable(
            "invalid_aud",
            format!("\"aud\" must hold 1 to {MAX_AUDIENCES} values"),
        ));
    }
    items
        .iter()
        .map(|item| {
            string(item)
                .ok_or_else(|| unprocessable("invalid_aud", "every \"aud\" value must be a string"))
        })
        .collect::<Result<_, _>>()
        .map(Audience::Many)
}

fn unprocessable(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal::new(Refused::Invalid, code, message)
}

/// Glob match where `*` matches any run of characters (including none).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return pattern == text;
    };
    if parts.len() == 1 {
        return pattern == text;
    }
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A sign request that passed its client's policy, not yet a token: taking a status list
/// entry (or anything else a token costs) waits until the request is known to be good.
#[derive(Debug)]
pub struct Checked<'a> {
    claims: Vec<(Cow<'a, str>, &'a RawValue)>,
    typ: Cow<'a, str>,
    now: i64,
    exp: i64,
    sub: Option<Cow<'a, str>>,
    aud: Option<Audience<'a>>,
}

/// Checks `req` against `client`'s policy for a token of `keyset` issued at `now`.
pub fn check<'a>(
    req: &SignRequest<'a>,
    client: &ClientConfig,
    keyset: &KeySetConfig,
    now: i64,
) -> Result<Checked<'a>, Refusal> {
    let claims = claim_list(req.claims)?;
    check_fixed(&claims, keyset)?;
    let sub = subject(&claims, client)?;
    let aud = audiences(&claims, client)?;
    check_extra(&claims, client)?;
    let typ = typ(req, client)?;
    let exp = now.saturating_add(ttl(req, client, keyset)?);
    Ok(Checked {
        claims,
        typ,
        now,
        exp,
        sub,
        aud,
    })
}

impl<'a> Checked<'a> {
    /// The token to sign with `kid`, with id `jti` and, with status lists, its entry.
    pub fn render(
        self,
        keyset: &KeySetConfig,
        kid: &str,
        jti: String,
        status: Option<&Slot>,
    ) -> Prepared<'a> {
        let Checked {
            claims,
            typ,
            now,
            exp,
            sub,
            aud,
        } = self;
        // One buffer for both JSON documents, then one string for their base64url.
        let mut json = Vec::with_capacity(256 + status.map_or(0, |s| s.uri.len() + 64));
        write_header(&mut json, keyset.algorithm.as_str(), kid, &typ);
        let header_len = json.len();
        write_claims(&mut json, &claims, &keyset.issuer, now, exp, &jti, status);
        let (header, body) = json.split_at(header_len);
        // Room for the signature too: `compact` appends it (RSA-4096: 683 characters).
        let mut signing_input = String::with_capacity((json.len() + 2) * 4 / 3 + 4 + 1 + 683);
        B64.encode_string(header, &mut signing_input);
        signing_input.push('.');
        B64.encode_string(body, &mut signing_input);
        Prepared {
            signing_input,
            jti,
            exp,
            sub,
            aud,
        }
    }
}

/// Checks `req` against `client`'s policy and builds the token to sign with `kid`.
pub fn prepare<'a>(
    req: &SignRequest<'a>,
    client: &ClientConfig,
    keyset: &KeySetConfig,
    now: i64,
    kid: &str,
    jti: String,
    status: Option<&Slot>,
) -> Result<Prepared<'a>, Refusal> {
    Ok(check(req, client, keyset, now)?.render(keyset, kid, jti, status))
}

/// The caller's claims, by name (sorted, as [`claim_list`] returns them).
type Claims<'a> = [(Cow<'a, str>, &'a RawValue)];

/// The value of claim `name`, if the caller set it.
fn claim<'a>(claims: &Claims<'a>, name: &str) -> Option<&'a RawValue> {
    claims
        .binary_search_by(|(k, _)| k.as_ref().cmp(name))
        .ok()
        .map(|i| claims[i].1)
}

/// The claims keyturn sets itself: none of the reserved ones, and `iss` only as the key
/// set's issuer.
fn check_fixed(claims: &Claims<'_>, keyset: &KeySetConfig) -> Result<(), Refusal> {
    for reserved in RESERVED_CLAIMS {
        if claim(claims, reserved).is_some() {
            return Err(unprocessable(
                "reserved_claim",
                format!("remove \"{reserved}\": keyturn sets iat, nbf, exp and jti itself (use \"ttl\" for the lifetime)"),
            ));
        }
    }
    if keyset.status_list.is_some() && claim(claims, "status").is_some() {
        return Err(unprocessable(
            "reserved_claim",
            "remove \"status\": this key set has status lists, and keyturn sets each token's \
             entry itself",
        ));
    }
    if let Some(iss) = claim(claims, "iss") {
        if string(iss).as_deref() != Some(keyset.issuer.as_str()) {
            return Err(Refusal::forbidden(
                "issuer_fixed",
                format!(
                    "\"iss\" is fixed to {:?} for this key set; remove it",
                    keyset.issuer
                ),
            ));
        }
    }
    Ok(())
}

/// `sub`, as the client's `subject_pattern` allows it (none: no `sub` at all).
fn subject<'a>(
    claims: &Claims<'a>,
    client: &ClientConfig,
) -> Result<Option<Cow<'a, str>>, Refusal> {
    let sub = match claim(claims, "sub").map(|v| string(v).ok_or(v)) {
        None => None,
        Some(Ok(s)) if s.len() <= MAX_STRING && !s.is_empty() => Some(s),
        Some(Ok(_)) => {
            return Err(unprocessable(
                "invalid_sub",
                format!("\"sub\" must be 1 to {MAX_STRING} bytes"),
            ))
        }
        Some(Err(_)) => return Err(unprocessable("invalid_sub", "\"sub\" must be a string")),
    };
    match (client.subject_pattern.as_deref(), &sub) {
        (None, None) | (Some(ALL), None) => {}
        (Some(pattern), Some(s)) if glob_match(pattern, s) => {}
        (None, Some(_)) => {
            return Err(Refusal::forbidden(
                "subject_not_allowed",
                format!(
                    "client {:?} may not set \"sub\": add subject_pattern = \"...\" to its \
                     [[client]] entry (\"*\" allows any)",
                    client.name
                ),
            ))
        }
        (Some(pattern), Some(s)) => {
            return Err(Refusal::forbidden(
                "subject_not_allowed",
                format!(
                    "\"sub\" {:?} does not match this client's subject_pattern {pattern:?}",
                    short(s)
                ),
            ))
        }
        (Some(pattern), None) => {
            return Err(Refusal::forbidden(
                "subject_required",
                format!("this client must set \"sub\" matching {pattern:?}"),
            ))
        }
    }
    Ok(sub)
}

/// `aud`: each value among the client's `audiences`, and one required if it has any.
fn audiences<'a>(
    claims: &Claims<'a>,
    client: &ClientConfig,
) -> Result<Option<Audience<'a>>, Refusal> {
    let aud = match claim(claims, "aud") {
        None => None,
        Some(value) => Some(audience(value)?),
    };
    let audiences = aud.as_ref().map_or(&[][..], Audience::names);
    for a in audiences {
        if a.is_empty() || a.len() > MAX_STRING {
            return Err(unprocessable(
                "invalid_aud",
                format!("each \"aud\" value must be 1 to {MAX_STRING} bytes"),
            ));
        }
        if !client.audiences.iter().any(|allowed| allowed == a) {
            return Err(Refusal::forbidden(
                "audience_not_allowed",
                format!(
                    "audience {:?} is not allowed for this client; allowed: {:?} (the \
                     client's `audiences` in its [[client]] entry)",
                    short(a),
                    client.audiences
                ),
            ));
        }
    }
    if audiences.is_empty() && !client.audiences.is_empty() {
        return Err(Refusal::forbidden(
            "audience_required",
            format!("set \"aud\" to one of {:?}", client.audiences),
        ));
    }
    Ok(aud)
}

/// Claims beyond `iss`, `sub` and `aud`: none forbidden, each allowed (deny by default).
fn check_extra(claims: &Claims<'_>, client: &ClientConfig) -> Result<(), Refusal> {
    for (name, _) in claims {
        if matches!(name.as_ref(), "iss" | "sub" | "aud") {
            continue;
        }
        if client.forbidden_claims.iter().any(|f| f == name.as_ref()) {
            return Err(Refusal::forbidden(
                "claim_forbidden",
                format!(
                    "claim {:?} is forbidden for this client; remove it",
                    short(name)
                ),
            ));
        }
        if !client.any_claim() && !client.allowed_claims.iter().any(|a| a == name.as_ref()) {
            let now = match client.allowed_claims.as_slice() {
                [] => String::new(),
                list => format!("now {list:?}; "),
            };
            return Err(Refusal::forbidden(
                "claim_not_allowed",
                format!(
                    "client {:?} may not set claim {:?}: add it to allowed_claims in its \
                     [[client]] entry ({now}[\"*\"] allows any claim not forbidden)",
                    client.name,
                    short(name),
                ),
            ));
        }
    }
    Ok(())
}

/// The header's `typ`: `JWT` unless the client's `allowed_typ` allows another.
fn typ<'a>(req: &SignRequest<'a>, client: &ClientConfig) -> Result<Cow<'a, str>, Refusal> {
    let typ = req.typ.as_ref().map_or("JWT", |t| &*t.0);
    if typ.is_empty() || typ.len() > 64 || !typ.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(unprocessable(
            "invalid_typ",
            "\"typ\" must be 1 to 64 printable ASCII characters",
        ));
    }
    let typ_allowed = if client.allowed_typ.is_empty() {
        typ == "JWT"
    } else {
        client.allowed_typ.iter().any(|t| t == typ)
    };
    if !typ_allowed {
        let allowed = if client.allowed_typ.is_empty() {
            vec!["JWT".to_owned()]
        } else {
            client.allowed_typ.clone()
        };
        return Err(Refusal::forbidden(
            "typ_not_allowed",
            format!(
                "typ {:?} is not allowed for this client; allowed: {allowed:?}",
                short(typ)
            ),
        ));
    }
    Ok(req
        .typ
        .as_ref()
        .map_or(Cow::Borrowed("JWT"), |t| t.0.clone()))
}

/// The token's lifetime: never above the client's or the key set's limit; the key set's
/// retention (derived from max_token_ttl) keeps the key published for all of it.
fn ttl(
    req: &SignRequest<'_>,
    client: &ClientConfig,
    keyset: &KeySetConfig,
) -> Result<i64, Refusal> {
    let limit = client.max_ttl.map_or(keyset.timing.max_token_ttl, |c| {
        c.min(keyset.timing.max_token_ttl)
    });
    Ok(match &req.ttl {
        None => limit,
        Some(Text(text)) => {
            let d: Duration = humantime::parse_duration(text).map_err(|_| {
                unprocessable(
                    "invalid_ttl",
                    "\"ttl\" must be a duration such as \"90s\" or \"15m\"",
                )
            })?;
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if secs < 1 {
                return Err(unprocessable("invalid_ttl", "\"ttl\" must be at least 1s"));
            }
            if secs > limit {
                return Err(Refusal::forbidden(
                    "ttl_too_long",
                    format!(
                        "\"ttl\" may be at most {} for this client and key set",
                        human(limit)
                    ),
                ));
            }
            secs
        }
    })
}

/// The JOSE header: `{"alg","kid","typ"}`, the bytes serde would write for that struct.
fn write_header(out: &mut Vec<u8>, alg: &str, kid: &str, typ: &str) {
    for (key, value) in [
        (&b"{\"alg\":"[..], alg),
        (b",\"kid\":", kid),
        (b",\"typ\":", typ),
    ] {
        out.extend_from_slice(key);
        push_str(out, value);
    }
    out.push(b'}');
}

/// The token's claims: the caller's (values as written) and the ones keyturn sets, in name
/// order, the bytes a `serde_json::Map` of them all would serialize to. `prepare` has
/// refused the reserved names in `claims`; a caller's `iss` (checked equal) is replaced
/// by the key set's.
fn write_claims(
    out: &mut Vec<u8>,
    claims: &[(Cow<'_, str>, &RawValue)],
    iss: &str,
    now: i64,
    exp: i64,
    jti: &str,
    status: Option<&Slot>,
) {
    enum Ours<'a> {
        Str(&'a str),
        Int(i64),
        Status(&'a Slot),
    }
    // Sorted by name.
    let ours = [
        ("exp", Ours::Int(exp)),
        ("iat", Ours::Int(now)),
        ("iss", Ours::Str(iss)),
        ("jti", Ours::Str(jti)),
        ("nbf", Ours::Int(now)),
        ("status", status.map_or(Ours::Int(0), Ours::Status)),
    ];
    let ours = &ours[..ours.len() - usize::from(status.is_none())];
    // `{` before the first name, `,` before the others.
    let start = out.len();
    let name = |out: &mut Vec<u8>, name: &str| {
        out.push(if out.len() == start { b'{' } else { b',' });
        push_str(out, name);
        out.push(b':');
    };
    let write_ours = |out: &mut Vec<u8>, key: &str, value: &Ours<'_>| {
        name(out, key);
        match value {
            Ours::Str(v) => push_str(out, v),
            Ours::Int(v) => push_int(out, *v),
            Ours::Status(slot) => {
                out.extend_from_slice(b"{\"status_list\":{\"idx\":");
                push_int(out, i64::try_from(slot.idx).unwrap_or(i64::MAX));
                out.extend_from_slice(b",\"uri\":");
                push_str(out, &slot.uri);
                out.extend_from_slice(b"}}");
            }
        }
    };
    let mut ours = ours.iter().peekable();
    for (key, value) in claims.iter().filter(|(k, _)| k != "iss") {
        while let Some((k, v)) = ours.next_if(|(k, _)| *k < key.as_ref()) {
            write_ours(out, k, v);
        }
        name(out, key);
        out.extend_from_slice(value.get().as_bytes());
    }
    for (k, v) in ours {
        write_ours(out, k, v);
    }
    out.push(b'}');
}

fn internal() -> Refusal {
    Refusal::new(Refused::Internal, "internal", "internal error")
}

/// A fresh `jti`: 128 random bits, base64url. The bits come from a per-thread pool that
/// `SystemRandom` refills `JTI_POOL` bytes at a time (one call per 256 tokens: a call
/// per token cost more than the bits); each `jti`'s bytes are wiped from the pool as it
/// takes them.
pub fn new_jti() -> Result<String, Refusal> {
    use aws_lc_rs::rand::SecureRandom;
    struct Pool {
        bytes: [u8; JTI_POOL],
        next: usize,
    }
    thread_local! {
        static POOL: std::cell::RefCell<Pool> = const {
            std::cell::RefCell::new(Pool { bytes: [0; JTI_POOL], next: JTI_POOL })
        };
    }
    POOL.with_borrow_mut(|pool| {
        if pool.next + 16 > JTI_POOL {
            aws_lc_rs::rand::SystemRandom::new()
                .fill(&mut pool.bytes)
                .map_err(|_| internal())?;
            pool.next = 0;
        }
        let bytes = &mut pool.bytes[pool.next..pool.next + 16];
        pool.next += 16;
        let mut jti = String::with_capacity(22);
        B64.encode_string(&*bytes, &mut jti);
        bytes.fill(0);
        Ok(jti)
    })
}

/// Bytes of randomness each thread draws at once for `jti`s.
const JTI_POOL: usize = 4096;

/// Appends the signature to the signing input: the compact JWS, in the signing input's own
/// buffer (sized for the largest signature by `prepare`).
pub fn compact(mut signing_input: String, signature: &[u8]) -> String {
    signing_input.reserve(1 + signature.len().div_ceil(3) * 4);
    signing_input.push('.');
    B64.encode_string(signature, &mut signing_input);
    signing_input
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClientAuth, Config, Env};
    use serde_json::Value;

    fn setup() -> (ClientConfig, KeySetConfig) {
        let config = Config::parse(
            r#"
            [[keyset]]
            name = "default"
            issuer = "https://auth.example.com"
            algorithm = "ES256"
            rotate_every = "1h"
            max_token_ttl = "15m"
            "#,
            Env::default(),
        )
        .unwrap();
        let client = ClientConfig {
            name: "svc".into(),
            auth: ClientAuth::Unix {
                uid: None,
                gid: None,
            },
            keysets: vec!["default".into()],
            audiences: vec!["orders".into(), "billing".into()],
            subject_pattern: Some("user:*".into()),
            max_ttl: Some(600),
            allowed_claims: vec!["*".into()],
            forbidden_claims: vec!["admin".into()],
            allowed_typ: vec!["JWT".into(), "at+jwt".into()],
            admin: false,
            revoke_tokens: false,
        };
        (client, config.keysets[0].clone())
    }

    /// A sign request's body: the claims, and `ttl` and `typ` when given.
    fn body(claims: &Value, ttl: Option<&str>, typ: Option<&str>) -> String {
        let mut body = serde_json::json!({ "claims": claims });
        if let Some(ttl) = ttl {
            body["ttl"] = ttl.into();
        }
        if let Some(typ) = typ {
            body["typ"] = typ.into();
        }
        body.to_string()
    }

    fn req(body: &str) -> SignRequest<'_> {
        serde_json::from_str(body).unwrap()
    }

    /// The HTTP status the API answers a refusal of `kind` with.
    fn status(kind: Refused) -> u16 {
        match kind {
            Refused::Malformed => 400,
            Refused::Forbidden => 403,
            Refused::Invalid => 422,
            Refused::Internal => 500,
        }
    }

    fn code(r: Result<Prepared, Refusal>) -> (u16, &'static str) {
        let e = r.unwrap_err();
        (status(e.kind), e.code)
    }

    #[test]
    fn good_request_builds_the_token() {
        let (client, ks) = setup();
        let text = r#"{"claims": {"sub": "user:1", "aud": "orders", "scope": "read"},
                       "ttl": "5m", "typ": "at+jwt"}"#;
        let p = prepare(&req(text), &client, &ks, 1000, "kid1", "j".into(), None).unwrap();
        assert_eq!(p.exp, 1300);
        let (h, c) = p.signing_input.split_once('.').unwrap();
        let h: Value = serde_json::from_slice(&B64.decode(h).unwrap()).unwrap();
        let c: Value = serde_json::from_slice(&B64.decode(c).unwrap()).unwrap();
        assert_eq!(
            h,
            serde_json::json!({"alg": "ES256", "kid": "kid1", "typ": "at+jwt"})
        );
        assert_eq!(c["iss"], "https://auth.example.com");
        assert_eq!(c["iat"], 1000);
        assert_eq!(c["nbf"], 1000);
        assert_eq!(c["exp"], 1300);
        assert_eq!(c["jti"], "j");
        assert_eq!(c["scope"], "read");
    }

    /// The claims are written without copying them; the bytes are still exactly those of
    /// one `serde_json::Map` holding the caller's claims and keyturn's.
    #[test]
    fn claims_serialize_like_one_map() {
        let (mut client, ks) = setup();
        client.subject_pattern = Some("*".into());
        client.audiences = vec![];
        for claims in [
            serde_json::json!({}),
            serde_json::json!({"sub": "u", "a": 1, "iss": "https://auth.example.com"}),
            serde_json::json!({"email": "x@y", "ia": [1, {"b": null}], "isz": true, "jtx": 1.5,
                               "nbe": "n", "z": {"nested": ["v"]}, "exq": "e", "\u{e9}": 0,
                               "sta": 1, "stb": "\"", "statut": 2}),
        ] {
            for status in [
                None,
                Some(Slot {
                    list: 1,
                    uri: "https://a.example/s/1".into(),
                    idx: 77,
                }),
            ] {
                let text = body(&claims, None, None);
                let p = prepare(
                    &req(&text),
                    &client,
                    &ks,
                    1000,
                    "k",
                    "jid".into(),
                    status.as_ref(),
                )
                .unwrap();
                let mut expected = claims.as_object().unwrap().clone();
                for (k, v) in [
                    ("iss", serde_json::json!("https://auth.example.com")),
                    ("iat", 1000.into()),
                    ("nbf", 1000.into()),
                    ("exp", 1600.into()),
                    ("jti", "jid".into()),
                ] {
                    expected.insert(k.into(), v);
                }
                if let Some(slot) = &status {
                    expected.insert(
                        "status".into(),
                        serde_json::json!({"status_list": {"idx": slot.idx, "uri": &*slot.uri}}),
                    );
                }
                let body = p.signing_input.split_once('.').unwrap().1;
                assert_eq!(
                    B64.decode(body).unwrap(),
                    serde_json::to_vec(&expected).unwrap(),
                    "{claims}"
                );
            }
        }
    }

    /// `status` is keyturn's in a key set with status lists, a claim like any other in one
    /// without (where a client may be allowed it).
    #[test]
    fn status_is_reserved_only_where_status_lists_are_on() {
        let (mut client, mut ks) = setup();
        client.allowed_claims = vec![ALL.into()];
        let text = body(
            &serde_json::json!({"sub": "user:1", "aud": "orders", "status": 1}),
            None,
            None,
        );
        assert!(prepare(&req(&text), &client, &ks, 0, "k", "j".into(), None).is_ok());
        ks.status_list = Some(crate::config::StatusListConfig {
            ttl: 300,
            validity: 3600,
            uri: "https://auth.example.com/keysets/default/statuslists".into(),
        });
        assert_eq!(
            code(prepare(&req(&text), &client, &ks, 0, "k", "j".into(), None)),
            (422, "reserved_claim")
        );
    }

    #[test]
    fn header_bytes_are_serdes() {
        for (alg, kid, typ) in [
            ("ES256", "k1", "JWT"),
            ("RS256", "k\"2\\", "a\"b"),
            ("EdDSA", "\u{e9}\n", "x"),
        ] {
            let mut out = Vec::new();
            write_header(&mut out, alg, kid, typ);
            let expected = serde_json::json!({"alg": alg, "kid": kid, "typ": typ});
            assert_eq!(out, serde_json::to_vec(&expected).unwrap());
        }
    }

    #[test]
    fn default_ttl_is_the_tightest_limit() {
        let (client, ks) = setup();
        let text = body(
            &serde_json::json!({"sub": "user:1", "aud": "orders"}),
            None,
            None,
        );
        let p = prepare(&req(&text), &client, &ks, 0, "k", "j".into(), None).unwrap();
        assert_eq!(p.exp, 600);
    }

    #[test]
    fn refusals_say_what_to_change() {
        let (client, ks) = setup();
        // (claims, ttl, typ, expected status and code)
        type Case = (
            Value,
            Option<&'static str>,
            Option<&'static str>,
            (u16, &'static str),
        );
        let cases: Vec<Case> = vec![
            (
                serde_json::json!([1]),
                None,
                None,
                (422, "claims_not_object"),
            ),
            (
                serde_json::json!({"sub":"user:1","aud":"orders","exp": 1}),
                None,
                None,
                (422, "reserved_claim"),
            ),
            (
                serde_json::json!({"sub":"user:1","aud":"orders","jti": "x"}),
                None,
                None,
                (422, "reserved_claim"),
            ),
            (
                serde_json::json!({"sub":"user:1","aud":"orders","iss": "https://evil"}),
                None,
                None,
                (403, "issuer_fixed"),
            ),
            (
                serde_json::json!({"sub":"bot:1","aud":"orders"}),
                None,
                None,
                (403, "subject_not_allowed"),
            ),
            (
                serde_json::json!({"aud":"orders"}),
                None,
                None,
                (403, "subject_required"),
            ),
            (
                serde_json::json!({"sub": 5,"aud":"orders"}),
                None,
                None,
                (422, "invalid_sub"),
            ),
            (
                serde_json::json!({"sub": "user:".repeat(100),"aud":"orders"}),
                None,
                None,
                (422, "invalid_sub"),
            ),
            (
                serde_json::json!({"sub":"user:1","aud":"other"}),
                None,
                None,
                (403, "audience_not_allowed"),
            ),
            (
                serde_json::json!({"sub":"user:1","aud":"ordersX"}),
                None,
                None,
                (403, "audience_not_allowed"),
            ),
            (
                serde_json::json!({"sub":"user:1","aud":"order"}),
                None,
                None,
                (403, "audience_not_allowed"),
            ),
            (
                serde_json::json!({"sub":"user:1","aud":[1]}),
                None,
                None,
                (422, "invalid_aud"),
            ),
            (
                serde_json::json!({"sub":"user:1","aud":{}}),
                None,
                None,
                (422, "invalid_aud"),
            ),
            (
                serde_json::json!({"sub":"user:1"}),
                None,
                None,
                (403, "audience_required"),
            ),
            (
                serde_json::json!({"sub":"user:1","aud":"orders","admin":true}),
                None,
                None,
                (403, "claim_forbidden"),
            ),
            (
                serde_json::json!({"sub":"user:1","aud":"orders"}),
                Some("11m"),
                None,
                (403, "ttl_too_long"),
            ),
            (
                serde_json::json!({"sub":"user:1","aud":"orders"}),
                Some("0s"),
                None,
                (422, "invalid_ttl"),
            ),
            (
                serde_json::json!({"sub":"user:1","aud":"orders"}),
                Some("soon"),
                None,
                (422, "invalid_ttl"),
            ),
            (
                serde_json::json!({"sub":"user:1","aud":"orders"}),
                None,
                Some("dpop+jwt"),
                (403, "typ_not_allowed"),
            ),
            (
                serde_json::json!({"sub":"user:1","aud":"orders"}),
                None,
                Some("a b"),
                (422, "invalid_typ"),
            ),
        ];
        for (claims, ttl, typ, expected) in cases {
            let text = body(&claims, ttl, typ);
            assert_eq!(
                code(prepare(&req(&text), &client, &ks, 0, "k", "j".into(), None)),
                expected,
                "{claims} {ttl:?} {typ:?}"
            );
        }
    }

    /// Claims are read as written: escaped names are the names they spell (a reserved claim
    /// or a duplicate cannot hide behind an escape; the token has the name unescaped),
    /// values are copied as the caller wrote them, and a value a JSON parser would refuse
    /// is refused here.
    #[test]
    fn claims_are_checked_as_json_and_copied_as_written() {
        let (client, ks) = setup();
        let sign = |claims: &str| {
            let text = format!(r#"{{"claims": {claims}}}"#);
            let r = prepare(&req(&text), &client, &ks, 0, "k", "j".into(), None);
            r.map(|p| {
                let payload = p.signing_input.split_once('.').unwrap().1;
                (
                    String::from_utf8(B64.decode(payload).unwrap()).unwrap(),
                    p.sub.map(Cow::into_owned),
                )
            })
            .map_err(|e| (status(e.kind), e.code))
        };
        // Escapes in names and values.
        let (payload, sub) =
            sign(r#"{"s\u0075b": "user:\u0031", "aud": ["orders"], "x": [1, {"y": null}]}"#)
                .unwrap();
        assert_eq!(sub.as_deref(), Some("user:1"));
        assert!(
            payload.starts_with(r#"{"aud":["orders"],"exp":600,"iat":0,"#),
            "{payload}"
        );
        assert!(
            payload.ends_with(r#""sub":"user:\u0031","x":[1, {"y": null}]}"#),
            "{payload}"
        );
        let parsed: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(parsed["sub"], "user:1");
        assert_eq!(parsed["x"], serde_json::json!([1, {"y": null}]));
        for (claims, expected) in [
            (
                r#"{"sub": "user:1", "aud": "orders", "\u0065xp": 1}"#,
                (422, "reserved_claim"),
            ),
            (
                r#"{"sub": "user:1", "aud": "orders", "s\u0075b": "user:2"}"#,
                (422, "duplicate_claim"),
            ),
            (
                r#"{"sub": "user:1", "aud": "orders", "x": 1, "x": 1}"#,
                (422, "duplicate_claim"),
            ),
            (
                r#"{"sub": "user:1", "aud": "orders", "x": [{"y": 1, "y": 2}]}"#,
                (422, "duplicate_claim"),
            ),
            (
                r#"{"sub": "user:1", "aud": "orders", "x": {"\u0079": 1, "y": 2}}"#,
                (422, "duplicate_claim"),
            ),
            (
                r#"{"sub": "user:1", "aud": "orders", "exp\u0000": 1}"#,
                (422, "invalid_claim_name"),
            ),
            (
                r#"{"sub": "user:1", "aud": "orders", "a\nb": 1}"#,
                (422, "invalid_claim_name"),
            ),
            (
                r#"{"sub": "user:1", "aud": "orders", "x": "\ud800"}"#,
                (400, "invalid_json"),
            ),
            (
                r#"{"sub": "user:1", "aud": "orders", "x": 1e400}"#,
                (400, "invalid_json"),
            ),
            (
                r#"{"sub": "user:1", "aud": "orders", "\udc00": 1}"#,
                (400, "invalid_json"),
            ),
            (
                r#"{"sub": "user:1", "aud": ["orders", 1]}"#,
                (422, "invalid_aud"),
            ),
            (r#"{"sub": "user:1", "aud": []}"#, (422, "invalid_aud")),
            (
                r#"{"sub": ["user:1"], "aud": "orders"}"#,
                (422, "invalid_sub"),
            ),
            (r#"null"#, (422, "claims_not_object")),
        ] {
            assert_eq!(sign(claims).unwrap_err(), expected, "{claims}");
        }
        let deep = format!(
            r#"{{"sub": "user:1", "aud": "orders", "x": {}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(sign(&deep).unwrap_err(), (400, "invalid_json"));
        // Nesting: refused exactly where serde_json::Value refuses it, and what passes is a
        // payload serde_json takes (its depth counted from the payload's top).
        let mut seen = [false; 2];
        for depth in 120..=130 {
            let claims = format!(
                r#"{{"sub": "user:1", "aud": "orders", "x": {}1{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            let value_takes = serde_json::from_str::<Value>(&claims).is_ok();
            seen[usize::from(value_takes)] = true;
            match sign(&claims) {
                Ok((payload, _)) => {
                    assert!(value_takes, "depth {depth}");
                    assert!(
                        crate::core::json::strict(payload.as_bytes()).is_ok(),
                        "depth {depth}"
                    );
                }
                Err(e) => {
                    assert!(!value_takes, "depth {depth}");
                    assert_eq!(e, (400, "invalid_json"));
                }
            }
        }
        assert_eq!(
            seen,
            [true, true],
            "the depth limit lies in the range tried"
        );
        let many: Vec<String> = (0..=MAX_CLAIMS).map(|i| format!(r#""c{i}": 1"#)).collect();
        let many = format!(
            r#"{{"sub": "user:1", "aud": "orders", {}}}"#,
            many.join(", ")
        );
        assert_eq!(sign(&many).unwrap_err(), (422, "too_many_claims"));
    }

    /// A client with neither `subject_pattern` nor `allowed_claims` signs tokens without
    /// `sub` and with no claim beyond `aud`; each refusal names the setting to add, and `"*"`
    /// / `["*"]` allow any (`forbidden_claims` still holds).
    #[test]
    fn clients_deny_by_default() {
        let (mut client, ks) = setup();
        client.subject_pattern = None;
        client.allowed_claims = vec![];
        let sign = |client: &ClientConfig, claims: Value| {
            let text = body(&claims, None, None);
            prepare(&req(&text), client, &ks, 0, "k", "j".into(), None)
                .map(|_| ())
                .map_err(|e| (status(e.kind), e.code, e.message))
        };
        assert_eq!(sign(&client, serde_json::json!({"aud": "orders"})), Ok(()));
        let (status, code, message) = sign(
            &client,
            serde_json::json!({"sub": "admin", "aud": "orders"}),
        )
        .unwrap_err();
        assert_eq!((status, code), (403, "subject_not_allowed"));
        assert!(
            message.contains("\"svc\"") && message.contains("subject_pattern = "),
            "{message}"
        );
        for claim in ["roles", "email_verified", "cnf"] {
            let claims = serde_json::json!({"aud": "orders", claim: true});
            let (status, code, message) = sign(&client, claims).unwrap_err();
            assert_eq!((status, code), (403, "claim_not_allowed"), "{claim}");
            assert!(
                message.contains(claim) && message.contains("allowed_claims"),
                "{message}"
            );
        }
        // The explicit allow-alls: any sub (or none), any claim not forbidden.
        client.subject_pattern = Some("*".into());
        client.allowed_claims = vec!["*".into()];
        for claims in [
            serde_json::json!({"sub": "admin", "aud": "orders", "roles": ["superuser"]}),
            serde_json::json!({"aud": "orders", "email_verified": true}),
        ] {
            assert_eq!(sign(&client, claims.clone()), Ok(()), "{claims}");
        }
        let forbidden = serde_json::json!({"aud": "orders", "admin": true});
        assert_eq!(sign(&client, forbidden).unwrap_err().1, "claim_forbidden");
    }

    #[test]
    fn allowed_claims_whitelist() {
        let (mut client, ks) = setup();
        client.allowed_claims = vec!["scope".into()];
        let ok = r#"{"claims": {"sub":"user:1","aud":"orders","scope":"x"}}"#;
        assert!(prepare(&req(ok), &client, &ks, 0, "k", "j".into(), None).is_ok());
        let bad = r#"{"claims": {"sub":"user:1","aud":"orders","role":"x"}}"#;
        assert_eq!(
            code(prepare(&req(bad), &client, &ks, 0, "k", "j".into(), None)),
            (403, "claim_not_allowed")
        );
    }

    #[test]
    fn glob() {
        assert!(glob_match("user:*", "user:1"));
        assert!(glob_match("user:*", "user:"));
        assert!(!glob_match("user:*", "bot:1"));
        assert!(glob_match("*@example.com", "a@example.com"));
        assert!(!glob_match("*@example.com", "a@example.com.evil"));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "aXc"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("ab*ba", "aba"));
    }

    #[test]
    fn jti_is_128_random_bits() {
        // More than one pool's worth, on two threads: all distinct.
        let mut all = std::collections::HashSet::new();
        let other = std::thread::spawn(|| (0..300).map(|_| new_jti().unwrap()).collect::<Vec<_>>());
        for jti in (0..300)
            .map(|_| new_jti().unwrap())
            .chain(other.join().unwrap())
        {
            assert_eq!(B64.decode(&jti).unwrap().len(), 16);
            assert!(all.insert(jti));
        }
    }
}
