//! Configuration: TOML parsed into a raw form, then validated into [`Config`].
//!
//! `keyturn check-config` runs exactly [`Config::load`]. Every rule that keeps tokens
//! verifiable is checked here, with a message that names the fix. The environment is read
//! only in this module (`$STATE_DIRECTORY`, `$CREDENTIALS_DIRECTORY`).

pub mod secret;
pub mod timing;

use crate::config::timing::Timing;
use keyturn_backend::{Algorithm, KeyType};
use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration error, with the fix in the message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown keys.
    #[error("{0}")]
    Parse(String),
    /// A value is invalid or the values do not fit together.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

// ---------------------------------------------------------------------------------------
// Raw form: what the TOML says.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default, rename = "keyset")]
    keysets: Vec<RawKeySet>,
    #[serde(default, rename = "client")]
    clients: Vec<RawClient>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    jwks_listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    console_listen: Option<SocketAddr>,
    api_listen: Option<SocketAddr>,
    api_socket: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    tls: Option<RawTls>,
    audit_log: Option<PathBuf>,
    k8s_signer_socket: Option<String>,
    k8s_signer_keyset: Option<String>,
    log_format: Option<LogFormat>,
    max_connections: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    body_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    drain_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeySet {
    name: String,
    issuer: String,
    algorithm: Algorithm,
    rsa_bits: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    rotate_every: Option<Duration>,
    rotate_cron: Option<String>,
    #[serde(with = "humantime_serde")]
    max_token_ttl: Duration,
    #[serde(default = "default_jwks_max_age", with = "humantime_serde")]
    jwks_max_age: Duration,
    #[serde(default = "default_clock_skew", with = "humantime_serde")]
    clock_skew: Duration,
    #[serde(default = "default_stale_if_error", with = "humantime_serde")]
    stale_if_error: Duration,
    jwks_uri: Option<String>,
    status_list: Option<RawStatusList>,
    #[serde(default)]
    backend: BackendConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatusList {
    #[serde(default = "default_status_ttl", with = "humantime_serde")]
    ttl: Duration,
    #[serde(default, with = "humantime_serde")]
    validity: Option<Duration>,
    uri: Option<String>,
}

/// Verifiers refetch a status list every five minutes: a revoke reaches them that fast.
fn default_status_ttl() -> Duration {
    Duration::from_secs(300)
}

/// A served status list is valid for an hour (or twice its `ttl`, if longer): a verifier
/// that cannot reach keyturn keeps checking tokens that long, then refuses them.
fn default_status_validity(ttl: i64) -> i64 {
    (2 * ttl).max(3600)
}

/// Verifiers refetch within five minutes: short enough for revocations to spread, long
/// enough that a busy verifier fleet does not hammer the daemon.
fn default_jwks_max_age() -> Duration {
    Duration::from_secs(300)
}

/// One minute covers NTP-synchronized hosts with room to spare.
fn default_clock_skew() -> Duration {
    Duration::from_secs(60)
}

/// Verifiers may keep using a cached key set for a day if keyturn is unreachable.
fn default_stale_if_error() -> Duration {
    Duration::from_secs(86_400)
}

/// Each backend crate declares its own table, with its defaults; the daemon embeds it. A
/// backend left out of this build still parses (any table), and its factory arm says that
/// it is not in this build.
#[cfg(feature = "file")]
pub use keyturn_backend_file::FileConfig as FileTable;
#[cfg(not(feature = "file"))]
pub type FileTable = NotCompiled;
#[cfg(feature = "vault")]
pub use keyturn_backend_vault::VaultConfig as VaultTable;
#[cfg(not(feature = "vault"))]
pub type VaultTable = NotCompiled;
#[cfg(feature = "kms")]
pub use keyturn_backend_kms::KmsConfig as KmsTable;
#[cfg(not(feature = "kms"))]
pub type KmsTable = NotCompiled;
#[cfg(feature = "pkcs11")]
pub use keyturn_backend_pkcs11::Pkcs11Config as Pkcs11Table;
#[cfg(not(feature = "pkcs11"))]
pub type Pkcs11Table = NotCompiled;

/// The table of a backend not compiled into this build.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct NotCompiled(pub toml::Table);

/// The backend of a key set, as configured. Exactly one, by construction.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum BackendConfig {
    /// Keys in local encrypted files.
    File(FileTable),
    /// Keys in Vault/OpenBao transit, lifecycle state in KV v2.
    Vault(VaultTable),
    /// Keys in AWS KMS, lifecycle state in DynamoDB.
    Kms(KmsTable),
    /// Keys in a PKCS#11 token (an HSM); lifecycle state in a local directory.
    Pkcs11(Pkcs11Table),
    /// A backend compiled into a custom build and registered under this name when the
    /// daemon is started with it (see examples/custom_backend.rs).
    Custom {
        /// The registered name.
        name: String,
    },
}

impl BackendConfig {
    /// "file", "vault", "kms", "pkcs11" or "custom".
    pub fn kind(&self) -> &'static str {
        match self {
            BackendConfig::File(_) => "file",
            BackendConfig::Vault(_) => "vault",
            BackendConfig::Kms(_) => "kms",
            BackendConfig::Pkcs11(_) => "pkcs11",
            BackendConfig::Custom { .. } => "custom",
        }
    }

    /// Whether replicas may share the key sets on this backend (their state lives in it),
    /// so that each learns of the others' writes by polling. The file and pkcs11 backends
    /// keep their state on the host.
    pub fn shared(&self) -> bool {
        !matches!(self, BackendConfig::File(_) | BackendConfig::Pkcs11(_))
    }
}

impl BackendConfig {
    /// Checks what its backend can check without connecting.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            #[cfg(feature = "vault")]
            BackendConfig::Vault(v) => v.validate().map_err(|e| e.to_string()),
            #[cfg(feature = "kms")]
            BackendConfig::Kms(k) => k.validate().map_err(|e| e.to_string()),
            #[cfg(feature = "pkcs11")]
            BackendConfig::Pkcs11(p) => p.validate().map_err(|e| e.to_string()),
            _ => Ok(()),
        }
    }
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig::File(FileTable::default())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: String,
    token_file: Option<PathBuf>,
    token_sha256: Option<String>,
    unix_uid: Option<u32>,
    unix_gid: Option<u32>,
    tls_subject: Option<String>,
    tls_san: Option<String>,
    #[serde(default)]
    keysets: Vec<String>,
    #[serde(default)]
    audiences: Vec<String>,
    subject_pattern: Option<String>,
    #[serde(default, with = "humantime_serde")]
    max_ttl: Option<Duration>,
    #[serde(default)]
    allowed_claims: Vec<String>,
    #[serde(default)]
    forbidden_claims: Vec<String>,
    #[serde(default)]
    allowed_typ: Vec<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    revoke_tokens: bool,
}

