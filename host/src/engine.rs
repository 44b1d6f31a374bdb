//! The one wasmtime [`Engine`] of a host, its epoch clock, and the
//! compiled-code cache.
//!
//! # Engine
//! Every package runs on one engine configured with the pooling allocator
//! (instantiation in microseconds, which is what makes restarts cheap) and
//! epoch interruption (how deadlines reach code that never calls out).
//!
//! # Epoch clock
//! [`EpochClock`] advances the engine's epoch every [`EPOCH_TICK`] on a
//! thread of its own. A running instance notices a tick at its next loop
//! header or function entry; the store's callback then yields to the async
//! runtime or, past the call's deadline, interrupts it.
//!
//! The same thread keeps [`coarse_now`], a clock read from memory for the
//! bookkeeping of every call (how long a caller waited on a callee, since
//! when an instance is idle), where an error of one tick does not matter
//! and a clock read per use showed up in profiles.
//!
//! # Compiled-code cache
//! Compiling a component takes tens of milliseconds for a small Rust package
//! and seconds for a JavaScript or Python one; loading precompiled code takes
//! microseconds. [`CompileCache`] keys the precompiled artifact by the
//! component's content hash and the engine's compatibility hash, so a changed
//! component or a different wasmtime never loads stale code.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::Component;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of deadlines and of the
/// cooperative yields of long-running guests.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// How much of a dead instance's memory and tables is reset in place
/// rather than handed back to the kernel.
const KEEP_RESIDENT: usize = 1 << 20;

/// Limits of the pooling allocator: how many instances the host can hold.
#[derive(Clone, Debug)]
pub struct EngineLimits {
    /// Component instances alive at once, over all packages.
    pub total_instances: u32,
    /// The largest linear memory any one instance may grow to.
    pub max_memory: u64,
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            total_instances: 1000,
            max_memory: 4 << 30,
        }
    }
}

/// Errors of the engine and the compile cache.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime refused the configuration.
    #[error("cannot configure wasmtime: {0}")]
    Config(String),
    /// The component file could not be read.
    #[error("cannot read component {path}: {source}")]
    Read {
        /// The component file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not a valid component.
    #[error("{path} is not a valid WebAssembly component: {message}")]
    Invalid {
        /// The component file.
        path: PathBuf,
        /// wasmtime's explanation.
        message: String,
    },
}

/// Builds the engine every package of a host runs on.
pub fn new_engine(limits: &EngineLimits) -> Result<Engine, EngineError> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // Packages export plain (non-`async`) functions: without concurrency
    // support every call skips the component-model-async task bookkeeping.
    config.concurrency_support(false);
    // A guest that overflows its stack traps instead of crashing the host.
    config.max_wasm_stack(1 << 20);
    config.async_stack_size(2 << 20);
    let mut pool = PoolingAllocationConfig::new();
    let total = limits.total_instances;
    pool.total_component_instances(total)
        .total_core_instances(total.saturating_mul(8))
        .total_memories(total.saturating_mul(2))
        .total_tables(total.saturating_mul(4))
        .total_stacks(total)
        .max_memory_size(usize::try_from(limits.max_memory).unwrap_or(usize::MAX))
        .max_core_instances_per_component(64)
        .max_memories_per_component(8)
        .max_tables_per_component(16)
        .max_component_instance_size(1 << 20)
        .max_core_instance_size(1 << 20)
        .table_elements(100_000)
        // A restart resets the dead instance's memory: zeroing the pages it
        // touched in place is cheaper than an madvise, whose TLB shootdown
        // interrupts every core the host runs on.
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        .pagemap_scan(Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(|e| EngineError::Config(format!("{e:#}")))
}

/// The origin of [`coarse_now`].
static COARSE_BASE: LazyLock<Instant> = LazyLock::new(Instant::now);
/// Nanoseconds from [`COARSE_BASE`] at the last tick of any epoch clock.
static COARSE_NANOS: AtomicU64 = AtomicU64::new(0);
/// Epoch clocks running; without one, [`coarse_now`] reads the real clock.
static CLOCKS_RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Now, to within one [`EPOCH_TICK`] (never ahead): the time of the last
/// tick of a running [`EpochClock`], or the real clock when none runs.
/// Successive reads never go backwards.
pub fn coarse_now() -> Instant {
    if CLOCKS_RUNNING.load(Ordering::Acquire) == 0 {
        return Instant::now();
    }
    *COARSE_BASE + Duration::from_nanos(COARSE_NANOS.load(Ordering::Acquire))
}

