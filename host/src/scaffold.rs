//! `steedos-wasm new`: a new app with one package, in Rust, JavaScript or
//! Python, that builds and runs as it is.
//!
//! # What it writes
//!
//! ```text
//! <parent>/<name>/
//!   steedos.toml          one package entry: its source folder, build command and component
//!   README.md             the commands to build, run and call it
//!   .gitignore
//!   packages/<name>/
//!     wit/<name>.wit                           interface `api` (action `hello`) and world `<name>`
//!     wit/deps/steedos-package/package.wit     the host's WIT, as this binary was built with
//!     Cargo.toml + src/lib.rs                  (Rust: steedos-sdk)
//!     package.json + src/app.js                (JavaScript: esbuild + componentize-js, from npm)
//!     requirements.txt + src/app.py            (Python: componentize-py, from PyPI, in a venv)
//! ```
//!
//! The build command in `steedos.toml` is what `steedos-wasm run` and
//! `call` run when the component is missing or out of date, so the app
//! needs nothing else: `steedos-wasm call <name> <name>.hello
//! '{"name":"Ada"}'` builds it and answers `"Hello, Ada!"`.
//!
//! # The Rust SDK
//!
//! `steedos-sdk` is not on crates.io. A Rust package depends on it by path:
//! the folder given with `--sdk`, else the `sdk/` of the source tree this
//! binary was built from, when that still exists (a binary built or
//! installed from a checkout). Otherwise it depends on the repository by
//! git, which needs network access to it.
//!
//! # Versions
//!
//! The JavaScript and Python toolchains are pinned to versions that build
//! offline from their registries alone: componentize-js 0.23.0 (with
//! preview2-shim held at 0.25.0: 0.26.1 breaks it), esbuild 0.28.2 to bundle
//! npm packages, componentize-py 0.25.1, and msgpack for the broker's
//! MessagePack in both. JavaScript builds without `wasi:http` (the host does
//! not provide it).
//!
//! `--template http` writes a package that serves HTTP and calls out
//! instead (see [`http`]).
//!
//! It writes files and nothing else: it must not build, load or run what
//! it writes (`steedos-wasm run` does, through the builder and the app).

use std::fmt;
use std::path::{Path, PathBuf};

pub mod http;

/// What the new app's package does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Template {
    /// Actions: an interface `api` whose `hello` is an action.
    #[default]
    Action,
    /// HTTP: it serves the requests of its `[gateway.http]` route
    /// (`wasi:http/incoming-handler`) and calls out (`grants.http`).
    Http,
}

/// The languages a package can be scaffolded in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with the steedos-sdk crate; needs the wasm32-wasip2 target
    /// (added through rustup when missing).
    Rust,
    /// JavaScript, with componentize-js from npm; needs node and npm.
    #[value(alias = "javascript")]
    Js,
    /// Python, with componentize-py from PyPI in a venv; needs python3.
    #[value(alias = "py")]
    Python,
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lang::Rust => "Rust",
            Lang::Js => "JavaScript",
            Lang::Python => "Python",
        })
    }
}

/// Where a Rust package finds the steedos-sdk crate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sdk {
    /// A folder holding the SDK's Cargo.toml.
    Path(PathBuf),
    /// A git repository holding it.
    Git(String),
}

impl Sdk {
    /// The SDK of the source tree this binary was built from, if it is
    /// still there; else the project's repository.
    pub fn default_for_this_binary() -> Sdk {
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
        match sdk.join("Cargo.toml").is_file() {
            true => Sdk::Path(sdk.canonicalize().unwrap_or(sdk)),
            false => Sdk::Git(env!("CARGO_PKG_REPOSITORY").to_string()),
        }
    }

    /// The dependency line of the package's Cargo.toml.
    fn dependency(&self) -> String {
        // toml's Display quotes and escapes a string value.
        match self {
            Sdk::Path(p) => format!(
                "steedos-sdk = {{ path = {} }}",
                toml::Value::String(p.display().to_string())
            ),
            Sdk::Git(url) => format!(
                "steedos-sdk = {{ git = {} }}",
                toml::Value::String(url.clone())
            ),
        }
    }
}

/// Why an app could not be scaffolded.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name cannot name a package.
    #[error("`{name}` cannot name a package: {why}")]
    BadName {
        /// The name given.
        name: String,
        /// Which rule it breaks.
        why: String,
    },
    /// The app folder exists and is not empty.
    #[error("{} already exists and is not empty; choose another name or --dir", .0.display())]
    Exists(PathBuf),
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The longest name accepted, as steedos.toml limits package names.
const MAX_NAME: usize = 64;

