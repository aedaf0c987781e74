//! The worst-case memory of a server's limits: what `hlm serve` prints at start, so an
//! operator sees what the limits allow before a client finds it out.

use std::fmt;

use hlm_core::MemoryProfile;

use super::ServerLimits;

/// Read buffer of one connection (bytes).
pub(crate) const READ_BUFFER: usize = 1 << 16;

/// The most memory the server can need under its limits, by part (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// The server as loaded: the process's peak resident memory so far where the system
    /// tells it (weights, program, tokenizer, what loading needed), else the model's weights.
    pub loaded: u64,
    /// The KV state of every session together, at `max_held_tokens` positions.
    pub kv: u64,
    /// Frames being read and decoded, one per connection at `max_message_bytes`.
    pub frames: u64,
    /// Requests in the model worker's batch: their payloads, logits and distributions.
    pub batch: u64,
    /// The working memory of one pass.
    pub pass: u64,
    /// Positions of KV state that `kv` counts.
    pub held_tokens: u64,
}

impl MemoryBudget {
    /// The worst case of `limits` on a model of `profile` in a process that holds `loaded`
    /// bytes, with `max_context` the effective context of a session and `held_tokens` the
    /// effective KV budget.
    pub fn of(
        profile: &MemoryProfile,
        loaded: Option<u64>,
        limits: &ServerLimits,
        max_context: usize,
        held_tokens: usize,
    ) -> Self {
        let (held, ctx) = (held_tokens as u64, max_context as u64);
        let kv = (held + limits.max_sessions as u64 * profile.kv_positions_per_session_slack)
            .saturating_mul(profile.kv_bytes_per_position);
        // A frame's body grows as its bytes arrive, and decoding copies it once.
        let frames = (limits.max_connections as u64)
            .saturating_mul(2 * limits.max_message_bytes as u64 + READ_BUFFER as u64);
        // Per request, in rows over the vocabulary: each draft's unpacked upload, and each
        // position's logits twice (the pass's output and the rows cut from it); the
        // distributions compared are made one draft at a time.
        let rows = limits.max_drafts as u64 + 1;
        let batch = (limits.max_batch as u64)
            .saturating_mul(3 * rows + 2)
            .saturating_mul(profile.logits_bytes_per_row);
        let positions = profile
            .pass_positions
            .map_or(limits.max_request_tokens, |p| {
                p.min(limits.max_request_tokens)
            }) as u64;
        let pass = positions
            .saturating_mul(profile.pass_bytes_per_position)
            .saturating_add(ctx.saturating_mul(profile.attention_bytes_per_context_position));
        MemoryBudget {
            loaded: loaded.unwrap_or(0).max(profile.weight_bytes),
            kv,
            frames,
            batch,
            pass,
            held_tokens: held,
        }
    }

    /// Every part together.
    pub fn total(&self) -> u64 {
        self.loaded
            .saturating_add(self.kv)
            .saturating_add(self.frames)
            .saturating_add(self.batch)
            .saturating_add(self.pass)
    }
}

/// Bytes for people: `1.2 GB`, `340 MB`, `64 kB`.
pub fn human_bytes(b: u64) -> String {
    let b = b as f64;
    match b {
        _ if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        _ if b >= 1e6 => format!("{:.0} MB", b / 1e6),
        _ => format!("{:.0} kB", b / 1e3),
    }
}

impl fmt::Display for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = the loaded server {} + KV state of {} positions {} + frames in flight {} + \
             a batch's logits and payloads {} + one pass {}",
            human_bytes(self.total()),
            human_bytes(self.loaded),
            self.held_tokens,
            human_bytes(self.kv),
            human_bytes(self.frames),
            human_bytes(self.batch),
            human_bytes(self.pass)
        )
    }
}

/// This process's peak resident memory so far (`VmHWM` on Linux), or `None` where the system
/// does not say.
pub fn peak_resident() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}
