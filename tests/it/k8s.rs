//! The Kubernetes external JWT signer: a tonic client plays kube-apiserver over the Unix
//! socket of the real binary. Tokens are assembled as kube-apiserver does
//! (`header.claims.signature`) and verified with the key FetchKeys returned, by keyturn's
//! verifier and by the `jsonwebtoken` crate.

use crate::harness::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use keyturn::server::k8s::proto::{v1, v1alpha1};
use keyturn_backend::{Algorithm, PublicKey};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

type V1 = v1::external_jwt_signer_client::ExternalJwtSignerClient<Channel>;
type V1alpha1 = v1alpha1::external_jwt_signer_client::ExternalJwtSignerClient<Channel>;

#[derive(Debug, Clone, Copy)]
enum Version {
    V1,
    V1alpha1,
}

const VERSIONS: [Version; 2] = [Version::V1, Version::V1alpha1];

/// What FetchKeys said.
#[derive(Debug)]
struct Keys {
    keys: Vec<(String, Vec<u8>)>,
    data_timestamp: i64,
    refresh_hint: i64,
}

impl Keys {
    fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|(k, _)| k.as_str()).collect()
    }
    fn get(&self, kid: &str) -> Option<&[u8]> {
        self.keys
            .iter()
            .find(|(k, _)| k == kid)
            .map(|(_, d)| d.as_slice())
    }
}

/// kube-apiserver's side of the socket, in both API versions.
#[derive(Clone)]
struct Kube {
    v1: V1,
    v1alpha1: V1alpha1,
}

async fn unix_connect(socket: &str) -> std::io::Result<UnixStream> {
    match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            let stream = std::os::unix::net::UnixStream::connect_addr(&addr)?;
            stream.set_nonblocking(true)?;
            UnixStream::from_std(stream)
        }
        None => UnixStream::connect(socket).await,
    }
}

impl Kube {
    /// Connects over HTTP/2 to `socket` (a path or `@name`), as kube-apiserver does.
    async fn connect(socket: &str) -> Kube {
        let socket = socket.to_owned();
        // The authority is a placeholder: the connector decides where bytes go.
        let channel = Endpoint::try_from("http://keyturn.invalid")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        unix_connect(&socket).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        Kube {
            v1: V1::new(channel.clone()),
            v1alpha1: V1alpha1::new(channel),
        }
    }

    async fn metadata(&mut self, v: Version) -> i64 {
        match v {
            Version::V1 => {
                self.v1
                    .metadata(v1::MetadataRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .max_token_expiration_seconds
            }
            Version::V1alpha1 => {
                self.v1alpha1
                    .metadata(v1alpha1::MetadataRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .max_token_expiration_seconds
            }
        }
    }

    async fn fetch_keys(&mut self, v: Version) -> Keys {
        let (keys, ts, hint) = match v {
            Version::V1 => {
                let r = self
                    .v1
                    .fetch_keys(v1::FetchKeysRequest {})
                    .await
                    .unwrap()
                    .into_inner();
                let keys = r.keys.into_iter().map(|k| {
                    assert!(!k.exclude_from_oidc_discovery);
                    (k.key_id, k.key)
                });
                (keys.collect(), r.data_timestamp, r.refresh_hint_seconds)
            }
            Version::V1alpha1 => {
                let r = self
                    .v1alpha1
                    .fetch_keys(v1alpha1::FetchKeysRequest {})
                    .await
                    .unwrap()
                    .into_inner();
                let keys = r.keys.into_iter().map(|k| {
                    assert!(!k.exclude_from_oidc_discovery);
                    (k.key_id, k.key)
                });
                (keys.collect(), r.data_timestamp, r.refresh_hint_seconds)
            }
        };
        Keys {
            keys,
            data_timestamp: ts.expect("data_timestamp is set").seconds,
            refresh_hint: hint,
        }
    }

    /// Sign: (header, signature) or the gRPC refusal.
    async fn sign(&mut self, v: Version, claims: &str) -> Result<(String, String), Status> {
        let claims = claims.to_owned();
        match v {
            Version::V1 => self.v1.sign(v1::SignJwtRequest { claims }).await.map(|r| {
                let r = r.into_inner();
                (r.header, r.signature)
            }),
            Version::V1alpha1 => self
                .v1alpha1
                .sign(v1alpha1::SignJwtRequest { claims })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    (r.header, r.signature)
                }),
        }
    }

