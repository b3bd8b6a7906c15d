//! A real moto server (the AWS API on loopback: KMS, DynamoDB, ...) for tests.
//!
//! ```text
//! let Some(moto) = keyturn_backend::testserver::moto::start() else { return };
//! // point the AWS SDK at moto.address with static dummy credentials
//! ```
//!
//! One server serves every AWS service and every region; its state lives in memory and
//! dies with it. Several clients (several daemons) may share one server.

use super::{find_binary, free_port, ServerProcess};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long moto may take to start answering; it usually needs about a second.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Dummy credentials moto accepts; they reach nothing outside the test server.
pub const ACCESS_KEY_ID: &str = "keyturn-test";
/// See [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str = "keyturn-test-secret";
/// The region tests use.
pub const REGION: &str = "us-east-1";

/// Starts `moto_server` on a free loopback port and waits until it answers HTTP.
///
/// `None` when the binary is missing outside CI (after a loud notice, see
/// [`find_binary`]); panics under CI or when the server does not come up.
pub fn start() -> Option<ServerProcess> {
    start_with_env(&[])
}

/// [`start`] with extra environment variables for moto, e.g.
/// `INITIAL_NO_AUTH_ACTION_COUNT=0` to make it check credentials and IAM policies.
pub fn start_with_env(env: &[(&str, &str)]) -> Option<ServerProcess> {
    let bin = find_binary("KEYTURN_MOTO_SERVER", "moto_server")?;
    let port = free_port();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let mut server = ServerProcess {
        child,
        address: format!("http://127.0.0.1:{port}"),
        port,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if answers_http(port) {
            return Some(server);
        }
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("moto_server exited at start ({status}); is port {port} taken?");
        }
        if Instant::now() > deadline {
            panic!("moto_server did not answer on port {port} within {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True once an HTTP request to the port gets a status line back (moto binds the port
/// before it is ready to serve, so a TCP connect alone is not enough).
fn answers_http(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let timeout = Some(Duration::from_secs(2));
    if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
        return false;
    }
    let request = "GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}
