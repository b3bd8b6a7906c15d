//! The daemon: builds backends and key sets from a validated config, binds the listeners,
//! runs until SIGTERM/SIGINT, reloads on SIGHUP, and drains on the way out.

use crate::config::Config;
use crate::core::clock::Clock;
use crate::core::keyset::{KeySet, Past};
use crate::infra::audit::{Audit, AuditWriter};
use crate::infra::backends::Factory;
use crate::infra::ledger::{Identity, Ledger};
use crate::infra::metrics::Metrics;
use crate::server::console::{sample_rates, Console, Rates};
use crate::server::http::public::{PublicService, Serves};
use crate::server::http::serve::{serve_tcp, serve_unix};
pub use crate::server::state::{AppState, KeySets};
use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Where the daemon listens, once bound.
#[derive(Debug, Clone)]
pub struct Bound {
    /// JWKS listener.
    pub jwks: SocketAddr,
    /// API listener (TCP).
    pub api: Option<SocketAddr>,
    /// Metrics listener.
    pub metrics: Option<SocketAddr>,
    /// Console listener.
    pub console: Option<SocketAddr>,
}

/// Opens every key set and brings it in order (bootstrap included), retrying a backend
/// that is not reachable yet until `shutdown`.
/// At start, `ledger` is what the last run remembered (and where); at a reload, `reuse`
/// holds the running key sets.
async fn open_keysets(
    config: &Config,
    factory: &mut Factory,
    clock: &Arc<dyn Clock>,
    audit: &Audit,
    reuse: Option<&KeySets>,
    ledger: Option<(&Ledger, &Path)>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<Arc<KeySet>>> {
    let mut list = Vec::new();
    for ks in &config.keysets {
        // A reload keeps a key set whose settings did not change (and its task).
        if let Some(existing) = reuse
            .and_then(|r| r.get(&ks.name))
            .filter(|e| e.config == *ks)
        {
            // Restored since? (A backend that does not answer leaves it as it is.)
            let _ = existing.recheck(clock.now()).await;
            list.push(existing.clone());
            continue;
        }
        let backend = factory
            .get(&ks.backend, &config.server)
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("key set {:?}: backend", ks.name))?;
        if !backend.supports(ks.algorithm) {
            bail!(
                "key set {:?}: {}; pick another algorithm or backend",
                ks.name,
                backend.unsupported(ks.algorithm)
            );
        }
        // The history the key set must have: the running one's, or the last run's.
        let remembered = ledger.and_then(|(l, path)| Some((l.keysets.get(&ks.name)?, path)));
        let expected = match reuse.and_then(|r| r.get(&ks.name)) {
            Some(running) => Identity::of(&running.published()).map(|identity| Expected {
                identity,
                ledger: None,
            }),
            None => remembered.map(|(e, path)| Expected {
                identity: e.identity.clone(),
                ledger: Some((ks.name.as_str(), path)),
            }),
        };
        // Up to when the audit log has heard of the key set's activations: the running one's
        // last tick at a reload, the log's last record at a start (nothing of a key set new
        // at this reload). Its first tick reports those since.
        let audited = match reuse {
            Some(running) => running.get(&ks.name).and_then(|k| k.synced_at()),
            None => audit.last_ts(),
        };
        let past = match (reuse.and_then(|r| r.get(&ks.name)), remembered) {
            (Some(running), _) => running.past(),
            (None, Some((entry, _))) => Past {
                retention: entry.retention,
                sealed: entry.sealed,
                unsigned_since: entry.unsigned_since,
                status_writes: entry.status_writes,
            },
            (None, None) => Past::default(),
        };
        let mut delay = Duration::from_millis(250);
        let keyset = loop {
            let attempt = async {
                let keyset = KeySet::open(ks.clone(), backend.clone(), past).await?;
                if let Some(at) = audited {
                    keyset.audited_until(at).await;
                }
                if let Some(expected) = &expected {
                    refuse_a_fresh_start(expected, &keyset)?;
                }
                keyset.recheck_keys(clock.now()).await?;
                let events = keyset.tick(clock.now()).await?;
                Ok::<_, crate::core::lifecycle::LifecycleError>((keyset, events))
            }
            .await;
            match attempt {
                Ok((keyset, events)) => {
                    for e in &events {
                        audit.lifecycle(&ks.name, e);
                    }
                    if reuse.is_none() {
                        recover_status_lines(audit, &keyset).await;
                    }
                    break keyset;
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(keyset = %ks.name, error = %e, retry_in_ms = delay.as_millis() as u64, "backend not ready");
                    tokio::select! {
                        () = shutdown.cancelled() => bail!("stopped while waiting for the backend of {:?}", ks.name),
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!("key set {:?}", ks.name)))
                }
            }
        };
        list.push(keyset);
    }
    Ok(list)
}

