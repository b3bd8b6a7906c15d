//! Interop: tokens of every algorithm verified by PyJWT's PyJWKClient against the live JWKS
//! endpoint, before and across a rotation (scripts/interop.py, run with the virtualenv
//! python that scripts/test.sh installs).

use crate::harness::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

pub(crate) const ALGS: [&str; 10] = [
    "ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA",
];

pub(crate) struct PyJwt {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl PyJwt {
    pub(crate) fn start() -> Option<PyJwt> {
        let python =
            keyturn_backend::testserver::find_binary("KEYTURN_PYTHON", "python with PyJWT")?;
        let script = crate::harness::repo_dir().join("scripts/interop.py");
        let mut child = Command::new(python)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Some(PyJwt { child, out })
    }

    pub(crate) fn verify(&mut self, req: serde_json::Value) -> serde_json::Value {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{req}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("interop.py said: {line:?}"))
    }
}

impl Drop for PyJwt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn pyjwt_verifies_every_algorithm_across_a_rotation() {
    let Some(mut py) = PyJwt::start() else { return };
    let dir = private_dir();
    let mut config = server_toml(dir.path());
    for alg in ALGS {
        config += &keyset_toml(&alg.to_lowercase(), alg, "");
    }
    let names: Vec<String> = ALGS.iter().map(|a| a.to_lowercase()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (client, token) = token_client(
        "issuer",
        &refs,
        "audiences = [\"orders\"]\nsubject_pattern = \"*\"\nadmin = true",
    );
    config += &client;
    let d = Daemon::start(dir.path(), &config);
    let request = |ks: &str, alg: &str, jws: &str| {
        json!({"jwks": format!("{}/keysets/{ks}/jwks.json", d.jwks), "token": jws, "alg": alg,
               "issuer": format!("https://issuer.test/{ks}"), "audience": "orders"})
    };
    let mut before = Vec::new();
    for alg in ALGS {
        let ks = alg.to_lowercase();
        let (status, body) = sign(
            &d,
            &ks,
            &token,
            json!({"claims": {"sub": format!("{alg}-before"), "aud": "orders"}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let jws = body["token"].as_str().unwrap().to_owned();
        let result = py.verify(request(&ks, alg, &jws));
        assert_eq!(result["ok"], true, "{alg}: {result}");
        assert_eq!(result["kid"], body["kid"]);
        before.push((ks, alg, jws, body["kid"].clone()));
    }
    // Rotate every key set; PyJWKClient holds the old JWKS and must refetch on the new kid.
    for (ks, _, _, old_kid) in &before {
        let (status, r) = rotate(&d, &token, ks).await;
        assert_eq!(status, 200, "{r}");
        eventually(std::time::Duration::from_secs(15), "rotation", || {
            let (d, token, ks, old_kid) = (&d, &token, ks.clone(), old_kid.clone());
            async move {
                sign(d, &ks, token, json!({"claims": {"aud": "orders"}}))
                    .await
                    .1["kid"]
                    != old_kid
            }
        })
        .await;
    }
    for (ks, alg, old_jws, old_kid) in &before {
        let (status, body) = sign(
            &d,
            ks,
            &token,
            json!({"claims": {"sub": format!("{alg}-after"), "aud": "orders"}}),
        )
        .await;
        assert_eq!(status, 200);
        assert_ne!(&body["kid"], old_kid, "{alg} did not rotate");
        let new = py.verify(request(ks, alg, body["token"].as_str().unwrap()));
        assert_eq!(new["ok"], true, "{alg} after rotation: {new}");
        assert_eq!(new["sub"], format!("{alg}-after"));
        // The token from before the rotation still verifies (its key is retired, published).
        let old = py.verify(request(ks, alg, old_jws));
        assert_eq!(old["ok"], true, "{alg} old token after rotation: {old}");
    }
    // And a tampered token is refused by PyJWT too.
    let (_, _, jws, _) = &before[0];
    let mut bad = jws.clone();
    bad.pop();
    bad.push(if jws.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(py.verify(request("es256", "ES256", &bad))["ok"], false);
}
