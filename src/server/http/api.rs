//! The API listener: signing for issuers, and admin routes for admin clients, each over
//! the key sets in its `keysets`.
//!
//! Every caller is a named client: a bearer token (TCP, optionally TLS), a TLS client
//! certificate, or Unix peer credentials (API socket). Nobody anonymous signs.

use super::error::ApiError;
use crate::config::ClientConfig;
use crate::core::keyset::KeySet;
use crate::core::lifecycle::LifecycleError;
use crate::core::policy::{check, compact, new_jti, Checked, SignRequest};
use crate::core::statuslist::Slot;
use crate::infra::audit::Record;
use crate::server::auth::{identify, AuthFailure, Peer};
use crate::server::sign::{SignError, Transaction};
use crate::server::state::AppState;
use crate::server::statuslists::serve_new;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use http::{header, HeaderMap, StatusCode};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Most tokens in one batch request.
pub const MAX_BATCH: usize = 256;

const JSON: http::HeaderValue = http::HeaderValue::from_static("application/json");

/// The API router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/keysets/{name}/sign", post(sign))
        .route("/v1/keysets/{name}/sign-batch", post(sign_batch))
        .route("/v1/keysets", get(list_keysets))
        .route("/v1/keysets/{name}", get(show_keyset))
        .route("/v1/keysets/{name}/rotate", post(rotate))
        .route("/v1/keysets/{name}/keys/{kid}/revoke", post(revoke))
        .route(
            "/v1/keysets/{name}/token-status",
            post(super::token_status::token_status),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not take that method (see the Allow header)",
    )
}

/// Path parameters, refused as a JSON error like every other API error (axum's own
/// rejection is plain text), e.g. a name whose percent-encoding is not UTF-8.
pub(super) struct Params<T>(pub(super) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for Params<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(params)| Params(params))
            .map_err(|e| ApiError::bad_request("bad_path", e.body_text()))
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such path on the API listener",
    )
}

/// A client of the configuration in force, shared rather than copied (a `ClientConfig`
/// holds several vectors and strings; cloning it cost allocations on every request).
#[derive(Clone)]
pub(super) struct Caller {
    clients: Arc<Vec<ClientConfig>>,
    index: usize,
}

impl std::ops::Deref for Caller {
    type Target = ClientConfig;

    fn deref(&self) -> &ClientConfig {
        // `index` was found in this very list.
        &self.clients[self.index]
    }
}

/// The caller, or 401 (logged and counted: [`refused`]).
pub(super) fn caller(
    state: &AppState,
    peer: &Peer,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    let mut authorization = headers.get_all(header::AUTHORIZATION).iter();
    let bearer = match (authorization.next(), authorization.next()) {
        (None, _) => None,
        (Some(v), None) => Some(
            bearer_token(v).ok_or_else(|| refused(state, peer, AuthFailure::BadAuthorization))?,
        ),
        // Two credentials: which one counts would be a guess.
        (Some(_), Some(_)) => return Err(refused(state, peer, AuthFailure::BadAuthorization)),
    };
    let clients = state.clients.load_full();
    let index =
        identify(&clients, peer, bearer).map_err(|failure| refused(state, peer, failure))?;
    Ok(Caller { clients, index })
}

/// A failed authentication, counted and logged (rate-limited), as the 401 it answers.
fn refused(state: &AppState, peer: &Peer, failure: AuthFailure) -> ApiError {
    state.metrics.auth_failure(peer.listener, failure.reason());
    crate::server::auth::log_failure(peer, failure);
    match failure {
        AuthFailure::BadAuthorization => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_authorization",
            "use one `Authorization: Bearer <token>` header",
        ),
        _ => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "unknown caller: send a client's bearer token (or connect with its certificate or over the API socket as its uid)",
        ),
    }
}

/// The token of a `Bearer` credential (the scheme is case-insensitive, RFC 9110 11.1).
fn bearer_token(value: &http::HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

pub(super) fn keyset(state: &AppState, name: &str) -> Result<Arc<KeySet>, ApiError> {
    state
        .keysets
        .load()
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::unknown_keyset(name))
}

fn require_admin(client: &ClientConfig) -> Result<(), ApiError> {
    if client.admin {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "admin_only",
            format!(
                "client {:?} is not an admin client (set admin = true)",
                client.name
            ),
        ))
    }
}

/// Key set `name` if the admin `client` administers it: 404 if there is none, 403 if it is
/// not in the client's `keysets`.
fn administered(
    state: &AppState,
    client: &ClientConfig,
    name: &str,
) -> Result<Arc<KeySet>, ApiError> {
    require_admin(client)?;
    let keyset = keyset(state, name)?;
    if !client.may_use(name) {
        return Err(ApiError::forbidden(
            "keyset_not_allowed",
            format!(
                "client {:?} may not administer key set {name:?}; add it to the client's \
                 keysets ([\"*\"] for all)",
                client.name
            ),
        ));
    }
    Ok(keyset)
}