// ---------------------------------------------------------------------------------------
// Validated form.

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable text; no timestamps under journald, which adds its own.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Per-listener limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most; further clients wait in the accept backlog.
    pub max_connections: usize,
    /// Time to send the request headers (slowloris), and to finish a TLS handshake.
    pub header_timeout: Duration,
    /// Time to send a request body.
    pub body_timeout: Duration,
    /// How long in-flight requests may run after shutdown starts.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            drain: Duration::from_secs(10),
        }
    }
}

/// Claims only keyturn sets.
pub const RESERVED_CLAIMS: [&str; 4] = ["iat", "nbf", "exp", "jti"];

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listeners and paths.
    pub server: ServerConfig,
    /// Key sets, in file order; the first is the default unless one is named `default`.
    pub keysets: Vec<KeySetConfig>,
    /// Signing-API clients.
    pub clients: Vec<ClientConfig>,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Public listener: JWKS, discovery, health, metrics.
    pub jwks_listen: SocketAddr,
    /// Where `/metrics` is served instead of the public listener (None: on it).
    pub metrics_listen: Option<SocketAddr>,
    /// The read-only console (None: off).
    pub console_listen: Option<SocketAddr>,
    /// Signing and admin API over TCP.
    pub api_listen: Option<SocketAddr>,
    /// Signing and admin API over a Unix socket.
    pub api_socket: Option<PathBuf>,
    /// State directory.
    pub data_dir: PathBuf,
    /// TLS for the API listener.
    pub tls: Option<TlsConfig>,
    /// The audit log file.
    pub audit_log: PathBuf,
    /// Kubernetes ExternalJWTSigner socket and the key set it signs with.
    pub k8s_signer: Option<(String, String)>,
    /// Log format.
    pub log_format: LogFormat,
    /// Where systemd put credentials, if anywhere.
    pub credentials_dir: Option<PathBuf>,
    /// Whether stderr goes to the journal (`$JOURNAL_STREAM`): logs then omit timestamps.
    pub under_journald: bool,
    /// Per-listener connection limit and request timeouts.
    pub limits: Limits,
}

/// TLS on the API listener.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert_file: PathBuf,
    /// Private key, PEM (0600, or a systemd credential: a relative path names one).
    pub key_file: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca_file: Option<PathBuf>,
    /// `$CREDENTIALS_DIRECTORY`, for the rule on the key file's mode.
    pub credentials_dir: Option<PathBuf>,
}

/// How often a key set rotates.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A fixed period, in seconds.
    Every(i64),
    /// A cron expression (cron crate syntax, with seconds), evaluated in UTC.
    Cron(Box<cron::Schedule>),
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Schedule::Every(a), Schedule::Every(b)) => a == b,
            (Schedule::Cron(a), Schedule::Cron(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

impl Schedule {
    /// The first rotation time strictly after `t` (unix seconds).
    pub fn next_after(&self, t: i64) -> Option<i64> {
        match self {
            Schedule::Every(p) => t.checked_add(*p),
            Schedule::Cron(s) => {
                let at = chrono::DateTime::from_timestamp(t, 0)?;
                s.after(&at).next().map(|d| d.timestamp())
            }
        }
    }
}

/// One `[[keyset]]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySetConfig {
    /// Name: `[a-z0-9][a-z0-9_-]*`, at most 63 characters.
    pub name: String,
    /// The `iss` of every token.
    pub issuer: String,
    /// The signing algorithm.
    pub algorithm: Algorithm,
    /// The key type generated for it.
    pub key_type: KeyType,
    /// Rotation schedule.
    pub schedule: Schedule,
    /// Timing limits and what follows from them.
    pub timing: Timing,
    /// `stale-if-error` served with the JWKS, seconds.
    pub stale_if_error: i64,
    /// `jwks_uri` in the discovery document.
    pub jwks_uri: String,
    /// Token status lists, if its tokens carry a `status` claim.
    pub status_list: Option<StatusListConfig>,
    /// The backend.
    pub backend: BackendConfig,
}

/// A key set's `status_list` table, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusListConfig {
    /// How long a verifier may cache a list (its `ttl` claim and `max-age`), seconds.
    pub ttl: i64,
    /// How long a served list is valid (`exp - iat`), seconds; at least twice `ttl`.
    pub validity: i64,
    /// The lists' URL without the list's number: a list's URI is this, `/`, its number.
    pub uri: String,
}

impl StatusListConfig {
    /// The URI of list `list` (the `uri` in tokens, the `sub` of the list).
    pub fn list_uri(&self, list: u32) -> String {
        format!("{}/{list}", self.uri)
    }

    /// The list a URI names, if it is one of these lists'.
    pub fn list_of(&self, uri: &str) -> Option<u32> {
        let n = uri.strip_prefix(&self.uri)?.strip_prefix('/')?;
        // Digits only, no sign or leading zero: one URI per list.
        if n.is_empty()
            || n.len() > 9
            || !n.bytes().all(|b| b.is_ascii_digit())
            || n.starts_with('0')
        {
            return None;
        }
        n.parse().ok()
    }
}

/// How a client authenticates.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientAuth {
    /// A bearer token, stored as its SHA-256.
    Token([u8; 32]),
    /// Unix peer credentials on the API socket.
    Unix {
        /// Required uid, if any.
        uid: Option<u32>,
        /// Required gid, if any.
        gid: Option<u32>,
    },
    /// A TLS client certificate whose subject's one common name is this.
    TlsSubject(String),
    /// A TLS client certificate with this subject alternative name: a URI if it holds a
    /// `:` (compared exactly), else a DNS name (compared without regard to ASCII case).
    TlsSan(String),
}

impl ClientAuth {
    /// Whether one caller could match both.
    fn overlaps(&self, other: &ClientAuth) -> bool {
        let either = |a: Option<u32>, b: Option<u32>| a.is_none() || b.is_none() || a == b;
        match (self, other) {
            (ClientAuth::Token(a), ClientAuth::Token(b)) => a == b,
            (ClientAuth::TlsSubject(a), ClientAuth::TlsSubject(b)) => a == b,
            (ClientAuth::TlsSan(a), ClientAuth::TlsSan(b)) => a.eq_ignore_ascii_case(b),
            (ClientAuth::Unix { uid: u1, gid: g1 }, ClientAuth::Unix { uid: u2, gid: g2 }) => {
                either(*u1, *u2) && either(*g1, *g2)
            }
            _ => false,
        }
    }
}

