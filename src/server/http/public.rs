//! The public listener: JWKS, single keys, OIDC discovery, health. No authentication, no
//! signing or admin routes. Every body is pre-serialized; no request reaches a backend.
//!
//! It is a plain hyper service, not an axum router: it must serve as fast as a static file
//! server, and a router's per-request extensions, URL parameters and boxed bodies cost a
//! JWKS GET about a third of its instructions. A document's response is its
//! pre-serialized body and a clone of its pre-built header map.

use super::error::ApiError;
use crate::core::published::{cors_headers, Published, Served};
use crate::server::state::AppState;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::Full;
use hyper::body::Body as _;
use std::borrow::Cow;
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// What the listener answers with.
pub type Response = http::Response<Full<Bytes>>;

const READ_METHODS: HeaderValue = HeaderValue::from_static("GET, HEAD");
const DOCUMENT_METHODS: HeaderValue = HeaderValue::from_static("GET, HEAD, OPTIONS");
const PREFLIGHT_MAX_AGE: HeaderValue = HeaderValue::from_static("86400");
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
// What the body is (prometheus-client writes OpenMetrics: `_total` samples of a counter
// family, `# EOF`); Prometheus reads it as such.
const PROMETHEUS: HeaderValue =
    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// The public listener's service; one per connection, all sharing the state.
#[derive(Clone)]
pub struct PublicService(pub Arc<AppState>, pub Serves);

/// Which of the public paths a listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serves {
    /// Every path: documents, health, readiness and `/metrics`.
    All,
    /// Every path but `/metrics` (served by `metrics_listen`).
    AllButMetrics,
    /// `/metrics` only (`metrics_listen`).
    Metrics,
}

impl Serves {
    fn answers(self, route: &Route<'_>) -> bool {
        match self {
            Serves::All => true,
            Serves::AllButMetrics => *route != Route::Metrics,
            Serves::Metrics => *route == Route::Metrics,
        }
    }
}

impl<B> hyper::service::Service<Request<B>> for PublicService {
    type Response = Response;
    type Error = Infallible;
    type Future = Ready<Result<Response, Infallible>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        let mut response = answer(
            &self.0,
            self.1,
            req.method(),
            req.uri().path(),
            req.headers(),
        );
        if req.method() == Method::HEAD {
            // hyper leaves out a HEAD answer's body on HTTP/1 only; on HTTP/2 it would send
            // it. The length stays in Content-Length.
            let length = response.body().size_hint().exact().unwrap_or(0);
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            *response.body_mut() = Full::default();
        }
        ready(Ok(response))
    }
}

