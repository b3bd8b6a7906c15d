//! Command-line interface: `serve` runs the daemon; the client subcommands talk to a
//! running daemon over its API (TCP or Unix socket); `verify`, `audit verify`,
//! `check-config` and `client-token` work offline.

pub mod client;
pub mod verify;

use crate::cli::client::{request, Endpoint};
use crate::config::{Config, LogFormat};
use crate::core::timeline::{self, KeySetPlan};
use clap::{ArgGroup, Parser, Subcommand};
use http::Method;
use serde::Deserialize as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// `println!` that ends the command once stdout is closed (`keyturn status | head`) instead
/// of panicking: quietly, with the status a SIGPIPE would give (141), so that a pipeline
/// that lost the output (a token, a config block) does not pass for a success.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            stdout_failed(&e)
        }
    }};
}

fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141)
    }
    eprintln!("keyturn: cannot write to stdout: {e}");
    std::process::exit(1)
}

/// keyturn: signing keys for JWT issuers, rotated on schedule, served as a JWKS.
#[derive(Debug, Parser)]
#[command(name = "keyturn", version, about)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
    /// How to reach a running daemon (client subcommands).
    #[command(flatten)]
    pub conn: Connection,
}

/// How client subcommands reach the daemon.
#[derive(Debug, clap::Args)]
pub struct Connection {
    /// The daemon's API URL.
    #[arg(
        long,
        global = true,
        env = "KEYTURN_API",
        default_value = "http://127.0.0.1:8391"
    )]
    pub api: String,
    /// The daemon's API Unix socket (instead of --api).
    #[arg(long, global = true, env = "KEYTURN_SOCKET")]
    pub socket: Option<PathBuf>,
    /// A file holding the client's bearer token. Given before the subcommand: after
    /// `keyturn token ...`, --token-file names the token whose status changes.
    #[arg(long, env = "KEYTURN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (with no --config: the embedded default in ./keyturn-data).
    Serve {
        /// The config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log format (default: text; `json` for log shippers).
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Validate a config file and print the derived timing of each key set.
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// Key sets and their keys, with states and times, as a table (admin client).
    Status {
        /// One key set (default: all).
        keyset: Option<String>,
        /// The admin API's JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The coming activations and removals per key set (admin client; a dry run).
    Plan {
        /// One key set (default: all).
        keyset: Option<String>,
        /// Also draw the key timeline of each key set into FILE (a standalone SVG).
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// Rotate now: the pending key becomes active as soon as it is safe (admin client).
    Rotate {
        /// The key set.
        keyset: String,
    },
    /// Revoke a key: out of the JWKS at once, a new key active at once (admin client).
    Revoke {
        /// The key set.
        keyset: String,
        /// The key's kid. A kid is base64url and may begin with '-': it is taken as the kid,
        /// not as an option.
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
    /// Change a token's status in its key set's status list: revoke (final), suspend or
    /// reinstate (admin client, or one with revoke_tokens = true).
    Token {
        /// What to do.
        #[command(subcommand)]
        action: TokenCommand,
    },
    /// Ask the daemon to sign a token.
    Sign {
        /// The key set.
        keyset: String,
        /// The claims, a JSON object.
        #[arg(long)]
        claims: String,
        /// Lifetime, e.g. 5m.
        #[arg(long)]
        ttl: Option<String>,
        /// The typ header, e.g. at+jwt.
        #[arg(long)]
        typ: Option<String>,
    },
    /// Verify a token against a JWKS URL: its signature, its times, the issuer and
    /// audience it must have (or --any-issuer and --any-audience to accept any), and, if it
    /// has a `status` claim, its entry in the status list it names (fetched once, by the
    /// same URL rule as the JWKS, and signed by a key of the same JWKS): anything but VALID
    /// is refused.
    #[command(
        group(ArgGroup::new("iss").required(true).args(["issuer", "any_issuer"])),
        group(ArgGroup::new("aud").required(true).args(["audience", "any_audience"]))
    )]
    Verify {
        /// The compact JWS.
        token: String,
        /// Where the JWKS is: an https:// URL, or http:// to a loopback host (127.0.0.0/8,
        /// ::1, localhost). At most 1 MiB is read.
        #[arg(long)]
        jwks: String,
        /// The iss the token must have (exact match).
        #[arg(long)]
        issuer: Option<String>,
        /// Accept a token of any issuer, instead of --issuer.
        #[arg(long)]
        any_issuer: bool,
        /// An aud value the token must have (exact match).
        #[arg(long)]
        audience: Option<String>,
        /// Accept a token for any audience, instead of --audience.
        #[arg(long)]
        any_audience: bool,
        /// Required typ (default JWT).
        #[arg(long, default_value = "JWT")]
        typ: String,
        /// Tolerated clock skew (also for the status list's `exp`).
        #[arg(long, default_value = "60s")]
        leeway: humantime::Duration,
        /// Do not fetch the token's status list: a revoked or suspended token is accepted.
        #[arg(long)]
        no_status: bool,
    },
    /// Print a key set's JWKS from the daemon's public listener.
    Jwks {
        /// The key set.
        keyset: String,
        /// The JWKS listener.
        #[arg(
            long,
            env = "KEYTURN_JWKS_URL",
            default_value = "http://127.0.0.1:8390"
        )]
        jwks_url: String,
    },
    /// Audit log tools.
    Audit {
        /// What to do.
        #[command(subcommand)]
        action: AuditCommand,
    },
    /// Create a client token and print it with the `[[client]]` lines for the config.
    ClientToken {
        /// The client's name.
        name: String,
        /// Key sets it may sign with.
        #[arg(long = "keyset")]
        keysets: Vec<String>,
        /// Audiences (`aud`) it may ask for; repeat for several. Without one, the client may
        /// sign only tokens without `aud`.
        #[arg(long = "audience")]
        audiences: Vec<String>,
        /// A pattern `sub` must match (`*` matches any run of characters; "*" alone allows
        /// any sub). Without it, the client may not set `sub`.
        #[arg(long)]
        subject_pattern: Option<String>,
        /// A claim beyond `sub` and `aud` it may set; repeat for several ("*" allows any).
        /// Without one, it may set none.
        #[arg(long = "allowed-claim")]
        allowed_claims: Vec<String>,
        /// Write the token to this file (0600) instead of printing it; never overwrites.
        #[arg(long)]
        out: Option<PathBuf>,
        /// An admin client: it may also read, rotate and revoke its key sets.
        #[arg(long)]
        admin: bool,
    },
}

