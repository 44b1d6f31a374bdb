//! The `steedos-wasm` command line, in the style of cargo and spin.
//!
//! ```text
//! steedos-wasm run examples/shop                      # build, load, serve until Ctrl-C
//! steedos-wasm call examples/shop greeter.hello '{"name":"Ada"}'
//! steedos-wasm inspect target/.../inventory.wasm      # actions, imports, what the host provides
//! steedos-wasm build examples/shop                    # build packages that are out of date
//! steedos-wasm new hello --lang js                    # a new app with one package, ready to run
//! ```
//!
//! It parses arguments, prints, and calls the library's rooms (the app, the
//! gateway, the transport, the admin client); it holds no logic a library
//! user needs, and no other module imports it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::app::{App, LoadOptions};
use crate::builder::{self, BuildOutcome};
use crate::context::CallContext;
use crate::engine::{CompileCache, EngineLimits, new_engine};
use crate::gateway::Gateway;
use crate::manifest::ClusterSettings;
use crate::manifest::Manifest;
use crate::operate::AdminClient;
use crate::package::{self, PackageType};
use crate::scaffold::{self, Lang, Sdk};
use crate::transport::Transport;
use crate::types;

/// How long `call` waits for the cluster to show a node serving the action.
const CLUSTER_DISCOVERY: Duration = Duration::from_secs(3);

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the call returned an error, a build failed, or the app could not be loaded
  2  the command line is wrong

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=steedos_wasm=debug,guest=info) to choose what they show.";

/// Runs every package of an app as a sandboxed WebAssembly component, wired
/// together by a service broker.
#[derive(Debug, Parser)]
#[command(name = "steedos-wasm", version, after_help = EXIT_CODES, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build, load and serve an app until Ctrl-C or SIGTERM.
    ///
    /// Reads <APP>/steedos.toml, builds the packages whose component is older
    /// than their sources, compiles each component (or loads it from the
    /// compile cache in <APP>/.steedos/cache), starts its instances and serves.
    /// A package that fails to build, load or start is reported; the rest serve.
    Run(RunArgs),
    /// Call one action of an app and print its JSON result.
    ///
    /// Loads the app in this process, calls <ACTION> (`<package>.<action>`)
    /// with <PARAMS> (a JSON object by parameter name, or an array by
    /// position), prints the result as JSON, and stops the app.
    #[command(
        after_help = "Example:\n  steedos-wasm call examples/shop greeter.hello '{\"name\":\"Ada\"}'"
    )]
    Call(CallArgs),
    /// Show a component's actions with their WIT signatures and its imports.
    Inspect(InspectArgs),
    /// Deploy a package to a running host, or upgrade it when it exists.
    ///
    /// Sends the component to the host's admin API; the new version's
    /// instances start and take new calls, calls in flight on the old one
    /// finish, then the old instances are stopped. A version that fails to
    /// load or start is refused and the old one keeps serving.
    #[command(
        after_help = "Example:\n  STEEDOS_ADMIN_TOKEN=... steedos-wasm deploy greeter target/wasm32-wasip2/release/greeter.wasm --instances 4"
    )]
    Deploy(DeployArgs),
    /// Upgrade a package of a running host (like `deploy`, but it must exist).
    Upgrade(DeployArgs),
    /// Remove a package from a running host.
    Remove(RemoveArgs),
    /// List the packages of a running host with their state.
    Ps(AdminArgs),
    /// Build the packages of an app that are out of date.
    Build(BuildArgs),
    /// Create a new app with one package, in Rust, JavaScript or Python.
    ///
    /// Writes <DIR>/<NAME>/: steedos.toml naming the package with its build
    /// command and component, a README with the commands to build, run and
    /// call it, and packages/<NAME>/ with the package's WIT (an interface
    /// `api` whose function `hello` is the action `<NAME>.hello`, plus the
    /// host's steedos:package WIT) and its code. It builds and runs as it is:
    /// `run` and `call` run the build command first.
    #[command(after_help = NEW_HELP)]
    New(NewArgs),
    /// Look inside an app's key-value buckets: get, set, list or delete keys.
    ///
    /// Opens the bucket as the app does ([kv.<bucket>] in steedos.toml, else
    /// embedded in <APP>/.steedos/kv/). An embedded bucket is one process's
    /// at a time: stop the app first, or give it a Redis backend.
    #[command(
        subcommand,
        after_help = "Examples:\n  steedos-wasm kv list examples/shop stock\n  steedos-wasm kv get examples/shop stock apple\n  steedos-wasm kv set examples/shop stock apple 12"
    )]
    Kv(crate::kv::cli::KvCommand),
}