/// A path of this listener, its parameters still percent-encoded.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    /// The JWK Set of a key set, or of the default one.
    Jwks(Option<&'a str>),
    /// The OIDC discovery document of a key set, or of the default one.
    Discovery(Option<&'a str>),
    /// One key of a key set: name and kid.
    Jwk(&'a str, &'a str),
    /// A status list of a key set: name and the list's number.
    StatusList(&'a str, &'a str),
    Healthz,
    Readyz,
    Metrics,
    NotFound,
}

impl<'a> Route<'a> {
    fn of(path: &'a str) -> Self {
        match path {
            "/.well-known/jwks.json" => return Route::Jwks(None),
            "/.well-known/openid-configuration" => return Route::Discovery(None),
            "/healthz" => return Route::Healthz,
            "/readyz" => return Route::Readyz,
            "/metrics" => return Route::Metrics,
            _ => {}
        }
        let Some((name, rest)) = path
            .strip_prefix("/keysets/")
            .and_then(|p| p.split_once('/'))
            .filter(|(name, _)| !name.is_empty())
        else {
            return Route::NotFound;
        };
        match rest {
            "jwks.json" => Route::Jwks(Some(name)),
            ".well-known/openid-configuration" => Route::Discovery(Some(name)),
            _ => {
                let one = |prefix: &str| {
                    rest.strip_prefix(prefix)
                        .filter(|s| !s.is_empty() && !s.contains('/'))
                };
                if let Some(kid) = one("jwks/") {
                    Route::Jwk(name, kid)
                } else if let Some(list) = one("statuslists/") {
                    Route::StatusList(name, list)
                } else {
                    Route::NotFound
                }
            }
        }
    }

    /// A document, readable cross-origin (CORS), rather than an operator's endpoint.
    fn is_document(&self) -> bool {
        matches!(
            self,
            Route::Jwks(_)
                | Route::Discovery(_)
                | Route::Jwk(..)
                | Route::StatusList(..)
                | Route::NotFound
        )
    }
}

fn answer(
    state: &AppState,
    serves: Serves,
    method: &Method,
    path: &str,
    req: &HeaderMap,
) -> Response {
    let route = Some(Route::of(path))
        .filter(|r| serves.answers(r))
        .unwrap_or(Route::NotFound);
    let read = method == Method::GET || method == Method::HEAD;
    let result = match route {
        Route::NotFound => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such path on the JWKS listener",
        )),
        _ if method == Method::OPTIONS && route.is_document() => return preflight(),
        _ if !read => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this path is read-only: use GET or HEAD",
        )),
        Route::Jwks(name) => published(state, name).map(|p| respond(state, req, &p, &p.jwks)),
        Route::Discovery(name) => {
            published(state, name).map(|p| respond(state, req, &p, &p.discovery))
        }
        Route::Jwk(name, kid) => jwk(state, req, name, kid),
        Route::StatusList(name, list) => status_list(state, req, name, list),
        Route::Healthz => return plain(StatusCode::OK, TEXT, Bytes::from_static(b"ok\n")),
        Route::Readyz => return readyz(state),
        Route::Metrics => {
            return plain(
                StatusCode::OK,
                PROMETHEUS,
                state
                    .metrics
                    .render(
                        state.keysets.load().iter(),
                        state.clock.now(),
                        state.audit.is_healthy(),
                    )
                    .into(),
            )
        }
    };
    result.unwrap_or_else(|e| {
        let mut response = e.response::<Full<Bytes>>();
        let headers = response.headers_mut();
        if route.is_document() {
            headers.extend(cors_headers());
        }
        if e.status == StatusCode::METHOD_NOT_ALLOWED {
            let allow = if route.is_document() {
                DOCUMENT_METHODS
            } else {
                READ_METHODS
            };
            headers.insert(header::ALLOW, allow);
        }
        response
    })
}

fn plain(status: StatusCode, content_type: HeaderValue, body: Bytes) -> Response {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    response
}

/// A CORS preflight: any origin may GET and HEAD, with no credentials or extra headers.
fn preflight() -> Response {
    let mut response = Response::new(Full::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let mut headers = cors_headers();
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, READ_METHODS);
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE);
    *response.headers_mut() = headers;
    response
}

/// A path segment decoded, or the 400 for one that is not percent-encoded UTF-8.
fn decoded(segment: &str) -> Result<Cow<'_, str>, ApiError> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| {
            ApiError::bad_request(
                "bad_path",
                "a path segment is not valid percent-encoded UTF-8",
            )
        })
}

/// The published view of the key set named by a still percent-encoded path segment, or of
/// the default key set.
fn published(
    state: &AppState,
    name: Option<&str>,
) -> Result<arc_swap::Guard<Arc<Published>>, ApiError> {
    let keysets = state.keysets.load();
    let keyset = match name {
        Some(name) => {
            let name = decoded(name)?;
            keysets
                .get(&name)
                .ok_or_else(|| ApiError::unknown_keyset(&name))?
        }
        None => keysets
            .default()
            .ok_or_else(|| ApiError::unknown_keyset("default"))?,
    };
    Ok(keyset.view())
}

fn jwk(state: &AppState, req: &HeaderMap, name: &str, kid: &str) -> Result<Response, ApiError> {
    // Both segments are decoded before the lookup: a bad one is a 400 whatever the key set.
    let kid = decoded(kid)?;
    let p = published(state, Some(name))?;
    let served = p.by_kid.get(kid.as_ref()).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_kid",
            "no published key with that kid in this key set",
        )
    })?;
    Ok(respond(state, req, &p, served))
}

