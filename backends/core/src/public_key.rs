use crate::{Algorithm, BackendError, KeyType};
use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use pkcs1::der::Decode;
use serde::{Deserialize, Serialize};
use spki::ObjectIdentifier;

const OID_EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// The public members of a JWK (RFC 7517/7518/8037), and nothing else.
///
/// There is deliberately no field for private members: a `Jwk` cannot carry `d`, `p` or
/// `q`, and unknown members are rejected when parsing a key set we serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kty")]
pub enum Jwk {
    /// An elliptic-curve key.
    #[serde(rename = "EC")]
    Ec {
        /// "P-256", "P-384" or "P-521".
        crv: String,
        /// The x coordinate, base64url.
        x: String,
        /// The y coordinate, base64url.
        y: String,
    },
    /// An RSA key.
    #[serde(rename = "RSA")]
    Rsa {
        /// The modulus, base64url, no leading zeros.
        n: String,
        /// The public exponent, base64url.
        e: String,
    },
    /// An octet key pair (Ed25519).
    #[serde(rename = "OKP")]
    Okp {
        /// "Ed25519".
        crv: String,
        /// The public key, base64url.
        x: String,
    },
}

impl Jwk {
    /// The RFC 7638 JWK thumbprint (SHA-256, base64url): the key's `kid` everywhere.
    pub fn thumbprint(&self) -> String {
        // RFC 7638 section 3.2: required members only, in lexicographic order, no spaces.
        // Every value here is base64url or a fixed curve name, so no JSON escaping applies.
        let canonical = match self {
            Jwk::Ec { crv, x, y } => {
                format!(r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#)
            }
            Jwk::Rsa { n, e } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
            Jwk::Okp { crv, x } => format!(r#"{{"crv":"{crv}","kty":"OKP","x":"{x}"}}"#),
        };
        B64.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    }

    /// The key type this JWK describes, if keyturn knows it (RSA is sized by `n`).
    pub fn key_type(&self) -> Option<KeyType> {
        match self {
            Jwk::Ec { crv, .. } => match crv.as_str() {
                "P-256" => Some(KeyType::EcP256),
                "P-384" => Some(KeyType::EcP384),
                "P-521" => Some(KeyType::EcP521),
                _ => None,
            },
            Jwk::Okp { crv, .. } if crv == "Ed25519" => Some(KeyType::Ed25519),
            Jwk::Okp { .. } => None,
            Jwk::Rsa { n, .. } => match B64.decode(n).ok()?.len() * 8 {
                2048 => Some(KeyType::Rsa2048),
                3072 => Some(KeyType::Rsa3072),
                4096 => Some(KeyType::Rsa4096),
                _ => None,
            },
        }
    }

    /// Verifies a JOSE signature made with `alg` over `message` with this key.
    ///
    /// Returns false (never panics) on any mismatch: wrong key type for `alg`, malformed
    /// members, a DER-encoded ECDSA signature, or a bad signature.
    pub fn verify(&self, alg: Algorithm, message: &[u8], sig: &[u8]) -> bool {
        let Some(key_type) = self.key_type() else {
            return false;
        };
        if !key_type.can_sign(alg) {
            return false;
        }
        if alg
            .fixed_signature_len()
            .is_some_and(|len| len != sig.len())
        {
            return false;
        }
        match self {
            Jwk::Ec { x, y, .. } => {
                let (Ok(x), Ok(y)) = (B64.decode(x), B64.decode(y)) else {
                    return false;
                };
                let mut point = Vec::with_capacity(1 + x.len() + y.len());
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                let params: &'static dyn signature::VerificationAlgorithm = match alg {
                    Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
                    Algorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
                    _ => &signature::ECDSA_P521_SHA512_FIXED,
                };
                UnparsedPublicKey::new(params, &point)
                    .verify(message, sig)
                    .is_ok()
            }
            Jwk::Okp { x, .. } => B64.decode(x).is_ok_and(|x| {
                UnparsedPublicKey::new(&signature::ED25519, &x)
                    .verify(message, sig)
                    .is_ok()
            }),
            Jwk::Rsa { n, e } => {
                let (Ok(n), Ok(e)) = (B64.decode(n), B64.decode(e)) else {
                    return false;
                };
                let params: &'static signature::RsaParameters = match alg {
                    Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    _ => &signature::RSA_PSS_2048_8192_SHA512,
                };
                RsaPublicKeyComponents { n: &n, e: &e }
                    .verify(params, message, sig)
                    .is_ok()
            }
        }
    }
}

