//! The figures of the comparison table, each a ratio of sums over a method's runs
//! ([`crate::stats`]), so that its point value, its interval and its paired difference
//! against another method are computed one way.

use serde::{Deserialize, Serialize};

use crate::bench::PromptResult;
use crate::stats::Term;

/// One figure of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Share of runs whose completion passes its problem's unit tests (HumanEval pass@1).
    PassAt1,
    /// Mean BERTScore F1 of the runs against their references.
    BertscoreF1,
    /// The target's negative log-likelihood per generated token (nats), token-weighted.
    TargetNll,
    /// Mean share of the same-seed LLM-only run's positions with the same token.
    TokenAgreement,
    /// Uploaded / drafted tokens.
    UploadRate,
    /// Uplink bits per generated token.
    UplinkBitsPerToken,
    /// Downlink bits per generated token.
    DownlinkBitsPerToken,
    /// Modelled energy per generated token (J).
    EnergyPerTokenJ,
    /// Generated tokens per modelled second.
    ModelledTokensPerS,
    /// Generated tokens per wall-clock second.
    WallTokensPerS,
    /// Accepted / verified drafts.
    AcceptanceRate,
}

impl Metric {
    /// Every metric, in table order.
    pub const ALL: [Metric; 11] = [
        Metric::PassAt1,
        Metric::BertscoreF1,
        Metric::TargetNll,
        Metric::TokenAgreement,
        Metric::UploadRate,
        Metric::UplinkBitsPerToken,
        Metric::DownlinkBitsPerToken,
        Metric::EnergyPerTokenJ,
        Metric::ModelledTokensPerS,
        Metric::WallTokensPerS,
        Metric::AcceptanceRate,
    ];

    /// This run's contribution, or `None` where the run has no such figure (no reference to
    /// score against, no verifier to score with).
    pub fn term(self, r: &PromptResult) -> Option<Term> {
        let s = &r.stats;
        let tokens = s.generated_tokens as f64;
        let per_token = |x: f64| Term {
            num: x,
            den: tokens,
        };
        Some(match self {
            Metric::PassAt1 => Term::value(if r.passed? { 1.0 } else { 0.0 }),
            Metric::BertscoreF1 => Term::value(r.bertscore?.f1),
            Metric::TargetNll => {
                let n = r.generated_ids.len() as f64;
                Term {
                    num: r.target_nll? * n,
                    den: n,
                }
            }
            Metric::TokenAgreement => Term::value(r.token_agreement?),
            Metric::UploadRate => Term {
                num: s.uploads as f64,
                den: s.drafted as f64,
            },
            Metric::UplinkBitsPerToken => per_token(s.uplink_bits as f64),
            Metric::DownlinkBitsPerToken => per_token(s.downlink_bits as f64),
            Metric::EnergyPerTokenJ => per_token(s.energy_j.total()),
            Metric::ModelledTokensPerS => Term {
                num: tokens,
                den: s.time_s.total(),
            },
            Metric::WallTokensPerS => Term {
                num: tokens,
                den: s.wall_s,
            },
            Metric::AcceptanceRate => Term {
                num: s.draft_n_accepted as f64,
                den: s.draft_n as f64,
            },
        })
    }

    /// The column heading.
    pub fn label(self) -> &'static str {
        match self {
            Metric::PassAt1 => "pass@1",
            Metric::BertscoreF1 => "BERTScore F1",
            Metric::TargetNll => "target NLL (nats/token)",
            Metric::TokenAgreement => "token agreement",
            Metric::UploadRate => "uploads",
            Metric::UplinkBitsPerToken => "uplink bits/token",
            Metric::DownlinkBitsPerToken => "downlink bits/token",
            Metric::EnergyPerTokenJ => "energy J/token",
            Metric::ModelledTokensPerS => "tokens/s (modelled)",
            Metric::WallTokensPerS => "tokens/s (wall)",
            Metric::AcceptanceRate => "acceptance",
        }
    }

    /// `x` as the table prints this metric (`signed` for a difference).
    pub fn format(self, x: f64, signed: bool) -> String {
        let s = match self {
            Metric::PassAt1
            | Metric::TokenAgreement
            | Metric::UploadRate
            | Metric::AcceptanceRate => {
                return if signed {
                    format!("{:+.1} pp", 100.0 * x)
                } else {
                    format!("{:.1} %", 100.0 * x)
                };
            }
            Metric::BertscoreF1 | Metric::TargetNll | Metric::EnergyPerTokenJ => 4,
            Metric::ModelledTokensPerS | Metric::WallTokensPerS => 2,
            Metric::UplinkBitsPerToken | Metric::DownlinkBitsPerToken => 0,
        };
        if signed {
            format!("{x:+.s$}")
        } else {
            format!("{x:.s$}")
        }
    }
}
