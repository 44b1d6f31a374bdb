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
//!
//! A cached artifact is native code the host maps and runs unchecked, so
//! each entry carries a keyed BLAKE3 MAC over its name and its bytes. The
//! key ([`CacheKey`]) lives outside every app folder, in the host's state
//! folder (`$XDG_STATE_HOME/steedos-wasm/cache.key`, else
//! `~/.local/state/steedos-wasm/cache.key`, mode 0600), which no grant may
//! reach (see [`crate::manifest`]); without a usable state folder the key is
//! made per process, and the cache only saves work within one process. An
//! entry whose MAC does not verify is ignored and compiled afresh.
//!
//! # Reading components
//! [`read_component`] reads a component file only when it is a regular
//! file (never a device, a FIFO or a folder, and without blocking on a
//! FIFO's open), and only up to a size limit checked before reading.

use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::Component;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of deadlines and of the
/// cooperative yields of long-running guests.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// How much of a dead instance's memory and tables is reset in place
/// rather than handed back to the kernel.
const KEEP_RESIDENT: usize = 1 << 20;

/// Component instances the engine holds at once unless the operator says
/// otherwise (`[app] max_instances`, `--max-instances`).
pub const DEFAULT_MAX_INSTANCES: u32 = 1000;

pub use crate::manifest::DEFAULT_MAX_COMPONENT_SIZE;

/// Linear memories the pool reserves per instance, on average: a Rust or
/// C component has one, a JavaScript or Python one two.
const MEMORIES_PER_INSTANCE: u32 = 2;
/// Tables the pool reserves per instance, on average.
const TABLES_PER_INSTANCE: u32 = 4;

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
            total_instances: DEFAULT_MAX_INSTANCES,
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
    /// The path names a device, a FIFO, a folder or a socket.
    #[error("{path} is not a regular file (it is {kind}); `component` must name a .wasm file")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// The component is larger than the host takes.
    #[error(
        "{path} is larger than the largest component this host takes ({size} > {limit} bytes; \
         raise `max_component_size` in [app] if it is meant to be)"
    )]
    TooLarge {
        /// The component file.
        path: PathBuf,
        /// Its size (at least), in bytes.
        size: u64,
        /// The limit, in bytes.
        limit: u64,
    },
}

/// Builds the engine every package of a host runs on.
pub fn new_engine(limits: &EngineLimits) -> Result<Engine, EngineError> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // WIT `map<K, V>` (the codec reads and writes maps; see `types.rs`).
    config.wasm_component_model_map(true);
    config.epoch_interruption(true);
    // Packages export plain (non-`async`) functions: without concurrency
    // support every call skips the component-model-async task bookkeeping.
    config.concurrency_support(false);
    // A guest that overflows its stack traps instead of crashing the host.
    config.max_wasm_stack(1 << 20);
    config.async_stack_size(2 << 20);
    let mut pool = PoolingAllocationConfig::new();
    let total = limits.total_instances.max(1);
    pool.total_component_instances(total)
        .total_core_instances(total.saturating_mul(8))
        .total_memories(total.saturating_mul(MEMORIES_PER_INSTANCE))
        .total_tables(total.saturating_mul(TABLES_PER_INSTANCE))
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

/// Advances an engine's epoch every [`EPOCH_TICK`] for as long as the
/// engine lives. It keeps ticking after the clock is dropped while a store
/// still holds the engine: a guest still running then (a task the async
/// runtime has not cancelled yet) must still meet its deadline, or it
/// would spin forever and hold the process.
pub struct EpochClock {
    _thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochClock {
    /// Starts the clock for `engine`.
    pub fn start(engine: &Engine) -> EpochClock {
        let weak = engine.weak();
        coarse_tick();
        CLOCKS_RUNNING.fetch_add(1, Ordering::AcqRel);
        let thread = std::thread::Builder::new()
            .name("steedos-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    coarse_tick();
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
                CLOCKS_RUNNING.fetch_sub(1, Ordering::AcqRel);
            })
            .ok();
        if thread.is_none() {
            CLOCKS_RUNNING.fetch_sub(1, Ordering::AcqRel);
        }
        EpochClock { _thread: thread }
    }
}