const NEW_HELP: &str = "\
Examples:
  steedos-wasm new hello --lang rust
  steedos-wasm run hello                                  # builds, then serves until Ctrl-C
  steedos-wasm call hello hello.hello '{\"name\":\"Ada\"}'    # \"Hello, Ada!\"

What each language needs (the build command installs the rest):
  rust    the Rust toolchain; depends on steedos-sdk by path (see --sdk)
  js      node and npm; componentize-js 0.23 and esbuild from npm
  python  python3 with venv; componentize-py 0.25.1 from PyPI in .venv";

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The app folder (holding steedos.toml), or the toml file itself.
    #[arg(default_value = ".")]
    pub app: PathBuf,
    /// Where the HTTP gateway listens (overrides `[gateway] listen`); `off` for none.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Upgrade a package by itself when its component changes on disk
    /// (rebuilding it first when its sources changed and it has a build command).
    #[arg(long)]
    pub watch: bool,
    /// How to load the app.
    #[command(flatten)]
    pub load: LoadFlags,
    /// How to join a cluster.
    #[command(flatten)]
    pub cluster: ClusterFlags,
}

/// Joining a cluster of steedos-wasm nodes and Moleculer services over
/// NATS or Redis; these override `[cluster]`, and `--transporter` alone
/// joins with its defaults.
#[derive(Debug, Args)]
pub struct ClusterFlags {
    /// The transporter to join: nats://127.0.0.1:4222, tls://...,
    /// redis://127.0.0.1:6379 or rediss://... (`--nats` is the old name).
    #[arg(long = "transporter", visible_alias = "nats", value_name = "URL")]
    pub nats: Option<String>,
    /// This node's id in the cluster (default: `<hostname>-<pid>`).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// The cluster's namespace (subjects `MOL-<namespace>.*`).
    #[arg(long, value_name = "NAME")]
    pub namespace: Option<String>,
}

impl ClusterFlags {
    /// The cluster to join, if any: `[cluster]` with these flags over it.
    fn settings(&self, manifest: Option<&ClusterSettings>) -> Option<ClusterSettings> {
        let mut settings = match (&self.nats, manifest) {
            (Some(url), Some(m)) => ClusterSettings {
                transporter: url.clone(),
                ..m.clone()
            },
            (Some(url), None) => ClusterSettings::new(url.clone()),
            (None, m) => m?.clone(),
        };
        settings.node_id = self.node_id.clone().or(settings.node_id);
        settings.namespace = self.namespace.clone().or(settings.namespace);
        Some(settings)
    }
}

/// Joins the cluster `flags` and `[cluster]` name, if any.
async fn join(
    app: &App,
    flags: &ClusterFlags,
    advertise: bool,
) -> anyhow::Result<Option<Transport>> {
    let Some(mut settings) = flags.settings(app.manifest.cluster.as_ref()) else {
        return Ok(None);
    };
    settings.advertise &= advertise;
    let transport = Transport::start(app.broker.clone(), settings)
        .await
        .context("cannot join the cluster")?;
    // The other nodes' INFO answers our DISCOVER meanwhile, so that
    // `started` finds them (Moleculer waits the same).
    tokio::time::sleep(DISCOVERY_WINDOW).await;
    Ok(Some(transport))
}

/// How long a node that joined waits for the other nodes' INFO before its
/// packages start (Moleculer 0.14's transit waits the same 500 ms).
const DISCOVERY_WINDOW: std::time::Duration = std::time::Duration::from_millis(500);

