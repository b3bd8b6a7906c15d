//! The published view of a key set: the JWKS body and headers, serialized once per change,
//! and the keys that may sign. Serving a request only clones `Bytes` and a header map.

use crate::config::KeySetConfig;
use crate::core::lifecycle::KeySetDoc;
use aws_lc_rs::digest;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue};
use keyturn_backend::{Algorithm, Jwk};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
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
    /// A signed document served for `max_age` seconds (a status list token), issued at
    /// `issued` (`Last-Modified`).
    pub fn token(body: Vec<u8>, content_type: HeaderValue, issued: i64, max_age: i64) -> Self {
        let at = UNIX_EPOCH + Duration::from_secs(issued.clamp(0, LAST_HTTP_DATE).unsigned_abs());
        let common = Common {
            last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(at))
                .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")),
            cache_control: HeaderValue::from_str(&format!("public, max-age={}", max_age.max(0)))
                .unwrap_or(HeaderValue::from_static("no-cache")),
        };
        Served::new(body, issued.max(0).unsigned_abs(), content_type, &common)
    }

    fn new(body: Vec<u8>, version: u64, content_type: HeaderValue, common: &Common) -> Self {
        let hash = digest::digest(&digest::SHA256, &body);
        let etag = format!(
            "\"{version}-{}\"",
            crate::config::secret::to_hex(&hash.as_ref()[..8])
        );
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
    /// Set once a response found the change's second over: from then on `Last-Modified`
    /// is the change time and responses need not read the clock.
    pub settled: AtomicBool,
}

impl Published {
    /// Builds the view of `doc`.
    pub fn build(config: &KeySetConfig, doc: KeySetDoc) -> Self {
        let alg = config.algorithm;
        // Within what an HTTP date can say (a damaged document may hold any number).
        let changed = doc.jwks_changed_at.clamp(0, LAST_HTTP_DATE);
        let modified = UNIX_EPOCH + Duration::from_secs(changed.unsigned_abs());
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
            settled: AtomicBool::new(false),
        }
    }

    /// The key that signs at `now`: the document's active key, if its record could be
    /// read (never an older key in its place, whose retention would not cover the tokens).
    pub fn signer(&self, now: i64) -> Option<&PublishedKey> {
        let active = self.doc.keys.get(self.doc.active(now)?)?;
        self.keys.iter().find(|k| k.name == active.name)
    }
}

/// The last instant an HTTP date can hold.
const LAST_HTTP_DATE: i64 = crate::core::json::LAST_NUMERIC_DATE;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Env};
    use base64::Engine as _;
    use keyturn_backend::{KeyBackend, KeyType};

    /// A document with two published keys, "old" active since 100 and "new" since 200,
    /// changed at `changed`.
    async fn doc(changed: i64) -> KeySetDoc {
        let backend = keyturn_backend::memory::MemoryBackend::new();
        let record = |name: &str, activate_at: i64, spki: &[u8]| {
            serde_json::json!({
                "name": name, "key_type": KeyType::EcP256, "created_at": 0,
                "public_key": base64::engine::general_purpose::STANDARD.encode(spki),
                "kid": name, "published_at": 0, "activate_at": activate_at,
            })
        };
        let mut keys = Vec::new();
        for (name, at) in [("old", 100), ("new", 200)] {
            let public = backend.create_key(name, KeyType::EcP256).await.unwrap();
            keys.push(record(name, at, public.spki_der()));
        }
        serde_json::from_value(serde_json::json!({
            "jwks_version": 1, "jwks_changed_at": changed, "keys": keys,
        }))
        .unwrap()
    }

    fn config() -> KeySetConfig {
        Config::parse(crate::core::testing::KEYSET, Env::default())
            .unwrap()
            .keysets[0]
            .clone()
    }

    /// A damaged document's change time past what an HTTP date holds is served as the
    /// last one it can (the formatter would panic).
    #[tokio::test]
    async fn any_change_time_gives_a_last_modified() {
        for (changed, date) in [
            (i64::MAX, "Fri, 31 Dec 9999 23:59:59 GMT"),
            (253_402_300_800, "Fri, 31 Dec 9999 23:59:59 GMT"),
            (-5, "Thu, 01 Jan 1970 00:00:00 GMT"),
        ] {
            let published = Published::build(&config(), doc(changed).await);
            assert_eq!(httpdate::fmt_http_date(published.modified), date);
        }
    }

    /// The active key signs; if its record cannot be read, nothing does (not the key
    /// before it, whose retention would not cover the tokens).
    #[tokio::test]
    async fn an_unreadable_active_key_is_not_replaced_by_an_older_one() {
        let mut doc = doc(0).await;
        let published = Published::build(&config(), doc.clone());
        assert_eq!(published.signer(150).unwrap().kid, "old");
        assert_eq!(published.signer(250).unwrap().kid, "new");
        doc.keys[1].public_key = Some("not base64".into());
        let published = Published::build(&config(), doc);
        assert_eq!(published.signer(150).unwrap().kid, "old");
        assert!(published.signer(250).is_none());
        assert!(!published.by_kid.contains_key("new"));
    }
}
