//! `POST /v1/keysets/{name}/token-status`: revoke, suspend or reinstate one token in its
//! key set's status list, named by the token itself or by its list's URI and index.
//!
//! The change is written to the state store first, then its audit line: a change is
//! never lost (the client sees no answer until both are done, and asks again), and a
//! crash between the two leaves the change in the stored lists' recent changes, which the
//! next start writes to the audit log (`recovered`). The other order could log a change
//! that never took effect.

use super::api::{caller, json_body, keyset, parse, peer, Params};
use super::error::ApiError;
use crate::core::keyset::KeySet;
use crate::core::statuslist::doc::{Change, Refused, Status};
use crate::core::statuslist::StatusError;
use crate::infra::audit::{Audit, Record, StatusNote};
use crate::server::state::AppState;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use http::StatusCode;
use keyturn_backend::{Algorithm, PublicKey};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeRequest {
    token: Option<String>,
    uri: Option<String>,
    idx: Option<u64>,
    status: Status,
}

/// The entry a request names and, when it named the token, its jti and issue time.
struct Entry {
    list: u32,
    uri: String,
    idx: u64,
    jti: Option<String>,
    issued: Option<i64>,
}

pub(super) async fn token_status(
    State(state): State<Arc<AppState>>,
    Params(name): Params<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let client = caller(&state, peer(&parts)?, &parts.headers)?;
    let keyset = keyset(&state, &name)?;
    if !client.may_use(&name) || !(client.admin || client.revoke_tokens) {
        return Err(ApiError::forbidden(
            "not_allowed",
            format!(
                "client {:?} may not change token statuses in key set {name:?}: it needs the \
                 key set in its keysets and admin = true or revoke_tokens = true",
                client.name
            ),
        ));
    }
    let Some(status) = keyset.status.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_status_lists",
            format!("key set {name:?} has no status lists (its status_list option is not set)"),
        ));
    };
    let body = json_body(&parts.headers, body, state.limits.body_timeout).await?;
    let req: ChangeRequest = parse(&body)?;
    let now = state.clock.now();
    let entry = entry(&keyset, &req, now)?;
    let change = status
        .set(
            entry.list,
            entry.idx,
            req.status,
            now,
            entry.issued,
            &client.name,
            entry.jti.as_deref(),
        )
        .await
        .map_err(|e| status_error(&keyset, e))?;
    if let Some(change) = &change {
        state.metrics.status_change(&name, change.new.name());
        record(&state.audit, &name, change, &entry.uri, false)
            .await
            .map_err(|()| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit_unavailable",
                    "the status was changed, but the audit log is not writable; it will be \
                     logged at the next start",
                )
            })?;
    }
    // Served before the answer: a client that reads the list next finds the change. If it
    // cannot be signed now, the answer says so; the list is signed again until it is.
    let published = match crate::server::statuslists::publish(&state, &keyset, &status, now).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(keyset = %name, error = ?e, "the changed status list is not signed yet; retried");
            false
        }
    };
    let old = change.as_ref().map_or(req.status, |c| c.old);
    let answer = serde_json::json!({
        "uri": entry.uri,
        "idx": entry.idx,
        "status": req.status,
        "previous": old,
        "changed": change.is_some(),
        "published": published,
    });
    Ok(axum::Json(answer).into_response())
}

/// Writes `change`'s audit line and waits until it is in the file.
pub async fn record(
    audit: &Audit,
    keyset: &str,
    change: &Change,
    uri: &str,
    recovered: bool,
) -> Result<(), ()> {
    audit
        .record(Record {
            ts: change.at,
            event: "token-status",
            caller: Some(&change.by),
            keyset,
            kid: None,
            jti: change.jti.as_deref(),
            sub: None,
            aud: None,
            exp: None,
            status: Some(StatusNote {
                uri,
                idx: change.idx,
                old: Some(change.old.name()),
                new: Some(change.new.name()),
                seq: Some(change.seq),
                recovered,
            }),
        })
        .await
}

fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

