//! The wasm executor: CPython (componentize-py's WASI build, pre-initialised with the stdlib list
//! of `sandbox/preload.txt`) running in wasmtime.
//!
//! The guest component is built from `sandbox/` by `sandbox/build.sh` into a git-ignored build
//! directory on first use; it is compiled once per (wasmtime version, engine config, component)
//! and the compiled artefact cached beside it. Every sample gets a fresh `Store` and instance
//! from one `InstancePre` (pooling allocator, `linear_memory_keep_resident`: without it sys time
//! dominates and two threads are slower than one; `pagemap_scan`, so that a reset copies back only
//! the pages the kernel reports dirty). The guest has no preopened directories, no
//! environment, no sockets and discarded stdio; memory is capped per store, CPU by fuel
//! (deterministic) or by epochs (wall clock), and sleeps longer than the time left trap at once.

use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, Resource, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    StoreContextMut, Trap,
};
use wasmtime_wasi::clocks::WasiClocksView;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock::Host as MonotonicClock;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::pool::available_cores;
use super::{cap_outcome, sandbox_error, Executor, Limits, Outcome, Program};
use crate::{Error, Result};

mod bindings {
    wasmtime::component::bindgen!({ path: "sandbox/wit", world: "runner" });
}
use bindings::{Runner, RunnerPre, Verdict};

const NAME: &str = "wasm";
/// Pinned in sandbox/build.sh; part of the messages only.
const COMPONENTIZE_PY: &str = "componentize-py 0.25.1";
/// Must match the wasmtime pinned in Cargo.toml; part of the compile-cache key.
const WASMTIME_VERSION: &str = "48.0.8";
/// The monotonic clock interface of wasmtime-wasi 48, whose subscribe functions we shadow.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";
/// Epoch tick (the wall clock of both CPU-limit modes).
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// In fuel mode a call is also cut after this many timeouts (plus 1 s) of wall time.
const FUEL_WALL_BACKSTOP: u32 = 3;
/// Guest table growth cap (CPython's tables are set at build time; growth is a hostile sign).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// The guest sources the component is built from; their hash stamps a build.
const GUEST_SOURCES: [(&str, &[u8]); 4] = [
    ("app.py", include_bytes!("../../sandbox/app.py")),
    ("preload.txt", include_bytes!("../../sandbox/preload.txt")),
    (
        "wit/runner.wit",
        include_bytes!("../../sandbox/wit/runner.wit"),
    ),
    ("build.sh", include_bytes!("../../sandbox/build.sh")),
];

/// How a test's CPU time is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CpuLimit {
    /// Deterministic: a test gets `per_second × test_timeout` fuel (about one unit per wasm
    /// instruction), so the verdict does not depend on machine load. The default.
    Fuel {
        /// Fuel that stands for one second (18e9 ≈ one second of guest time on the 2-vCPU EPYC
        /// the prototype was measured on).
        per_second: u64,
    },
    /// Wall clock: a background thread ticks the engine's epoch every 10 ms (it runs in fuel
    /// mode too, as a backstop of 3 × timeout + 1 s for time spent in host calls).
    Epoch,
}

impl Default for CpuLimit {
    fn default() -> Self {
        CpuLimit::Fuel {
            per_second: 18_000_000_000,
        }
    }
}

/// Settings of the [`WasmExecutor`]. Per-program limits (timeout, memory) come from [`Limits`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WasmConfig {
    /// A prebuilt component to run instead of building `sandbox/`; used as is (never rebuilt).
    pub component: Option<PathBuf>,
    /// Where the built component and the compile cache live; `None` = `sandbox/build/` of this
    /// crate's source tree (git-ignored).
    pub build_dir: Option<PathBuf>,
    /// CPU limit per test.
    pub cpu_limit: CpuLimit,
    /// Largest linear memory a guest may grow to (pool slot size); [`Limits::memory_bytes`] is
    /// capped by it.
    pub max_memory_bytes: u64,
    /// Instances that can exist at once (pool size); 0 = four per available core.
    pub max_instances: u32,
    /// Dirty bytes of each memory slot reset by copying from the image instead of being
    /// decommitted (which makes the next sample re-fault them copy-on-write, with a TLB
    /// shootdown per page between worker threads). With `PAGEMAP_SCAN` (Linux 6.7+) only the
    /// pages the kernel reports written are copied, up to this budget. Without it, this many
    /// bytes from the bottom of the slot are copied every time: it must then cover how far into
    /// memory a sample writes (about 14 MiB for CPython). On the MBPP bench (2 workers, idle
    /// 2-vCPU Xeon, before the page-map reset) tests/s were 783 / 1,215 / 2,070 / 1,870 / 1,511
    /// at 10 / 12 / 14 / 16 / 24 MiB.
    pub keep_resident_bytes: u64,
}

