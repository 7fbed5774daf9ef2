//! Concrete backend aliases for binaries, examples, tests and benches. The library itself is
//! generic over [`burn::tensor::backend::Backend`]; pick one of these at the edge.

/// The CPU backend (burn-flex): tests and the embedded default.
pub type Cpu = burn::backend::Flex;
/// CPU with autodiff, for training.
pub type CpuAutodiff = burn::backend::Autodiff<Cpu>;
/// [`CpuAutodiff`] with Burn's balanced checkpointing: element-wise (memory-bound) results are
/// recomputed in the backward pass instead of kept, trading compute for activation memory.
pub type CpuAutodiffCheckpointed = burn::backend::Autodiff<
    Cpu,
    burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing,
>;

/// The CUDA backend (burn-cuda with burn-fusion, f32 compute; cast parameters for bf16).
///
/// Built without CubeCL autotune unless the `cuda-autotune` feature is on: autotune JIT-compiles
/// ~20 candidate kernels (0.5-3 s of NVRTC each) for every new matmul shape, which kept the first
/// training step of a 0.5B model busy for many minutes (issue 7). Pass a persistent kernel cache
/// to [`configure_cubecl`] to skip the compilation in later runs.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda<f32, i32>;
/// CUDA with autodiff, for training.
#[cfg(feature = "cuda")]
pub type CudaAutodiff = burn::backend::Autodiff<Cuda>;
/// [`CudaAutodiff`] with balanced checkpointing (see [`CpuAutodiffCheckpointed`]).
#[cfg(feature = "cuda")]
pub type CudaAutodiffCheckpointed = burn::backend::Autodiff<
    Cuda,
    burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing,
>;

/// CUDA without burn-fusion: every tensor op is its own (precompiled-per-shape-class) kernel, so
/// far fewer distinct kernels are JIT-compiled and autotuned than with fusion.
#[cfg(feature = "cuda")]
pub type CudaUnfused =
    burn_cubecl::CubeBackend<burn_cubecl::cubecl::cuda::CudaRuntime, f32, i32, u8>;
/// [`CudaUnfused`] with autodiff.
#[cfg(feature = "cuda")]
pub type CudaUnfusedAutodiff = burn::backend::Autodiff<CudaUnfused>;
/// [`CudaUnfusedAutodiff`] with balanced checkpointing.
#[cfg(feature = "cuda")]
pub type CudaUnfusedAutodiffCheckpointed = burn::backend::Autodiff<
    CudaUnfused,
    burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing,
>;

/// The wgpu backend (burn-wgpu with burn-fusion, f32 compute, WGSL shaders): the CubeCL code
/// paths on any Vulkan/Metal/DX12 device. Without a GPU, Mesa's lavapipe runs it on the CPU
/// (`WgpuDevice::Cpu`, or `CUBECL_WGPU_DEFAULT_DEVICE=Cpu`): that is how the tests check the
/// CubeCL kernels against flex (storage buffers up to 128 MiB there, no bf16). Built without
/// autotune, as `Cuda`.
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu<f32, i32>;
/// [`Wgpu`] with autodiff, for training.
#[cfg(feature = "wgpu")]
pub type WgpuAutodiff = burn::backend::Autodiff<Wgpu>;
/// wgpu without burn-fusion: one kernel per tensor op (the wgpu counterpart of `CudaUnfused`);
/// CubeCL kernels run on its tensors directly instead of as custom fusion operations.
#[cfg(feature = "wgpu")]
pub type WgpuUnfused =
    burn_cubecl::CubeBackend<burn_cubecl::cubecl::wgpu::WgpuRuntime, f32, i32, u32>;
/// [`WgpuUnfused`] with autodiff.
#[cfg(feature = "wgpu")]
pub type WgpuUnfusedAutodiff = burn::backend::Autodiff<WgpuUnfused>;

