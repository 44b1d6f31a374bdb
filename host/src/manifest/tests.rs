//! Snapshot tests: `tests/manifest/<case>.toml` beside `<case>.err`, the
//! exact errors it must produce (none: no `.err`). `UPDATE_SNAPSHOTS=1`
//! rewrites the `.err` files.

use std::path::PathBuf;
use std::time::Duration;

use super::*;

mod limits;

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifest")
}

/// Every error the outcome holds, one a line, with paths relative to the cases folder.
fn render(outcome: &Result<Manifest, ManifestError>) -> String {
    let errors: Vec<String> = match outcome {
        Ok(manifest) => manifest.rejected.iter().map(ToString::to_string).collect(),
        Err(error) => vec![error.to_string()],
    };
    let dir = format!("{}{}", cases_dir().display(), std::path::MAIN_SEPARATOR);
    errors
        .iter()
        .map(|error| format!("{}\n", error.replace(&dir, "")))
        .collect()
}

/// Loads `<case>.toml` and compares its errors with `<case>.err`.
fn check_snapshot(case: &str) -> Result<Manifest, ManifestError> {
    let outcome = Manifest::load(&cases_dir().join(format!("{case}.toml")));
    let actual = render(&outcome);
    let snapshot = cases_dir().join(format!("{case}.err"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|value| value == "1") {
        update_snapshot(&snapshot, &actual);
    } else {
        let expected = std::fs::read_to_string(&snapshot).unwrap_or_default();
        assert_eq!(
            actual, expected,
            "{case}.toml: errors differ from {case}.err (UPDATE_SNAPSHOTS=1 rewrites it)"
        );
    }
    outcome
}

fn update_snapshot(snapshot: &Path, actual: &str) {
    if actual.is_empty() {
        if snapshot.exists() {
            std::fs::remove_file(snapshot).expect("remove stale snapshot");
        }
    } else {
        std::fs::write(snapshot, actual).expect("write snapshot");
    }
}

fn load_good(case: &str) -> Manifest {
    check_snapshot(case).unwrap_or_else(|error| panic!("{case}: {error}"))
}

fn package<'m>(manifest: &'m Manifest, name: &str) -> &'m PackageSpec {
    manifest
        .packages
        .iter()
        .find(|package| package.name == name)
        .unwrap_or_else(|| panic!("no package `{name}`"))
}

fn parse_inline(text: &str) -> Result<Manifest, ManifestError> {
    Manifest::parse(text, &cases_dir().join("inline.toml"))
}

/// Broken inputs: each is a `<case>.toml` with a `<case>.err`.
mod snapshots {
    use super::check_snapshot;

    macro_rules! cases {
        ($($case:ident),* $(,)?) => {
            pub(super) const CASES: &[&str] = &[$(stringify!($case)),*];
            $(#[test]
            fn $case() {
                let _ = check_snapshot(stringify!($case));
            })*
        };
    }

    cases!(
        syntax_error,
        unknown_top_level_key,
        telemetry_bad_protocol,
        telemetry_bad_endpoint,
        telemetry_bad_ratio,
        telemetry_unknown_key,
        unknown_app_key,
        app_out_of_range,
        app_wrong_type,
        bad_defaults,
        defaults_unknown_key,
        defaults_bad_restart,
        packages_not_a_table,
        unknown_package_key,
        unknown_grants_key,
        wrong_types,
        out_of_range,
        bad_values,
        missing_component,
        build_without_path,
        bad_package_names,
        missing_grant_dir,
        bad_patterns,
        bad_http_grants,
        cluster_unknown_key,
        cluster_bad_transporter,
        cluster_bad_node_id,
        cluster_bad_protocol,
        cluster_bad_serializer,
        cluster_bad_heartbeat,
        moleculer_bad_properties,
    );
}