/// A Status List Token, as last built (`server::statuslists`).
fn status_list(
    state: &AppState,
    req: &HeaderMap,
    name: &str,
    list: &str,
) -> Result<Response, ApiError> {
    let list = decoded(list)?;
    let keysets = state.keysets.load();
    let name = decoded(name)?;
    let keyset = keysets
        .get(&name)
        .ok_or_else(|| ApiError::unknown_keyset(&name))?;
    let unknown = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_status_list",
            "no status list of that number in this key set",
        )
    };
    let status = keyset.status.as_ref().ok_or_else(unknown)?;
    // The number as the URIs in tokens write it: digits, no leading zero.
    let number = Some(list.as_ref())
        .filter(|n| !n.starts_with('0') && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(unknown)?;
    let view = status.view();
    let Some(current) = view.list(number) else {
        return Err(unknown());
    };
    let now = state.clock.now();
    // A replica whose reads of the shared state fail may not know of a change another made.
    if !keyset.in_sync(now) {
        return Err(ApiError::retry_after(
            1,
            "status_list_unavailable",
            "this replica has lost touch with the shared state; ask another",
        ));
    }
    let served = status.served();
    let Some(list) = served.iter().find(|s| s.list == number) else {
        return Err(ApiError::retry_after(
            1,
            "status_list_unavailable",
            "the status list is being signed; ask again shortly",
        ));
    };
    // A change not signed for longer than a replica may lag, or a list past its `exp`:
    // serving it would show a revoked token as valid.
    let grace = keyset.config.timing.sync_delay.max(5);
    let unsigned = list.lst != current.lst && now - status.note_unsigned(now) > grace;
    if unsigned || now >= list.refresh_at + status.config.ttl {
        return Err(ApiError::retry_after(
            1,
            "status_list_unavailable",
            "the status list cannot be signed now; see the daemon's log",
        ));
    }
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .is_some_and(|inm| etag_matches(inm, &list.served.etag));
    Ok(answer_with(&list.served, fresh))
}

/// `served` as a `200`, or as a `304` when the client's copy is `fresh`.
fn answer_with(served: &Served, fresh: bool) -> Response {
    let (status, body, headers) = if fresh {
        (StatusCode::NOT_MODIFIED, Bytes::new(), &served.not_modified)
    } else {
        (StatusCode::OK, served.body.clone(), &served.ok)
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers.clone();
    response
}

/// A conditional response over a pre-serialized body and its pre-built headers.
fn respond(state: &AppState, req: &HeaderMap, p: &Published, served: &Served) -> Response {
    let fresh = match req.get(header::IF_NONE_MATCH) {
        Some(inm) => etag_matches(inm, &served.etag),
        None => req
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .is_some_and(|since| p.modified <= since),
    };
    let mut response = answer_with(served, fresh);
    // Until the change's second is over, dated earlier (see `last_modified`); after, the
    // pre-built header holds, and the clock is no longer read.
    if !p.settled.load(Ordering::Relaxed) {
        let changed = p.doc.jwks_changed_at;
        let dated = last_modified(changed, state.clock.now());
        if dated == changed {
            p.settled.store(true, Ordering::Relaxed);
        } else {
            let at = UNIX_EPOCH + Duration::from_secs(dated.max(0).unsigned_abs());
            if let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(at)) {
                response.headers_mut().insert(header::LAST_MODIFIED, value);
            }
        }
    }
    response
}

/// The `Last-Modified` to send at `now` for a set that changed at `changed` (seconds).
/// Dates count whole seconds: a set that changed during this second may change again
/// within it, under the same date, and a client holding the first would take it for the
/// second. Dated a second earlier until its second is over, it is not: the client's
/// `If-Modified-Since` then asks once more (and gets this set again). A change time ahead
/// of our clock (written by a replica whose clock runs fast) is dated a second before now
/// too: never after the response's `Date`, and never early enough for a `304`.
fn last_modified(changed: i64, now: i64) -> i64 {
    changed.min(now.saturating_sub(1))
}