impl Default for WasmConfig {
    fn default() -> Self {
        Self {
            component: None,
            build_dir: None,
            cpu_limit: CpuLimit::default(),
            max_memory_bytes: 1 << 30,
            max_instances: 0,
            keep_resident_bytes: 16 << 20,
        }
    }
}

/// Runs programs in CPython compiled to WebAssembly. Cheap to share: one engine and one
/// pre-linked component serve every thread.
pub struct WasmExecutor {
    engine: Engine,
    pre: RunnerPre<Guest>,
    cpu_limit: CpuLimit,
    max_memory_bytes: u64,
    /// Free pool slots: callers beyond the pool size wait instead of failing to instantiate.
    free_slots: Mutex<u32>,
    slot_freed: Condvar,
    _ticker: Ticker,
}

impl std::fmt::Debug for WasmExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmExecutor")
            .field("cpu_limit", &self.cpu_limit)
            .field("max_memory_bytes", &self.max_memory_bytes)
            .finish()
    }
}

/// Per-store host state.
struct Guest {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryCap,
    /// Wall-clock end of the running call: a sleep past it is a timeout, at once.
    deadline: Instant,
}

impl WasiView for Guest {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Refuses growth past the cap (the guest sees `MemoryError`) and remembers that it did.
struct MemoryCap {
    bytes: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.bytes {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Raised by the shadowed clock when a guest sleeps past its deadline.
#[derive(Debug)]
struct SleepPastDeadline;

impl std::fmt::Display for SleepPastDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sleep past the test deadline")
    }
}

impl std::error::Error for SleepPastDeadline {}

/// Ticks the engine epoch until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::park_timeout(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch thread");
        Self {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

fn wasm_error(context: &str, err: impl std::fmt::Display) -> Error {
    sandbox_error(NAME, format!("{context}: {err:#}"))
}

impl WasmExecutor {
    /// Builds the guest if needed (first use: about a minute, with a message on stderr), loads
    /// or compiles it, and links it.
    pub fn new(config: WasmConfig) -> Result<Self> {
        let engine = make_engine(&config)?;
        let (component_path, cache_dir) = match &config.component {
            Some(path) => {
                let cache = match &config.build_dir {
                    Some(dir) => dir.join("cache"),
                    None => default_build_dir().join("cache"),
                };
                (path.clone(), cache)
            }
            None => {
                let dir = config.build_dir.clone().unwrap_or_else(default_build_dir);
                (ensure_component(&dir)?, dir.join("cache"))
            }
        };
        let component = load_component(&engine, &component_path, &cache_dir)?;

        let mut linker = Linker::<Guest>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| wasm_error("linking WASI", e))?;
        shadow_sleeps(&mut linker).map_err(|e| wasm_error("linking the clock", e))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(RunnerPre::new)
            .map_err(|e| wasm_error("pre-instantiating the guest", e))?;
        let ticker = Ticker::start(engine.clone());
        Ok(Self {
            engine,
            pre,
            cpu_limit: config.cpu_limit,
            max_memory_bytes: config.max_memory_bytes,
            free_slots: Mutex::new(pool_instances(&config)),
            slot_freed: Condvar::new(),
            _ticker: ticker,
        })
    }

    /// Waits for a free pool slot; the returned guard gives it back.
    fn acquire_slot(&self) -> SlotGuard<'_> {
        let mut free = self.free_slots.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self
                .slot_freed
                .wait(free)
                .unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        SlotGuard(self)
    }

