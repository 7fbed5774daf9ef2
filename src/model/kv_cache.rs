//! Keys and values kept between forward passes over the same sequences, for cached diffusion
//! decoding (Fast-dLLM's prefix and dual caches, dLLM-Cache's reuse of decoded positions).
//!
//! A masked-diffusion model attends bidirectionally, so every position's keys and values depend
//! on every token and change whenever any token is revealed: a cache is an approximation that
//! the caller refreshes (a full pass) often enough. [`DiffusionLm::forward_hidden_caching`] is
//! the full pass: bit-identical to [`DiffusionLm::forward_hidden`], it also keeps each layer's
//! roped keys and values. [`DiffusionLm::forward_hidden_window`] then runs only a window of
//! positions through the layers: their queries attend over the cache, in which the window's
//! own keys and values are first replaced by fresh ones (so the window sees itself exactly and
//! the rest as of its last computation).

use std::ops::Range;

use burn::tensor::{backend::Backend, Bool, Int, Tensor};

use super::transformer::{DiffusionLm, MASK_BIAS};
use crate::{Error, Result};

/// One layer's roped keys and values, `[batch, seq, kv_heads, head_dim]` each. Held in an
/// `Option` so that an update moves the tensor out and the backend may write it in place.
#[derive(Debug)]
struct LayerKv<B: Backend> {
    k: Option<Tensor<B, 4>>,
    v: Option<Tensor<B, 4>>,
}

/// The keys and values of every layer for a batch of full sequences.
#[derive(Debug)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerKv<B>>,
    /// `[batch, seq]` position ids of the full sequences.
    positions: Tensor<B, 2, Int>,
    /// `[batch, 1, 1, seq]` additive bias of the keys (padding blocked); `None` without an
    /// attention mask. Window queries are never padding, so this row is their whole bias.
    key_bias: Option<Tensor<B, 4>>,
}

impl<B: Backend> KvCache<B> {
    /// `[batch, seq]` of the cached sequences.
    pub fn dims(&self) -> [usize; 2] {
        self.positions.dims()
    }
}

/// The positions a windowed forward pass computes.
#[derive(Debug, Clone)]
pub enum Window<B: Backend> {
    /// The same positions `range` in every row.
    Range(Range<usize>),
    /// Positions per row, `[batch, w]`. Slots with `valid` false are computed but not written
    /// to the cache (fillers of rows with fewer positions; they may repeat positions, and
    /// must not be padding).
    Rows {
        positions: Tensor<B, 2, Int>,
        valid: Tensor<B, 2, Bool>,
    },
}

impl<B: Backend> Window<B> {
    /// Number of positions per row.
    pub fn len(&self) -> usize {
        match self {
            Window::Range(r) => r.len(),
            Window::Rows { positions, .. } => positions.dims()[1],
        }
    }

    /// Whether the window holds no position.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The window's entries of a per-position tensor, `[batch, seq]` → `[batch, w]`.
    fn take<K>(&self, t: Tensor<B, 2, K>) -> Tensor<B, 2, K>
    where
        K: burn::tensor::BasicOps<B> + burn::tensor::Numeric<B>,
    {
        let b = t.dims()[0];
        match self {
            Window::Range(r) => t.slice([0..b, r.clone()]),
            Window::Rows { positions, .. } => t.gather(1, positions.clone()),
        }
    }

    /// `cache` with the window's positions replaced by `fresh`.
    ///
    /// # Shapes
    /// - cache: `[batch, seq, kv_heads, head_dim]`, fresh: `[batch, w, kv_heads, head_dim]`
    fn write(&self, cache: Tensor<B, 4>, fresh: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, s, kv, hd] = cache.dims();
        match self {
            Window::Range(r) => cache.slice_assign([0..b, r.clone(), 0..kv, 0..hd], fresh),
            Window::Rows { positions, valid } => {
                // Burn's scatter only adds: zero the written positions, then add the fresh
                // values (0 + x is exact) with invalid slots contributing zeros.
                let w = positions.dims()[1];
                let device = cache.device();
                let valid_f = valid.clone().float();
                let hit = Tensor::<B, 2>::zeros([b, s], &device)
                    .scatter(
                        1,
                        positions.clone(),
                        valid_f.clone(),
                        burn::tensor::IndexingUpdateOp::Add,
                    )
                    .greater_elem(0.0);
                let hit = hit.unsqueeze_dims::<4>(&[2, 3]).expand([b, s, kv, hd]);
                let index = positions
                    .clone()
                    .unsqueeze_dims::<4>(&[2, 3])
                    .expand([b, w, kv, hd]);
                let fresh = fresh
                    * valid_f
                        .cast(cache.dtype())
                        .unsqueeze_dims::<4>(&[2, 3])
                        .expand([b, w, kv, hd]);
                cache.mask_fill(hit, 0.0).scatter(
                    1,
                    index,
                    fresh,
                    burn::tensor::IndexingUpdateOp::Add,
                )
            }
        }
    }
}

