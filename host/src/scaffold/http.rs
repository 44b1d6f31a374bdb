//! `steedos-wasm new --template http`: an app whose one package serves
//! HTTP itself (it exports `wasi:http/incoming-handler`, routed by
//! `[gateway.http]`) and calls out (`wasi:http/outgoing-handler`, within
//! `grants.http`). Rust builds on the `wasi` crate; JavaScript and Python
//! on a world of their own (`wit/<name>.wit`) beside WASI 0.2.4's WIT in
//! `wit/deps/`, one file per package.
//!
//! ```text
//! <parent>/<name>/
//!   steedos.toml     the route, the package (two instances), its grants.http
//!   README.md        build, run, and the curl commands to try it
//!   .gitignore
//!   packages/<name>/
//!     Cargo.toml + src/lib.rs                     (Rust: the wasi crate)
//!     package.json + src/app.js + wit/            (JavaScript: the fetch event, fetch)
//!     src/app.py + wit/                           (Python: componentize-py's wasi:http bindings)
//! ```

use std::path::PathBuf;

use super::{File, GITIGNORE, Lang, PY_VENV, snake};

const MANIFEST: &str = include_str!("../../templates/http/steedos.toml");
const README: &str = include_str!("../../templates/http/README.md");
const WORLD: &str = include_str!("../../templates/http/http.wit");
const RUST_CARGO: &str = include_str!("../../templates/http/rust/Cargo.toml");
const RUST_LIB: &str = include_str!("../../templates/http/rust/lib.rs");
const JS_PACKAGE: &str = include_str!("../../templates/http/js/package.json");
const JS_APP: &str = include_str!("../../templates/http/js/app.js");
const PY_APP: &str = include_str!("../../templates/http/python/app.py");

/// WASI 0.2.4's WIT, which the JavaScript and Python worlds import from.
const WASI_DEPS: [(&str, &str); 7] = [
    ("cli", include_str!("../../templates/http/wit-deps/cli.wit")),
    (
        "clocks",
        include_str!("../../templates/http/wit-deps/clocks.wit"),
    ),
    (
        "filesystem",
        include_str!("../../templates/http/wit-deps/filesystem.wit"),
    ),
    (
        "http",
        include_str!("../../templates/http/wit-deps/http.wit"),
    ),
    ("io", include_str!("../../templates/http/wit-deps/io.wit")),
    (
        "random",
        include_str!("../../templates/http/wit-deps/random.wit"),
    ),
    (
        "sockets",
        include_str!("../../templates/http/wit-deps/sockets.wit"),
    ),
];

