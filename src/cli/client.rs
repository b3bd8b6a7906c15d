//! A small HTTP client for the CLI: the daemon's API over TCP or its Unix socket, and JWKS
//! and status list URLs over http or https.

use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Where the daemon's API is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// `http://host:port` or `https://host:port`.
    Url(String),
    /// A Unix socket path.
    Socket(PathBuf),
}

/// A response: status and body.
#[derive(Debug)]
pub struct Response {
    /// Status.
    pub status: StatusCode,
    /// Body.
    pub body: Bytes,
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `req` and reads the response, whose body may hold at most `max_body` bytes: a
/// longer one is refused as it arrives, never buffered whole.
async fn exchange<IO>(
    io: IO,
    req: Request<Full<Bytes>>,
    max_body: usize,
) -> Result<Response, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                format!("the response is larger than {}: refused", size(max_body))
            } else {
                format!("reading the response failed: {e}")
            }
        })?
        .to_bytes();
    Ok(Response { status, body })
}

fn size(bytes: usize) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    match config {
        Ok(c) => tokio_rustls::TlsConnector::from(Arc::new(c)),
        Err(_) => tokio_rustls::TlsConnector::from(Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )),
    }
}

/// Sends one request to the daemon and reads the whole response.
pub async fn request(
    endpoint: &Endpoint,
    method: Method,
    path: &str,
    token: Option<&str>,
    json: Option<Vec<u8>>,
) -> Result<Response, String> {
    send(endpoint, method, path, token, None, json, usize::MAX).await
}

async fn send(
    endpoint: &Endpoint,
    method: Method,
    path: &str,
    token: Option<&str>,
    accept: Option<&str>,
    json: Option<Vec<u8>>,
    max_body: usize,
) -> Result<Response, String> {
    let fut = async {
        let (authority, base_path, tls, socket) = match endpoint {
            Endpoint::Socket(p) => (
                "localhost".to_owned(),
                String::new(),
                false,
                Some(p.clone()),
            ),
            Endpoint::Url(url) => {
                let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
                let tls = match uri.scheme_str() {
                    Some("http") => false,
                    Some("https") => true,
                    _ => return Err(format!("{url:?}: use http:// or https://")),
                };
                let authority = uri
                    .authority()
                    .ok_or_else(|| format!("{url:?} has no host"))?
                    .to_string();
                (
                    authority,
                    uri.path().trim_end_matches('/').to_owned(),
                    tls,
                    None,
                )
            }
        };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{base_path}{path}"))
            .header(header::HOST, &authority)
            .header(
                header::USER_AGENT,
                concat!("keyturn/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(media_type) = accept {
            req = req.header(header::ACCEPT, media_type);
        }
        let body = match json {
            Some(json) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(json)
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        if let Some(path) = socket {
            let io = tokio::net::UnixStream::connect(&path)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
            return exchange(io, req, max_body).await;
        }
        let addr = if authority.contains(':') {
            authority.clone()
        } else {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        };
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        if tls {
            let host = authority
                .rsplit_once(':')
                .map_or(authority.as_str(), |(h, _)| h)
                .to_owned();
            let name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|e| format!("bad host name: {e}"))?;
            let stream = tls_connector()
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS to {addr} failed: {e}"))?;
            exchange(stream, req, max_body).await
        } else {
            exchange(tcp, req, max_body).await
        }
    };
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// Fetches a URL with GET (asking for the media type `accept`, if given), reading at most
/// `max_body` bytes of the response body.
pub async fn get_url(url: &str, accept: Option<&str>, max_body: usize) -> Result<Response, String> {
    let not_web = || {
        format!("{url:?} is not an http:// or https:// URL (e.g. http://127.0.0.1:8390/.well-known/jwks.json)")
    };
    let uri: http::Uri = url.parse().map_err(|_| not_web())?;
    let (Some(scheme @ ("http" | "https")), Some(authority)) = (uri.scheme_str(), uri.authority())
    else {
        return Err(not_web());
    };
    let origin = format!("{scheme}://{authority}");
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    send(
        &Endpoint::Url(origin),
        Method::GET,
        path,
        None,
        accept,
        None,
        max_body,
    )
    .await
}
