//! The public listener: JWKS, single keys, OIDC discovery, health. No authentication, no
//! signing or admin routes. Every body is pre-serialized; no request reaches a backend.

use super::error::ApiError;
use crate::app::AppState;
use crate::jwks::{Published, Served};
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use std::sync::Arc;

const JWK_SET: HeaderValue = HeaderValue::from_static("application/jwk-set+json");
const JWK: HeaderValue = HeaderValue::from_static("application/jwk+json");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

const ANY: HeaderValue = HeaderValue::from_static("*");
const EXPOSED: HeaderValue = HeaderValue::from_static("etag, last-modified, cache-control");
const READ_METHODS: HeaderValue = HeaderValue::from_static("GET, HEAD");
const PREFLIGHT_MAX_AGE: HeaderValue = HeaderValue::from_static("86400");

/// The public router. Documents are readable from any origin (CORS): every response
/// carries `Access-Control-Allow-Origin: *`, and a preflight `OPTIONS` is answered for GET
/// and HEAD. The headers are constants set by the handlers, not a per-request layer:
/// this listener must serve as fast as a static file server.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/.well-known/jwks.json",
            get(default_jwks).options(preflight),
        )
        .route(
            "/.well-known/openid-configuration",
            get(default_discovery).options(preflight),
        )
        .route("/keysets/{name}/jwks.json", get(jwks).options(preflight))
        .route("/keysets/{name}/jwks/{kid}", get(jwk).options(preflight))
        .route(
            "/keysets/{name}/.well-known/openid-configuration",
            get(discovery).options(preflight),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// Adds the CORS headers of a simple cross-origin read.
fn cors(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, ANY);
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED);
    response
}

/// A document, or its error, with the CORS headers.
fn document(result: Result<Response, ApiError>) -> Response {
    cors(result.unwrap_or_else(IntoResponse::into_response))
}

/// A CORS preflight: any origin may GET and HEAD, with no credentials or extra headers.
async fn preflight() -> Response {
    let mut response = cors(StatusCode::NO_CONTENT.into_response());
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, READ_METHODS);
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE);
    response
}

async fn not_found() -> Response {
    document(Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such path on the JWKS listener",
    )))
}

fn published(state: &AppState, name: Option<&str>) -> Result<Arc<Published>, ApiError> {
    let keysets = state.keysets.load();
    let keyset = match name {
        Some(name) => keysets
            .get(name)
            .ok_or_else(|| ApiError::unknown_keyset(name))?,
        None => keysets
            .default()
            .ok_or_else(|| ApiError::unknown_keyset("default"))?,
    };
    Ok(keyset.published())
}

/// A conditional response over pre-serialized bytes (handlers pass it through `document`).
fn respond(req: &HeaderMap, p: &Published, served: &Served, content_type: HeaderValue) -> Response {
    let fresh = match req.get(header::IF_NONE_MATCH) {
        Some(inm) => etag_matches(inm, &served.etag),
        // Our Last-Modified is parsed only when asked about (`zip` would parse it eagerly,
        // on every request).
        None => req
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .is_some_and(|since| {
                p.last_modified
                    .to_str()
                    .ok()
                    .and_then(|v| httpdate::parse_http_date(v).ok())
                    .is_some_and(|modified| modified <= since)
            }),
    };
    // Built in place, sized once: `document` and hyper add theirs to the same map.
    let mut response = if fresh {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        Response::new(Body::from(served.body.clone()))
    };
    let headers = response.headers_mut();
    headers.reserve(8);
    headers.insert(header::ETAG, served.etag.clone());
    headers.insert(header::LAST_MODIFIED, p.last_modified.clone());
    headers.insert(header::CACHE_CONTROL, p.cache_control.clone());
    if !fresh {
        headers.insert(header::CONTENT_TYPE, content_type);
    }
    response
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

// Handlers take the request itself: a `HeaderMap` extractor would copy the request's
// headers to read two of them.
async fn default_jwks(State(s): State<Arc<AppState>>, r: Request) -> Response {
    document(published(&s, None).map(|p| respond(r.headers(), &p, &p.jwks, JWK_SET)))
}

async fn default_discovery(State(s): State<Arc<AppState>>, r: Request) -> Response {
    document(published(&s, None).map(|p| respond(r.headers(), &p, &p.discovery, JSON)))
}

/// Path parameters, or the 400 for a path axum cannot decode (invalid percent-encoding),
/// with the CORS headers like every other answer of this listener.
type Params<T> = Result<Path<T>, PathRejection>;

fn params<T>(p: Params<T>) -> Result<T, ApiError> {
    p.map(|Path(t)| t).map_err(|_| {
        ApiError::bad_request(
            "bad_path",
            "a path segment is not valid percent-encoded UTF-8",
        )
    })
}

async fn jwks(State(s): State<Arc<AppState>>, name: Params<String>, r: Request) -> Response {
    document(params(name).and_then(|name| {
        published(&s, Some(&name)).map(|p| respond(r.headers(), &p, &p.jwks, JWK_SET))
    }))
}

async fn discovery(State(s): State<Arc<AppState>>, name: Params<String>, r: Request) -> Response {
    document(params(name).and_then(|name| {
        published(&s, Some(&name)).map(|p| respond(r.headers(), &p, &p.discovery, JSON))
    }))
}

async fn jwk(
    State(s): State<Arc<AppState>>,
    names: Params<(String, String)>,
    r: Request,
) -> Response {
    document(params(names).and_then(|(name, kid)| {
        let p = published(&s, Some(&name))?;
        let served = p.by_kid.get(&kid).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_kid",
                "no published key with that kid in this key set",
            )
        })?;
        Ok(respond(r.headers(), &p, served, JWK))
    }))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    let now = s.clock.now();
    let keysets = s.keysets.load();
    let not_ready: Vec<&str> = keysets
        .iter()
        .filter(|k| !k.ready(now))
        .map(|k| k.name())
        .collect();
    let audit_ok = s.audit.is_healthy();
    if not_ready.is_empty() && audit_ok {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let body = serde_json::json!({"ready": false, "keysets_not_ready": not_ready, "audit_log_writable": audit_ok});
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        s.metrics.render(&s),
    )
        .into_response()
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
}