/// Why the API refuses a request before any route sees it, if it does.
///
/// The API is for programs, not web pages: a page could otherwise reach a loopback listener
/// or use a client certificate its browser holds, and revoke keys (kids are public). A
/// request a browser marks as sent by a page (an `Origin` header, or `Sec-Fetch-Site` other
/// than `same-origin` or `none`; a page cannot set or drop either) is refused, and a POST
/// carries JSON or nothing, never a form a page may send without a CORS preflight. Every
/// API request passes here (`serve::WithPeer`), whatever its route.
pub fn refusal(method: &http::Method, headers: &HeaderMap, has_body: bool) -> Option<ApiError> {
    let from_page = headers.contains_key(header::ORIGIN)
        || headers
            .get_all("sec-fetch-site")
            .iter()
            .any(|site| site != "same-origin" && site != "none");
    if from_page {
        return Some(ApiError::forbidden(
            "browser_request",
            "the API does not take requests from web pages (an Origin header, or \
             Sec-Fetch-Site other than same-origin or none): call it from a program",
        ));
    }
    if method != http::Method::POST {
        return None;
    }
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let json = match (types.next(), types.next()) {
        (None, _) => !has_body,
        (Some(value), None) => value
            .to_str()
            .ok()
            .and_then(|ct| ct.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json")),
        (Some(_), Some(_)) => false,
    };
    (!json).then(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the request as Content-Type: application/json (or, where no body is \
             needed, with no body and no Content-Type)",
        )
    })
}

/// Reads a JSON body's bytes (its content type checked by [`refusal`]): size limit, read
/// timeout. [`parse`] reads them.
pub(super) async fn json_body(
    headers: &HeaderMap,
    body: Body,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body may be at most {MAX_BODY} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the request body arrived too slowly",
        )),
        Ok(Err(e)) => {
            let limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(if limit {
                too_large()
            } else {
                ApiError::bad_request("bad_body", "the request body could not be read")
            })
        }
        Ok(Ok(b)) => Ok(b),
    }
}

/// Parses a JSON object (UTF-8, syntax, shape), borrowing from `bytes` where `T` does.
pub(super) fn parse<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    // serde's derive also takes a struct's fields as an array, in order: not an API form.
    let first = bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first == Some(&b'[') {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "the JSON must be an object, not an array",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("the JSON does not have the expected shape: {e}"),
            ),
            _ => ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}")),
        }
    })
}

/// The sign response. Its kid is borrowed from the published key, not copied per token.
#[derive(Debug, Serialize)]
pub struct Signed<'k> {
    /// The compact JWS.
    pub token: String,
    /// Its key.
    pub kid: &'k str,
    /// Its id.
    pub jti: String,
    /// Its expiry.
    pub exp: i64,
    /// Its status list entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusRef>,
}

/// A token's status list entry, as the sign response shows it.
#[derive(Debug, Serialize)]
pub struct StatusRef {
    /// The list's URI.
    #[serde(serialize_with = "shared_str")]
    pub uri: Arc<str>,
    /// The index.
    pub idx: u64,
}

fn shared_str<S: serde::Serializer>(s: &Arc<str>, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_str(s)
}

impl From<Slot> for StatusRef {
    fn from(slot: Slot) -> Self {
        StatusRef {
            uri: slot.uri,
            idx: slot.idx,
        }
    }
}

impl Signed<'_> {
    /// At least the size of its JSON, for sizing buffers once.
    fn json_size(&self) -> usize {
        let status = self.status.as_ref().map_or(0, |s| s.uri.len() + 48);
        self.token.len() + self.kid.len() + self.jti.len() + status + 64
    }

    /// Appends this as JSON, the bytes `serde_json` would write. The token, kid and jti
    /// are base64url and dots, which JSON takes as they are: checked in one pass, they are
    /// copied without serde's escape scan, which was the largest part of a batch response's
    /// cost after the signatures. Anything else goes through serde.
    fn write_json(&self, out: &mut Vec<u8>) {
        use crate::core::json::{push_int, push_str};
        for (key, value) in [
            (&b"{\"token\":"[..], self.token.as_str()),
            (b",\"kid\":", self.kid),
            (b",\"jti\":", &self.jti),
        ] {
            out.extend_from_slice(key);
            push_str(out, value);
        }
        out.extend_from_slice(b",\"exp\":");
        push_int(out, self.exp);
        if let Some(status) = &self.status {
            out.extend_from_slice(b",\"status\":{\"uri\":");
            push_str(out, &status.uri);
            out.extend_from_slice(b",\"idx\":");
            push_int(out, i64::try_from(status.idx).unwrap_or(i64::MAX));
            out.push(b'}');
        }
        out.push(b'}');
    }
}

