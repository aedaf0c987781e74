//! The random streams of a run.
//!
//! Every consumer of randomness draws from its own ChaCha stream of the run's seed, so that
//! changing one component (say the filter) leaves the others' draws, and so their results, as
//! they were. The streams are listed here, in one enum, so that two consumers in different
//! crates cannot share one by accident. The numbers are part of what a seed reproduces:
//! changing one changes every recorded run that used it.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// One consumer's stream of a run's seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RandomStream {
    /// The device's draft samples (the engine).
    Draft = 1,
    /// The token filter's own draws (random uploads, perturbations).
    Filter = 2,
    /// The modelled link's fading (the engine's `[link]`).
    Link = 3,
    /// The device's draws from a residual the server sent down (split verification).
    Residual = 4,
    /// The verifier's accept/resample draws ([`crate::LocalVerifier`], also in `hlm serve`).
    Verifier = 16,
    /// The link emulated on a real network (`hlm_net::LinkEmulator`).
    LinkEmulator = 32,
}

impl RandomStream {
    /// The generator of this stream for `seed`.
    pub fn rng(self, seed: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(self as u64);
        rng
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    #[test]
    fn streams_of_one_seed_differ_and_repeat() {
        let all = [
            RandomStream::Draft,
            RandomStream::Filter,
            RandomStream::Link,
            RandomStream::Residual,
            RandomStream::Verifier,
            RandomStream::LinkEmulator,
        ];
        let firsts: Vec<u64> = all.iter().map(|s| s.rng(7).next_u64()).collect();
        for (i, a) in firsts.iter().enumerate() {
            for b in &firsts[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(RandomStream::Verifier.rng(7).next_u64(), firsts[4]);
    }
}