/// Records the real time as the coarse clock's reading.
fn coarse_tick() {
    let nanos = u64::try_from(COARSE_BASE.elapsed().as_nanos()).unwrap_or(u64::MAX);
    COARSE_NANOS.fetch_max(nanos, Ordering::AcqRel);
}

/// Advances an engine's epoch every [`EPOCH_TICK`] until dropped.
pub struct EpochClock {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochClock {
    /// Starts the clock for `engine`.
    pub fn start(engine: &Engine) -> EpochClock {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let flag = stop.clone();
        coarse_tick();
        CLOCKS_RUNNING.fetch_add(1, Ordering::AcqRel);
        let thread = std::thread::Builder::new()
            .name("steedos-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    coarse_tick();
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .ok();
        if thread.is_none() {
            CLOCKS_RUNNING.fetch_sub(1, Ordering::AcqRel);
        }
        EpochClock { stop, thread }
    }
}

impl Drop for EpochClock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            CLOCKS_RUNNING.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Precompiled components on disk, keyed by content and engine.
#[derive(Clone, Debug)]
pub struct CompileCache {
    dir: Option<PathBuf>,
}

/// How a component was obtained, for logs and the start-up summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compiled {
    /// Loaded precompiled code from the cache.
    Cached,
    /// Compiled now (and stored in the cache when there is one).
    Fresh,
}

impl CompileCache {
    /// A cache in `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CompileCache {
            dir: Some(dir.into()),
        }
    }

    /// No cache: every load compiles.
    pub fn disabled() -> Self {
        CompileCache { dir: None }
    }

    /// Loads the component at `path`, from the cache when it holds it.
    pub fn load(&self, engine: &Engine, path: &Path) -> Result<(Component, Compiled), EngineError> {
        let bytes = std::fs::read(path).map_err(|source| EngineError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.load_bytes(engine, path, &bytes)
    }

    /// Loads a component from its bytes (`path` names it in messages).
    pub fn load_bytes(
        &self,
        engine: &Engine,
        path: &Path,
        bytes: &[u8],
    ) -> Result<(Component, Compiled), EngineError> {
        let invalid = |e: wasmtime::Error| EngineError::Invalid {
            path: path.to_owned(),
            message: format!("{e:#}"),
        };
        let Some(dir) = &self.dir else {
            return Ok((
                Component::new(engine, bytes).map_err(invalid)?,
                Compiled::Fresh,
            ));
        };
        let entry = dir.join(format!("{}.cwasm", cache_key(engine, bytes)));
        if entry.is_file() {
            // SAFETY: the file was written by `precompile_component` of an
            // engine with the same compatibility hash (it is in the key), and
            // the cache directory belongs to this app.
            match unsafe { Component::deserialize_file(engine, &entry) } {
                Ok(component) => return Ok((component, Compiled::Cached)),
                Err(e) => {
                    tracing::warn!(entry = %entry.display(), error = %e, "ignoring unusable cache entry")
                }
            }
        }
        let code = engine.precompile_component(bytes).map_err(invalid)?;
        if let Err(e) = store_atomically(dir, &entry, &code) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write the compile cache");
        }
        // SAFETY: `code` was produced just now by this engine.
        let component = unsafe { Component::deserialize(engine, &code) }.map_err(invalid)?;
        Ok((component, Compiled::Fresh))
    }
}

fn cache_key(engine: &Engine, bytes: &[u8]) -> String {
    let content = blake3::hash(bytes);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{}-{:016x}", &content.to_hex()[..32], h.finish())
}

fn store_atomically(dir: &Path, entry: &Path, code: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        crate::context::next_request_id()
    ));
    std::fs::write(&tmp, code)?;
    std::fs::rename(&tmp, entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clock_trails_the_real_clock_by_at_most_a_tick() {
        let engine = Engine::new(&Config::new()).expect("engine");
        let clock = EpochClock::start(&engine);
        let mut last = coarse_now();
        let until = Instant::now() + EPOCH_TICK * 20;
        while Instant::now() < until {
            let coarse = coarse_now();
            let real = Instant::now();
            assert!(coarse <= real, "the coarse clock ran ahead");
            assert!(
                real - coarse < EPOCH_TICK * 10,
                "the coarse clock fell {:?} behind",
                real - coarse
            );
            assert!(coarse >= last, "the coarse clock went backwards");
            last = coarse;
            std::thread::sleep(Duration::from_micros(300));
        }
        assert!(last > *COARSE_BASE, "the coarse clock never advanced");
        drop(clock);
    }
}
