//! The raw signing primitive, for the ratios `scripts/bench.sh` prints: aws-lc-rs alone
//! (no JSON, no base64, no HTTP), one and two threads, as signatures per second.
//!
//! ```text
//! cargo bench --bench primitive -- [--secs 3] [--threads 1,2] [--shared] [ES256 EdDSA RS256 ...]
//! ```
//!
//! One line per (algorithm, threads): `PRIMITIVE <alg> <threads> <signatures/s>`. The
//! message is a typical JWS signing input (about 300 bytes). Each thread signs with its
//! own key and a `SystemRandom` made once, the best case a daemon can reach. With
//! `--shared` every thread signs with one key, as a daemon's workers sign with a key set's
//! active key (lines end in ` shared`).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use std::time::{Duration, Instant};

#[allow(clippy::large_enum_variant)]
enum Key {
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

fn key(alg: &str) -> Option<Key> {
    let ec = |a| EcdsaKeyPair::generate(a).ok().map(Key::Ec);
    let rsa = |s| RsaKeyPair::generate(s).ok().map(Key::Rsa);
    match alg {
        "ES256" => ec(&signature::ECDSA_P256_SHA256_FIXED_SIGNING),
        "ES384" => ec(&signature::ECDSA_P384_SHA384_FIXED_SIGNING),
        "EdDSA" => Ed25519KeyPair::generate().ok().map(Key::Ed),
        "RS256" => rsa(KeySize::Rsa2048),
        "RS256-4096" => rsa(KeySize::Rsa4096),
        _ => None,
    }
}

/// Signs `message` in a loop for `secs`; returns the number of signatures.
fn run(key: &Key, message: &[u8], secs: f64) -> u64 {
    let rng = SystemRandom::new();
    let mut rsa_sig = vec![0u8; 512];
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while Instant::now() < deadline {
        // Check the clock every 16 signatures: Instant::now is not free next to Ed25519.
        for _ in 0..16 {
            let ok = match key {
                Key::Ec(k) => k.sign(&rng, message).is_ok(),
                Key::Ed(k) => !k.sign(message).as_ref().is_empty(),
                Key::Rsa(k) => {
                    let len = k.public_modulus_len();
                    k.sign(
                        &signature::RSA_PKCS1_SHA256,
                        &rng,
                        message,
                        &mut rsa_sig[..len],
                    )
                    .is_ok()
                }
            };
            n += u64::from(ok);
        }
    }
    n
}

fn main() {
    let mut secs = 3.0f64;
    let mut threads = vec![1usize, 2];
    let mut algs = Vec::new();
    let mut shared = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--secs" => secs = args.next().and_then(|s| s.parse().ok()).unwrap_or(secs),
            "--shared" => shared = true,
            "--threads" => {
                threads = args
                    .next()
                    .map(|s| s.split(',').filter_map(|t| t.parse().ok()).collect())
                    .unwrap_or(threads)
            }
            // `cargo bench` passes --bench; ignore it and anything else flag-like.
            a if a.starts_with('-') => {}
            a => algs.push(a.to_owned()),
        }
    }
    if algs.is_empty() {
        algs = vec!["ES256".into(), "EdDSA".into(), "RS256".into()];
    }
    // A typical signing input: base64url header "." base64url claims.
    let message = "eyJhbGciOiJFUzI1NiIsImtpZCI6IlRmX2VZZDJ6WHh6R0Z5b3pYd2ZJcXFVUnhyNUtuNFFjNUVuYWN5eFNvRXMiLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiJ1c2VyOjEiLCJhdWQiOiJvcmRlcnMtYXBpIiwiaXNzIjoiaHR0cHM6Ly9pc3N1ZXIudGVzdC9lczI1NiIsImlhdCI6MTgwMDAwMDAwMCwibmJmIjoxODAwMDAwMDAwLCJleHAiOjE4MDAwMDAzMDAsImp0aSI6IkFBQUFBQUFBQUFBQUFBQUFBQUFBQUEifQ";
    for alg in &algs {
        for &t in &threads {
            let n = if shared { 1 } else { t };
            let keys: Vec<Key> = (0..n).filter_map(|_| key(alg)).collect();
            if keys.len() != n {
                eprintln!("primitive: unknown algorithm {alg}");
                std::process::exit(2);
            }
            let started = Instant::now();
            let total: u64 = std::thread::scope(|s| {
                let handles: Vec<_> = (0..t)
                    .map(|i| &keys[i % n])
                    .map(|k| s.spawn(move || run(k, message.as_bytes(), secs)))
                    .collect();
                handles.into_iter().filter_map(|h| h.join().ok()).sum()
            });
            let rate = total as f64 / started.elapsed().as_secs_f64();
            let how = if shared { " shared" } else { "" };
            println!("PRIMITIVE {alg} {t} {rate:.0}{how}");
        }
    }
}