/// Signs one request: policy, backend signature, audit line. Returns the response's JSON.
async fn sign_one(
    state: &AppState,
    client: &ClientConfig,
    keyset: &KeySet,
    req: &SignRequest<'_>,
) -> Result<Vec<u8>, ApiError> {
    let tx = Transaction::begin(state, keyset, state.clock.now())?;
    let key = tx.key();
    // The policy first: a refused request takes no status list entry.
    let checked = check(req, client, &keyset.config, tx.now())?;
    let slot = tx.slots(1).await?.pop();
    serve_new(state, keyset, slot.as_slice(), tx.now()).await?;
    let prepared = checked.render(&keyset.config, &key.kid, new_jti()?, slot.as_ref());
    let sig = tx.sign(prepared.signing_input.as_bytes()).await?;
    let line = tx
        .record(
            &client.name,
            Some(&prepared.jti),
            prepared.sub.as_deref(),
            prepared.aud.as_ref(),
            prepared.exp,
            slot.as_ref(),
        )
        .await?;
    tx.finish(line).await?;
    let signed = Signed {
        token: compact(prepared.signing_input, &sig),
        kid: &key.kid,
        jti: prepared.jti,
        exp: prepared.exp,
        status: slot.map(StatusRef::from),
    };
    let mut body = Vec::with_capacity(signed.json_size());
    signed.write_json(&mut body);
    Ok(body)
}

/// A signing request's caller, the key set it may sign with, and its JSON body.
async fn signing_request(
    state: &AppState,
    request: Request,
    name: &str,
) -> Result<(Caller, Arc<KeySet>, Bytes), ApiError> {
    let (parts, body) = request.into_parts();
    let (client, keyset) = signing_client(state, peer(&parts)?, &parts.headers, name)?;
    let body = json_body(&parts.headers, body, state.limits.body_timeout).await?;
    Ok((client, keyset, body))
}

fn signing_client(
    state: &AppState,
    peer: &Peer,
    headers: &HeaderMap,
    name: &str,
) -> Result<(Caller, Arc<KeySet>), ApiError> {
    let client = caller(state, peer, headers)?;
    let keyset = keyset(state, name)?;
    if !client.may_use(name) {
        return Err(ApiError::forbidden(
            "keyset_not_allowed",
            format!(
                "client {:?} may not sign with key set {name:?}; add it to the client's keysets",
                client.name
            ),
        ));
    }
    Ok((client, keyset))
}

/// The transport identity the accept loop attached to the request. Signing handlers take
/// the request whole: the `HeaderMap` and `Extension` extractors would copy the headers.
pub(super) fn peer(parts: &http::request::Parts) -> Result<&Peer, ApiError> {
    parts
        .extensions
        .get::<Arc<Peer>>()
        .map(|p| &**p)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        })
}

async fn sign(
    State(state): State<Arc<AppState>>,
    Params(name): Params<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let (client, keyset, body) = signing_request(&state, request, &name).await?;
    let body = sign_one(&state, &client, &keyset, &parse(&body)?).await?;
    Ok(json_response(body))
}

/// A batch: each item is parsed as a [`SignRequest`] by the task that signs it, so an item
/// that is not one is refused alone, like an item the policy refuses.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest<'a> {
    #[serde(borrow)]
    requests: Vec<&'a serde_json::value::RawValue>,
}

/// What one batch task wrote: the JSON result of each item it took (a token as
/// [`Signed::write_json`] writes it, or `{"error": {...}}`), back to back in one buffer,
/// and for each its index in the batch and where its JSON ends: one buffer per task, freed
/// by the connection's task, instead of three strings per item.
#[derive(Default)]
struct BatchResults {
    json: Vec<u8>,
    ends: Vec<(usize, usize)>,
}

impl BatchResults {
    /// Appends item `index`'s result; `Err` for an error that fails the whole batch (503).
    fn push(&mut self, index: usize, result: Result<Signed<'_>, ApiError>) -> Result<(), ApiError> {
        match result {
            Ok(signed) => signed.write_json(&mut self.json),
            Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => return Err(e),
            Err(e) => write_refused(&mut self.json, &e),
        }
        self.ends.push((index, self.json.len()));
        Ok(())
    }
}

/// `{"error": {"code", "message"}}`: why a batch item was refused.
fn write_refused(out: &mut Vec<u8>, e: &ApiError) {
    #[derive(Serialize)]
    struct Refused<'a> {
        error: Why<'a>,
    }
    #[derive(Serialize)]
    struct Why<'a> {
        code: &'a str,
        message: &'a str,
    }
    // Strings only: serializing into a Vec cannot fail.
    let _ = serde_json::to_writer(
        out,
        &Refused {
            error: Why {
                code: e.code,
                message: &e.message,
            },
        },
    );
}

/// `{"results": [...]}`: each item's result from the task that wrote it, in item order.
/// `None` if an item has no result (a task failed to return one): the results would no
/// longer line up with the items, so no token may leave.
fn batch_response(n: usize, written: &[BatchResults]) -> Option<Response> {
    let mut slots: Vec<Option<&[u8]>> = vec![None; n];
    for w in written {
        let mut start = 0;
        for &(index, end) in &w.ends {
            *slots.get_mut(index)? = Some(w.json.get(start..end)?);
            start = end;
        }
    }
    let size: usize = written.iter().map(|w| w.json.len()).sum();
    let mut body = Vec::with_capacity(size + n + 16);
    body.extend_from_slice(b"{\"results\":[");
    for (i, slot) in slots.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(slot?);
    }
    body.extend_from_slice(b"]}");
    Some(json_response(body))
}

