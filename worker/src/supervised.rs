//! `drover-worker --instance <id>`: one tunnel run by the master.
//!
//! 1. Die with the master (`PR_SET_PDEATHSIG`), take the control socket (fd 3).
//! 2. Wait for `Hello` (URL, TLS material, pre-bound listeners, settings);
//!    a bad URL is `Fatal` + exit 2.
//! 3. Run the engine with a [`MasterBinder`]: listeners come from `Hello`,
//!    anything else is asked for with `Bind`. Log lines go to the master as
//!    `Log`, counters as `Stats` every interval; `Ready` once listening.
//! 4. `Ping` → `Pong`; `ResetCounters`; `Shutdown{grace}` drains and exits 0.
//!    Control EOF (master gone) exits at once; a protocol error exits 2.

use std::collections::HashMap;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::message::{Bind, Hello, Log, Ready, Transport};
use proto::spec::{HostPort, LogLevel, TunnelSpec};
use proto::{ControlSender, ToMaster, ToWorker, WorkerChannel};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::stats::Stats;
use crate::tunnel::binder::BoxFuture;
use crate::tunnel::{Binder, Engine, TunnelError, tls};

/// The master must send `Hello` within this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Log lines queued for the master before new ones are dropped.
const LOG_QUEUE: usize = 4096;

/// Entry point for `--instance`.
pub fn run(instance: String, control_fd: RawFd) -> ExitCode {
    // Die with the master even if it is SIGKILLed: no orphan keeps a port.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if nix::unistd::getppid().as_raw() == 1 {
        eprintln!("drover-worker: the master is already gone");
        return ExitCode::FAILURE;
    }
    let runtime = match crate::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drover-worker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: fd 3 was set up by the master for us and is owned by nobody else here.
    let fd = unsafe { OwnedFd::from_raw_fd(control_fd) };
    // Spawned rather than run by `block_on`: that future lives on this thread,
    // outside the runtime's workers, so every control frame (each gateway
    // handoff) would cost a cross-thread wake-up before it is read.
    runtime.block_on(async move {
        match tokio::spawn(supervised(instance, fd)).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("drover-worker: control task failed: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn supervised(instance: String, fd: OwnedFd) -> ExitCode {
    let channel = match WorkerChannel::from_fd(fd) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drover-worker: control socket: {e}");
            return ExitCode::from(2);
        }
    };
    let (sender, mut receiver) = channel.split();
    let (hello, fds) = match tokio::time::timeout(HELLO_TIMEOUT, receiver.recv()).await {
        Ok(Ok(Some((ToWorker::Hello(h), fds)))) => (h, fds),
        Ok(Ok(Some((other, _)))) => {
            return fatal(&sender, 2, format!("expected Hello, got {}", kind(&other))).await;
        }
        Ok(Ok(None)) => return ExitCode::FAILURE,
        Ok(Err(e)) => return fatal(&sender, 2, format!("control protocol: {e}")).await,
        Err(_) => return fatal(&sender, 2, "no Hello from the master within 10 s".into()).await,
    };
    let spec = match TunnelSpec::parse(hello.url.expose()) {
        Ok(s) => s,
        Err(e) => return fatal(&sender, 2, format!("invalid url: {e}")).await,
    };
    init_logging(spec.params.log, &instance, sender.clone());
    let settings = hello.settings.clone();
    let binder = Arc::new(MasterBinder::new(&hello, fds, sender.clone()));
    let material = hello.tls.as_ref().map(|t| tls::Material {
        cert_pem: t.cert_pem.clone(),
        key_pem: t.key_pem.expose().to_string(),
    });
    let engine = Engine::new(spec, binder.clone(), material).with_entry(true);
    let adopter = engine.adopter();
    let acks = answer_adopts(sender.clone());
    let stats = engine.stats();
    let grace = engine.grace_handle();
    grace.store(settings.grace_ms, Relaxed);
    let mut ready = engine.ready();
    let ready_now = engine.ready();
    let stop = CancellationToken::new();
    let mut run = tokio::spawn(engine.run(stop.clone()));

    let reporter = {
        let (sender, stats) = (sender.clone(), stats.clone());
        let interval = settings.stats_interval().max(Duration::from_millis(100));
        tokio::spawn(async move {
            if ready.wait_for(Option::is_some).await.is_err() {
                return;
            }
            let info = (*ready.borrow()).expect("waited for Some");
            let msg = Ready {
                pid: std::process::id(),
                entry: info.entry.map(|a| a.to_string()),
                mode: info.mode,
            };
            if sender.send(&msg.into(), &[]).await.is_err() {
                return;
            }
            tracing::info!(mode = info.mode, entry = ?info.entry, "worker ready");
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                if sender.send(&stats_msg(&stats), &[]).await.is_err() {
                    return;
                }
            }
        })
    };

    let code = loop {
        tokio::select! {
            res = &mut run => {
                break match res {
                    Ok(Ok(())) => ExitCode::SUCCESS,
                    Ok(Err(e)) => return fatal(&sender, 1, e.to_string()).await,
                    Err(e) => return fatal(&sender, 1, format!("engine task failed: {e}")).await,
                };
            }
            msg = receiver.recv() => match msg {
                Ok(Some((msg, fds))) => match msg {
                    ToWorker::Ping { seq } => { let _ = sender.send(&ToMaster::Pong { seq }, &[]).await; }
                    ToWorker::ResetCounters => {
                        stats.reset_traffic();
                        let _ = sender.send(&stats_msg(&stats), &[]).await;
                    }
                    ToWorker::Shutdown { grace_ms } => {
                        grace.store(grace_ms, Relaxed);
                        stop.cancel();
                    }
                    ToWorker::Bound(b) => binder.answer(Ok(fds.into_iter().next()), &b.addr),
                    ToWorker::BindError(b) => binder.answer(Err(b.reason), &b.addr),
                    ToWorker::Adopt(a) => {
                        // Answered later, in a batch, off the connection's path.
                        if a.seq != 0 {
                            let _ = acks.send(a.seq);
                        }
                        // Without an entrance nothing would ever serve it: close at once.
                        let has_entrance = ready_now.borrow().is_some_and(|r| r.entry.is_some());
                        if has_entrance {
                            adopt(&adopter, a, fds);
                        } else {
                            tracing::warn!(client = %a.client, "handed a connection, but this instance has no entrance; closed");
                        }
                    }
                    ToWorker::Hello(_) | ToWorker::Become { .. } => {
                        return fatal(&sender, 2, format!("unexpected {}", kind(&msg))).await;
                    }
                },
                // The master is gone: its copies of our listeners are closed; go now.
                Ok(None) => std::process::exit(0),
                Err(e) => return fatal(&sender, 2, format!("control protocol: {e}")).await,
            }
        }
    };
    reporter.abort();
    let _ = sender.send(&stats_msg(&stats), &[]).await;
    code
}

