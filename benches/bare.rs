//! A bare HTTP signer, the peer `scripts/bench.sh` measures beside keyturn: keyturn's own
//! stack (tokio's default runtime, a worker per CPU; hyper HTTP/1 with one write per
//! response; aws-lc-rs) with nothing but the signature between reading a request and
//! answering it.
//! No authentication, no JSON parsing, no policy, no audit log, no metrics. What it
//! reaches on a machine is what any signer built on this stack can reach there, measured
//! rather than computed: the bench reports keyturn's rate as a fraction of it.
//!
//! ```text
//! cargo bench --bench bare -- PORT
//! ```
//!
//! `POST /ES256`, `/EdDSA`, `/RS256`: reads the body, signs a typical JWS signing input
//! with a key made at start, answers `{"token":"<input>.<signature>"}`. `POST /batch`:
//! 256 ES256 tokens, `{"results":[{"token":...},...]}`, signed in chunks of 16 spread over
//! the workers as keyturn spreads a batch. `POST /batch-status`: the same with the bytes a
//! token status list adds (the `status` claim in each token, `"status": {"uri", "idx"}`
//! in each result): what the longer tokens and answers cost on this stack alone. Prints
//! `BARE READY` once it listens. Loopback only; a benchmark tool, not a server to deploy.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;

/// The signing input keyturn's sign request produces (header "." claims, base64url).
const INPUT: &str = "eyJhbGciOiJFUzI1NiIsImtpZCI6IlRmX2VZZDJ6WHh6R0Z5b3pYd2ZJcXFVUnhyNUtuNFFjNUVuYWN5eFNvRXMiLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiJ1c2VyOjEiLCJhdWQiOiJvcmRlcnMtYXBpIiwiaXNzIjoiaHR0cHM6Ly9pc3N1ZXIudGVzdC9lczI1NiIsImlhdCI6MTgwMDAwMDAwMCwibmJmIjoxODAwMDAwMDAwLCJleHAiOjE4MDAwMDAzMDAsImp0aSI6IkFBQUFBQUFBQUFBQUFBQUFBQUFBQUEifQ";

/// The claims of [`INPUT`] with a status list entry, as keyturn's `es256-status` key set
/// writes them.
const STATUS_CLAIMS: &str = r#"{"aud":"orders-api","exp":1800000300,"iat":1800000000,"iss":"https://issuer.test/es256","jti":"AAAAAAAAAAAAAAAAAAAAAA","nbf":1800000000,"status":{"status_list":{"idx":734562,"uri":"https://issuer.test/es256/keysets/es256-status/statuslists/1"}},"sub":"user:1"}"#;

/// A result's status entry, as keyturn's sign answer carries it.
const STATUS_ENTRY: &str = r#","status":{"uri":"https://issuer.test/es256/keysets/es256-status/statuslists/1","idx":734562}"#;

/// Tokens per `/batch` request: the bench's sign-batch size.
const BATCH: usize = 256;
/// Tokens per batch task, as keyturn's sign-batch chunks.
const CHUNK: usize = 16;

struct Keys {
    ec: EcdsaKeyPair,
    ed: Ed25519KeyPair,
    rsa: RsaKeyPair,
    rng: SystemRandom,
    /// [`INPUT`]'s header with [`STATUS_CLAIMS`].
    status_input: String,
}

impl Keys {
    /// `token` with `<input>.<signature>` appended, or None if the signature failed.
    fn push_token(&self, alg: &str, token: &mut String) -> Option<()> {
        if alg == "ES256-status" {
            let input = &self.status_input;
            let sig = self.ec.sign(&self.rng, input.as_bytes()).ok()?;
            token.push_str("{\"token\":\"");
            token.push_str(input);
            token.push('.');
            URL_SAFE_NO_PAD.encode_string(sig, token);
            token.push('"');
            token.push_str(STATUS_ENTRY);
            token.push('}');
            return Some(());
        }
        let sig = match alg {
            "ES256" => self
                .ec
                .sign(&self.rng, INPUT.as_bytes())
                .ok()?
                .as_ref()
                .to_vec(),
            "EdDSA" => self.ed.sign(INPUT.as_bytes()).as_ref().to_vec(),
            "RS256" => {
                let mut sig = vec![0; self.rsa.public_modulus_len()];
                self.rsa
                    .sign(
                        &signature::RSA_PKCS1_SHA256,
                        &self.rng,
                        INPUT.as_bytes(),
                        &mut sig,
                    )
                    .ok()?;
                sig
            }
            _ => return None,
        };
        token.push_str("{\"token\":\"");
        token.push_str(INPUT);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(sig, token);
        token.push_str("\"}");
        Some(())
    }
}

async fn answer(
    keys: Arc<Keys>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().trim_start_matches('/').to_owned();
    // The body is read whole, as any signer must before it can sign.
    if req.into_body().collect().await.is_err() {
        return Ok(status(StatusCode::BAD_REQUEST));
    }
    let mut out = String::with_capacity(512);
    let batch = match path.as_str() {
        "batch" => Some("ES256"),
        "batch-status" => Some("ES256-status"),
        _ => None,
    };
    let signed = if let Some(alg) = batch {
        let chunks: Vec<_> = (0..BATCH / CHUNK)
            .map(|_| {
                let keys = keys.clone();
                tokio::spawn(async move {
                    let mut chunk = String::with_capacity(CHUNK * 512);
                    for i in 0..CHUNK {
                        if i > 0 {
                            chunk.push(',');
                        }
                        keys.push_token(alg, &mut chunk)?;
                    }
                    Some(chunk)
                })
            })
            .collect();
        out.reserve(BATCH * 512);
        out.push_str("{\"results\":[");
        let mut all = Some(());
        for (i, chunk) in chunks.into_iter().enumerate() {
            match chunk.await {
                Ok(Some(chunk)) => {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&chunk);
                }
                _ => all = None,
            }
        }
        out.push_str("]}");
        all
    } else {
        keys.push_token(&path, &mut out)
    };
    Ok(match signed {
        Some(()) => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(out)))
            .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR)),
        None => status(StatusCode::NOT_FOUND),
    })
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = code;
    res
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes --bench: the port is the first argument that is not a flag.
    let port: u16 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .ok_or("usage: bare PORT")?
        .parse()?;
    let keys = Arc::new(Keys {
        ec: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)?,
        ed: Ed25519KeyPair::generate()?,
        rsa: RsaKeyPair::generate(KeySize::Rsa2048)?,
        rng: SystemRandom::new(),
        status_input: format!(
            "{}.{}",
            INPUT.split('.').next().unwrap_or_default(),
            URL_SAFE_NO_PAD.encode(STATUS_CLAIMS)
        ),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("BARE READY");
        loop {
            // A failed accept (a reset, out of descriptors) ends one connection, not the run.
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let keys = keys.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(keys.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .writev(false)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