/// Reads the component at `path`: a regular file of at most `limit` bytes.
///
/// The file is opened without blocking (a FIFO would wait for a writer),
/// checked to be a regular file on the opened handle (so a swap after a
/// look at the path changes nothing), and read through a bound, so a file
/// that grows while it is read is refused too.
pub fn read_component(path: &Path, limit: u64) -> Result<Vec<u8>, EngineError> {
    let read_error = |source| EngineError::Read {
        path: path.to_owned(),
        source,
    };
    let mut open = std::fs::OpenOptions::new();
    open.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.custom_flags(libc::O_NONBLOCK);
    }
    let file = match std::fs::symlink_metadata(path) {
        // A symlink is followed by `open`; the opened file is checked below.
        Ok(m) if !m.file_type().is_file() && !m.file_type().is_symlink() => {
            return Err(not_a_file(path, &m));
        }
        Ok(_) => open.open(path).map_err(read_error)?,
        Err(e) => return Err(read_error(e)),
    };
    let metadata = file.metadata().map_err(read_error)?;
    if !metadata.is_file() {
        return Err(not_a_file(path, &metadata));
    }
    let too_large = |size| EngineError::TooLarge {
        path: path.to_owned(),
        size,
        limit,
    };
    if metadata.len() > limit {
        return Err(too_large(metadata.len()));
    }
    let capacity = usize::try_from(metadata.len()).unwrap_or(0);
    let mut bytes = Vec::with_capacity(capacity);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

fn not_a_file(path: &Path, m: &std::fs::Metadata) -> EngineError {
    let t = m.file_type();
    let kind = if t.is_dir() {
        "a folder"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        file_kind(&t)
    };
    EngineError::NotAFile {
        path: path.to_owned(),
        kind,
    }
}

#[cfg(unix)]
fn file_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

#[cfg(not(unix))]
fn file_kind(_: &std::fs::FileType) -> &'static str {
    "not a regular file"
}

/// The key that signs compile-cache entries; see the module docs.
#[derive(Clone)]
pub struct CacheKey([u8; 32]);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKey(..)")
    }
}

impl CacheKey {
    /// The host's key: read from the state folder, made there on first use;
    /// a key of this process alone when there is no usable state folder.
    pub fn host() -> CacheKey {
        static KEY: LazyLock<CacheKey> = LazyLock::new(|| {
            match crate::manifest::host_state_dir().map(|dir| CacheKey::in_dir(&dir)) {
                Some(Ok(key)) => key,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "no compile-cache key on disk; using one for this process (the cache will not outlive it)");
                    CacheKey::ephemeral()
                }
                None => CacheKey::ephemeral(),
            }
        });
        KEY.clone()
    }

    /// A random key for this process only.
    pub fn ephemeral() -> CacheKey {
        let mut key = [0u8; 32];
        if getrandom::getrandom(&mut key).is_err() {
            // No OS randomness: a key nobody else can predict well enough
            // to matter, from the process's own randomly seeded hashers.
            for (i, chunk) in key.chunks_mut(8).enumerate() {
                use std::hash::BuildHasher;
                let h = std::collections::hash_map::RandomState::new().hash_one(i);
                chunk.copy_from_slice(&h.to_le_bytes());
            }
        }
        CacheKey(key)
    }

    /// The key in `dir/cache.key`, made (0600) when missing.
    pub fn in_dir(dir: &Path) -> std::io::Result<CacheKey> {
        let path = dir.join("cache.key");
        if let Ok(bytes) = std::fs::read(&path)
            && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
        {
            return Ok(CacheKey(key));
        }
        create_private_dir(dir)?;
        let fresh = CacheKey::ephemeral();
        let tmp = dir.join(format!(".cache.key-{}", std::process::id()));
        let mut open = std::fs::OpenOptions::new();
        open.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            open.mode(0o600);
        }
        let mut file = open.open(&tmp)?;
        std::io::Write::write_all(&mut file, &fresh.0)?;
        file.sync_all()?;
        // Two hosts starting at once: the first key to land wins, and both read it.
        let _ = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        let bytes = std::fs::read(&path)?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(CacheKey)
            .map_err(|_| std::io::Error::other(format!("{} is not a key", path.display())))
    }

    fn mac(&self, name: &str, code: &[u8]) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(code);
        h.finalize()
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Precompiled components on disk, keyed by content and engine, each
/// signed with the host's [`CacheKey`].
#[derive(Clone, Debug)]
pub struct CompileCache {
    dir: Option<PathBuf>,
    key: CacheKey,
    max_size: u64,
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
    /// A cache in `dir` (created on first store), signed with the host's key.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_key(dir, CacheKey::host())
    }

    /// A cache in `dir` signed with `key`.
    pub fn with_key(dir: impl Into<PathBuf>, key: CacheKey) -> Self {
        CompileCache {
            dir: Some(dir.into()),
            key,
            max_size: DEFAULT_MAX_COMPONENT_SIZE,
        }
    }

    /// No cache: every load compiles.
    pub fn disabled() -> Self {
        CompileCache {
            dir: None,
            key: CacheKey([0; 32]),
            max_size: DEFAULT_MAX_COMPONENT_SIZE,
        }
    }

    /// The largest component file [`load`](Self::load) reads.
    pub fn max_component_size(mut self, bytes: u64) -> Self {
        self.max_size = bytes;
        self
    }

    /// Loads the component at `path` (a regular file within the size
    /// limit), from the cache when it holds it.
    pub fn load(&self, engine: &Engine, path: &Path) -> Result<(Component, Compiled), EngineError> {
        let bytes = read_component(path, self.max_size)?;
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
        let name = format!("{}.cwasm", cache_key(engine, bytes));
        let entry = dir.join(&name);
        if let Some(code) = self.verified(&entry, &name) {
            // SAFETY: `code` carries a MAC made with the host's key, which
            // only this host's `precompile_component` output is signed with
            // (the key is outside every granted folder); the engine's
            // compatibility hash is in the entry's name, which the MAC covers.
            match unsafe { Component::deserialize(engine, code) } {
                Ok(component) => return Ok((component, Compiled::Cached)),
                Err(e) => {
                    tracing::warn!(entry = %entry.display(), error = %e, "ignoring unusable cache entry")
                }
            }
        }
        let code = engine.precompile_component(bytes).map_err(invalid)?;
        let mac = self.key.mac(&name, &code);
        if let Err(e) = store_atomically(dir, &entry, mac.as_bytes(), &code) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write the compile cache");
        }
        // SAFETY: `code` was produced just now by this engine.
        let component = unsafe { Component::deserialize(engine, &code) }.map_err(invalid)?;
        Ok((component, Compiled::Fresh))
    }
}