/// Keywords of WIT and Rust, the languages the scaffold writes the name in.
#[rustfmt::skip]
const RESERVED: &[&str] = &[
    // WIT
    "as", "async", "bool", "borrow", "char", "constructor", "enum", "error-context", "export",
    "f32", "f64", "flags", "func", "future", "import", "include", "interface", "list", "option",
    "own", "package", "record", "resource", "result", "s8", "s16", "s32", "s64", "static",
    "stream", "string", "tuple", "type", "u8", "u16", "u32", "u64", "use", "variant", "with",
    "world",
    // Rust, and crate names cargo keeps for itself
    "abstract", "become", "box", "break", "const", "continue", "crate", "do", "dyn", "else",
    "extern", "false", "final", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "macro",
    "match", "mod", "move", "mut", "override", "priv", "pub", "ref", "return", "self", "struct",
    "super", "trait", "true", "try", "typeof", "unsafe", "unsized", "virtual", "where", "while",
    "yield", "core", "std", "alloc", "test",
];

/// Checks that `name` can name the app, the package, its WIT package and
/// world, and its crate: lowercase words of letters and digits, each
/// starting with a letter, joined by single `-`.
pub fn check_name(name: &str) -> Result<(), ScaffoldError> {
    let bad = |why: &str| {
        Err(ScaffoldError::BadName {
            name: name.to_string(),
            why: why.to_string(),
        })
    };
    let words_ok = name.split('-').all(|word| {
        word.starts_with(|c: char| c.is_ascii_lowercase())
            && word
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    if name.is_empty() || name.len() > MAX_NAME || !words_ok {
        return bad(&format!(
            "use lowercase words of letters and digits, each starting with a letter, \
             joined by single `-`, at most {MAX_NAME} characters (`hello`, `order-book2`)"
        ));
    }
    if name == "api" {
        return bad("`api` is the name of the package's interface");
    }
    if RESERVED.contains(&name) {
        return bad("it is a keyword of WIT or Rust");
    }
    Ok(())
}

/// The host's WIT, written into every package.
const STEEDOS_WIT: &str = include_str!("../../wit/package.wit");
/// The package's WIT, the same in every language.
const PACKAGE_WIT: &str = include_str!("../templates/common/package.wit");
const MANIFEST: &str = include_str!("../templates/common/steedos.toml");
const README: &str = include_str!("../templates/common/README.md");
const GITIGNORE: &str = include_str!("../templates/common/gitignore");
const RUST_CARGO: &str = include_str!("../templates/rust/Cargo.toml");
const RUST_LIB: &str = include_str!("../templates/rust/lib.rs");
const JS_PACKAGE: &str = include_str!("../templates/js/package.json");
const JS_APP: &str = include_str!("../templates/js/app.js");
const PY_REQUIREMENTS: &str = include_str!("../templates/python/requirements.txt");
const PY_APP: &str = include_str!("../templates/python/app.py");

/// A venv holding componentize-py.
const PY_VENV: &str = "python3 -m venv .venv \
    && .venv/bin/pip install --quiet --disable-pip-version-check componentize-py==0.25.1";

/// The Python build: a venv holding componentize-py, the packages of
/// requirements.txt in .deps, then the component.
const PY_BUILD: &str = "python3 -m venv .venv \
    && .venv/bin/pip install --quiet --disable-pip-version-check componentize-py==0.25.1 \
    && .venv/bin/pip install --quiet --disable-pip-version-check --upgrade --target .deps -r requirements.txt \
    && .venv/bin/componentize-py -d wit -w local:@NAME@/@NAME@ componentize -p .deps -p src app -o dist/@NAME@.wasm";

/// One file of a scaffold: its path in the app folder and its text.
#[derive(Clone, Debug)]
pub struct File {
    /// Relative to the app folder.
    pub path: PathBuf,
    /// The text.
    pub text: String,
}

/// The files of a new app `name` whose one package is in `lang`.
/// `name` must pass [`check_name`]; `sdk` matters for Rust only.
pub fn files(name: &str, lang: Lang, sdk: &Sdk) -> Vec<File> {
    let pkg = PathBuf::from("packages").join(name);
    let (build, component) = match lang {
        Lang::Rust => (
            "cargo build --release --target wasm32-wasip2".to_string(),
            format!("target/wasm32-wasip2/release/{}.wasm", snake(name)),
        ),
        Lang::Js => (
            "npm install --no-audit --no-fund --silent && npm run build --silent".to_string(),
            format!("dist/{name}.wasm"),
        ),
        Lang::Python => (PY_BUILD.to_string(), format!("dist/{name}.wasm")),
    };
    let fill = |template: &str| {
        template
            .replace("@LANGUAGE_NOTES@", language_notes(lang))
            .replace("@LANGUAGE@", &lang.to_string())
            .replace("@TOOLS@", tools(lang))
            .replace("@FILES@", code_files(lang))
            .replace("@BUILD@", &build)
            .replace("@COMPONENT@", &component)
            .replace("@SDK@", &sdk.dependency())
            .replace("@REPOSITORY@", env!("CARGO_PKG_REPOSITORY"))
            .replace("@SNAKE@", &snake(name))
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
        file(pkg.join("wit").join(format!("{name}.wit")), PACKAGE_WIT),
        File {
            path: pkg.join("wit/deps/steedos-package/package.wit"),
            text: STEEDOS_WIT.to_string(),
        },
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
        Lang::Python => {
            files.push(file(pkg.join("requirements.txt"), PY_REQUIREMENTS));
            files.push(file(pkg.join("src/app.py"), PY_APP));
        }
    }
    files
}

impl Template {
    /// The command that tries a new app `name` in the folder `shown`.
    pub fn try_it(self, name: &str, shown: &dyn fmt::Display) -> String {
        match self {
            Template::Action => {
                format!("steedos-wasm call {shown} {name}.hello '{{\"name\":\"Ada\"}}'")
            }
            Template::Http => format!("curl http://127.0.0.1:3000/{name}/hello"),
        }
    }
}

/// The files of a new app `name` of `template` whose one package is in `lang`.
pub fn files_of(name: &str, lang: Lang, sdk: &Sdk, template: Template) -> Vec<File> {
    match template {
        Template::Action => files(name, lang, sdk),
        Template::Http => http::files(name, lang),
    }
}

/// Writes a new app `name` into `parent/name` and answers that folder.
///
/// Refuses a folder that exists and holds anything.
pub fn create(parent: &Path, name: &str, lang: Lang, sdk: &Sdk) -> Result<PathBuf, ScaffoldError> {
    create_from(parent, name, lang, sdk, Template::Action)
}

/// [`create`], of `template`.
pub fn create_from(
    parent: &Path,
    name: &str,
    lang: Lang,
    sdk: &Sdk,
    template: Template,
) -> Result<PathBuf, ScaffoldError> {
    check_name(name)?;
    let app = parent.join(name);
    let occupied = std::fs::read_dir(&app).is_ok_and(|mut entries| entries.next().is_some());
    if occupied {
        return Err(ScaffoldError::Exists(app));
    }
    for f in files_of(name, lang, sdk, template) {
        let path = app.join(&f.path);
        let write = |path: &Path| -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, &f.text)
        };
        write(&path).map_err(|source| ScaffoldError::Write { path, source })?;
    }
    Ok(app)
}

