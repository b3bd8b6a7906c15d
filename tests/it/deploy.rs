//! What ships in deploy/: the Prometheus alert rules (checked and unit-tested by promtool)
//! and the Grafana dashboard (its structure, and its metrics against a real scrape).

use crate::browser::{artifacts, debian_tool, update_docs, Browser};
use crate::harness::*;
use std::collections::{BTreeSet, HashSet};
use std::process::Command;
use std::time::Duration;

fn deploy(path: &str) -> std::path::PathBuf {
    repo_dir().join("deploy").join(path)
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(deploy("grafana/keyturn.json")).unwrap();
    serde_json::from_str(&text).expect("deploy/grafana/keyturn.json is not JSON")
}

/// The `keyturn_*` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("keyturn_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// Every query in the dashboard: panel targets and variable queries.
fn queries(dashboard: &serde_json::Value) -> Vec<String> {
    let panels = dashboard["panels"].as_array().unwrap();
    let targets = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| t["expr"].as_str().unwrap().to_owned());
    let variables = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| v["query"]["query"].as_str().unwrap().to_owned());
    targets.chain(variables).collect()
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let Some(promtool) = debian_tool("promtool", "prometheus") else {
        return;
    };
    for args in [
        ["check", "rules", "keyturn.rules.yml"],
        ["test", "rules", "keyturn.rules.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(deploy("prometheus"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert has a severity, a summary and a runbook line, and is unit-tested.
    let rules = std::fs::read_to_string(deploy("prometheus/keyturn.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(deploy("prometheus/keyturn.rules.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 12, "{alerts:?}");
    for field in ["severity: ", "summary: ", "runbook: "] {
        assert_eq!(rules.matches(field).count(), alerts.len(), "{field}");
    }
    for alert in alerts {
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - "
            )),
            "{alert} is never seen firing in keyturn.rules.test.yml"
        );
    }
}

