//! A minimal verifier: caches the JWKS for the max-age keyturn advertises and refetches on
//! an unknown kid (at most once per second), then verifies with the `jsonwebtoken` crate.
//! A token with a `status` claim (a key set with `status_list`) passes only while its entry
//! in the status list it names is VALID; the list is a JWT signed by a key of the same
//! JWKS, cached for its `ttl`.
//!
//! ```sh
//! cargo run --example verifier -- "$TOKEN"
//! ```

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Read as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type Error = Box<dyn std::error::Error>;

struct JwksCache {
    url: String,
    set: JwkSet,
    fetched: Instant,
    max_age: Duration,
}

impl JwksCache {
    async fn fetch(url: &str) -> Result<Self, Error> {
        let resp = reqwest::get(url).await?.error_for_status()?;
        let max_age = resp
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split(',')
                    .find_map(|d| d.trim().strip_prefix("max-age=")?.parse().ok())
            })
            .map_or(Duration::from_secs(60), Duration::from_secs);
        Ok(JwksCache {
            url: url.to_owned(),
            set: resp.json().await?,
            fetched: Instant::now(),
            max_age,
        })
    }

    async fn key(&mut self, kid: &str) -> Result<DecodingKey, Error> {
        let stale = self.fetched.elapsed() > self.max_age;
        let unknown =
            self.set.find(kid).is_none() && self.fetched.elapsed() > Duration::from_secs(1);
        if stale || unknown {
            *self = Self::fetch(&self.url).await?;
        }
        let jwk = self.set.find(kid).ok_or("unknown kid")?;
        Ok(DecodingKey::from_jwk(jwk)?)
    }
}

/// The claims of a Status List Token read here (`sub` and `exp` are checked by jsonwebtoken).
#[derive(Deserialize)]
struct ListClaims {
    exp: u64,
    ttl: Option<u64>,
    status_list: Lst,
}

#[derive(Deserialize)]
struct Lst {
    bits: u8,
    lst: String,
}

/// A verified status list, usable until `until`.
struct StatusList {
    bits: u8,
    bytes: Vec<u8>,
    until: Instant,
}

impl StatusList {
    /// Entry `idx`: `bits` bits at bit `idx * bits`, least significant first.
    fn get(&self, idx: u64) -> Option<u8> {
        let bit = idx.checked_mul(u64::from(self.bits))?;
        let byte = self.bytes.get(usize::try_from(bit / 8).ok()?)?;
        Some((byte >> (bit % 8)) & (0xff >> (8 - self.bits)))
    }
}

/// Fetches the Status List Token at `uri` and verifies it with the JWKS: its `typ`, its
/// signature, `sub` equal to `uri`, and `exp`.
async fn fetch_list(jwks: &mut JwksCache, uri: &str) -> Result<StatusList, Error> {
    // Over plain http to another machine, anyone on the way could serve an older list.
    let url = reqwest::Url::parse(uri)?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "[::1]" | "localhost"));
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        return Err(format!("status list {uri}: not https").into());
    }
    let jwt = reqwest::Client::new()
        .get(url)
        .header("accept", "application/statuslist+jwt")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let header = decode_header(&jwt)?;
    if header.typ.as_deref() != Some("statuslist+jwt") {
        return Err(format!("{uri} is not a status list (typ)").into());
    }
    let key = jwks.key(header.kid.as_deref().ok_or("no kid")?).await?;
    let mut validation = Validation::new(header.alg);
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.sub = Some(uri.to_owned());
    let claims = decode::<ListClaims>(&jwt, &key, &validation)?.claims;
    let Lst { bits, lst } = claims.status_list;
    if ![1, 2, 4, 8].contains(&bits) {
        return Err(format!("{uri}: bits is {bits}").into());
    }
    // zlib inflates a small body to gigabytes: read 16 MiB at most (past that, entries
    // read as missing, which makes their tokens invalid).
    let mut bytes = Vec::new();
    flate2::read::ZlibDecoder::new(&B64.decode(lst)?[..])
        .take(16 << 20)
        .read_to_end(&mut bytes)?;
    // Cached for its ttl, and never past its exp.
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let keep = claims.ttl.unwrap_or(0).min(claims.exp.saturating_sub(now));
    let until = Instant::now() + Duration::from_secs(keep);
    Ok(StatusList { bits, bytes, until })
}

/// Status lists by URI.
#[derive(Default)]
struct StatusCache(HashMap<String, StatusList>);

impl StatusCache {
    /// Refuses the token unless its entry `idx` in the list at `uri` is 0 (VALID).
    async fn check(&mut self, jwks: &mut JwksCache, uri: &str, idx: u64) -> Result<(), Error> {
        if self.0.get(uri).is_none_or(|l| l.until <= Instant::now()) {
            let list = fetch_list(jwks, uri).await?;
            self.0.insert(uri.to_owned(), list);
        }
        match self.0[uri].get(idx) {
            Some(0) => Ok(()),
            Some(1) => Err("the token is revoked".into()),
            Some(2) => Err("the token is suspended".into()),
            Some(v) => Err(format!("the token is not valid (status {v})").into()),
            None => Err("the token is invalid (index past the end of its status list)".into()),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let token = std::env::args().nth(1).ok_or("usage: verifier TOKEN")?;
    let url = std::env::var("KEYTURN_JWKS")
        .unwrap_or_else(|_| "http://127.0.0.1:8390/.well-known/jwks.json".into());
    let mut cache = JwksCache::fetch(&url).await?;
    let mut statuses = StatusCache::default();
    let header = decode_header(&token)?;
    let key = cache
        .key(header.kid.as_deref().ok_or("token has no kid")?)
        .await?;
    // Pin the algorithm from the header only after the key was found; jsonwebtoken checks
    // that the key type matches it.
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&["orders-api"]);
    let claims = decode::<serde_json::Value>(&token, &key, &validation)?.claims;
    if let Some(status) = claims.get("status") {
        let at = &status["status_list"];
        let (Some(idx), Some(uri)) = (at["idx"].as_u64(), at["uri"].as_str()) else {
            return Err("malformed status claim".into());
        };
        statuses.check(&mut cache, uri, idx).await?;
    }
    println!("{}", serde_json::to_string_pretty(&claims)?);
    Ok(())
}