    /// Imports each module inside a fresh guest: `Ok` or the error text. Only modules the
    /// build-time snapshot imported (`sandbox/preload.txt`) are there.
    pub fn probe_imports(&self, modules: &[&str]) -> Result<Vec<std::result::Result<(), String>>> {
        let limits = Limits::default();
        let _slot = self.acquire_slot();
        let mut sample = self.instantiate(&limits)?;
        let names: Vec<String> = modules.iter().map(|m| m.to_string()).collect();
        let verdicts = sample
            .runner
            .call_probe_imports(&mut sample.store, &names)
            .map_err(|e| wasm_error("probe-imports", e))?;
        Ok(verdicts
            .into_iter()
            .map(|v| match v {
                Verdict::Passed => Ok(()),
                Verdict::Failed(d) | Verdict::Memory(d) | Verdict::Exited(d) => Err(d),
            })
            .collect())
    }

    fn instantiate(&self, limits: &Limits) -> Result<Sample> {
        let cap = limits.memory_bytes.min(self.max_memory_bytes);
        let wasi = WasiCtxBuilder::new()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let guest = Guest {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryCap {
                bytes: usize::try_from(cap).unwrap_or(usize::MAX),
                hit: false,
            },
            deadline: Instant::now(),
        };
        let mut store = Store::new(&self.engine, guest);
        store.limiter(|g| &mut g.limiter);
        // Instantiation runs guest code too (start functions): give it a budget.
        arm(&mut store, limits, self.cpu_limit)?;
        let runner = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| wasm_error("instantiating the guest", e))?;
        Ok(Sample { store, runner })
    }
}

struct SlotGuard<'a>(&'a WasmExecutor);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free_slots.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.slot_freed.notify_one();
    }
}

/// One fresh instance: a store and the guest's exports.
struct Sample {
    store: Store<Guest>,
    runner: Runner,
}

/// Gives the next call its budget: fuel or epoch deadline, wall deadline, memory flag reset.
fn arm(store: &mut Store<Guest>, limits: &Limits, cpu: CpuLimit) -> Result<()> {
    let timeout = limits.test_timeout;
    let wall = match cpu {
        CpuLimit::Fuel { per_second } => {
            let fuel = (per_second as f64 * timeout.as_secs_f64()).min(u64::MAX as f64) as u64;
            store
                .set_fuel(fuel.max(1))
                .map_err(|e| wasm_error("set_fuel", e))?;
            // Loose enough that fuel decides for guest code even on a loaded machine.
            timeout * FUEL_WALL_BACKSTOP + Duration::from_secs(1)
        }
        CpuLimit::Epoch => timeout,
    };
    let ticks = wall.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) + 1;
    store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
    store.epoch_deadline_trap();
    let guest = store.data_mut();
    guest.deadline = Instant::now() + timeout;
    guest.limiter.hit = false;
    Ok(())
}

/// What a trapped or failed call means for the test that was running.
fn trap_outcome(err: &wasmtime::Error, memory_hit: bool) -> Outcome {
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        return Outcome::Crashed {
            detail: format!("exited with status {} (os._exit)", exit.0),
        };
    }
    if err.downcast_ref::<SleepPastDeadline>().is_some() {
        return Outcome::Timeout;
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt | Trap::OutOfFuel) => Outcome::Timeout,
        _ if memory_hit => Outcome::Memory,
        Some(Trap::StackOverflow) => Outcome::Crashed {
            detail: "stack overflow".into(),
        },
        Some(trap) => Outcome::Crashed {
            detail: trap.to_string(),
        },
        None => Outcome::Crashed {
            detail: format!("{err:#}"),
        },
    }
}

fn verdict_outcome(verdict: Verdict) -> Outcome {
    match verdict {
        Verdict::Passed => Outcome::Passed,
        Verdict::Failed(detail) => Outcome::Failed { detail },
        Verdict::Memory(_) => Outcome::Memory,
        Verdict::Exited(detail) => Outcome::Crashed {
            detail: format!("exited: {detail}"),
        },
    }
}