/// Good inputs, each with its own test below.
const GOOD_CASES: &[&str] = &[
    "empty",
    "minimal",
    "full",
    "defaults",
    "one_bad_package",
    "cluster",
    "moleculer",
];

#[test]
fn cluster_sets_every_key_and_is_off_without_the_table() {
    let manifest = load_good("cluster");
    let cluster = manifest.cluster.expect("[cluster]");
    assert_eq!(
        cluster,
        ClusterSettings {
            transporter: "nats://127.0.0.1:4222".into(),
            node_id: Some("shop-1".into()),
            namespace: Some("dev".into()),
            protocol: 5,
            serializer: Serializer::MessagePack,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(3),
            advertise: false,
            publish: vec!["greeter.*".into(), "orders.place".into()],
            auth: ClusterAuth::UserPassword {
                user: "shop".into(),
                password: Secret::File(cases_dir().join("secrets/nats-password")),
            },
            tls: ClusterTls {
                required: true,
                ca: Some(cases_dir().join("certs/ca.pem")),
                client: Some((
                    cases_dir().join("certs/client.pem"),
                    cases_dir().join("certs/client.key")
                )),
            },
        }
    );
    let auth = |extra: &str| {
        parse_inline(&format!(
            "[cluster]\ntransporter = \"tls://10.0.0.1:4222\"\n{extra}"
        ))
        .map(|m| m.cluster.expect("[cluster]").auth)
    };
    assert_eq!(
        auth("token_env = \"NATS_TOKEN\"").expect("token"),
        ClusterAuth::Token(Secret::Env("NATS_TOKEN".into()))
    );
    assert_eq!(
        auth("nkey_seed_env = \"NATS_SEED\"").expect("nkey"),
        ClusterAuth::NKey(Secret::Env("NATS_SEED".into()))
    );
    assert!(matches!(
        auth("credentials = \"app.creds\"").expect("creds"),
        ClusterAuth::Credentials(p) if p.ends_with("app.creds")
    ));
    for (bad, says) in [
        ("token_env = \"A\"\ntoken_file = \"t\"", "not both"),
        (
            "token_env = \"A\"\ncredentials = \"c\"",
            "one kind of NATS credentials",
        ),
        ("user = \"u\"", "needs `password_env`"),
        ("password_env = \"P\"", "needs `user`"),
        ("tls_cert = \"c.pem\"", "needs `tls_key`"),
        ("publish = [\"greeter.*.x\"]", "not an action pattern"),
    ] {
        let e = auth(bad).expect_err(bad).to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
    assert!(load_good("empty").cluster.is_none());
    let minimal =
        parse_inline("[cluster]\ntransporter = \"nats://10.0.0.1:4222\"\n").expect("parses");
    assert_eq!(
        minimal.cluster,
        Some(ClusterSettings::new("nats://10.0.0.1:4222"))
    );
}

#[test]
fn every_case_file_has_a_test() {
    let mut files: Vec<String> = std::fs::read_dir(cases_dir())
        .expect("read tests/manifest")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix(".toml").map(str::to_owned))
        .collect();
    let mut tested: Vec<String> = snapshots::CASES
        .iter()
        .chain(GOOD_CASES)
        .map(|case| (*case).to_owned())
        .collect();
    files.sort();
    tested.sort();
    assert_eq!(files, tested);
}

#[test]
fn empty_manifest_has_every_app_default() {
    let manifest = load_good("empty");
    assert_eq!(manifest.dir, cases_dir());
    assert_eq!(manifest.path, cases_dir().join("empty.toml"));
    assert_eq!(manifest.app.name, "manifest");
    assert_eq!(manifest.app.max_call_depth, 16);
    assert_eq!(manifest.app.cache_dir, cases_dir().join(".steedos/cache"));
    assert_eq!(manifest.app.shutdown_timeout, Duration::from_secs(10));
    assert!(manifest.packages.is_empty());
    assert!(manifest.rejected.is_empty());
}