/// How to reach a running host's admin API.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The host's gateway.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub url: String,
    /// The admin bearer token (the host reads it from the variable `[gateway] admin_token_env` names).
    #[arg(long, env = "STEEDOS_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Arguments of `deploy` and `upgrade`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The package name.
    pub name: String,
    /// The component file (.wasm).
    pub component: PathBuf,
    /// Instances to run.
    #[arg(long)]
    pub instances: Option<u32>,
    /// Memory limit per instance, e.g. "64 MiB".
    #[arg(long)]
    pub memory: Option<String>,
    /// Per-call timeout, e.g. "5s".
    #[arg(long)]
    pub timeout: Option<String>,
    /// Event subscriptions, comma-separated.
    #[arg(long)]
    pub events: Option<String>,
    /// Actions it may call, comma-separated patterns.
    #[arg(long)]
    pub calls: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub admin: AdminArgs,
}

/// Arguments of `remove`.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The package name.
    pub name: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub admin: AdminArgs,
}

/// Arguments of `call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The app folder (holding steedos.toml), or the toml file itself.
    pub app: PathBuf,
    /// The action, as `<package>.<action>`.
    pub action: String,
    /// The parameters as JSON: an object by parameter name or an array by position.
    #[arg(default_value = "{}")]
    pub params: String,
    /// How long the call may take.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// How to load the app.
    #[command(flatten)]
    pub load: LoadFlags,
    /// How to join a cluster, to call actions other nodes serve.
    #[command(flatten)]
    pub cluster: ClusterFlags,
}

/// Arguments of `inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A component file (.wasm).
    pub component: PathBuf,
}

/// Arguments of `build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The app folder (holding steedos.toml), or the toml file itself.
    #[arg(default_value = ".")]
    pub app: PathBuf,
    /// Build even the packages that look up to date.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The app's and its package's name: lowercase words of letters and
    /// digits joined by `-` (`hello`, `order-book`).
    #[arg(value_parser = parse_name)]
    pub name: String,
    /// The package's language.
    #[arg(long, value_enum)]
    pub lang: Lang,
    /// `action` (the action `<NAME>.hello`) or `http` (it serves `/<NAME>/*` and calls out).
    #[arg(long, value_enum, default_value = "action")]
    pub template: scaffold::Template,
    /// The folder to create the app folder in.
    #[arg(long, value_name = "PARENT", default_value = ".")]
    pub dir: PathBuf,
    /// Rust only: the steedos-sdk crate to depend on (a folder holding its
    /// Cargo.toml). Default: the sdk/ of the source tree this binary was
    /// built from when it still exists, else the project's git repository.
    #[arg(long, value_name = "PATH")]
    pub sdk: Option<PathBuf>,
}

fn parse_name(name: &str) -> Result<String, String> {
    scaffold::check_name(name)
        .map(|()| name.to_string())
        .map_err(|e| e.to_string())
}

/// Flags shared by the commands that load an app.
#[derive(Debug, Args)]
pub struct LoadFlags {
    /// Do not run build commands; load the components as they are.
    #[arg(long)]
    pub no_build: bool,
    /// Do not use the compiled-code cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Instances the host holds at once over all packages (the engine's
    /// pool; overrides `max_instances` in [app]; default 1000).
    #[arg(long, env = "STEEDOS_MAX_INSTANCES", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_instances: Option<u32>,
}