/// `keyturn token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Revoke a token for good: verifiers refuse it once they refetch its status list.
    Revoke(TokenTarget),
    /// Suspend a token: verifiers refuse it until it is reinstated.
    Suspend(TokenTarget),
    /// Reinstate a suspended token.
    Reinstate(TokenTarget),
}

/// The token whose status changes: the token itself, or its status list URI and index.
#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("which").required(true).args(["token", "uri"])))]
pub struct TokenTarget {
    /// The key set.
    pub keyset: String,
    /// A file holding the token (the daemon checks that it signed it and reads its index).
    #[arg(long = "token-file", value_name = "FILE", id = "token")]
    pub token: Option<PathBuf>,
    /// The status list's URI (the token's status.status_list.uri).
    #[arg(long, requires = "idx")]
    pub uri: Option<String>,
    /// The token's index in that list (status.status_list.idx).
    #[arg(long, requires = "uri")]
    pub idx: Option<u64>,
}

impl TokenCommand {
    /// The status it sets, and the key set and token it sets it for.
    fn parts(&self) -> (&'static str, &TokenTarget) {
        match self {
            TokenCommand::Revoke(t) => ("revoked", t),
            TokenCommand::Suspend(t) => ("suspended", t),
            TokenCommand::Reinstate(t) => ("valid", t),
        }
    }
}

/// `keyturn audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of an audit log, and print its head (COUNT:HASH) to anchor it.
    Verify {
        /// The audit log.
        file: PathBuf,
        /// A head the daemon logged earlier ("audit chain head" count=N hash=H): the file
        /// must still begin with those N lines, unchanged.
        #[arg(long, value_name = "COUNT:HASH")]
        head: Option<crate::infra::audit::Head>,
    },
}