/// The Rust spelling of a kebab-case name: a crate's library and module name.
fn snake(name: &str) -> String {
    name.replace('-', "_")
}

fn tools(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => {
            "It needs the Rust toolchain; the build adds the `wasm32-wasip2` target\n\
             through rustup when it is missing."
        }
        Lang::Js => {
            "It needs Node.js and npm: the build command installs componentize-js\n\
             and esbuild from npm into `node_modules/` (the first build takes up\n\
             to a minute), bundles `src/app.js` and makes it a component of\n\
             about 12 MB."
        }
        Lang::Python => {
            "It needs python3 (with venv): the build command makes `.venv/` holding\n\
             componentize-py from PyPI, installs the packages of\n\
             `requirements.txt` into `.deps/`, and makes `src/app.py` a component\n\
             of about 18 MB (it embeds CPython)."
        }
    }
}

fn code_files(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => concat!(
            "- `packages/@NAME@/Cargo.toml`: a cdylib crate depending on steedos-sdk.\n",
            "- `packages/@NAME@/src/lib.rs`: the actions.",
        ),
        Lang::Js => concat!(
            "- `packages/@NAME@/package.json`: the build script and its pinned tools.\n",
            "- `packages/@NAME@/src/app.js`: the actions.",
        ),
        Lang::Python => concat!(
            "- `packages/@NAME@/requirements.txt`: pure-Python packages bundled into the component.\n",
            "- `packages/@NAME@/src/app.py`: the actions.",
        ),
    }
}