/// RFC 9110 section 13.1.2: `*`, or any listed tag equal to ours (weak comparison).
fn etag_matches(header: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(list) = header.to_str() else {
        return false;
    };
    let ours = etag.as_bytes();
    list.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == ours)
}

fn readyz(s: &AppState) -> Response {
    let now = s.clock.now();
    let keysets = s.keysets.load();
    let reasons: serde_json::Map<String, serde_json::Value> = keysets
        .iter()
        .filter_map(|k| Some((k.name().to_owned(), k.not_ready_reason(now)?.into())))
        .collect();
    let audit_ok = s.audit.is_healthy();
    if reasons.is_empty() && audit_ok {
        plain(StatusCode::OK, TEXT, Bytes::from_static(b"ready\n"))
    } else {
        let not_ready: Vec<&String> = reasons.keys().collect();
        let body = serde_json::json!({"ready": false, "keysets_not_ready": not_ready, "reasons": reasons, "audit_log_writable": audit_ok});
        let body = serde_json::to_vec(&body).unwrap_or_default();
        plain(StatusCode::SERVICE_UNAVAILABLE, JSON, body.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_matching() {
        let ours = HeaderValue::from_static("\"3-abcd\"");
        for (header, hit) in [
            ("\"3-abcd\"", true),
            ("W/\"3-abcd\"", true),
            ("\"2-ffff\", \"3-abcd\"", true),
            ("*", true),
            ("\"3-abce\"", false),
            ("3-abcd", false),
        ] {
            assert_eq!(
                etag_matches(&HeaderValue::from_static(header), &ours),
                hit,
                "{header}"
            );
        }
    }

    #[test]
    fn routes() {
        for (path, route) in [
            ("/.well-known/jwks.json", Route::Jwks(None)),
            ("/.well-known/openid-configuration", Route::Discovery(None)),
            ("/keysets/a/jwks.json", Route::Jwks(Some("a"))),
            ("/keysets/a%20b/jwks.json", Route::Jwks(Some("a%20b"))),
            (
                "/keysets/a/.well-known/openid-configuration",
                Route::Discovery(Some("a")),
            ),
            ("/keysets/a/jwks/k1", Route::Jwk("a", "k1")),
            ("/healthz", Route::Healthz),
            ("/readyz", Route::Readyz),
            ("/metrics", Route::Metrics),
            ("/", Route::NotFound),
            ("/keysets//jwks.json", Route::NotFound),
            ("/keysets/a/jwks/", Route::NotFound),
            ("/keysets/a/jwks/k1/x", Route::NotFound),
            ("/keysets/a/jwks.json/", Route::NotFound),
            ("/keysets/a", Route::NotFound),
            ("/.well-known/jwks.json/", Route::NotFound),
            ("/v1/keysets/a/sign", Route::NotFound),
        ] {
            assert_eq!(Route::of(path), route, "{path}");
        }
    }

    #[test]
    fn a_set_is_dated_a_second_early_during_the_second_it_changed() {
        const T: i64 = 1_800_000_000;
        // Changed during this second: a second change within it would share the date.
        assert_eq!(last_modified(T, T), T - 1);
        // A later second: its own date, so If-Modified-Since with it gets 304.
        assert_eq!(last_modified(T, T + 1), T);
        assert_eq!(last_modified(T, T + 3600), T);
        // Changed "later" by a replica whose clock is ahead: not dated after now.
        assert_eq!(last_modified(T + 30, T), T - 1);
        assert_eq!(last_modified(T + 30, T + 10), T + 9);
    }

    #[test]
    fn undecodable_segments_are_a_bad_request() {
        assert_eq!(decoded("a%20b").unwrap(), "a b");
        let e = decoded("%FF").unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "bad_path"));
    }
}
