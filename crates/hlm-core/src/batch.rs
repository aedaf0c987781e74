//! Batched passes over several sessions of one target model.
//!
//! A server keeps one KV state per session on shared weights. Verifying several sessions'
//! drafts in one pass reads the weights once for all of them, which on a memory-bound CPU
//! costs little more than one session's pass. Which sessions can share a pass is the model's
//! business: a [`TargetModel`] names its weights with [`TargetModel::weights_key`] and runs a
//! group on one key with [`TargetModel::forward_tail_with`]. [`forward_tail_batch`] groups any
//! mix of models by key, so every model type can batch, and a type that cannot is simply run
//! one model at a time.

use std::collections::HashMap;
use std::sync::Arc;

use crate::{Result, TargetModel, TokenId};

/// Names one set of weights in memory: target models with equal keys run on the same weights
/// and may share a pass ([`TargetModel::forward_tail_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WeightsKey(usize);

impl WeightsKey {
    /// The key of the weights behind `weights` (its address: equal while both are alive).
    pub fn of<T: ?Sized>(weights: &Arc<T>) -> Self {
        WeightsKey(Arc::as_ptr(weights) as *const () as usize)
    }
}

/// The logits of every position each model is fed: [`forward_tail_batch`] with every row.
pub fn forward_all_batch(
    models: &mut [&mut dyn TargetModel],
    feeds: &[&[TokenId]],
) -> Vec<Result<Vec<Vec<f32>>>> {
    forward_tail_batch(models, feeds, &vec![usize::MAX; feeds.len()])
}

/// [`TargetModel::forward_tail`] for several models (model `i` is fed `feeds[i]` and returns
/// the logits of its last `tails[i]` positions), with one pass per group of models on the same
/// weights ([`TargetModel::weights_key`]) and one pass each for the others. One result per
/// model, in order; the same logits as calling `forward_tail` on each in turn.
///
/// # Panics
/// When `models`, `feeds` and `tails` differ in length (a caller's bug, not an input).
pub fn forward_tail_batch(
    models: &mut [&mut dyn TargetModel],
    feeds: &[&[TokenId]],
    tails: &[usize],
) -> Vec<Result<Vec<Vec<f32>>>> {
    assert!(
        models.len() == feeds.len() && feeds.len() == tails.len(),
        "one feed and one tail per model"
    );
    // Groups in order of their first member, so that the passes run in a fixed order.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of: HashMap<WeightsKey, usize> = HashMap::new();
    for (i, m) in models.iter().enumerate() {
        match m.weights_key() {
            Some(key) => {
                let g = *group_of.entry(key).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[g].push(i);
            }
            None => groups.push(vec![i]),
        }
    }
    // Pushed one by one: `push` is a coercion site, where each `&mut (dyn TargetModel + 'a)`
    // shortens to the borrow's lifetime (`collect` would not coerce).
    let mut slots: Vec<Option<&mut dyn TargetModel>> = Vec::with_capacity(models.len());
    for m in models.iter_mut() {
        slots.push(Some(&mut **m));
    }
    let mut results: Vec<Option<Result<Vec<Vec<f32>>>>> = (0..feeds.len()).map(|_| None).collect();
    for group in groups {
        let mut members = group.iter().filter_map(|&i| slots[i].take());
        let Some(first) = members.next() else {
            continue;
        };
        let group_feeds: Vec<&[TokenId]> = group.iter().map(|&i| feeds[i]).collect();
        let group_tails: Vec<usize> = group.iter().map(|&i| tails[i]).collect();
        let outs = if group.len() == 1 {
            vec![first.forward_tail(group_feeds[0], group_tails[0])]
        } else {
            let mut others: Vec<&mut dyn TargetModel> = Vec::with_capacity(group.len() - 1);
            for m in members {
                others.push(m);
            }
            first.forward_tail_with(&mut others, &group_feeds, &group_tails)
        };
        for (&i, out) in group.iter().zip(outs) {
            results[i] = Some(out);
        }
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(crate::HlmError::Model(
                    "the batched pass returned no result for this model".into(),
                ))
            })
        })
        .collect()
}