#[test]
fn minimal_package_has_every_default() {
    let manifest = load_good("minimal");
    let [hello] = manifest.packages.as_slice() else {
        panic!("expected one package, got {:?}", manifest.packages);
    };
    assert_eq!(hello.name, "hello");
    assert_eq!(hello.source, None);
    assert_eq!(hello.build, None);
    assert_eq!(hello.component, cases_dir().join("hello.wasm"));
    assert_eq!(hello.instances, 1);
    assert_eq!(hello.memory, 64 << 20);
    assert_eq!(hello.timeout, Duration::from_secs(5));
    assert_eq!(hello.queue, 64);
    assert_eq!(hello.restart, RestartPolicy::default());
    assert!(hello.events.is_empty());
    assert!(hello.grants.dirs.is_empty());
    assert!(hello.grants.env.is_empty());
    assert!(hello.grants.calls.is_empty());
    assert!(!hello.subscribes_to("order.placed"));
    assert!(!hello.grants.may_call("hello.hello"));
}

#[test]
fn full_manifest_sets_every_key() {
    let manifest = load_good("full");
    assert_eq!(manifest.app.name, "shop");
    assert_eq!(manifest.app.max_call_depth, 8);
    assert_eq!(manifest.app.cache_dir, Path::new("/var/cache/steedos"));
    assert_eq!(manifest.app.shutdown_timeout, Duration::from_secs(90));
    let names: Vec<&str> = manifest.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["inventory", "greeter"], "file order");

    let inventory = package(&manifest, "inventory");
    let source = cases_dir().join("packages/inventory");
    assert_eq!(inventory.source.as_deref(), Some(source.as_path()));
    assert_eq!(
        inventory.build.as_deref(),
        Some("cargo build --release --target wasm32-wasip2")
    );
    assert_eq!(
        inventory.component,
        source.join("target/wasm32-wasip2/release/inventory.wasm")
    );
    assert_eq!(inventory.instances, 2);
    assert_eq!(inventory.memory, 32 << 20);
    assert_eq!(inventory.timeout, Duration::from_secs(2));
    assert_eq!(inventory.queue, 128);
    assert_eq!(inventory.events, ["order.placed", "order.*", "*"]);
    let restart = RestartPolicy {
        max_restarts: 10,
        within: Duration::from_secs(30),
        backoff: Duration::from_millis(500),
        max_backoff: Duration::from_secs(20),
    };
    assert_eq!(inventory.restart, restart);
    assert_eq!(
        inventory.grants.calls,
        ["inventory.*", "greeter.hello", "*"]
    );
    assert_eq!(inventory.grants.emits, ["order.*", "audit.written"]);
    assert!(inventory.grants.may_emit("order.placed"));
    assert!(!inventory.grants.may_emit("audit.read"));
    assert!(!Grants::default().may_emit("order.placed"));

    let dirs = &inventory.grants.dirs;
    assert_eq!(dirs.len(), 2);
    assert_eq!(dirs[0].host, cases_dir().join("data"));
    assert_eq!(dirs[0].guest, "/data");
    assert!(dirs[0].read_only);
    assert_eq!(dirs[1].host, cases_dir().join("data/out"));
    assert_eq!(dirs[1].guest, "/app");
    assert!(!dirs[1].read_only);
}

