//! Acceptance rules of speculative sampling: the math every verifier shares.
//!
//! With the draft distribution x (as the verifier received it) and the target distribution y,
//! a draft token d is accepted with probability min(1, y_d / x_d); otherwise a token is drawn
//! from norm(max(0, y − x)). When d ~ x, the result is distributed exactly as y
//! (Leviathan et al. 2023; Chen et al. 2023). Greedy matching is the temperature-0 case.

use std::sync::Arc;

use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use crate::TokenId;
use crate::sampling::{argmax, sample, sample_weights};

/// The verdict on one uploaded draft token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// The draft token stands.
    Accept,
    /// The draft token is replaced by this one.
    Reject(TokenId),
}

/// The verdict on one draft token of split verification, where the verifier knows only x_d.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitJudgement {
    /// The draft token stands.
    Accept,
    /// The draft token is replaced by this one (a rule that needs no x for the replacement,
    /// such as greedy matching).
    Replace(TokenId),
    /// The draft token is rejected; the device draws the replacement from norm(max(0, y − x))
    /// with its own x, from the distribution the verifier sends down.
    Residual,
}

/// A rule that judges one draft token against the target distribution.
#[typetag::serde(tag = "type")]
pub trait AcceptanceRule: std::fmt::Debug + Send + Sync {
    /// Judge `draft` given the reconstructed draft distribution `x` and the target
    /// distribution `y` (both of vocabulary length).
    fn judge(&self, draft: TokenId, x: &[f32], y: &[f32], rng: &mut dyn RngCore) -> Judgement;

    /// Judge `draft` knowing only its draft probability `x_d` (split verification). The
    /// default is speculative sampling's: accept with probability min(1, y_d / x_d), else leave
    /// the replacement to the device's residual draw, which together are lossless.
    fn judge_split(
        &self,
        draft: TokenId,
        x_d: f32,
        y: &[f32],
        rng: &mut dyn RngCore,
    ) -> SplitJudgement {
        let y_d = y.get(draft as usize).copied().unwrap_or(0.0);
        if x_d <= y_d || rng.random::<f64>() < (y_d as f64 / x_d as f64) {
            SplitJudgement::Accept
        } else {
            SplitJudgement::Residual
        }
    }
}

/// Exact speculative sampling (lossless when the draft was sampled from `x`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeculativeSampling {}

#[typetag::serde(name = "speculative")]
impl AcceptanceRule for SpeculativeSampling {
    fn judge(&self, draft: TokenId, x: &[f32], y: &[f32], rng: &mut dyn RngCore) -> Judgement {
        let d = draft as usize;
        let x_d = x.get(d).copied().unwrap_or(0.0);
        let y_d = y.get(d).copied().unwrap_or(0.0);
        // x_d <= y_d accepts outright; this also covers x_d == 0 (a draft the payload dropped).
        if x_d <= y_d || rng.random::<f64>() < (y_d as f64 / x_d as f64) {
            return Judgement::Accept;
        }
        let residual: Vec<f32> = y.iter().zip(x).map(|(&a, &b)| (a - b).max(0.0)).collect();
        // An all-zero residual means x >= y everywhere, i.e. x == y up to rounding: y itself
        // is then the right distribution to draw from.
        let tok = sample_weights(&residual, rng).unwrap_or_else(|| sample(y, rng));
        Judgement::Reject(tok as TokenId)
    }
}

/// Greedy verification: accept iff the draft is the target's most likely token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GreedyMatch {}

#[typetag::serde(name = "greedy")]
impl AcceptanceRule for GreedyMatch {
    fn judge(&self, draft: TokenId, _x: &[f32], y: &[f32], _rng: &mut dyn RngCore) -> Judgement {
        let best = argmax(y) as TokenId;
        if best == draft {
            Judgement::Accept
        } else {
            Judgement::Reject(best)
        }
    }

    /// With one-hot distributions the residual is the target's argmax: no download needed.
    fn judge_split(
        &self,
        draft: TokenId,
        _x_d: f32,
        y: &[f32],
        rng: &mut dyn RngCore,
    ) -> SplitJudgement {
        match self.judge(draft, &[], y, rng) {
            Judgement::Accept => SplitJudgement::Accept,
            Judgement::Reject(t) => SplitJudgement::Replace(t),
        }
    }
}

/// The acceptance rule a config chooses: `rule = "speculative"` (the default: exact
/// speculative sampling, greedy matching at temperature 0) or `rule = "greedy"`, or any
/// registered rule, a crate's own included, by name or as a table
/// (`rule = { type = "name", ... }` for a rule with parameters). One rule serves every
/// session that uses it.
#[derive(Debug, Clone)]
pub struct ConfiguredRule(Arc<dyn AcceptanceRule>);

impl ConfiguredRule {
    /// A configured `rule`.
    pub fn new(rule: Arc<dyn AcceptanceRule>) -> Self {
        ConfiguredRule(rule)
    }

    /// The rule itself, shared.
    pub fn rule(&self) -> Arc<dyn AcceptanceRule> {
        Arc::clone(&self.0)
    }
}

impl Default for ConfiguredRule {
    fn default() -> Self {
        ConfiguredRule(Arc::new(SpeculativeSampling {}))
    }
}