impl CompileCache {
    /// The precompiled code in `entry` when its MAC verifies; `None` (and a
    /// warning when something was there) otherwise.
    fn verified(&self, entry: &Path, name: &str) -> Option<Vec<u8>> {
        // Our own entries are a little larger than the component they compile.
        let limit = self.max_size.saturating_mul(8).max(64 << 20);
        let mut bytes = match read_component(entry, limit) {
            Ok(bytes) => bytes,
            Err(EngineError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return None;
            }
            Err(e) => {
                tracing::warn!(entry = %entry.display(), error = %e, "ignoring unreadable cache entry; compiling afresh");
                return None;
            }
        };
        if bytes.len() < MAC_LEN {
            tracing::warn!(entry = %entry.display(), "ignoring a truncated cache entry; compiling afresh");
            return None;
        }
        let code = bytes.split_off(MAC_LEN);
        let stored = <[u8; MAC_LEN]>::try_from(bytes.as_slice()).ok()?;
        // `blake3::Hash` compares in constant time.
        if self.key.mac(name, &code) != blake3::Hash::from(stored) {
            tracing::warn!(entry = %entry.display(), "cache entry fails its MAC (tampered, or signed by another key); compiling afresh");
            return None;
        }
        Some(code)
    }
}

/// Bytes of the MAC at the head of a cache entry.
const MAC_LEN: usize = 32;

fn cache_key(engine: &Engine, bytes: &[u8]) -> String {
    let content = blake3::hash(bytes);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{}-{:016x}", &content.to_hex()[..32], h.finish())
}

fn store_atomically(dir: &Path, entry: &Path, mac: &[u8], code: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        crate::context::next_request_id()
    ));
    let mut file = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut file, mac)?;
    std::io::Write::write_all(&mut file, code)?;
    drop(file);
    std::fs::rename(&tmp, entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clock_never_runs_ahead_or_back_and_keeps_up() {
        let engine = Engine::new(&Config::new()).expect("engine");
        let clock = EpochClock::start(&engine);
        let mut last = coarse_now();
        // It keeps up: every real instant is reached by the coarse clock
        // (the bound is generous: a busy machine may delay a tick a lot).
        for _ in 0..5 {
            let target = Instant::now();
            let give_up = target + Duration::from_secs(10);
            loop {
                let coarse = coarse_now();
                assert!(coarse <= Instant::now(), "the coarse clock ran ahead");
                assert!(coarse >= last, "the coarse clock went backwards");
                last = coarse;
                if coarse >= target {
                    break;
                }
                assert!(Instant::now() < give_up, "the coarse clock stopped");
                std::thread::sleep(Duration::from_micros(300));
            }
        }
        drop(clock);
    }
}