/// Writes to the audit log, marked `recovered`, each status change the stored lists
/// remember (their last 256) whose line the log's tail does not hold: a daemon that
/// stopped between a change and its line, or whose log was not writable then, left it
/// out. A change another replica made (logged in that replica's log) is logged here too,
/// once: every replica's log then holds every change.
async fn recover_status_lines(audit: &Audit, keyset: &KeySet) {
    let Some(status) = &keyset.status else {
        return;
    };
    for change in status.changes() {
        if audit.has_status_change(keyset.name(), change.seq) {
            continue;
        }
        let uri = status.config.list_uri(change.list);
        let logged =
            crate::server::http::token_status::record(audit, keyset.name(), &change, &uri, true)
                .await;
        if logged.is_err() {
            tracing::error!(keyset = %keyset.name(), seq = change.seq, "audit log unavailable; a token status change is not logged");
        }
    }
}

/// What a key set's reopened state must be: the running key set's, or the last run's.
struct Expected<'a> {
    identity: Identity,
    /// The key set's entry in the ledger, and the ledger's path, when that is the source.
    ledger: Option<(&'a str, &'a Path)>,
}

/// A reload or restart that changes where a key set's state lives (another backend,
/// directory, mount, table), or finds it lost, must not start it over or switch it to
/// another key set's history: the keys published until now would leave the JWKS at once,
/// breaking their tokens. The reopened state must carry the `history` the key set had, or
/// (restored from before histories existed) none and a record of every kid it published.
fn refuse_a_fresh_start(
    expected: &Expected<'_>,
    reopened: &KeySet,
) -> Result<(), crate::core::lifecycle::LifecycleError> {
    let doc = &reopened.published().doc;
    let expected_id = &expected.identity;
    let knows = |kid: &String| doc.keys.iter().any(|r| r.kid.as_ref() == Some(kid));
    let older = doc.jwks_version < expected_id.jwks_version;
    match &doc.history {
        Some(h) if *h == expected_id.history && !older => return Ok(()),
        None if !expected_id.kids.is_empty() && expected_id.kids.iter().all(knows) => return Ok(()),
        _ => {}
    }
    let holds = if doc.history.as_ref() == Some(&expected_id.history) {
        "holds an older state of its history (a backup or rollback without the keys published since)"
    } else if doc.keys.is_empty() && doc.history.is_none() {
        "holds no keys or history for it"
    } else if doc.history.is_none() {
        "holds a state without a history that lacks keys it published"
    } else {
        "holds another history for it"
    };
    let anyway = match expected.ledger {
        Some((name, path)) => format!(
            " To start it there anyway (its live tokens will no longer verify), remove the \
             entry {name:?} from {} while keyturn is stopped.",
            path.display()
        ),
        None => String::new(),
    };
    Err(crate::core::lifecycle::LifecycleError::Refused(format!(
        "its backend as now configured {holds}: starting it there would take the keys it \
         published until now out of the JWKS at once and break every token they signed. \
         Point it at the backend that holds its state (restored from a backup, the state \
         must be of the same history), or set the new backend up under a new key set name \
         and remove this one once its tokens have expired.{anyway}"
    )))
}

/// Spawns `keyset`'s maintenance task (its lifecycle, reporting to the audit log) and,
/// with status lists, the task that keeps them signed and served.
fn maintain(
    tasks: &mut JoinSet<()>,
    state: &Arc<AppState>,
    keyset: &Arc<KeySet>,
    shutdown: &CancellationToken,
) {
    tasks.spawn(keyset.clone().run(
        state.clock.clone(),
        lifecycle_to(state.audit.clone()),
        shutdown.clone(),
    ));
    if keyset.status.is_some() {
        tasks.spawn(crate::server::statuslists::keep_served(
            state.clone(),
            keyset.clone(),
            shutdown.clone(),
        ));
    }
}

/// Where a key set's maintenance task reports its lifecycle events: the audit log.
fn lifecycle_to(audit: Audit) -> impl Fn(&str, &crate::core::lifecycle::Event) + Send {
    move |keyset, event| audit.lifecycle(keyset, event)
}

fn bind_unix(path: &PathBuf) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    // A socket left by a previous run: remove it (only if it is a socket).
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        } else {
            bail!(
                "{} exists and is not a socket; remove it or choose another api_socket",
                path.display()
            );
        }
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    // Owner and group may connect; every request is still checked against [[client]] uid/gid.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Runs the daemon with `config` until a stop signal. `config_path` is re-read on SIGHUP.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<()> {
    run_with_backends(config, config_path, clock, Vec::new()).await
}

