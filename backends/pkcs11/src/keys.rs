//! Key objects in the token: what keyturn asks for when it generates them, how it reads
//! their public halves, and the mechanism each algorithm signs with.

use aws_lc_rs::digest;
use cryptoki::error::Error;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use keyturn_backend::{Algorithm, BackendError, KeyType, PublicKey};
use spki::der::asn1::{BitString, OctetString};
use spki::der::{Decode, Encode};
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};

const OID_EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// The prefix of every keyturn object's `CKA_LABEL`, so that keyturn lists and touches
/// only its own objects on a token other applications use too.
pub(crate) const LABEL_PREFIX: &str = "keyturn:";

/// The `CKA_LABEL` (and `CKA_ID`) of key `name`: the key name holds its key set's name
/// (`<keyset>-<random>`), so the label names both.
pub(crate) fn label(name: &str) -> Vec<u8> {
    format!("{LABEL_PREFIX}{name}").into_bytes()
}

/// The `CKA_LABEL` (and `CKA_ID`) of the secret key that authenticates lifecycle
/// documents; outside the `keyturn:` names of signing keys.
pub(crate) const STATE_MAC_LABEL: &str = "keyturn-state-mac";

/// The mechanisms the state MAC needs: one to generate its key, one to compute it.
pub(crate) const STATE_MAC_MECHANISMS: [MechanismType; 2] = [
    MechanismType::GENERIC_SECRET_KEY_GEN,
    MechanismType::SHA256_HMAC,
];

/// The state MAC key: found, or generated inside the token as a 256-bit generic secret,
/// a private and sensitive token object that never leaves it and can only make MACs.
/// Several objects with its label (two daemons that made it at once) are refused: each
/// daemon could pick another.
pub(crate) fn state_mac_key(session: &Session) -> Result<Result<ObjectHandle, String>, Error> {
    let label = STATE_MAC_LABEL.as_bytes().to_vec();
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Token(true),
        Attribute::Label(label.clone()),
    ];
    match session.find_objects(&template)?.as_slice() {
        [one] => return Ok(Ok(*one)),
        [] => {}
        _ => {
            return Ok(Err(format!(
                "the token holds several secret keys labelled {STATE_MAC_LABEL:?}; keep the \
                 one the lifecycle documents were made with and delete the others"
            )))
        }
    }
    let key = session.generate_key(
        &Mechanism::GenericSecretKeyGen,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(CkKeyType::GENERIC_SECRET),
            Attribute::ValueLen(32u64.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Verify(false),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Label(label.clone()),
            Attribute::Id(label),
        ],
    )?;
    Ok(Ok(key))
}

/// HMAC-SHA256 of `digest` under the state MAC key.
pub(crate) fn state_mac(
    session: &Session,
    key: ObjectHandle,
    digest: &[u8],
) -> Result<Vec<u8>, Error> {
    session.sign(&Mechanism::Sha256Hmac, key, digest)
}

/// The mechanisms `alg` needs: one to generate its keys, one to sign.
pub(crate) fn mechanisms(alg: Algorithm) -> [MechanismType; 2] {
    use Algorithm as A;
    match alg {
        A::ES256 | A::ES384 | A::ES512 => [MechanismType::ECC_KEY_PAIR_GEN, MechanismType::ECDSA],
        A::RS256 | A::RS384 | A::RS512 => [
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            MechanismType::RSA_PKCS,
        ],
        A::PS256 | A::PS384 | A::PS512 => [
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            MechanismType::RSA_PKCS_PSS,
        ],
        A::EdDSA => [
            MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
            MechanismType::EDDSA,
        ],
    }
}

fn curve(key_type: KeyType) -> Option<ObjectIdentifier> {
    match key_type {
        KeyType::EcP256 => Some(OID_P256),
        KeyType::EcP384 => Some(OID_P384),
        KeyType::EcP521 => Some(OID_P521),
        KeyType::Ed25519 => Some(OID_ED25519),
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => None,
    }
}

fn der(oid: ObjectIdentifier) -> Result<Vec<u8>, Error> {
    oid.to_der().map_err(|_| Error::InvalidValue)
}

