use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A JWS signature algorithm (RFC 7518, RFC 8037).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// ECDSA P-521 with SHA-512.
    ES512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// EdDSA over Ed25519.
    EdDSA,
}

impl Algorithm {
    /// Every algorithm keyturn signs with.
    pub const ALL: [Algorithm; 10] = [
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::ES512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::EdDSA,
    ];

    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::ES512 => "ES512",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// True for the RSA algorithms (RS* and PS*).
    pub fn is_rsa(self) -> bool {
        matches!(
            self,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        )
    }

    /// The key type this algorithm needs; RSA algorithms take the modulus size in bits.
    pub fn key_type(self, rsa_bits: u32) -> Option<KeyType> {
        Some(match self {
            Algorithm::ES256 => KeyType::EcP256,
            Algorithm::ES384 => KeyType::EcP384,
            Algorithm::ES512 => KeyType::EcP521,
            Algorithm::EdDSA => KeyType::Ed25519,
            _ => match rsa_bits {
                2048 => KeyType::Rsa2048,
                3072 => KeyType::Rsa3072,
                4096 => KeyType::Rsa4096,
                _ => return None,
            },
        })
    }

    /// The length in bytes of a JOSE signature, where it is fixed (ECDSA, EdDSA).
    pub fn fixed_signature_len(self) -> Option<usize> {
        match self {
            Algorithm::ES256 => Some(64),
            Algorithm::ES384 => Some(96),
            Algorithm::ES512 => Some(132),
            Algorithm::EdDSA => Some(64),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown algorithm {s:?}; expected one of ES256, ES384, ES512, RS256, RS384, \
                     RS512, PS256, PS384, PS512, EdDSA"
                )
            })
    }
}

/// The kind of key a backend creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    /// NIST P-256.
    EcP256,
    /// NIST P-384.
    EcP384,
    /// NIST P-521.
    EcP521,
    /// RSA with a 2048-bit modulus.
    Rsa2048,
    /// RSA with a 3072-bit modulus.
    Rsa3072,
    /// RSA with a 4096-bit modulus.
    Rsa4096,
    /// Ed25519.
    Ed25519,
}

impl KeyType {
    /// Whether a key of this type can sign with `alg`.
    pub fn can_sign(self, alg: Algorithm) -> bool {
        match self {
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => alg.is_rsa(),
            other => alg.key_type(0) == Some(other),
        }
    }

    /// One algorithm this key type signs with, for tests.
    pub fn default_algorithm(self) -> Algorithm {
        match self {
            KeyType::EcP256 => Algorithm::ES256,
            KeyType::EcP384 => Algorithm::ES384,
            KeyType::EcP521 => Algorithm::ES512,
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => Algorithm::RS256,
            KeyType::Ed25519 => Algorithm::EdDSA,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for alg in Algorithm::ALL {
            assert_eq!(alg.as_str().parse::<Algorithm>(), Ok(alg));
        }
        assert!("none".parse::<Algorithm>().is_err());
        assert!("HS256".parse::<Algorithm>().is_err());
    }

    #[test]
    fn key_types_match_algorithms() {
        assert_eq!(Algorithm::PS384.key_type(3072), Some(KeyType::Rsa3072));
        assert_eq!(Algorithm::RS256.key_type(1024), None);
        assert!(KeyType::Rsa2048.can_sign(Algorithm::PS512));
        assert!(!KeyType::EcP256.can_sign(Algorithm::ES384));
        assert!(KeyType::Ed25519.can_sign(Algorithm::EdDSA));
    }
}
