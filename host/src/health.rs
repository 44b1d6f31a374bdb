//! What a package's state looks like from outside: its [`PackageState`]
//! and the report that `ps`, `/health`, `/metrics` and the admin API read.
//! A leaf, so that the metrics can render reports without importing the
//! broker that makes them; it must import no other module of the host.

use std::time::Instant;

/// Where a package is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PackageState {
    /// Instances are being created and `started`.
    Starting,
    /// At least one instance serves.
    Serving,
    /// Too many faults: resting until the retry.
    Backoff {
        /// When the next restart is tried.
        retry_at: Instant,
    },
    /// Cannot run at all (bad component, unresolved import, ...).
    Failed,
    /// Shut down.
    Stopped,
}

impl PackageState {
    /// The state's name for `/health` and logs.
    pub fn name(&self) -> &'static str {
        match self {
            PackageState::Starting => "starting",
            PackageState::Serving => "serving",
            PackageState::Backoff { .. } => "backoff",
            PackageState::Failed => "failed",
            PackageState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for PackageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// As its name: `/health` and the admin API show `"serving"`, never the
/// time of a backoff's retry.
impl serde::Serialize for PackageState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A snapshot of one package for `ps`, `/health` and tests.
#[derive(Clone, Debug)]
pub struct ServiceReport {
    /// The package name.
    pub name: String,
    /// Where it is in its life; [`PackageState::name`] is its name in
    /// `/health` and `ps`.
    pub state: PackageState,
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
    /// Services among its `dependencies` that are not available now.
    pub missing_dependencies: Vec<String>,
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
    /// This package's own emits that waited for its `emit_rate` budget.
    pub emits_throttled: u64,
    /// This package's own emits refused over its `emit_rate` (the budget
    /// would have come after their deadline).
    pub emits_over_rate: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_shows_as_its_name_never_its_fields() {
        let backoff = PackageState::Backoff {
            retry_at: Instant::now(),
        };
        assert_eq!(backoff.to_string(), "backoff");
        assert_eq!(
            serde_json::to_value(&backoff).ok(),
            Some(serde_json::json!("backoff"))
        );
        assert_eq!(
            serde_json::to_value(PackageState::Serving).ok(),
            Some(serde_json::json!("serving"))
        );
    }
}