    /// Signs `claims` and assembles the token as kube-apiserver does: (token, kid).
    async fn token(&mut self, v: Version, claims: &Value) -> (String, String) {
        let segment = B64.encode(claims.to_string());
        let (header, signature) = self.sign(v, &segment).await.unwrap();
        let h: Value = serde_json::from_slice(&B64.decode(&header).unwrap()).unwrap();
        let fields: Vec<&str> = h.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(fields, ["alg", "kid", "typ"], "{h}");
        assert_eq!(h["typ"], "JWT");
        let kid = h["kid"].as_str().unwrap().to_owned();
        assert!(!kid.is_empty() && kid.len() <= 1024);
        assert!(!signature.contains('=') && !header.contains('='));
        (format!("{header}.{segment}.{signature}"), kid)
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims as kube-apiserver builds them for a bound service-account token.
fn kube_claims(issuer: &str, lifetime: i64) -> Value {
    let iat = now();
    json!({
        "aud": ["https://kubernetes.default.svc"],
        "exp": iat + lifetime,
        "iat": iat,
        "iss": issuer,
        "jti": format!("jti-{iat}-{lifetime}"),
        "kubernetes.io": {
            "namespace": "default",
            "serviceaccount": {"name": "builder", "uid": "0a9c6f2e-1d1b-4c55-8b1a-3f1e2d3c4b5a"}
        },
        "nbf": iat,
        "sub": "system:serviceaccount:default:builder"
    })
}

/// Verifies `token` with the PKIX key FetchKeys gave for its kid: with keyturn's JWK
/// verifier, and with `jsonwebtoken` fed the DER key (where it has the algorithm).
fn verify(token: &str, keys: &Keys, alg: &str, issuer: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], alg);
    let kid = header["kid"].as_str().unwrap();
    let der = keys
        .get(kid)
        .unwrap_or_else(|| panic!("kid {kid} not in FetchKeys {:?}", keys.kids()));
    let public = PublicKey::from_spki_der(der).unwrap();
    assert_eq!(public.kid(), kid, "kid is the key's RFC 7638 thumbprint");
    let algorithm: Algorithm = serde_json::from_value(json!(alg)).unwrap();
    let signature = B64.decode(parts[2]).unwrap();
    let input = format!("{}.{}", parts[0], parts[1]);
    assert!(
        public.jwk().verify(algorithm, input.as_bytes(), &signature),
        "signature verifies with the fetched key"
    );
    if let Some(ecdsa) = match alg {
        "ES256" | "ES384" | "ES512" => Some(true),
        "RS256" => Some(false),
        _ => None,
    } {
        // SubjectPublicKeyInfo → the raw key (EC point / PKCS#1) jsonwebtoken's DER expects.
        use x509_parser::prelude::FromDer;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der).unwrap();
        let raw = spki.subject_public_key.data.to_vec();
        let key = if ecdsa {
            jsonwebtoken::DecodingKey::from_ec_der(&raw)
        } else {
            jsonwebtoken::DecodingKey::from_rsa_der(&raw)
        };
        let jalg = match alg {
            "ES256" => Some(jsonwebtoken::Algorithm::ES256),
            "ES384" => Some(jsonwebtoken::Algorithm::ES384),
            "RS256" => Some(jsonwebtoken::Algorithm::RS256),
            _ => None, // jsonwebtoken 9 has no ES512.
        };
        if let Some(jalg) = jalg {
            let mut validation = jsonwebtoken::Validation::new(jalg);
            validation.set_issuer(&[issuer]);
            validation.set_audience(&["https://kubernetes.default.svc"]);
            return jsonwebtoken::decode::<Value>(token, &key, &validation)
                .unwrap()
                .claims;
        }
    }
    serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap()
}

