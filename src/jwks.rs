//! The published view of a key set: the JWKS body and headers, serialized once per change,
//! and the keys that may sign. Serving a request only clones `Bytes` and header values.

use crate::config::KeySetConfig;
use crate::lifecycle::KeySetDoc;
use aws_lc_rs::digest;
use bytes::Bytes;
use http::HeaderValue;
use keyturn_backend::{Algorithm, Jwk};
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

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
}

/// A pre-serialized HTTP body with its validators.
#[derive(Debug, Clone)]
pub struct Served {
    /// The body.
    pub body: Bytes,
    /// Strong ETag.
    pub etag: HeaderValue,
}

impl Served {
    fn new(body: Vec<u8>, version: u64) -> Self {
        let hash = digest::digest(&digest::SHA256, &body);
        let etag = format!("\"{version}-{}\"", crate::auth::to_hex(&hash.as_ref()[..8]));
        Served {
            body: Bytes::from(body),
            // Digits, hex and quotes only: always a valid header value.
            etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\"")),
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
    /// `Last-Modified`.
    pub last_modified: HeaderValue,
    /// `Cache-Control`.
    pub cache_control: HeaderValue,
}

impl Published {
    /// Builds the view of `doc`.
    pub fn build(config: &KeySetConfig, doc: KeySetDoc) -> Self {
        let alg = config.algorithm;
        let mut keys = Vec::new();
        let mut jwks = Vec::new();
        let mut by_kid = HashMap::new();
        let parsed: Vec<_> = doc
            .published()
            .filter_map(|k| Some((k, k.public()?, k.kid.clone()?)))
            .collect();
        for (record, public, kid) in &parsed {
            let served = ServedJwk {
                jwk: public.jwk(),
                kid,
                use_: "sig",
                alg: alg.as_str(),
            };
            let jwk_json = serde_json::to_vec(&served).unwrap_or_default();
            by_kid.insert(kid.clone(), Served::new(jwk_json.clone(), doc.jwks_version));
            keys.push(PublishedKey {
                kid: kid.clone(),
                name: record.name.clone(),
                activate_at: record.activate_at,
                spki_der: public.spki_der().to_vec(),
                jwk_json: Bytes::from(jwk_json),
            });
            jwks.push(served);
        }
        let body = serde_json::to_vec(&JwkSet { keys: jwks }).unwrap_or_default();
        let discovery = serde_json::json!({
            "issuer": config.issuer,
            "jwks_uri": config.jwks_uri,
            "id_token_signing_alg_values_supported": [alg.as_str()],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        });
        let discovery = Served::new(
            serde_json::to_vec(&discovery).unwrap_or_default(),
            doc.jwks_version,
        );
        let changed = UNIX_EPOCH + Duration::from_secs(doc.jwks_changed_at.max(0).unsigned_abs());
        let last_modified = HeaderValue::from_str(&httpdate::fmt_http_date(changed))
            .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
        let cache_control = HeaderValue::from_str(&format!(
            "public, max-age={}, stale-if-error={}",
            config.timing.jwks_max_age, config.stale_if_error
        ))
        .unwrap_or(HeaderValue::from_static("public, max-age=60"));
        Published {
            jwks: Served::new(body, doc.jwks_version),
            doc,
            alg,
            keys,
            by_kid,
            discovery,
            last_modified,
            cache_control,
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