/// Runs the daemon with extra backends compiled into a custom build: a key set whose config
/// says `backend = { type = "custom", name = "NAME" }` uses the backend registered as NAME.
/// See examples/custom_backend.rs.
pub async fn run_with_backends(
    config: Config,
    config_path: Option<PathBuf>,
    clock: Arc<dyn Clock>,
    custom: Vec<(String, Arc<dyn keyturn_backend::KeyBackend>)>,
) -> anyhow::Result<()> {
    let signals = crate::infra::signals::Signals::install()?;
    let shutdown = signals.stop_token();

    keyturn_backend::fsutil::ensure_private_dir(&config.server.data_dir)?;
    let (audit, audit_writer) =
        Audit::open(&config.server.audit_log).map_err(anyhow::Error::msg)?;
    let metrics = Arc::new(Metrics::default());
    let mut factory = Factory::new(custom, metrics.clone());

    // What the last run knew: a key set it served may not leave the config early, nor
    // start over on a backend without its history.
    let ledger_path = crate::infra::ledger::path(&config.server.data_dir);
    let ledger = Ledger::load(&ledger_path)?;
    ledger.check_removed(&config, clock.now(), &ledger_path)?;

    // SIGTERM during a long start (RSA-4096 keys being made, a backend not up yet) stops
    // it there: every step is safe to cut, as a crash would.
    let opened = tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        r = open_keysets(&config, &mut factory, &clock, &audit, None, Some((&ledger, &ledger_path)), &shutdown) => Some(r),
    };
    let Some(list) = opened else {
        tracing::info!("stopped during start");
        close_audit(audit, audit_writer).await;
        return Ok(());
    };
    // Tokens signed before this start may still be live: what the ledger said of each key
    // set was taken over by open_keysets. Recorded for the next start, or no start.
    let now = clock.now();
    let mut recorded = ledger;
    let list = list.and_then(|list| {
        Ledger::under(&list, &config, now).record(&mut recorded, &ledger_path)?;
        Ok(list)
    });
    let list = match list {
        Ok(list) => list,
        Err(e) => {
            close_audit(audit, audit_writer).await;
            return Err(e);
        }
    };
    for keyset in &list {
        keyset.note_signers(&config, now);
    }
    let list = KeySets::new(list);

    let state = Arc::new(AppState {
        keysets: ArcSwap::from_pointee(list),
        clients: ArcSwap::from_pointee(config.clients.clone()),
        clock: clock.clone(),
        audit: audit.clone(),
        metrics,
        limits: config.server.limits,
    });

    let mut tasks = JoinSet::new();
    let bound = serve_listeners(&config, &state, &shutdown, &mut tasks).await?;
    let keyset_shutdown = shutdown.child_token();
    let mut maintenance = JoinSet::new();
    for keyset in state.keysets.load().iter() {
        maintain(&mut maintenance, &state, keyset, &keyset_shutdown);
    }

    log_ready(&config, &bound);
    crate::infra::notify::ready();
    let watchdog = crate::infra::notify::spawn_watchdog(shutdown.clone());

    let mut current = config;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = signals.reload() => {
                crate::infra::notify::reloading();
                match reload(&state, &mut current, config_path.as_deref(), &mut factory, &clock, &audit, &keyset_shutdown, &mut maintenance, (&mut recorded, &ledger_path)).await {
                    Ok(()) => tracing::info!("configuration reloaded"),
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "reload refused; the running configuration stays"),
                }
                crate::infra::notify::ready();
            }
        }
    }
    tracing::info!("stopping: draining in-flight requests");
    crate::infra::notify::stopping();
    watchdog.abort();
    while tasks.join_next().await.is_some() {}
    while maintenance.join_next().await.is_some() {}
    // What each key set's state is now, for the next start: a backend restored from a
    // backup taken before this moment (without the keys published since) is refused then.
    if let Err(e) = Ledger::under(state.keysets.load().iter(), &current, clock.now())
        .record(&mut recorded, &ledger_path)
    {
        tracing::error!(error = %format!("{e:#}"), "the key sets' state could not be recorded at the stop");
    }
    // Every request handler is done.
    drop(state);
    close_audit(audit, audit_writer).await;
    tracing::info!("stopped");
    Ok(())
}

