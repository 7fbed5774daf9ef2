//! Cached and parallel decoding (`rollout.cache`, `cache_refresh`, `max_tokens_per_step`,
//! `early_completion`) on the embedded coder (assets/tiny-coder) and held-out toy prompts, the
//! model and prompts the main job decodes: exactness where the settings promise it, agreement
//! with exact decoding where they approximate it, and the work they save.

use std::path::PathBuf;

use coupled_grpo::backend::Cpu;
use coupled_grpo::data::synthetic::{Generator, Split};
use coupled_grpo::eval::{EvalConfig, Evaluator};
use coupled_grpo::model::{load_pretrained, load_tokenizer, DiffusionLm, ModelConfig, Tokenizer};
use coupled_grpo::rollout::{
    decode_rows, generate, prompt_rows, CacheMode, Decoded, RolloutBatch, RolloutConfig,
};

fn coder() -> (DiffusionLm<Cpu>, Tokenizer) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-coder");
    let model = load_pretrained::<Cpu>(&dir, &Default::default()).unwrap();
    let tokenizer = load_tokenizer(&dir, model.config()).unwrap();
    (model, tokenizer)
}

/// Six held-out prompts in the training chat format (their lengths differ: left padding).
fn prompts(model: &DiffusionLm<Cpu>) -> Vec<String> {
    let tasks = Generator::new(Split::HeldOut, 0).distinct(6).unwrap();
    tasks
        .iter()
        .map(|t| Evaluator::prompt(model.config().family, t, &EvalConfig::default()).unwrap())
        .collect()
}

/// The main job's rollout (K = 48), greedy, one completion per prompt.
fn greedy() -> RolloutConfig {
    RolloutConfig {
        max_new_tokens: 48,
        steps: 48,
        temperature: 0.0,
        top_p: None,
        num_completions: 1,
        max_prompt_length: 128,
        ..RolloutConfig::default()
    }
}

fn run(model: &DiffusionLm<Cpu>, tok: &Tokenizer, p: &[String], c: &RolloutConfig) -> RolloutBatch {
    generate(model, tok, p, c).unwrap()
}

/// Fraction of completion tokens equal between two decodes.
fn agreement(a: &[Vec<u32>], b: &[Vec<u32>]) -> f64 {
    let pairs = a.iter().flatten().zip(b.iter().flatten());
    let (same, all) = pairs.fold((0, 0), |(s, n), (x, y)| (s + usize::from(x == y), n + 1));
    same as f64 / all as f64
}

fn with(
    base: &RolloutConfig,
    cache: CacheMode,
    refresh: usize,
    block: Option<usize>,
) -> RolloutConfig {
    RolloutConfig {
        cache,
        cache_refresh: refresh,
        block_length: block,
        ..base.clone()
    }
}

/// `cache_refresh = 1` makes every pass a full pass: the cached decoder is then exactly the
/// exact one, in every mode and with or without blocks (the full caching pass is the plain
/// forward bit for bit).
#[test]
fn a_cache_refreshed_every_pass_is_exact() {
    let (model, tok) = coder();
    let p = prompts(&model);
    let base = RolloutConfig {
        temperature: 1.0,
        top_p: Some(0.95),
        num_completions: 2,
        ..greedy()
    };
    for block in [None, Some(16)] {
        let exact = run(&model, &tok, &p, &with(&base, CacheMode::None, 0, block));
        for mode in [CacheMode::Prefix, CacheMode::Dual] {
            let cached = run(&model, &tok, &p, &with(&base, mode, 1, block));
            assert_eq!(
                cached.completion_ids, exact.completion_ids,
                "{mode} {block:?}"
            );
            assert_eq!(cached.forward_passes, exact.forward_passes);
        }
    }
}

/// Greedy decoding with each cache agrees with exact decoding on most tokens and computes far
/// fewer positions; a cache refreshed more often agrees at least as well on these prompts.
#[test]
fn cached_greedy_decoding_agrees_with_exact_and_saves_work() {
    let (model, tok) = coder();
    let p = prompts(&model);
    let base = greedy();
    for block in [Some(16), None] {
        let exact = decoded(&model, &tok, &p, &with(&base, CacheMode::None, 0, block));
        // Measured: agreement 0.993–0.997; positions 0.33 (prefix) and 0.20 (dual) of exact
        // with blocks of 16, 0.44 and 0.29 without blocks.
        for (mode, floor, saving) in [
            (CacheMode::Prefix, 0.95, 0.5),
            (CacheMode::Dual, 0.95, 0.35),
        ] {
            let cached = decoded(&model, &tok, &p, &with(&base, mode, 0, block));
            let a = agreement(&cached.completion_ids, &exact.completion_ids);
            let ratio = cached.cost.query_tokens as f64 / exact.cost.query_tokens as f64;
            eprintln!("{mode} {block:?}: agreement {a:.3}, positions {ratio:.3} of exact");
            assert!(a >= floor, "{mode} {block:?}: agreement {a:.3}");
            assert!(
                ratio <= saving,
                "{mode} {block:?}: computed {ratio:.2} of the positions"
            );
            assert_eq!(cached.forward_passes, exact.forward_passes);
            assert!(cached.completion_ids.iter().flatten().all(|&t| t != 3));
            if mode == CacheMode::Dual {
                let refreshed = decoded(&model, &tok, &p, &with(&base, mode, 4, block));
                let r = agreement(&refreshed.completion_ids, &exact.completion_ids);
                eprintln!("{mode} {block:?} refreshed every 4: agreement {r:.3}");
                assert!(r >= a - 0.02, "{mode} {block:?}: {r:.3} < {a:.3}");
            }
        }
    }
}

