//! Connections: the acceptor, which admits at most `max_connections`, and one thread per
//! connection, which reads frames under deadlines, checks what it can without the model, and
//! hands the rest to the model worker.
//!
//! Threads rather than an async runtime: a connection thread spends its life blocked on one
//! socket, the number of them is bounded by `max_connections`, and each holds a small stack,
//! so the bound that matters (threads, descriptors, frames in memory) is the connection
//! limit, which holds the same with either design; threads keep the server free of an async
//! stack for a few hundred sockets.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::budget::READ_BUFFER;
use super::worker::{Job, Reply, Task, error};
use super::{ServerCounters, ServerLimits};
use crate::protocol::{ErrorCode, Request, Response, ServerInfo, Verify};
use crate::wire::{WireError, read_frame, write_frame};

/// Clones of the open connections, so a shutdown can close them; each connection thread
/// removes its own entry when it ends.
pub(crate) type OpenConnections = Arc<Mutex<HashMap<u64, TcpStream>>>;

/// Stack of a connection thread: it reads, decodes and writes frames, nothing deep.
const CONNECTION_STACK: usize = 256 << 10;

/// How long the acceptor waits to hand a refusal to a client it turns away.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// What every connection thread shares.
pub(crate) struct Shared {
    pub(crate) jobs: Sender<Job>,
    pub(crate) limits: ServerLimits,
    pub(crate) info: ServerInfo,
    pub(crate) counters: Arc<ServerCounters>,
    pub(crate) open: OpenConnections,
}

/// Accept connections until `stop`, or until the model worker is gone (`worker_alive`
/// cleared): then stop accepting, since nobody could answer.
pub(crate) fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: &AtomicBool,
    worker_alive: &AtomicBool,
) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    let mut next_connection = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if !worker_alive.load(Ordering::SeqCst) {
            tracing::error!("the model worker has stopped: no longer accepting connections");
            break;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                tracing::debug!(%peer, "connection");
                connections.retain(|h| !h.is_finished());
                let open_now = shared.open.lock().map_or(0, |o| o.len());
                if open_now >= shared.limits.max_connections {
                    refuse(
                        stream,
                        &shared,
                        ErrorCode::Busy,
                        format!(
                            "the server holds its maximum of {} connections; retry later",
                            shared.limits.max_connections
                        ),
                    );
                    continue;
                }
                let id = next_connection;
                next_connection += 1;
                let registered = stream.try_clone().ok().and_then(|clone| {
                    let mut o = shared.open.lock().ok()?;
                    o.insert(id, clone);
                    Some(())
                });
                if registered.is_none() {
                    refuse(
                        stream,
                        &shared,
                        ErrorCode::Internal,
                        "the server cannot take this connection now".into(),
                    );
                    continue;
                }
                let thread_shared = Arc::clone(&shared);
                let spawned = std::thread::Builder::new()
                    .name(format!("hlm-conn-{peer}"))
                    .stack_size(CONNECTION_STACK)
                    .spawn(move || connection_thread(stream, id, &thread_shared));
                match spawned {
                    Ok(h) => connections.push(h),
                    Err(e) => {
                        // The stream went down with the closure; close the registry's clone
                        // too, so the peer sees the connection end.
                        tracing::error!("cannot start a connection thread: {e}");
                        if let Some(s) = shared.open.lock().ok().and_then(|mut o| o.remove(&id)) {
                            refuse(
                                s,
                                &shared,
                                ErrorCode::Internal,
                                format!(
                                    "the server cannot start a thread for this connection: {e}"
                                ),
                            );
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    if !worker_alive.load(Ordering::SeqCst)
        && let Ok(open) = shared.open.lock()
    {
        // Wake the connections waiting for their next frame: there is nobody to serve it.
        for s in open.values() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
    for h in connections {
        let _ = h.join();
    }
}

/// Answer `code` and close.
fn refuse(mut stream: TcpStream, shared: &Shared, code: ErrorCode, message: String) {
    shared
        .counters
        .connections_refused
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!("refusing a connection: {message}");
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(REFUSAL_WRITE_TIMEOUT));
    let _ = write_frame(&mut stream, &error(code, message));
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// One connection's thread: serve it, then (even after a panic) end its sessions and close
/// it for good.
fn connection_thread(stream: TcpStream, id: u64, shared: &Shared) {
    shared
        .counters
        .connections_open
        .fetch_add(1, Ordering::Relaxed);
    let mut sessions = OwnedSessions {
        ids: HashSet::new(),
        jobs: shared.jobs.clone(),
    };
    let served =
        std::panic::catch_unwind(AssertUnwindSafe(|| serve(stream, shared, &mut sessions)));
    if served.is_err() {
        shared
            .counters
            .connection_panics
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!("a connection thread panicked; its connection is closed");
    }
    drop(sessions);
    // The registry held the last other handle.
    if let Some(s) = shared.open.lock().ok().and_then(|mut o| o.remove(&id)) {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    shared
        .counters
        .connections_open
        .fetch_sub(1, Ordering::Relaxed);
}

/// The sessions a connection began; when it ends, however it ends, they end too.
struct OwnedSessions {
    ids: HashSet<u64>,
    jobs: Sender<Job>,
}

impl Drop for OwnedSessions {
    fn drop(&mut self) {
        if !self.ids.is_empty() {
            let (tx, _rx) = mpsc::channel();
            let _ = self.jobs.send(Job {
                task: Task::Closed(self.ids.drain().collect()),
                reply: Reply::new(tx),
            });
        }
    }
}

/// The reading side of a connection, with two deadlines: between frames the connection may
/// be silent until `idle_deadline`; once a frame's first byte is in, the whole frame must be
/// in by `frame_deadline`, however slowly its bytes trickle (a read timeout alone restarts
/// with every byte).
struct TimedReader {
    stream: TcpStream,
    idle_deadline: Instant,
    frame_deadline: Option<Instant>,
    frame_timeout: Duration,
}

impl Read for TimedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (deadline, what) = match self.frame_deadline {
            Some(d) => (
                d,
                "the frame did not arrive whole within limits.frame_timeout_s",
            ),
            None => (self.idle_deadline, "idle for limits.idle_timeout_s"),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, what));
        }
        self.stream.set_read_timeout(Some(left))?;
        let n = self.stream.read(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                std::io::Error::new(std::io::ErrorKind::TimedOut, what)
            }
            _ => e,
        })?;
        if n > 0 && self.frame_deadline.is_none() {
            self.frame_deadline = Some(Instant::now() + self.frame_timeout);
        }
        Ok(n)
    }
}