#[test]
fn full_manifest_sets_every_gateway_key() {
    let manifest = load_good("full");
    let gateway = &manifest.gateway;
    assert_eq!(
        gateway.listen,
        Some(std::net::SocketAddr::from(([0, 0, 0, 0], 8080)))
    );
    assert_eq!(gateway.expose, ["greeter.*", "inventory.get-item"]);
    assert_eq!(gateway.max_body, 2 << 20);
    assert_eq!(gateway.header_timeout, Duration::from_secs(3));
    assert_eq!(gateway.idle_timeout, Duration::from_secs(120));
    // The token is the named variable's value (PATH: always set here).
    assert_eq!(gateway.admin_token, std::env::var("PATH").ok());
    let aliases: Vec<(&str, String, &str)> = gateway
        .aliases
        .iter()
        .map(|a| (a.method.as_str(), a.segments.join("/"), a.action.as_str()))
        .collect();
    assert_eq!(
        aliases,
        [
            ("GET", "items/:sku".to_owned(), "inventory.get-item"),
            ("POST", "orders".to_owned(), "inventory.reserve"),
        ]
    );
    assert!(gateway.exposes("greeter.hello") && gateway.exposes("inventory.reserve"));
    assert!(!gateway.exposes("inventory.list-items"));
}

#[test]
fn full_manifest_sets_every_resilience_key() {
    let manifest = load_good("full");
    let inventory = package(&manifest, "inventory");
    assert_eq!((inventory.instances, inventory.max_instances), (2, 6));
    assert_eq!(inventory.scale_down_after, Duration::from_secs(45));
    let circuit = inventory.circuit.as_ref().expect("circuit");
    assert_eq!(circuit.threshold, 0.25);
    assert_eq!(circuit.min_calls, 7);
    assert_eq!(circuit.window, Duration::from_secs(120));
    assert_eq!(circuit.half_open_after, Duration::from_secs(15));
    assert_eq!(inventory.retry.max, 4);
    assert_eq!(inventory.retry.delay, Duration::from_millis(20));
    assert_eq!(inventory.retry.max_delay, Duration::from_secs(3));
    let mut actions: Vec<_> = inventory
        .actions
        .iter()
        .map(|a| {
            (
                a.name.as_str(),
                a.queue,
                a.idempotent,
                a.fallback.as_deref(),
            )
        })
        .collect();
    actions.sort();
    assert_eq!(
        actions,
        [
            ("get-item", None, true, None),
            ("reserve", Some(5), true, Some("greeter.hello")),
        ]
    );
    // greeter sets none of them: one instance, no circuit, no retries.
    let greeter = package(&manifest, "greeter");
    assert_eq!(greeter.max_instances, greeter.instances);
    assert!(greeter.circuit.is_none());
    assert_eq!(greeter.retry.max, 0);
    assert!(greeter.actions.is_empty());
}

#[test]
fn env_is_fixed_then_inherited_when_set() {
    let manifest = load_good("full");
    let inventory = package(&manifest, "inventory");
    let mut expected = vec![
        ("LEVEL".to_owned(), "3".to_owned()),
        ("MODE".to_owned(), "fast".to_owned()),
    ];
    // PATH is inherited when the test runs with one; the never-set variable is skipped.
    expected.extend(
        std::env::var("PATH")
            .ok()
            .map(|path| ("PATH".to_owned(), path)),
    );
    assert_eq!(inventory.grants.env, expected);
}

#[test]
fn absolute_component_and_defaults_table() {
    let manifest = load_good("full");
    let greeter = package(&manifest, "greeter");
    assert_eq!(greeter.component, Path::new("/opt/steedos/greeter.wasm"));
    assert_eq!(greeter.instances, 3);
    assert_eq!(greeter.memory, 128 << 20);
    assert_eq!(greeter.timeout, Duration::from_secs(10));
    assert_eq!(greeter.queue, 32);
    let restart = RestartPolicy {
        max_restarts: 3,
        within: Duration::from_secs(60),
        backoff: Duration::from_secs(2),
        max_backoff: Duration::from_secs(60),
    };
    assert_eq!(greeter.restart, restart);
}

