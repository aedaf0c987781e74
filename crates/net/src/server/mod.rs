//! The verifier server: one target model, many sessions, each with its own KV state.
//!
//! - [`config`]: the config file and its `[limits]`, each with a checked range;
//! - [`budget`]: the worst-case memory those limits allow, printed at start;
//! - `connection`: the acceptor (at most `max_connections`) and one thread per connection,
//!   which reads frames under an idle and a whole-frame deadline and writes under a timeout;
//! - `worker`: the model worker, which owns every session and the model, admits each request
//!   against the limits, and runs what is waiting as one batched pass.
//!
//! Supervision: a panic in a connection thread closes that connection (its sessions end); a
//! panic in a model pass answers `Internal` to the requests of that batch and ends their
//! sessions, and the worker goes on. If the worker thread itself ends, the acceptor stops
//! and [`ServerHandle::wait`] reports the failure, so `hlm serve` exits non-zero instead of
//! accepting connections it cannot serve.

pub mod budget;
pub mod config;
mod connection;
mod worker;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use hlm_core::{ConfiguredRule, TargetModel};

pub use budget::MemoryBudget;
pub use config::{ServerConfig, ServerLimits};

use crate::protocol::ServerInfo;
use connection::{OpenConnections, Shared, accept_loop};
use worker::Worker;

/// Counters of the whole server, readable while it runs.
#[derive(Debug, Default)]
pub struct ServerCounters {
    pub sessions_begun: AtomicU64,
    pub sessions_ended: AtomicU64,
    pub verify_requests: AtomicU64,
    /// Worker batches that held at least one request.
    pub batches: AtomicU64,
    /// Largest batch seen.
    pub max_batch_seen: AtomicU64,
    pub errors: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Connections turned away (over `max_connections`, or no thread for them).
    pub connections_refused: AtomicU64,
    /// KV positions the sessions hold now.
    pub held_tokens: AtomicU64,
    /// Batches in which the model worker panicked (each answered `Internal`).
    pub worker_panics: AtomicU64,
    /// Connection threads that panicked.
    pub connection_panics: AtomicU64,
}

/// A configured server, ready to listen.
pub struct Server {
    prototype: Box<dyn TargetModel>,
    rule: ConfiguredRule,
    limits: ServerLimits,
    info: ServerInfo,
    /// KV positions all sessions may hold together.
    held_budget: usize,
    budget: Option<MemoryBudget>,
}

impl Server {
    /// A server for `model` (its weights are shared by every session through
    /// [`TargetModel::fork`]), under `limits` (checked: out of range is an error naming the
    /// limit).
    pub fn new(
        model: Box<dyn TargetModel>,
        rule: ConfiguredRule,
        limits: ServerLimits,
    ) -> hlm_core::Result<Self> {
        limits.validate()?;
        // Fail now, not at the first session, if the model cannot serve sessions.
        model.fork()?;
        let max_context = match limits.max_context {
            0 => model.max_context(),
            n => n.min(model.max_context()),
        };
        let held_budget = match limits.max_held_tokens {
            0 => limits.max_sessions.saturating_mul(max_context),
            n => n,
        };
        let budget = model.memory_profile().map(|p| {
            MemoryBudget::of(
                &p,
                budget::peak_resident(),
                &limits,
                max_context,
                held_budget,
            )
        });
        let vocab_size = u32::try_from(model.vocab_size()).map_err(|_| {
            hlm_core::HlmError::Model(format!(
                "a vocabulary of {} entries does not fit the protocol",
                model.vocab_size()
            ))
        })?;
        let info = ServerInfo {
            model: model.describe(),
            vocab_size,
            max_context: u32::try_from(max_context).unwrap_or(u32::MAX),
            tokenizer_fingerprint: model.tokenizer().map(|t| t.fingerprint()),
            // In range: validated above (at most 256 MiB and 4096).
            max_message_bytes: limits.max_message_bytes as u32,
            max_sessions: limits.max_sessions as u32,
        };
        Ok(Server {
            prototype: model,
            rule,
            limits,
            info,
            held_budget,
            budget,
        })
    }

    /// What the server tells clients about itself.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// The worst-case memory of the limits on this model, when the model can say.
    pub fn memory_budget(&self) -> Option<MemoryBudget> {
        self.budget
    }

    /// Serve on `listener` in background threads until [`ServerHandle::shutdown`].
    pub fn spawn(self, listener: TcpListener) -> std::io::Result<ServerHandle> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let worker_alive = Arc::new(AtomicBool::new(true));
        let counters = Arc::new(ServerCounters::default());
        let (jobs_tx, jobs_rx) = mpsc::channel();
        let open: OpenConnections = Arc::default();
        let shared = Arc::new(Shared {
            jobs: jobs_tx,
            limits: self.limits.clone(),
            info: self.info.clone(),
            counters: Arc::clone(&counters),
            open: Arc::clone(&open),
        });
        let worker = {
            let counters = Arc::clone(&counters);
            let (stop, alive) = (Arc::clone(&stop), Arc::clone(&worker_alive));
            std::thread::Builder::new()
                .name("hlm-model".into())
                .spawn(move || Worker::new(self, counters).run(jobs_rx, &stop, &alive))?
        };
        let acceptor = {
            let (stop, alive) = (Arc::clone(&stop), Arc::clone(&worker_alive));
            std::thread::Builder::new()
                .name("hlm-accept".into())
                .spawn(move || accept_loop(listener, shared, &stop, &alive))?
        };
        Ok(ServerHandle {
            addr,
            stop,
            worker_alive,
            open,
            counters,
            threads: vec![acceptor, worker],
        })
    }
}

/// A running server.
pub struct ServerHandle {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    worker_alive: Arc<AtomicBool>,
    open: OpenConnections,
    counters: Arc<ServerCounters>,
    threads: Vec<JoinHandle<()>>,
}

/// Why a server stopped serving on its own.
#[derive(Debug, thiserror::Error)]
#[error("the server stopped: its model worker ended and no request could be served any more")]
pub struct ServerFailed;

impl ServerHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Live counters.
    pub fn counters(&self) -> &ServerCounters {
        &self.counters
    }

    /// Stop accepting, close every connection, end every session, and wait for the threads.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    /// Block until the server stops, which it does only if its model worker fails (then the
    /// error says so; a caller should exit non-zero).
    pub fn wait(mut self) -> Result<(), ServerFailed> {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if self.worker_alive.load(Ordering::SeqCst) || self.stop.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(ServerFailed)
        }
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(open) = self.open.lock() {
            for s in open.values() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}