/// A daemon with the signer on `socket`, key set `cluster` of algorithm `alg` (10m tokens,
/// JWKS max-age `max_age`, no skew), and an admin client: (daemon, admin token).
fn start(dir: &Path, socket: &str, alg: &str, max_age: &str) -> (Daemon, String) {
    let (ops, ops_token) = token_client("ops", &["cluster"], "admin = true");
    let config = format!(
        "{}k8s_signer_socket = \"{socket}\"\nk8s_signer_keyset = \"cluster\"\n\
         [[keyset]]\nname = \"cluster\"\nissuer = \"{ISSUER}\"\nalgorithm = \"{alg}\"\n\
         rotate_every = \"1h\"\nmax_token_ttl = \"10m\"\njwks_max_age = \"{max_age}\"\n\
         clock_skew = \"0s\"\n{ops}",
        server_toml(dir),
    );
    (Daemon::start(dir, &config), ops_token)
}

const ISSUER: &str = "https://issuer.test/cluster";

#[tokio::test]
async fn kube_apiserver_signs_and_verifies_across_a_rotation_and_a_revoke() {
    let dir = private_dir();
    let socket = dir.path().join("run/k8s.sock");
    // A socket left behind by a crashed run: replaced at start.
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    // jwks_max_age 3s: the publish lead leaves time to watch a pending key.
    let (d, ops) = start(dir.path(), socket.to_str().unwrap(), "ES256", "3s");
    {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let meta = std::fs::metadata(&socket).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    let mut kube = Kube::connect(socket.to_str().unwrap()).await;

    // Metadata: the key set's max_token_ttl (10m), in both versions.
    for v in VERSIONS {
        assert_eq!(kube.metadata(v).await, 600, "{v:?}");
    }

    // FetchKeys: the same keys as the JWKS, as PKIX DER; timestamp and hint set.
    let keys = kube.fetch_keys(Version::V1).await;
    assert!(!keys.keys.is_empty());
    assert_eq!(keys.refresh_hint, 3, "refresh hint = jwks_max_age");
    assert!(keys.data_timestamp > 0 && keys.data_timestamp <= now());
    let mut jwks_kids = kids(&jwks(&d, "cluster").await);
    let mut fetched: Vec<String> = keys.kids().iter().map(|k| k.to_string()).collect();
    jwks_kids.sort();
    fetched.sort();
    assert_eq!(fetched, jwks_kids);
    let alpha = kube.fetch_keys(Version::V1alpha1).await;
    assert_eq!(alpha.keys, keys.keys);
    assert_eq!(alpha.data_timestamp, keys.data_timestamp);

    // Sign in both versions; the token verifies with the fetched key.
    let mut first_token = String::new();
    let mut first_kid = String::new();
    for v in VERSIONS {
        let claims = kube_claims(ISSUER, 600);
        let (token, kid) = kube.token(v, &claims).await;
        let verified = verify(&token, &keys, "ES256", ISSUER);
        assert_eq!(verified, claims, "claims are signed exactly as sent");
        first_token = token;
        first_kid = kid;
    }

    // Each signature is audited as kube-apiserver's, and counted.
    let audit = dir.path().join("data/audit.log");
    eventually(
        Duration::from_secs(10),
        "audit lines for kube-apiserver",
        || {
            let audit = audit.clone();
            async move {
                std::fs::read_to_string(&audit)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter(|r| {
                        r["event"] == "sign"
                            && r["caller"] == "kube-apiserver"
                            && r["keyset"] == "cluster"
                            && r["sub"] == "system:serviceaccount:default:builder"
                    })
                    .count()
                    == 2
            }
        },
    )
    .await;
    let metrics = metrics_text(&d).await;
    assert!(
        metrics.lines().any(|l| l.contains("signatures")
            && l.contains("keyset=\"cluster\"")
            && l.contains("outcome=\"ok\"")
            && l.trim_end().ends_with(" 2")),
        "{metrics}"
    );

    // Rotation: the new key is in FetchKeys at once, and for at least one refresh interval
    // before it signs (the publish lead).
    let (status, rotated) = rotate(&d, &ops, "cluster").await;
    assert_eq!(status, 200, "{rotated}");
    let next = rotated["kid"].as_str().unwrap().to_owned();
    let activates_at = rotated["activates_at"].as_i64().unwrap();
    assert_ne!(next, first_kid);
    let seen_at = now();
    let keys = kube.fetch_keys(Version::V1).await;
    assert!(keys.kids().contains(&next.as_str()), "pending key fetched");
    assert!(keys.kids().contains(&first_kid.as_str()));
    let (_, view) = admin(&d, &ops, reqwest::Method::GET, "/v1/keysets/cluster").await;
    let record = view["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == next.as_str())
        .unwrap()
        .clone();
    let published_at = record["published_at"].as_i64().unwrap();
    assert!(published_at <= seen_at);
    assert!(
        activates_at - published_at >= keys.refresh_hint,
        "published at {published_at}, signs from {activates_at}, refresh hint {}",
        keys.refresh_hint
    );
    let (token, kid) = kube.token(Version::V1, &kube_claims(ISSUER, 600)).await;
    if now() < activates_at {
        assert_eq!(kid, first_kid, "the pending key does not sign yet");
    }
    verify(&token, &keys, "ES256", ISSUER);
    // Once active, the new key signs, and kube-apiserver already had it.
    let rotated_token = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    eventually(Duration::from_secs(30), "the rotated key signs", || {
        let mut kube = kube.clone();
        let rotated_token = rotated_token.clone();
        let next = next.clone();
        async move {
            let (token, kid) = kube.token(Version::V1, &kube_claims(ISSUER, 600)).await;
            *rotated_token.lock().unwrap() = token;
            kid == next
        }
    })
    .await;
    assert!(now() >= activates_at);
    let rotated_token = rotated_token.lock().unwrap().clone();
    verify(&rotated_token, &keys, "ES256", ISSUER);
    let keys = kube.fetch_keys(Version::V1alpha1).await;
    assert!(keys.data_timestamp >= published_at);
    // The retired key stays: tokens it signed keep verifying.
    verify(&first_token, &keys, "ES256", ISSUER);

    // Revoke the active key: gone from FetchKeys at once; the next Sign uses another key.
    let (status, revoked) = admin(
        &d,
        &ops,
        reqwest::Method::POST,
        &format!("/v1/keysets/cluster/keys/{next}/revoke"),
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    for v in VERSIONS {
        let keys = kube.fetch_keys(v).await;
        assert!(
            !keys.kids().contains(&next.as_str()),
            "{v:?}: revoked key still fetched"
        );
        let (token, kid) = kube.token(v, &kube_claims(ISSUER, 600)).await;
        assert_ne!(kid, next);
        assert_eq!(revoked["active_kid"], kid.as_str());
        verify(&token, &keys, "ES256", ISSUER);
    }
    assert!(d.stop().success());
}

/// Base64url with `=` padding (a length that needs it).
fn padded(claims: Value) -> String {
    let mut json = claims.to_string();
    if json.len().is_multiple_of(3) {
        json.push(' ');
    }
    let text = base64::engine::general_purpose::URL_SAFE.encode(json);
    assert!(text.ends_with('='));
    text
}

#[tokio::test]
async fn bad_claims_are_refused_with_a_clear_grpc_error() {
    let dir = private_dir();
    let socket = dir.path().join("k8s.sock");
    let (d, _) = start(dir.path(), socket.to_str().unwrap(), "ES256", "1s");
    let mut kube = Kube::connect(socket.to_str().unwrap()).await;
    let enc = |v: Value| B64.encode(v.to_string());
    let mut expired = kube_claims(ISSUER, 600);
    expired["exp"] = json!(now() - 5);
    let mut no_exp = kube_claims(ISSUER, 600);
    no_exp.as_object_mut().unwrap().remove("exp");
    let cases = [
        (
            "wrong iss",
            enc(kube_claims("https://evil.example", 600)),
            Code::PermissionDenied,
            "--service-account-issuer",
        ),
        (
            "lifetime above max_token_ttl",
            enc(kube_claims(ISSUER, 601)),
            Code::PermissionDenied,
            "max_token_ttl",
        ),
        (
            "a day-long token",
            enc(kube_claims(ISSUER, 86_400)),
            Code::PermissionDenied,
            "--service-account-max-token-expiration",
        ),
        (
            "not base64url",
            "eyJpc3M*not+base64/".to_owned(),
            Code::InvalidArgument,
            "base64url",
        ),
        (
            "padded",
            padded(kube_claims(ISSUER, 600)),
            Code::InvalidArgument,
            "base64url",
        ),
        (
            "not JSON",
            B64.encode("this is not json"),
            Code::InvalidArgument,
            "JSON",
        ),
        (
            "expired",
            enc(expired),
            Code::InvalidArgument,
            "not in the future",
        ),
        ("no exp", enc(no_exp), Code::InvalidArgument, "exp"),
        ("empty", String::new(), Code::InvalidArgument, "empty"),
    ];
    for v in VERSIONS {
        for (what, claims, code, hint) in &cases {
            let e = match kube.sign(v, claims).await {
                Ok(signed) => panic!("{v:?} {what}: signed {signed:?}"),
                Err(e) => e,
            };
            assert_eq!(e.code(), *code, "{v:?} {what}: {e:?}");
            assert!(
                e.message().contains(hint),
                "{v:?} {what}: message {:?} should mention {hint:?}",
                e.message()
            );
        }
        // The limit itself is fine.
        kube.sign(v, &enc(kube_claims(ISSUER, 600))).await.unwrap();
    }
    // Refusals sign nothing: only the two good requests are in the audit log.
    let audit = std::fs::read_to_string(dir.path().join("data/audit.log")).unwrap_or_default();
    assert!(
        audit
            .lines()
            .filter(|l| l.contains("\"sign\"") && l.contains("kube-apiserver"))
            .count()
            <= 2
    );
    assert!(d.stop().success());
}

#[tokio::test]
async fn rs256_on_an_abstract_socket() {
    let dir = private_dir();
    let name = format!(
        "@keyturn-it-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let (d, _) = start(dir.path(), &name, "RS256", "1s");
    let mut kube = Kube::connect(&name).await;
    for v in VERSIONS {
        assert_eq!(kube.metadata(v).await, 600);
        let keys = kube.fetch_keys(v).await;
        assert_eq!(keys.refresh_hint, 1);
        let claims = kube_claims(ISSUER, 300);
        let (token, _) = kube.token(v, &claims).await;
        assert_eq!(verify(&token, &keys, "RS256", ISSUER), claims);
    }
    // No socket file anywhere: the name lives in the abstract namespace only.
    assert!(!Path::new(&name).exists());
    assert!(d.stop().success());
}

#[tokio::test]
async fn es384_and_es512_tokens_verify_with_the_fetched_key() {
    for alg in ["ES384", "ES512"] {
        let dir = private_dir();
        let socket = dir.path().join("k8s.sock");
        let (d, _) = start(dir.path(), socket.to_str().unwrap(), alg, "1s");
        let mut kube = Kube::connect(socket.to_str().unwrap()).await;
        let keys = kube.fetch_keys(Version::V1).await;
        let claims = kube_claims(ISSUER, 600);
        let (token, _) = kube.token(Version::V1, &claims).await;
        assert_eq!(verify(&token, &keys, alg, ISSUER), claims, "{alg}");
        assert!(d.stop().success());
    }
}