/// One `[[client]]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Name, as in audit lines.
    pub name: String,
    /// How it proves who it is.
    pub auth: ClientAuth,
    /// Key sets it may sign with and, if an admin, administer (empty: none; `[ALL]`: all).
    pub keysets: Vec<String>,
    /// Allowed `aud` values (empty: tokens without `aud` only).
    pub audiences: Vec<String>,
    /// A glob (`*` matches any run of characters) that `sub` must match; unset, the client
    /// may not set `sub`. Any pattern but [`ALL`] makes `sub` required; [`ALL`] allows any
    /// `sub` or none.
    pub subject_pattern: Option<String>,
    /// Longest TTL, seconds (never above the key set's `max_token_ttl`).
    pub max_ttl: Option<i64>,
    /// Claims beyond `sub` and `aud` it may set (empty: none; `[ALL]`: any not forbidden).
    pub allowed_claims: Vec<String>,
    /// Extra claims it may never set.
    pub forbidden_claims: Vec<String>,
    /// Allowed `typ` header values (empty: `JWT` only).
    pub allowed_typ: Vec<String>,
    /// May list, read, rotate and revoke its key sets.
    pub admin: bool,
    /// May change the status of tokens of the key sets it may sign with (admins may too).
    pub revoke_tokens: bool,
}

/// Fewest characters in a client's `token_file`: 128 random bits written as hex. A length
/// (whatever the alphabet), not a measure of randomness, so that the rule is easy to state
/// and to meet; `keyturn client-token` makes 46 characters (256 bits).
const MIN_TOKEN_CHARS: usize = 32;

/// In `keysets`, `subject_pattern` and `allowed_claims`: every value. Nothing is allowed
/// by default; this is the explicit allow-all.
pub const ALL: &str = "*";

impl ClientConfig {
    /// Whether it may use key set `name`: sign with it and, if an admin, administer it.
    pub fn may_use(&self, name: &str) -> bool {
        self.keysets.iter().any(|k| k == ALL || k == name)
    }

    /// Whether it may set any claim not forbidden (`allowed_claims = ["*"]`).
    pub fn any_claim(&self) -> bool {
        matches!(self.allowed_claims.as_slice(), [all] if all == ALL)
    }

    /// Its explicit allow-alls, as the lines of its `[[client]]` entry that set them, for
    /// `check-config` to warn about.
    pub fn allow_alls(&self) -> Vec<&'static str> {
        let mut lines = Vec::new();
        if self.subject_pattern.as_deref() == Some(ALL) {
            lines.push("subject_pattern = \"*\" (any sub)");
        }
        if self.any_claim() {
            lines.push("allowed_claims = [\"*\"] (any claim not forbidden)");
        }
        lines
    }
}

/// Rounds a duration up to whole seconds.
fn secs(d: Duration) -> i64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(s).unwrap_or(i64::MAX)
}

/// Longest duration a key set takes (rotation period, lifetimes, cache ages): ten years.
const MAX_SPAN: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Longest server timeout: an hour.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Refuses a duration above `max`, naming the key: such values are typos, and they
/// overflow dates and headers downstream.
fn at_most(ctx: &str, key: &str, value: Duration, max: Duration) -> Result<(), ConfigError> {
    if value > max {
        return Err(invalid(format!(
            "{ctx}{key} = {:?} is above the limit of {}; is it a typo?",
            humantime::format_duration(value).to_string(),
            humantime::format_duration(max)
        )));
    }
    Ok(())
}

/// An http(s) URL with a host.
fn is_web_url(url: &str) -> bool {
    url.parse::<http::Uri>()
        .is_ok_and(|u| matches!(u.scheme_str(), Some("https" | "http")) && u.host().is_some())
}

/// Formats seconds the way the config writes durations.
pub fn human(s: i64) -> String {
    humantime::format_duration(Duration::from_secs(s.max(0).unsigned_abs())).to_string()
}

/// A key set or client name: safe in paths, URLs, Vault and KMS names.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, Env::from_process())
    }

    /// The embedded default: one ES256 key set on the file backend in `./keyturn-data`,
    /// listeners (the console's too) on loopback.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        let text = r#"
            [server]
            data_dir = "keyturn-data"
            console_listen = "127.0.0.1:8392"

            [[keyset]]
            name = "default"
            issuer = "http://127.0.0.1:8390"
            algorithm = "ES256"
            rotate_every = "24h"
            max_token_ttl = "15m"
        "#;
        Self::parse(text, Env::from_process())
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str, env: Env) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        raw.validate(env)
    }

    /// The key set served at `/.well-known/jwks.json`: `default`, else the first.
    pub fn default_keyset(&self) -> Option<&KeySetConfig> {
        self.keysets
            .iter()
            .find(|k| k.name == "default")
            .or_else(|| self.keysets.first())
    }
}

/// What the loader takes from the environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `$STATE_DIRECTORY` (systemd `StateDirectory=`).
    pub state_directory: Option<PathBuf>,
    /// `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`).
    pub credentials_directory: Option<PathBuf>,
    /// `$JOURNAL_STREAM` is set.
    pub journald: bool,
}

impl Env {
    /// Reads the process environment. The only place keyturn does.
    pub fn from_process() -> Env {
        Env {
            state_directory: std::env::var_os("STATE_DIRECTORY")
                .map(PathBuf::from)
                // systemd may pass several colon-separated directories; ours is the first.
                .and_then(|p| {
                    p.to_str()
                        .and_then(|s| s.split(':').next())
                        .map(PathBuf::from)
                }),
            credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            journald: std::env::var_os("JOURNAL_STREAM").is_some(),
        }
    }
}

impl RawConfig {
    fn validate(self, env: Env) -> Result<Config, ConfigError> {
        let server = self.server.validate(&env)?;
        check_own_addresses(&server)?;
        if self.keysets.is_empty() {
            return Err(invalid("no [[keyset]]: add at least one key set"));
        }
        let mut names = HashSet::new();
        let mut keysets = Vec::new();
        for raw in self.keysets {
            if !names.insert(raw.name.clone()) {
                return Err(invalid(format!("key set {:?} is defined twice", raw.name)));
            }
            keysets.push(raw.validate()?);
        }
        // A list URI names one key set's list: a change through another would miss it.
        let mut uris = HashSet::new();
        for ks in &keysets {
            if let Some(lists) = &ks.status_list {
                if !uris.insert(lists.uri.as_str()) {
                    return Err(invalid(format!(
                        "key set {:?}: its status_list.uri {:?} is another key set's; give \
                         each key set its own",
                        ks.name, lists.uri
                    )));
                }
            }
        }
        if let Some((_, ks)) = &server.k8s_signer {
            check_k8s_keyset(ks, &keysets)?;
        }
        let mut clients = Vec::new();
        let mut client_names = HashSet::new();
        for raw in self.clients {
            if !client_names.insert(raw.name.clone()) {
                return Err(invalid(format!("client {:?} is defined twice", raw.name)));
            }
            clients.push(raw.validate(&keysets, &env)?);
        }
        check_distinct(&clients)?;
        Ok(Config {
            server,
            keysets,
            clients,
        })
    }
}