/// The list entry `req` names: by the token (which must be one this key set signed and
/// still publishes the key of, not expired at `now`) or by URI and index.
fn entry(keyset: &KeySet, req: &ChangeRequest, now: i64) -> Result<Entry, ApiError> {
    let (uri, idx, jti, issued) = match (&req.token, &req.uri, req.idx) {
        (Some(token), None, None) => {
            let claims = signed_claims(keyset, token)?;
            let time = |name: &str| claims.get(name).and_then(serde_json::Value::as_i64);
            // Once it expired, its index may be handed out again: the entry would be
            // another token's.
            if time("exp").is_none_or(|exp| exp <= now) {
                return Err(invalid(
                    "token_expired",
                    "the token has expired: it no longer verifies, and its status list entry \
                     may be another token's by now",
                ));
            }
            let entry = claims
                .get("status")
                .and_then(|s| s.get("status_list"))
                .ok_or_else(|| {
                    invalid(
                        "no_status",
                        "the token has no status claim: it was signed before the key set had \
                         status lists",
                    )
                })?;
            let uri = entry.get("uri").and_then(|u| u.as_str());
            let idx = entry.get("idx").and_then(serde_json::Value::as_u64);
            let (Some(uri), Some(idx)) = (uri, idx) else {
                return Err(invalid(
                    "no_status",
                    "the token's status claim is malformed",
                ));
            };
            let jti = claims
                .get("jti")
                .and_then(|j| j.as_str())
                .map(str::to_owned);
            (uri.to_owned(), idx, jti, time("iat"))
        }
        (None, Some(uri), Some(idx)) => (uri.clone(), idx, None, None),
        _ => {
            return Err(invalid(
                "invalid_request",
                "give either \"token\" or both \"uri\" and \"idx\", with \"status\"",
            ))
        }
    };
    let config = keyset.status.as_ref().map(|s| &s.config);
    let list = config.and_then(|c| c.list_of(&uri)).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_status_list",
            format!("{uri:?} is not a status list of this key set"),
        )
    })?;
    Ok(Entry {
        list,
        uri,
        idx,
        jti,
        issued,
    })
}

/// The claims of `token` if this key set signed it with a key it still publishes.
fn signed_claims(
    keyset: &KeySet,
    token: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    let not_ours = || {
        invalid(
            "not_our_token",
            "the token is not a JWS this key set signed with a key it still publishes",
        )
    };
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(not_ours());
    };
    let decode = |part: &str| B64.decode(part).map_err(|_| not_ours());
    let header: serde_json::Value =
        serde_json::from_slice(&decode(header)?).map_err(|_| not_ours())?;
    let alg = header.get("alg").and_then(|a| a.as_str());
    let published = keyset.published();
    if alg != Some(published.alg.as_str()) {
        return Err(not_ours());
    }
    let kid = header
        .get("kid")
        .and_then(|k| k.as_str())
        .ok_or_else(not_ours)?;
    let key = published
        .keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or_else(not_ours)?;
    let public = PublicKey::from_spki_der(&key.spki_der).map_err(|_| not_ours())?;
    let input_len = token.len() - sig.len() - 1;
    let alg: Algorithm = published.alg;
    if !public
        .jwk()
        .verify(alg, &token.as_bytes()[..input_len], &decode(sig)?)
    {
        return Err(not_ours());
    }
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&decode(payload)?).map_err(|_| not_ours())?;
    if claims.get("iss").and_then(|i| i.as_str()) != Some(keyset.config.issuer.as_str()) {
        return Err(not_ours());
    }
    Ok(claims)
}

fn status_error(keyset: &KeySet, e: StatusError) -> ApiError {
    match e {
        StatusError::Refused(r @ Refused::Final(_)) => {
            ApiError::new(StatusCode::CONFLICT, "status_final", r.to_string())
        }
        StatusError::Refused(
            r @ (Refused::UnknownList(_) | Refused::OutOfRange { .. } | Refused::NotInUse { .. }),
        ) => ApiError::new(StatusCode::NOT_FOUND, "index_not_in_use", r.to_string()),
        StatusError::Refused(r @ Refused::TooLarge(_)) => ApiError::new(
            StatusCode::CONFLICT,
            "status_lists_too_large",
            r.to_string(),
        ),
        StatusError::Refused(r @ Refused::Full) => {
            ApiError::retry_after(5, "status_lists_unavailable", r.to_string())
        }
        // Untrusted lists, a backend that did not answer, anything else: as the same
        // failure of the key set's lifecycle document.
        e => super::api::lifecycle_error(keyset, e.into()),
    }
}
