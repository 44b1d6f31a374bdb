//! Why a manifest, or one package in it, was refused: [`ManifestError`],
//! naming the file, line and column, the package and the key path.
//!
//! A leaf inside the manifest: it formats errors and checks nothing.

use std::path::PathBuf;

/// Why a manifest, or one package in it, could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest file could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{}:{line}:{column}: invalid TOML: {message}", file.display())]
    Syntax {
        /// The manifest file.
        file: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A key is unknown or missing, or a value has the wrong type or is out of range.
    #[error("{}:{line}:{column}: {}{message}", file.display(), package_prefix(package.as_deref()))]
    Invalid {
        /// The manifest file.
        file: PathBuf,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column (in characters) of the offending key or value.
        column: usize,
        /// The package it rejects; `None` when it fails the whole manifest.
        package: Option<String>,
        /// What is wrong, starting with the key path (`grants.dirs[0].host: ...`).
        message: String,
    },
    /// A setting of a package deployed through `/admin` is refused, by the
    /// same check a package of the file goes through.
    #[error("package `{package}`: {message}")]
    Setting {
        /// The package deployed.
        package: String,
        /// What is wrong, starting with the setting (`memory: ...`).
        message: String,
    },
}

impl ManifestError {
    /// The package this error rejects, if it rejects one package rather than the manifest.
    pub fn package(&self) -> Option<&str> {
        match self {
            ManifestError::Invalid { package, .. } => package.as_deref(),
            ManifestError::Setting { package, .. } => Some(package),
            ManifestError::Io { .. } | ManifestError::Syntax { .. } => None,
        }
    }
}

fn package_prefix(package: Option<&str>) -> String {
    package.map_or_else(String::new, |name| format!("package `{name}`: "))
}