/// Tasks signing one batch at the same time. Each takes the next chunk of unsigned items
/// until none is left: with the file backend the items spread over every worker thread at
/// the cost of one task per slot (a task per item cost about a tenth of the batch's CPU);
/// with a remote backend this many calls are in flight (chunks are sized so that every task
/// has one: a batch of 16 is 16 chunks of one), and a slow call holds up only its own slot.
const BATCH_IN_FLIGHT: usize = 16;

/// A batch task yields to other requests once it has held its worker this long.
const BATCH_SLICE: Duration = Duration::from_millis(1);

/// One batch's items (each a slice of the request body), shared by its tasks, which take
/// them in turn.
struct BatchItems {
    requests: Vec<Bytes>,
    /// Items per chunk: up to [`BATCH_CHUNK`], fewer for small batches.
    chunk: usize,
    next: std::sync::atomic::AtomicUsize,
}

/// Items a batch task takes at a time. Each chunk goes through the policy, then the
/// backend, then the audit log, phase by phase: with the file backend, signatures that run
/// back to back keep aws-lc's code and tables in cache, and a batch token costs about 5%
/// less CPU than when each item went through all three in turn. A full
/// batch is one chunk per task. Within a chunk the task still yields every
/// [`BATCH_SLICE`], between two signatures.
const BATCH_CHUNK: usize = 16;

/// Signs chunks of `items` until none is left, and writes their results. An error that
/// concerns the whole key set (no key to sign with, a 503) fails the batch: the items
/// taken so far are dropped. The items of a chunk share one reading of the clock and the
/// key active then.
async fn sign_items(
    state: &AppState,
    client: &ClientConfig,
    keyset: &KeySet,
    items: &BatchItems,
) -> Result<BatchResults, ApiError> {
    use std::sync::atomic::Ordering;
    let mut out = BatchResults::default();
    let mut slice = Instant::now();
    loop {
        let first = items.next.fetch_add(items.chunk, Ordering::Relaxed);
        let chunk = items.requests.get(first..).unwrap_or_default();
        let chunk = chunk.get(..items.chunk).unwrap_or(chunk);
        if chunk.is_empty() {
            return Ok(out);
        }
        let tx = Transaction::begin(state, keyset, state.clock.now())?;
        let key = tx.key();
        // Policy: each item parsed (serde's line and column count from the item's start)
        // and checked alone; then status list entries for the items that passed.
        let checked: Vec<Result<Checked, ApiError>> = (first..)
            .zip(chunk)
            .map(|(i, item)| {
                let req: SignRequest = parse(item).map_err(|e| ApiError {
                    message: format!("item {i}: {}", e.message),
                    ..e
                })?;
                Ok(check(&req, client, &keyset.config, tx.now())?)
            })
            .collect();
        let passed = checked.iter().filter(|c| c.is_ok()).count();
        let slots = tx.slots(passed).await?;
        serve_new(state, keyset, &slots, tx.now()).await?;
        let mut slots = slots.into_iter();
        let mut tokens: Vec<_> = checked
            .into_iter()
            .map(|c| {
                let slot = c.is_ok().then(|| slots.next()).flatten();
                let prepared = c?.render(&keyset.config, &key.kid, new_jti()?, slot.as_ref());
                Ok::<_, ApiError>((prepared, slot, Vec::new()))
            })
            .collect();
        // Backend: the signatures, back to back. An outage or a revoke fails the batch: no
        // further calls.
        for token in &mut tokens {
            let Ok((prepared, _, sig)) = token else {
                continue;
            };
            if slice.elapsed() >= BATCH_SLICE {
                tokio::task::yield_now().await;
                slice = Instant::now();
            }
            match tx.sign(prepared.signing_input.as_bytes()).await {
                Ok(s) => *sig = s,
                Err(e @ SignError::BackendFailed) => *token = Err(e.into()),
                Err(e) => return Err(e.into()),
            }
        }
        // Audit log: the chunk's lines queued, then one wait until they are written and a
        // last look at the JWKS (a revoke meanwhile fails the batch, 503, and the client
        // asks again).
        let mut last = None;
        for (i, token) in (first..).zip(tokens) {
            let result = match token {
                Ok((prepared, slot, sig)) => tx
                    .record(
                        &client.name,
                        Some(&prepared.jti),
                        prepared.sub.as_deref(),
                        prepared.aud.as_ref(),
                        prepared.exp,
                        slot.as_ref(),
                    )
                    .await
                    .map(|line| {
                        last = Some(line);
                        Signed {
                            token: compact(prepared.signing_input, &sig),
                            kid: &key.kid,
                            jti: prepared.jti,
                            exp: prepared.exp,
                            status: slot.map(StatusRef::from),
                        }
                    })
                    .map_err(ApiError::from),
                Err(e) => Err(e),
            };
            out.push(i, result)?;
        }
        if let Some(line) = last {
            tx.finish(line).await?;
        }
        if slice.elapsed() >= BATCH_SLICE {
            tokio::task::yield_now().await;
            slice = Instant::now();
        }
    }
}

