//! In-process keys, for backends that generate and hold keys themselves (file, memory).
//!
//! Crypto is aws-lc-rs. Private keys leave a [`SoftwareKey`] only as PKCS#8 inside a
//! [`Zeroizing`] buffer, for a backend to encrypt at rest.

use crate::{Algorithm, BackendError, KeyType, PublicKey};
use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use std::fmt;
use zeroize::Zeroizing;

/// A private key held in this process.
pub struct SoftwareKey {
    key_type: KeyType,
    inner: Inner,
}

enum Inner {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Ed(Ed25519KeyPair),
}

// Never print key material, whatever asks.
impl fmt::Debug for SoftwareKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SoftwareKey({:?}, <private>)", self.key_type)
    }
}

fn crypto_err(what: &str) -> BackendError {
    BackendError::Rejected(format!("{what} failed"))
}

fn ec_alg(key_type: KeyType) -> Option<&'static signature::EcdsaSigningAlgorithm> {
    match key_type {
        KeyType::EcP256 => Some(&signature::ECDSA_P256_SHA256_FIXED_SIGNING),
        KeyType::EcP384 => Some(&signature::ECDSA_P384_SHA384_FIXED_SIGNING),
        KeyType::EcP521 => Some(&signature::ECDSA_P521_SHA512_FIXED_SIGNING),
        _ => None,
    }
}

impl SoftwareKey {
    /// Generates a fresh key. RSA generation takes up to a second: call it off the async
    /// workers (`spawn_blocking`).
    pub fn generate(key_type: KeyType) -> Result<Self, BackendError> {
        let inner = match key_type {
            KeyType::Ed25519 => {
                Inner::Ed(Ed25519KeyPair::generate().map_err(|_| crypto_err("key generation"))?)
            }
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                let size = match key_type {
                    KeyType::Rsa2048 => KeySize::Rsa2048,
                    KeyType::Rsa3072 => KeySize::Rsa3072,
                    _ => KeySize::Rsa4096,
                };
                Inner::Rsa(RsaKeyPair::generate(size).map_err(|_| crypto_err("key generation"))?)
            }
            ec => {
                let alg = ec_alg(ec).ok_or_else(|| crypto_err("key generation"))?;
                Inner::Ec(EcdsaKeyPair::generate(alg).map_err(|_| crypto_err("key generation"))?)
            }
        };
        Ok(SoftwareKey { key_type, inner })
    }

    /// Loads a key from PKCS#8 DER, checking that it is of `key_type`.
    pub fn from_pkcs8(key_type: KeyType, der: &[u8]) -> Result<Self, BackendError> {
        let rejected = |_| BackendError::Rejected("stored key is not valid PKCS#8".into());
        let inner = match key_type {
            KeyType::Ed25519 => Inner::Ed(Ed25519KeyPair::from_pkcs8(der).map_err(rejected)?),
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                Inner::Rsa(RsaKeyPair::from_pkcs8(der).map_err(rejected)?)
            }
            ec => {
                let alg = ec_alg(ec).ok_or_else(|| crypto_err("key loading"))?;
                Inner::Ec(EcdsaKeyPair::from_pkcs8(alg, der).map_err(rejected)?)
            }
        };
        let key = SoftwareKey { key_type, inner };
        if key.public_key()?.key_type() != key_type {
            return Err(BackendError::Rejected(format!(
                "stored key is not of type {key_type:?}"
            )));
        }
        Ok(key)
    }

    /// The key as PKCS#8 v1 DER, in a buffer that is wiped when dropped.
    pub fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let der = match &self.inner {
            Inner::Ec(k) => k.to_pkcs8v1().map(|d| d.as_ref().to_vec()),
            Inner::Ed(k) => k.to_pkcs8v1().map(|d| d.as_ref().to_vec()),
            Inner::Rsa(k) => {
                AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(k).map(|d| d.as_ref().to_vec())
            }
        }
        .map_err(|_| crypto_err("key export"))?;
        Ok(Zeroizing::new(der))
    }

    /// The key type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The public key.
    pub fn public_key(&self) -> Result<PublicKey, BackendError> {
        let der: Result<PublicKeyX509Der, _> = match &self.inner {
            Inner::Ec(k) => k.public_key().as_der(),
            Inner::Ed(k) => k.public_key().as_der(),
            Inner::Rsa(k) => k.public_key().as_der(),
        };
        PublicKey::from_spki_der(der.map_err(|_| crypto_err("public key export"))?.as_ref())
    }

    /// Signs `message` with `alg`, returning the JOSE signature.
    pub fn sign(&self, alg: Algorithm, message: &[u8]) -> Result<Vec<u8>, BackendError> {
        if !self.key_type.can_sign(alg) {
            return Err(BackendError::Rejected(format!(
                "a {:?} key cannot sign {alg}",
                self.key_type
            )));
        }
        let rng = SystemRandom::new();
        match &self.inner {
            Inner::Ec(k) => Ok(k
                .sign(&rng, message)
                .map_err(|_| crypto_err("signing"))?
                .as_ref()
                .to_vec()),
            Inner::Ed(k) => Ok(k.sign(message).as_ref().to_vec()),
            Inner::Rsa(k) => {
                let padding: &'static dyn signature::RsaEncoding = match alg {
                    Algorithm::RS256 => &signature::RSA_PKCS1_SHA256,
                    Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_SHA384,
                    _ => &signature::RSA_PSS_SHA512,
                };
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(padding, &rng, message, &mut sig)
                    .map_err(|_| crypto_err("signing"))?;
                Ok(sig)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_type_round_trips_through_pkcs8_and_signs() {
        for key_type in [
            KeyType::EcP256,
            KeyType::EcP384,
            KeyType::EcP521,
            KeyType::Rsa2048,
            KeyType::Ed25519,
        ] {
            let key = SoftwareKey::generate(key_type).unwrap();
            let pkcs8 = key.to_pkcs8().unwrap();
            let again = SoftwareKey::from_pkcs8(key_type, &pkcs8).unwrap();
            assert_eq!(key.public_key().unwrap(), again.public_key().unwrap());
            let alg = key_type.default_algorithm();
            let sig = again.sign(alg, b"input").unwrap();
            assert!(key.public_key().unwrap().jwk().verify(alg, b"input", &sig));
        }
    }

    #[test]
    fn from_pkcs8_checks_the_type() {
        let key = SoftwareKey::generate(KeyType::EcP256).unwrap();
        let pkcs8 = key.to_pkcs8().unwrap();
        assert!(SoftwareKey::from_pkcs8(KeyType::EcP384, &pkcs8).is_err());
        assert!(SoftwareKey::from_pkcs8(KeyType::Ed25519, &pkcs8).is_err());
    }

    #[test]
    fn debug_hides_the_key() {
        let key = SoftwareKey::generate(KeyType::Ed25519).unwrap();
        assert_eq!(format!("{key:?}"), "SoftwareKey(Ed25519, <private>)");
    }
}
