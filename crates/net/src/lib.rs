//! # hlm-net
//!
//! The hybrid pipeline split over a real network: the server model behind `hlm serve`, the
//! device's [`RemoteVerifier`], and the wire protocol between them.
//!
//! - [`wire`]: framing (`"HLM"`, version, length, postcard body) and the bit-exact packing of
//!   upload payloads, so the bytes on the wire are what the codec's bit count says;
//! - [`protocol`]: the messages (`Hello`, `Begin`, `Verify`, `Sync`, `End`, errors);
//! - [`server`]: [`ServerConfig`] (`configs/server.toml`), [`Server`], limits, per-session KV
//!   state on shared weights, a model worker that takes queued requests as batches;
//! - [`client`]: [`RemoteVerifierSpec`] (`[verifier] type = "remote"`), reconnection and
//!   resynchronisation after faults;
//! - [`emulation`]: [`LinkEmulator`] holds each message for its modelled airtime;
//! - [`engines`]: verification on serving engines (`type = "llama_server"`, `"vllm"`,
//!   `"sglang"`) over HTTP.
//!
//! ```no_run
//! # fn main() -> hlm_core::Result<()> {
//! let cfg = hlm_net::ServerConfig::load("configs/server.toml".as_ref())?;
//! let server = cfg.build(&hlm_core::BuildContext::default())?;
//! let listener = std::net::TcpListener::bind("127.0.0.1:7070").expect("bind");
//! server.spawn(listener).expect("threads").wait().expect("the model worker failed");
//! # Ok(()) }
//! ```

pub mod client;
pub mod emulation;
pub mod engines;
pub mod protocol;
pub mod server;
pub mod wire;

pub use client::{RemoteVerifier, RemoteVerifierSpec};
pub use emulation::LinkEmulator;
pub use engines::{EngineSpec, EngineVerifier, LlamaServerSpec, SglangSpec, VllmSpec};
pub use server::{
    MemoryBudget, Server, ServerConfig, ServerCounters, ServerFailed, ServerHandle, ServerLimits,
};

/// Make sure the plug-ins of this crate (`type = "remote"`, the engine verifiers) are linked into a binary that only
/// names them in config files.
pub fn link() {}