impl RawServer {
    fn validate(self, env: &Env) -> Result<ServerConfig, ConfigError> {
        let s = self;
        let data_dir = s
            .data_dir
            .or(env.state_directory.clone())
            .unwrap_or_else(|| PathBuf::from("/var/lib/keyturn"));
        if data_dir.as_os_str().is_empty() {
            return Err(invalid(
                "server.data_dir is empty: name a directory (e.g. \"/var/lib/keyturn\")",
            ));
        }
        let k8s_signer = match (s.k8s_signer_socket, s.k8s_signer_keyset) {
            (Some(sock), Some(ks)) => Some((sock, ks)),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "server.k8s_signer_socket and server.k8s_signer_keyset go together: set both or neither",
                ))
            }
        };
        Ok(ServerConfig {
            jwks_listen: s
                .jwks_listen
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8390))),
            api_listen: s
                .api_listen
                .or(Some(SocketAddr::from(([127, 0, 0, 1], 8391)))),
            api_socket: s.api_socket,
            metrics_listen: s.metrics_listen,
            console_listen: s.console_listen,
            audit_log: s.audit_log.unwrap_or_else(|| data_dir.join("audit.log")),
            data_dir,
            tls: s.tls.map(|t| TlsConfig {
                cert_file: t.cert_file,
                key_file: resolve_credential(&t.key_file, env),
                client_ca_file: t.client_ca_file,
                credentials_dir: env.credentials_directory.clone(),
            }),
            k8s_signer,
            log_format: s.log_format.unwrap_or_default(),
            credentials_dir: env.credentials_directory.clone(),
            under_journald: env.journald,
            limits: {
                let d = Limits::default();
                let limits = Limits {
                    max_connections: s.max_connections.unwrap_or(d.max_connections),
                    header_timeout: s.header_timeout.unwrap_or(d.header_timeout),
                    body_timeout: s.body_timeout.unwrap_or(d.body_timeout),
                    drain: s.drain_timeout.unwrap_or(d.drain),
                };
                if limits.max_connections == 0
                    || limits.header_timeout.is_zero()
                    || limits.body_timeout.is_zero()
                {
                    return Err(invalid(
                        "server.max_connections, header_timeout and body_timeout must be above zero",
                    ));
                }
                if limits.max_connections > 1_000_000 {
                    return Err(invalid(
                        "server.max_connections is above 1000000; each connection takes a file \
                         descriptor and memory",
                    ));
                }
                for (key, value) in [
                    ("header_timeout", limits.header_timeout),
                    ("body_timeout", limits.body_timeout),
                    ("drain_timeout", limits.drain),
                ] {
                    at_most("server.", key, value, MAX_TIMEOUT)?;
                }
                limits
            },
        })
    }
}

/// Two listeners on one address cannot both bind (port 0 asks the kernel for a fresh one).
fn check_own_addresses(server: &ServerConfig) -> Result<(), ConfigError> {
    if server.api_listen == Some(server.jwks_listen) && server.jwks_listen.port() != 0 {
        return Err(invalid(format!(
            "server.jwks_listen and server.api_listen are both {}: the public and the API \
             listener need their own addresses",
            server.jwks_listen
        )));
    }
    if let Some(console) = server.console_listen.filter(|a| a.port() != 0) {
        let others = [
            ("jwks_listen", Some(server.jwks_listen)),
            ("api_listen", server.api_listen),
            ("metrics_listen", server.metrics_listen),
        ];
        if let Some((name, _)) = others.iter().find(|(_, a)| *a == Some(console)) {
            return Err(invalid(format!(
                "server.console_listen and server.{name} are both {console}: the console \
                 needs its own address"
            )));
        }
    }
    Ok(())
}

/// The key set of the Kubernetes signer must be one kube-apiserver can use.
fn check_k8s_keyset(ks: &str, keysets: &[KeySetConfig]) -> Result<(), ConfigError> {
    let Some(keyset) = keysets.iter().find(|k| k.name == ks) else {
        return Err(invalid(format!(
            "server.k8s_signer_keyset {ks:?} is not a [[keyset]]"
        )));
    };
    if !matches!(
        keyset.algorithm,
        Algorithm::RS256 | Algorithm::ES256 | Algorithm::ES384 | Algorithm::ES512
    ) {
        return Err(invalid(format!(
            "key set {ks:?} signs {} but kube-apiserver accepts only RS256, ES256, ES384 \
                 and ES512 from an external signer; change its algorithm",
            keyset.algorithm
        )));
    }
    if keyset.timing.jwks_max_age < 1 {
        return Err(invalid(format!(
                "key set {ks:?} has jwks_max_age 0s, but kube-apiserver refreshes at least \
                 every second; set jwks_max_age to at least 1s so new keys reach it before they sign"
            )));
    }
    if keyset.timing.max_token_ttl < 600 {
        return Err(invalid(format!(
            "key set {ks:?} has max_token_ttl {}, but kube-apiserver needs an external \
                 signer to allow at least 10m; raise max_token_ttl",
            human(keyset.timing.max_token_ttl)
        )));
    }
    Ok(())
}

/// A caller is one client: with two that match it, the first would silently win.
fn check_distinct(clients: &[ClientConfig]) -> Result<(), ConfigError> {
    for (i, client) in clients.iter().enumerate() {
        let Some(other) = clients[..i].iter().find(|o| o.auth.overlaps(&client.auth)) else {
            continue;
        };
        let how = match &client.auth {
            ClientAuth::Token(_) => {
                "have the same token: give each client its own (`keyturn client-token`)"
            }
            ClientAuth::TlsSubject(_) | ClientAuth::TlsSan(_) => {
                "accept the same certificate name: give each client its own certificate"
            }
            ClientAuth::Unix { .. } => {
                "match the same Unix caller (a uid or gid left out matches any): make \
                 their unix_uid/unix_gid pairs tell every caller apart"
            }
        };
        return Err(invalid(format!(
            "clients {:?} and {:?} {how}",
            other.name, client.name
        )));
    }
    Ok(())
}

