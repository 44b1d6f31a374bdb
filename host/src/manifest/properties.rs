//! Moleculer properties written in TOML: an action's `rest`, `trigger`,
//! `visibility`, `cache` and free-form keys, and a package's `settings`,
//! turned into the JSON the INFO packet carries verbatim. A value JSON
//! cannot hold (a date-time, a NaN or an infinite float), a key the host
//! writes itself (`name`, `params`, ...) and a `visibility` Moleculer does
//! not know are errors at their own span.
//!
//! It reads values and reports spans; what the properties mean to calls
//! is the broker's business (see [`Visibility`]).

use std::ops::Range;

use serde_json::{Map, Number, Value};
use toml::Spanned;
use toml::de::DeValue;

use super::model::Visibility;

/// The keys of an action table the host reads itself (never published).
pub(super) const HOST_ACTION_KEYS: [&str; 3] = ["queue", "idempotent", "fallback"];

/// Keys of an action definition the host writes into INFO (or Moleculer
/// keeps for itself): a property may not take their place.
const RESERVED_ACTION_KEYS: [&str; 8] = [
    "name",
    "rawName",
    "fullName",
    "params",
    "handler",
    "remoteHandler",
    "service",
    "hooks",
];

/// The largest JSON of one package's properties (settings and every
/// action's): the INFO packet must stay well under NATS's 1 MB payload.
pub(super) const MAX_PROPERTIES_BYTES: usize = 256 << 10;

/// Deepest nesting of a property value.
const MAX_DEPTH: usize = 32;

/// Where a property went wrong and why.
pub(super) type PropertyError = (Range<usize>, String);

/// The published properties of one action table: every key but the host's
/// own, as JSON, and its visibility.
pub(super) fn action_properties(
    action: &str,
    table: &Spanned<DeValue<'_>>,
) -> Result<(Map<String, Value>, Visibility), PropertyError> {
    let DeValue::Table(entries) = table.get_ref() else {
        return Ok((Map::new(), Visibility::Published));
    };
    let mut properties = Map::new();
    let mut visibility = Visibility::Published;
    for (key, value) in entries.iter() {
        let key_text: &str = key.get_ref().as_ref();
        if HOST_ACTION_KEYS.contains(&key_text) {
            continue;
        }
        if RESERVED_ACTION_KEYS.contains(&key_text) {
            let message = format!(
                "`{key_text}` is written by the host for action `{action}` and cannot be set \
                 (reserved: {})",
                RESERVED_ACTION_KEYS.join(", ")
            );
            return Err((key.span(), message));
        }
        if key_text == "visibility" {
            visibility = parse_visibility(value)?;
        }
        properties.insert(key_text.to_owned(), to_json(value, 0)?);
    }
    Ok((properties, visibility))
}

fn parse_visibility(value: &Spanned<DeValue<'_>>) -> Result<Visibility, PropertyError> {
    match value.get_ref().as_str() {
        Some("published") => Ok(Visibility::Published),
        Some("public") => Ok(Visibility::Public),
        Some("protected") => Ok(Visibility::Protected),
        Some("private") => Ok(Visibility::Private),
        _ => Err((
            value.span(),
            "visibility is one of \"published\", \"public\", \"protected\", \"private\"".to_owned(),
        )),
    }
}

/// A package's `settings` table as JSON.
pub(super) fn settings(value: &Spanned<DeValue<'_>>) -> Result<Map<String, Value>, PropertyError> {
    match to_json(value, 0)? {
        Value::Object(map) => Ok(map),
        _ => Err((value.span(), "settings: expected a table".to_owned())),
    }
}

/// A TOML value as JSON, or the span of the part JSON cannot hold.
pub(super) fn to_json(value: &Spanned<DeValue<'_>>, depth: usize) -> Result<Value, PropertyError> {
    if depth > MAX_DEPTH {
        return Err((
            value.span(),
            format!("nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    let span = || value.span();
    Ok(match value.get_ref() {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Integer(i) => {
            let (text, radix) = (i.as_str(), i.radix());
            match i64::from_str_radix(text, radix) {
                Ok(n) => Value::from(n),
                Err(_) => u64::from_str_radix(text, radix)
                    .map(Value::from)
                    .map_err(|_| (span(), format!("{i} does not fit in 64 bits")))?,
            }
        }
        DeValue::Float(f) => {
            let number = f.as_str().parse::<f64>().ok().and_then(Number::from_f64);
            Value::Number(number.ok_or_else(|| {
                (
                    span(),
                    format!("{f} cannot be sent as JSON (no NaN or infinity)"),
                )
            })?)
        }
        DeValue::Datetime(d) => {
            let message =
                format!("the date-time {d} cannot be sent as JSON: write it as a string (\"{d}\")");
            return Err((span(), message));
        }
        DeValue::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| to_json(item, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        DeValue::Table(table) => {
            let mut map = Map::new();
            for (key, item) in table.iter() {
                map.insert(key.get_ref().to_string(), to_json(item, depth + 1)?);
            }
            Value::Object(map)
        }
    })
}