/// A public key as a backend reports it: the X.509 SubjectPublicKeyInfo DER, and the JWK
/// and key type parsed from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    spki_der: Vec<u8>,
    jwk: Jwk,
    key_type: KeyType,
}

impl PublicKey {
    /// Parses an X.509 SubjectPublicKeyInfo (DER), the form every backend can produce.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, BackendError> {
        let bad = |why: &str| BackendError::Rejected(format!("malformed public key: {why}"));
        let info = spki::SubjectPublicKeyInfoRef::from_der(der).map_err(|_| bad("not SPKI DER"))?;
        let bits = info
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| bad("unaligned bit string"))?;
        let oid = info.algorithm.oid;
        let (jwk, key_type) = if oid == OID_EC {
            let curve = info
                .algorithm
                .parameters_oid()
                .map_err(|_| bad("EC key without a named curve"))?;
            let (crv, key_type, len) = match curve {
                c if c == OID_P256 => ("P-256", KeyType::EcP256, 32),
                c if c == OID_P384 => ("P-384", KeyType::EcP384, 48),
                c if c == OID_P521 => ("P-521", KeyType::EcP521, 66),
                _ => return Err(bad("unsupported curve")),
            };
            if bits.len() != 1 + 2 * len || bits[0] != 0x04 {
                return Err(bad("EC point is not uncompressed"));
            }
            let jwk = Jwk::Ec {
                crv: crv.to_owned(),
                x: B64.encode(&bits[1..=len]),
                y: B64.encode(&bits[1 + len..]),
            };
            (jwk, key_type)
        } else if oid == OID_RSA {
            let rsa = pkcs1::RsaPublicKey::from_der(bits).map_err(|_| bad("bad RSA key"))?;
            let n = strip_zeros(rsa.modulus.as_bytes());
            let e = strip_zeros(rsa.public_exponent.as_bytes());
            let key_type = match n.len() * 8 {
                2048 => KeyType::Rsa2048,
                3072 => KeyType::Rsa3072,
                4096 => KeyType::Rsa4096,
                _ => return Err(bad("RSA modulus is not 2048, 3072 or 4096 bits")),
            };
            let jwk = Jwk::Rsa {
                n: B64.encode(n),
                e: B64.encode(e),
            };
            (jwk, key_type)
        } else if oid == OID_ED25519 {
            if bits.len() != 32 {
                return Err(bad("Ed25519 key is not 32 bytes"));
            }
            let jwk = Jwk::Okp {
                crv: "Ed25519".to_owned(),
                x: B64.encode(bits),
            };
            (jwk, KeyType::Ed25519)
        } else {
            return Err(bad("unsupported key algorithm"));
        };
        Ok(PublicKey {
            spki_der: der.to_vec(),
            jwk,
            key_type,
        })
    }

    /// The X.509 SubjectPublicKeyInfo, DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The public JWK members.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// The key type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The RFC 7638 thumbprint, used as `kid`.
    pub fn kid(&self) -> String {
        self.jwk.thumbprint()
    }
}

fn strip_zeros(mut bytes: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = bytes {
        bytes = rest;
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7638 section 3.1: the example RSA key and its thumbprint.
    #[test]
    fn rfc7638_example_thumbprint() {
        let jwk = Jwk::Rsa {
            n: "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".to_owned(),
            e: "AQAB".to_owned(),
        };
        assert_eq!(
            jwk.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn rejects_garbage_spki() {
        assert!(PublicKey::from_spki_der(b"not der").is_err());
        assert!(PublicKey::from_spki_der(&[]).is_err());
    }

    #[test]
    fn verify_refuses_wrong_key_type_and_der_signatures() {
        let key = crate::software::SoftwareKey::generate(KeyType::EcP256).unwrap();
        let public = key.public_key().unwrap();
        let sig = key.sign(Algorithm::ES256, b"msg").unwrap();
        assert!(public.jwk().verify(Algorithm::ES256, b"msg", &sig));
        assert!(!public.jwk().verify(Algorithm::ES384, b"msg", &sig));
        assert!(!public.jwk().verify(Algorithm::ES256, b"other", &sig));
        // A DER-encoded signature is not the JOSE form and must be refused.
        let mut der = vec![0x30, 0x44, 0x02, 0x20];
        der.extend_from_slice(&sig[..32]);
        der.extend_from_slice(&[0x02, 0x20]);
        der.extend_from_slice(&sig[32..]);
        assert!(!public.jwk().verify(Algorithm::ES256, b"msg", &der));
        assert!(!public.jwk().verify(Algorithm::ES256, b"msg", &[0u8; 64]));
    }
}