impl RawKeySet {
    fn validate(self) -> Result<KeySetConfig, ConfigError> {
        let name = self.name;
        if !valid_name(&name) {
            return Err(invalid(format!(
                "key set name {name:?} is invalid: use lowercase letters, digits, '-' and '_', \
                 starting with a letter or digit, at most 63 characters"
            )));
        }
        let ctx = format!("key set {name:?}");
        let issuer = self.issuer;
        if !is_web_url(&issuer) {
            return Err(invalid(format!(
                "{ctx}: issuer {issuer:?} must be an https:// (or http:// for local tests) URL"
            )));
        }
        for (key, uri) in [
            ("jwks_uri", self.jwks_uri.as_deref()),
            (
                "status_list.uri",
                self.status_list.as_ref().and_then(|s| s.uri.as_deref()),
            ),
        ] {
            if let Some(uri) = uri.filter(|u| !is_web_url(u)) {
                return Err(invalid(format!(
                    "{ctx}: {key} {uri:?} must be an https:// (or http:// for local tests) URL"
                )));
            }
        }
        for (key, value) in [
            ("rotate_every", self.rotate_every),
            ("max_token_ttl", Some(self.max_token_ttl)),
            ("jwks_max_age", Some(self.jwks_max_age)),
            ("clock_skew", Some(self.clock_skew)),
            ("stale_if_error", Some(self.stale_if_error)),
            ("status_list.ttl", self.status_list.as_ref().map(|s| s.ttl)),
            (
                "status_list.validity",
                self.status_list.as_ref().and_then(|s| s.validity),
            ),
        ] {
            if let Some(value) = value {
                at_most(&format!("{ctx}: "), key, value, MAX_SPAN)?;
            }
        }
        // The backends' own `supports` is checked again when they open (custom backends).
        if matches!(self.backend, BackendConfig::Kms(_)) && self.algorithm == Algorithm::EdDSA {
            return Err(invalid(format!(
                "{ctx}: the kms backend cannot sign EdDSA; use ES256, ES384, ES512, RS* or \
                 PS* with kms, or EdDSA with the file or vault backend"
            )));
        }
        let key_type = match (self.algorithm.is_rsa(), self.rsa_bits) {
            (true, bits) => self
                .algorithm
                .key_type(bits.unwrap_or(2048))
                .ok_or_else(|| invalid(format!("{ctx}: rsa_bits must be 2048, 3072 or 4096")))?,
            (false, Some(_)) => {
                return Err(invalid(format!(
                    "{ctx}: rsa_bits only applies to RS* and PS* algorithms; remove it"
                )))
            }
            (false, None) => self
                .algorithm
                .key_type(0)
                .ok_or_else(|| invalid("unreachable"))?,
        };
        let schedule = match (self.rotate_every, self.rotate_cron) {
            (Some(every), None) => Schedule::Every(secs(every)),
            (None, Some(expr)) => Schedule::Cron(Box::new(expr.parse().map_err(|e| {
                invalid(format!(
                    "{ctx}: rotate_cron {expr:?} does not parse ({e}); the format has seconds \
                     first, e.g. \"0 0 3 * * *\" for 03:00 UTC daily"
                ))
            })?)),
            (Some(_), Some(_)) => {
                return Err(invalid(format!(
                    "{ctx}: set rotate_every or rotate_cron, not both"
                )))
            }
            (None, None) => {
                return Err(invalid(format!(
                    "{ctx}: no rotation schedule; set rotate_every (e.g. \"24h\") or rotate_cron"
                )))
            }
        };
        // Replicas sharing a Vault or KMS backend learn of each other's writes by polling;
        // the poll interval is added to the publish lead and the retention.
        let shared = self.backend.shared();
        let timing = Timing::new(
            secs(self.max_token_ttl),
            secs(self.jwks_max_age),
            secs(self.clock_skew),
            shared,
        );
        timing
            .check(&schedule)
            .map_err(|e| invalid(format!("{ctx}: {e}")))?;
        self.backend
            .validate()
            .map_err(|e| invalid(format!("{ctx}: {e}")))?;
        let jwks_uri = self.jwks_uri.unwrap_or_else(|| {
            let base = issuer.trim_end_matches('/');
            format!("{base}/keysets/{name}/jwks.json")
        });
        let status_list = match self.status_list {
            None => None,
            Some(raw) => {
                let ttl = secs(raw.ttl);
                if ttl < 1 {
                    return Err(invalid(format!(
                        "{ctx}: status_list.ttl must be at least 1s"
                    )));
                }
                let validity = raw
                    .validity
                    .map_or_else(|| default_status_validity(ttl), secs);
                if validity < 2 * ttl {
                    return Err(invalid(format!(
                        "{ctx}: status_list.validity ({}) must be at least twice its ttl ({}): \
                         a verifier must be able to cache a list for its ttl before it expires",
                        human(validity),
                        human(ttl)
                    )));
                }
                let uri = raw.uri.unwrap_or_else(|| {
                    let base = issuer.trim_end_matches('/');
                    format!("{base}/keysets/{name}/statuslists")
                });
                Some(StatusListConfig {
                    ttl,
                    validity,
                    uri: uri.trim_end_matches('/').to_owned(),
                })
            }
        };
        Ok(KeySetConfig {
            name,
            issuer,
            algorithm: self.algorithm,
            key_type,
            schedule,
            timing,
            stale_if_error: secs(self.stale_if_error),
            jwks_uri,
            status_list,
            backend: self.backend,
        })
    }
}

impl RawClient {
    fn validate(self, keysets: &[KeySetConfig], env: &Env) -> Result<ClientConfig, ConfigError> {
        let name = self.name.clone();
        if !valid_name(&name) {
            return Err(invalid(format!(
                "client name {name:?} is invalid: use lowercase letters, digits, '-' and '_'"
            )));
        }
        let ctx = format!("client {name:?}");
        let auth = self.auth(&ctx, env)?;
        for ks in &self.keysets {
            if ks == ALL && self.keysets.len() > 1 {
                return Err(invalid(format!(
                    "{ctx}: keysets lists \"*\" beside other names; \"*\" is every key set, \
                     so write either [\"*\"] or the names"
                )));
            }
            if ks != ALL && !keysets.iter().any(|k| &k.name == ks) {
                return Err(invalid(format!(
                    "{ctx}: key set {ks:?} is not a [[keyset]]"
                )));
            }
        }
        let max_ttl = self.max_ttl.map(secs);
        if max_ttl == Some(0) {
            return Err(invalid(format!("{ctx}: max_ttl must be above zero")));
        }
        if self.subject_pattern.as_deref() == Some("") {
            return Err(invalid(format!(
                "{ctx}: subject_pattern is empty; remove it (the client may not set sub) or \
                 give a pattern such as \"user:*\" (\"*\" allows any)"
            )));
        }
        self.check_claim_lists(&ctx)?;
        Ok(ClientConfig {
            name,
            auth,
            keysets: self.keysets,
            audiences: self.audiences,
            subject_pattern: self.subject_pattern,
            max_ttl,
            allowed_claims: self.allowed_claims,
            forbidden_claims: self.forbidden_claims,
            allowed_typ: self.allowed_typ,
            admin: self.admin,
            revoke_tokens: self.revoke_tokens,
        })
    }
}

