//! The fused output head ([`crate::estimator::head`]) on flex f32 buffers: the logits of a chunk
//! of rows in one product, then one vectorised pass per row for its log-partition and target
//! logit; in backward the same logits recomputed and turned into their gradient in place, so a
//! chunk never needs more than one `[chunk, vocab]` buffer.

use std::ops::Range;

use rayon::prelude::*;

use super::gemm::{matmul_to_vec, View};
use super::math::{logsumexp, neg_scaled_softmax_inplace};
use crate::estimator::head::HeadLayout;

/// Shapes of one fused-head call: `m` hidden rows of width `d` against a `vocab`-wide weight,
/// `chunk` rows of logits at a time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadDims {
    pub m: usize,
    pub d: usize,
    pub vocab: usize,
    pub chunk: usize,
    pub layout: HeadLayout,
}

impl HeadDims {
    /// The weight as the `d × vocab` right operand of `logits = h · w` (no copy).
    fn w_view(&self, w: &[f32]) -> View {
        match self.layout {
            HeadLayout::InOut => View::rows(w, self.vocab),
            HeadLayout::OutIn => View::rows(w, self.d).t(),
        }
    }

    fn chunks(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        (0..self.m)
            .step_by(self.chunk.max(1))
            .map(|r0| r0..(r0 + self.chunk.max(1)).min(self.m))
    }

    fn check(&self, h: &[f32], w: &[f32], targets: &[usize]) {
        assert_eq!(h.len(), self.m * self.d, "hidden rows are not m × d");
        assert_eq!(w.len(), self.d * self.vocab, "the weight is not d × vocab");
        assert_eq!(targets.len(), self.m, "one target per row");
        assert!(
            targets.iter().all(|&t| t < self.vocab),
            "target outside the vocabulary"
        );
    }
}

/// Logits of hidden rows `rows`: `[rows.len(), vocab]`.
fn logits(h: &[f32], w: &[f32], dims: &HeadDims, rows: &Range<usize>) -> Vec<f32> {
    let d = dims.d;
    let h = &h[rows.start * d..rows.end * d];
    // SAFETY: `h` is rows.len() × d and the weight view d × vocab (checked by `HeadDims::check`).
    unsafe {
        matmul_to_vec(
            (rows.len(), dims.vocab, d),
            View::rows(h, d),
            dims.w_view(w),
            None,
        )
    }
}

/// `(log p(target), log-partition)` of every row.
///
/// # Shapes
/// - h: `[m, d]`; w: `[d, vocab]` (`InOut`) or `[vocab, d]` (`OutIn`); targets: `[m]`
/// - returns two `[m]` vectors
pub(crate) fn forward(
    h: &[f32],
    w: &[f32],
    targets: &[usize],
    dims: &HeadDims,
) -> (Vec<f32>, Vec<f32>) {
    dims.check(h, w, targets);
    let (mut lp, mut lse) = (vec![0.0f32; dims.m], vec![0.0f32; dims.m]);
    for rows in dims.chunks() {
        let logits = logits(h, w, dims, &rows);
        logits
            .par_chunks(dims.vocab)
            .zip(lp[rows.clone()].par_iter_mut())
            .zip(lse[rows.clone()].par_iter_mut())
            .zip(targets[rows].par_iter())
            .for_each(|(((row, lp), lse), &t)| {
                *lse = logsumexp(row);
                *lp = row[t] - *lse;
            });
    }
    (lp, lse)
}

/// Gradients of `Σ_i d_lp[i] · log p(target_i)`: `dh` `[m, d]` and, when `with_weight`, the
/// weight's gradient in the weight's own layout. The logits are recomputed chunk by chunk.
pub(crate) fn backward(
    h: &[f32],
    w: &[f32],
    targets: &[usize],
    (lse, d_lp): (&[f32], &[f32]),
    dims: &HeadDims,
    with_weight: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    dims.check(h, w, targets);
    let (d, vocab) = (dims.d, dims.vocab);
    let mut dh = Vec::with_capacity(dims.m * d);
    let mut dw = with_weight.then(|| vec![0.0f32; d * vocab]);
    for rows in dims.chunks() {
        let mut g = logits(h, w, dims, &rows);
        // dlogits = d · (onehot(target) − softmax), in place.
        g.par_chunks_mut(vocab)
            .zip(lse[rows.clone()].par_iter())
            .zip(d_lp[rows.clone()].par_iter())
            .zip(targets[rows.clone()].par_iter())
            .for_each(|(((row, &lse), &dl), &t)| {
                if dl == 0.0 {
                    row.fill(0.0);
                } else {
                    neg_scaled_softmax_inplace(row, lse, dl);
                    row[t] += dl;
                }
            });
        let c = rows.len();
        let hc = &h[rows.start * d..rows.end * d];
        // SAFETY (all three products): `g` is c × vocab, `hc` c × d, the weight d × vocab, and
        // the accumulators have the products' shapes.
        // dh = g · wᵀ
        dh.extend(unsafe {
            matmul_to_vec(
                (c, d, vocab),
                View::rows(&g, vocab),
                dims.w_view(w).t(),
                None,
            )
        });
        dw = dw.map(|acc| match dims.layout {
            // dw [d, vocab] += hcᵀ · g
            HeadLayout::InOut => unsafe {
                matmul_to_vec(
                    (d, vocab, c),
                    View::rows(hc, d).t(),
                    View::rows(&g, vocab),
                    Some(acc),
                )
            },
            // dw [vocab, d] += gᵀ · hc
            HeadLayout::OutIn => unsafe {
                matmul_to_vec(
                    (vocab, d, c),
                    View::rows(&g, vocab).t(),
                    View::rows(hc, d),
                    Some(acc),
                )
            },
        });
    }
    (dh, dw)
}
