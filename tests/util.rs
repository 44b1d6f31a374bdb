//! Helpers shared by the integration tests: the guest components built by
//! `build.rs`, and apps started from a manifest written on the fly.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use steedos_wasm::app::{App, LoadOptions};
use steedos_wasm::context::{CallContext, CallError};
use steedos_wasm::manifest::Manifest;

#[path = "require.rs"]
pub mod require;

/// Paths of the guest components, built from source by `build.rs`.
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

/// A running app in a temporary folder of its own.
pub struct TestApp {
    /// The app.
    pub app: std::sync::Arc<App>,
    /// The app folder (holds steedos.toml and any granted folders).
    pub dir: tempfile::TempDir,
}

/// Validates an OpenAPI document with openapi-spec-validator (Python), in
/// a file under `dir`; a missing validator skips by [`require`]'s rule.
pub fn assert_valid_openapi(doc: &serde_json::Value, dir: &Path) {
    let has_validator = require::tools(&["python3"])
        && require::present(
            (!std::process::Command::new("python3")
                .args(["-c", "import openapi_spec_validator"])
                .output()
                .is_ok_and(|o| o.status.success()))
            .then(|| "the Python module openapi_spec_validator".to_string()),
        );
    if !has_validator {
        return;
    }
    let file = dir.join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(doc).expect("json")).expect("write");
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys, json; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')"])
        .arg(&file)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "OpenAPI validation failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "valid");
}

/// `probe` with one instance and a queue of one, subscribed to `test.*`,
/// and `tally` beside it: the smallest room an event flood can meet.
pub const PROBE_QUEUE_OF_ONE: &str = r#"
[packages.probe]
component = "{PROBE}"
instances = 1
queue = 1
events = ["test.*"]
[packages.probe.grants]
calls = ["tally.*"]
[packages.tally]
component = "{TALLY}"
"#;

/// The folder of this crate's fixtures.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Replaces `{GREETER}`, `{PROBE}`, ... with component paths and `{DIR}`
/// with the app folder.
pub fn expand(toml: &str, dir: &Path) -> String {
    let mut text = toml.replace("{DIR}", &dir.display().to_string());
    for (name, path) in guests::ALL {
        text = text.replace(&format!("{{{}}}", name.to_uppercase()), path);
    }
    text.replace("{FIXTURES}", &fixture("").display().to_string())
        .replace("{CACHE}", &shared_cache().display().to_string())
}

/// A compile cache shared by every test of this run, so each component is
/// compiled once.
pub fn shared_cache() -> PathBuf {
    Path::new(env!("OUT_DIR")).join("compile-cache")
}

impl TestApp {
    /// Starts an app from manifest text (see [`expand`] for placeholders);
    /// `prepare` may create files in the app folder first.
    pub async fn start_with(toml: &str, prepare: impl FnOnce(&Path)) -> TestApp {
        Self::start_edited(toml, prepare, |_| {}).await
    }