#[test]
fn defaults_apply_key_by_key() {
    let manifest = load_good("defaults");
    let plain = package(&manifest, "plain");
    assert_eq!(plain.instances, 4);
    assert_eq!(plain.memory, 1 << 20);
    assert_eq!(plain.timeout, Duration::from_millis(750));
    assert_eq!(plain.queue, 0);
    let restart = RestartPolicy {
        max_restarts: 2,
        backoff: Duration::from_millis(100),
        ..RestartPolicy::default()
    };
    assert_eq!(plain.restart, restart);

    let tuned = package(&manifest, "tuned");
    assert_eq!(tuned.instances, 1);
    assert_eq!(tuned.memory, 1_000_000_000);
    assert_eq!(tuned.timeout, Duration::from_millis(750));
    let restart = RestartPolicy {
        max_restarts: 2,
        within: Duration::from_secs(3600),
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(300),
    };
    assert_eq!(tuned.restart, restart);
}

#[test]
fn one_bad_package_leaves_the_others_loaded() {
    let manifest = load_good("one_bad_package");
    let names: Vec<&str> = manifest.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["first", "last"]);
    let rejected: Vec<Option<&str>> = manifest.rejected.iter().map(|e| e.package()).collect();
    assert_eq!(rejected, [Some("chaos")]);
}

#[test]
fn human_sizes() {
    let cases: &[(&str, u64)] = &[
        ("\"32 MiB\"", 32 << 20),
        ("\"512KiB\"", 512 << 10),
        ("\"1GB\"", 1_000_000_000),
        ("\"4 GiB\"", 4 << 30),
        ("\"1.5 MiB\"", 3 << 19),
        ("\"100 kb\"", 100_000),
        ("\"65536\"", 65536),
        ("65536", 65536),
    ];
    for (written, bytes) in cases {
        let text = format!("[packages.p]\ncomponent = \"p.wasm\"\nmemory = {written}\n");
        let manifest = parse_inline(&text).expect("valid manifest");
        assert!(
            manifest.rejected.is_empty(),
            "{written}: {:?}",
            manifest.rejected
        );
        assert_eq!(manifest.packages[0].memory, *bytes, "{written}");
    }
}

#[test]
fn human_durations() {
    let cases: &[(&str, Duration)] = &[
        ("500ms", Duration::from_millis(500)),
        ("2s", Duration::from_secs(2)),
        ("1m", Duration::from_secs(60)),
        ("1m 30s", Duration::from_secs(90)),
        ("1h", Duration::from_secs(3600)),
        ("1ms", Duration::from_millis(1)),
    ];
    for (written, duration) in cases {
        let text = format!("[packages.p]\ncomponent = \"p.wasm\"\ntimeout = \"{written}\"\n");
        let manifest = parse_inline(&text).expect("valid manifest");
        assert!(
            manifest.rejected.is_empty(),
            "{written}: {:?}",
            manifest.rejected
        );
        assert_eq!(manifest.packages[0].timeout, *duration, "{written}");
    }
}

#[test]
fn may_call_patterns() {
    let grants = Grants {
        calls: vec!["inventory.*".into(), "greeter.hello".into()],
        ..Grants::default()
    };
    assert!(grants.may_call("inventory.reserve"));
    assert!(grants.may_call("inventory.stock.reserve"));
    assert!(grants.may_call("greeter.hello"));
    assert!(!grants.may_call("greeter.goodbye"));
    assert!(!grants.may_call("greeter.hello.world"));
    assert!(!grants.may_call("inventory"));
    assert!(!grants.may_call("inventory."));
    assert!(!grants.may_call("inventoryx.reserve"));
    assert!(!Grants::default().may_call("inventory.reserve"));
    let everything = Grants {
        calls: vec!["*".into()],
        ..Grants::default()
    };
    assert!(everything.may_call("anything.at-all"));
}

#[test]
fn subscribes_to_patterns() {
    let mut spec = PackageSpec::for_component("audit", PathBuf::from("/audit.wasm"));
    assert!(!spec.subscribes_to("order.placed"));
    spec.events = vec!["order.*".into(), "user.created".into()];
    assert!(spec.subscribes_to("order.placed"));
    assert!(spec.subscribes_to("order.line.added"));
    assert!(spec.subscribes_to("user.created"));
    assert!(!spec.subscribes_to("user.deleted"));
    assert!(!spec.subscribes_to("order"));
    assert!(!spec.subscribes_to("orders.placed"));
    spec.events = vec!["*".into()];
    assert!(spec.subscribes_to("anything"));
}

