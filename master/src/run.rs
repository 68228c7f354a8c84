//! Wiring the master's rooms together.
//!
//! 1. Open the store (refuse to start on a corrupt master record rather than
//!    silently making a new key); create the API key on first start.
//! 2. Restore instances (`restart:true` ones start).
//! 3. Serve the API; persist counters every stats interval.
//! 4. On SIGTERM/SIGINT: SSE `shutdown`, stop the API, stop every worker
//!    gracefully, persist counters, flush, exit 0.

use std::net::TcpListener;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix_web::{App, HttpServer, middleware::from_fn, web};
use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::gateway::Gateway;
use crate::gateway::bindings::Bindings;
use crate::metrics::Metrics;
use crate::model::{InstanceView, MasterRecord, SCHEMA_VERSION};
use crate::sse::Hub;
use crate::store::{self, Store};
use crate::supervisor::isolation::Isolation;
use crate::supervisor::{Shared, Supervisor, UrlDefaults, spawn};
use crate::sysinfo::Sampler;
use crate::systemd;

/// How often workers report their stats.
pub const STATS_INTERVAL: Duration = Duration::from_secs(5);
/// How often changed counters are written (and then shown).
pub const COUNTERS_INTERVAL: Duration = Duration::from_secs(1);
/// SSE events kept for `Last-Event-ID` resume.
const REPLAY: usize = 4096;

/// `HOST:PORT` of the gateway listener; port 0 picks a free port (tests).
fn gateway_addr(text: &str) -> Result<std::net::SocketAddr> {
    let (host, port) = proto::url::split_host_port(text).map_err(anyhow::Error::msg)?;
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow::anyhow!("port {port:?} is not a number in 0..65535"))?;
    let hp = proto::spec::HostPort {
        host: host.to_string(),
        port,
    };
    Ok(proto::listen::listen_addr(&hp)?)
}

/// Root of the tenants' private working directories: `DROVER_TENANT_DIR`,
/// else `$RUNTIME_DIRECTORY/tenants`, else `/tmp/drover-tenants`.
fn tenant_root() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("DROVER_TENANT_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("RUNTIME_DIRECTORY") {
        let first = d
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        return std::path::Path::new(&first).join("tenants");
    }
    std::env::temp_dir().join("drover-tenants")
}

/// How long a starting master waits for the data dir's lock before saying
/// another master holds it (see [`Store::open_waiting`]).
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Loads the master record or makes one (printing the key once).
async fn master_record(store: &Store) -> Result<MasterRecord> {
    if let Some(m) = store.master().context("reading the master record")? {
        tracing::info!(master_id = %m.master_id, "API key loaded from the store");
        return Ok(m);
    }
    let m = MasterRecord {
        v: SCHEMA_VERSION,
        api_key: hex::encode(rand::random::<[u8; 16]>()),
        master_id: hex::encode(rand::random::<[u8; 8]>()),
        alias: String::new(),
    };
    store
        .put_master(&m)
        .await
        .context("saving the new API key")?;
    // The one place the key is ever shown (DESIGN §5). Printed whatever the
    // log level: a key nobody saw could never be used.
    eprintln!(
        "{} drover: API Key created: {}",
        proto::clock::now(),
        m.api_key
    );
    Ok(m)
}

/// The API's TLS: `tls=1` a fresh self-signed certificate, `tls=2` the
/// `crt`/`key` files, re-read when they change.
fn tls_config(cfg: &Config) -> Result<Option<rustls::ServerConfig>> {
    use proto::certs::{CertResolver, certified_key};
    use sha2::Digest;
    let resolver = match cfg.tls {
        0 => return Ok(None),
        1 => {
            let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
                .context("making the self-signed API certificate")?;
            let key = certified_key(
                ck.cert.pem().as_bytes(),
                ck.signing_key.serialize_pem().as_bytes(),
                "API tls=1",
            )
            .map_err(anyhow::Error::msg)?;
            // New on every start: clients that verify pin it by this line.
            let fingerprint = hex::encode(sha2::Sha256::digest(ck.cert.der()));
            tracing::info!(
                fingerprint = %format!("sha256:{fingerprint}"),
                "API tls=1: self-signed certificate made"
            );
            CertResolver::fixed(key)
        }
        _ => CertResolver::files(
            cfg.crt.as_deref().unwrap_or_default(),
            cfg.key.as_deref().unwrap_or_default(),
        )
        .map_err(anyhow::Error::msg)
        .context("API tls=2 certificate")?,
    };
    let sc = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(std::sync::Arc::new(resolver));
    Ok(Some(sc))
}