/// Many tokens in one request; each goes through the same policy. One item's refusal does
/// not fail the others; a backend outage fails the whole batch with 503.
async fn sign_batch(
    State(state): State<Arc<AppState>>,
    Params(name): Params<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let (client, keyset, body) = signing_request(&state, request, &name).await?;
    let batch: BatchRequest = parse(&body)?;
    if batch.requests.is_empty() || batch.requests.len() > MAX_BATCH {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "batch_size",
            format!("\"requests\" must hold 1 to {MAX_BATCH} items"),
        ));
    }
    let n = batch.requests.len();
    let items = Arc::new(BatchItems {
        // Each item borrows from `body`: `slice_ref` shares its buffer, no copy.
        requests: batch
            .requests
            .iter()
            .map(|item| body.slice_ref(item.get().as_bytes()))
            .collect(),
        chunk: n.div_ceil(BATCH_IN_FLIGHT).min(BATCH_CHUNK),
        next: std::sync::atomic::AtomicUsize::new(0),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n.div_ceil(items.chunk) {
        let (state, client, keyset, items) =
            (state.clone(), client.clone(), keyset.clone(), items.clone());
        tasks.spawn(async move { sign_items(&state, &client, &keyset, &items).await });
    }
    let internal = || {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    };
    let mut written = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        let joined = joined.map_err(|e| {
            tracing::error!(keyset = %keyset.name(), error = %e, "batch signing task failed");
            internal()
        })?;
        // Dropping `tasks` cancels the items still in flight.
        written.push(joined?);
    }
    // Every index below n was taken by exactly one task, which wrote its result.
    batch_response(n, &written).ok_or_else(|| {
        tracing::error!(keyset = %keyset.name(), "a batch item got no result");
        internal()
    })
}

/// A JSON body, written into a buffer sized up front (axum's `Json` starts at 128 bytes and
/// grows by copying).
fn json_response(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, JSON)], body).into_response()
}

/// A key as admin routes show it.
#[derive(Serialize)]
struct KeyView {
    kid: Option<String>,
    state: crate::core::lifecycle::KeyState,
    created_at: i64,
    published_at: Option<i64>,
    activate_at: Option<i64>,
    retired_at: Option<i64>,
    remove_at: Option<i64>,
    removed_at: Option<i64>,
    revoked_at: Option<i64>,
}

/// A key set as admin clients (and the console) see it: keys with state and timestamps.
pub(crate) fn keyset_view(keyset: &KeySet, now: i64) -> serde_json::Value {
    let published = keyset.published();
    let doc = &published.doc;
    let timing = &keyset.config.timing;
    let keys: Vec<KeyView> = (0..doc.keys.len())
        .map(|i| {
            let k = &doc.keys[i];
            KeyView {
                kid: k.kid.clone(),
                state: doc.state(i, now),
                created_at: k.created_at,
                published_at: k.published_at,
                activate_at: k.activate_at,
                retired_at: doc.retired_at(i, now),
                remove_at: if k.is_published() {
                    doc.remove_at(i, now, timing)
                } else {
                    None
                },
                removed_at: k.removed_at,
                revoked_at: k.revoked_at,
            }
        })
        .collect();
    let active = published.signer(now).map(|s| s.kid.clone());
    let next_activation = doc.pending(now).and_then(|i| doc.keys[i].activate_at);
    serde_json::json!({
        "name": keyset.name(),
        "issuer": keyset.config.issuer,
        "algorithm": keyset.config.algorithm.as_str(),
        "backend": keyset.backend.kind(),
        "backend_ok": keyset.backend_ok(),
        "now": now,
        "active_kid": active,
        "next_activation": next_activation,
        "next_event": doc.next_event(now, timing),
        "jwks_version": doc.jwks_version,
        "publish_lead": timing.publish_lead(),
        "retention": timing.retention(),
        "jwks_max_age": timing.jwks_max_age,
        "max_token_ttl": timing.max_token_ttl,
        "keys": keys,
    })
}

async fn list_keysets(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Arc<Peer>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let client = caller(&state, &peer, &headers)?;
    require_admin(&client)?;
    let now = state.clock.now();
    let keysets: Vec<_> = state
        .keysets
        .load()
        .iter()
        .filter(|k| client.may_use(k.name()))
        .map(|k| keyset_view(k, now))
        .collect();
    Ok(Json(serde_json::json!({"keysets": keysets})))
}

async fn show_keyset(
    State(state): State<Arc<AppState>>,
    Params(name): Params<String>,
    Extension(peer): Extension<Arc<Peer>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let client = caller(&state, &peer, &headers)?;
    let keyset = administered(&state, &client, &name)?;
    Ok(Json(keyset_view(&keyset, state.clock.now())))
}