#[test]
fn for_component_has_every_default() {
    let spec = PackageSpec::for_component("hello", PathBuf::from("/hello.wasm"));
    let minimal = load_good("minimal");
    let hello = package(&minimal, "hello");
    assert_eq!(spec.name, "hello");
    assert_eq!(spec.component, Path::new("/hello.wasm"));
    assert_eq!(
        (spec.instances, spec.memory, spec.timeout, spec.queue),
        (hello.instances, hello.memory, hello.timeout, hello.queue)
    );
    assert_eq!(spec.restart, hello.restart);
    assert!(spec.source.is_none() && spec.build.is_none() && spec.events.is_empty());
}

#[test]
fn load_reads_steedos_toml_in_a_folder() {
    let folder = cases_dir().join("data");
    let Err(ManifestError::Io { path, .. }) = Manifest::load(&folder) else {
        panic!("a folder without steedos.toml is an Io error");
    };
    assert_eq!(path, folder.join(FILE_NAME));
}

#[test]
fn bare_file_name_resolves_against_the_working_directory() {
    let manifest = Manifest::parse("", Path::new(FILE_NAME)).expect("empty manifest");
    let cwd = std::env::current_dir().expect("working directory");
    assert_eq!(manifest.dir, cwd);
    assert_eq!(manifest.app.cache_dir, cwd.join(".steedos/cache"));
}

#[test]
fn errors_point_at_line_and_column() {
    let text = "[packages.p]\ncomponent = \"p.wasm\"\n  timeout = \"soon\"\n";
    let manifest = parse_inline(text).expect("the file itself is valid");
    let [
        ManifestError::Invalid {
            line,
            column,
            package,
            message,
            ..
        },
    ] = manifest.rejected.as_slice()
    else {
        panic!("expected one Invalid error, got {:?}", manifest.rejected);
    };
    assert_eq!((*line, *column), (3, 13));
    assert_eq!(package.as_deref(), Some("p"));
    assert_eq!(message, "timeout: \"soon\" is not a duration (try \"5s\")");
}

#[test]
fn gateway_connection_limits_and_ops_access() {
    let defaults = parse_inline("").expect("empty").gateway;
    assert_eq!(defaults.body_timeout, defaults.header_timeout);
    assert_eq!(defaults.min_body_rate, 1024);
    assert_eq!(defaults.max_connections, 4096);
    assert_eq!(defaults.ops, OpsAccess::Public);

    let text = "[gateway]\nheader_timeout = \"2s\"\nops = \"token\"\nmax_connections = 64\n";
    let g = parse_inline(text).expect("valid").gateway;
    assert_eq!(
        g.body_timeout,
        Duration::from_secs(2),
        "follows header_timeout"
    );
    assert_eq!((g.ops, g.max_connections), (OpsAccess::Token, 64));

    let text = "[gateway]\nbody_timeout = \"9s\"\nmin_body_rate = \"16 KiB\"\nops = \"off\"\n";
    let g = parse_inline(text).expect("valid").gateway;
    assert_eq!(g.body_timeout, Duration::from_secs(9));
    assert_eq!((g.min_body_rate, g.ops), (16 << 10, OpsAccess::Off));

    for (bad, says) in [
        ("ops = \"everyone\"", "ops: \"everyone\" is not one of"),
        ("max_connections = 0", "out of range"),
        ("min_body_rate = \"fast\"", "is not a size"),
        ("body_timeout = \"0s\"", "out of range"),
    ] {
        let e = parse_inline(&format!("[gateway]\n{bad}\n")).expect_err(bad);
        assert!(e.to_string().contains(says), "{bad}: {e}");
    }
}

