//! Value types checked as they are read: counts and sizes in a range,
//! durations, names (package, event, action, environment variable, subject
//! token), event and call patterns, paths. Each refuses a bad value with a
//! message that says what a good one looks like.
//!
//! A leaf inside the manifest: no spans, no tables, no file system.

use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

pub(super) const MIN_MEMORY: u64 = 64 << 10;
pub(super) const MAX_MEMORY: u64 = 4 << 30;
pub(super) const MAX_PACKAGE_NAME: usize = 64;
pub(super) const HOUR_MS: u64 = 60 * 60 * 1000;
pub(super) const DAY_MS: u64 = 24 * HOUR_MS;

/// An integer in `MIN..=MAX`.
#[derive(Clone, Copy)]
pub(super) struct CountIn<const MIN: u32, const MAX: u32>(pub(super) u32);

pub(super) struct CountVisitor<const MIN: u32, const MAX: u32>;

impl<'de, const MIN: u32, const MAX: u32> Deserialize<'de> for CountIn<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_u32(CountVisitor::<MIN, MAX>)
    }
}

impl<const MIN: u32, const MAX: u32> Visitor<'_> for CountVisitor<MIN, MAX> {
    type Value = CountIn<MIN, MAX>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an integer from {MIN} to {MAX}")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        match u32::try_from(value) {
            Ok(count) => self.visit_u32(count),
            Err(_) => Err(E::custom(format!(
                "{value} is out of range ({MIN}..={MAX})"
            ))),
        }
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        match u32::try_from(value) {
            Ok(count) => self.visit_u32(count),
            Err(_) => Err(E::custom(format!(
                "{value} is out of range ({MIN}..={MAX})"
            ))),
        }
    }

    fn visit_u32<E: de::Error>(self, value: u32) -> Result<Self::Value, E> {
        if (MIN..=MAX).contains(&value) {
            Ok(CountIn(value))
        } else {
            Err(E::custom(format!(
                "{value} is out of range ({MIN}..={MAX})"
            )))
        }
    }
}

/// A memory size in bytes, in `MIN_MEMORY..=MAX_MEMORY`: `"32 MiB"` or a number of bytes.
#[derive(Clone, Copy)]
pub(super) struct SizeIn<const MIN: u64, const MAX: u64>(pub(super) u64);

/// A memory limit.
pub(super) type Size = SizeIn<MIN_MEMORY, MAX_MEMORY>;
/// An emit rate, in bytes a second: 64 KiB to 64 GiB.
pub(super) type EmitRate = SizeIn<{ 64 << 10 }, { 64 << 30 }>;
/// A request body limit: 1 byte to 1 GiB.
pub(super) type BodySize = SizeIn<1, { 1 << 30 }>;

pub(super) struct SizeVisitor<const MIN: u64, const MAX: u64>;

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for SizeIn<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SizeVisitor::<MIN, MAX>)
    }
}

impl<const MIN: u64, const MAX: u64> SizeIn<MIN, MAX> {
    pub(super) fn checked(bytes: u64, written: &dyn fmt::Display) -> Result<Self, String> {
        if (MIN..=MAX).contains(&bytes) {
            Ok(SizeIn(bytes))
        } else {
            let range = |n: u64| match n {
                n if n >= 1 << 10 => ByteSize(n).display().iec().to_string().replace(".0 ", " "),
                n => format!("{n} B"),
            };
            Err(format!(
                "{written} is out of range ({}..={})",
                range(MIN),
                range(MAX)
            ))
        }
    }
}

impl<const MIN: u64, const MAX: u64> Visitor<'_> for SizeVisitor<MIN, MAX> {
    type Value = SizeIn<MIN, MAX>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a size like \"64 MiB\", or a number of bytes")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        let written = format!("{value:?}");
        let size = value
            .parse::<ByteSize>()
            .map_err(|_| E::custom(format!("{written} is not a size (try \"64 MiB\")")))?;
        SizeIn::checked(size.as_u64(), &written).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        let bytes = u64::try_from(value).unwrap_or(0);
        SizeIn::checked(bytes, &format_args!("{value} bytes")).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        SizeIn::checked(value, &format_args!("{value} bytes")).map_err(E::custom)
    }
}