impl Serialize for ConfiguredRule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.as_ref().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ConfiguredRule {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // A bare name is the table of a rule without parameters.
        let table = match toml::Value::deserialize(deserializer)? {
            toml::Value::String(name) => toml::Value::Table(toml::map::Map::from_iter([(
                "type".to_string(),
                name.into(),
            )])),
            table @ toml::Value::Table(_) => table,
            other => {
                return Err(D::Error::custom(format!(
                    "an acceptance rule is a name (\"speculative\", \"greedy\") or a table \
                     with `type`, not the {} {other}",
                    other.type_str()
                )));
            }
        };
        let rule: Box<dyn AcceptanceRule> = table.try_into().map_err(|e: toml::de::Error| {
            D::Error::custom(format!("acceptance rule: {}", e.message()))
        })?;
        Ok(ConfiguredRule(Arc::from(rule)))
    }
}

/// The exact probability that a draft `d` is rejected: max(0, 1 − y_d / x_d).
pub fn rejection_probability(draft: TokenId, x: &[f32], y: &[f32]) -> f32 {
    let d = draft as usize;
    let x_d = x.get(d).copied().unwrap_or(0.0);
    let y_d = y.get(d).copied().unwrap_or(0.0);
    if x_d <= 0.0 {
        0.0
    } else {
        (1.0 - y_d / x_d).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const X: [f32; 4] = [0.5, 0.3, 0.15, 0.05];
    const Y: [f32; 4] = [0.1, 0.2, 0.3, 0.4];

    /// Draws d ~ X 200,000 times, lets `step` decide the output token for each, and checks the
    /// output frequencies against Y.
    fn assert_output_follows_y(
        seed: u64,
        mut step: impl FnMut(TokenId, &mut ChaCha8Rng) -> TokenId,
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = 200_000;
        let mut counts = [0f64; 4];
        for _ in 0..n {
            let d = sample(&X, &mut rng) as TokenId;
            counts[step(d, &mut rng) as usize] += 1.0;
        }
        for i in 0..4 {
            let p = counts[i] / n as f64;
            assert!(
                (p - Y[i] as f64).abs() < 0.005,
                "token {i}: {p} vs {}",
                Y[i]
            );
        }
    }

    /// Exhaustive check of the output law of one accept/resample step against y.
    #[test]
    fn one_step_output_is_distributed_as_target() {
        let rule = SpeculativeSampling {};
        assert_output_follows_y(11, |d, rng| match rule.judge(d, &X, &Y, rng) {
            Judgement::Accept => d,
            Judgement::Reject(t) => t,
        });
    }

    /// Split judging with the device's residual draw has the same output law as full
    /// speculative sampling: y.
    #[test]
    fn split_judging_with_residual_draw_is_distributed_as_target() {
        let rule = SpeculativeSampling {};
        let residual = crate::ResidualCodec::default().encode(&Y).unwrap();
        assert_output_follows_y(12, |d, rng| {
            match rule.judge_split(d, X[d as usize], &Y, rng) {
                SplitJudgement::Accept => d,
                SplitJudgement::Replace(t) => t,
                SplitJudgement::Residual => residual.draw(&X, rng).unwrap().0,
            }
        });
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        assert_eq!(
            GreedyMatch {}.judge_split(0, 1.0, &Y, &mut rng),
            SplitJudgement::Replace(3)
        );
    }

    #[test]
    fn rejection_probability_matches_rule() {
        assert_eq!(rejection_probability(0, &[0.5, 0.5], &[0.25, 0.75]), 0.5);
        assert_eq!(rejection_probability(1, &[0.5, 0.5], &[0.25, 0.75]), 0.0);
        assert_eq!(rejection_probability(1, &[1.0, 0.0], &[0.25, 0.75]), 0.0);
    }

    #[test]
    fn greedy_returns_target_argmax() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let g = GreedyMatch {};
        assert_eq!(
            g.judge(2, &[], &[0.1, 0.2, 0.7], &mut rng),
            Judgement::Accept
        );
        assert_eq!(
            g.judge(0, &[], &[0.1, 0.2, 0.7], &mut rng),
            Judgement::Reject(2)
        );
    }

    #[derive(Debug, Deserialize, Serialize)]
    struct WithRule {
        #[serde(default)]
        rule: ConfiguredRule,
    }

    fn judge_of(text: &str) -> Judgement {
        let cfg: WithRule = toml::from_str(text).expect("parses");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        // x gives the draft all its mass, y a little: speculative sampling rejects it with
        // probability 0.9, greedy matching always (token 1 is y's argmax).
        cfg.rule.rule().judge(0, &[1.0, 0.0], &[0.1, 0.9], &mut rng)
    }

    #[test]
    fn a_rule_is_chosen_by_name_or_by_table() {
        assert_eq!(judge_of(r#"rule = "greedy""#), Judgement::Reject(1));
        assert_eq!(
            judge_of(r#"rule = { type = "greedy" }"#),
            Judgement::Reject(1)
        );
        let cfg: WithRule = toml::from_str("").unwrap();
        assert!(format!("{:?}", cfg.rule).contains("SpeculativeSampling"));
        let cfg: WithRule = toml::from_str(r#"rule = "speculative""#).unwrap();
        assert!(format!("{:?}", cfg.rule).contains("SpeculativeSampling"));
        // Written back as the table a config may hold.
        let cfg: WithRule = toml::from_str(r#"rule = "greedy""#).unwrap();
        let text = toml::to_string(&cfg).unwrap();
        assert!(text.contains(r#"type = "greedy""#), "{text}");
        assert_eq!(judge_of(&text), Judgement::Reject(1));
    }

    #[test]
    fn an_unknown_or_mistyped_rule_is_named_in_the_error() {
        let err = toml::from_str::<WithRule>(r#"rule = "fastest""#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("acceptance rule") && err.contains("fastest"),
            "{err}"
        );
        assert!(
            err.contains("greedy") && err.contains("speculative"),
            "{err}"
        );
        let err = toml::from_str::<WithRule>("rule = 3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not the integer 3"), "{err}");
    }
}