/// The settings of an `/admin` deploy and the same package in the file: one
/// is refused exactly when the other is, with the same cause, and what is
/// accepted means the same.
#[test]
fn a_deploy_is_refused_exactly_where_the_file_is() {
    // (setting as a deploy sends it, the same setting as the file writes it)
    let cases = [
        (("memory", "32 MiB"), "memory = \"32 MiB\""),
        (("memory", "65536"), "memory = 65536"),
        (("memory", "5 GiB"), "memory = \"5 GiB\""),
        (("memory", "1 KiB"), "memory = \"1 KiB\""),
        (("memory", "1024"), "memory = 1024"),
        (("memory", "12 parsecs"), "memory = \"12 parsecs\""),
        (("emit_rate", "8 MiB"), "emit_rate = \"8 MiB\""),
        (("emit_rate", "1 KiB"), "emit_rate = \"1 KiB\""),
        (("timeout", "2s"), "timeout = \"2s\""),
        (("timeout", "0s"), "timeout = \"0s\""),
        (("timeout", "2h"), "timeout = \"2h\""),
        (("timeout", "soon"), "timeout = \"soon\""),
        (("instances", "3"), "instances = 3"),
        (("instances", "0"), "instances = 0"),
        (("instances", "1025"), "instances = 1025"),
        (("instances", "-1"), "instances = -1"),
        (("instances", "two"), "instances = \"two\""),
        (
            ("events", "order.*, user.created"),
            "events = [\"order.*\", \"user.created\"]",
        ),
        (("events", "order..placed"), "events = [\"order..placed\"]"),
        (("events", "a b"), "events = [\"a b\"]"),
        (("events", "*"), "events = [\"*\"]"),
        (
            ("calls", "tally.*,greeter.hello"),
            "grants.calls = [\"tally.*\", \"greeter.hello\"]",
        ),
        (("calls", "nodot"), "grants.calls = [\"nodot\"]"),
        (("calls", "Tally.*"), "grants.calls = [\"Tally.*\"]"),
        (("emits", "order.*"), "grants.emits = [\"order.*\"]"),
        (("emits", "order.*.x"), "grants.emits = [\"order.*.x\"]"),
    ];
    let app = "[defaults]\ntimeout = \"3s\"\n";
    let base = parse_inline(app).expect("the app");
    for ((key, value), line) in cases {
        let file = format!("{app}[packages.probe]\ncomponent = \"probe.wasm\"\n{line}\n");
        let file = parse_inline(&file).expect("the app");
        let settings = [(key.to_owned(), value.to_owned())];
        let deployed = base.deployed_package("probe", None, 1, &settings);
        match (file.packages.first(), file.rejected.first(), deployed) {
            (Some(f), None, Ok(d)) => {
                assert_eq!(
                    (
                        f.instances,
                        f.max_instances,
                        f.memory,
                        f.timeout,
                        f.emit_rate
                    ),
                    (
                        d.instances,
                        d.max_instances,
                        d.memory,
                        d.timeout,
                        d.emit_rate
                    ),
                    "{line}"
                );
                assert_eq!(f.events, d.events, "{line}");
                assert_eq!(f.grants.calls, d.grants.calls, "{line}");
                assert_eq!(f.grants.emits, d.grants.emits, "{line}");
            }
            (None, Some(f), Err(d)) => {
                let (f, d) = (f.to_string(), d.to_string());
                let cause = f
                    .split("package `probe`: ")
                    .nth(1)
                    .expect("a package error");
                let cause = cause.strip_prefix("grants.").unwrap_or(cause);
                assert_eq!(d, format!("package `probe`: {cause}"), "{line}");
            }
            (_, f, d) => panic!("{line}: the file says {f:?}, the deploy {d:?}"),
        }
    }
}