/// The dashboard is a Grafana dashboard model: the fields an import needs, panels on the
/// 24-column grid without overlaps, every query on the chosen Prometheus data source with
/// only the variables it defines, and the topics an operator looks for.
#[test]
fn the_dashboard_is_a_well_formed_grafana_dashboard() {
    let d = dashboard();
    assert_eq!(d["uid"], "keyturn");
    assert!(d["title"].is_string() && d["schemaVersion"].as_u64().unwrap() >= 36);
    let variables: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "instance", "keyset"]);
    let source = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    let panels = d["panels"].as_array().unwrap();
    let mut ids = HashSet::new();
    let mut cells = HashSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap();
        assert!(ids.insert(p["id"].as_u64().unwrap()), "{title}: id again");
        let kind = p["type"].as_str().unwrap();
        assert!(
            ["row", "stat", "timeseries"].contains(&kind),
            "{title}: {kind}"
        );
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap());
        assert!(w >= 1 && h >= 1 && x + w <= 24, "{title}: {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        if kind == "row" {
            continue;
        }
        assert_eq!(p["datasource"], source, "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}");
        let mut refs = HashSet::new();
        for t in targets {
            assert!(refs.insert(t["refId"].as_str().unwrap()), "{title}: refId");
            assert_eq!(t["datasource"], source, "{title}");
        }
    }
    for query in queries(&d) {
        for var in query.split('$').skip(1) {
            let name: String = var
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                variables.contains(&name.as_str()) || name == "__rate_interval",
                "${name} in {query}"
            );
        }
    }
    let used = metric_names(&queries(&d).join("\n"));
    for needed in [
        "keyturn_signatures_total",
        "keyturn_sign_duration_seconds_bucket",
        "keyturn_backend_call_duration_seconds_bucket",
        "keyturn_backend_errors_total",
        "keyturn_active_key_age_seconds",
        "keyturn_next_activation_seconds",
        "keyturn_next_removal_seconds",
        "keyturn_jwks_version",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

/// The rules and the dashboard query only metrics a running keyturn exports: every name
/// is a sample of its `/metrics`, or a sample name of a family it declares (a counter that
/// has not counted yet).
#[tokio::test]
async fn the_rules_and_the_dashboard_use_only_metrics_keyturn_exports() {
    let dir = private_dir();
    let (client, token) = token_client("svc", &["default"], "audiences = [\"orders\"]");
    let d = Daemon::start(
        dir.path(),
        &format!(
            "{}{}{client}",
            server_toml(dir.path()),
            keyset_toml("default", "ES256", "")
        ),
    );
    let (status, _) = sign(
        &d,
        "default",
        &token,
        serde_json::json!({"claims": {"aud": "orders"}}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = sign(
        &d,
        "default",
        "not-a-token",
        serde_json::json!({"claims": {}}),
    )
    .await;
    assert_eq!(status, 401);
    let scrape = metrics_text(&d).await;
    let mut exported = HashSet::new();
    for line in scrape.lines() {
        if let Some(typed) = line.strip_prefix("# TYPE ") {
            let (family, kind) = typed.split_once(' ').unwrap();
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for suffix in suffixes {
                exported.insert(format!("{family}{suffix}"));
            }
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            exported.insert(name.to_owned());
        }
    }
    let rules = std::fs::read_to_string(deploy("prometheus/keyturn.rules.yml")).unwrap();
    // The expressions only: from each `expr:` to its rule's labels.
    let exprs: Vec<&str> = rules
        .split("expr:")
        .skip(1)
        .map(|rest| rest.split("labels:").next().unwrap())
        .collect();
    let used: BTreeSet<String> = metric_names(&exprs.join("\n"))
        .into_iter()
        .chain(metric_names(&queries(&dashboard()).join("\n")))
        .collect();
    assert!(used.len() >= 14, "{used:?}");
    let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "not exported by keyturn: {unknown:?}\n{scrape}"
    );
}

/// The dashboard's panels as laid out on Grafana's grid, drawn by Chromium for the docs
/// (docs/dashboard-layout.png with KEYTURN_UPDATE_DOCS=1).
#[tokio::test]
async fn the_dashboard_layout_is_drawn() {
    let d = dashboard();
    let (col, row) = (60, 30);
    let mut html = String::from(
        "<!doctype html><meta charset=\"utf-8\"><body style=\"margin:0;background:#111217;\
         font:13px DejaVu Sans,sans-serif;color:#ccccdc\"><div style=\"position:relative;\
         width:1440px\">",
    );
    let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;");
    let mut bottom = 0;
    for p in d["panels"].as_array().unwrap() {
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap());
        bottom = bottom.max((y + h) * row);
        let title = escape(p["title"].as_str().unwrap());
        if p["type"] == "row" {
            html.push_str(&format!(
                "<div style=\"position:absolute;left:{}px;top:{}px;width:{}px;height:{}px;\
                 font-weight:bold;font-size:15px;border-bottom:1px solid #444\">{title}</div>",
                x * col + 4,
                y * row + 4,
                w * col - 8,
                h * row - 6
            ));
            continue;
        }
        let metrics: Vec<String> = metric_names(
            &p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["expr"].as_str().unwrap())
                .collect::<Vec<_>>()
                .join(" "),
        )
        .into_iter()
        .collect();
        html.push_str(&format!(
            "<div style=\"position:absolute;left:{}px;top:{}px;width:{}px;height:{}px;\
             box-sizing:border-box;background:#181b1f;border:1px solid #2c3235;border-radius:3px;\
             padding:6px 8px;overflow:hidden\"><div style=\"font-weight:bold\">{title}</div>\
             <div style=\"color:#8e8e9e;font-size:11px\">{}</div>\
             <div style=\"font:11px DejaVu Sans Mono,monospace;margin-top:6px;color:#6e9fff\">{}</div></div>",
            x * col + 4,
            y * row + 4,
            w * col - 8,
            h * row - 8,
            p["type"].as_str().unwrap(),
            metrics.join("<br>"),
        ));
    }
    html.push_str(&format!(
        "</div><div style=\"height:{bottom}px\"></div></body>"
    ));
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("layout.html");
    std::fs::write(&page, html).unwrap();
    let Some(mut browser) = Browser::open(&format!("file://{}", page.display()), 1440, 900).await
    else {
        return;
    };
    browser
        .wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(30),
            "the layout page",
        )
        .await;
    let shot = artifacts().join("dashboard-layout.png");
    browser.screenshot(&shot).await;
    if update_docs() {
        std::fs::copy(&shot, repo_dir().join("docs/dashboard-layout.png")).unwrap();
    }
}