fn language_notes(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => {
            "## Errors\n\n\
             An action that returns `Err(text)` fails that call only: the caller\n\
             gets `failed` with the text. A panic traps the instance; the host\n\
             replaces it and the caller gets `crashed` with the panic message."
        }
        Lang::Js => {
            "## Errors\n\n\
             For a WIT `result<_, string>`, a thrown string is the error result: the\n\
             caller gets `failed` with it. A thrown `Error` object would trap the\n\
             instance instead, so `src/app.js` runs each action through\n\
             `failsWith`, which turns any exception into its message. An exception\n\
             that escapes a function without a `result` traps: the host replaces\n\
             the instance and the caller gets `crashed` with the message."
        }
        Lang::Python => {
            "## Errors\n\n\
             For a WIT `result<_, E>`, `raise Err(value)` is the error result: the\n\
             caller gets `failed` with it. Any other exception would trap the\n\
             instance, so `src/app.py` turns exceptions into `Err(str(e))`. An\n\
             exception that escapes traps: the host replaces the instance and the\n\
             caller gets `crashed` with the exception's message."
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of<'a>(files: &'a [File], path: &str) -> &'a str {
        &files
            .iter()
            .find(|f| f.path == Path::new(path))
            .unwrap_or_else(|| panic!("no {path}"))
            .text
    }

    #[test]
    fn names_are_kebab_case_words_and_not_keywords() {
        for ok in ["hello", "order-book2", "a", "x1-y2"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "Hello", "2fast", "a--b", "-a", "a-", "a_b", "a-1b", "type", "fn", "api",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let long = "a".repeat(MAX_NAME + 1);
        assert!(check_name(&long).is_err());
    }

    #[test]
    fn every_placeholder_is_filled() {
        let sdk = Sdk::Path("/src/steedos-wasm/sdk".into());
        for lang in [Lang::Rust, Lang::Js, Lang::Python] {
            for f in files("order-book", lang, &sdk) {
                for placeholder in ["@NAME@", "@SNAKE@", "@BUILD@", "@SDK@", "@LANGUAGE"] {
                    assert!(
                        !f.text.contains(placeholder),
                        "{lang}: {} keeps {placeholder}",
                        f.path.display()
                    );
                }
            }
        }
    }

    #[test]
    fn the_manifest_names_the_build_and_the_component() {
        let sdk = Sdk::Git("https://example.invalid/steedos-wasm".into());
        let files = files("order-book", Lang::Rust, &sdk);
        let manifest: toml::Table = text_of(&files, "steedos.toml").parse().expect("toml");
        let pkg = &manifest["packages"]["order-book"];
        assert_eq!(pkg["path"].as_str(), Some("packages/order-book"));
        assert_eq!(
            pkg["component"].as_str(),
            Some("target/wasm32-wasip2/release/order_book.wasm")
        );
        let lib = text_of(&files, "packages/order-book/src/lib.rs");
        assert!(
            lib.contains("exports::local::order_book::api::Guest"),
            "{lib}"
        );
        let cargo: toml::Table = text_of(&files, "packages/order-book/Cargo.toml")
            .parse()
            .expect("toml");
        assert_eq!(
            cargo["dependencies"]["steedos-sdk"]["git"].as_str(),
            Some("https://example.invalid/steedos-wasm")
        );

        let files = super::files("order-book", Lang::Python, &sdk);
        let manifest: toml::Table = text_of(&files, "steedos.toml").parse().expect("toml");
        let build = manifest["packages"]["order-book"]["build"]
            .as_str()
            .expect("build");
        assert!(
            build.contains("-w local:order-book/order-book componentize")
                && build.contains("-o dist/order-book.wasm")
                && !build.contains("  "),
            "{build}"
        );
    }

    #[test]
    fn a_path_sdk_is_quoted_for_toml() {
        let sdk = Sdk::Path(r#"/odd "dir"/sdk"#.into());
        let files = files("hello", Lang::Rust, &sdk);
        let cargo: toml::Table = text_of(&files, "packages/hello/Cargo.toml")
            .parse()
            .expect("toml");
        assert_eq!(
            cargo["dependencies"]["steedos-sdk"]["path"].as_str(),
            Some(r#"/odd "dir"/sdk"#)
        );
    }

    #[test]
    fn the_package_json_is_json_with_the_pins() {
        let files = files("hello", Lang::Js, &Sdk::Git(String::new()));
        let text = text_of(&files, "packages/hello/package.json");
        let json: serde_json::Value = serde_json::from_str(text).expect("json");
        assert_eq!(
            json["devDependencies"]["@bytecodealliance/componentize-js"],
            "0.23.0"
        );
        assert_eq!(
            json["overrides"]["@bytecodealliance/preview2-shim"],
            "0.25.0"
        );
        assert!(
            json["scripts"]["build"]
                .as_str()
                .is_some_and(|b| b.contains("--world-name local:hello/hello"))
        );
    }

    #[test]
    fn create_refuses_an_occupied_folder() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(dir.path().join("hello")).expect("mkdir");
        std::fs::write(dir.path().join("hello/keep.txt"), "x").expect("write");
        let sdk = Sdk::Git(String::new());
        let e = create(dir.path(), "hello", Lang::Js, &sdk).unwrap_err();
        assert!(matches!(e, ScaffoldError::Exists(_)), "{e}");
        // An empty folder is fine.
        std::fs::create_dir(dir.path().join("empty")).expect("mkdir");
        let app = create(dir.path(), "empty", Lang::Js, &sdk).expect("create");
        assert!(app.join("packages/empty/src/app.js").is_file());
        assert!(
            app.join("packages/empty/wit/deps/steedos-package/package.wit")
                .is_file()
        );
    }
}
