//! `keyturn verify`, the real binary, against a JWKS served on loopback by the test: tokens
//! the daemon would never sign (a float `exp`, a name twice) are made here with a key the
//! test holds.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use keyturn_backend::software::SoftwareKey;
use keyturn_backend::{Algorithm, KeyType};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;

/// Answers every connection on a loopback port with `respond`, after reading the request
/// head. The thread ends with the test binary.
fn serve(respond: impl Fn(&mut TcpStream) + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while head.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            respond(&mut stream);
        }
    });
    addr
}

/// A response with `body` and its length.
fn respond_with(body: Vec<u8>) -> impl Fn(&mut TcpStream) + Send + 'static {
    move |stream| {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/jwk-set+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&body);
    }
}

/// An issuer the test plays: an ES256 key and its JWKS on loopback.
struct Issuer {
    key: SoftwareKey,
    kid: String,
    jwks: serde_json::Value,
    url: String,
}

impl Issuer {
    fn new() -> Issuer {
        let key = SoftwareKey::generate(KeyType::EcP256).unwrap();
        let public = key.public_key().unwrap();
        let kid = public.kid();
        let mut jwk = serde_json::to_value(public.jwk()).unwrap();
        jwk["kid"] = kid.clone().into();
        jwk["use"] = "sig".into();
        jwk["alg"] = "ES256".into();
        let jwks = serde_json::json!({ "keys": [jwk] });
        let addr = serve(respond_with(serde_json::to_vec(&jwks).unwrap()));
        Issuer {
            key,
            kid,
            jwks,
            url: format!("http://{addr}/jwks.json"),
        }
    }

    /// A token of `header` and `claims` exactly as written (`KID` in the header stands for
    /// the key's kid).
    fn token(&self, header: &str, claims: &str) -> String {
        let header = header.replace("KID", &self.kid);
        let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let sig = self.key.sign(Algorithm::ES256, input.as_bytes()).unwrap();
        format!("{input}.{}", B64.encode(sig))
    }