impl<B: Backend> DiffusionLm<B> {
    /// [`Self::forward_hidden`], bit for bit, that also returns every layer's keys and values.
    ///
    /// # Shapes
    /// - input_ids, attention_mask: as [`Self::forward`]
    /// - returns `[batch, seq, hidden]` and the cache of the `[batch, seq]` sequences
    pub fn forward_hidden_caching(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> (Tensor<B, 3>, KvCache<B>) {
        let key_bias = attention_mask.clone().map(|m| {
            let [b, s] = m.dims();
            // 0 for a token, MASK_BIAS for a pad, as `padding_bias` blocks pad keys.
            (m.float() - 1.0)
                .mul_scalar(-MASK_BIAS)
                .reshape([b, 1, 1, s])
        });
        let (positions, bias) = self.positions_and_bias(&input_ids, attention_mask);
        let (rope, bias) = self.attention_inputs(positions.clone(), bias);
        let mut x = self.embed(input_ids);
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            x = layer.forward_with(x, |attn, h| {
                let (q, k, v) = attn.project(h, &rope);
                layers.push(LayerKv {
                    k: Some(k.clone()),
                    v: Some(v.clone()),
                });
                attn.attend(q, k, v, bias.as_ref())
            });
        }
        let cache = KvCache {
            layers,
            positions,
            key_bias,
        };
        (self.norm.forward(x), cache)
    }

