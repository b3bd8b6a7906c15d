//! The client subcommands against a running daemon, and the offline ones.

use crate::harness::*;
use std::process::Command;
use std::time::Duration;

fn keyturn(args: &[&str], token_file: &std::path::Path, api: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .args(args)
        .env("KEYTURN_API", api)
        .env("KEYTURN_TOKEN_FILE", token_file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn status_plan_sign_verify_jwks_rotate_revoke() {
    let dir = private_dir();
    let (client, token) = token_client(
        "ops",
        &["default"],
        "admin = true\naudiences = [\"orders\"]\nsubject_pattern = \"*\"",
    );
    let d = Daemon::start(
        dir.path(),
        &format!(
            "{}{}{client}",
            server_toml(dir.path()),
            keyset_toml("default", "ES384", "")
        ),
    );
    let token_file = dir.path().join("ops.token");
    write_secret(&token_file, &token);
    let run = |args: &[&str]| keyturn(args, &token_file, &d.api);

    let (ok, out, err) = run(&["status", "--json"]);
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let active = status["keysets"][0]["active_kid"]
        .as_str()
        .unwrap()
        .to_owned();
    // By default a table: the key that signs marked, times as UTC dates and how far off.
    let (ok, out, err) = run(&["status"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("key set default (ES384 on file): JWKS version ")
            && out.contains(&format!("  {active} *  active "))
            && out.contains("SINCE (UTC)")
            // The next rotation, an hour after the first key's activation: "in 1h", or
            // "in 59m 5xs" once a second or more has passed on a loaded machine.
            && (out.contains(" (in 1h)") || out.contains(" (in 59m ")),
        "{out}"
    );

    let (ok, out, _) = run(&["plan", "default"]);
    assert!(ok);
    assert!(
        out.contains("becomes active") && out.contains("publish lead 1s"),
        "{out}"
    );

    let (ok, jws, err) = run(&[
        "sign",
        "default",
        "--claims",
        r#"{"sub":"cli","aud":"orders"}"#,
        "--ttl",
        "2m",
    ]);
    assert!(ok, "{err}");
    // The claims reach the daemon as written: a name given twice is refused there, as it
    // is over the API, not merged by the CLI.
    let (ok, _, dup) = run(&[
        "sign",
        "default",
        "--claims",
        r#"{"sub":"cli","aud":"orders","sub":"other"}"#,
    ]);
    assert!(!ok && dup.contains("duplicate_claim"), "{dup}");
    let jwks_url = format!("{}/keysets/default/jwks.json", d.jwks);
    let (ok, out, err) = run(&[
        "verify",
        jws.trim(),
        "--jwks",
        &jwks_url,
        "--issuer",
        "https://issuer.test/default",
        "--audience",
        "orders",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("\"sub\": \"cli\""));
    // verify refuses a wrong audience, a tampered token and a partial issuer.
    let strict = |token: &str, issuer: &str, audience: &str| {
        run(&[
            "verify",
            token,
            "--jwks",
            &jwks_url,
            "--issuer",
            issuer,
            "--audience",
            audience,
        ])
    };
    let (ok, _, err) = strict(jws.trim(), "https://issuer.test/default", "order");
    assert!(!ok && err.contains("aud"), "{err}");
    let (ok, _, err) = strict(
        &format!("{}x", jws.trim()),
        "https://issuer.test/default",
        "orders",
    );
    assert!(!ok && err.contains("invalid token"), "{err}");
    let (ok, _, err) = strict(jws.trim(), "https://issuer.test", "orders");
    assert!(!ok && err.contains("iss"), "{err}");
    // A path where the JWKS URL goes: said so.
    let (ok, _, err) = run(&[
        "verify",
        jws.trim(),
        "--jwks",
        "/etc/passwd",
        "--any-issuer",
        "--any-audience",
    ]);
    assert!(
        !ok && err.contains("is not an http:// or https:// URL"),
        "{err}"
    );

    let (ok, out, _) = keyturn(
        &["jwks", "default", "--jwks-url", &d.jwks],
        &token_file,
        &d.api,
    );
    assert!(ok);
    assert!(out.contains(&active));

    let (ok, out, err) = run(&["rotate", "default"]);
    assert!(ok, "{err}");
    assert!(out.contains("activates_at"));
    let (ok, out, err) = run(&["revoke", "default", &active]);
    assert!(ok, "{err}");
    assert!(out.contains("\"revoked\""));
    let (ok, _, err) = run(&["revoke", "default", &active]);
    assert!(!ok && err.contains("409"), "{err}");
    // A wrong token is a clear error, not a crash.
    let bad = dir.path().join("bad.token");
    write_secret(&bad, "nope");
    let (ok, _, err) = keyturn(&["status"], &bad, &d.api);
    assert!(!ok && err.contains("401"), "{err}");
    // A token file readable by others is refused before any request.
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (ok, _, err) = keyturn(&["status"], &bad, &d.api);
    assert!(!ok && err.contains("chmod 600"), "{err}");
}

#[test]
fn check_config_names_the_fix() {
    let dir = private_dir();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        keyset_toml("default", "ES256", "")
            .replace("rotate_every = \"1h\"", "rotate_every = \"1s\"")
            .replace("jwks_max_age = \"1s\"", "jwks_max_age = \"5m\""),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rotate_every") && err.contains("at least 5m"),
        "{err}"
    );
    let good = dir.path().join("good.toml");
    std::fs::write(&good, keyset_toml("default", "ES256", "")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("publish lead 1s"));
}

/// `check-config` warns of each explicit allow-all (`subject_pattern = "*"`,
/// `allowed_claims = ["*"]`), naming the client; a config without one gets no warning.
#[test]
fn check_config_warns_of_clients_that_allow_all() {
    let dir = private_dir();
    let check = |clients: &str| {
        let path = dir.path().join("keyturn.toml");
        std::fs::write(&path, keyset_toml("default", "ES256", "") + clients).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_keyturn"))
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let (narrow, _) = token_client(
        "narrow",
        &["default"],
        "subject_pattern = \"user:*\"\nallowed_claims = [\"scope\"]",
    );
    let out = check(&narrow);
    assert!(!out.contains("warning"), "{out}");
    let (wide, _) = token_client(
        "wide",
        &["default"],
        "subject_pattern = \"*\"\nallowed_claims = [\"*\"]",
    );
    let out = check(&(narrow + &wide));
    let warnings: Vec<&str> = out.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 2, "{out}");
    assert!(
        warnings[0].contains("\"wide\"") && warnings[0].contains("subject_pattern = \"*\""),
        "{out}"
    );
    assert!(
        warnings[1].contains("\"wide\"") && warnings[1].contains("allowed_claims = [\"*\"]"),
        "{out}"
    );
}

/// The README's `client-token ... --out login.token`: a bare file name in the working
/// directory, written 0600, holding the token whose hash the printed lines carry. An
/// existing file is never overwritten.
#[test]
fn client_token_writes_a_bare_file_name_and_never_overwrites() {
    let dir = private_dir();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_keyturn"))
            .args([
                "client-token",
                "login-service",
                "--keyset",
                "default",
                "--audience",
                "orders-api",
                "--out",
                "login.token",
            ])
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let path = dir.path().join("login.token");
    let token = std::fs::read_to_string(&path).unwrap();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let hash = keyturn::config::secret::to_hex(&keyturn::config::secret::hash_token(token.trim()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("token_sha256 = \"{hash}\"")),
        "{stdout}"
    );
    assert!(stdout.contains("audiences = [\"orders-api\"]"), "{stdout}");

    let again = run();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), token);

    // The printed lines are TOML whatever the audience holds.
    let odd = "a\"b\\c\u{1b}d";
    let out = Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .args(["client-token", "odd", "--audience", odd])
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: toml::Table = String::from_utf8_lossy(&out.stdout).parse().unwrap();
    let client = &lines["client"][0];
    assert_eq!(client["audiences"][0].as_str(), Some(odd), "{lines}");
}

/// Text logs carry no colour codes when stderr is not a terminal (a file, a pipe).
#[test]
fn text_logs_to_a_pipe_have_no_colour_codes() {
    use std::io::BufRead;
    let dir = private_dir();
    let path = dir.path().join("keyturn.toml");
    std::fs::write(
        &path,
        server_toml(dir.path()) + &keyset_toml("default", "ES256", ""),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .args(["serve", "--log-format", "text", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.unwrap();
        let ready = line.contains("keyturn ready");
        lines.push(line);
        if ready {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = lines.join("\n");
    assert!(text.contains("keyturn ready"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a pipe:\n{text}");
}

/// The `audit chain head` lines in a daemon's JSON log: (count, hash) as `COUNT:HASH`.
fn logged_heads(logs: &[String]) -> Vec<String> {
    logs.iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "audit chain head")
        .map(|v| format!("{}:{}", v["count"], v["hash"].as_str().unwrap()))
        .collect()
}

/// `lines` chained again from the first, as someone who rewrote them would.
fn rechain(lines: &[String]) -> String {
    let mut prev = "0".repeat(64);
    let mut out = String::new();
    for line in lines {
        let cut = line.rfind("\"prev\":\"").unwrap();
        let line = format!("{}\"prev\":\"{prev}\"}}", &line[..cut]);
        prev = keyturn::config::secret::to_hex(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, line.as_bytes()).as_ref(),
        );
        out += &line;
        out.push('\n');
    }
    out
}

/// The daemon logs its audit chain head when it stops; `audit verify --head` holds the file
/// to it: lines added by a later run are fine, a log cut short or rewritten is not, even
/// with every hash recomputed (which the chain alone does not catch).
#[tokio::test]
async fn audit_verify_holds_the_log_to_a_head_the_daemon_logged() {
    let dir = private_dir();
    let (client, token) = token_client("svc", &["default"], "");
    let config = server_toml(dir.path()) + &keyset_toml("default", "ES256", "") + &client;
    let log = dir.path().join("data/audit.log");
    let audit_verify = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_keyturn"))
            .args(["audit", "verify"])
            .arg(&log)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Runs the daemon, signs `n` tokens, stops it: the heads it logged.
    let run = |n: usize| {
        let config = config.clone();
        let token = token.clone();
        let dir = dir.path().to_owned();
        async move {
            let d = Daemon::start(&dir, &config);
            for _ in 0..n {
                let (status, body) =
                    sign(&d, "default", &token, serde_json::json!({"claims": {}})).await;
                assert_eq!(status, 200, "{body}");
            }
            let logs = d.logs.clone();
            assert!(d.stop().success());
            // The log's last lines may still be on their way from the pipe.
            eventually(std::time::Duration::from_secs(10), "a logged head", || {
                let logs = logs.clone();
                async move { !logged_heads(&logs.lock().unwrap()).is_empty() }
            })
            .await;
            let heads = logged_heads(&logs.lock().unwrap());
            heads
        }
    };

    let heads = run(3).await;
    assert_eq!(heads.len(), 1, "one head, at the stop: {heads:?}");
    let first = heads[0].clone();
    let lines = std::fs::read_to_string(&log).unwrap().lines().count();
    assert!(
        first.starts_with(&format!("{lines}:")),
        "{first}, {lines} lines"
    );
    let (ok, out, err) = audit_verify(&["--head", &first]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("holds the head {first} unchanged"))
            && out.contains(&format!("head {first} ")),
        "{out}"
    );

    // A later run adds lines: the first head still holds, the second counts them all.
    let second = run(1).await[0].clone();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert!(second.starts_with(&format!("{}:", lines.len())), "{second}");
    assert_ne!(first, second);
    for head in [&first, &second] {
        let (ok, _, err) = audit_verify(&["--head", head]);
        assert!(ok, "{head}: {err}");
    }

    // Cut short: the chain alone holds, the head does not.
    std::fs::write(&log, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
    assert!(audit_verify(&[]).0);
    let (ok, _, err) = audit_verify(&["--head", &second]);
    assert!(!ok && err.contains("cut short"), "{err}");

    // A signature line rewritten, every hash after it recomputed.
    let i = lines.iter().position(|l| l.contains("\"sign\"")).unwrap();
    let mut forged = lines.clone();
    forged[i] = forged[i].replace("\"svc\"", "\"someone-else\"");
    assert_ne!(forged[i], lines[i]);
    std::fs::write(&log, rechain(&forged)).unwrap();
    let (ok, _, err) = audit_verify(&[]);
    assert!(ok, "the chain alone is fooled: {err}");
    for head in [&first, &second] {
        let (ok, _, err) = audit_verify(&["--head", head]);
        assert!(!ok && err.contains("rewritten"), "{head}: {err}");
    }

    // A head that is not one: said how to write it.
    let (ok, _, err) = audit_verify(&["--head", "12"]);
    assert!(!ok && err.contains("COUNT:HASH"), "{err}");
}

/// `keyturn verify` checks a token's entry in the status list the daemon serves: a revoked
/// or suspended token is refused with its status named, a reinstated one passes again,
/// `--no-status` skips the check, and a list over plain http to another machine is refused
/// before any connection. The key set's issuer, and so its lists' URI, is the daemon's own
/// public listener, whose port is known only once it runs: the key set comes in by a reload.
#[tokio::test]
async fn verify_refuses_a_token_its_status_list_does_not_hold_valid() {
    let dir = private_dir();
    let (client, token) = token_client(
        "ops",
        &["*"],
        "admin = true\naudiences = [\"orders\"]\nsubject_pattern = \"*\"",
    );
    // Its lists are said to be on another machine, over plain http.
    let remote = keyset_toml(
        "remote",
        "ES256",
        "status_list = { uri = \"http://status.invalid/lists\" }",
    );
    let base = format!("{}{remote}{client}", server_toml(dir.path()));
    let d = Daemon::start(dir.path(), &base);
    let revocable = keyset_toml("revocable", "ES256", "status_list = { ttl = \"5m\" }")
        .replace("https://issuer.test/revocable", &d.jwks);
    std::fs::write(&d.config_path, format!("{base}{revocable}")).unwrap();
    d.signal("HUP");
    eventually(Duration::from_secs(30), "the reloaded key set", || async {
        get_public(&d, "/keysets/revocable/jwks.json").await.0 == 200
    })
    .await;

    let token_file = dir.path().join("ops.token");
    write_secret(&token_file, &token);
    let run = |args: &[&str]| keyturn(args, &token_file, &d.api);
    let sign = |keyset: &str| {
        let (ok, jws, err) = run(&["sign", keyset, "--claims", r#"{"sub":"a","aud":"orders"}"#]);
        assert!(ok, "{err}");
        jws.trim().to_owned()
    };
    let verify = |jws: &str, keyset: &str, more: &[&str]| {
        let jwks = format!("{}/keysets/{keyset}/jwks.json", d.jwks);
        let args = [
            &[
                "verify",
                jws,
                "--jwks",
                &jwks,
                "--any-issuer",
                "--audience",
                "orders",
            ],
            more,
        ];
        run(&args.concat())
    };
    let (revoked, suspended) = (sign("revocable"), sign("revocable"));
    let (uri, idx) = status_of(&suspended);
    let path = uri.strip_prefix(&d.jwks).unwrap();
    assert!(path.starts_with("/keysets/revocable/statuslists/"), "{uri}");
    // The first token made the list; it is served once signed.
    eventually(
        Duration::from_secs(30),
        "the status list served",
        || async { get_public(&d, path).await.0 == 200 },
    )
    .await;
    for jws in [&revoked, &suspended] {
        let (ok, out, err) = verify(jws, "revocable", &[]);
        assert!(ok && out.contains("\"status\""), "{err}");
    }

    // The client's own token file named as the token to revoke is not sent.
    let (ok, _, err) = run(&[
        "token",
        "revoke",
        "revocable",
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("does not hold a compact JWS"), "{err}");
    let revoked_file = dir.path().join("revoked.jwt");
    std::fs::write(&revoked_file, &revoked).unwrap();
    let (ok, _, err) = run(&[
        "token",
        "revoke",
        "revocable",
        "--token-file",
        revoked_file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = verify(&revoked, "revocable", &[]);
    assert!(!ok && err.contains("the token is revoked"), "{err}");
    let (ok, out, err) = verify(&revoked, "revocable", &["--no-status"]);
    assert!(
        ok && out.contains("\"sub\": \"a\"") && err.contains("--no-status"),
        "{err}"
    );
    // The other token's entry is its own.
    assert!(verify(&suspended, "revocable", &[]).0);

    let by_index = ["revocable", "--uri", &uri, "--idx", &idx.to_string()];
    let (ok, _, err) = run(&[&["token", "suspend"], &by_index[..]].concat());
    assert!(ok, "{err}");
    let (ok, _, err) = verify(&suspended, "revocable", &[]);
    assert!(!ok && err.contains("the token is suspended"), "{err}");
    let (ok, _, err) = run(&[&["token", "reinstate"], &by_index[..]].concat());
    assert!(ok, "{err}");
    let (ok, _, err) = verify(&suspended, "revocable", &[]);
    assert!(ok, "{err}");

    // `.invalid` never resolves: had keyturn tried, the error would be a failed lookup.
    let elsewhere = sign("remote");
    let (ok, _, err) = verify(&elsewhere, "remote", &[]);
    assert!(
        !ok && err.contains("\"http://status.invalid/lists/")
            && err.contains("https://")
            && !err.contains("connect"),
        "{err}"
    );
    assert!(verify(&elsewhere, "remote", &["--no-status"]).0);
}

/// A token's `status.status_list`: (uri, idx).
fn status_of(jws: &str) -> (String, u64) {
    use base64::Engine as _;
    let claims = jws.split('.').nth(1).unwrap();
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
    let at = &claims["status"]["status_list"];
    (
        at["uri"].as_str().unwrap().to_owned(),
        at["idx"].as_u64().unwrap(),
    )
}
