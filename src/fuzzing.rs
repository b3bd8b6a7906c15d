//! Entry points for fuzzing: each takes arbitrary bytes and must never panic. The cargo-fuzz
//! targets in fuzz/ call them, and `tests/it/fuzz_corpus.rs` replays the saved corpus
//! through them in the normal test suite. Each also checks a property that must hold for
//! every input, not only "no crash".

use crate::cli::verify::{parse_jwks, verify, Expect, JwksKey};
use crate::config::{ClientAuth, ClientConfig, Config, Env, KeySetConfig};
use crate::core::policy::{prepare, SignRequest};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use keyturn_backend::{Jwk, KeyType};
use std::sync::OnceLock;

const NOW: i64 = 1_800_000_000;

/// Config parsing and validation: any text in, a config or an error out.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = Config::parse(text, Env::default()) {
            // Whatever validates keeps rotations at least a publish lead apart.
            for ks in &config.keysets {
                let min = crate::config::timing::min_period(&ks.schedule).unwrap_or(i64::MAX);
                assert!(
                    min >= ks.timing.publish_lead(),
                    "validated an unsafe schedule"
                );
            }
        }
    }
}

fn fixture() -> &'static (ClientConfig, KeySetConfig) {
    static FIXTURE: OnceLock<(ClientConfig, KeySetConfig)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let text = "[[keyset]]\nname = \"default\"\nissuer = \"https://issuer.example\"\n\
                    algorithm = \"ES256\"\nrotate_every = \"1h\"\nmax_token_ttl = \"15m\"\n";
        let keyset = Config::parse(text, Env::default())
            .map(|c| c.keysets[0].clone())
            .unwrap_or_else(|e| unreachable!("fixture config: {e}"));
        let client = ClientConfig {
            name: "fuzz".into(),
            auth: ClientAuth::Unix {
                uid: None,
                gid: None,
            },
            keysets: vec!["default".into()],
            audiences: vec!["orders".into()],
            subject_pattern: Some("user:*".into()),
            max_ttl: Some(600),
            allowed_claims: vec!["*".into()],
            forbidden_claims: vec!["admin".into()],
            allowed_typ: vec!["JWT".into(), "at+jwt".into()],
            admin: false,
            revoke_tokens: false,
        };
        (client, keyset)
    })
}

/// The sign request path: JSON body to policy to the token to sign.
pub fn sign_request(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<SignRequest>(data) else {
        return;
    };
    let (client, keyset) = fixture();
    let Ok(prepared) = prepare(&req, client, keyset, NOW, "kid", "jti".into(), None) else {
        return;
    };
    // Whatever passes the policy: iss fixed, reserved claims ours, lifetime within limits,
    // no name twice anywhere (a verifier taking the first of two would read another token),
    // sub and aud as the audit line records them.
    let (header, claims) = prepared.signing_input.split_once('.').unwrap_or_default();
    let header: serde_json::Value =
        serde_json::from_slice(&B64.decode(header).unwrap_or_default()).unwrap_or_default();
    let payload = B64.decode(claims).unwrap_or_default();
    assert!(
        crate::core::json::strict(&payload).is_ok(),
        "the payload is not strict JSON"
    );
    let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
    assert_eq!(
        claims.get("sub").and_then(|s| s.as_str()),
        prepared.sub.as_deref()
    );
    assert_eq!(
        claims.get("aud"),
        prepared
            .aud
            .as_ref()
            .map(|a| serde_json::to_value(a).unwrap_or_default())
            .as_ref()
    );
    assert_eq!(header["alg"], "ES256");
    assert_eq!(claims["iss"], "https://issuer.example");
    assert_eq!(claims["iat"], NOW);
    assert_eq!(claims["jti"], "jti");
    let exp = claims["exp"].as_i64().unwrap_or(i64::MAX);
    assert!(
        exp > NOW && exp <= NOW + 600,
        "lifetime beyond the client's limit"
    );
    assert!(claims.get("admin").is_none(), "a forbidden claim passed");
}

fn keys() -> &'static Vec<JwksKey> {
    static KEYS: OnceLock<Vec<JwksKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        // A fixed public key (RFC 7515 appendix A.3); nobody holds a matching private key here.
        let jwk = Jwk::Ec {
            crv: "P-256".into(),
            x: "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU".into(),
            y: "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0".into(),
        };
        debug_assert_eq!(jwk.key_type(), Some(KeyType::EcP256));
        vec![JwksKey {
            kid: "k1".into(),
            alg: None,
            jwk,
        }]
    })
}

/// Token verification: no input verifies against a key whose private half nobody has.
pub fn verify_token(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let expect = Expect {
        leeway: 60,
        ..Expect::default()
    };
    assert!(
        verify(token, keys(), &expect, NOW).is_err(),
        "a forged token verified"
    );
}

/// JWKS parsing: never panics, and returns only keys whose JWK parses back.
pub fn jwks(data: &[u8]) {
    if let Ok(keys) = parse_jwks(data) {
        for key in keys {
            let _ = key.jwk.thumbprint();
            let _ = key
                .jwk
                .verify(keyturn_backend::Algorithm::ES256, b"x", &[0u8; 64]);
        }
    }
}
