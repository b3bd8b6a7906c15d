//! The published view of a key set: the JWKS body and headers, serialized once per change,
//! and the keys that may sign. Serving a request only clones `Bytes` and a header map.

use crate::config::KeySetConfig;
use crate::lifecycle::KeySetDoc;
use aws_lc_rs::digest;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue};
use keyturn_backend::{Algorithm, Jwk};
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const JWK_SET: HeaderValue = HeaderValue::from_static("application/jwk-set+json");
const JWK: HeaderValue = HeaderValue::from_static("application/jwk+json");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const ANY: HeaderValue = HeaderValue::from_static("*");
const EXPOSED: HeaderValue = HeaderValue::from_static("etag, last-modified, cache-control");

/// The CORS headers of a simple cross-origin read, which every document and document error
/// carries: documents are readable from any origin, their caching headers exposed.
pub fn cors_headers() -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, ANY);
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED);
    headers
}

/// A JWK as served: public members plus `kid`, `use` and `alg`.
#[derive(Debug, Serialize)]
pub struct ServedJwk<'a> {
    #[serde(flatten)]
    jwk: &'a Jwk,
    kid: &'a str,
    #[serde(rename = "use")]
    use_: &'static str,
    alg: &'static str,
}

#[derive(Serialize)]
struct JwkSet<'a> {
    keys: Vec<ServedJwk<'a>>,
}

/// A key that is published, with what signing with it needs.
#[derive(Debug, Clone)]
pub struct PublishedKey {
    /// RFC 7638 thumbprint.
    pub kid: String,
    /// The backend's name.
    pub name: String,
    /// When it signs (or signed) from.
    pub activate_at: Option<i64>,
    /// SubjectPublicKeyInfo DER (for the Kubernetes signer).
    pub spki_der: Vec<u8>,
    /// This JWK alone, serialized.
    pub jwk_json: Bytes,
    /// Whether its record keeps it published at least this config's retention after it
    /// retires (tokens signed under this config may live that long).
    pub retained: bool,
}

/// A pre-serialized HTTP body with its validators and the complete header maps of its
/// `200` and `304` responses (a response clones one instead of inserting headers).
#[derive(Debug, Clone)]
pub struct Served {
    /// The body.
    pub body: Bytes,
    /// Strong ETag.
    pub etag: HeaderValue,
    /// Headers of a `200`: validators, caching, content type and CORS.
    pub ok: HeaderMap,
    /// Headers of a `304`: the same without the content type.
    pub not_modified: HeaderMap,
}

/// The headers every document shares: when it changed and how long to cache it.
struct Common {
    last_modified: HeaderValue,
    cache_control: HeaderValue,
}

impl Served {
    fn new(body: Vec<u8>, version: u64, content_type: HeaderValue, common: &Common) -> Self {
        let hash = digest::digest(&digest::SHA256, &body);
        let etag = format!("\"{version}-{}\"", crate::auth::to_hex(&hash.as_ref()[..8]));
        // Digits, hex and quotes only: always a valid header value.
        let etag = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\""));
        let mut not_modified = cors_headers();
        not_modified.insert(header::ETAG, etag.clone());
        not_modified.insert(header::LAST_MODIFIED, common.last_modified.clone());
        not_modified.insert(header::CACHE_CONTROL, common.cache_control.clone());
        let mut ok = not_modified.clone();
        ok.insert(header::CONTENT_TYPE, content_type);
        Served {
            body: Bytes::from(body),
            etag,
            ok,
            not_modified,
        }
    }
}

/// Everything served and signed for one key set, swapped atomically on change.
#[derive(Debug)]
pub struct Published {
    /// The document it was built from.
    pub doc: KeySetDoc,
    /// The algorithm of every key.
    pub alg: Algorithm,
    /// Published keys.
    pub keys: Vec<PublishedKey>,
    /// The JWK Set.
    pub jwks: Served,
    /// Each key alone, by kid.
    pub by_kid: HashMap<String, Served>,
    /// The OIDC discovery document.
    pub discovery: Served,
    /// When the JWK Set last changed (`Last-Modified`, whole seconds).
    pub modified: SystemTime,
}

impl Published {
    /// Builds the view of `doc`.
    pub fn build(config: &KeySetConfig, doc: KeySetDoc) -> Self {
        let alg = config.algorithm;
        let modified = UNIX_EPOCH + Duration::from_secs(doc.jwks_changed_at.max(0).unsigned_abs());
        let common = Common {
            last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(modified))
                .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")),
            cache_control: HeaderValue::from_str(&format!(
                "public, max-age={}, stale-if-error={}",
                config.timing.jwks_max_age, config.stale_if_error
            ))
            .unwrap_or(HeaderValue::from_static("public, max-age=60")),
        };
        let served = |body: Vec<u8>, content_type| {
            Served::new(body, doc.jwks_version, content_type, &common)
        };
        let mut keys = Vec::new();
        let mut jwks = Vec::new();
        let mut by_kid = HashMap::new();
        let parsed: Vec<_> = doc
            .published()
            .filter_map(|k| Some((k, k.public()?, k.kid.clone()?)))
            .collect();
        for (record, public, kid) in &parsed {
            let jwk = ServedJwk {
                jwk: public.jwk(),
                kid,
                use_: "sig",
                alg: alg.as_str(),
            };
            let jwk_json = serde_json::to_vec(&jwk).unwrap_or_default();
            by_kid.insert(kid.clone(), served(jwk_json.clone(), JWK));
            keys.push(PublishedKey {
                kid: kid.clone(),
                name: record.name.clone(),
                activate_at: record.activate_at,
                spki_der: public.spki_der().to_vec(),
                jwk_json: Bytes::from(jwk_json),
                retained: record
                    .retain
                    .is_some_and(|r| r >= config.timing.retention()),
            });
            jwks.push(jwk);
        }
        let body = serde_json::to_vec(&JwkSet { keys: jwks }).unwrap_or_default();
        let discovery = serde_json::json!({
            "issuer": config.issuer,
            "jwks_uri": config.jwks_uri,
            "id_token_signing_alg_values_supported": [alg.as_str()],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        });
        let discovery = served(serde_json::to_vec(&discovery).unwrap_or_default(), JSON);
        let jwks = served(body, JWK_SET);
        Published {
            jwks,
            doc,
            alg,
            keys,
            by_kid,
            discovery,
            modified,
        }
    }

    /// The key that signs at `now`.
    pub fn signer(&self, now: i64) -> Option<&PublishedKey> {
        self.keys
            .iter()
            .filter(|k| k.activate_at.is_some_and(|t| t <= now))
            .max_by_key(|k| k.activate_at)
    }
}