/// The wgpu device the tests run on: lavapipe (`WgpuDevice::Cpu`), the Vulkan device of a
/// machine without a GPU, unless `COUPLED_GRPO_WGPU_DEVICE=default` picks the default adapter
/// (a GPU where there is one).
#[cfg(feature = "wgpu")]
pub fn wgpu_device() -> burn::backend::wgpu::WgpuDevice {
    use burn::backend::wgpu::WgpuDevice;
    match std::env::var("COUPLED_GRPO_WGPU_DEVICE").as_deref() {
        Ok("default") => WgpuDevice::DefaultDevice,
        _ => WgpuDevice::Cpu,
    }
}

/// Memory of the CubeCL CUDA pool on the default device: `(bytes in use, bytes reserved)`.
/// Fused and unfused backends share the runtime's client, so this covers both.
#[cfg(feature = "cuda")]
pub fn cuda_memory_usage() -> Option<(u64, u64)> {
    use burn_cubecl::cubecl::Runtime;
    let client = burn_cubecl::cubecl::cuda::CudaRuntime::client(&Default::default());
    client
        .memory_usage()
        .ok()
        .map(|m| (m.bytes_in_use, m.bytes_reserved))
}

/// Install a CubeCL runtime configuration before the first CUDA client is created: the file
/// `cubecl.toml` / env (`CUBECL_*`) as usual, plus
/// - `cache_dir`: persistent caches of compiled PTX and of autotune results in that directory
///   (CubeCL keeps autotune results by default but never caches compiled kernels);
/// - `kernel_profile`: CubeCL's kernel profiler. Every kernel is timed on the device (so the run
///   is slower: each launch is waited for), and at every device sync a table of the time per
///   kernel name since the previous sync is appended to this file.
///
/// Call once, before any CUDA tensor.
#[cfg(feature = "cuda")]
pub fn configure_cubecl(
    cache_dir: Option<&std::path::Path>,
    kernel_profile: Option<&std::path::Path>,
) {
    use burn_cubecl::cubecl::config::profiling::ProfilingLogLevel;
    use burn_cubecl::cubecl::config::{cache::CacheConfig, CubeClRuntimeConfig, RuntimeConfig};
    if cache_dir.is_none() && kernel_profile.is_none() {
        return;
    }
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    if let Some(dir) = cache_dir {
        config.compilation.cache = Some(CacheConfig::File(dir.to_path_buf()));
        config.autotune.cache = CacheConfig::File(dir.to_path_buf());
    }
    if let Some(file) = kernel_profile {
        config.profiling.logger.level = ProfilingLogLevel::Basic;
        config.profiling.logger.file = Some(file.to_path_buf());
        // Appending: each CubeCL logger opens the file itself.
        config.profiling.logger.append = true;
    }
    CubeClRuntimeConfig::set(config);
}

/// The CUDA devices a `--devices` list names (`cuda:all`: every device the driver reports),
/// each checked against the devices present.
#[cfg(feature = "cuda")]
pub fn cuda_devices(
    spec: &crate::grpo::DeviceSpec,
) -> crate::Result<Vec<burn::backend::cuda::CudaDevice>> {
    use crate::grpo::DeviceSpec;
    use burn::tensor::backend::Backend;
    // Type 0 is the CUDA runtime's device kind (burn's multi-GPU example does the same).
    let count = <Cuda as Backend>::device_count(0);
    let ids: Vec<usize> = match spec {
        DeviceSpec::Cuda(ids) => ids.clone(),
        DeviceSpec::CudaAll => (0..count).collect(),
        DeviceSpec::Cpu(_) => Vec::new(),
    };
    if ids.is_empty() {
        return Err(crate::Error::config("devices", "no CUDA device found"));
    }
    if let Some(bad) = ids.iter().find(|&&i| i >= count) {
        return Err(crate::Error::config(
            "devices",
            format!("CUDA device {bad} does not exist (this machine has {count})"),
        ));
    }
    Ok(ids
        .into_iter()
        .map(burn::backend::cuda::CudaDevice::new)
        .collect())
}