/// The body of `GET url` (a JWKS or a status list): refused before any connection by the
/// URL rule ([`verify::check_url`]), and past `max_body` bytes as it arrives.
async fn fetch(
    url: &str,
    accept: Option<&str>,
    max_body: usize,
) -> Result<hyper::body::Bytes, String> {
    verify::check_url(url)?;
    let resp = client::get_url(url, accept, max_body)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !resp.status.is_success() {
        return Err(format!("GET {url}: {}", resp.status));
    }
    Ok(resp.body)
}

/// The status list at `uri`, verified with `keys` (see [`verify::status_list`]). Fetched
/// once per run: a verifier that lives longer caches it for its `ttl`.
async fn fetch_status_list(
    uri: &str,
    keys: &[verify::JwksKey],
    leeway: i64,
    now: i64,
) -> Result<crate::core::statuslist::bits::Packed, String> {
    let cannot = |e: String| format!("the token's status cannot be checked: {e}");
    let body = fetch(uri, Some(verify::STATUS_LIST_TYPE), verify::MAX_STATUS_LIST)
        .await
        .map_err(cannot)?;
    let jwt = std::str::from_utf8(&body).map_err(|_| cannot(format!("GET {uri}: not text")))?;
    verify::status_list(jwt, uri, keys, leeway, now).map_err(|e| format!("invalid token: {e}"))
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("keyturn: {msg}");
    ExitCode::FAILURE
}

fn token(conn: &Connection) -> Result<Option<String>, String> {
    match &conn.token_file {
        None => Ok(None),
        Some(path) => {
            crate::config::secret::read_secret_file(path, None).map(|t| Some(t.trim().to_owned()))
        }
    }
}