/// A value written as a TOML string and checked while it is read.
pub(super) trait FromTomlStr: Sized {
    /// What a good value looks like, for "invalid type" messages.
    const EXPECTING: &'static str;

    fn from_toml_str(text: &str) -> Result<Self, String>;
}

pub(super) struct StrVisitor<T>(pub(super) PhantomData<T>);

impl<T: FromTomlStr> Visitor<'_> for StrVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<T, E> {
        T::from_toml_str(value).map_err(E::custom)
    }
}

macro_rules! deserialize_from_toml_str {
    ($($ty:ty),* $(,)?) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_str(StrVisitor(PhantomData))
            }
        }
    )*};
}

deserialize_from_toml_str!(
    Text,
    PathValue,
    EnvName,
    EventPattern,
    CallPattern,
    SubjectToken
);

/// A duration in `MIN_MS..=MAX_MS` milliseconds, written the humantime way.
#[derive(Clone, Copy)]
pub(super) struct DurationIn<const MIN_MS: u64, const MAX_MS: u64>(pub(super) Duration);

impl<'de, const MIN_MS: u64, const MAX_MS: u64> Deserialize<'de> for DurationIn<MIN_MS, MAX_MS> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(StrVisitor(PhantomData))
    }
}

impl<const MIN_MS: u64, const MAX_MS: u64> FromTomlStr for DurationIn<MIN_MS, MAX_MS> {
    const EXPECTING: &'static str = "a duration like \"5s\"";

    fn from_toml_str(text: &str) -> Result<Self, String> {
        let duration = humantime::parse_duration(text)
            .map_err(|_| format!("{text:?} is not a duration (try \"5s\")"))?;
        let (min, max) = (Duration::from_millis(MIN_MS), Duration::from_millis(MAX_MS));
        if (min..=max).contains(&duration) {
            Ok(DurationIn(duration))
        } else {
            let (min, max) = (
                humantime::format_duration(min),
                humantime::format_duration(max),
            );
            Err(format!("{text:?} is out of range ({min}..={max})"))
        }
    }
}

/// A non-empty string.
pub(super) struct Text(pub(super) String);

impl FromTomlStr for Text {
    const EXPECTING: &'static str = "a string";

    fn from_toml_str(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("must not be empty".to_owned());
        }
        Ok(Text(text.to_owned()))
    }
}

/// A node id or namespace: it becomes part of NATS subjects, so no
/// whitespace, `.`, `*` or `>`.
pub(super) struct SubjectToken(pub(super) String);

impl FromTomlStr for SubjectToken {
    const EXPECTING: &'static str = "a name";

    fn from_toml_str(text: &str) -> Result<Self, String> {
        match crate::node_id::token_problem(text) {
            Some(problem) => Err(problem),
            None => Ok(SubjectToken(text.to_owned())),
        }
    }
}

/// A non-empty path.
pub(super) struct PathValue(pub(super) PathBuf);

impl FromTomlStr for PathValue {
    const EXPECTING: &'static str = "a path";

    fn from_toml_str(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("must not be an empty path".to_owned());
        }
        Ok(PathValue(PathBuf::from(text)))
    }
}

/// A portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct EnvName(pub(super) String);

impl FromTomlStr for EnvName {
    const EXPECTING: &'static str = "an environment variable name";

    fn from_toml_str(text: &str) -> Result<Self, String> {
        let mut chars = text.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !(first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')) {
            return Err(format!(
                "{text:?} is not an environment variable name (letters, digits and `_`, not starting with a digit)"
            ));
        }
        Ok(EnvName(text.to_owned()))
    }
}

/// An event subscription: an exact name, `prefix.*`, or `*`.
pub(super) struct EventPattern(pub(super) String);

impl FromTomlStr for EventPattern {
    const EXPECTING: &'static str = "an event pattern";

    fn from_toml_str(text: &str) -> Result<Self, String> {
        let name = text.strip_suffix(".*").unwrap_or(text);
        if text != "*" && !is_event_name(name) {
            return Err(format!(
                "{text:?} is not an event pattern (use a name like \"order.placed\", a prefix like \"order.*\", or \"*\")"
            ));
        }
        Ok(EventPattern(text.to_owned()))
    }
}