/// Binds every configured listener and spawns its accept loop into `tasks`.
async fn serve_listeners(
    config: &Config,
    state: &Arc<AppState>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<Bound> {
    let limits = config.server.limits;
    let jwks_listener = TcpListener::bind(config.server.jwks_listen)
        .await
        .with_context(|| format!("cannot bind jwks_listen {}", config.server.jwks_listen))?;
    let jwks_addr = jwks_listener.local_addr()?;
    let public = match config.server.metrics_listen {
        None => Serves::All,
        Some(_) => Serves::AllButMetrics,
    };
    tasks.spawn(serve_tcp(
        jwks_listener,
        None,
        PublicService(state.clone(), public),
        limits,
        shutdown.clone(),
        "jwks",
    ));
    let mut metrics_addr = None;
    if let Some(addr) = config.server.metrics_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind metrics_listen {addr}"))?;
        metrics_addr = Some(listener.local_addr()?);
        tasks.spawn(serve_tcp(
            listener,
            None,
            PublicService(state.clone(), Serves::Metrics),
            limits,
            shutdown.clone(),
            "metrics",
        ));
    }

    let console = match config.server.console_listen {
        Some(addr) => Some(serve_console(addr, config, state, shutdown, tasks).await?),
        None => None,
    };

    // One for every API listener: request ids are unique across them.
    let api = crate::server::http::serve::traced(crate::server::http::api::router(state.clone()));
    let mut api_addr = None;
    if let Some(addr) = config.server.api_listen {
        let tls = config
            .server
            .tls
            .as_ref()
            .map(crate::infra::tls::acceptor)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind api_listen {addr}"))?;
        api_addr = Some(listener.local_addr()?);
        if tls.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "api_listen is reachable from other hosts without TLS: bearer tokens and \
                 tokens cross the network in clear; set [server.tls] or listen on loopback"
            );
        }
        tasks.spawn(serve_tcp(
            listener,
            tls,
            api.clone(),
            limits,
            shutdown.clone(),
            "api",
        ));
    }
    if let Some(path) = &config.server.api_socket {
        let listener = bind_unix(path)?;
        tasks.spawn(serve_unix(
            listener,
            api.clone(),
            limits,
            shutdown.clone(),
            "api-socket",
        ));
    }
    // The listeners hold the state (and its audit log handle) from here on: a copy kept
    // here would keep the audit writer waiting at the stop.
    drop(api);
    if let Some((socket, keyset)) = &config.server.k8s_signer {
        let listener = crate::server::k8s::bind(socket)?;
        tasks.spawn(crate::server::k8s::serve(
            listener,
            state.clone(),
            keyset.clone(),
            shutdown.clone(),
        ));
        tracing::info!(socket = %socket, keyset = %keyset, "kubernetes external JWT signer listening");
    }
    Ok(Bound {
        jwks: jwks_addr,
        api: api_addr,
        metrics: metrics_addr,
        console,
    })
}

/// Binds the read-only console and spawns its accept loop and the sampler of its rates.
async fn serve_console(
    addr: SocketAddr,
    config: &Config,
    state: &Arc<AppState>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind console_listen {addr}"))?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "console_listen is reachable from other hosts: it shows the key sets' state to \
             anyone who connects; put it behind a proxy that authenticates, or on loopback"
        );
    }
    let rates = Arc::new(Rates::default());
    tasks.spawn(sample_rates(state.clone(), rates.clone(), shutdown.clone()));
    let bound = listener.local_addr()?;
    tasks.spawn(serve_tcp(
        listener,
        None,
        Console::new(state.clone(), rates),
        config.server.limits,
        shutdown.clone(),
        "console",
    ));
    Ok(bound)
}

/// The line that says where the daemon listens (tests and operators wait for it).
fn log_ready(config: &Config, bound: &Bound) {
    let (jwks_addr, api_addr, metrics_addr) = (bound.jwks, bound.api, bound.metrics);
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(
        jwks = %jwks_addr,
        api = %api_addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        api_socket = %config.server.api_socket.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "-".into()),
        metrics = %metrics_addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        console = %bound.console.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        data_dir = %config.server.data_dir.display(),
        "keyturn ready: JWKS at http://{jwks_addr}/.well-known/jwks.json, signing API at {}",
        api_addr.map(|a| format!("{scheme}://{a}/v1/keysets/{{name}}/sign")).unwrap_or_else(|| "the API socket".into()),
    );
}

/// Drops the last audit handle and waits until the writer has put every line on disk.
async fn close_audit(audit: Audit, writer: AuditWriter) {
    drop(audit);
    tokio::task::spawn_blocking(move || writer.finish())
        .await
        .ok();
}

