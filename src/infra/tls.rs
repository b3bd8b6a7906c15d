//! TLS for the API listener (rustls): server certificate, optional client certificates,
//! and the rate-limited log of failed handshakes.

use crate::config::TlsConfig;
use crate::infra::logging::Throttled;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The names a verified client certificate gives its holder (its subject has at most one
/// common name: `tls::acceptor` refuses certificates with more).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    /// The subject's common name.
    pub common_name: Option<String>,
    /// Subject alternative names: DNS names.
    pub dns: Vec<String>,
    /// Subject alternative names: URIs.
    pub uris: Vec<String>,
}

/// Builds the acceptor. With `client_ca_file`, clients may present a certificate signed by
/// that CA (its subject's one common name, or one of its alternative names, names the
/// client: [`peer_names`]); clients without one use bearer tokens.
pub fn acceptor(config: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert_file)
        .and_then(|it| it.collect())
        .map_err(|e| {
            format!(
                "cannot read certificates from {}: {e}",
                config.cert_file.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no certificate",
            config.cert_file.display()
        ));
    }
    crate::config::secret::read_secret_file(&config.key_file, config.credentials_dir.as_deref())?;
    let key = PrivateKeyDer::from_pem_file(&config.key_file).map_err(|e| {
        format!(
            "cannot read the private key in {}: {e}",
            config.key_file.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let builder = match &config.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("cannot read {}: {e}", ca.display()))?
            {
                let cert = cert.map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("client CA setup failed: {e}"))?;
            builder.with_client_cert_verifier(Arc::new(OneCommonName(verifier)))
        }
    };
    let mut server = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "certificate and key in {} do not fit: {e}",
            config.cert_file.display()
        )
    })?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// The CA's verification, and then a subject with at most one common name: with two
/// (`CN=ops, CN=someone-else`), which one names the client would depend on the reader.
#[derive(Debug)]
struct OneCommonName(Arc<dyn ClientCertVerifier>);

/// Why [`OneCommonName`] refused a certificate: the handshake error, as logged (rustls
/// shows it with `Debug`, hence the same text for both).
struct CommonNames(usize);

impl std::fmt::Display for CommonNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the subject holds {} common names; a client certificate may hold one",
            self.0
        )
    }
}

impl std::fmt::Debug for CommonNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for CommonNames {}

impl ClientCertVerifier for OneCommonName {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.0.verify_client_cert(end_entity, intermediates, now)?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(end_entity.as_ref()).map_err(|_| {
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
            })?;
        match parsed.subject().iter_common_name().count() {
            0 | 1 => Ok(verified),
            n => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(CommonNames(n)))),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The names of a verified client certificate: its subject's common name (at most one,
/// see [`OneCommonName`]) and its DNS and URI alternative names.
pub fn peer_names(conn: &rustls::ServerConnection) -> Option<CertNames> {
    use x509_parser::extensions::GeneralName;
    let cert = conn.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let mut names = CertNames {
        common_name: parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        ..CertNames::default()
    };
    if let Ok(Some(sans)) = parsed.subject_alternative_name() {
        for name in &sans.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.dns.push((*dns).to_owned()),
                GeneralName::URI(uri) => names.uris.push((*uri).to_owned()),
                _ => {}
            }
        }
    }
    Some(names)
}

/// Failed handshakes: at most one line per 10 s.
static HANDSHAKE_FAILURES: Throttled = Throttled::new(Duration::from_secs(10));

/// Logs a failed TLS handshake on `listener` from `peer` at WARN (rate-limited), with the
/// reason. A peer that closed before or during its handshake without a word (a TCP health
/// check, a port scan) is logged at DEBUG only, or such checks would fill the log.
pub fn log_handshake_failure(listener: &str, peer: &str, error: &std::io::Error) {
    if error.kind() == std::io::ErrorKind::UnexpectedEof {
        tracing::debug!(listener, peer, error = %error, "TLS handshake cut short");
        return;
    }
    if let Some(suppressed) = HANDSHAKE_FAILURES.admit(Instant::now()) {
        tracing::warn!(
            listener,
            peer,
            reason = %error,
            suppressed,
            "TLS handshake failed"
        );
    }
}
