//! The data-parallel collectives of one optimizer step on N CPU workers (threads, Burn's local
//! collective): the gradient all-reduce of every trainable parameter, against Burn's own
//! `GradientsParams::all_reduce` (the reference approach: one call per parameter in sorted-id
//! order) in the same run, and ZeRO-1's broadcast of the updated parameters.
//!
//!     cargo bench --bench all_reduce                          # small preset, 2 workers
//!     cargo bench --bench all_reduce -- --preset tiny --workers 2 --steps 10
//!
//! Times are per optimizer step (median over `--steps` after one warm-up), on this machine's
//! CPU; on CUDA devices the same calls go through NCCL.

use std::sync::Barrier;
use std::time::Instant;

use burn::collective::{self, CollectiveConfig, PeerId, ReduceOperation};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{DType, Int, Tensor, TensorData};
use coupled_grpo::backend::{Cpu, CpuAutodiff};
use coupled_grpo::grpo::parallel::{all_reduce_grads, collective_lock, own_leaves, Shard};
use coupled_grpo::grpo::zero::Zero;
use coupled_grpo::model::{DiffusionLm, ModelConfig};
use coupled_grpo::perf::{arg, median};

/// One worker's seconds per step: our all-reduce, Burn's, ZeRO-1's broadcast.
struct Times {
    ours: Vec<f64>,
    theirs: Vec<f64>,
    share: Vec<f64>,
}

/// The gradients of one small backward pass (every parameter gets one).
fn grads(model: &DiffusionLm<CpuAutodiff>, rank: usize) -> GradientsParams {
    let ids: Vec<i64> = (0..32)
        .map(|i| ((i * 37 + rank * 11) % 200) as i64)
        .collect();
    let input = Tensor::<CpuAutodiff, 2, Int>::from_data(
        TensorData::new(ids, [2, 16]),
        &Default::default(),
    );
    GradientsParams::from_grads(model.forward(input, None).sum().backward(), model)
}

fn main() {
    let preset: String = arg("--preset", "small".to_string());
    let workers: usize = arg("--workers", 2);
    let steps: usize = arg("--steps", 5);
    let config = ModelConfig::preset(&preset).expect("a preset");
    let model = DiffusionLm::<CpuAutodiff>::init_with(&config, &Default::default(), 1, DType::F32);
    let params = model.num_params();
    let _group = collective_lock();
    collective::reset_collective::<Cpu>();
    let barrier = Barrier::new(workers);
    let times: Vec<Times> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|rank| {
                // Each worker's own autodiff leaves (shared ones deadlock Burn's graph).
                let replica = own_leaves(model.clone());
                let barrier = &barrier;
                s.spawn(move || {
                    let peer = PeerId::from(rank);
                    let cfg = CollectiveConfig::default().with_num_devices(workers);
                    collective::register::<Cpu>(peer, Default::default(), cfg).unwrap();
                    let shard = Shard::<Cpu>::new(rank, workers, Default::default());
                    let zero = Zero::balanced(shard.clone(), &replica);
                    let (mut ours, mut theirs, mut share) = (Vec::new(), Vec::new(), Vec::new());
                    let mut replica = replica;
                    for _ in 0..=steps {
                        let g = grads(&replica, rank);
                        barrier.wait();
                        let t = Instant::now();
                        all_reduce_grads(&shard, &replica, g).unwrap();
                        ours.push(t.elapsed().as_secs_f64());

                        let g = grads(&replica, rank);
                        barrier.wait();
                        let t = Instant::now();
                        g.all_reduce::<Cpu>(peer, ReduceOperation::Sum).unwrap();
                        theirs.push(t.elapsed().as_secs_f64());

                        barrier.wait();
                        let t = Instant::now();
                        replica = zero.broadcast(replica).unwrap();
                        share.push(t.elapsed().as_secs_f64());
                    }
                    collective::finish_collective::<Cpu>(peer).unwrap();
                    // Drop the warm-up step.
                    Times {
                        ours: ours[1..].to_vec(),
                        theirs: theirs[1..].to_vec(),
                        share: share[1..].to_vec(),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // A step ends when the slowest worker is done.
    let slowest = |pick: fn(&Times) -> &Vec<f64>| {
        median(
            (0..steps)
                .map(|i| times.iter().map(|t| pick(t)[i]).fold(0.0, f64::max))
                .collect(),
        )
    };
    let ours = slowest(|t| &t.ours);
    let theirs = slowest(|t| &t.theirs);
    let share = slowest(|t| &t.share);
    let mb = params as f64 * 4.0 / 1e6;
    println!(
        "all_reduce preset={preset} workers={workers} params={params} ({mb:.1} MB f32) steps={steps}"
    );
    println!(
        "  gradient all-reduce (visit order, zeros for missing): {:.1} ms/step ({:.2} GB/s of gradients)",
        ours * 1e3,
        mb / 1e3 / ours
    );
    println!(
        "  burn GradientsParams::all_reduce (reference):        {:.1} ms/step (ours/reference {:.2}x)",
        theirs * 1e3,
        ours / theirs
    );
    println!(
        "  ZeRO-1 parameter broadcast:                          {:.1} ms/step",
        share * 1e3
    );
}
