//! The transit engine's encodings: key types, sign parameters, signatures, public keys.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use keyturn_backend::{Algorithm, BackendError, KeyType, PublicKey};
use rustify_derive::Endpoint;
use vaultrs::api::transit::responses::SignDataResponse;
use vaultrs::api::transit::KeyType as TransitType;

/// The only transit key version keyturn uses: keys are never rotated inside transit.
pub(crate) const KEY_VERSION: u64 = 1;

/// The transit type for a keyturn key type.
pub(crate) fn transit_type(key_type: KeyType) -> TransitType {
    match key_type {
        KeyType::EcP256 => TransitType::EcdsaP256,
        KeyType::EcP384 => TransitType::EcdsaP384,
        KeyType::EcP521 => TransitType::EcdsaP521,
        KeyType::Rsa2048 => TransitType::Rsa2048,
        KeyType::Rsa3072 => TransitType::Rsa3072,
        KeyType::Rsa4096 => TransitType::Rsa4096,
        KeyType::Ed25519 => TransitType::Ed25519,
    }
}

/// The keyturn key type of a transit key, if it is a signing key keyturn knows.
pub(crate) fn keyturn_type(transit: TransitType) -> Option<KeyType> {
    Some(match transit {
        TransitType::EcdsaP256 => KeyType::EcP256,
        TransitType::EcdsaP384 => KeyType::EcP384,
        TransitType::EcdsaP521 => KeyType::EcP521,
        TransitType::Rsa2048 => KeyType::Rsa2048,
        TransitType::Rsa3072 => KeyType::Rsa3072,
        TransitType::Rsa4096 => KeyType::Rsa4096,
        TransitType::Ed25519 => KeyType::Ed25519,
        _ => return None,
    })
}

/// Transit's sign endpoint with the parameter vaultrs's `SignDataRequest` lacks:
/// `salt_length`, which PS* needs set to the hash length (RFC 7518 section 3.5; transit's
/// default is the largest salt, which JOSE verifiers refuse).
#[derive(Debug, Endpoint)]
#[endpoint(
    path = "{self.mount}/sign/{self.name}",
    method = "POST",
    response = "SignDataResponse"
)]
pub(crate) struct SignRequest {
    #[endpoint(skip)]
    mount: String,
    #[endpoint(skip)]
    name: String,
    input: String,
    key_version: u64,
    hash_algorithm: Option<&'static str>,
    signature_algorithm: Option<&'static str>,
    salt_length: Option<&'static str>,
    /// `jws`: ECDSA as r||s and every signature in unpadded base64url.
    marshaling_algorithm: &'static str,
}

impl SignRequest {
    /// Signs `message` with version [`KEY_VERSION`] of `mount`/`name`, as JOSE `alg` says.
    /// Transit hashes the input itself (no prehash); Ed25519 signs the message as it is.
    pub(crate) fn new(mount: &str, name: &str, alg: Algorithm, message: &[u8]) -> Self {
        let hash = match alg {
            Algorithm::ES256 | Algorithm::RS256 | Algorithm::PS256 => Some("sha2-256"),
            Algorithm::ES384 | Algorithm::RS384 | Algorithm::PS384 => Some("sha2-384"),
            Algorithm::ES512 | Algorithm::RS512 | Algorithm::PS512 => Some("sha2-512"),
            Algorithm::EdDSA => None,
        };
        let (signature_algorithm, salt_length) = match alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => (Some("pkcs1v15"), None),
            Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => (Some("pss"), Some("hash")),
            _ => (None, None),
        };
        SignRequest {
            mount: mount.to_owned(),
            name: name.to_owned(),
            input: STANDARD.encode(message),
            key_version: KEY_VERSION,
            hash_algorithm: hash,
            signature_algorithm,
            salt_length,
            marshaling_algorithm: "jws",
        }
    }
}

/// The JOSE signature in transit's `vault:v1:<base64url>` answer.
pub(crate) fn decode_signature(alg: Algorithm, answer: &str) -> Result<Vec<u8>, BackendError> {
    let bad = |why: &str| {
        BackendError::Rejected(format!("unexpected {alg} signature from transit: {why}"))
    };
    let encoded = answer
        .strip_prefix(&format!("vault:v{KEY_VERSION}:"))
        .ok_or_else(|| bad("not made with key version 1"))?;
    let sig = URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| bad("not base64url"))?;
    match alg.fixed_signature_len() {
        Some(len) if sig.len() != len => Err(bad("wrong length (not JOSE r||s)")),
        _ => Ok(sig),
    }
}

/// SPKI DER of an Ed25519 key is this fixed header followed by the 32-byte key (RFC 8410).
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Parses transit's `public_key`: a PEM SPKI for ECDSA and RSA, raw base64 for Ed25519.
pub(crate) fn public_key(key_type: KeyType, encoded: &str) -> Result<PublicKey, BackendError> {
    let bad = || BackendError::Rejected("transit returned a malformed public key".into());
    let der = if key_type == KeyType::Ed25519 {
        let raw = STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
        [ED25519_SPKI_PREFIX.as_slice(), &raw].concat()
    } else {
        let body: String = encoded
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        STANDARD.decode(body.trim()).map_err(|_| bad())?
    };
    let public = PublicKey::from_spki_der(&der)?;
    if public.key_type() != key_type {
        return Err(bad());
    }
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_unwrapped_and_checked() {
        let sig = [7u8; 64];
        let answer = format!("vault:v1:{}", URL_SAFE_NO_PAD.encode(sig));
        assert_eq!(decode_signature(Algorithm::ES256, &answer).unwrap(), sig);
        assert!(decode_signature(Algorithm::ES384, &answer).is_err());
        assert!(decode_signature(Algorithm::ES256, &answer.replace("v1", "v2")).is_err());
        assert!(decode_signature(Algorithm::RS256, "vault:v1:***").is_err());
    }

    #[test]
    fn public_keys_from_transit_encodings() {
        // As OpenBao returns them.
        let ed = public_key(
            KeyType::Ed25519,
            "9kBZoZOrgnbsi6KlLf3BGtxHmrG1bsCYnnPqALbup5c=",
        )
        .unwrap();
        assert_eq!(ed.key_type(), KeyType::Ed25519);
        let pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEQ6w3BDLO28sYHM59XxgPuhNF7Zdi\n\
                   q5Su8wwKz6AYSec9cHpyRSzHUDdwOEDJSXeeF4kqhms4NBHbBLRuOokeqw==\n-----END PUBLIC KEY-----\n";
        assert_eq!(
            public_key(KeyType::EcP256, pem).unwrap().key_type(),
            KeyType::EcP256
        );
        assert!(public_key(KeyType::EcP384, pem).is_err());
        assert!(public_key(KeyType::Ed25519, "AAAA").is_err());
    }
}