/// A call grant: `pkg.action`, `pkg.*`, or `*`.
pub(super) struct CallPattern(pub(super) String);

impl FromTomlStr for CallPattern {
    const EXPECTING: &'static str = "an action pattern";

    fn from_toml_str(text: &str) -> Result<Self, String> {
        if !is_call_pattern(text) {
            return Err(format!(
                "{text:?} is not an action pattern (use \"package.action\", \"package.*\", or \"*\")"
            ));
        }
        Ok(CallPattern(text.to_owned()))
    }
}

pub(super) fn is_package_name(name: &str) -> bool {
    name.len() <= MAX_PACKAGE_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Dot-separated, non-empty segments without spaces or `*`.
pub(super) fn is_event_name(name: &str) -> bool {
    name.split('.').all(|segment| {
        !segment.is_empty()
            && segment
                .chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && c != '*')
    })
}

pub(super) fn is_call_pattern(pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    // Moleculer's internal service on this node.
    if let Some(action) = pattern.strip_prefix("$node.") {
        return action == "*" || is_action_name(action);
    }
    let Some((package, action)) = pattern.split_once('.') else {
        return false;
    };
    is_package_name(package) && (action == "*" || is_action_name(action))
}

/// A function name, or `interface.function` where two interfaces share one.
pub(super) fn is_action_name(action: &str) -> bool {
    action.split('.').all(|segment| {
        !segment.is_empty()
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// A Moleculer service name a package depends on (`objectql`, `v2.greeter`,
/// `@steedos/service-x`, `$node`): printable ASCII, no spaces, no `*` or `>`.
pub(super) struct ServiceName(pub(super) String);

impl FromTomlStr for ServiceName {
    const EXPECTING: &'static str = "a service name";

    fn from_toml_str(text: &str) -> Result<Self, String> {
        let fits = |c: char| c.is_ascii_graphic() && !matches!(c, '*' | '>' | '"' | '\\');
        if text.is_empty() || text.len() > 128 || !text.chars().all(fits) || text.contains("..") {
            return Err(format!(
                "{text:?} is not a service name (printable ASCII without spaces, `*` or `>`, \
                 at most 128 characters, like \"objectql\" or \"v2.greeter\")"
            ));
        }
        Ok(ServiceName(text.to_owned()))
    }
}

/// A service version: `2` (the service is `v2.<name>`) or a word such as
/// `"staging"` (the service is `staging.<name>`), as Moleculer names them.
pub(super) struct VersionValue(pub(super) ServiceVersion);

impl<'de> Deserialize<'de> for VersionValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(VersionVisitor)
    }
}

struct VersionVisitor;

impl Visitor<'_> for VersionVisitor {
    type Value = VersionValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a version: a number like 2, or a word like \"staging\"")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<VersionValue, E> {
        u64::try_from(value)
            .map_err(|_| E::custom(format!("version {value} is negative")))
            .and_then(|n| self.visit_u64(n))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<VersionValue, E> {
        Ok(VersionValue(ServiceVersion::Number(value)))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<VersionValue, E> {
        let word = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if value.is_empty() || value.len() > 32 || !value.chars().all(word) {
            return Err(E::custom(format!(
                "{value:?} is not a version (a number, or letters, digits, `-` and `_`, at most 32)"
            )));
        }
        Ok(VersionValue(ServiceVersion::Text(value.to_owned())))
    }
}

deserialize_from_toml_str!(ServiceName);

/// A service version, as Moleculer writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceVersion {
    /// `version = 2`: the service is `v2.<name>`.
    Number(u64),
    /// `version = "staging"`: the service is `staging.<name>`.
    Text(String),
}

impl ServiceVersion {
    /// The prefix of the service's full name (`v2`, `staging`).
    pub fn prefix(&self) -> String {
        match self {
            ServiceVersion::Number(n) => format!("v{n}"),
            ServiceVersion::Text(t) => t.clone(),
        }
    }

    /// The version as INFO carries it (a number or a string).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ServiceVersion::Number(n) => serde_json::Value::from(*n),
            ServiceVersion::Text(t) => serde_json::Value::from(t.as_str()),
        }
    }
}