/// Re-reads the config; on success swaps clients and key sets (unchanged key sets keep
/// running untouched). Listener changes need a restart and are refused here.
#[allow(clippy::too_many_arguments)]
async fn reload(
    state: &Arc<AppState>,
    current: &mut Config,
    path: Option<&std::path::Path>,
    factory: &mut Factory,
    clock: &Arc<dyn Clock>,
    audit: &Audit,
    keyset_shutdown: &CancellationToken,
    maintenance: &mut JoinSet<()>,
    (ledger, ledger_path): (&mut Ledger, &Path),
) -> anyhow::Result<()> {
    let Some(path) = path else {
        bail!("running the embedded default config; nothing to reload")
    };
    let new = Config::load(path)?;
    if new.server != current.server {
        bail!("[server] settings changed; they take effect on restart only (systemctl restart keyturn)");
    }
    let old = state.keysets.load_full();
    // A key set leaves the config only once its tokens have expired: verifiers need its
    // keys until then.
    let now = clock.now();
    for gone in old
        .iter()
        .filter(|o| !new.keysets.iter().any(|k| k.name == o.name()))
    {
        let name = gone.name();
        let retention = crate::config::human(gone.retention());
        match gone.removable_at() {
            None => bail!(
                "key set {name:?} was removed while clients may still sign with it, and its \
                 keys must stay in the JWKS as long as its tokens live: first reload a config \
                 in which no client lists it in `keysets`, then remove it {retention} later"
            ),
            Some(at) if now < at => bail!(
                "key set {name:?} was removed too early: tokens it signed may be valid for \
                 {} more; remove it then, so that verifiers keep its keys until they expire",
                crate::config::human(at - now)
            ),
            Some(_) => {}
        }
    }
    let list = open_keysets(
        &new,
        factory,
        clock,
        audit,
        Some(&old),
        None,
        keyset_shutdown,
    )
    .await?;
    let fresh = |keyset: &Arc<KeySet>| !old.iter().any(|o| Arc::ptr_eq(o, keyset));
    // The clients change now (not when the reload began, which may have waited on a
    // backend): a key set no one may sign with any more signs nothing from the next second
    // on, so no request an old client started outlives its recorded removal time. The
    // ledger records that first; if it cannot, the reload is refused.
    let swapped = clock.now().saturating_add(1);
    Ledger::under(&list, &new, swapped).record(ledger, ledger_path)?;
    // Nothing fails from here on. The cut-off holds at once, before any wait below, and on
    // the old key set objects too: a request under way may hold one.
    for keyset in list.iter().chain(old.iter()) {
        keyset.note_signers(&new, swapped);
    }
    // A revoke on a replaced key set may have landed after its successor read the state:
    // the successor reads it again once no admin operation can reach the old one, before
    // it serves (a failed read is retried by its first round, which re-reads too).
    for keyset in list.iter().filter(|k| fresh(k)) {
        if let Some(previous) = old.get(keyset.name()) {
            previous.hand_over().await;
            if let Err(e) = keyset.refresh().await {
                tracing::warn!(keyset = %keyset.name(), error = %e, "cannot re-read the key set's state after the reload; its first round retries");
            }
        }
        maintain(maintenance, state, keyset, keyset_shutdown);
    }
    state.clients.store(Arc::new(new.clients.clone()));
    state.keysets.store(Arc::new(KeySets::new(list.clone())));
    for gone in old
        .iter()
        .filter(|o| !list.iter().any(|k| Arc::ptr_eq(o, k)))
    {
        gone.stop();
    }
    *current = new;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;
    use crate::server::testing::Rigged;

    /// A start or reload takes a key set's state only if it is the one it had: its history,
    /// and no older (a backup or rollback from before keys it published since).
    #[tokio::test]
    async fn a_start_refuses_another_or_an_older_state() {
        let config = Config::parse(crate::server::testing::KEYSET, Env::default())
            .unwrap()
            .keysets[0]
            .clone();
        let keyset = KeySet::open(config.clone(), Arc::new(Rigged::default()), Past::default())
            .await
            .unwrap();
        keyset.tick(1_700_000_000).await.unwrap();
        let own = Identity::of(&keyset.published()).unwrap();
        let expect = |history: &str, jwks_version| Expected {
            identity: Identity {
                history: history.to_owned(),
                jwks_version,
                ..own.clone()
            },
            ledger: None,
        };
        refuse_a_fresh_start(&expect(&own.history, own.jwks_version), &keyset).unwrap();
        let err = refuse_a_fresh_start(&expect(&own.history, own.jwks_version + 1), &keyset)
            .unwrap_err()
            .to_string();
        assert!(err.contains("older state of its history"), "{err}");
        let err = refuse_a_fresh_start(&expect("another", own.jwks_version), &keyset)
            .unwrap_err()
            .to_string();
        assert!(err.contains("another history"), "{err}");
    }
}