/// Generates a key pair of `key_type` named `name` inside the token: both halves token
/// objects; the private one private, sensitive, never extractable, for signing only.
pub(crate) fn generate(session: &Session, name: &str, key_type: KeyType) -> Result<(), Error> {
    let label = label(name);
    let (mechanism, mut public) = match key_type {
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            let bits = match key_type {
                KeyType::Rsa2048 => 2048u64,
                KeyType::Rsa3072 => 3072,
                _ => 4096,
            };
            (
                Mechanism::RsaPkcsKeyPairGen,
                vec![
                    Attribute::ModulusBits(bits.into()),
                    Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                ],
            )
        }
        KeyType::Ed25519 => (
            Mechanism::EccEdwardsKeyPairGen,
            vec![Attribute::EcParams(der(OID_ED25519)?)],
        ),
        ec => {
            let oid = curve(ec).ok_or(Error::InvalidValue)?;
            (
                Mechanism::EccKeyPairGen,
                vec![Attribute::EcParams(der(oid)?)],
            )
        }
    };
    public.extend([
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Label(label.clone()),
        Attribute::Id(label.clone()),
    ]);
    let private = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Label(label.clone()),
        Attribute::Id(label),
    ];
    session.generate_key_pair(&mechanism, &public, &private)?;
    Ok(())
}

/// The handles of `class` objects labelled for `name`.
pub(crate) fn find(
    session: &Session,
    class: ObjectClass,
    name: &str,
) -> Result<Vec<ObjectHandle>, Error> {
    session.find_objects(&[
        Attribute::Class(class),
        Attribute::Token(true),
        Attribute::Label(label(name)),
    ])
}

/// The names of keyturn's private keys in the token.
pub(crate) fn names(session: &Session) -> Result<Vec<String>, Error> {
    let handles = session.find_objects(&[
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Token(true),
    ])?;
    let mut names = Vec::new();
    for handle in handles {
        for attribute in session.get_attributes(handle, &[AttributeType::Label])? {
            if let Attribute::Label(label) = attribute {
                if let Some(name) = std::str::from_utf8(&label)
                    .ok()
                    .and_then(|l| l.strip_prefix(LABEL_PREFIX))
                {
                    names.push(name.to_owned());
                }
            }
        }
    }
    Ok(names)
}

/// Reads a public key object into a [`PublicKey`] (SPKI DER built from its attributes).
pub(crate) fn read_public(
    session: &Session,
    handle: ObjectHandle,
) -> Result<Result<PublicKey, BackendError>, Error> {
    let attributes = session.get_attributes(
        handle,
        &[
            AttributeType::KeyType,
            AttributeType::EcParams,
            AttributeType::EcPoint,
            AttributeType::Modulus,
            AttributeType::PublicExponent,
        ],
    )?;
    let (mut kind, mut params, mut point, mut modulus, mut exponent) =
        (None, None, None, None, None);
    for attribute in attributes {
        match attribute {
            Attribute::KeyType(k) => kind = Some(k),
            Attribute::EcParams(p) => params = Some(p),
            Attribute::EcPoint(p) => point = Some(p),
            Attribute::Modulus(m) => modulus = Some(m),
            Attribute::PublicExponent(e) => exponent = Some(e),
            _ => {}
        }
    }
    Ok(spki(kind, params, point, modulus, exponent))
}