/// One decode of every row of the prompts.
fn decoded(model: &DiffusionLm<Cpu>, tok: &Tokenizer, p: &[String], c: &RolloutConfig) -> Decoded {
    let batch = prompt_rows(model, tok, p, c).unwrap();
    decode_rows(model, tok, &batch, 0..batch.ids.len(), c).unwrap()
}

/// Early completion: every position after a row's first `<|im_end|>` is padding, the answers
/// (up to `<|im_end|>`) are the ones exact greedy decoding gives for most rows, and in block
/// mode the blocks after every row's answer cost no pass.
#[test]
fn early_completion_pads_after_im_end_and_stops_early() {
    let (model, tok) = coder();
    let p = prompts(&model);
    let special = *tok.special();
    for block in [None, Some(8)] {
        let base = RolloutConfig {
            block_length: block,
            ..greedy()
        };
        let exact = run(&model, &tok, &p, &base);
        let config = RolloutConfig {
            early_completion: true,
            ..base
        };
        let early = run(&model, &tok, &p, &config);
        let mut ended = 0;
        for ids in &early.completion_ids {
            if let Some(e) = ids.iter().position(|&t| t == special.im_end) {
                ended += 1;
                assert!(ids[e + 1..]
                    .iter()
                    .all(|&t| t == special.pad || t == special.im_end));
            }
        }
        assert!(ended >= 5, "{ended} of 6 rows ended");
        let same = (0..p.len())
            .filter(|&r| early.texts[r] == exact.texts[r])
            .count();
        eprintln!(
            "block {block:?}: passes {} (exact {}), {same} of 6 answers as exact",
            early.forward_passes, exact.forward_passes
        );
        assert!(same >= 4, "{same} of 6 answers as in exact decoding");
        match block {
            None => assert!(early.forward_passes <= exact.forward_passes),
            Some(_) => assert!(early.forward_passes < exact.forward_passes),
        }
    }
}

/// Every cache with parallel decoding and early completion, with and without blocks: rows
/// reveal different counts per step (their filler candidates may lie outside a block's window),
/// and greedy decoding still agrees with exact decoding on most tokens.
#[test]
fn caches_combine_with_parallel_decoding_and_early_completion() {
    let (model, tok) = coder();
    let p = prompts(&model);
    for block in [Some(16), None] {
        let exact = decoded(
            &model,
            &tok,
            &p,
            &with(&greedy(), CacheMode::None, 0, block),
        );
        for mode in [CacheMode::Prefix, CacheMode::Dual] {
            let config = RolloutConfig {
                confidence_threshold: Some(-0.5),
                max_tokens_per_step: Some(4),
                early_completion: true,
                ..with(&greedy(), mode, 0, block)
            };
            let fast = decoded(&model, &tok, &p, &config);
            let a = agreement(&fast.completion_ids, &exact.completion_ids);
            assert!(a >= 0.9, "{mode} {block:?}: agreement {a:.3}");
            assert!(
                fast.forward_passes < exact.forward_passes,
                "{mode} {block:?}"
            );
        }
    }
}

/// The cap bounds what one step reveals above the schedule: with a threshold every position
/// passes, a cap of 2 reveals at most max(schedule count, 2) per row and step.
#[test]
fn the_cap_bounds_tokens_per_step() {
    let (model, tok) = coder();
    let p = prompts(&model);
    let config = RolloutConfig {
        steps: 24,
        confidence_threshold: Some(f32::NEG_INFINITY),
        max_tokens_per_step: Some(3),
        record_trace: true,
        ..greedy()
    };
    let batch = run(&model, &tok, &p, &config);
    let schedule = coupled_grpo::rollout::schedule::transfer_schedule(48, 24, config.eps);
    let floor = schedule.iter().copied().max().unwrap();
    for trace in batch.traces.unwrap() {
        let per_step = trace.revealed_per_step();
        assert!(per_step.iter().all(|&n| n <= floor.max(3)), "{per_step:?}");
        assert!(per_step.contains(&3), "the cap was reached: {per_step:?}");
    }
    // Without the cap everything is revealed in the first step.
    let free = RolloutConfig {
        max_tokens_per_step: None,
        ..config
    };
    assert_eq!(run(&model, &tok, &p, &free).forward_passes, 1);
}

/// LLaDA's family (no logit shift, positions 0..L) runs the same caches: refreshed every pass
/// it is exact, and the masked-set window decodes completely.
#[test]
fn caches_work_for_llada_too() {
    let config = ModelConfig::preset("llada-tiny").unwrap();
    let model =
        DiffusionLm::<Cpu>::init_with(&config, &Default::default(), 1, burn::tensor::DType::F32);
    let tok = coupled_grpo::model::byte_level_tokenizer().unwrap();
    let p: Vec<String> = vec!["def f(x):".into(), "print(1)\nprint(22)".into()];
    let base = RolloutConfig {
        max_new_tokens: 16,
        steps: 16,
        num_completions: 2,
        ..greedy()
    };
    let exact = run(&model, &tok, &p, &base);
    for mode in [CacheMode::Prefix, CacheMode::Dual] {
        let every = run(&model, &tok, &p, &with(&base, mode, 1, None));
        assert_eq!(every.completion_ids, exact.completion_ids, "{mode}");
        let cached = run(&model, &tok, &p, &with(&base, mode, 0, None));
        assert!(cached
            .completion_ids
            .iter()
            .flatten()
            .all(|&t| t != tok.special().mask));
    }
}