impl LoadFlags {
    fn options(&self) -> LoadOptions {
        LoadOptions {
            build: !self.no_build,
            cache: !self.no_cache,
            max_instances: self.max_instances,
        }
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => serve(args).await,
        Command::Call(args) => call(args).await,
        Command::Inspect(args) => inspect(args),
        Command::Build(args) => build(args).await,
        Command::Deploy(args) => deploy(args, false).await,
        Command::Upgrade(args) => deploy(args, true).await,
        Command::Remove(args) => {
            let client = AdminClient::new(&args.admin.url, args.admin.token);
            println!("{}", client.remove(&args.name).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Ps(args) => ps(args).await,
        Command::New(args) => new(args),
        Command::Kv(command) => crate::kv::cli::run(command)
            .await
            .map(|()| ExitCode::SUCCESS),
    }
}

/// The app compiled and linked, its packages not started ([`App::prepare`]).
async fn prepare(args: &RunArgs) -> anyhow::Result<App> {
    let (app, flags) = (&args.app, &args.load);
    let mut manifest =
        Manifest::load(app).with_context(|| format!("cannot load the app at {}", app.display()))?;
    // Key-value buckets follow the flags' cluster as they follow `[cluster]`.
    manifest.cluster = args.cluster.settings(manifest.cluster.as_ref());
    App::prepare(manifest, &flags.options())
        .await
        .context("cannot start the app")
}

async fn load(app: &std::path::Path, flags: &LoadFlags) -> anyhow::Result<App> {
    let manifest =
        Manifest::load(app).with_context(|| format!("cannot load the app at {}", app.display()))?;
    let app = App::load(manifest, &flags.options())
        .await
        .context("cannot start the app")?;
    Ok(app)
}

async fn serve(args: RunArgs) -> anyhow::Result<ExitCode> {
    let listen =
        match args.listen.as_deref() {
            Some("off") => None,
            Some(addr) => Some(addr.parse().with_context(|| {
                format!("--listen {addr:?} is not an address like 127.0.0.1:3000")
            })?),
            None => None,
        };
    // Joined before any `started` runs: a package's `started` (and its
    // `dependencies`) may need services of other nodes.
    let began = std::time::Instant::now();
    let mut app = prepare(&args).await?;
    let cluster = join(&app, &args.cluster, true).await?;
    app.start().await;
    app.load_time = began.elapsed();
    if let Some(t) = &cluster
        && let Err(e) = t.announce().await
    {
        tracing::warn!(error = %e, "INFO not sent after the packages started");
    }
    let app = Arc::new(app);
    let listen = if args.listen.is_some() {
        listen
    } else {
        app.manifest.gateway.listen
    };
    let gateway = match listen {
        Some(addr) => {
            let m = &app.manifest;
            let gateway = Gateway::with_operator(
                &m.app.name,
                app.broker.clone(),
                m.gateway.clone(),
                app.metrics.clone(),
                app.clone(),
            );
            Some(
                gateway
                    .bind(addr)
                    .await
                    .with_context(|| format!("the gateway cannot listen on {addr}"))?,
            )
        }
        None => None,
    };
    let stop = listen_for_stop();
    print_summary(&app, gateway.as_ref().map(|g| g.addr))?;
    if let Some(t) = &cluster {
        println!(
            "cluster: node `{}` joined (Moleculer protocol over NATS)",
            t.node_id()
        );
    }
    let (stop_watching, stopped) = tokio::sync::watch::channel(false);
    let watcher = args
        .watch
        .then(|| tokio::spawn(crate::watch::watch_packages(app.clone(), stopped)));
    stop.await;
    eprintln!("stopping: letting in-flight calls finish, then calling `stopped`");
    let _ = stop_watching.send(true);
    if let Some(w) = watcher {
        let _ = w.await;
    }
    if let Some(gateway) = gateway {
        gateway.shutdown(app.manifest.app.shutdown_timeout).await;
    }
    if let Some(t) = cluster {
        t.stop(app.manifest.app.shutdown_timeout).await;
    }
    app.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn deploy(args: DeployArgs, must_exist: bool) -> anyhow::Result<ExitCode> {
    let client = AdminClient::new(&args.admin.url, args.admin.token.clone());
    if must_exist {
        let packages = client.packages().await?;
        if !packages.iter().any(|p| p["name"] == args.name.as_str()) {
            anyhow::bail!(
                "the host has no package `{}` to upgrade (use `deploy` to add one)",
                args.name
            );
        }
    }
    let settings: Vec<(String, String)> = [
        ("instances", args.instances.map(|n| n.to_string())),
        ("memory", args.memory.clone()),
        ("timeout", args.timeout.clone()),
        ("events", args.events.clone()),
        ("calls", args.calls.clone()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
    .collect();
    println!(
        "{}",
        client
            .deploy(&args.name, &args.component, &settings)
            .await?
    );
    Ok(ExitCode::SUCCESS)
}

async fn ps(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let packages = AdminClient::new(&args.url, args.token).packages().await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<16} {:<9} {:>9} {:>8} {:>6}  LAST ERROR",
        "PACKAGE", "STATE", "INSTANCES", "RESTARTS", "QUEUED"
    )?;
    for p in packages {
        let instances = format!("{}/{}", p["instances"], p["configured"]);
        writeln!(
            out,
            "{:<16} {:<9} {:>9} {:>8} {:>6}  {}",
            p["name"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?"),
            instances,
            p["restarts"],
            p["queued"],
            p["last_error"].as_str().unwrap_or("")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(app: &App, gateway: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let services = app.broker.services();
    let mut actions = app.broker.actions().into_iter().peekable();
    writeln!(
        out,
        "app `{}`: {} package(s) loaded in {} ms",
        app.manifest.app.name,
        services.len(),
        app.load_time.as_millis()
    )?;
    for s in &services {
        let r = s.report();
        // Both by package name: each service takes its run of actions.
        let mut names = Vec::new();
        while let Some(a) = actions.next_if(|a| a.package() == s.name()) {
            names.push(a.name().to_string());
        }
        writeln!(
            out,
            "  {:<12} {:<8} {}/{} instances  actions: {}",
            r.name,
            r.state,
            r.live,
            r.instances,
            names.join(", ")
        )?;
    }
    for f in app.broker.failures() {
        writeln!(out, "  {:<12} failed   {}", f.name, f.error)?;
    }
    if let Some(addr) = gateway {
        writeln!(
            out,
            "gateway: http://{addr} (POST /api/<package>/<action>, /health, /metrics, /openapi.json)"
        )?;
    }
    writeln!(out, "serving; Ctrl-C to stop")?;
    out.flush()?;
    Ok(())
}

/// Listens for SIGTERM and Ctrl-C from now on (so a signal sent right
/// after `serving` is printed is not lost); the future ends on the first.
fn listen_for_stop() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let interrupt = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, interrupt) {
                (Some(mut term), Some(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                (Some(mut term), None) => {
                    term.recv().await;
                }
                (None, _) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn call(args: CallArgs) -> anyhow::Result<ExitCode> {
    let app = load(&args.app, &args.load).await?;
    // Joined only to call: this process offers no packages to the cluster.
    let cluster = join(&app, &args.cluster, false).await?;
    let local = app.broker.find_action(&args.action).is_some();
    if let (Some(t), false) = (&cluster, local) {
        t.wait_for_action(&args.action, args.timeout.min(CLUSTER_DISCOVERY))
            .await;
    }
    let ctx = CallContext::new(args.timeout);
    let result = app
        .broker
        .call_json(&args.action, args.params.as_bytes(), ctx)
        .await;
    if let Some(t) = cluster {
        t.stop(Duration::from_secs(1)).await;
    }
    app.shutdown().await;
    match result {
        Ok(value) => {
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error[{}]: {}", e.kind(), e.message());
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::load(&args.app)
        .with_context(|| format!("cannot load the app at {}", args.app.display()))?;
    let mut failed = false;
    for rejected in &manifest.rejected {
        eprintln!("error: {rejected}");
        failed = true;
    }
    for spec in &manifest.packages {
        match builder::build_if_needed(spec, args.force).await {
            Ok(BuildOutcome::Built(t)) => {
                println!("{:<12} built in {:.1}s", spec.name, t.as_secs_f64())
            }
            Ok(BuildOutcome::UpToDate) => println!("{:<12} up to date", spec.name),
            Ok(BuildOutcome::NoBuild) => println!("{:<12} no build command", spec.name),
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    let sdk = match &args.sdk {
        Some(path) if path.join("Cargo.toml").is_file() => Sdk::Path(std::path::absolute(path)?),
        Some(path) => anyhow::bail!(
            "--sdk {}: no Cargo.toml there; give the steedos-sdk crate's folder",
            path.display()
        ),
        None => Sdk::default_for_this_binary(),
    };
    let app = scaffold::create_from(&args.dir, &args.name, args.lang, &sdk, args.template)?;
    // `./hello` reads better as `hello`.
    let shown = app.strip_prefix(".").unwrap_or(&app).display();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "created app `{}` in {shown}: one package in {}",
        args.name, args.lang
    )?;
    for f in scaffold::files_of(&args.name, args.lang, &sdk, args.template) {
        writeln!(out, "  {}", f.path.display())?;
    }
    if let (Lang::Rust, Sdk::Git(url)) = (args.lang, &sdk) {
        writeln!(
            out,
            "\nsteedos-sdk comes from {url} by git; --sdk <PATH> takes a local one"
        )?;
    }
    writeln!(out, "\nthen:\n  steedos-wasm run {shown}")?;
    writeln!(out, "  {}", args.template.try_it(&args.name, &shown))?;
    Ok(ExitCode::SUCCESS)
}

fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let engine = new_engine(&EngineLimits::default())?;
    let started = std::time::Instant::now();
    let (component, _) = CompileCache::disabled().load(&engine, &args.component)?;
    let compile_ms = started.elapsed().as_millis();
    let name = args
        .component
        .file_stem()
        .map(|s| s.to_string_lossy().replace('_', "-"))
        .unwrap_or_else(|| "package".to_string());
    let ty = PackageType::analyze(&engine, &component, &name)?;
    let mut out = std::io::stdout().lock();
    let size = std::fs::metadata(&args.component)
        .map(|m| m.len())
        .unwrap_or(0);
    writeln!(
        out,
        "component {} ({} KiB, compiled in {compile_ms} ms)",
        args.component.display(),
        size / 1024
    )?;
    writeln!(out, "\nactions (called as `<package>.<action>`):")?;
    for a in &ty.actions {
        writeln!(
            out,
            "  {:<24} {}",
            a.name,
            types::wit_signature(&a.params, a.result.as_ref())
        )?;
    }
    writeln!(
        out,
        "\nlifecycle: {}",
        if ty.has_lifecycle() {
            "exports steedos:package/lifecycle"
        } else {
            "none"
        }
    )?;
    writeln!(
        out,
        "events:    {}",
        if ty.handles_events() {
            "exports steedos:package/events"
        } else {
            "none"
        }
    )?;
    write_imports(&mut out, &ty)?;
    let mut linker = package::base_linker(&engine)?;
    stub_typed_imports(&mut linker, &ty)?;
    // wasi:http is the host's too, for a package granted `grants.http`.
    crate::http::add_to_linker(&mut linker)?;
    match linker.instantiate_pre(&component) {
        Ok(_) => {
            writeln!(
                out,
                "\nthe host satisfies every host import{}",
                if ty.typed_imports.is_empty() {
                    ""
                } else {
                    "; typed imports need their providers"
                }
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            writeln!(out, "\nthe host cannot satisfy an import: {e:#}")?;
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `inspect`'s list of a component's imports: the host's, and the typed
/// ones another package must provide, with their functions.
fn write_imports(out: &mut impl Write, ty: &PackageType) -> anyhow::Result<()> {
    writeln!(out, "\nimports:")?;
    for i in &ty.host_imports {
        writeln!(out, "  {i:<44} provided by the host")?;
    }
    for i in &ty.typed_imports {
        writeln!(
            out,
            "  {:<44} needs a package in the app that exports it",
            i.interface
        )?;
        for (f, fty) in &i.functions {
            let params: Vec<(String, _)> = fty.params().map(|(n, t)| (n.to_string(), t)).collect();
            writeln!(
                out,
                "    {f}: {}",
                types::wit_signature(&params, fty.results().next().as_ref())
            )?;
        }
    }
    Ok(())
}

/// Defines every typed import as a stub, so that instantiating checks
/// only what the host itself must provide.
fn stub_typed_imports(
    linker: &mut wasmtime::component::Linker<package::HostState>,
    ty: &PackageType,
) -> anyhow::Result<()> {
    for i in &ty.typed_imports {
        let mut inst = linker
            .instance(&i.interface)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        for (f, _) in &i.functions {
            inst.func_new(f, |_, _, _, _| Err(wasmtime::format_err!("not linked")))
                .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        }
    }
    Ok(())
}
