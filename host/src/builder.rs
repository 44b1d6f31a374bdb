//! Building packages from source before they are loaded.
//!
//! A package with a `build` command in `steedos.toml` is rebuilt when its
//! component is missing or older than any of its inputs: every file in its
//! source folder (`target/`, `node_modules/` and hidden folders aside;
//! symbolic links followed, so a `wit/deps` link to shared WIT counts), and
//! every file Cargo's dep-info beside the component (`<name>.d`) lists, which
//! for a Rust package takes in what lies outside its folder: the SDK, the
//! shared `steedos:package` WIT, another package's WIT it imports. Builds
//! run one at a time with a spinner on a terminal and a log line either
//! way; a failed build fails that package only, with the tail of the
//! build's output.
//!
//! It reads a package's spec and runs its command; it must not load,
//! compile or start components (the app and the engine do), and `/admin`
//! deploys never reach it: a deploy takes a component, not a command.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
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
        "package `{package}`: build command `{command}` succeeded but {component} does not exist; check `component` in steedos.toml{hint}"
    )]
    NoComponent {
        /// The package.
        package: String,
        /// The command.
        command: String,
        /// The expected component path.
        component: String,
        /// What probably put it elsewhere, when known (starts with `; `).
        hint: String,
    },
}

/// Cargo writes to `CARGO_TARGET_DIR` when it is set, not to the `target/`
/// that manifests name: say so when a cargo build left no component.
fn target_dir_hint(command: &str, target_dir: Option<&std::ffi::OsStr>) -> String {
    match target_dir {
        Some(dir) if command.trim_start().starts_with("cargo ") => format!(
            "; CARGO_TARGET_DIR is set ({}), so cargo wrote the component there: unset it for the build, or point `component` into it",
            Path::new(dir).display()
        ),
        _ => String::new(),
    }
}

/// Whether `spec`'s component is missing or older than one of its inputs
/// (see the module's documentation).
pub fn out_of_date(spec: &PackageSpec) -> bool {
    let Some(source) = &spec.source else {
        return false;
    };
    let Ok(built) = std::fs::metadata(&spec.component).and_then(|m| m.modified()) else {
        return true;
    };
    if newest_source(source).is_some_and(|t| t > built) {
        return true;
    }
    // A listed input that is gone (moved, renamed) calls for a build too.
    dep_info(&spec.component).iter().any(|input| {
        std::fs::metadata(input)
            .and_then(|m| m.modified())
            .map_or(true, |t| t > built)
    })
}

/// The newest modification time of a package's inputs: its source folder
/// and what the dep-info beside its component lists. `--watch` polls it.
pub fn newest_input(spec: &PackageSpec) -> Option<SystemTime> {
    let listed = dep_info(&spec.component)
        .into_iter()
        .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    spec.source
        .as_deref()
        .and_then(newest_source)
        .into_iter()
        .chain(listed)
        .max()
}

/// The newest modification time of the files in a package's source folder
/// (`target/`, `node_modules/` and hidden folders aside), following
/// symbolic links, each folder visited once.
pub fn newest_source(dir: &Path) -> Option<SystemTime> {
    let mut newest: Option<SystemTime> = None;
    let mut visited = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        // A link cycle (a `deps` link to a parent, say) ends here.
        if !visited.insert(std::fs::canonicalize(&d).unwrap_or_else(|_| d.clone())) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name == "target" || name == "node_modules" {
                continue;
            }
            let path = entry.path();
            // Through the link, if it is one: its target's time is what counts.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if let Ok(t) = meta.modified() {
                newest = Some(newest.map_or(t, |n| n.max(t)));
            }
        }
    }
    newest
}

/// The inputs that Cargo's dep-info file beside `component`
/// (`<dir>/<stem>.d`, written by every `cargo build`) lists; none when
/// there is no such file (a package not built by Cargo).
fn dep_info(component: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(component.with_extension("d")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| line.split_once(": ").map(|(_, inputs)| inputs))
        .flat_map(make_words)
        .map(PathBuf::from)
        .collect()
}

/// The words of a Makefile rule's prerequisites: split at spaces that are
/// not escaped (`\ ` is a space inside a path).
fn make_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&' ') => {
                word.push(' ');
                chars.next();
            }
            ' ' => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// How a package folder's build lock was taken.
