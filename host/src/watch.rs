//! `steedos-wasm run --watch`: upgrade a package by itself when its
//! component changes on disk, rebuilding it from source first when it has a
//! build command.
//!
//! Every [`POLL`] the watcher looks at each package of the manifest: one
//! whose sources are newer than its component is rebuilt; one whose
//! component changed (size or modification time) since it was loaded is
//! upgraded through [`App::deploy`], without downtime. A failed build or
//! upgrade is logged and leaves the running version serving.
//!
//! It goes through [`App::deploy`] like `/admin` does, so an upgrade it
//! makes is checked the same way; it must not install packages in the
//! broker itself.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::app::App;
use crate::builder;

/// How often the watcher looks.
pub const POLL: Duration = Duration::from_millis(300);

type Stamp = (SystemTime, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Watches `app`'s packages until `stop` turns true.
pub async fn watch_packages(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut seen: HashMap<String, Option<Stamp>> = app
        .manifest
        .packages
        .iter()
        .map(|p| (p.name.clone(), stamp(&p.component)))
        .collect();
    // Sources whose build failed, by their newest modification: not retried
    // until a source changes again.
    let mut failed: HashMap<String, Option<SystemTime>> = HashMap::new();
    tracing::info!(packages = seen.len(), "watching for changes");
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => return,
        }
        for spec in &app.manifest.packages {
            let sources = builder::newest_input(spec);
            let retry = failed.get(&spec.name).is_none_or(|at| *at != sources);
            if spec.build.is_some() && retry && builder::out_of_date(spec) {
                match builder::build_if_needed(spec, false).await {
                    Ok(_) => {
                        failed.remove(&spec.name);
                    }
                    Err(e) => {
                        tracing::error!(package = %spec.name, "rebuild failed; the running version keeps serving: {e}");
                        failed.insert(spec.name.clone(), sources);
                        continue;
                    }
                }
            }
            let now = stamp(&spec.component);
            let before = seen.get(&spec.name).copied().flatten();
            if now.is_none() || now == before {
                continue;
            }
            seen.insert(spec.name.clone(), now);
            let bytes = match std::fs::read(&spec.component) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(package = %spec.name, error = %e, "cannot read the changed component");
                    continue;
                }
            };
            match app.deploy(&spec.name, &bytes, &[]).await {
                Ok(done) => tracing::info!(package = %spec.name, "{done}"),
                Err(e) => tracing::error!(package = %spec.name, "upgrade refused: {e}"),
            }
        }
    }
}
