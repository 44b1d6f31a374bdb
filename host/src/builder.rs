//! Building packages from source before they are loaded.
//!
//! A package with a `build` command in `steedos.toml` is rebuilt when its
//! component is missing or older than any file in its source folder
//! (`target/`, `node_modules/` and hidden folders aside). Builds run one at
//! a time with a spinner on a terminal and a log line either way; a failed
//! build fails that package only, with the tail of the build's output.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use crate::manifest::PackageSpec;

/// How a package's build went.
#[derive(Debug)]
pub enum BuildOutcome {
    /// The package has no build command.
    NoBuild,
    /// The component was newer than every source file.
    UpToDate,
    /// Built now, in this long.
    Built(Duration),
}

/// A build that did not produce the component.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The command could not be started.
    #[error("package `{package}`: cannot run build command `{command}`: {source}")]
    Spawn {
        /// The package.
        package: String,
        /// The command.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The command failed.
    #[error("package `{package}`: build command `{command}` failed ({status}):\n{output}")]
    Failed {
        /// The package.
        package: String,
        /// The command.
        command: String,
        /// Its exit status.
        status: String,
        /// The last lines it printed.
        output: String,
    },
    /// The command succeeded but the component is not where the manifest says.
    #[error(
        "package `{package}`: build command `{command}` succeeded but {component} does not exist; check `component` in steedos.toml"
    )]
    NoComponent {
        /// The package.
        package: String,
        /// The command.
        command: String,
        /// The expected component path.
        component: String,
    },
}

/// Whether `spec`'s component is missing or older than its sources.
pub fn out_of_date(spec: &PackageSpec) -> bool {
    let Some(source) = &spec.source else {
        return false;
    };
    let Ok(built) = std::fs::metadata(&spec.component).and_then(|m| m.modified()) else {
        return true;
    };
    newest_source(source).is_some_and(|t| t > built)
}

/// The newest modification time of the files in a package's source folder
/// (`target/`, `node_modules/` and hidden folders aside).
pub fn newest_source(dir: &Path) -> Option<SystemTime> {
    let mut newest: Option<SystemTime> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name == "target" || name == "node_modules" {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if let Ok(t) = meta.modified() {
                newest = Some(newest.map_or(t, |n| n.max(t)));
            }
        }
    }
    newest
}

/// Builds `spec` if it has a build command and is out of date.
pub async fn build_if_needed(spec: &PackageSpec, force: bool) -> Result<BuildOutcome, BuildError> {
    let (Some(command), Some(dir)) = (&spec.build, &spec.source) else {
        return Ok(BuildOutcome::NoBuild);
    };
    if !force && !out_of_date(spec) {
        return Ok(BuildOutcome::UpToDate);
    }
    ensure_rust_target(command).await;
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_style(
        indicatif::ProgressStyle::with_template("{spinner:.green} {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    spinner.set_message(format!("building {}", spec.name));
    spinner.enable_steady_tick(Duration::from_millis(100));
    tracing::info!(package = %spec.name, command = %command, "building");
    let started = Instant::now();
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .await;
    spinner.finish_and_clear();
    let output = output.map_err(|source| BuildError::Spawn {
        package: spec.name.clone(),
        command: command.clone(),
        source,
    })?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        return Err(BuildError::Failed {
            package: spec.name.clone(),
            command: command.clone(),
            status: output.status.to_string(),
            output: tail(&text, 40),
        });
    }
    if !spec.component.is_file() {
        return Err(BuildError::NoComponent {
            package: spec.name.clone(),
            command: command.clone(),
            component: spec.component.display().to_string(),
        });
    }
    let took = started.elapsed();
    tracing::info!(package = %spec.name, seconds = took.as_secs_f64(), "built");
    Ok(BuildOutcome::Built(took))
}

/// A Cargo build for wasm32-wasip2 needs that target: add it through rustup
/// when it is missing, saying so, as a fresh machine has only the host one.
async fn ensure_rust_target(command: &str) {
    const TARGET: &str = "wasm32-wasip2";
    if !(command.contains("cargo") && command.contains(TARGET)) {
        return;
    }
    let installed = tokio::process::Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .await;
    let Ok(installed) = installed else { return };
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        return;
    }
    eprintln!("installing the Rust target {TARGET} (rustup target add {TARGET})");
    match tokio::process::Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .await
    {
        Ok(s) if s.success() => {}
        other => tracing::warn!(
            ?other,
            "`rustup target add {TARGET}` failed; the build will say why"
        ),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