enum Locked {
    /// At once.
    Now(std::fs::File),
    /// After another build of the package let it go.
    AfterWaiting(std::fs::File),
    /// Not at all: the folder cannot be locked here (logged); build anyway.
    Unsupported,
}

/// Locks `dir` (an advisory lock on the folder itself, released when the
/// returned file closes), waiting for another build that holds it.
async fn lock_folder(package: &str, dir: &Path) -> Locked {
    let folder = match std::fs::File::open(dir) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(package, folder = %dir.display(), error = %e, "cannot lock the package folder for its build");
            return Locked::Unsupported;
        }
    };
    match folder.try_lock() {
        Ok(()) => return Locked::Now(folder),
        Err(std::fs::TryLockError::WouldBlock) => {}
        Err(std::fs::TryLockError::Error(e)) => {
            tracing::warn!(package, folder = %dir.display(), error = %e, "cannot lock the package folder for its build");
            return Locked::Unsupported;
        }
    }
    tracing::info!(
        package,
        "waiting for another build of this package to finish"
    );
    let spinner = spinner(format!("waiting for another build of {package} to finish"));
    let waited = tokio::task::spawn_blocking(move || folder.lock().map(|()| folder)).await;
    spinner.finish_and_clear();
    match waited {
        Ok(Ok(folder)) => Locked::AfterWaiting(folder),
        Ok(Err(e)) => {
            tracing::warn!(package, folder = %dir.display(), error = %e, "cannot lock the package folder for its build");
            Locked::Unsupported
        }
        Err(e) => {
            tracing::warn!(package, error = %e, "the build lock's waiting task failed");
            Locked::Unsupported
        }
    }
}