    /// The final hidden states of `window`'s positions only: their tokens go through every
    /// layer, their queries attend over all positions (the window's own fresh keys and values,
    /// the others' from `cache`), and the window's keys and values are written into `cache`.
    ///
    /// # Shapes
    /// - window_ids: `[batch, w]`, the tokens now at the window's positions
    /// - cache: from [`Self::forward_hidden_caching`] over `[batch, seq]`
    /// - returns `[batch, w, hidden]`
    pub fn forward_hidden_window(
        &self,
        window_ids: Tensor<B, 2, Int>,
        window: &Window<B>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 3>> {
        let [b, s] = cache.dims();
        let [wb, w] = window_ids.dims();
        let fits = match window {
            Window::Range(r) => r.end <= s,
            Window::Rows { positions, valid } => {
                positions.dims() == [b, w] && valid.dims() == [b, w]
            }
        };
        if wb != b
            || w != window.len()
            || w == 0
            || !fits
            || cache.layers.len() != self.layers.len()
        {
            return Err(Error::invalid(
                "window",
                format!(
                    "{w} ids per row for a window of {} positions over a cache of {b} × {s} \
                     ({} layers for {})",
                    window.len(),
                    cache.layers.len(),
                    self.layers.len()
                ),
            ));
        }
        let positions = window.take(cache.positions.clone());
        let bias = cache.key_bias.clone().map(|k| k.expand([b, 1, w, s]));
        let (rope, bias) = self.attention_inputs(positions, bias);
        let mut x = self.embed(window_ids);
        for (layer, kv) in self.layers.iter().zip(&mut cache.layers) {
            x = layer.forward_with(x, |attn, h| {
                let (q, k, v) = attn.project(h, &rope);
                let keys = window.write(kv.k.take().expect("kept by every pass"), k);
                let values = window.write(kv.v.take().expect("kept by every pass"), v);
                kv.k = Some(keys.clone());
                kv.v = Some(values.clone());
                attn.attend(q, keys, values, bias.as_ref())
            });
        }
        Ok(self.norm.forward(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use crate::model::ModelConfig;
    use burn::tensor::{DType, TensorData};

    fn model() -> DiffusionLm<Cpu> {
        model_in(DType::F32)
    }

    fn model_in(dtype: DType) -> DiffusionLm<Cpu> {
        let mut c = ModelConfig::preset("tiny").unwrap();
        c.num_hidden_layers = 2;
        DiffusionLm::init_with(&c, &Default::default(), 3, dtype)
    }

    /// Two rows, the second left-padded by 3.
    fn batch(vocab: usize) -> (Tensor<Cpu, 2, Int>, Tensor<Cpu, 2, Int>) {
        let (b, s) = (2, 12);
        let ids: Vec<i64> = (0..b * s)
            .map(|i| (7 + 13 * i as i64) % vocab as i64)
            .collect();
        let mask: Vec<i64> = (0..b * s)
            .map(|i| i64::from(!(i >= s && i < s + 3)))
            .collect();
        let d = Default::default();
        (
            Tensor::from_data(TensorData::new(ids, [b, s]), &d),
            Tensor::from_data(TensorData::new(mask, [b, s]), &d),
        )
    }

    fn max_diff(a: Tensor<Cpu, 3>, b: Tensor<Cpu, 3>) -> f32 {
        (a.cast(DType::F32) - b.cast(DType::F32))
            .abs()
            .max()
            .into_scalar()
    }

    /// bf16 takes Burn's generic attention (not the fused f32 CPU path): windows work there too.
    #[test]
    fn windows_work_on_the_generic_attention_path() {
        let m = model_in(DType::BF16);
        let (ids, mask) = batch(m.config().vocab_size);
        let (full, mut cache) = m.forward_hidden_caching(ids.clone(), Some(mask));
        let got = m
            .forward_hidden_window(ids.slice([0..2, 4..12]), &Window::Range(4..12), &mut cache)
            .unwrap();
        let want = full.slice([0..2, 4..12, 0..64]);
        let scale: f32 = want.clone().cast(DType::F32).abs().max().into_scalar();
        assert!(max_diff(got, want) <= 0.02 * scale);
    }

    #[test]
    fn caching_pass_is_the_plain_forward_bit_for_bit() {
        let m = model();
        let (ids, mask) = batch(m.config().vocab_size);
        let plain = m.forward_hidden(ids.clone(), Some(mask.clone()));
        let (cached, cache) = m.forward_hidden_caching(ids, Some(mask));
        assert_eq!(cache.dims(), [2, 12]);
        assert_eq!(plain.into_data(), cached.into_data());
    }

    /// With nothing changed since the caching pass, a window reproduces the full pass's rows
    /// (the cache holds exactly the keys and values the window recomputes).
    #[test]
    fn a_window_over_a_fresh_cache_matches_the_full_pass() {
        let m = model();
        let (ids, mask) = batch(m.config().vocab_size);
        for with_mask in [true, false] {
            let mask = with_mask.then(|| mask.clone());
            let (full, mut cache) = m.forward_hidden_caching(ids.clone(), mask.clone());
            let window = Window::Range(5..12);
            let got = m
                .forward_hidden_window(ids.clone().slice([0..2, 5..12]), &window, &mut cache)
                .unwrap();
            assert!(max_diff(got, full.clone().slice([0..2, 5..12, 0..64])) < 1e-5);
            // Per-row positions, one filler slot in row 1.
            let d = Default::default();
            let pos = Tensor::<Cpu, 2, Int>::from_data(
                TensorData::new(vec![4i64, 9, 11, 6, 10, 10], [2, 3]),
                &d,
            );
            let valid = Tensor::<Cpu, 2, Bool>::from_data(
                TensorData::new(vec![true, true, true, true, true, false], [2, 3]),
                &d,
            );
            let window = Window::Rows {
                positions: pos.clone(),
                valid,
            };
            let got = m
                .forward_hidden_window(ids.clone().gather(1, pos.clone()), &window, &mut cache)
                .unwrap();
            let index = pos.unsqueeze_dim::<3>(2).expand([2, 3, 64]);
            assert!(max_diff(got, full.gather(1, index)) < 1e-5);
        }
    }

    /// After a token changes, a window holding every position equals a fresh full pass: the
    /// cache only supplies positions outside the window.
    #[test]
    fn a_window_over_every_position_sees_changed_tokens() {
        let m = model();
        let (ids, mask) = batch(m.config().vocab_size);
        let (_, mut cache) = m.forward_hidden_caching(ids.clone(), Some(mask.clone()));
        let changed = ids.slice_assign([0..2, 8..9], Tensor::full([2, 1], 5, &Default::default()));
        let want = m.forward_hidden(changed.clone(), Some(mask));
        let got = m
            .forward_hidden_window(changed, &Window::Range(0..12), &mut cache)
            .unwrap();
        // Pad queries attend to themselves only in the full pass, to every token here: compare
        // the real positions.
        let real = |t: Tensor<Cpu, 3>| t.slice([1..2, 3..12, 0..64]);
        assert!(max_diff(real(got.clone()), real(want.clone())) < 1e-5);
        let first = |t: Tensor<Cpu, 3>| t.slice([0..1, 0..12, 0..64]);
        assert!(max_diff(first(got), first(want)) < 1e-5);
    }

    #[test]
    fn a_mismatched_window_is_refused() {
        let m = model();
        let (ids, mask) = batch(m.config().vocab_size);
        let (_, mut cache) = m.forward_hidden_caching(ids.clone(), Some(mask));
        let e = m
            .forward_hidden_window(ids.slice([0..2, 0..3]), &Window::Range(10..14), &mut cache)
            .unwrap_err();
        assert!(e.to_string().contains("window"), "{e}");
    }
}
