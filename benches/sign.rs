//! Micro-benchmarks of the sign path, per algorithm, beside the raw primitive, so that a
//! regression in our own overhead shows up next to a number it cannot hide behind.
//!
//! ```text
//! cargo bench --bench sign                 # everything
//! cargo bench --bench sign -- ES256        # one algorithm
//! ```
//!
//! For each algorithm (a file-backend key, as the daemon signs by default):
//! - `raw`: aws-lc-rs alone on the signing input (the floor);
//! - `prepare`: policy checks and the signing input (`keyturn::core::policy::prepare`, with a
//!   fresh `jti`);
//! - `sign_path`: `prepare` + `FileBackend::sign` (cached key) + `compact`: claims in,
//!   compact JWS out;
//! - `request`: as the sign handler does it: the JSON body parsed, `sign_path`, the JSON
//!   answer written (no HTTP, no audit).
//!
//! `sign_path - raw` is keyturn's overhead per token; it should stay a few microseconds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{criterion_group, criterion_main, Criterion};
use keyturn::config::{Config, Env};
use keyturn::core::policy::{compact, new_jti, prepare, SignRequest};
use keyturn::server::http::api::Signed;
use keyturn_backend::{Algorithm, KeyBackend};
use keyturn_backend_file::{FileBackend, FileBackendConfig, KekSource};
use std::future::Future;
use std::hint::black_box;
use std::os::unix::fs::PermissionsExt;
use std::task::{Context, Poll, Waker};

/// Runs a future that completes without waiting (a file-backend signature with its key
/// cached): no runtime in the measurement.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the signature waited for I/O: is the key cached?"),
    }
}

const BODY: &[u8] =
    br#"{"claims": {"sub": "user:1", "aud": "orders-api", "scope": "read write"}, "ttl": "5m"}"#;

fn config(alg: &str, rsa_bits: Option<u32>) -> Config {
    let bits = rsa_bits.map_or(String::new(), |b| format!("rsa_bits = {b}\n"));
    Config::parse(
        &format!(
            r#"
            [[keyset]]
            name = "bench"
            issuer = "https://issuer.example.com"
            algorithm = "{alg}"
            {bits}
            rotate_every = "1h"
            max_token_ttl = "15m"

            [[client]]
            name = "bench"
            token_sha256 = "{hash}"
            keysets = ["bench"]
            audiences = ["orders-api"]
            subject_pattern = "user:*"
            allowed_claims = ["scope"]
            "#,
            hash = "00".repeat(32)
        ),
        Env::default(),
    )
    .unwrap()
}

enum Raw {
    Ec(aws_lc_rs::signature::EcdsaKeyPair),
    Ed(aws_lc_rs::signature::Ed25519KeyPair),
    Rsa(aws_lc_rs::rsa::KeyPair),
}

impl Raw {
    fn new(alg: Algorithm) -> Raw {
        use aws_lc_rs::signature as s;
        match alg {
            Algorithm::ES256 => {
                Raw::Ec(s::EcdsaKeyPair::generate(&s::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
            }
            Algorithm::EdDSA => Raw::Ed(s::Ed25519KeyPair::generate().unwrap()),
            _ => Raw::Rsa(
                aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
            ),
        }
    }

    fn sign(&self, rng: &aws_lc_rs::rand::SystemRandom, message: &[u8], out: &mut [u8]) {
        match self {
            Raw::Ec(k) => {
                black_box(k.sign(rng, message).unwrap());
            }
            Raw::Ed(k) => {
                black_box(k.sign(message));
            }
            Raw::Rsa(k) => {
                let len = k.public_modulus_len();
                k.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    rng,
                    message,
                    &mut out[..len],
                )
                .unwrap();
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let backend = FileBackend::open(&FileBackendConfig {
        dir: dir.path().join("keys"),
        kek: KekSource::File(dir.path().join("kek")),
    })
    .unwrap();

    for (alg, rsa_bits) in [
        (Algorithm::ES256, None),
        (Algorithm::EdDSA, None),
        (Algorithm::RS256, Some(2048)),
    ] {
        let config = config(alg.as_str(), rsa_bits);
        let keyset = &config.keysets[0];
        let client = &config.clients[0];
        let key_name = format!("bench-{}", alg.as_str().to_ascii_lowercase());
        runtime
            .block_on(backend.create_key(&key_name, keyset.key_type))
            .unwrap();
        let now = 1_800_000_000;
        let req: SignRequest = serde_json::from_slice(BODY).unwrap();
        let sample = prepare(
            &req,
            client,
            keyset,
            now,
            "kid-0123456789",
            new_jti().unwrap(),
            None,
        )
        .unwrap()
        .signing_input;
        let raw = Raw::new(alg);
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let mut out = vec![0u8; 512];

        let mut group = c.benchmark_group(alg.as_str());
        group.bench_function("raw", |b| {
            b.iter(|| raw.sign(&rng, black_box(sample.as_bytes()), &mut out))
        });
        group.bench_function("prepare", |b| {
            b.iter(|| {
                prepare(
                    black_box(&req),
                    client,
                    keyset,
                    now,
                    "kid-0123456789",
                    new_jti().unwrap(),
                    None,
                )
                .unwrap()
            })
        });
        let sign_path = |req: &SignRequest| {
            let p = prepare(
                req,
                client,
                keyset,
                now,
                "kid-0123456789",
                new_jti().unwrap(),
                None,
            )
            .unwrap();
            let sig = ready(backend.sign(&key_name, alg, p.signing_input.as_bytes())).unwrap();
            Signed {
                token: compact(p.signing_input, &sig),
                kid: "kid-0123456789",
                jti: p.jti,
                exp: p.exp,
                status: None,
            }
        };
        group.bench_function("sign_path", |b| b.iter(|| sign_path(black_box(&req))));
        group.bench_function("request", |b| {
            b.iter(|| {
                let req: SignRequest = serde_json::from_slice(black_box(BODY)).unwrap();
                serde_json::to_vec(&sign_path(&req)).unwrap()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