/// A progress spinner showing `message` and the time it has been shown.
fn spinner(message: String) -> indicatif::ProgressBar {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_style(
        indicatif::ProgressStyle::with_template("{spinner:.green} {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    spinner.set_message(message);
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner
}

/// Builds `spec` if it has a build command and is out of date.
pub async fn build_if_needed(spec: &PackageSpec, force: bool) -> Result<BuildOutcome, BuildError> {
    let (Some(command), Some(dir)) = (&spec.build, &spec.source) else {
        return Ok(BuildOutcome::NoBuild);
    };
    if !force && !out_of_date(spec) {
        return Ok(BuildOutcome::UpToDate);
    }
    // Two builds of one package at once (two `build`s, or `build` beside
    // `run --watch`) would collide in tools without a lock of their own
    // (npm, pip): the package folder is locked while its command runs, and
    // a build that waited looks again at whether it is still needed.
    let _lock = match lock_folder(&spec.name, dir).await {
        Locked::Now(f) => Some(f),
        Locked::AfterWaiting(f) if !force && !out_of_date(spec) => {
            drop(f);
            return Ok(BuildOutcome::UpToDate);
        }
        Locked::AfterWaiting(f) => Some(f),
        Locked::Unsupported => None,
    };
    ensure_rust_target(command).await;
    let spinner = spinner(format!("building {}", spec.name));
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
            hint: target_dir_hint(command, std::env::var_os("CARGO_TARGET_DIR").as_deref()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    #[test]
    fn a_missing_component_after_cargo_names_cargo_target_dir() {
        let dir = std::ffi::OsStr::new("/tmp/elsewhere");
        let hint = target_dir_hint("cargo build --release -p greeter", Some(dir));
        assert!(
            hint.contains("CARGO_TARGET_DIR is set (/tmp/elsewhere)"),
            "{hint}"
        );
        assert_eq!(target_dir_hint("npm run build", Some(dir)), "");
        assert_eq!(target_dir_hint("cargo build -p greeter", None), "");
    }

    /// An app in a temporary folder with one package `pkg` (source `pkg/`,
    /// component `out/pkg.wasm`), its source and component written, the
    /// component newer than the source.
    fn app() -> (tempfile::TempDir, PackageSpec) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("pkg/src")).expect("mkdir");
        std::fs::create_dir_all(root.join("out")).expect("mkdir");
        std::fs::create_dir_all(root.join("shared")).expect("mkdir");
        std::fs::write(root.join("pkg/src/lib.rs"), "// source").expect("write");
        std::fs::write(root.join("shared/package.wit"), "package a:b;").expect("write");
        let text =
            "[packages.pkg]\npath = \"pkg\"\nbuild = \"true\"\ncomponent = \"../out/pkg.wasm\"\n";
        let manifest = Manifest::parse(text, &root.join("steedos.toml")).expect("manifest");
        let spec = manifest.packages[0].clone();
        std::fs::write(&spec.component, b"\0asm").expect("write");
        set_age(&root.join("pkg/src/lib.rs"), 100);
        set_age(&root.join("shared/package.wit"), 100);
        set_age(&spec.component, 50);
        (dir, spec)
    }

    /// Sets `path`'s modification time to `seconds` ago.
    fn set_age(path: &Path, seconds: u64) {
        let file = std::fs::File::options()
            .append(true)
            .open(path)
            .expect("open");
        file.set_modified(SystemTime::now() - Duration::from_secs(seconds))
            .expect("set mtime");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_builds_of_one_package_take_turns() {
        let (dir, mut spec) = app();
        let log = dir.path().join("log");
        spec.build = Some(format!(
            "echo start >> {log} && sleep 0.3 && echo end >> {log} && touch ../out/pkg.wasm",
            log = log.display()
        ));
        // Forced: both build, one after the other.
        let (a, b) = tokio::join!(build_if_needed(&spec, true), build_if_needed(&spec, true));
        assert!(matches!(a, Ok(BuildOutcome::Built(_))), "{a:?}");
        assert!(matches!(b, Ok(BuildOutcome::Built(_))), "{b:?}");
        let text = std::fs::read_to_string(&log).expect("log");
        assert_eq!(text, "start\nend\nstart\nend\n");
        // Not forced: the one that waited finds the component fresh.
        std::fs::remove_file(&log).expect("rm log");
        set_age(&spec.component, 200);
        let (a, b) = tokio::join!(build_if_needed(&spec, false), build_if_needed(&spec, false));
        let built = [&a, &b]
            .iter()
            .filter(|r| matches!(r, Ok(BuildOutcome::Built(_))))
            .count();
        assert_eq!(built, 1, "{a:?} {b:?}");
        assert_eq!(std::fs::read_to_string(&log).expect("log"), "start\nend\n");
    }

    #[test]
    fn a_component_newer_than_its_sources_is_up_to_date() {
        let (dir, spec) = app();
        assert!(!out_of_date(&spec));
        set_age(&dir.path().join("pkg/src/lib.rs"), 10);
        assert!(out_of_date(&spec), "a changed source file is not seen");
    }

    #[test]
    fn inputs_outside_the_source_folder_come_from_cargo_dep_info() {
        let (dir, spec) = app();
        let shared = dir.path().join("shared/package.wit");
        let dep_info = format!(
            "{}: {} {}\n",
            spec.component.display(),
            dir.path().join("pkg/src/lib.rs").display(),
            shared.display()
        );
        std::fs::write(spec.component.with_extension("d"), dep_info).expect("write");
        assert!(!out_of_date(&spec));
        set_age(&shared, 10);
        assert!(
            out_of_date(&spec),
            "a changed input listed in the dep-info is not seen"
        );
        assert!(newest_input(&spec) > newest_source(spec.source.as_deref().expect("source")));
        set_age(&spec.component, 5);
        assert!(!out_of_date(&spec));
        std::fs::remove_file(&shared).expect("remove");
        assert!(
            out_of_date(&spec),
            "a listed input that is gone is not seen"
        );
    }

    #[test]
    fn linked_folders_are_followed_and_link_cycles_end() {
        let (dir, spec) = app();
        let root = dir.path();
        std::os::unix::fs::symlink(root.join("shared"), root.join("pkg/deps")).expect("link");
        std::os::unix::fs::symlink(root.join("pkg"), root.join("pkg/src/again")).expect("link");
        assert!(!out_of_date(&spec));
        set_age(&root.join("shared/package.wit"), 10);
        assert!(
            out_of_date(&spec),
            "a changed file behind a link is not seen"
        );
    }

    #[test]
    fn dep_info_paths_may_hold_escaped_spaces() {
        assert_eq!(
            make_words(r"/a/my\ app/lib.rs  /b/c.wit"),
            vec!["/a/my app/lib.rs".to_string(), "/b/c.wit".to_string()]
        );
    }
}
