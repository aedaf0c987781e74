//! Keys and values of the CPU decoder, in host memory, position-major.
//!
//! Each layer keeps one growing buffer for keys and one for values, `[position, kv_head,
//! head_dim]`: appending a token writes its rows at the end (amortised by the buffer's own
//! growth, never by concatenating tensors), and a rollback only shortens the buffers. The
//! capacity can be reserved up front ([`HostKvCache::reserve`]) so a run of known length never
//! reallocates.
//!
//! Buffers grow by a quarter (at least [`MIN_GROWTH`] positions) rather than by `Vec`'s
//! doubling: a server states its worst-case memory from the capacity its sessions may hold,
//! and 1.25 × a long context is what it can afford where 2 × is not.

/// Positions a buffer grows by at least.
pub const MIN_GROWTH: usize = 64;

/// The KV state of one sequence.
#[derive(Debug, Clone)]
pub struct HostKvCache {
    /// Per layer: `[len, kv_heads * head_dim]` keys (RoPE applied) and values.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// Floats per position in one layer (`kv_heads * head_dim`).
    width: usize,
    /// Committed positions ([`HostKvCache::commit`]); the buffers may hold more while a pass
    /// is under way.
    len: usize,
}

impl HostKvCache {
    pub fn new(n_layers: usize, kv_heads: usize, head_dim: usize) -> Self {
        HostKvCache {
            keys: vec![Vec::new(); n_layers],
            values: vec![Vec::new(); n_layers],
            width: kv_heads * head_dim,
            len: 0,
        }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Make room for `positions` positions in every layer without reallocating later.
    pub fn reserve(&mut self, positions: usize) {
        let want = positions.saturating_mul(self.width);
        for buf in self.keys.iter_mut().chain(self.values.iter_mut()) {
            buf.reserve(want.saturating_sub(buf.len()));
        }
    }

    /// Append one layer's new keys and values (`[new, width]` each).
    pub fn append(&mut self, layer: usize, keys: &[f32], values: &[f32]) {
        let min = MIN_GROWTH * self.width;
        for (buf, new) in [
            (&mut self.keys[layer], keys),
            (&mut self.values[layer], values),
        ] {
            let need = buf.len() + new.len();
            if need > buf.capacity() {
                let target = need.max(buf.len() + buf.len() / 4).max(min);
                buf.reserve_exact(target - buf.len());
            }
            buf.extend_from_slice(new);
        }
    }

    /// The most bytes a cache may hold per position it holds, for positions of
    /// `bytes_per_position` bytes: the growth of a quarter (plus one position of rounding).
    pub fn worst_case_bytes(bytes_per_position: u64) -> u64 {
        bytes_per_position + bytes_per_position.div_ceil(4)
    }

    /// Every key and value of `layer`, appended ones included: `[positions, width]`.
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.keys[layer], &self.values[layer])
    }

    /// Record that every layer now holds `len` positions.
    pub fn commit(&mut self, len: usize) {
        self.len = len;
    }

    /// Cut every layer back to `len` positions (also undoes appends never committed).
    pub fn truncate(&mut self, len: usize) {
        for buf in self.keys.iter_mut().chain(self.values.iter_mut()) {
            buf.truncate(len * self.width);
        }
        self.len = self.len.min(len);
    }

    /// Bytes the buffers hold (their capacity).
    pub fn bytes(&self) -> usize {
        self.keys
            .iter()
            .chain(&self.values)
            .map(|b| b.capacity() * std::mem::size_of::<f32>())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_commit_and_truncate() {
        let mut c = HostKvCache::new(2, 1, 2);
        c.reserve(8);
        let cap = c.bytes();
        assert_eq!(cap, 4 * 8 * 2 * 4);
        for layer in 0..2 {
            c.append(layer, &[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0]);
        }
        c.commit(2);
        assert_eq!(c.len(), 2);
        assert_eq!(c.layer(1).0, &[1.0, 2.0, 3.0, 4.0]);
        c.append(0, &[9.0, 9.0], &[9.0, 9.0]);
        // An uncommitted append is undone by truncating to the committed length.
        c.truncate(2);
        assert_eq!(c.layer(0).0.len(), 4);
        c.truncate(1);
        assert_eq!((c.len(), c.layer(0).1), (1, &[5.0, 6.0][..]));
        assert_eq!(c.bytes(), cap, "no reallocation");
    }
}
