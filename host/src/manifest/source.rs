//! Where an error points: the text being read ([`Source`]), its top-level
//! tables, and one table in scope ([`Scope`]), turning a serde error or a
//! span into `file:line:column: package `x`: key.path: message`.
//!
//! It reports; it decides nothing about what is valid (that is `values`
//! and `check`).

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::error::ManifestError;

pub(super) const TOP_LEVEL_KEYS: &str =
    "`app`, `cluster`, `defaults`, `gateway`, `kv`, `packages`, `telemetry`";

/// The text being parsed, for turning spans into `file:line:column`.
pub(super) struct Source<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a Path,
    pub(super) dir: PathBuf,
}

/// The top-level tables.
pub(super) struct Sections<'t, 'i> {
    pub(super) app: Option<&'t Spanned<DeValue<'i>>>,
    pub(super) cluster: Option<&'t Spanned<DeValue<'i>>>,
    pub(super) gateway: Option<&'t Spanned<DeValue<'i>>>,
    pub(super) defaults: Option<&'t Spanned<DeValue<'i>>>,
    pub(super) packages: Option<&'t Spanned<DeValue<'i>>>,
    pub(super) kv: Option<&'t Spanned<DeValue<'i>>>,
    pub(super) telemetry: Option<&'t Spanned<DeValue<'i>>>,
}

/// One table of the manifest being read: errors in it name the key path
/// from `prefix` down, and the package it rejects (if any).
pub(super) struct Scope<'s, 'i> {
    pub(super) source: &'s Source<'s>,
    pub(super) value: &'s Spanned<DeValue<'i>>,
    pub(super) prefix: &'static str,
    pub(super) package: Option<&'s str>,
}

impl<'t, 'i> Sections<'t, 'i> {
    pub(super) fn split(source: &Source<'_>, root: &'t DeTable<'i>) -> Result<Self, ManifestError> {
        let mut sections = Sections {
            app: None,
            cluster: None,
            gateway: None,
            defaults: None,
            packages: None,
            kv: None,
            telemetry: None,
        };
        for (key, value) in root.iter() {
            match key.get_ref().as_ref() {
                "app" => sections.app = Some(value),
                "gateway" => sections.gateway = Some(value),
                "cluster" => sections.cluster = Some(value),
                "defaults" => sections.defaults = Some(value),
                "packages" => sections.packages = Some(value),
                "kv" => sections.kv = Some(value),
                "telemetry" => sections.telemetry = Some(value),
                other => {
                    let message =
                        format!("unknown key `{other}`, expected one of {TOP_LEVEL_KEYS}");
                    return Err(source.error(key.span(), None, message));
                }
            }
        }
        Ok(sections)
    }
}

impl<'a> Source<'a> {
    pub(super) fn new(text: &'a str, file: &'a Path) -> Result<Self, ManifestError> {
        let parent = file
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = std::path::absolute(parent).map_err(|source| ManifestError::Io {
            path: file.to_path_buf(),
            source,
        })?;
        Ok(Source { text, file, dir })
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        let line = before.matches('\n').count() + 1;
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    pub(super) fn syntax_error(&self, error: &toml::de::Error) -> ManifestError {
        let (line, column) = self.position(error.span().map_or(0, |span| span.start));
        ManifestError::Syntax {
            file: self.file.to_path_buf(),
            line,
            column,
            message: error.message().trim_end().to_owned(),
        }
    }

    pub(super) fn error(
        &self,
        span: Range<usize>,
        package: Option<&str>,
        message: String,
    ) -> ManifestError {
        let (line, column) = self.position(span.start);
        ManifestError::Invalid {
            file: self.file.to_path_buf(),
            line,
            column,
            package: package.map(str::to_owned),
            message,
        }
    }
}

impl<'s, 'i> Scope<'s, 'i> {
    pub(super) fn new(
        source: &'s Source<'s>,
        value: &'s Spanned<DeValue<'i>>,
        prefix: &'static str,
        package: Option<&'s str>,
    ) -> Self {
        Scope {
            source,
            value,
            prefix,
            package,
        }
    }

