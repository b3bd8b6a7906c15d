//! Serving a key set's status lists: each list is a Status List Token (a JWT with `typ`
//! `statuslist+jwt`) signed by the key set's active key, so it verifies with the published
//! JWKS. It is built when the lists change, when another key signs, and before a
//! verifier that fetched it could no longer cache it for its `ttl` (`exp - ttl`); the
//! public listener serves the built token and never signs.

use crate::core::keyset::KeySet;
use crate::core::published::Served;
use crate::core::statuslist::doc::BITS;
use crate::core::statuslist::{ServedList, Slot, StatusLists};
use crate::server::sign::{SignError, Transaction};
use crate::server::state::AppState;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use http::HeaderValue;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The media type of a Status List Token in JWT form.
pub const CONTENT_TYPE: HeaderValue = HeaderValue::from_static("application/statuslist+jwt");

/// The longest the builder sleeps between looks at the active key: a list signed by a
/// key that was revoked or retired meanwhile is signed again this soon.
const LOOK_EVERY: i64 = 5;

/// Keeps `keyset`'s lists served until `shutdown` or until a reload replaces the key set.
pub async fn keep_served(state: Arc<AppState>, keyset: Arc<KeySet>, shutdown: CancellationToken) {
    let Some(status) = keyset.status.clone() else {
        return;
    };
    loop {
        let changed = status.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let now = state.clock.now();
        let wait = match publish(&state, &keyset, &status, now).await {
            Ok(next) => (next - now).clamp(1, LOOK_EVERY),
            Err(e) => {
                tracing::debug!(keyset = %keyset.name(), error = ?e, "status lists not signed now; retrying");
                1
            }
        };
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            () = keyset.stopped() => return,
            () = &mut changed => {}
            () = tokio::time::sleep(Duration::from_secs(wait.unsigned_abs())) => {}
        }
    }
}

/// Signs the lists of `slots` that are not served yet (a new list): a verifier that
/// fetches the list of one of their tokens at once must find it.
pub async fn serve_new(
    state: &AppState,
    keyset: &KeySet,
    slots: &[Slot],
    now: i64,
) -> Result<(), SignError> {
    let Some(status) = &keyset.status else {
        return Ok(());
    };
    let unserved = {
        let served = status.served();
        slots
            .iter()
            .any(|s| !served.iter().any(|l| l.list == s.list))
    };
    if unserved {
        publish(state, keyset, status, now).await?;
    }
    Ok(())
}

/// Builds each list whose served token is missing, from older lists, signed by a key that
/// no longer signs, or due (see the module); keeps the others. Returns when the next is
/// due.
pub async fn publish(
    state: &AppState,
    keyset: &KeySet,
    status: &StatusLists,
    now: i64,
) -> Result<i64, SignError> {
    let _building = status.building.lock().await;
    let view = status.view();
    let served = status.served();
    let tx = Transaction::begin(state, keyset, now)?;
    let kid = &tx.key().kid;
    let mut next = Vec::with_capacity(view.lists.len());
    let mut rebuilt = false;
    for list in &view.lists {
        let current = served
            .iter()
            .find(|s| s.list == list.id)
            .filter(|s| s.lst == list.lst && s.kid == *kid && s.refresh_at > now);
        if let Some(current) = current {
            next.push(current.clone());
            continue;
        }
        let cfg = &status.config;
        let (iat, exp) = (now, now.saturating_add(cfg.validity));
        let header = serde_json::json!({
            "alg": tx.published().alg.as_str(),
            "kid": kid,
            "typ": "statuslist+jwt",
        });
        // No `iss`: it is no token of the issuer's to present, and a relying party that
        // checks only the signature and `iss` must not take it for one.
        let claims = serde_json::json!({
            "exp": exp,
            "iat": iat,
            "status_list": {"bits": BITS, "lst": list.lst},
            "sub": cfg.list_uri(list.id),
            "ttl": cfg.ttl,
        });
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = tx.sign(input.as_bytes()).await?;
        let token = format!("{input}.{}", B64.encode(sig));
        next.push(ServedList {
            list: list.id,
            served: Served::token(token.into_bytes(), CONTENT_TYPE, iat, cfg.ttl),
            lst: list.lst.clone(),
            kid: kid.clone(),
            refresh_at: exp - cfg.ttl,
        });
        rebuilt = true;
    }
    if rebuilt || next.len() != served.len() {
        status.set_served(next.clone());
    }
    Ok(next
        .iter()
        .map(|s| s.refresh_at)
        .min()
        .unwrap_or(now + LOOK_EVERY))
}
