//! Monte-Carlo ELBO reference (spec §2.4, LLaDA's `get_log_likelihood` restricted to the
//! completion): `ELBO(k) = E_{t ~ U(t_min, t_max), M ~ Bernoulli(t)}[M_k · lp_t(k) / t]`,
//! estimated with many independent draws. It is the yardstick the cheap estimators are tested
//! against: `E[coupled score(k)] = (lp0(k) + 2λ·ELBO(k)) / (λ + 1)`.

use burn::tensor::backend::Backend;
use rand::Rng;

use super::base::{build_view, score_views, ScoreBatch};
use super::masks::MaskSeed;
use crate::model::DiffusionLm;
use crate::{Error, Result};

/// Per-token Monte-Carlo ELBO estimate over `draws` independent `(t, M)` draws, forwarding
/// `seqs_per_forward` masked sequences at a time.
///
/// # Shapes
/// - returns `[rows][K]`
pub fn mc_elbo<B: Backend>(
    model: &DiffusionLm<B>,
    batch: &ScoreBatch,
    draws: usize,
    t_range: (f32, f32),
    seed: MaskSeed,
    seqs_per_forward: usize,
) -> Result<Vec<Vec<f64>>> {
    if draws == 0 || seqs_per_forward == 0 {
        return Err(Error::invalid(
            "draws",
            "need at least one draw and one sequence per forward",
        ));
    }
    let mask_id = model.config().mask_token()?;
    let (rows, k) = (batch.rows(), batch.completion_len());
    let mut rng = seed.scalar_rng();
    let mut sums = vec![vec![0f64; k]; rows];
    // Flatten (draw, row) pairs and forward them in slices.
    let total = draws * rows;
    let mut done = 0;
    while done < total {
        let n = seqs_per_forward.min(total - done);
        let src: Vec<usize> = (done..done + n).map(|i| i % rows).collect();
        let sub = ScoreBatch {
            prompt_ids: src.iter().map(|&r| batch.prompt_ids[r].clone()).collect(),
            prompt_mask: src.iter().map(|&r| batch.prompt_mask[r].clone()).collect(),
            completion_ids: src
                .iter()
                .map(|&r| batch.completion_ids[r].clone())
                .collect(),
            row_index: (0..n).collect(),
        };
        let mut masks = Vec::with_capacity(n);
        let mut ratios = Vec::with_capacity(n);
        for _ in 0..n {
            let t = t_range.0 + (t_range.1 - t_range.0) * rng.random::<f32>();
            masks.push(
                (0..k)
                    .map(|_| rng.random::<f32>() < t)
                    .collect::<Vec<bool>>(),
            );
            ratios.push(t);
        }
        let view = build_view(
            &sub,
            mask_id,
            |i| (None, masks[i].clone()),
            |i, j| {
                if masks[i][j] {
                    1.0 / ratios[i]
                } else {
                    0.0
                }
            },
        );
        let scores = score_views(
            model,
            &sub,
            &[view],
            super::DEFAULT_MAX_LOGIT_BYTES,
            super::ScoringPath::Lean,
        )?;
        let values = scores
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32 scores");
        for (i, &r) in src.iter().enumerate() {
            for j in 0..k {
                sums[r][j] += values[i * k + j] as f64;
            }
        }
        done += n;
    }
    Ok(sums
        .into_iter()
        .map(|row| row.into_iter().map(|s| s / draws as f64).collect())
        .collect())
}