    /// [`start_with`](Self::start_with), with `edit` changing the loaded
    /// manifest first: how a test gives settings that the manifest reads
    /// from the environment (tests never set environment variables).
    pub async fn start_edited(
        toml: &str,
        prepare: impl FnOnce(&Path),
        edit: impl FnOnce(&mut Manifest),
    ) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        prepare(dir.path());
        let text = expand(toml, dir.path());
        let text = if text.contains("[app]") {
            text
        } else {
            format!(
                "[app]\ncache_dir = \"{}\"\n{text}",
                shared_cache().display()
            )
        };
        let path = dir.path().join("steedos.toml");
        std::fs::write(&path, &text).expect("write manifest");
        let mut manifest =
            Manifest::load(&path).unwrap_or_else(|e| panic!("manifest: {e}\n{text}"));
        edit(&mut manifest);
        let options = LoadOptions {
            build: false,
            ..LoadOptions::default()
        };
        let app = App::load(manifest, &options).await.expect("app loads");
        TestApp {
            app: std::sync::Arc::new(app),
            dir,
        }
    }

    /// Starts an app from manifest text.
    pub async fn start(toml: &str) -> TestApp {
        Self::start_with(toml, |_| {}).await
    }

    /// Calls an action with JSON params and a 10 s deadline.
    pub async fn call(
        &self,
        action: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, CallError> {
        self.call_within(action, params, Duration::from_secs(10))
            .await
    }

    /// Calls an action with JSON params and the given deadline.
    pub async fn call_within(
        &self,
        action: &str,
        params: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, CallError> {
        let body = serde_json::to_vec(&params).expect("json");
        self.app
            .broker
            .call_json(action, &body, CallContext::new(timeout))
            .await
    }

    /// Calls an action that must succeed.
    pub async fn ok(&self, action: &str, params: serde_json::Value) -> serde_json::Value {
        match self.call(action, params).await {
            Ok(v) => v,
            Err(e) => panic!("{action} failed: {e}"),
        }
    }

    /// The state name of a package (`serving`, `backoff`, ...).
    pub fn state(&self, package: &str) -> String {
        self.app
            .broker
            .reports()
            .into_iter()
            .find(|r| r.name == package)
            .map(|r| r.state.to_string())
            .unwrap_or_else(|| "absent".into())
    }

    /// The load failure recorded for `package`, if any.
    pub fn failure(&self, package: &str) -> Option<String> {
        self.app
            .broker
            .failures()
            .into_iter()
            .find(|f| f.name == package)
            .map(|f| f.error)
    }

    /// The deliveries the app's `tally` package recorded, oldest first:
    /// (event, id of the instance that got it).
    pub async fn tally(&self) -> Vec<(String, u64)> {
        let v = self.ok("tally.entries", serde_json::json!({})).await;
        v.as_array()
            .expect("a list")
            .iter()
            .map(|e| {
                (
                    e[0].as_str().expect("event").to_string(),
                    e[1].as_u64().expect("instance"),
                )
            })
            .collect()
    }

    /// [`tally`](Self::tally) once it holds at least `n` deliveries; panics
    /// when it does not within `within`.
    pub async fn tally_at_least(&self, n: usize, within: Duration) -> Vec<(String, u64)> {
        eventually(within, || async {
            let e = self.tally().await;
            (e.len() >= n).then_some(e)
        })
        .await
        .unwrap_or_else(|| panic!("expected {n} deliveries recorded by tally"))
    }
}

/// Polls `check` every 10 ms until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl TestApp {
    /// Starts the app's HTTP gateway on a free port of 127.0.0.1.
    pub async fn gateway(&self) -> (steedos_wasm::gateway::RunningGateway, String) {
        let gateway = steedos_wasm::gateway::Gateway::with_operator(
            &self.app.manifest.app.name,
            self.app.broker.clone(),
            self.app.manifest.gateway.clone(),
            self.app.metrics.clone(),
            self.app.clone(),
        );
        let running = gateway
            .bind(([127, 0, 0, 1], 0).into())
            .await
            .expect("bind");
        let base = format!("http://{}", running.addr);
        (running, base)
    }
}

/// What the host logs (`guest` at info and up, the guest log module's
/// warnings, the watcher's lines), captured for the whole test process, one event a line
/// with its target and fields, from the first call of [`logs`] on.
#[derive(Clone)]
pub struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    /// Everything captured so far.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The first line that has every one of `parts`, waiting for it at most
    /// `within`.
    pub async fn line_with(&self, parts: &[&str], within: Duration) -> Option<String> {
        eventually(within, || async {
            self.text()
                .lines()
                .find(|line| parts.iter().all(|part| line.contains(part)))
                .map(str::to_string)
        })
        .await
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The process's log capture, installed as the global subscriber on first
/// use. Tests look for lines naming something of their own (a package
/// name no other test uses), since every test's logs land here.
pub fn logs() -> Logs {
    static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        use tracing_subscriber::util::SubscriberInitExt as _;
        let logs = Logs(Default::default());
        let writer = logs.clone();
        let installed = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "guest=info,steedos_wasm::guest_log=warn,steedos_wasm::watch=info,steedos_wasm::broker=warn",
            ))
            .with_writer(move || writer.clone())
            .finish()
            .try_init();
        assert!(installed.is_ok(), "another global log subscriber is set");
        logs
    })
    .clone()
}

/// Four tasks calling `greeter.hello` and `inventory.get-item` (the shop's
/// healthy packages) until `stop`, counting answers that are right in `ok`;
/// a task ends with the first wrong answer or error. For tests that storm
/// one package and check that the others keep serving.
pub fn healthy_load(
    t: &std::sync::Arc<TestApp>,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: &std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Result<(), String>>> {
    use serde_json::json;
    use std::sync::atomic::Ordering;
    (0..4)
        .map(|i| {
            let (t, stop, ok) = (t.clone(), stop.clone(), ok.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = match i % 2 {
                        0 => t
                            .call("greeter.hello", json!({"name": "load"}))
                            .await
                            .map(|v| v == json!("Hello, load!")),
                        _ => t
                            .call("inventory.get-item", json!({"sku": "apple"}))
                            .await
                            .map(|v| v["sku"] == "apple"),
                    };
                    match r {
                        Ok(true) => ok.fetch_add(1, Ordering::Relaxed),
                        other => return Err(format!("a healthy call failed: {other:?}")),
                    };
                }
                Ok(())
            })
        })
        .collect()
}