/// How long an `Adopted` answer may wait to share the master's wake-up with
/// the answers after it.
const ADOPTED_BATCH: Duration = Duration::from_millis(5);

/// Answers each `Adopt` seq sent on the returned channel with `Adopted`, in
/// batches ([`ADOPTED_BATCH`]).
///
/// Off the connection's path: an answer per connection would wake the master
/// right when the connection needs the CPU (measured: +35 µs per warm
/// handoff on 2 cores). The master does not rely on the answer's timing: a
/// handoff a dead worker left unanswered goes to the next worker only if
/// nothing was read from or written to it.
fn answer_adopts(sender: ControlSender<ToMaster>) -> mpsc::UnboundedSender<u64> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut seqs = Vec::new();
        while let Some(first) = rx.recv().await {
            tokio::time::sleep(ADOPTED_BATCH).await;
            seqs.push(first);
            while let Ok(seq) = rx.try_recv() {
                seqs.push(seq);
            }
            for seq in seqs.drain(..) {
                if sender.send(&ToMaster::Adopted { seq }, &[]).await.is_err() {
                    return;
                }
            }
        }
    });
    tx
}

/// A connection handed over by the gateway: served like one on the entrance.
fn adopt(
    adopter: &mpsc::Sender<crate::tunnel::Adopted>,
    a: proto::message::Adopt,
    fds: Vec<OwnedFd>,
) {
    let Some(fd) = fds.into_iter().next() else {
        tracing::warn!(client = %a.client, "Adopt without a socket; ignored");
        return;
    };
    if a.kind != Transport::Tcp {
        tracing::warn!(client = %a.client, "only TCP connections can be adopted; closed");
        return;
    }
    // Non-blocking already: the master accepts it so.
    match tokio::net::TcpStream::from_std(std::net::TcpStream::from(fd)) {
        Ok(s) => {
            if adopter.try_send((s, a.peer)).is_err() {
                tracing::warn!(client = %a.client, "adoption queue full or no entrance; connection closed");
            }
        }
        Err(e) => tracing::warn!(client = %a.client, cause = %e, "adopted socket unusable; closed"),
    }
}

fn kind(msg: &ToWorker) -> &'static str {
    use proto::Message;
    msg.kind()
}

fn stats_msg(stats: &Stats) -> ToMaster {
    stats.snapshot().into()
}

async fn fatal(sender: &ControlSender<ToMaster>, code: u8, message: String) -> ExitCode {
    let _ = sender
        .send(
            &ToMaster::Fatal {
                message: message.clone(),
            },
            &[],
        )
        .await;
    eprintln!("drover-worker: {message}");
    ExitCode::from(code)
}

/// The master's answer to a `Bind`: the socket, or why not.
type BindAnswer = Result<Option<OwnedFd>, String>;