/// Whether a request asks for work (and so, once answered without error, counts as activity
/// that keeps the connection open).
fn does_work(r: &Request) -> bool {
    match r {
        Request::Hello => false,
        Request::Begin(_) | Request::End { .. } => true,
        Request::Sync { tokens, .. } => !tokens.is_empty(),
        Request::Verify(v) => !v.context.is_empty() || !v.drafts.is_empty() || v.bonus,
    }
}

fn serve(stream: TcpStream, shared: &Shared, mine: &mut OwnedSessions) {
    let limits = &shared.limits;
    let counters = &shared.counters;
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(limits.write_timeout()));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut last_work = Instant::now();
    let mut reader = BufReader::with_capacity(
        READ_BUFFER,
        TimedReader {
            stream,
            idle_deadline: last_work + limits.idle_timeout(),
            frame_deadline: None,
            frame_timeout: limits.frame_timeout(),
        },
    );
    loop {
        // A frame already begun in the buffer is on the clock from now.
        let begun = !reader.buffer().is_empty();
        let timed = reader.get_mut();
        timed.idle_deadline = last_work + limits.idle_timeout();
        timed.frame_deadline = begun.then(|| Instant::now() + limits.frame_timeout());
        let (request, bytes_in) =
            match read_frame::<_, Request>(&mut reader, limits.max_message_bytes) {
                Ok(r) => r,
                Err(WireError::Closed) => break,
                Err(WireError::Io(e)) => {
                    tracing::debug!(%peer, "connection ends: {e}");
                    break;
                }
                Err(e) => {
                    let code = match e {
                        WireError::TooLarge { .. } => ErrorCode::TooLarge,
                        WireError::Version { .. } => ErrorCode::Version,
                        _ => ErrorCode::BadFrame,
                    };
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, "refusing a frame: {e}");
                    let _ = write_frame(&mut writer, &error(code, e.to_string()));
                    break;
                }
            };
        let work = does_work(&request);
        let Some(response) = answer(request, bytes_in, shared, mine) else {
            // The model worker is gone: say so, and stop (the acceptor stops too).
            let _ = write_frame(&mut writer, &worker_gone());
            break;
        };
        if work && !matches!(response, Response::Error { .. }) {
            last_work = Instant::now();
        }
        if let Response::Error { .. } = &response {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = write_frame(&mut writer, &response) {
            tracing::debug!(%peer, "connection ends: cannot answer: {e}");
            break;
        }
    }
}

/// The answer to one request: what the connection can say itself, else the worker's;
/// `None` when the model worker is gone.
fn answer(
    request: Request,
    bytes_in: usize,
    shared: &Shared,
    mine: &mut OwnedSessions,
) -> Option<Response> {
    let limits = &shared.limits;
    let task = match request {
        Request::Hello => return Some(Response::Info(shared.info.clone())),
        Request::Begin(_) if mine.ids.len() >= limits.max_sessions_per_connection => {
            return Some(error(
                ErrorCode::Busy,
                format!(
                    "this connection holds its quota of {} sessions \
                     (limits.max_sessions_per_connection); end one first",
                    limits.max_sessions_per_connection
                ),
            ));
        }
        Request::Begin(b) => Task::Begin(b),
        Request::Verify(v) if mine.ids.contains(&v.session) => Task::Verify(v, bytes_in as u64),
        Request::Sync { session, tokens } if mine.ids.contains(&session) => {
            Task::Sync { session, tokens }
        }
        Request::End { session } if mine.ids.contains(&session) => Task::End { session },
        Request::Verify(Verify { session, .. })
        | Request::Sync { session, .. }
        | Request::End { session } => {
            return Some(error(
                ErrorCode::UnknownSession,
                format!(
                    "no session {session} on this connection (ended, idled out, or never begun)"
                ),
            ));
        }
    };
    let asked = task.session();
    let (tx, rx) = mpsc::channel();
    shared
        .jobs
        .send(Job {
            task,
            reply: Reply::new(tx),
        })
        .ok()?;
    let response = rx.recv().ok()?;
    match &response {
        Response::Begun { session } => {
            mine.ids.insert(*session);
        }
        // Ended, or already gone (idle timeout, or ended after a failure): no longer ours,
        // and no longer counted in the connection's quota.
        Response::Ended { .. }
        | Response::Error {
            code: ErrorCode::UnknownSession,
            ..
        } => {
            if let Some(id) = asked {
                mine.ids.remove(&id);
            }
        }
        _ => {}
    }
    Some(response)
}

fn worker_gone() -> Response {
    error(
        ErrorCode::Internal,
        "the server's model worker has stopped; the server cannot serve",
    )
}
