//! The `steedos-wasm` command line, in the style of cargo and spin.
//!
//! ```text
//! steedos-wasm run examples/shop                      # build, load, serve until Ctrl-C
//! steedos-wasm call examples/shop greeter.hello '{"name":"Ada"}'
//! steedos-wasm inspect target/.../inventory.wasm      # actions, imports, what the host provides
//! steedos-wasm build examples/shop                    # build packages that are out of date
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::app::{App, LoadOptions};
use crate::builder::{self, BuildOutcome};
use crate::codec;
use crate::context::CallContext;
use crate::engine::{CompileCache, EngineLimits, new_engine};
use crate::gateway::Gateway;
use crate::manifest::Manifest;
use crate::package::{self, PackageType};

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
    #[command(after_help = "Example:\n  steedos-wasm call examples/shop greeter.hello '{\"name\":\"Ada\"}'")]
    Call(CallArgs),
    /// Show a component's actions with their WIT signatures and its imports.
    Inspect(InspectArgs),
    /// Build the packages of an app that are out of date.
    Build(BuildArgs),
}

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The app folder (holding steedos.toml), or the toml file itself.
    #[arg(default_value = ".")]
    pub app: PathBuf,
    /// Where the HTTP gateway listens (overrides `[gateway] listen`); `off` for none.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// How to load the app.
    #[command(flatten)]
    pub load: LoadFlags,
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

/// Flags shared by the commands that load an app.
#[derive(Debug, Args)]
pub struct LoadFlags {
    /// Do not run build commands; load the components as they are.
    #[arg(long)]
    pub no_build: bool,
    /// Do not use the compiled-code cache.
    #[arg(long)]
    pub no_cache: bool,
}

impl LoadFlags {
    fn options(&self) -> LoadOptions {
        LoadOptions { build: !self.no_build, cache: !self.no_cache, limits: EngineLimits::default() }
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => serve(args).await,
        Command::Call(args) => call(args).await,
        Command::Inspect(args) => inspect(args),
        Command::Build(args) => build(args).await,
    }
}

async fn load(app: &std::path::Path, flags: &LoadFlags) -> anyhow::Result<App> {
    let manifest = Manifest::load(app).with_context(|| format!("cannot load the app at {}", app.display()))?;
    let app = App::load(manifest, &flags.options()).await.context("cannot start the app")?;
    Ok(app)
}

async fn serve(args: RunArgs) -> anyhow::Result<ExitCode> {
    let listen = match args.listen.as_deref() {
        Some("off") => None,
        Some(addr) => Some(addr.parse().with_context(|| format!("--listen {addr:?} is not an address like 127.0.0.1:3000"))?),
        None => None,
    };
    let app = load(&args.app, &args.load).await?;
    let listen = if args.listen.is_some() { listen } else { app.manifest.gateway.listen };
    let gateway = match listen {
        Some(addr) => {
            let gateway = Gateway::new(&app.manifest.app.name, app.broker.clone(), app.manifest.gateway.clone(), app.metrics.clone());
            Some(gateway.bind(addr).await.with_context(|| format!("the gateway cannot listen on {addr}"))?)
        }
        None => None,
    };
    print_summary(&app, gateway.as_ref().map(|g| g.addr))?;
    wait_for_stop().await;
    eprintln!("stopping: letting in-flight calls finish, then calling `stopped`");
    if let Some(gateway) = gateway {
        gateway.shutdown(app.manifest.app.shutdown_timeout).await;
    }
    app.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn print_summary(app: &App, gateway: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let services = app.broker.services();
    writeln!(
        out,
        "app `{}`: {} package(s) loaded in {} ms",
        app.manifest.app.name,
        services.len(),
        app.load_time.as_millis()
    )?;
    for s in &services {
        let r = s.report();
        let actions: Vec<&str> = s.package.ty.actions.iter().map(|a| a.name.as_str()).collect();
        writeln!(out, "  {:<12} {:<8} {}/{} instances  actions: {}", r.name, r.state, r.live, r.instances, actions.join(", "))?;
    }
    for f in app.broker.failures() {
        writeln!(out, "  {:<12} failed   {}", f.name, f.error)?;
    }
    if let Some(addr) = gateway {
        writeln!(out, "gateway: http://{addr} (POST /api/<package>/<action>, /health, /metrics, /openapi.json)")?;
    }
    writeln!(out, "serving; Ctrl-C to stop")?;
    out.flush()?;
    Ok(())
}

async fn wait_for_stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn call(args: CallArgs) -> anyhow::Result<ExitCode> {
    let app = load(&args.app, &args.load).await?;
    let ctx = CallContext::new(args.timeout);
    let result = app.broker.call_json(&args.action, args.params.as_bytes(), ctx).await;
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
    let manifest = Manifest::load(&args.app).with_context(|| format!("cannot load the app at {}", args.app.display()))?;
    let mut failed = false;
    for rejected in &manifest.rejected {
        eprintln!("error: {rejected}");
        failed = true;
    }
    for spec in &manifest.packages {
        match builder::build_if_needed(spec, args.force).await {
            Ok(BuildOutcome::Built(t)) => println!("{:<12} built in {:.1}s", spec.name, t.as_secs_f64()),
            Ok(BuildOutcome::UpToDate) => println!("{:<12} up to date", spec.name),
            Ok(BuildOutcome::NoBuild) => println!("{:<12} no build command", spec.name),
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
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
    let size = std::fs::metadata(&args.component).map(|m| m.len()).unwrap_or(0);
    writeln!(out, "component {} ({} KiB, compiled in {compile_ms} ms)", args.component.display(), size / 1024)?;
    writeln!(out, "\nactions (called as `<package>.<action>`):")?;
    for a in &ty.actions {
        writeln!(out, "  {:<24} {}", a.name, codec::wit_signature(&a.params, a.result.as_ref()))?;
    }
    writeln!(out, "\nlifecycle: {}", if ty.has_lifecycle() { "exports steedos:package/lifecycle" } else { "none" })?;
    writeln!(out, "events:    {}", if ty.handles_events() { "exports steedos:package/events" } else { "none" })?;
    writeln!(out, "\nimports:")?;
    for i in &ty.host_imports {
        writeln!(out, "  {i:<44} provided by the host")?;
    }
    for i in &ty.typed_imports {
        writeln!(out, "  {:<44} needs a package in the app that exports it", i.interface)?;
        for (f, fty) in &i.functions {
            let params: Vec<(String, _)> = fty.params().map(|(n, t)| (n.to_string(), t)).collect();
            writeln!(out, "    {f}: {}", codec::wit_signature(&params, fty.results().next().as_ref()))?;
        }
    }
    let mut linker = package::base_linker(&engine)?;
    for i in &ty.typed_imports {
        let mut inst = linker.instance(&i.interface).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        for (f, _) in &i.functions {
            inst.func_new(f, |_, _, _, _| Err(wasmtime::format_err!("not linked")))
                .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        }
    }
    match linker.instantiate_pre(&component) {
        Ok(_) => {
            writeln!(out, "\nthe host satisfies every host import{}", if ty.typed_imports.is_empty() { "" } else { "; typed imports need their providers" })?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            writeln!(out, "\nthe host cannot satisfy an import: {e:#}")?;
            Ok(ExitCode::FAILURE)
        }
    }
}