impl Executor for WasmExecutor {
    fn name(&self) -> &'static str {
        NAME
    }

    fn execute(&self, program: &Program, limits: &Limits) -> Result<Vec<Outcome>> {
        if limits.test_timeout.is_zero() {
            return Err(Error::invalid("limits.test_timeout", "must be positive"));
        }
        let n = program.tests.len();
        let mut outcomes = Vec::with_capacity(n);
        // One slot per sample: each pass drops its store before the next instantiates.
        let _slot = self.acquire_slot();
        // Each pass is one instance: it runs the solution, then tests until one traps (the
        // instance is poisoned then), and the next pass resumes after that test.
        'instances: while outcomes.len() < n {
            let mut sample = self.instantiate(limits)?;
            arm(&mut sample.store, limits, self.cpu_limit)?;
            let solution = sample
                .runner
                .call_exec_solution(&mut sample.store, &program.code);
            let charge_all = match solution {
                Ok(Verdict::Passed) => None,
                Ok(verdict) => Some(verdict_outcome(verdict)),
                Err(err) => Some(trap_outcome(&err, sample.store.data().limiter.hit)),
            };
            if let Some(outcome) = charge_all {
                outcomes.resize(n, outcome);
                break;
            }
            while outcomes.len() < n {
                arm(&mut sample.store, limits, self.cpu_limit)?;
                let test = &program.tests[outcomes.len()];
                match sample.runner.call_run_test(&mut sample.store, test) {
                    Ok(verdict) => outcomes.push(verdict_outcome(verdict)),
                    Err(err) => {
                        outcomes.push(trap_outcome(&err, sample.store.data().limiter.hit));
                        continue 'instances;
                    }
                }
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| cap_outcome(o, limits.output_bytes))
            .collect())
    }
}

fn pool_instances(config: &WasmConfig) -> u32 {
    if config.max_instances == 0 {
        u32::try_from(4 * available_cores()).unwrap_or(u32::MAX)
    } else {
        config.max_instances
    }
}

fn make_engine(config: &WasmConfig) -> Result<Engine> {
    let instances = pool_instances(config);
    let max_memory = usize::try_from(config.max_memory_bytes)
        .map_err(|_| Error::config("wasm.max_memory_bytes", "does not fit in usize"))?;
    let keep_resident = usize::try_from(config.keep_resident_bytes)
        .map_err(|_| Error::config("wasm.keep_resident_bytes", "does not fit in usize"))?;
    // Slot counts per component instance: the CPython component has a handful of core
    // instances (libc, libpython, the WASI adapter, ...), each with one memory and table.
    const CORE_PER_COMPONENT: u32 = 32;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .max_core_instances_per_component(CORE_PER_COMPONENT)
        .total_core_instances(instances.saturating_mul(CORE_PER_COMPONENT))
        .total_memories(instances.saturating_mul(CORE_PER_COMPONENT))
        .total_tables(instances.saturating_mul(CORE_PER_COMPONENT))
        .max_memory_size(max_memory)
        .max_core_instance_size(4 << 20)
        .table_elements(64 << 10)
        .linear_memory_keep_resident(keep_resident)
        .table_keep_resident(1 << 20)
        // Reset only what the kernel reports dirty (Linux 6.7+; else the whole budget is copied).
        // The vendored wasmtime resumes the scan past 64 regions (stock 48 decommits the rest
        // after 32) and skips not-present pages (vendor/wasmtime/PATCHED.md).
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut wasm = Config::new();
    wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    if let CpuLimit::Fuel { per_second } = config.cpu_limit {
        if per_second == 0 {
            return Err(Error::config(
                "wasm.cpu_limit.per_second",
                "must be positive",
            ));
        }
        wasm.consume_fuel(true);
    }
    // Epochs in both modes: with fuel they are the wall-clock backstop, since time spent in
    // host calls (a print loop) burns no fuel.
    wasm.epoch_interruption(true);
    Engine::new(&wasm).map_err(|e| wasm_error("creating the engine", e))
}

