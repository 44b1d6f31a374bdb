//! What a package's state looks like from outside: the report that
//! `ps`, `/health`, `/metrics` and the admin API read. A leaf, so that the
//! metrics can render reports without importing the broker that makes them.

/// A snapshot of one package for `ps`, `/health` and tests.
#[derive(Clone, Debug)]
pub struct ServiceReport {
    /// The package name.
    pub name: String,
    /// `starting`, `serving`, `backoff`, `failed` or `stopped`.
    pub state: &'static str,
    /// Instances alive.
    pub live: usize,
    /// Instances configured.
    pub instances: u32,
    /// Calls waiting for an instance.
    pub queued: usize,
    /// Restarts since load.
    pub restarts: u64,
    /// The last fault or start failure.
    pub last_error: Option<String>,
    /// Actions whose circuit breaker is not closed, with its state.
    pub circuits: Vec<(String, &'static str)>,
    /// Its event queue: what waits, what was dropped or refused.
    pub events: EventStats,
    /// Guest log lines dropped over the package's log budget.
    pub log_lines_dropped: u64,
}

/// What a subscriber's event queue holds and has dropped, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Events accepted and not yet delivered (or dropped).
    pub queued: usize,
    /// Bytes those events are charged.
    pub queued_bytes: usize,
    /// The most bytes ever charged at once (never above the bound).
    pub peak_bytes: usize,
    /// Events dropped because they waited past their deadline.
    pub expired: u64,
    /// Emits refused because this subscriber had no room.
    pub refused: u64,
    /// Emits dropped at the event chain depth limit.
    pub too_deep: u64,
}