    pub(super) fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ManifestError> {
        T::deserialize(ValueDeserializer::from(self.value.clone()))
            .map_err(|error| self.toml_error(&error))
    }

    pub(super) fn toml_error(&self, error: &toml::de::Error) -> ManifestError {
        let span = error.span().unwrap_or_else(|| self.value.span());
        // serde reports an unknown key at the key: the path is the table holding it.
        let at_key = error.message().starts_with("unknown field");
        self.error_at(span, at_key, describe(error.message()))
    }

    /// An error at `span`, prefixed with the key path that leads to it.
    pub(super) fn error(&self, span: Range<usize>, message: String) -> ManifestError {
        self.error_at(span, false, message)
    }

    pub(super) fn error_at(
        &self,
        span: Range<usize>,
        at_key: bool,
        message: String,
    ) -> ManifestError {
        let steps = if self.value.span() == span {
            Vec::new()
        } else {
            locate(self.value.get_ref(), &span, at_key).unwrap_or_default()
        };
        let path = render_path(self.prefix, &steps);
        let message = if path.is_empty() {
            message
        } else {
            format!("{path}: {message}")
        };
        self.source.error(span, self.package, message)
    }
}

/// serde speaks of fields, maps and sequences; a TOML author writes keys,
/// tables and arrays.
pub(super) fn describe(message: &str) -> String {
    const WORDS: [(&str, &str); 6] = [
        ("unknown field", "unknown key"),
        ("missing field", "missing key"),
        ("invalid type: map", "invalid type: table"),
        ("expected a map", "expected a table"),
        ("invalid type: sequence", "invalid type: array"),
        ("expected a sequence", "expected an array"),
    ];
    WORDS
        .iter()
        .fold(message.trim_end().to_owned(), |message, (from, to)| {
            message.replace(from, to)
        })
}

/// The span of `key`'s value in `table`, if the table has it.
pub(super) fn find_key(table: &DeValue<'_>, key: &str) -> Option<Range<usize>> {
    let DeValue::Table(table) = table else {
        return None;
    };
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v.span())
}

// ---------------------------------------------------------------------------
// Key paths: which key an error's span belongs to.

pub(super) enum Step {
    Key(String),
    Index(usize),
}

/// The path from `value` down to the key or value at `span`, or `None` if
/// `span` is not inside `value`. Searches every child, because a table
/// opened by a `[header]` has the header's span, not its contents'.
pub(super) fn locate(value: &DeValue<'_>, span: &Range<usize>, at_key: bool) -> Option<Vec<Step>> {
    match value {
        DeValue::Table(table) => table.iter().find_map(|(key, child)| {
            if at_key && covers(&key.span(), span) {
                return Some(Vec::new());
            }
            let step = || Step::Key(key.get_ref().to_string());
            locate_child(child, span, at_key).map(|steps| prepend(step(), steps))
        }),
        DeValue::Array(array) => array.iter().enumerate().find_map(|(index, child)| {
            locate_child(child, span, at_key).map(|steps| prepend(Step::Index(index), steps))
        }),
        _ => None,
    }
}

pub(super) fn locate_child(
    child: &Spanned<DeValue<'_>>,
    span: &Range<usize>,
    at_key: bool,
) -> Option<Vec<Step>> {
    if child.span() == *span {
        return Some(Vec::new());
    }
    locate(child.get_ref(), span, at_key).or_else(|| covers(&child.span(), span).then(Vec::new))
}

pub(super) fn covers(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

pub(super) fn prepend(step: Step, mut steps: Vec<Step>) -> Vec<Step> {
    steps.insert(0, step);
    steps
}

pub(super) fn render_path(prefix: &str, steps: &[Step]) -> String {
    let mut path = prefix.to_owned();
    for step in steps {
        match step {
            Step::Key(key) if path.is_empty() => path.push_str(key),
            Step::Key(key) => {
                path.push('.');
                path.push_str(key);
            }
            Step::Index(index) => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

// ---------------------------------------------------------------------------
// Values that are checked as they are read.