/// Replaces `subscribe-duration`/`subscribe-instant`: a sleep that would outlast the running
/// call's deadline traps at once (a blocked host call is invisible to fuel and epochs).
fn shadow_sleeps(linker: &mut Linker<Guest>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap(
        "subscribe-duration",
        |mut store: StoreContextMut<'_, Guest>, (nanos,): (u64,)| {
            check_sleep(store.data(), Duration::from_nanos(nanos))?;
            let pollable: Resource<DynPollable> =
                MonotonicClock::subscribe_duration(&mut store.data_mut().clocks(), nanos)?;
            Ok((pollable,))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |mut store: StoreContextMut<'_, Guest>, (when,): (u64,)| {
            let now = MonotonicClock::now(&mut store.data_mut().clocks())?;
            check_sleep(store.data(), Duration::from_nanos(when.saturating_sub(now)))?;
            let pollable: Resource<DynPollable> =
                MonotonicClock::subscribe_instant(&mut store.data_mut().clocks(), when)?;
            Ok((pollable,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

fn check_sleep(guest: &Guest, duration: Duration) -> wasmtime::Result<()> {
    if Instant::now() + duration > guest.deadline {
        return Err(wasmtime::Error::new(SleepPastDeadline));
    }
    Ok(())
}

fn default_build_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sandbox")
        .join("build")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Stamp of the guest sources compiled into this binary (the bindings were generated from
/// the same WIT, so a component built from other sources must not be used).
fn sources_stamp() -> String {
    let mut hasher = Sha256::new();
    for (name, bytes) in GUEST_SOURCES {
        hasher.update(name.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    hex(&hasher.finalize())
}

/// Returns `dir/runner.wasm`, building it with `sandbox/build.sh` when it is missing or was
/// built from other sources. A file lock serialises builds across threads and processes.
fn ensure_component(dir: &Path) -> Result<PathBuf> {
    let wasm = dir.join("runner.wasm");
    let stamp_path = dir.join("runner.wasm.sources");
    let want = sources_stamp();
    let fresh =
        || wasm.is_file() && fs::read_to_string(&stamp_path).is_ok_and(|s| s.trim() == want);
    if fresh() {
        return Ok(wasm);
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let lock_path = dir.join(".lock");
    let lock = fs::File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
    lock.lock().map_err(|e| Error::io(&lock_path, e))?;
    if fresh() {
        return Ok(wasm);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sandbox")
        .join("build.sh");
    if !script.is_file() {
        return Err(sandbox_error(
            NAME,
            format!(
                "{} is missing and so is {} to build it; set WasmConfig.component",
                wasm.display(),
                script.display()
            ),
        ));
    }
    eprintln!(
        "coupled-grpo: building the wasm sandbox guest ({}) into {} with sandbox/build.sh \
         (first use only; about a minute)...",
        COMPONENTIZE_PY,
        dir.display()
    );
    let status = Command::new("bash")
        .arg(&script)
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| sandbox_error(NAME, format!("cannot run {}: {e}", script.display())))?;
    if !status.success() {
        return Err(sandbox_error(
            NAME,
            format!(
                "{} failed ({status}); it needs python3 with venv and pip access to PyPI for \
                 {COMPONENTIZE_PY}",
                script.display()
            ),
        ));
    }
    fs::write(&stamp_path, &want).map_err(|e| Error::io(&stamp_path, e))?;
    eprintln!("coupled-grpo: built {}", wasm.display());
    Ok(wasm)
}

/// Feeds `Hash` impls into SHA-256 (stable across runs, unlike `DefaultHasher`'s contract).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        unreachable!("only finalised through the digest")
    }
}

fn cache_key(engine: &Engine, component: &[u8]) -> String {
    let mut hasher = ShaHasher(Sha256::new());
    hasher.write(WASMTIME_VERSION.as_bytes());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.write(sha256_hex(component).as_bytes());
    hex(&hasher.0.finalize())
}

/// Loads the compiled component from the cache, or compiles it (seconds) and caches it.
fn load_component(engine: &Engine, path: &Path, cache_dir: &Path) -> Result<Component> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let key = cache_key(engine, &bytes);
    let cached = cache_dir.join(format!("runner-{key}.cwasm"));
    if cached.is_file() {
        // SAFETY: the file is one this function wrote (atomically, under a name that hashes the
        // engine config and the component); wasmtime checks version and config compatibility
        // again. Deserializing arbitrary bytes would be unsound, and nothing else writes here.
        match unsafe { Component::deserialize_file(engine, &cached) } {
            Ok(component) => return Ok(component),
            Err(_) => {
                let _ = fs::remove_file(&cached);
            }
        }
    }
    // One compiler at a time (threads and processes): the others then load its artefact.
    fs::create_dir_all(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
    let lock_path = cache_dir.join(".lock");
    let lock = fs::File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
    lock.lock().map_err(|e| Error::io(&lock_path, e))?;
    if cached.is_file() {
        // SAFETY: as above.
        if let Ok(component) = unsafe { Component::deserialize_file(engine, &cached) } {
            return Ok(component);
        }
    }
    eprintln!(
        "coupled-grpo: compiling the wasm sandbox guest (once per engine config; cached in {})",
        cache_dir.display()
    );
    let component =
        Component::from_binary(engine, &bytes).map_err(|e| wasm_error("compiling the guest", e))?;
    let serialized = component
        .serialize()
        .map_err(|e| wasm_error("serializing the compiled guest", e))?;
    let mut tmp =
        tempfile::NamedTempFile::new_in(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
    std::io::Write::write_all(&mut tmp, &serialized).map_err(|e| Error::io(tmp.path(), e))?;
    tmp.persist(&cached)
        .map_err(|e| Error::io(&cached, e.error))?;
    Ok(component)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_stamp_is_stable_and_covers_every_source() {
        assert_eq!(sources_stamp(), sources_stamp());
        assert_eq!(sources_stamp().len(), 64);
        let names: Vec<_> = GUEST_SOURCES.iter().map(|(n, _)| *n).collect();
        for file in ["app.py", "preload.txt", "wit/runner.wit", "build.sh"] {
            assert!(names.contains(&file));
        }
    }

    #[test]
    fn cache_key_depends_on_engine_config_and_component() {
        let fuel = make_engine(&WasmConfig::default()).unwrap();
        let epoch = make_engine(&WasmConfig {
            cpu_limit: CpuLimit::Epoch,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cache_key(&fuel, b"a"), cache_key(&fuel, b"a"));
        assert_ne!(cache_key(&fuel, b"a"), cache_key(&fuel, b"b"));
        assert_ne!(cache_key(&fuel, b"a"), cache_key(&epoch, b"a"));
    }

    #[test]
    fn traps_map_to_outcomes() {
        let timeout = wasmtime::Error::new(Trap::OutOfFuel);
        assert_eq!(trap_outcome(&timeout, false), Outcome::Timeout);
        assert_eq!(trap_outcome(&timeout, true), Outcome::Timeout);
        let interrupt = wasmtime::Error::new(Trap::Interrupt);
        assert_eq!(trap_outcome(&interrupt, false), Outcome::Timeout);
        let sleep = wasmtime::Error::new(SleepPastDeadline);
        assert_eq!(trap_outcome(&sleep, false), Outcome::Timeout);
        let exit = wasmtime::Error::new(I32Exit(3));
        assert!(
            matches!(trap_outcome(&exit, false), Outcome::Crashed { detail } if detail.contains("status 3"))
        );
        let overflow = wasmtime::Error::new(Trap::StackOverflow);
        assert_eq!(
            trap_outcome(&overflow, false),
            Outcome::Crashed {
                detail: "stack overflow".into()
            }
        );
        let oob = wasmtime::Error::new(Trap::MemoryOutOfBounds);
        assert_eq!(trap_outcome(&oob, true), Outcome::Memory);
        assert_eq!(
            verdict_outcome(Verdict::Exited("SystemExit: 0".into())),
            Outcome::Crashed {
                detail: "exited: SystemExit: 0".into()
            }
        );
        assert_eq!(
            verdict_outcome(Verdict::Memory("MemoryError".into())),
            Outcome::Memory
        );
    }
}