/// Listeners from `Hello`, plus `Bind` round trips for any other address.
struct MasterBinder {
    preset: Mutex<HashMap<(String, Transport), OwnedFd>>,
    pending: Mutex<Option<(String, oneshot::Sender<BindAnswer>)>>,
    /// One `Bind` in flight at a time keeps answers unambiguous.
    one_at_a_time: tokio::sync::Mutex<()>,
    sender: ControlSender<ToMaster>,
}

impl MasterBinder {
    fn new(hello: &Hello, fds: Vec<OwnedFd>, sender: ControlSender<ToMaster>) -> Self {
        let preset = hello
            .listeners
            .iter()
            .zip(fds)
            .map(|(info, fd)| ((info.addr.clone(), info.proto), fd))
            .collect();
        Self {
            preset: Mutex::new(preset),
            pending: Mutex::new(None),
            one_at_a_time: tokio::sync::Mutex::new(()),
            sender,
        }
    }

    fn answer(&self, res: BindAnswer, addr: &str) {
        let pending = self.pending.lock().expect("bind lock").take();
        match pending {
            Some((want, tx)) if want == addr => {
                let _ = tx.send(res);
            }
            _ => tracing::warn!(addr, "unexpected bind answer from the master; ignored"),
        }
    }

    async fn get(&self, addr: &HostPort, proto: Transport) -> Result<OwnedFd, TunnelError> {
        let key = (addr.to_string(), proto);
        if let Some(fd) = self.preset.lock().expect("preset lock").remove(&key) {
            return Ok(fd);
        }
        let _one = self.one_at_a_time.lock().await;
        let (tx, rx) = oneshot::channel();
        *self.pending.lock().expect("bind lock") = Some((key.0.clone(), tx));
        let bind_err = |reason: String| TunnelError::Bind {
            addr: key.0.clone(),
            source: io::Error::other(reason),
        };
        let req: ToMaster = Bind {
            addr: key.0.clone(),
            proto,
        }
        .into();
        self.sender
            .send(&req, &[])
            .await
            .map_err(|e| bind_err(format!("asking the master: {e}")))?;
        match rx.await {
            Ok(Ok(Some(fd))) => Ok(fd),
            Ok(Ok(None)) => Err(bind_err("the master's answer carried no socket".into())),
            Ok(Err(reason)) => Err(bind_err(reason)),
            Err(_) => Err(bind_err("no answer from the master".into())),
        }
    }
}

impl Binder for MasterBinder {
    fn tcp<'a>(&'a self, addr: &'a HostPort) -> BoxFuture<'a, Result<TcpListener, TunnelError>> {
        Box::pin(async move {
            let fd = self.get(addr, Transport::Tcp).await?;
            let std = std::net::TcpListener::from(fd);
            std.set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(std))
                .map_err(|source| TunnelError::Bind {
                    addr: addr.to_string(),
                    source,
                })
        })
    }

    fn udp<'a>(&'a self, addr: &'a HostPort) -> BoxFuture<'a, Result<UdpSocket, TunnelError>> {
        Box::pin(async move {
            let fd = self.get(addr, Transport::Udp).await?;
            let std = std::net::UdpSocket::from(fd);
            std.set_nonblocking(true)
                .and_then(|()| UdpSocket::from_std(std))
                .map_err(|source| TunnelError::Bind {
                    addr: addr.to_string(),
                    source,
                })
        })
    }
}

/// Log lines become `Log` messages (formatted like standalone lines).
fn init_logging(level: LogLevel, instance: &str, sender: ControlSender<ToMaster>) {
    let (tx, mut rx) = mpsc::channel::<Log>(LOG_QUEUE);
    tokio::spawn(async move {
        while let Some(log) = rx.recv().await {
            if sender.send(&log.into(), &[]).await.is_err() {
                return;
            }
        }
    });
    crate::logging::init_with_writer(level, LogWriter { tx });
    tracing::debug!(instance, "logging to the master");
}

/// Sends each formatted event as one `Log`; drops lines when the queue is full.
#[derive(Clone)]
struct LogWriter {
    tx: mpsc::Sender<Log>,
}

struct LineSink {
    tx: mpsc::Sender<Log>,
    level: &'static str,
}

impl io::Write for LineSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let line = String::from_utf8_lossy(buf).trim_end().to_string();
        if !line.is_empty() {
            let _ = self.tx.try_send(Log {
                level: self.level.to_string(),
                line,
            });
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LineSink;
    fn make_writer(&'a self) -> LineSink {
        LineSink {
            tx: self.tx.clone(),
            level: "info",
        }
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineSink {
        let level = match *meta.level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warn",
            tracing::Level::INFO => "info",
            _ => "debug",
        };
        LineSink {
            tx: self.tx.clone(),
            level,
        }
    }
}