impl RawClient {
    /// How the client is named: exactly one of a token, a Unix peer, a certificate name.
    fn auth(&self, ctx: &str, env: &Env) -> Result<ClientAuth, ConfigError> {
        let unix = self.unix_uid.is_some() || self.unix_gid.is_some();
        let sources = [
            self.token_file.is_some(),
            self.token_sha256.is_some(),
            unix,
            self.tls_subject.is_some(),
            self.tls_san.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(invalid(format!(
                "{ctx}: set exactly one of token_file, token_sha256, unix_uid/unix_gid, \
                 tls_subject, tls_san"
            )));
        }
        Ok(if let Some(file) = &self.token_file {
            let file = resolve_credential(file, env);
            let token = crate::config::secret::read_secret_file(
                &file,
                env.credentials_directory.as_deref(),
            )
            .map_err(|e| invalid(format!("{ctx}: {e}")))?;
            let token = token.trim();
            if token.is_empty() {
                return Err(invalid(format!(
                    "{ctx}: token_file {} is empty; write the client's token into it",
                    file.display()
                )));
            }
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(invalid(format!(
                    "{ctx}: the token in {} has {} characters; a client token must have at \
                     least {MIN_TOKEN_CHARS} characters (128 bits as hex): make one with \
                     `keyturn client-token` or `openssl rand -hex 32`",
                    file.display(),
                    token.chars().count()
                )));
            }
            ClientAuth::Token(secret::hash_token(token))
        } else if let Some(hex) = &self.token_sha256 {
            ClientAuth::Token(secret::parse_sha256_hex(hex).ok_or_else(|| {
                invalid(format!(
                    "{ctx}: token_sha256 must be 64 hex digits (see `keyturn client-token`)"
                ))
            })?)
        } else if unix {
            ClientAuth::Unix {
                uid: self.unix_uid,
                gid: self.unix_gid,
            }
        } else if let Some(san) = &self.tls_san {
            if san.is_empty() || san.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(format!(
                    "{ctx}: tls_san must be a DNS name or a URI of the client's certificate, \
                     such as \"ci.example.org\" or \"spiffe://example.org/ci\""
                )));
            }
            ClientAuth::TlsSan(san.clone())
        } else {
            ClientAuth::TlsSubject(self.tls_subject.clone().unwrap_or_default())
        })
    }

    /// `allowed_claims` and `forbidden_claims` name only claims they govern.
    fn check_claim_lists(&self, ctx: &str) -> Result<(), ConfigError> {
        if self.allowed_claims.len() > 1 && self.allowed_claims.iter().any(|c| c == ALL) {
            return Err(invalid(format!(
                "{ctx}: allowed_claims lists \"*\" beside other names; \"*\" allows any \
                 claim not forbidden, so write either [\"*\"] or the names"
            )));
        }
        for (list, claims) in [
            ("allowed_claims", &self.allowed_claims),
            ("forbidden_claims", &self.forbidden_claims),
        ] {
            for claim in claims {
                if RESERVED_CLAIMS.contains(&claim.as_str()) {
                    return Err(invalid(format!(
                        "{ctx}: {list} lists {claim:?}, which keyturn always sets itself; remove it"
                    )));
                }
                // Governed by their own settings: listing one here would do nothing.
                let own = match claim.as_str() {
                    "iss" => "the key set's `issuer`",
                    "sub" => "`subject_pattern`",
                    "aud" => "`audiences`",
                    _ => continue,
                };
                return Err(invalid(format!(
                    "{ctx}: {list} lists {claim:?}, which {own} governs; remove it and use that"
                )));
            }
        }
        Ok(())
    }
}