/// A lifecycle (or status list) failure of an admin operation, as the API answers it.
pub(super) fn lifecycle_error(keyset: &KeySet, e: LifecycleError) -> ApiError {
    match e {
        LifecycleError::Refused(msg) => ApiError::new(StatusCode::CONFLICT, "refused", msg),
        e @ LifecycleError::UnknownKid(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_kid", e.to_string())
        }
        e @ (LifecycleError::Replaced { .. }
        | LifecycleError::Unauthentic { .. }
        | LifecycleError::StatusLists(_)) => {
            tracing::error!(keyset = %keyset.name(), error = %e, "admin operation refused");
            keyset.note_backend(false);
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "state_replaced",
                "the key set's stored state was replaced or fails its authentication while \
                 keyturn ran; an operator must restore it (see the daemon's log)",
            )
        }
        e @ LifecycleError::Reloading(_) => ApiError::retry_after(1, "reloading", e.to_string()),
        e if e.is_retryable() => {
            keyset.note_backend(false);
            ApiError::unavailable(5)
        }
        e => {
            tracing::error!(keyset = %keyset.name(), error = %e, "admin operation failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the operation failed; see the daemon's log",
            )
        }
    }
}

async fn admin_audit(
    state: &AppState,
    client: &ClientConfig,
    keyset: &str,
    event: &'static str,
    kid: Option<&str>,
    now: i64,
) {
    let record = Record {
        ts: now,
        event,
        caller: Some(&client.name),
        keyset,
        kid,
        jti: None,
        sub: None,
        aud: None,
        exp: None,
        status: None,
    };
    if state.audit.record(record).await.is_err() {
        tracing::error!(keyset, event, "audit log unavailable for an admin action");
    }
}

async fn rotate(
    State(state): State<Arc<AppState>>,
    Params(name): Params<String>,
    Extension(peer): Extension<Arc<Peer>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let client = caller(&state, &peer, &headers)?;
    let keyset = administered(&state, &client, &name)?;
    let now = state.clock.now();
    let at = keyset
        .rotate_now(now)
        .await
        .map_err(|e| lifecycle_error(&keyset, e))?;
    let published = keyset.published();
    let kid = published
        .keys
        .iter()
        .find(|k| k.activate_at == Some(at))
        .map(|k| k.kid.clone());
    admin_audit(
        &state,
        &client,
        &name,
        "rotate-requested",
        kid.as_deref(),
        now,
    )
    .await;
    Ok(Json(
        serde_json::json!({"kid": kid, "activates_at": at, "in_seconds": (at - now).max(0)}),
    ))
}

