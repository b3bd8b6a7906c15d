//! The console: a read-only page on its own listener (`[server] console_listen`) that shows
//! each key set's timeline, its JWKS version, backend health, readiness, signatures per
//! second and last lifecycle events.
//!
//! It shows what the public listener and `/metrics` already publish, and the lifecycle
//! lines of the audit log (never a token's line, never a caller); it takes no action:
//! GET and HEAD only, everything else 405. Everything is drawn here, server-side, with the
//! same renderer as `keyturn plan --svg` ([`crate::core::timeline`]); the page's one script,
//! served from this listener, fetches the key set panels again every few seconds and swaps
//! them in, so the page stays current without reloading, and reads the same without it.
//! `Content-Security-Policy: default-src 'self'`: nothing is loaded from anywhere else, and
//! nothing inline runs.

mod rates;

pub use rates::{sample_rates, Rates};

use crate::core::timeline::{escape, relative, roughly, utc, KeySetPlan};
use crate::server::http::ApiError;
use crate::server::state::AppState;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::Full;
use hyper::body::Body as _;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::{ready, Ready};
use std::sync::Arc;

/// What the listener answers with.
pub type Response = http::Response<Full<Bytes>>;

/// Seconds between two refreshes of the page's panels.
pub const REFRESH_SECONDS: u32 = 5;
/// Lifecycle events shown per key set.
const EVENTS_SHOWN: usize = 8;

const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");

const HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");
const JS: HeaderValue = HeaderValue::from_static("text/javascript; charset=utf-8");
const CSS: HeaderValue = HeaderValue::from_static("text/css; charset=utf-8");
const READ_METHODS: HeaderValue = HeaderValue::from_static("GET, HEAD");

/// The headers of every answer: no other origin, no inline code, no framing, no caching,
/// no sniffing, no referrer.
fn protect(headers: &mut http::HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The console listener's service; one per connection, all sharing the state.
#[derive(Clone)]
pub struct Console {
    state: Arc<AppState>,
    rates: Arc<Rates>,
}

impl Console {
    /// The console of `state`, with the signature rates `rates` collects.
    pub fn new(state: Arc<AppState>, rates: Arc<Rates>) -> Console {
        Console { state, rates }
    }

    fn answer(&self, method: &Method, path: &str) -> Response {
        if method != Method::GET && method != Method::HEAD {
            let mut response = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the console is read-only: use GET or HEAD",
            )
            .response::<Full<Bytes>>();
            response.headers_mut().insert(header::ALLOW, READ_METHODS);
            return response;
        }
        match path {
            "/" => ok(HTML, self.page().into()),
            "/panels" => ok(HTML, self.panels().into()),
            "/console.js" => ok(JS, Bytes::from_static(SCRIPT.as_bytes())),
            "/console.css" => ok(CSS, Bytes::from_static(STYLE.as_bytes())),
            _ => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such path on the console listener; the console is at /",
            )
            .response::<Full<Bytes>>(),
        }
    }

    /// The whole page, its panels as of now.
    fn page(&self) -> String {
        format!(
            r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>keyturn console</title>
<link rel="stylesheet" href="/console.css">
<script src="/console.js" defer></script>
</head>
<body>
<header><h1>keyturn</h1><p>Read-only console: key timelines, health and lifecycle events. It refreshes every {REFRESH_SECONDS} s. <span id="status">static</span></p></header>
<main id="panels" data-refresh="{REFRESH_SECONDS}">
{}</main>
<footer>Shows what keyturn's public listener and /metrics publish, and the lifecycle lines of its audit log; takes no action. Times are UTC.</footer>
</body>
</html>
"#,
            self.panels()
        )
    }

    /// The panels: one per key set, and a line on the whole daemon.
    fn panels(&self) -> String {
        let state = &self.state;
        let now = state.clock.now();
        let keysets = state.keysets.load();
        let events = state.audit.recent_lifecycle();
        let mut out = String::with_capacity(16 * 1024);
        let audit = if state.audit.is_healthy() {
            r#"<span class="ok">writable</span>"#
        } else {
            r#"<span class="bad">not writable: signing is refused</span>"#
        };
        let _ = writeln!(
            out,
            r#"<p class="summary" data-now="{now}">As of {}. Audit log: {audit}.</p>"#,
            utc(now)
        );
        for keyset in keysets.iter() {
            let view = crate::server::http::api::keyset_view(keyset, now);
            let plan = match serde_json::from_value::<KeySetPlan>(view) {
                Ok(plan) => plan,
                Err(e) => {
                    tracing::error!(keyset = %keyset.name(), error = %e, "console: the key set's view does not read as a plan");
                    continue;
                }
            };
            let published = keyset.view();
            let panel = Panel {
                plan: &plan,
                now,
                jwks_version: published.doc.jwks_version,
                backend_up: keyset.backend_ok(),
                not_ready: keyset.not_ready_reason(now),
                rates: &self.rates.per_second(keyset.name()),
                events: events.iter().filter(|e| e.keyset == plan.name),
            };
            panel.write(&mut out);
        }
        out
    }
}

/// What one key set's panel shows.
struct Panel<'a, E> {
    plan: &'a KeySetPlan,
    now: i64,
    jwks_version: u64,
    backend_up: bool,
    not_ready: Option<String>,
    rates: &'a [f64],
    events: E,
}