/// A relative secret path names a systemd credential when one by that name exists.
pub fn resolve_credential(path: &Path, env: &Env) -> PathBuf {
    if path.is_relative() {
        if let Some(dir) = &env.credentials_directory {
            let candidate = dir.join(path);
            if candidate.exists() {
                return candidate;
            }
        }
    }
    path.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Env::default())
    }

    const MINIMAL: &str = r#"
        [[keyset]]
        name = "default"
        issuer = "https://auth.example.com"
        algorithm = "ES256"
        rotate_every = "24h"
        max_token_ttl = "15m"
    "#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.server.jwks_listen.to_string(), "127.0.0.1:8390");
        assert_eq!(c.server.api_listen.unwrap().to_string(), "127.0.0.1:8391");
        let ks = &c.keysets[0];
        assert_eq!(ks.timing.jwks_max_age, 300);
        assert_eq!(ks.timing.clock_skew, 60);
        assert_eq!(ks.key_type, KeyType::EcP256);
        assert_eq!(
            ks.jwks_uri,
            "https://auth.example.com/keysets/default/jwks.json"
        );
        assert_eq!(ks.backend, BackendConfig::default());
    }

    #[test]
    fn status_lists_get_their_defaults_and_their_uri_names_one_list() {
        let with = |table: &str| parse(&format!("{MINIMAL}status_list = {table}\n"));
        assert_eq!(parse(MINIMAL).unwrap().keysets[0].status_list, None);
        let lists = with("{}").unwrap().keysets[0].status_list.clone().unwrap();
        assert_eq!(
            lists,
            StatusListConfig {
                ttl: 300,
                validity: 3600,
                uri: "https://auth.example.com/keysets/default/statuslists".into(),
            }
        );
        assert_eq!(lists.list_uri(7), format!("{}/7", lists.uri));
        assert_eq!(lists.list_of(&lists.list_uri(7)), Some(7));
        for other in ["/07", "/", "/7/", "/+7", "/1x", "/99999999999", "7"] {
            assert_eq!(
                lists.list_of(&format!("{}{other}", lists.uri)),
                None,
                "{other}"
            );
        }
        let shared = format!(
            "{MINIMAL}status_list = {{ uri = \"https://s.example/l\" }}\n{}status_list = {{ uri = \"https://s.example/l/\" }}\n",
            MINIMAL.replace("\"default\"", "\"other\"")
        );
        let err = parse(&shared).unwrap_err().to_string();
        assert!(err.contains("another key set's"), "{err}");
        let long = with(r#"{ ttl = "1h", uri = "https://status.example.com/x/" }"#).unwrap();
        let long = long.keysets[0].status_list.clone().unwrap();
        assert_eq!(
            (long.validity, long.uri.as_str()),
            (7200, "https://status.example.com/x")
        );
        for (table, says) in [
            (
                r#"{ ttl = "10m", validity = "15m" }"#,
                "at least twice its ttl",
            ),
            (r#"{ ttl = "0s" }"#, "at least 1s"),
            (r#"{ uri = "ftp://x" }"#, "status_list.uri"),
            (r#"{ bits = 1 }"#, "unknown field"),
        ] {
            let err = with(table).unwrap_err().to_string();
            assert!(err.contains(says), "{table}: {err}");
        }
    }

    /// A Vault address or KMS endpoint in plaintext HTTP to a host that is not loopback is
    /// refused at load with the fix, unless the backend table opts in.
    #[test]
    fn plaintext_backends_off_loopback_are_refused_unless_opted_in() {
        let with = |backend: &str| {
            format!(
                "{}backend = {backend}\n",
                MINIMAL.replace("\n    ", "\n").trim_start()
            )
        };
        let vault =
            r#"{ type = "vault", address = "http://vault.example.com:8200", token_file = "/t" }"#;
        let kms = r#"{ type = "kms", region = "eu-west-1", endpoint = "https://kms.example.com", dynamodb_endpoint = "http://10.1.2.3:8000" }"#;
        for (backend, setting) in [(vault, "address"), (kms, "dynamodb_endpoint")] {
            let err = parse(&with(backend)).unwrap_err().to_string();
            assert!(
                err.contains(setting) && err.contains("allow_plaintext_http = true"),
                "{err}"
            );
            let opted = backend.replace(" }", ", allow_plaintext_http = true }");
            parse(&with(&opted)).unwrap();
        }
        let local = r#"{ type = "vault", address = "http://127.0.0.1:8200", token_file = "/t" }"#;
        parse(&with(local)).unwrap();
    }

    /// `[server.tls] key_file` as a relative path names a systemd credential, as every other
    /// secret path does.
    #[test]
    fn the_tls_key_file_may_be_a_systemd_credential() {
        let creds = tempfile::tempdir().unwrap();
        std::fs::write(creds.path().join("keyturn-tls-key"), "pem").unwrap();
        let text = format!(
            "[server.tls]\ncert_file = \"/etc/keyturn/tls.pem\"\nkey_file = \"keyturn-tls-key\"\n{}",
            MINIMAL.replace("\n    ", "\n")
        );
        let env = Env {
            credentials_directory: Some(creds.path().to_owned()),
            ..Env::default()
        };
        let config = Config::parse(&text, env).unwrap();
        let tls = config.server.tls.unwrap();
        assert_eq!(tls.key_file, creds.path().join("keyturn-tls-key"));
        assert_eq!(tls.credentials_dir.as_deref(), Some(creds.path()));
    }

    #[test]
    fn shipped_example_configs_are_valid() {
        for (name, text) in [
            (
                "keyturn.example.toml",
                include_str!("../../config/keyturn.example.toml"),
            ),
            (
                "keyturn.vault.example.toml",
                include_str!("../../config/keyturn.vault.example.toml"),
            ),
            (
                "keyturn.kms.example.toml",
                include_str!("../../config/keyturn.kms.example.toml"),
            ),
            (
                "keyturn.pkcs11.example.toml",
                include_str!("../../config/keyturn.pkcs11.example.toml"),
            ),
        ] {
            if let Err(e) = parse(text) {
                // Example configs name secret files that do not exist here; only that may fail.
                assert!(e.to_string().contains("cannot read"), "{name}: {e}");
            }
        }
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded_default().unwrap();
        assert_eq!(c.keysets[0].algorithm, Algorithm::ES256);
        assert!(c.server.jwks_listen.ip().is_loopback());
        assert_eq!(
            c.server.console_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 8392)))
        );
    }

    /// Values no deployment means (typos like "500000y", listeners on one address, a
    /// script as jwks_uri) are refused with the key named, not carried into headers and
    /// dates that overflow.
    #[test]
    fn absurd_values_are_refused_with_the_key_named() {
        for (from, to, needle) in [
            ("\"24h\"", "\"500000y\"", "rotate_every"),
            (
                "max_token_ttl = \"15m\"",
                "max_token_ttl = \"15m\"\nstale_if_error = \"500000y\"",
                "stale_if_error",
            ),
            (
                "max_token_ttl = \"15m\"",
                "max_token_ttl = \"15m\"\njwks_uri = \"javascript:alert(1)\"",
                "jwks_uri",
            ),
        ] {
            let err = parse(&MINIMAL.replace(from, to)).unwrap_err().to_string();
            assert!(err.contains(needle), "{to}: {err}");
        }
        for (server, needle) in [
            ("header_timeout = \"500000y\"", "header_timeout"),
            ("drain_timeout = \"2h\"", "drain_timeout"),
            ("max_connections = 99999999999999", "max_connections"),
            ("data_dir = \"\"", "data_dir"),
            (
                "jwks_listen = \"127.0.0.1:9000\"\napi_listen = \"127.0.0.1:9000\"",
                "own addresses",
            ),
            (
                "metrics_listen = \"127.0.0.1:9000\"\nconsole_listen = \"127.0.0.1:9000\"",
                "console_listen and server.metrics_listen are both 127.0.0.1:9000",
            ),
            (
                "console_listen = \"127.0.0.1:8390\"",
                "console_listen and server.jwks_listen",
            ),
        ] {
            let err = parse(&format!("[server]\n{server}\n{MINIMAL}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{server}: {err}");
        }
        // Off unless set (only the embedded default sets it).
        assert_eq!(parse(MINIMAL).unwrap().server.console_listen, None);
        // The limits themselves pass.
        assert!(parse(&format!("[server]\ndrain_timeout = \"1h\"\n{MINIMAL}")).is_ok());
        assert!(parse(&MINIMAL.replace("\"24h\"", "\"3650d\"")).is_ok());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = parse(&format!("{MINIMAL}\nrotate_evry = \"1h\"")).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let err = parse(&MINIMAL.replace(
            "max_token_ttl = \"15m\"",
            "max_token_ttl = \"15m\"\nbackend = { type = \"file\", dri = \"x\" }",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let err = parse(&MINIMAL.replace(
            "max_token_ttl = \"15m\"",
            "max_token_ttl = \"15m\"\nbackend = { type = \"floppy\" }",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
    }

    #[test]
    fn unsafe_timing_is_rejected_with_the_fix() {
        let err = parse(&MINIMAL.replace("\"24h\"", "\"2m\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rotate_every") && err.contains("at least"),
            "{err}"
        );
        let err =
            parse(&MINIMAL.replace("rotate_every = \"24h\"", "rotate_cron = \"0 * * * * *\""))
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("rotate_cron") && err.contains("apart"),
            "{err}"
        );
        let err = parse(&MINIMAL.replace("\"15m\"", "\"3000h\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("keys at once"), "{err}");
    }

    /// A pkcs11 table names its token one way, bounds its sessions, and keeps its state on
    /// the host (no replica polling added to the key set's timing).
    #[test]
    fn pkcs11_backend_tables() {
        let with = |backend: &str| {
            parse(&format!(
                "{MINIMAL}backend = {{ type = \"pkcs11\", module = \"/m.so\", pin_file = \"/p\", {backend} }}"
            ))
        };
        let ok = with("token_label = \"keyturn\"").unwrap();
        assert!(!ok.keysets[0].backend.shared());
        assert_eq!(ok.keysets[0].timing.poll_interval(), None);
        with("slot = 3").unwrap();
        with("token_label = \"HSM partition 1\", state_dir = \"/var/lib/k\"").unwrap();
        for (backend, needle) in [
            ("token_label = \"a\", slot = 1", "token_label or slot"),
            ("max_sessions = 4", "token_label or slot"),
            (
                "token_label = \"a\", max_sessions = 0",
                "max_sessions must be 1 to 1024",
            ),
            ("token_label = \"../x\"", "set state_dir"),
            ("token_label = \"\"", "1 to 32 bytes"),
            ("token_label = \"a\", pin = \"1234\"", "unknown field"),
        ] {
            let err = with(backend).unwrap_err().to_string();
            assert!(err.contains(needle), "{backend}: {err}");
        }
    }

    #[test]
    fn bad_values_are_rejected() {
        for (from, to, needle) in [
            ("\"default\"", "\"../etc\"", "name"),
            ("\"https://auth.example.com\"", "\"not a url\"", "issuer"),
            ("\"ES256\"", "\"HS256\"", "unknown variant"),
            ("rotate_every = \"24h\"", "", "no rotation schedule"),
            (
                "rotate_every = \"24h\"",
                "rotate_every = \"24h\"\nrotate_cron = \"0 0 3 * * *\"",
                "not both",
            ),
            ("\"ES256\"", "\"ES256\"\nrsa_bits = 2048", "rsa_bits"),
            ("\"ES256\"", "\"RS256\"\nrsa_bits = 1024", "rsa_bits"),
            (
                "\"ES256\"",
                "\"EdDSA\"\nbackend = { type = \"kms\" }",
                "kms backend cannot sign EdDSA",
            ),
        ] {
            let err = parse(&MINIMAL.replace(from, to)).unwrap_err().to_string();
            assert!(err.contains(needle), "{to}: {err}");
        }
        let err = parse(&format!("{MINIMAL}{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("twice"), "{err}");
        assert!(parse("").unwrap_err().to_string().contains("no [[keyset]]"));
    }

    #[test]
    fn cron_schedule_parses() {
        let c = parse(&MINIMAL.replace("rotate_every = \"24h\"", "rotate_cron = \"0 0 3 * * *\""))
            .unwrap();
        let next = c.keysets[0].schedule.next_after(0).unwrap();
        assert_eq!(next, 3 * 3600);
    }

    /// A client's token_file must hold at least 32 characters (128 bits as hex); a shorter
    /// token is refused at load, and the message does not show it.
    #[test]
    fn client_tokens_shorter_than_128_bits_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let with = |token: &str| {
            let path = dir.path().join("client.token");
            std::fs::write(&path, format!("{token}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            parse(&format!(
                "{MINIMAL}\n[[client]]\nname = \"svc\"\nkeysets = [\"default\"]\ntoken_file = \"{}\"",
                path.display()
            ))
        };
        for short in ["abc", &"f".repeat(31), &"é".repeat(20)] {
            let err = with(short).unwrap_err().to_string();
            assert!(
                err.contains("at least 32 characters") && !err.contains(short),
                "{err}"
            );
        }
        assert!(with(&"0123456789abcdef".repeat(2)).is_ok());
        assert!(with("kt_Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5d2FsZG8").is_ok());
    }

    #[test]
    fn clients_need_exactly_one_credential_and_known_keysets() {
        let client = |extra: &str| {
            parse(&format!(
                "{MINIMAL}\n[[client]]\nname = \"svc\"\nkeysets = [\"default\"]\n{extra}"
            ))
        };
        let hex = "a".repeat(64);
        assert!(client(&format!("token_sha256 = \"{hex}\"")).is_ok());
        assert!(client("unix_uid = 1000").is_ok());
        let err = client("").unwrap_err().to_string();
        assert!(err.contains("exactly one"), "{err}");
        let err = client(&format!("token_sha256 = \"{hex}\"\nunix_uid = 1")).unwrap_err();
        assert!(err.to_string().contains("exactly one"));
        let err = client("token_sha256 = \"xyz\"").unwrap_err().to_string();
        assert!(err.contains("64 hex"), "{err}");
        let err = parse(&format!(
            "{MINIMAL}\n[[client]]\nname = \"svc\"\nunix_uid = 1\nkeysets = [\"nope\"]"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a [[keyset]]"), "{err}");
        let keysets = |list: &str| {
            parse(&format!(
                "{MINIMAL}\n[[client]]\nname = \"svc\"\nunix_uid = 1\nkeysets = {list}"
            ))
        };
        let all = keysets("[\"*\"]").unwrap();
        assert!(all.clients[0].may_use("default") && all.clients[0].may_use("any"));
        let one = keysets("[\"default\"]").unwrap();
        assert!(one.clients[0].may_use("default") && !one.clients[0].may_use("any"));
        let err = keysets("[\"*\", \"default\"]").unwrap_err().to_string();
        assert!(err.contains("either [\"*\"] or the names"), "{err}");
        let err = client("unix_uid = 1\nallowed_claims = [\"exp\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("always sets"), "{err}");
        for (line, says) in [
            ("forbidden_claims = [\"jti\"]", "always sets"),
            ("forbidden_claims = [\"sub\"]", "subject_pattern"),
            ("forbidden_claims = [\"role\", \"aud\"]", "audiences"),
            ("forbidden_claims = [\"iss\"]", "issuer"),
            ("allowed_claims = [\"sub\"]", "subject_pattern"),
            (
                "allowed_claims = [\"*\", \"scope\"]",
                "either [\"*\"] or the names",
            ),
            ("subject_pattern = \"\"", "\"*\" allows any"),
        ] {
            let err = client(&format!("unix_uid = 1\n{line}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{line}: {err}");
        }
        assert!(client("tls_san = \"spiffe://example.org/ci\"").is_ok());
        for (line, says) in [
            ("tls_san = \"a b\"", "DNS name or a URI"),
            ("tls_san = \"\"", "DNS name or a URI"),
            ("tls_san = \"x\"\ntls_subject = \"x\"", "exactly one"),
        ] {
            let err = client(line).unwrap_err().to_string();
            assert!(err.contains(says), "{line}: {err}");
        }
        // One token, two clients: refused (the first would silently win).
        let two = format!(
            "{MINIMAL}\n[[client]]\nname = \"a\"\nkeysets = [\"default\"]\ntoken_sha256 = \"{hex}\"\n\
             [[client]]\nname = \"b\"\nkeysets = [\"default\"]\ntoken_sha256 = \"{hex}\"\nadmin = true"
        );
        let err = parse(&two).unwrap_err().to_string();
        assert!(err.contains("same token"), "{err}");
        // One certificate subject or one Unix caller, two clients: refused too.
        let pair = |a: &str, b: &str| {
            parse(&format!(
                "{MINIMAL}\n[[client]]\nname = \"a\"\nkeysets = [\"default\"]\n{a}\n\
                 [[client]]\nname = \"b\"\nkeysets = [\"default\"]\n{b}\nadmin = true"
            ))
        };
        for (a, b, says) in [
            (
                "tls_san = \"ci.example.org\"",
                "tls_san = \"CI.example.org\"",
                "same certificate name",
            ),
            (
                "tls_subject = \"ci\"",
                "tls_subject = \"ci\"",
                "same certificate name",
            ),
            (
                "unix_uid = 1000",
                "unix_uid = 1000\nunix_gid = 50",
                "same Unix caller",
            ),
            ("unix_gid = 50", "unix_uid = 1000", "same Unix caller"),
        ] {
            let err = pair(a, b).unwrap_err().to_string();
            assert!(err.contains(says), "{a} / {b}: {err}");
        }
        pair("unix_uid = 1000", "unix_uid = 1001").unwrap();
        pair(
            "unix_uid = 1000\nunix_gid = 50",
            "unix_uid = 1000\nunix_gid = 51",
        )
        .unwrap();
        assert!(parse(&two.replace(
            &format!("\"{hex}\"\nadmin"),
            &format!("\"{}\"\nadmin", "b".repeat(64))
        ))
        .is_ok());
    }
}