/// Runs the master until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> Result<()> {
    // Handlers first: a SIGTERM that comes during start-up (even right after
    // the "API listening" line or READY=1) is a graceful stop once the API
    // is up, not the default action's abrupt death.
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    // Store files and anything workers write stay private to this user.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let dir = store::data_dir();
    let store = Store::open_waiting(&dir, LOCK_WAIT)
        .await
        .with_context(|| format!("opening the store in {}", dir.display()))?;
    let master = master_record(&store).await?;
    // Ids continue from the clock, so a Last-Event-ID from before a restart
    // falls below the new ring and gets a fresh burst, not unrelated events.
    let first_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64 * 1000)
        .unwrap_or(1);
    let hub = Hub::new(REPLAY).with_first_id(first_id);
    let metrics = Metrics::new();
    {
        let m = metrics.clone();
        store.observe_flushes(Box::new(move |d| m.observe_flush(d)));
    }
    let sampler = Sampler::spawn();
    let shared = Arc::new(Shared {
        store: store.clone(),
        hub: hub.clone(),
        worker_bin: spawn::worker_binary(),
        log: cfg.log_text.clone(),
        stats_interval: STATS_INTERVAL,
        grace: cfg.grace,
        failed_retry: cfg.retry_failed,
        isolation: Isolation::detect(&store, tenant_root(), cfg.tenant_limits.clone()),
        metrics,
        runtime: tokio::runtime::Handle::current(),
        spares: Default::default(),
    });
    let defaults = UrlDefaults {
        log: Some(cfg.log_text.clone()),
        tls: cfg.tls,
        crt: cfg.crt.clone(),
        key: cfg.key.clone(),
    };
    let sup = Supervisor::new(shared, defaults);
    for problem in sup.restore().await {
        tracing::error!("{problem}");
    }
    let gateway = Gateway::new(
        Bindings::new(store.clone(), cfg.lru, sup.shared().metrics.clone()),
        cfg.gateway_default.clone(),
        sup.clone(),
    );
    let gateway_stop = CancellationToken::new();
    if let Some(addr) = &cfg.gateway {
        let sa = gateway_addr(addr).with_context(|| format!("gateway address {addr:?}"))?;
        let std = proto::listen::bind_tcp(sa)
            .with_context(|| format!("binding the gateway on {addr}"))?;
        let local = std.local_addr().map(|a| a.to_string()).unwrap_or_default();
        gateway
            .clone()
            .spawn(std, gateway_stop.clone())
            .context("starting the gateway thread")?;
        tracing::info!(addr = %local, "gateway listening");
    }
    let state = web::Data::new(AppState {
        sup: sup.clone(),
        hub: hub.clone(),
        store: store.clone(),
        master: RwLock::new(master),
        cfg: cfg.clone(),
        sampler,
        started: Instant::now(),
        gateway,
    });
    {
        let st = state.clone();
        hub.set_snapshot_source(Box::new(move || {
            let mut all = vec![InstanceView::key_record(
                &st.master.read().expect("master lock"),
            )];
            all.extend(st.sup.list());
            all
        }));
    }

    {
        let st = state.clone();
        store.resync_from(Box::new(move || {
            let (instances, creating) = st.sup.memory();
            store::Memory {
                instances,
                creating,
                master: st.master.read().expect("master lock").clone(),
            }
        }));
    }

    let listener = TcpListener::bind(cfg.listen_addr())
        .with_context(|| format!("binding the API on {}", cfg.listen_addr()))?;
    // Accepted sockets inherit TCP_NODELAY on Linux: small SSE frames and
    // answers are not held back by Nagle waiting for a delayed ACK.
    socket2::SockRef::from(&listener)
        .set_tcp_nodelay(true)
        .context("TCP_NODELAY on the API listener")?;
    let addr = listener.local_addr().context("API address")?;
    let app_state = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .wrap(from_fn(api::gate))
            .configure(api::configure(app_state.clone()))
    })
    .disable_signals()
    .shutdown_timeout(5);
    let scheme = if cfg.tls == 0 { "http" } else { "https" };
    let server = match tls_config(&cfg)? {
        Some(tls) => server.listen_rustls_0_23(listener, tls),
        None => server.listen(listener),
    }
    .context("starting the API server")?
    .run();
    let handle = server.handle();
    tracing::info!(addr = %addr, prefix = %cfg.prefix, "API listening on {scheme}://{addr}{}", cfg.prefix);
    let server_task = tokio::spawn(server);

    // The supervisor's periodic loop beats the heartbeat; if it gets stuck the
    // watchdog pings stop and systemd restarts the service. Each round takes
    // every instance's state lock and writes the store on the runtime the
    // instance tasks run on, so a deadlocked instance, a wedged store or a
    // starved runtime all stop the beats.
    let heartbeat = systemd::Heartbeat::new(STATS_INTERVAL);
    let persist = {
        let sup = sup.clone();
        let heartbeat = heartbeat.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(COUNTERS_INTERVAL);
            loop {
                tick.tick().await;
                sup.persist_counters().await;
                heartbeat.beat();
            }
        })
    };
    let api_url = format!("{scheme}://{addr}{}", cfg.prefix);
    systemd::ready(&systemd::status_line(&api_url, sup.counts()));
    let watchdog = {
        let sup = sup.clone();
        systemd::spawn_watchdog(heartbeat, move || {
            systemd::status_line(&api_url, sup.counts())
        })
    };

    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    drop(watchdog);
    systemd::stopping();
    systemd::status("stopping: draining workers");
    gateway_stop.cancel();
    hub.shutdown_all();
    handle.stop(true).await;
    let _ = server_task.await;
    persist.abort();
    sup.stop_all().await;
    sup.shared().spares.clear();
    store.flush().await.context("final flush")?;
    tracing::info!("stopped");
    Ok(())
}