impl<'a, E: Iterator<Item = &'a crate::infra::audit::LifecycleLine>> Panel<'a, E> {
    fn write(self, out: &mut String) {
        let plan = self.plan;
        let name = escape(&plan.name);
        let (ready_class, ready) = match &self.not_ready {
            None => ("ok", "ready".to_owned()),
            Some(why) => ("bad", format!("not ready: {}", escape(why))),
        };
        let _ = write!(
            out,
            r#"<section class="keyset" id="keyset-{name}" data-keyset="{name}"><h2>{name} <span class="muted">{}</span> <span class="{ready_class}">{}</span></h2><div class="row"><dl class="facts">"#,
            escape(&plan.algorithm),
            if self.not_ready.is_none() {
                "ready"
            } else {
                "not ready"
            },
        );
        let signing = plan
            .active_kid
            .as_deref()
            .map_or_else(|| "none".to_owned(), escape);
        let next_event = plan.next_event.map_or_else(
            || "none scheduled".to_owned(),
            |t| format!("{} ({})", utc(t), relative(t, self.now)),
        );
        let backend = if self.backend_up {
            r#"<span class="ok">up</span>"#
        } else {
            r#"<span class="bad">down (last call failed)</span>"#
        };
        let published = plan.published_kids().count();
        let _ = write!(
            out,
            r#"<dt>signing key</dt><dd class="kid active-kid">{signing}</dd><dt>next event</dt><dd class="next-event">{next_event}</dd><dt>JWKS version</dt><dd class="jwks-version">{}</dd><dt>keys in the JWKS</dt><dd>{published}</dd><dt>backend</dt><dd class="backend">{backend}</dd><dt>readiness</dt><dd class="readiness {ready_class}">{ready}</dd><dt>JWKS max-age</dt><dd>{}</dd><dt>signatures/s</dt><dd class="rate">{}</dd></dl>"#,
            self.jwks_version,
            roughly(plan.jwks_max_age),
            sparkline(self.rates),
        );
        let _ = write!(
            out,
            r#"<div class="picture">{}</div></div><h3>Last lifecycle events</h3><table class="events"><tbody>"#,
            crate::core::timeline::render(plan, self.now)
        );
        let mut any = false;
        for e in self.events.take(EVENTS_SHOWN) {
            any = true;
            let _ = write!(
                out,
                r#"<tr><td>{}</td><td class="event">{}</td><td class="kid">{}</td></tr>"#,
                utc(e.ts),
                escape(&e.event),
                escape(e.kid.as_deref().unwrap_or("")),
            );
        }
        if !any {
            out.push_str(r#"<tr><td class="muted">none in the audit log's recent lines</td></tr>"#);
        }
        out.push_str("</tbody></table></section>\n");
    }
}

/// Signatures per second, oldest first, as a small line with the latest rate and the peak.
fn sparkline(rates: &[f64]) -> String {
    const W: f64 = 180.0;
    const H: f64 = 28.0;
    if rates.len() < 2 {
        return r#"<span class="muted">measuring (a point every 10 s)</span>"#.to_owned();
    }
    let peak = rates.iter().copied().fold(0.0_f64, f64::max);
    let step = W / (rates.len() - 1) as f64;
    let points: Vec<String> = rates
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let y = if peak > 0.0 { H - r / peak * H } else { H };
            format!("{:.1},{:.1}", i as f64 * step, y + 1.0)
        })
        .collect();
    let last = rates.last().copied().unwrap_or(0.0);
    let minutes = rates.len() as f64 * rates::SAMPLE_EVERY.as_secs_f64() / 60.0;
    format!(
        r##"<svg class="sparkline" width="{W}" height="{}" viewBox="0 0 {W} {}" role="img" aria-label="signatures per second over the last {minutes:.0} min"><title>signatures per second over the last {minutes:.0} min; peak {peak:.1}/s</title><polyline points="{}" fill="none" stroke="#2e8b48" stroke-width="1.5"/></svg> <span class="rate-now">{last:.1}/s</span> <span class="muted">peak {peak:.1}/s</span>"##,
        H + 2.0,
        H + 2.0,
        points.join(" ")
    )
}

fn ok(content_type: HeaderValue, body: Bytes) -> Response {
    let mut response = Response::new(Full::new(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    response
}

impl<B> hyper::service::Service<Request<B>> for Console {
    type Response = Response;
    type Error = Infallible;
    type Future = Ready<Result<Response, Infallible>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        let mut response = self.answer(req.method(), req.uri().path());
        protect(response.headers_mut());
        if req.method() == Method::HEAD {
            let length = response.body().size_hint().exact().unwrap_or(0);
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            *response.body_mut() = Full::default();
        }
        ready(Ok(response))
    }
}

/// The console needs no caller identity: it answers everyone the same, read-only.
impl crate::server::http::serve::PerConnection for Console {
    type Body = Full<Bytes>;
    type Service = Self;
    fn service(&self, _: crate::server::auth::Peer) -> Self {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparkline_scales_to_its_peak() {
        let svg = sparkline(&[0.0, 5.0, 10.0]);
        assert!(
            svg.contains(r#"points="0.0,29.0 90.0,15.0 180.0,1.0""#),
            "{svg}"
        );
        assert!(svg.contains("10.0/s"), "{svg}");
        assert!(sparkline(&[1.0]).contains("measuring"));
        // No traffic: a flat line at the bottom, not a division by zero.
        assert!(sparkline(&[0.0, 0.0]).contains(r#"points="0.0,29.0 180.0,29.0""#));
    }
}