async fn revoke(
    State(state): State<Arc<AppState>>,
    Params((name, kid)): Params<(String, String)>,
    Extension(peer): Extension<Arc<Peer>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let client = caller(&state, &peer, &headers)?;
    let keyset = administered(&state, &client, &name)?;
    let now = state.clock.now();
    let active = keyset
        .revoke(&kid, now)
        .await
        .map_err(|e| lifecycle_error(&keyset, e))?;
    admin_audit(&state, &client, &name, "revoked", Some(&kid), now).await;
    Ok(Json(
        serde_json::json!({"revoked": kid, "active_kid": active}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::Clock;
    use crate::server::testing::{InProcess, TOKEN};

    /// Requests to the in-process API.
    trait Post {
        fn post(
            &self,
            route: &str,
            body: &serde_json::Value,
        ) -> tokio::task::JoinHandle<(StatusCode, serde_json::Value)>;
    }

    impl Post for InProcess {
        /// Sends `POST /v1/keysets/default/{route}` with `body` (not awaited).
        fn post(
            &self,
            route: &str,
            body: &serde_json::Value,
        ) -> tokio::task::JoinHandle<(StatusCode, serde_json::Value)> {
            use tower::ServiceExt;
            let mut request = Request::post(format!("/v1/keysets/default/{route}"))
                .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            request.extensions_mut().insert(Arc::new(Peer::default()));
            let router = crate::server::http::api::router(self.state.clone());
            tokio::spawn(async move {
                let response = router.oneshot(request).await.unwrap();
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .unwrap();
                (status, serde_json::from_slice(&body).unwrap())
            })
        }
    }

    fn signed<'k>(token: &str, kid: &'k str, jti: &str) -> Signed<'k> {
        Signed {
            token: token.into(),
            kid,
            jti: jti.into(),
            exp: 1_700_000_000,
            status: None,
        }
    }

    #[test]
    fn signed_json_is_what_serde_writes() {
        for s in [
            signed("eyJh.eyJz-_.c2ln", "k-_1", "AbC_-9"),
            // Not base64url: serde escapes it.
            signed("a\"b\\c\u{1}", "k\n", "é"),
            signed("", "", ""),
            Signed {
                status: Some(StatusRef {
                    uri: "https://a.example/keysets/x/statuslists/3".into(),
                    idx: 1_048_575,
                }),
                ..signed("eyJh.eyJz-_.c2ln", "k", "j")
            },
        ] {
            let mut ours = Vec::new();
            s.write_json(&mut ours);
            assert_eq!(ours, serde_json::to_vec(&s).unwrap(), "{s:?}");
            assert!(ours.len() <= s.json_size() + 16, "{s:?}");
        }
    }

    /// The refusals every API request passes: from web pages, and POSTs that are not JSON
    /// (header forms the integration test's client cannot send included).
    #[test]
    fn requests_from_pages_and_posts_other_than_json_are_refused() {
        use http::Method;
        let check = |method: Method, headers: &[(&'static str, &'static str)], body: bool| {
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.append(*name, http::HeaderValue::from_static(value));
            }
            refusal(&method, &map, body).map(|e| e.code)
        };
        let json = ("content-type", "application/json");
        for (method, headers, body, expected) in [
            (Method::POST, vec![json], true, None),
            (
                Method::POST,
                vec![("content-type", "Application/JSON; charset=utf-8")],
                true,
                None,
            ),
            (Method::POST, vec![], false, None),
            (Method::POST, vec![json], false, None),
            (Method::POST, vec![], true, Some("unsupported_media_type")),
            (
                Method::POST,
                vec![json, json],
                true,
                Some("unsupported_media_type"),
            ),
            (
                Method::POST,
                vec![("content-type", "application/jsonx")],
                true,
                Some("unsupported_media_type"),
            ),
            (
                Method::POST,
                vec![("content-type", "text/plain")],
                false,
                Some("unsupported_media_type"),
            ),
            // Only POSTs carry what the API reads.
            (
                Method::GET,
                vec![("content-type", "text/plain")],
                true,
                None,
            ),
            (Method::GET, vec![("sec-fetch-site", "none")], false, None),
            (
                Method::GET,
                vec![("sec-fetch-site", "same-origin")],
                false,
                None,
            ),
            (
                Method::GET,
                vec![("sec-fetch-site", "cross-site")],
                false,
                Some("browser_request"),
            ),
            (
                Method::GET,
                vec![("sec-fetch-site", "none"), ("sec-fetch-site", "cross-site")],
                false,
                Some("browser_request"),
            ),
            (
                Method::GET,
                vec![("origin", "null")],
                false,
                Some("browser_request"),
            ),
            (
                Method::POST,
                vec![("origin", "http://127.0.0.1:8391"), json],
                true,
                Some("browser_request"),
            ),
        ] {
            assert_eq!(
                check(method.clone(), &headers, body),
                expected,
                "{method} {headers:?} {body}"
            );
        }
    }

    /// `route` with `body`, whose backend holds the signatures until `held` of them wait;
    /// `meanwhile` runs then, and they go through. Returns the response's status and body,
    /// and the sign lines in the audit log.
    async fn held_signatures(
        route: &str,
        body: serde_json::Value,
        held: u32,
        sign_when_released: bool,
        meanwhile: impl AsyncFnOnce(&KeySet, i64),
    ) -> (StatusCode, serde_json::Value, usize) {
        let app = InProcess::new(crate::server::testing::Rigged {
            hold: true,
            sign_when_released,
            ..Default::default()
        })
        .await;
        let response = app.post(route, &body);
        let all = app.backend.waiting.acquire_many(held).await.unwrap();
        all.forget();
        meanwhile(&app.keyset, app.clock.now()).await;
        app.backend.released.add_permits(held as usize);
        let (status, body) = response.await.unwrap();
        (status, body, app.finish())
    }

    /// A replica that could not read the shared state for longer than the sync delay (47 s
    /// here) may have missed a rotation or a revoke by another replica: it does not sign,
    /// though the backend would, until a read succeeds again.
    #[tokio::test]
    async fn a_replica_out_of_touch_with_the_shared_state_does_not_sign() {
        let app = InProcess::new(crate::server::testing::Rigged {
            shared: true,
            ..Default::default()
        })
        .await;
        let item = serde_json::json!({"claims": {"sub": "user:1"}});
        assert_eq!(app.post("sign", &item).await.unwrap().0, StatusCode::OK);
        app.backend
            .fail_reads
            .store(true, std::sync::atomic::Ordering::Relaxed);
        app.clock.advance(15);
        assert!(app.keyset.tick(app.clock.now()).await.is_err());
        assert_eq!(app.post("sign", &item).await.unwrap().0, StatusCode::OK);
        // Past the delay (a 30 s window, 15 s for one more read, 2 s of rounding) since the last
        // good read.
        app.clock.advance(33);
        let (status, body) = app.post("sign", &item).await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "backend_unavailable");
        app.backend
            .fail_reads
            .store(false, std::sync::atomic::Ordering::Relaxed);
        app.keyset.tick(app.clock.now()).await.unwrap();
        assert_eq!(app.post("sign", &item).await.unwrap().0, StatusCode::OK);
        assert_eq!(app.finish(), 3);
    }

    /// A key revoked while it signs is out of the JWKS: the tokens would not verify, so
    /// none is returned, for one token or a batch (whose 16 items are 16 tasks of one, all
    /// in the backend at once). An audit line queued before the last check names a
    /// withheld token.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_revoked_while_it_signs_gives_no_token() {
        let item = serde_json::json!({"claims": {"sub": "user:1"}});
        let batch = serde_json::json!({"requests": vec![item.clone(); 16]});
        let revoke = async |keyset: &KeySet, now| {
            let active = keyset.published().signer(now).unwrap().kid.clone();
            keyset.revoke(&active, now).await.unwrap();
            assert!(!keyset.published().by_kid.contains_key(&active));
        };
        for (route, body, held) in [("sign", item, 1), ("sign-batch", batch, 16)] {
            // As a control, nothing in between: every token returned and audited.
            let (status, answer, signed) =
                held_signatures(route, body.clone(), held, false, async |_, _| {}).await;
            assert_eq!(status, StatusCode::OK, "{route}: {answer}");
            assert_eq!(signed, held as usize, "{route}");
            // Signed before the revoke (caught by the last check) or after it, once the key
            // is destroyed (the backend refuses; no token, so no audit line).
            for late in [false, true] {
                let (status, answer, signed) =
                    held_signatures(route, body.clone(), held, late, revoke).await;
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{route}: {answer}");
                assert_eq!(answer["error"]["code"], "key_revoked", "{route}: {answer}");
                assert!(answer.get("token").is_none() && answer.get("results").is_none());
                if late {
                    assert_eq!(signed, 0, "{route}");
                } else {
                    // The batch fails at the first item that sees the revoke; items not yet
                    // audited then are cancelled.
                    assert!((1..=held as usize).contains(&signed), "{route}: {signed}");
                }
            }
        }
    }

    /// A reload that leaves nobody allowed to sign with the key set takes the right from
    /// requests already let in: each is refused whole, one token or a batch (whose 32 items
    /// are 16 chunks of two), with the 403 that says why: no token, no audit line.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_set_nobody_may_sign_with_any_more_refuses_whole_requests() {
        let app = InProcess::new(crate::server::testing::Rigged::default()).await;
        let nobody =
            crate::config::Config::parse(crate::server::testing::KEYSET, Default::default())
                .unwrap();
        app.keyset.note_signers(&nobody, app.clock.now());
        let item = serde_json::json!({"claims": {"sub": "user:1"}});
        let batch = serde_json::json!({"requests": vec![item.clone(); 32]});
        for (route, body) in [("sign", item), ("sign-batch", batch)] {
            let (status, answer) = app.post(route, &body).await.unwrap();
            assert_eq!(status, StatusCode::FORBIDDEN, "{route}: {answer}");
            assert_eq!(answer["error"]["code"], "keyset_not_allowed", "{route}");
        }
        assert_eq!(app.finish(), 0);
    }

    /// Two tasks' results, taken in turn, come out in item order; a refused item carries
    /// its error; a 503 fails the batch; an item left without a result lets no token out.
    #[tokio::test]
    async fn batch_response_keeps_order_and_errors() {
        let mut a = BatchResults::default();
        let mut b = BatchResults::default();
        b.push(1, Err(ApiError::forbidden("claim_not_allowed", "no \"x\"")))
            .unwrap();
        a.push(0, Ok(signed("t.1.s", "k", "j1"))).unwrap();
        a.push(2, Ok(signed("t.2.s", "k", "j2"))).unwrap();
        let down = b.push(3, Err(ApiError::unavailable(5))).unwrap_err();
        assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
        let tasks = [a, b];
        assert!(batch_response(4, &tasks).is_none(), "item 3 has no result");
        let response = batch_response(3, &tasks).unwrap();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"results": [
                {"token": "t.1.s", "kid": "k", "jti": "j1", "exp": 1_700_000_000},
                {"error": {"code": "claim_not_allowed", "message": "no \"x\""}},
                {"token": "t.2.s", "kid": "k", "jti": "j2", "exp": 1_700_000_000},
            ]})
        );
    }

    /// A request the policy refuses takes no status list entry, alone or in a batch.
    #[tokio::test]
    async fn refused_requests_take_no_status_list_entry() {
        let app = InProcess::with(
            crate::server::testing::Rigged::default(),
            "status_list = { ttl = \"5m\" }",
        )
        .await;
        let lists = app.keyset.status.clone().unwrap();
        let good = serde_json::json!({"claims": {"sub": "a"}});
        let bad = serde_json::json!({"claims": {"exp": 1}});
        let (status, answer) = app.post("sign", &good).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert!(answer["status"]["idx"].is_u64(), "{answer}");
        let left = lists.held_indexes();
        let (status, _) = app.post("sign", &bad).await.unwrap();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(lists.held_indexes(), left);
        let batch = serde_json::json!({"requests": [bad, good, bad]});
        let (status, answer) = app.post("sign-batch", &batch).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert!(answer["results"][1]["status"]["idx"].is_u64(), "{answer}");
        assert!(answer["results"][0].get("status").is_none(), "{answer}");
        assert_eq!(lists.held_indexes(), left - 1);
    }
}