/// The files of a new app `name` whose one package, in `lang`, serves
/// HTTP and calls out. `name` must pass [`check_name`](super::check_name).
pub fn files(name: &str, lang: Lang) -> Vec<File> {
    let pkg = PathBuf::from("packages").join(name);
    let (build, component, memory) = match lang {
        Lang::Rust => (
            "cargo build --release --target wasm32-wasip2".to_string(),
            format!("target/wasm32-wasip2/release/{}.wasm", snake(name)),
            "",
        ),
        Lang::Js => (
            "npm install --no-audit --no-fund --silent && npm run build --silent".to_string(),
            format!("dist/{name}.wasm"),
            "memory = \"256 MiB\"\n",
        ),
        Lang::Python => (
            format!(
                "{PY_VENV} && mkdir -p dist && .venv/bin/componentize-py -d wit -w \
                 local:{name}/{name} componentize -p src app -o dist/{name}.wasm"
            ),
            format!("dist/{name}.wasm"),
            "memory = \"256 MiB\"\n",
        ),
    };
    let fill = |template: &str| {
        template
            .replace("@LANGUAGE@", &lang.to_string())
            .replace("@TOOLS@", super::tools(lang))
            .replace("@FILES@", code_files(lang))
            .replace("@BUILD@", &build)
            .replace("@COMPONENT@", &component)
            .replace("@MEMORY@", memory)
            .replace("@SERVE@", serve(lang))
            .replace("@REPOSITORY@", env!("CARGO_PKG_REPOSITORY"))
            .replace("@NAME@", name)
    };
    let file = |path: PathBuf, template: &str| File {
        path,
        text: fill(template),
    };
    let mut files = vec![
        file("steedos.toml".into(), MANIFEST),
        file("README.md".into(), README),
        file(".gitignore".into(), GITIGNORE),
    ];
    match lang {
        Lang::Rust => {
            files.push(file(pkg.join("Cargo.toml"), RUST_CARGO));
            files.push(file(pkg.join("src/lib.rs"), RUST_LIB));
        }
        Lang::Js => {
            files.push(file(pkg.join("package.json"), JS_PACKAGE));
            files.push(file(pkg.join("src/app.js"), JS_APP));
        }
        Lang::Python => files.push(file(pkg.join("src/app.py"), PY_APP)),
    }
    if lang != Lang::Rust {
        // componentize-js's engine speaks WASI 0.2.10, whose WIT is 0.2.4's.
        let version = |text: &str| match lang {
            Lang::Js => text.replace("@0.2.4", "@0.2.10"),
            _ => text.to_string(),
        };
        files.push(File {
            path: pkg.join("wit").join(format!("{name}.wit")),
            text: version(&fill(WORLD)),
        });
        for (package, text) in WASI_DEPS {
            files.push(File {
                path: pkg.join("wit/deps").join(format!("{package}.wit")),
                text: version(text),
            });
        }
    }
    files
}

/// The package's `[packages.<name>.http]`: a JavaScript one answers one
/// request per instance.
fn serve(lang: Lang) -> &'static str {
    match lang {
        Lang::Js => concat!(
            "\n# componentize-js's engine answers one request per instance, as Spin\n",
            "# and `wasmtime serve` run it: a fresh instance for each request.\n",
            "[packages.@NAME@.http]\n",
            "instance_per_request = true\n",
        ),
        _ => "",
    }
}

fn code_files(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => concat!(
            "- `packages/@NAME@/Cargo.toml`: a cdylib crate depending on the `wasi` crate.\n",
            "- `packages/@NAME@/src/lib.rs`: the handler, and its request out.",
        ),
        Lang::Js => concat!(
            "- `packages/@NAME@/package.json`: the build script and its pinned tools.\n",
            "- `packages/@NAME@/wit/`: the world (it exports `wasi:http/incoming-handler`) and WASI's WIT.\n",
            "- `packages/@NAME@/src/app.js`: the `fetch` event handler, and `fetch` out.",
        ),
        Lang::Python => concat!(
            "- `packages/@NAME@/wit/`: the world (it exports `wasi:http/incoming-handler`) and WASI's WIT.\n",
            "- `packages/@NAME@/src/app.py`: the handler, and its request out.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled_and_the_route_names_the_package() {
        for lang in [Lang::Rust, Lang::Js, Lang::Python] {
            let files = files("web-hook", lang);
            for f in &files {
                assert!(
                    !f.text.contains('@') || !f.text.contains("@NAME@"),
                    "{:?}",
                    f.path
                );
                for placeholder in [
                    "@LANGUAGE@",
                    "@BUILD@",
                    "@COMPONENT@",
                    "@MEMORY@",
                    "@FILES@",
                    "@SERVE@",
                ] {
                    assert!(!f.text.contains(placeholder), "{:?}: {placeholder}", f.path);
                }
            }
            let manifest = &files[0].text;
            assert!(
                manifest.contains("\"/web-hook/*\" = \"web-hook\""),
                "{manifest}"
            );
            let wit = files.iter().any(|f| f.path.ends_with("wit/deps/http.wit"));
            assert_eq!(wit, lang != Lang::Rust, "{lang}");
        }
    }
}