/// A deploy's settings override the version serving (or the package of the
/// file), keep what they do not name, and refuse what a file cannot say.
#[test]
fn a_deploy_overrides_its_base_and_refuses_unknown_and_repeated_settings() {
    let text = "[packages.tally]\ncomponent = \"t.wasm\"\ninstances = { min = 1, max = 4 }\n\
                memory = \"8 MiB\"\nevents = [\"a.*\"]\n[packages.tally.grants]\ncalls = [\"x.y\"]\n";
    let m = parse_inline(text).expect("the app");
    let base = package(&m, "tally");
    let set = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let d = m
        .deployed_package("tally", Some(base), 1, &set(&[("timeout", "9s")]))
        .expect("deployed");
    assert_eq!((d.instances, d.max_instances, d.memory), (1, 4, 8 << 20));
    assert_eq!(d.timeout, Duration::from_secs(9));
    assert_eq!(
        (d.events.clone(), d.grants.calls.clone()),
        (vec!["a.*".to_owned()], vec!["x.y".to_owned()])
    );
    let d = m
        .deployed_package("tally", Some(base), 1, &set(&[("calls", "")]))
        .expect("deployed");
    assert!(d.grants.calls.is_empty());
    let refused = |pairs: &[(&str, &str)], size: u64| {
        m.deployed_package("tally", Some(base), size, &set(pairs))
            .expect_err("refused")
            .to_string()
    };
    for key in [
        "build",
        "path",
        "component",
        "queue",
        "grants",
        "dirs",
        "env",
    ] {
        let e = refused(&[(key, "x")], 1);
        assert!(
            e.starts_with(&format!("package `tally`: unknown setting `{key}`")),
            "{e}"
        );
    }
    let e = refused(&[("memory", "1 MiB"), ("memory", "2 MiB")], 1);
    assert_eq!(e, "package `tally`: memory: given twice");
    let e = refused(&[], m.app.max_component_size + 1);
    assert!(e.contains("more than this host takes"), "{e}");
    let e = m
        .deployed_package("Bad_Name", None, 1, &[])
        .expect_err("refused")
        .to_string();
    assert!(
        e.starts_with("package `Bad_Name`: a package name is"),
        "{e}"
    );
}

#[test]
fn a_package_is_a_moleculer_service_with_properties() {
    let manifest = load_good("moleculer");
    let accounts = package(&manifest, "accounts");
    assert_eq!(accounts.service_name(), "v2.accounts");
    assert_eq!(accounts.version, Some(ServiceVersion::Number(2)));
    assert_eq!(
        serde_json::Value::Object(accounts.settings.clone()),
        serde_json::json!({ "table": "accounts", "limits": { "max": 10, "ratio": 0.5 }, "tags": ["a", "b"] })
    );
    assert_eq!(
        accounts.dependencies,
        ["objectql", "v2.metadata", "@steedos/service-x"]
    );
    assert_eq!(accounts.dependency_timeout, Duration::from_secs(5));
    let hello = accounts.action("hello").expect("hello");
    assert_eq!(hello.queue, Some(4));
    assert_eq!(hello.visibility, Visibility::Public);
    assert_eq!(
        serde_json::Value::Object(hello.properties.clone()),
        serde_json::json!({
            "rest": { "method": "GET", "path": "/hello/:name" },
            "trigger": { "listenTo": "accounts", "when": ["beforeInsert", "beforeUpdate"] },
            "visibility": "public",
            "cache": false,
            "x-owner": "team-a",
        })
    );
    let secret = accounts.action("secret").expect("secret");
    assert_eq!(secret.visibility, Visibility::Private);
    let plain = package(&manifest, "plain");
    assert_eq!(plain.service_name(), "staging.plain");
    assert!(plain.dependencies.is_empty());
    assert_eq!(plain.dependency_timeout, DEFAULT_DEPENDENCY_TIMEOUT);
}
