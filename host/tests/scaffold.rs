//! `steedos-wasm new` on the real binary, in each language: the scaffold
//! builds through its own build command, runs, and answers a call, and its
//! error idiom reaches the caller as `failed`.
//!
//! The JavaScript and Python scaffolds need node and npm, and python3;
//! without them they skip by the rule of `tests/require.rs` (a failure
//! under CI).

#[path = "../../tests/child.rs"]
mod child;
#[path = "../../tests/require.rs"]
mod require;

use std::path::Path;
use std::process::{Command, Output};

use child::{OutputBounded as _, Running};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_steedos-wasm"));
    c.env_remove("RUST_LOG");
    c
}

fn text(out: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `new <name> --lang <lang>`, then `call <name> <name>.hello`, as the
/// scaffold's README says, from the folder holding the app.
fn new_then_call(lang: &str, name: &str) {
    let parent = tempfile::tempdir().expect("tmp");
    let out = bin()
        .args(["new", name, "--lang", lang, "--dir"])
        .arg(parent.path())
        .output_bounded()
        .expect("run new");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{name}.hello")) && stdout.contains("steedos.toml"),
        "{stdout}"
    );

    let app = parent.path().join(name);
    let readme = std::fs::read_to_string(app.join("README.md")).expect("README.md");
    for command in [
        format!("steedos-wasm build {name}"),
        format!("steedos-wasm run {name}"),
        format!("steedos-wasm call {name} {name}.hello '{{\"name\":\"Ada\"}}'"),
    ] {
        assert!(
            readme.contains(&command),
            "README lacks `{command}`:\n{readme}"
        );
    }
    let wit = app.join(format!("packages/{name}/wit"));
    assert!(wit.join("deps/steedos-package/package.wit").is_file());

    // The first call builds the package through its build command.
    let call = |params: &str| {
        bin()
            .current_dir(parent.path())
            .args(["call", name, &format!("{name}.hello"), params])
            .output_bounded()
            .expect("run call")
    };
    let out = call(r#"{"name":"Ada"}"#);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#""Hello, Ada!""#
    );
    assert!(has_cache(&app), "no compile cache in {}", app.display());

    // The action's own error, by the language's idiom, fails that call only.
    let out = call(r#"{"name":" "}"#);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error[failed]") && stderr.contains("name must not be empty"),
        "{}",
        text(&out)
    );

    // Built once: the next build has nothing to do.
    let out = bin()
        .arg("build")
        .arg(&app)
        .output_bounded()
        .expect("run build");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("up to date"),
        "{}",
        text(&out)
    );
    // `build --force` builds it all the same (once, for Rust: the others'
    // builds are the slow part of this test).
    if lang == "rust" {
        let out = bin()
            .args(["build", "--force"])
            .arg(&app)
            .output_bounded()
            .expect("run build --force");
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("{name:<12} built in")),
            "{}",
            text(&out)
        );
    }
}

fn has_cache(app: &Path) -> bool {
    std::fs::read_dir(app.join(".steedos/cache")).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
    })
}

#[test]
fn a_rust_scaffold_builds_runs_and_answers() {
    new_then_call("rust", "hello-rust");
}

#[test]
fn a_javascript_scaffold_builds_runs_and_answers() {
    if require::tools(&["node", "npm"]) {
        new_then_call("js", "hello-js");
    }
}

#[test]
fn a_python_scaffold_builds_runs_and_answers() {
    if require::tools(&["python3"]) {
        new_then_call("python", "hello-py");
    }
}

#[test]
fn new_refuses_a_bad_name_and_an_occupied_folder() {
    let parent = tempfile::tempdir().expect("tmp");
    let out = bin()
        .args(["new", "Hello_World", "--lang", "rust"])
        .output_bounded()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lowercase words"),
        "{}",
        text(&out)
    );

    std::fs::create_dir(parent.path().join("taken")).expect("mkdir");
    std::fs::write(parent.path().join("taken/notes.txt"), "mine").expect("write");
    let out = bin()
        .args(["new", "taken", "--lang", "js", "--dir"])
        .arg(parent.path())
        .output_bounded()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not empty"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(parent.path().join("taken/notes.txt")).expect("read"),
        "mine"
    );
}

#[test]
fn new_help_teaches_the_languages_and_the_next_commands() {
    let out = bin().args(["new", "--help"]).output_bounded().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--lang",
        "rust",
        "js",
        "python",
        "--dir",
        "--sdk",
        "steedos-wasm run hello",
        "componentize-py",
    ] {
        assert!(help.contains(word), "`new --help` lacks {word}:\n{help}");
    }
}

/// `GET <path>` on a connection of its own: the raw response.
fn get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let within = std::time::Duration::from_secs(120);
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, within) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(within));
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// `new <name> --lang <lang> --template http`, then `run` it: the package
/// serves its route, and calls out to an origin its grant names (its own
/// route, through the gateway) but not to one it does not.
fn new_http_then_serve(lang: &str, name: &str) {
    let parent = tempfile::tempdir().expect("tmp");
    let out = bin()
        .args(["new", name, "--lang", lang, "--template", "http", "--dir"])
        .arg(parent.path())
        .output_bounded()
        .expect("run new");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("/{name}/hello")),
        "{}",
        text(&out)
    );
    let app = parent.path().join(name);
    let manifest = app.join("steedos.toml");
    let toml = std::fs::read_to_string(&manifest).expect("steedos.toml");
    assert!(
        toml.contains(&format!("\"/{name}/*\" = \"{name}\"")),
        "{toml}"
    );
    // The gateway listens on a free port here: grant loopback on any.
    let toml = toml.replace("\"http://127.0.0.1:3000\"", "\"http://127.0.0.1:*\"");
    std::fs::write(&manifest, toml).expect("write");

    let mut child = Running::spawn(bin().arg("run").arg(&app).args(["--listen", "127.0.0.1:0"]));
    let addr = child::gateway_addr(&mut child, std::time::Duration::from_secs(600));
    let hello = get(addr, &format!("/{name}/hello?x=1"));
    assert!(hello.starts_with("HTTP/1.1 200"), "{hello}");
    assert!(
        hello.contains(&format!(
            "Hello from {name}! You asked for /{name}/hello?x=1"
        )),
        "{hello}"
    );
    let inner = format!("http://127.0.0.1:{}/{name}/hello", addr.port());
    let out = get(addr, &format!("/{name}/fetch?url={inner}"));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains(&format!("answered 200: Hello from {name}!")),
        "{out}"
    );
    let denied = format!("http://localhost:{}/{name}/hello", addr.port());
    let out = get(addr, &format!("/{name}/fetch?url={denied}"));
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    if lang != "js" {
        assert!(out.contains("HttpRequestDenied"), "{out}");
    }
    child.signal("TERM");
    let (status, _, log) = child.wait_within(std::time::Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn a_rust_http_scaffold_serves_and_calls_out() {
    new_http_then_serve("rust", "web-rust");
}

#[test]
fn a_javascript_http_scaffold_serves_and_calls_out() {
    if require::tools(&["node", "npm"]) {
        new_http_then_serve("js", "web-js");
    }
}

#[test]
fn a_python_http_scaffold_serves_and_calls_out() {
    if require::tools(&["python3"]) {
        new_http_then_serve("python", "web-py");
    }
}