async fn call(
    conn: &Connection,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<serde_json::Value, String> {
    let endpoint = match &conn.socket {
        Some(p) => Endpoint::Socket(p.clone()),
        None => Endpoint::Url(conn.api.clone()),
    };
    let token = token(conn)?;
    let resp = request(&endpoint, method, path, token.as_deref(), body).await?;
    let value: serde_json::Value =
        serde_json::from_slice(&resp.body).unwrap_or(serde_json::Value::Null);
    if resp.status.is_success() {
        Ok(value)
    } else {
        let msg = value["error"]["message"]
            .as_str()
            .unwrap_or("request failed");
        let code = value["error"]["code"].as_str().unwrap_or("");
        Err(format!("{} {code}: {msg}", resp.status.as_u16()))
    }
}

fn print_json(v: &serde_json::Value) {
    say!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A key set's view, as the admin API serves it: `keyset`, or all.
async fn views(
    conn: &Connection,
    keyset: Option<String>,
) -> Result<Vec<serde_json::Value>, String> {
    Ok(match keyset {
        Some(k) => vec![call(conn, Method::GET, &format!("/v1/keysets/{k}"), None).await?],
        None => call(conn, Method::GET, "/v1/keysets", None).await?["keysets"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    })
}

fn plan_of(view: &serde_json::Value) -> Result<KeySetPlan, String> {
    KeySetPlan::deserialize(view)
        .map_err(|e| format!("the daemon's key set view is not one this keyturn reads: {e}"))
}

/// The status table of a key set at `now`: a line on the key set, then one per key with
/// when its state began and when it changes.
fn status_table(view: &serde_json::Value, now: i64) -> Result<String, String> {
    use std::fmt::Write as _;
    let plan = plan_of(view)?;
    // The column heading says UTC.
    let at = |t: Option<i64>| t.map_or_else(String::new, |t| when(now, t).replacen(" UTC", "", 1));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "key set {} ({} on {}): JWKS version {}, backend {}, next event {}",
        plan.name,
        plan.algorithm,
        view["backend"].as_str().unwrap_or("?"),
        view["jwks_version"].as_u64().unwrap_or(0),
        if view["backend_ok"].as_bool().unwrap_or(false) {
            "up"
        } else {
            "down"
        },
        plan.next_event
            .map_or_else(|| "none".to_owned(), |t| when(now, t)),
    );
    let rows: Vec<[String; 4]> = plan
        .keys
        .iter()
        .map(|k| {
            let (since, until) = match k.state.as_str() {
                "pending" => (k.published_at, k.activate_at),
                "active" => (k.activate_at, plan.next_activation),
                "retired" => (k.retired_at, k.remove_at),
                "removed" => (k.removed_at, None),
                "revoked" => (k.revoked_at, None),
                _ => (Some(k.created_at), None),
            };
            let mut kid = k.kid.clone().unwrap_or_else(|| "(being created)".into());
            if k.kid.is_some() && k.kid == plan.active_kid {
                kid.push_str(" *");
            }
            [kid, k.state.clone(), at(since), at(until)]
        })
        .collect();
    let header = ["KID", "STATE", "SINCE (UTC)", "UNTIL (UTC)"].map(str::to_owned);
    let widths: Vec<usize> = (0..4)
        .map(|i| {
            rows.iter()
                .chain([&header])
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in [&header].into_iter().chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "  {}", line.join("  ").trim_end());
    }
    let _ = writeln!(out, "  (* signs now)");
    Ok(out)
}

/// `t` as a UTC date and how far from `now`: `2025-03-01 14:05:00 UTC (in 3h 20m)`.
fn when(now: i64, t: i64) -> String {
    format!("{} ({})", timeline::utc(t), timeline::relative(t, now))
}

fn print_plan(view: &serde_json::Value) {
    let now = view["now"].as_i64().unwrap_or(0);
    say!(
        "key set {} ({}, {} backend)",
        view["name"].as_str().unwrap_or("?"),
        view["algorithm"].as_str().unwrap_or("?"),
        view["backend"].as_str().unwrap_or("?")
    );
    let mut events: Vec<(i64, String)> = Vec::new();
    for k in view["keys"].as_array().into_iter().flatten() {
        let kid = k["kid"].as_str().unwrap_or("(creating)");
        if let Some(t) = k["activate_at"].as_i64().filter(|t| *t > now) {
            events.push((t, format!("{kid} becomes active")));
        }
        if let Some(t) = k["remove_at"].as_i64().filter(|t| *t > now) {
            events.push((t, format!("{kid} leaves the JWKS")));
        }
    }
    events.sort();
    if events.is_empty() {
        say!("  nothing scheduled");
    }
    for (t, what) in events {
        say!("  {}  {what}", when(now, t));
    }
    say!(
        "  publish lead {}, retention {}, JWKS max-age {}",
        crate::config::human(view["publish_lead"].as_i64().unwrap_or(0)),
        crate::config::human(view["retention"].as_i64().unwrap_or(0)),
        crate::config::human(view["jwks_max_age"].as_i64().unwrap_or(0)),
    );
}

/// Runs a client or offline subcommand (everything but `serve`).
pub async fn run_client(cli: Cli) -> ExitCode {
    let conn = &cli.conn;
    let result: Result<(), String> = async {
        match cli.command {
            Command::Serve { .. } => Err("serve is not a client command".into()),
            Command::CheckConfig { file } => {
                let config = Config::load(&file).map_err(|e| format!("{}: {e}", file.display()))?;
                // What the last run remembered (if this user may read it): a key set may not
                // leave the config while its tokens live.
                let ledger_path = crate::infra::ledger::path(&config.server.data_dir);
                match crate::infra::ledger::Ledger::load(&ledger_path) {
                    Ok(ledger) => {
                        let now = crate::core::clock::Clock::now(&crate::core::clock::SystemClock);
                        ledger
                            .check_removed(&config, now, &ledger_path)
                            .map_err(|e| format!("{}: {e}", file.display()))?;
                    }
                    Err(e) => say!("  not checked against the last run's key sets: {e}"),
                }
                // A token that lacks a mechanism fails here rather than at the start.
                let mut notes = Vec::new();
                for ks in &config.keysets {
                    let note = crate::infra::backends::check_offline(&ks.backend, ks.algorithm)
                        .await
                        .map_err(|e| format!("{}: key set {:?}: {e}", file.display(), ks.name))?;
                    notes.push(note);
                }
                say!("{}: OK", file.display());
                for (ks, note) in config.keysets.iter().zip(notes) {
                    let t = &ks.timing;
                    say!(
                        "  key set {:?}: {} on {}; publish lead {}, retention {}, at most {} keys in the JWKS",
                        ks.name,
                        ks.algorithm,
                        ks.backend.kind(),
                        crate::config::human(t.publish_lead()),
                        crate::config::human(t.retention()),
                        t.max_published(crate::config::timing::min_period(&ks.schedule).unwrap_or(1)),
                    );
                    if let Some(lists) = &ks.status_list {
                        say!("    {}", crate::core::statuslist::describe(lists, t));
                    }
                    if let Some(note) = note {
                        say!("    {note}");
                    }
                }
                say!("  {} client(s)", config.clients.len());
                for client in &config.clients {
                    for line in client.allow_alls() {
                        say!(
                            "  warning: client {:?} sets {line}: narrow it to what the client needs",
                            client.name
                        );
                    }
                }
                Ok(())
            }
            Command::Status { keyset, json: true } => {
                let path = keyset.map_or("/v1/keysets".to_owned(), |k| format!("/v1/keysets/{k}"));
                print_json(&call(conn, Method::GET, &path, None).await?);
                Ok(())
            }
            Command::Status { keyset, json: false } => {
                for view in views(conn, keyset).await? {
                    // The daemon's time: the table says what it sees.
                    let now = view["now"].as_i64().unwrap_or_default();
                    say!("{}", status_table(&view, now)?);
                }
                Ok(())
            }
            Command::Plan { keyset, svg } => {
                let views = views(conn, keyset).await?;
                views.iter().for_each(print_plan);
                if let Some(file) = svg {
                    let plans = views.iter().map(plan_of).collect::<Result<Vec<_>, _>>()?;
                    let now = views.first().and_then(|v| v["now"].as_i64()).unwrap_or_default();
                    std::fs::write(&file, timeline::document(&plans, now))
                        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
                    eprintln!("key timeline of {} key set(s) written to {}", plans.len(), file.display());
                }
                Ok(())
            }
            Command::Rotate { keyset } => {
                print_json(&call(conn, Method::POST, &format!("/v1/keysets/{keyset}/rotate"), None).await?);
                Ok(())
            }
            Command::Revoke { keyset, kid } => {
                print_json(&call(conn, Method::POST, &format!("/v1/keysets/{keyset}/keys/{kid}/revoke"), None).await?);
                Ok(())
            }
            Command::Token { action } => {
                let (status, target) = action.parts();
                let body = match (&target.token, &target.uri, target.idx) {
                    (Some(file), _, _) => {
                        let token = std::fs::read_to_string(file)
                            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                        let token = token.trim();
                        // Not sent unless it is a token: the client's own credential file
                        // given here by mistake must not leave.
                        let jws = token.split('.').count() == 3
                            && token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                        if !jws {
                            return Err(format!(
                                "{} does not hold a compact JWS (the token whose status changes); \
                                 the client's own token file goes before the subcommand",
                                file.display()
                            ));
                        }
                        serde_json::json!({"token": token, "status": status})
                    }
                    (None, Some(uri), Some(idx)) => serde_json::json!({"uri": uri, "idx": idx, "status": status}),
                    _ => return Err("give --token-file, or --uri and --idx".into()),
                };
                let path = format!("/v1/keysets/{}/token-status", target.keyset);
                let out = call(conn, Method::POST, &path, Some(body.to_string().into_bytes())).await?;
                let (uri, idx) = (out["uri"].as_str().unwrap_or_default(), &out["idx"]);
                if out["changed"].as_bool() == Some(true) {
                    say!("{uri} index {idx}: {} -> {status}", out["previous"].as_str().unwrap_or_default());
                } else {
                    say!("{uri} index {idx}: already {status}");
                }
                Ok(())
            }
            Command::Sign { keyset, claims, ttl, typ } => {
                // The claims go as written, so the daemon checks exactly these bytes (a name
                // given twice is refused there, not silently merged here).
                #[derive(serde::Serialize)]
                struct Body<'a> {
                    claims: &'a serde_json::value::RawValue,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    ttl: Option<String>,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    typ: Option<String>,
                }
                let claims: &serde_json::value::RawValue = serde_json::from_str(&claims).map_err(|e| format!("--claims is not JSON: {e}"))?;
                let body = serde_json::to_vec(&Body { claims, ttl, typ }).map_err(|e| e.to_string())?;
                let out = call(conn, Method::POST, &format!("/v1/keysets/{keyset}/sign"), Some(body)).await?;
                say!("{}", out["token"].as_str().unwrap_or_default());
                Ok(())
            }
            // --any-issuer and --any-audience leave `issuer` and `audience` unset: clap
            // requires one of each pair.
            Command::Verify { token, jwks, issuer, audience, typ, leeway, no_status, .. } => {
                let leeway = i64::try_from(leeway.as_secs()).map_err(|_| "--leeway is too large".to_owned())?;
                let keys = verify::parse_jwks(&fetch(&jwks, None, verify::MAX_JWKS).await?).map_err(|e| e.to_string())?;
                let expect = verify::Expect { issuer, audience, typ: Some(typ), leeway };
                let now = crate::core::clock::Clock::now(&crate::core::clock::SystemClock);
                let invalid = |e: verify::VerifyError| format!("invalid token: {e}");
                let claims = verify::verify(token.trim(), &keys, &expect, now).map_err(invalid)?;
                if no_status {
                    eprintln!("keyturn: the token's status was not checked (--no-status)");
                } else if let Some(at) = verify::status_ref(&claims).map_err(invalid)? {
                    let list = fetch_status_list(&at.uri, &keys, leeway, now).await?;
                    verify::check_status(&list, &at).map_err(invalid)?;
                }
                print_json(&serde_json::Value::Object(claims));
                Ok(())
            }
            Command::Jwks { keyset, jwks_url } => {
                let url = format!("{}/keysets/{keyset}/jwks.json", jwks_url.trim_end_matches('/'));
                let resp = client::get_url(&url, None, verify::MAX_JWKS).await?;
                if !resp.status.is_success() {
                    return Err(format!("GET {url}: {}", resp.status));
                }
                print_json(&serde_json::from_slice(&resp.body).unwrap_or_default());
                Ok(())
            }
            Command::Audit { action: AuditCommand::Verify { file, head } } => {
                let found = crate::infra::audit::verify(&file, head.as_ref())?;
                let shown = file.display();
                if found.torn.is_empty() {
                    say!("{shown}: {} lines, hash chain intact", found.lines);
                    if let Some(anchor) = head {
                        say!("  holds the head {anchor} unchanged");
                    }
                    say!("  head {} (kept elsewhere, --head with it checks this file later)", found.head);
                    Ok(())
                } else {
                    let torn: Vec<String> = found.torn.iter().map(u64::to_string).collect();
                    Err(format!(
                        "{shown}: {} lines; line(s) {} are not records: a write cut short by a \
                         crash or power loss, or an edit. The chain holds over every line followed \
                         by another (a last line is covered by no later hash)",
                        found.lines,
                        torn.join(", ")
                    ))
                }
            }
            Command::ClientToken { name, keysets, audiences, subject_pattern, allowed_claims, out, admin } => {
                let policy = Policy { keysets, audiences, subject_pattern, allowed_claims, admin };
                client_token(&name, &policy, out)
            }
        }
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// What `client-token` grants the client it makes.
struct Policy {
    keysets: Vec<String>,
    audiences: Vec<String>,
    subject_pattern: Option<String>,
    allowed_claims: Vec<String>,
    admin: bool,
}

fn client_token(name: &str, policy: &Policy, out: Option<PathBuf>) -> Result<(), String> {
    use aws_lc_rs::rand::SecureRandom;
    use base64::Engine as _;
    if !crate::config::valid_name(name) {
        return Err(format!(
            "client name {name:?} is invalid: use lowercase letters, digits, '-' and '_'"
        ));
    }
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no randomness")?;
    let token = format!(
        "kt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = crate::config::secret::to_hex(&crate::config::secret::hash_token(&token));
    let keysets = if policy.keysets.is_empty() {
        vec!["default".to_owned()]
    } else {
        policy.keysets.clone()
    };
    // TOML strings, as TOML escapes them (Rust's `{:?}` escapes differ).
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let quoted = |items: &[String]| {
        items
            .iter()
            .map(|s| quote(s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let list = quoted(&keysets);
    // A setting left out is printed commented out, with what leaving it out means, so that
    // the operator sees each choice.
    let audiences = if policy.audiences.is_empty() {
        "# audiences = [\"...\"]   (unset: only tokens without aud)".to_owned()
    } else {
        format!("audiences = [{}]", quoted(&policy.audiences))
    };
    let subject_pattern = match &policy.subject_pattern {
        None => {
            "# subject_pattern = \"user:*\"   (unset: the client may not set sub; \"*\" allows any)"
                .to_owned()
        }
        Some(pattern) => format!("subject_pattern = {}", quote(pattern)),
    };
    let allowed_claims = if policy.allowed_claims.is_empty() {
        "# allowed_claims = [\"scope\"]   (unset: no claim beyond sub and aud; [\"*\"] allows any)"
            .to_owned()
    } else {
        format!("allowed_claims = [{}]", quoted(&policy.allowed_claims))
    };
    match out {
        Some(path) => {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let shown = path.display();
            // create_new: an existing file, even one made a moment ago, is never replaced.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => format!(
                        "{shown} already exists: remove it or choose another --out (a token file is never overwritten)"
                    ),
                    _ => format!("cannot create {shown}: {e}"),
                })?;
            file.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("cannot write the token to {shown}: {e}"))?;
            eprintln!(
                "token written to {} (0600); give it to the client",
                path.display()
            );
        }
        None => eprintln!("token (shown once; give it to the client): {token}"),
    }
    let admin = if policy.admin { "admin = true\n" } else { "" };
    say!("[[client]]\nname = {name:?}\ntoken_sha256 = \"{hash}\"\nkeysets = [{list}]\n{audiences}\n{subject_pattern}\n{allowed_claims}\n{admin}# max_ttl = \"10m\"");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table_says_when_each_state_began_and_ends() {
        const NOW: i64 = 1_800_000_000;
        let view = serde_json::json!({
            "name": "default", "algorithm": "ES256", "backend": "file", "backend_ok": true,
            "now": NOW, "active_kid": "kid-a", "next_activation": NOW + 12_000,
            "next_event": NOW + 600, "jwks_version": 7, "publish_lead": 360,
            "jwks_max_age": 300,
            "keys": [
                {"kid": "kid-r", "state": "retired", "created_at": NOW - 9000,
                 "published_at": NOW - 9000, "activate_at": NOW - 8000,
                 "retired_at": NOW - 4000, "remove_at": NOW + 600},
                {"kid": "kid-a", "state": "active", "created_at": NOW - 5000,
                 "published_at": NOW - 5000, "activate_at": NOW - 4000},
                {"kid": "kid-p", "state": "pending", "created_at": NOW - 60,
                 "published_at": NOW - 60, "activate_at": NOW + 12_000}
            ]
        });
        let table = status_table(&view, NOW).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "key set default (ES256 on file): JWKS version 7, backend up, next event \
             2027-01-15 08:10:00 UTC (in 10m)"
        );
        assert!(
            lines[1].starts_with("  KID      STATE    SINCE (UTC)"),
            "{table}"
        );
        assert!(
            lines[2].starts_with(
                "  kid-r    retired  2027-01-15 06:53:20 (1h 6m ago)  2027-01-15 08:10:00 (in 10m)"
            ),
            "{table}"
        );
        assert!(lines[3].starts_with("  kid-a *  active   "), "{table}");
        assert!(lines[3].ends_with("(in 3h 20m)"), "{table}");
        assert!(
            lines[4].contains("(1m ago)") && lines[4].contains("(in 3h 20m)"),
            "{table}"
        );
        // A view this keyturn cannot read is an error that says so, not a table of blanks.
        let err = status_table(&serde_json::json!({"name": "x"}), NOW).unwrap_err();
        assert!(err.contains("not one this keyturn reads"), "{err}");
    }

    #[test]
    fn a_kid_may_begin_with_a_hyphen() {
        // base64url kids begin with '-' one time in 64.
        let cli = Cli::try_parse_from(["keyturn", "revoke", "default", "-A3kQ"]).unwrap();
        match cli.command {
            Command::Revoke { keyset, kid } => {
                assert_eq!((keyset.as_str(), kid.as_str()), ("default", "-A3kQ"))
            }
            _ => panic!("not a revoke"),
        }
    }
}
