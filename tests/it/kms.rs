//! The daemon on the kms backend against a real moto server (KMS and DynamoDB) started by
//! each test: every algorithm moto signs correctly verified by an independent library, two
//! replicas sharing one key set, and an outage with recovery. Key sets run on a shortened
//! clock; every wait polls an observable condition with a bound.

use crate::api::sign_and_verify;
use crate::harness::*;
use crate::vault::{
    assert_published_once, audit_log, fast_keyset, outage_and_recovery, start_replicas,
    watch_rotations,
};
use keyturn_backend::testserver::moto;
use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// RS*, ES*: what moto signs as KMS does. PS256/384/512 are left out on purpose: moto
/// (5.2.5, `moto/kms/utils.py`) signs RSASSA-PSS with `salt_length=PSS.MAX_LENGTH` where
/// KMS and RFC 7518 use the hash length, so every strict verifier (jsonwebtoken, ours)
/// refuses the signature and the kms backend's verify-after-sign turns it into an error.
/// backends/kms/tests/moto.rs `moto_gaps_are_caught_by_verify_after_sign` is the canary
/// that fails once moto signs PSS like KMS; add PS* here then. (EdDSA: not a kms algorithm.)
const ALGS: [&str; 6] = ["ES256", "ES384", "ES512", "RS256", "RS384", "RS512"];

/// The daemon's AWS credentials: static dummies through the standard chain.
const AWS_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY_ID),
    ("AWS_SECRET_ACCESS_KEY", moto::SECRET_ACCESS_KEY),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// The `backend = { ... }` line for KMS and DynamoDB at `endpoint`.
fn kms_backend(endpoint: &str) -> String {
    format!(
        "backend = {{ type = \"kms\", region = \"{}\", endpoint = \"{endpoint}\", create_state_table = true }}\n",
        moto::REGION
    )
}

#[tokio::test]
async fn kms_every_algorithm_signs_tokens_that_an_independent_library_verifies() {
    let Some(moto) = moto::start() else { return };
    let dir = private_dir();
    let mut config = server_toml(dir.path());
    for alg in ALGS {
        config += &keyset_toml(&alg.to_lowercase(), alg, &kms_backend(&moto.address));
    }
    let names: Vec<String> = ALGS.iter().map(|a| a.to_lowercase()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (client, token) = token_client(
        "issuer",
        &refs,
        "audiences = [\"orders\"]\nsubject_pattern = \"*\"",
    );
    config += &client;
    let d = Daemon::start_with_env(dir.path(), &config, &AWS_ENV);
    for alg in ALGS {
        let ks = alg.to_lowercase();
        sign_and_verify(&d, &ks, alg, &token).await;
    }
}

/// Two real daemons on one moto share one key set rotating every 5 s: one rotation per due
/// time (each kid `published` once across both audit logs), the same JWKS within the poll
/// interval, and each replica's tokens verify against the other's JWKS.
#[tokio::test]
async fn kms_two_replicas_share_one_key_set_across_rotations() {
    let Some(moto) = moto::start() else { return };
    let root = private_dir();
    let backend = kms_backend(&moto.address);
    let (client, token) = token_client(
        "issuer",
        &["shared"],
        "audiences = [\"orders\"]\nsubject_pattern = \"*\"\nadmin = true",
    );
    let replicas = start_replicas(
        root.path(),
        2,
        |dir| {
            format!(
                "{}{}{client}",
                server_toml(dir),
                fast_keyset("shared", "ES256", "5s", &backend)
            )
        },
        &AWS_ENV,
    );
    let refs: Vec<&Daemon> = replicas.iter().collect();
    let signers =
        watch_rotations(&refs, "shared", "ES256", &token, 2, Duration::from_secs(5)).await;
    let logs: Vec<PathBuf> = replicas.iter().map(audit_log).collect();
    let publishers = assert_published_once(&refs, &logs, "shared", &signers).await;
    eprintln!("kid -> publishing replica: {publishers:?}");
    assert!(publishers.len() >= 2 + 2, "{publishers:?}");
}

/// A TCP relay in front of moto that the test can cut and restore on the same port.
///
/// Why not kill and restart moto: moto keeps everything in memory, so a restarted moto has
/// neither the keys nor the state table, and "recovery" could only be a fresh key history.
/// Cutting the relay is what the daemon sees when its KMS endpoint dies (connections reset,
/// new ones refused at once), while moto keeps the keys, as real KMS does through an
/// outage. (SIGSTOP on moto would keep state too, but then every call hangs until the SDK's
/// 30 s operation timeout, which would make this test slow without testing more.)
struct Relay {
    port: u16,
    target: u16,
    /// Set while cut; the accept loop and every relayed connection end when they see it.
    cut: Arc<AtomicBool>,
    /// Both ends of every relayed connection, to shut them down on a cut.
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut relay = Relay {
            port: listener.local_addr().unwrap().port(),
            target,
            cut: Arc::new(AtomicBool::new(false)),
            conns: Arc::default(),
        };
        relay.serve(listener);
        relay
    }

    fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn serve(&mut self, listener: TcpListener) {
        let cut = Arc::new(AtomicBool::new(false));
        self.cut = cut.clone();
        let (conns, target) = (self.conns.clone(), self.target);
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            // Polls for connections so that a cut closes the listener promptly; dropping it
            // makes new connections fail with "connection refused".
            while !cut.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        let mut all = conns.lock().unwrap();
                        all.push(client.try_clone().unwrap());
                        all.push(server.try_clone().unwrap());
                        drop(all);
                        pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                        pipe(server, client);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
    }

    /// The outage: no more connections, the open ones reset.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// The end of the outage: listening again on the same port.
    fn restore(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "cannot re-bind: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        self.serve(listener);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copies `from` to `to` until either side closes.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// KMS (and DynamoDB) become unreachable: the JWKS is still served from memory (200, the
/// same bytes), signing answers 503 `backend_unavailable` with Retry-After, /readyz turns
/// 503, and a scheduled activation passes meanwhile. Once the endpoint is back, the daemon
/// recovers by itself: /readyz 200, signing 200, the next key published, each kid published
/// once. The outage is a cut [`Relay`] in front of moto (see there for why moto itself is
/// not restarted).
#[tokio::test]
async fn kms_outage_serves_jwks_from_memory_and_recovers() {
    let Some(moto) = moto::start() else { return };
    let relay = RefCell::new(Relay::start(moto.port));
    let dir = private_dir();
    let (client, token) = token_client(
        "issuer",
        &["default"],
        "audiences = [\"orders\"]\nsubject_pattern = \"*\"\nadmin = true",
    );
    let config = format!(
        "{}{}{client}",
        server_toml(dir.path()),
        fast_keyset(
            "default",
            "ES256",
            "5s",
            &kms_backend(&relay.borrow().address())
        )
    );
    let d = Daemon::start_with_env(dir.path(), &config, &AWS_ENV);
    outage_and_recovery(
        &d,
        &token,
        || relay.borrow().cut(),
        || relay.borrow_mut().restore(),
    )
    .await;
    drop(moto);
}