fn spki(
    kind: Option<CkKeyType>,
    params: Option<Vec<u8>>,
    point: Option<Vec<u8>>,
    modulus: Option<Vec<u8>>,
    exponent: Option<Vec<u8>>,
) -> Result<PublicKey, BackendError> {
    let bad = |why: &str| BackendError::Rejected(format!("the token's public key object {why}"));
    let (algorithm, key) = match kind {
        Some(k) if k == CkKeyType::RSA => {
            let (Some(n), Some(e)) = (modulus, exponent) else {
                return Err(bad("lacks its modulus or exponent"));
            };
            let key = pkcs1::RsaPublicKey {
                modulus: pkcs1::UintRef::new(&n).map_err(|_| bad("has a malformed modulus"))?,
                public_exponent: pkcs1::UintRef::new(&e)
                    .map_err(|_| bad("has a malformed exponent"))?,
            }
            .to_der()
            .map_err(|_| bad("has a malformed RSA key"))?;
            let null = spki::der::Any::from(spki::der::asn1::Null);
            (
                AlgorithmIdentifierOwned {
                    oid: OID_RSA,
                    parameters: Some(null),
                },
                key,
            )
        }
        Some(k) if k == CkKeyType::EC || k == CkKeyType::EC_EDWARDS => {
            let (Some(params), Some(point)) = (params, point) else {
                return Err(bad("lacks its curve or point"));
            };
            let oid =
                ObjectIdentifier::from_der(&params).map_err(|_| bad("names no known curve"))?;
            let point = unwrap_point(oid, point);
            let algorithm = if oid == OID_ED25519 {
                AlgorithmIdentifierOwned {
                    oid,
                    parameters: None,
                }
            } else {
                AlgorithmIdentifierOwned {
                    oid: OID_EC,
                    parameters: Some(spki::der::Any::from(oid)),
                }
            };
            (algorithm, point)
        }
        _ => return Err(bad("is not an RSA, EC or Edwards key")),
    };
    let info = SubjectPublicKeyInfoOwned {
        algorithm,
        subject_public_key: BitString::from_bytes(&key).map_err(|_| bad("is too long"))?,
    };
    let der = info.to_der().map_err(|_| bad("does not encode"))?;
    PublicKey::from_spki_der(&der)
}

/// `CKA_EC_POINT` is a DER OCTET STRING holding the point (PKCS#11 2.40); some modules
/// give the bare point, told apart by its length (an uncompressed point is 0x04, x, y).
fn unwrap_point(curve: ObjectIdentifier, value: Vec<u8>) -> Vec<u8> {
    let bare = match curve {
        c if c == OID_P256 => 65,
        c if c == OID_P384 => 97,
        c if c == OID_P521 => 133,
        _ => 32,
    };
    match OctetString::from_der(&value) {
        Ok(inner) if value.len() != bare => inner.into_bytes(),
        _ => value,
    }
}

/// The RFC 8017 DigestInfo prefix of each hash, for CKM_RSA_PKCS over a host digest.
fn digest_info(alg: &'static digest::Algorithm) -> &'static [u8] {
    if alg == &digest::SHA384 {
        &[
            0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x02, 0x05, 0x00, 0x04, 0x30,
        ]
    } else if alg == &digest::SHA512 {
        &[
            0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x03, 0x05, 0x00, 0x04, 0x40,
        ]
    } else {
        &[
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ]
    }
}

/// Signs `message` for `alg` with the private key `key`. Everything but EdDSA is hashed
/// here and the token signs the digest (SoftHSM, for one, refuses `CKM_ECDSA_SHA256`;
/// every token offers the plain mechanisms); EdDSA signs the whole message, as Ed25519
/// requires.
pub(crate) fn sign(
    session: &Session,
    key: ObjectHandle,
    alg: Algorithm,
    message: &[u8],
) -> Result<Vec<u8>, Error> {
    use Algorithm as A;
    let hash = match alg {
        A::ES256 | A::RS256 | A::PS256 => &digest::SHA256,
        A::ES384 | A::RS384 | A::PS384 => &digest::SHA384,
        A::ES512 | A::RS512 | A::PS512 => &digest::SHA512,
        A::EdDSA => {
            let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
            return session.sign(&mechanism, key, message);
        }
    };
    let digest = digest::digest(hash, message);
    match alg {
        A::RS256 | A::RS384 | A::RS512 => {
            let mut info = digest_info(hash).to_vec();
            info.extend_from_slice(digest.as_ref());
            session.sign(&Mechanism::RsaPkcs, key, &info)
        }
        A::PS256 | A::PS384 | A::PS512 => {
            let (hash_alg, mgf) = match alg {
                A::PS384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
                A::PS512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
                _ => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
            };
            let params = PkcsPssParams {
                hash_alg,
                mgf,
                // RFC 7518 section 3.5: a salt as long as the hash.
                s_len: (digest.as_ref().len() as u64).into(),
            };
            session.sign(&Mechanism::RsaPkcsPss(params), key, digest.as_ref())
        }
        _ => session.sign(&Mechanism::Ecdsa, key, digest.as_ref()),
    }
}