    /// A token with the usual header and `claims`.
    fn signed(&self, claims: &str) -> String {
        self.token(r#"{"alg":"ES256","typ":"JWT","kid":"KID"}"#, claims)
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims an issuer `https://iss.test` gives for `api`, with `extra` members appended.
fn claims(extra: &str) -> String {
    format!(
        r#"{{"iss":"https://iss.test","aud":"api","sub":"alice","exp":{},"iat":{}{extra}}}"#,
        now() + 600,
        now()
    )
}

/// `keyturn verify TOKEN ARGS...`: (success, stdout, stderr).
fn verify(token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .arg("verify")
        .arg(token)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `keyturn verify` with the issuer and audience of [`claims`].
fn verify_strict(token: &str, jwks: &str) -> (bool, String, String) {
    verify(
        token,
        &[
            "--jwks",
            jwks,
            "--issuer",
            "https://iss.test",
            "--audience",
            "api",
        ],
    )
}

#[test]
fn issuer_and_audience_are_required_or_waived_by_name() {
    let issuer = Issuer::new();
    let token = issuer.signed(&claims(""));
    let url = issuer.url.as_str();
    let (ok, out, err) = verify_strict(&token, url);
    assert!(ok, "{err}");
    assert!(out.contains("\"sub\": \"alice\""), "{out}");

    // Without one of them: refused before any fetch, naming both ways to say it.
    for (args, named) in [
        (
            vec!["--jwks", url, "--audience", "api"],
            ["--issuer", "--any-issuer"],
        ),
        (
            vec!["--jwks", url, "--issuer", "https://iss.test"],
            ["--audience", "--any-audience"],
        ),
    ] {
        let (ok, _, err) = verify(&token, &args);
        assert!(!ok, "accepted with {args:?}");
        for flag in named {
            assert!(err.contains(flag), "{flag} not named:\n{err}");
        }
    }
    // Both the value and the waiver: which one was meant is not guessed.
    let (ok, _, err) = verify(
        &token,
        &[
            "--jwks",
            url,
            "--issuer",
            "https://iss.test",
            "--any-issuer",
            "--audience",
            "api",
        ],
    );
    assert!(!ok && err.contains("--any-issuer"), "{err}");
    // The explicit waivers.
    let (ok, out, err) = verify(&token, &["--jwks", url, "--any-issuer", "--any-audience"]);
    assert!(ok && out.contains("alice"), "{err}");
    // A waived check is not a skipped one for the other.
    let (ok, _, err) = verify(
        &token,
        &["--jwks", url, "--any-issuer", "--audience", "other"],
    );
    assert!(!ok && err.contains("aud"), "{err}");
}

#[test]
fn plain_http_is_refused_before_connecting_unless_the_host_is_loopback() {
    let issuer = Issuer::new();
    let token = issuer.signed(&claims(""));
    // `.invalid` never resolves: had keyturn tried, the error would be a failed lookup.
    for url in [
        "http://jwks.invalid/.well-known/jwks.json",
        "http://jwks.invalid:8390/.well-known/jwks.json",
        "http://127.0.0.1.invalid/jwks.json",
        "http://localhost.invalid/jwks.json",
        "HTTP://JWKS.INVALID/jwks.json",
    ] {
        let (ok, _, err) = verify_strict(&token, url);
        assert!(!ok, "{url}");
        assert!(
            err.contains("https://") && err.contains("loopback") && !err.contains("connect"),
            "{url}: {err}"
        );
    }
    // https to the same name is allowed: it gets as far as the lookup.
    let (ok, _, err) = verify_strict(&token, "https://jwks.invalid/jwks.json");
    assert!(!ok && err.contains("connect"), "{err}");
    // Loopback over http: by address, by name.
    let port = issuer.url.rsplit_once(':').unwrap().1;
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("http://{host}:{port}");
        let (ok, out, err) = verify_strict(&token, &url);
        assert!(ok && out.contains("alice"), "{url}: {err}");
    }
}

#[test]
fn a_jwks_body_over_1_mib_is_refused() {
    let issuer = Issuer::new();
    let token = issuer.signed(&claims(""));
    // A JWKS that would verify the token, padded past 1 MiB with whitespace JSON allows.
    let mut body = serde_json::to_vec(&issuer.jwks).unwrap();
    let fits = body.len();
    body.resize((1 << 20) + 1, b' ');
    let url = format!("http://{}/jwks.json", serve(respond_with(body.clone())));
    let (ok, _, err) = verify_strict(&token, &url);
    assert!(!ok && err.contains("1 MiB"), "{err}");
    // Exactly 1 MiB is fine.
    body.truncate(1 << 20);
    assert!(body.len() > fits);
    let url = format!("http://{}/jwks.json", serve(respond_with(body)));
    let (ok, _, err) = verify_strict(&token, &url);
    assert!(ok, "{err}");
    // A chunked body that never ends is cut off at the cap, not read on.
    let endless = serve(|stream| {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        let _ = stream.write_all(head.as_bytes());
        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
        while stream.write_all(chunk.as_bytes()).is_ok() {}
    });
    let started = std::time::Instant::now();
    let (ok, _, err) = verify_strict(&token, &format!("http://{endless}/jwks.json"));
    assert!(!ok && err.contains("1 MiB"), "{err}");
    assert!(started.elapsed().as_secs() < 20, "the body was read on");
}

#[test]
fn time_claims_must_be_integers_in_range() {
    let issuer = Issuer::new();
    let ok_token = issuer.signed(&claims(""));
    assert!(verify_strict(&ok_token, &issuer.url).0);
    let iat = now();
    let exp = now() + 600;
    for (name, value) in [
        ("exp", "1e300"),
        ("exp", "1.5e10"),
        ("exp", &format!("{exp}.5")),
        ("exp", &format!("{exp}.0")),
        ("exp", "-1"),
        ("exp", "253402300800"),
        ("exp", "18446744073709551615"),
        ("exp", &format!("\"{exp}\"")),
        ("exp", "null"),
        ("nbf", "-1e300"),
        ("nbf", "1.0"),
        ("nbf", "true"),
        ("iat", "1e300"),
        ("iat", &format!("{iat}.25")),
        ("iat", "-9223372036854775808"),
    ] {
        let claims = match name {
            "exp" => format!(r#"{{"iss":"https://iss.test","aud":"api","exp":{value}}}"#),
            _ => {
                format!(r#"{{"iss":"https://iss.test","aud":"api","exp":{exp},"{name}":{value}}}"#)
            }
        };
        let (ok, _, err) = verify_strict(&issuer.signed(&claims), &issuer.url);
        assert!(!ok, "{claims} verified");
        assert!(
            err.contains(&format!("\"{name}\"")) && err.contains("integer"),
            "{claims}: {err}"
        );
    }
}

#[test]
fn a_name_twice_in_the_header_or_the_claims_is_refused() {
    let issuer = Issuer::new();
    let exp = now() + 600;
    let header = r#"{"alg":"ES256","typ":"JWT","kid":"KID"}"#;
    for (header, claims) in [
        (
            header.to_owned(),
            format!(
                r#"{{"iss":"https://iss.test","aud":"api","sub":"alice","sub":"admin","exp":{exp}}}"#
            ),
        ),
        (
            header.to_owned(),
            format!(
                r#"{{"iss":"https://iss.test","aud":"api","exp":{exp},"exp":{}}}"#,
                exp + 9999
            ),
        ),
        (
            header.to_owned(),
            format!(
                r#"{{"iss":"https://iss.test","aud":"api","exp":{exp},"cnf":{{"jkt":"a","jkt":"b"}}}}"#
            ),
        ),
        (
            // The escaped spelling of the same name.
            header.to_owned(),
            format!(
                r#"{{"iss":"https://iss.test","aud":"api","sub":"alice","s\u0075b":"admin","exp":{exp}}}"#
            ),
        ),
        (
            r#"{"alg":"ES256","typ":"JWT","kid":"KID","kid":"KID"}"#.to_owned(),
            claims(""),
        ),
        (
            r#"{"alg":"ES256","typ":"at+jwt","kid":"KID","typ":"JWT"}"#.to_owned(),
            claims(""),
        ),
    ] {
        let token = issuer.token(&header, &claims);
        let (ok, _, err) = verify_strict(&token, &issuer.url);
        assert!(!ok, "{header} {claims} verified");
        assert!(err.contains("twice"), "{header} {claims}: {err}");
    }
}
