//! Where a value is and what it has cost while the codec walks it: the
//! path an error names (`order.items[2].qty`), the memory budget and the
//! depth limit every decode is held to, and the wording of what was
//! expected and found. Shared by both directions; it reads no format.

use super::*;

/// Upper bound on what a length prefix may preallocate: the prefix is input.
pub(super) const MAX_PREALLOCATED: usize = 4096;

/// How deeply MessagePack input may nest, as JSON's parser allows.
pub(super) const MAX_DEPTH: usize = 128;

/// What one component value costs the host: the `Val` itself (wasmtime
/// charges hostcall fuel the same way when it lifts values from a guest).
pub(super) const VAL_COST: usize = size_of::<Val>();

/// The path to an error, collected while the error unwinds (so a call that
/// succeeds pays nothing), the message when this module raised it, and the
/// host memory the decoded values may still take.
pub(super) struct Trail {
    /// Innermost first.
    pub(super) segments: Vec<Segment>,
    pub(super) message: Option<String>,
    /// Bytes of host memory left for decoded values.
    pub(super) budget: usize,
    /// The budget at the start, for the message when it runs out.
    pub(super) limit: usize,
}

impl Default for Trail {
    fn default() -> Self {
        Trail::with_budget(DEFAULT_BUDGET)
    }
}

pub(super) enum Segment {
    /// A record field, parameter, variant case or `ok` / `err`.
    Name(String),
    /// A list, tuple or array position.
    Index(usize),
    /// A string key of a `map`.
    Key(String),
    /// Any element of a list or map (type paths, no value at hand).
    Each,
}

impl Trail {
    pub(super) fn with_budget(budget: usize) -> Self {
        Trail {
            segments: Vec::new(),
            message: None,
            budget,
            limit: budget,
        }
    }

    /// Takes `cost` bytes of host memory from the budget, or fails before
    /// they are allocated.
    pub(super) fn charge<E: de::Error>(&mut self, cost: usize) -> Result<(), E> {
        match self.budget.checked_sub(cost) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => Err(self.too_large()),
        }
    }

    #[cold]
    pub(super) fn too_large<E: de::Error>(&mut self) -> E {
        let limit = bytesize::ByteSize::b(self.limit as u64).display().iec();
        self.fail(format!(
            "too large: the decoded values would take more than {limit} of host memory"
        ))
    }

    /// Records `message` as the cause and returns it as the format's error.
    #[cold]
    pub(super) fn fail<E: de::Error>(&mut self, message: String) -> E {
        let error = E::custom(&message);
        self.message = Some(message);
        error
    }

    /// Notes, while `error` unwinds, that it happened inside `segment`.
    #[cold]
    pub(super) fn at<E>(&mut self, segment: Segment, error: E) -> E {
        self.segments.push(segment);
        error
    }

    pub(super) fn path(&self, root: Option<&str>) -> String {
        let mut out = String::new();
        if self.segments.is_empty() {
            return out;
        }
        out.push_str(root.unwrap_or_default());
        for segment in self.segments.iter().rev() {
            let _ = match segment {
                Segment::Name(name) if out.is_empty() => write!(out, "{name}"),
                Segment::Name(name) => write!(out, ".{name}"),
                Segment::Index(i) => write!(out, "[{i}]"),
                Segment::Key(key) => write!(out, "[{key:?}]"),
                Segment::Each => write!(out, "[]"),
            };
        }
        out
    }

    /// The error, with `fallback` describing a failure of the format itself.
    pub(super) fn into_error(
        self,
        root: Option<&str>,
        fallback: impl FnOnce() -> String,
    ) -> CodecError {
        let path = self.path(root);
        let message = self.message.unwrap_or_else(fallback);
        CodecError { path, message }
    }

    pub(super) fn into_de_error<E: de::Error>(self, root: Option<&str>, error: E) -> E {
        if self.message.is_none() && self.segments.is_empty() {
            return error;
        }
        E::custom(self.into_error(root, || error.to_string()))
    }

    pub(super) fn into_ser_error<E: ser::Error>(self, error: E) -> E {
        if self.message.is_none() && self.segments.is_empty() {
            return error;
        }
        E::custom(self.into_error(None, || error.to_string()))
    }
}

pub(super) struct Location<'a>(pub(super) &'a str);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            "" => Ok(()),
            path => write!(f, "{path}: "),
        }
    }
}

/// What the input held where something else was expected.
#[derive(Clone, Copy)]
pub(super) enum Found<'a> {
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Str(&'a str),
    Bytes,
    Null,
    Seq,
    Map,
    Extension,
    Enum,
}

impl Found<'_> {
    pub(super) fn describe(self, human: bool) -> String {
        match self {
            Found::Bool(v) => format!("boolean {v}"),
            Found::Unsigned(v) => format!("integer {v}"),
            Found::Signed(v) => format!("integer {v}"),
            Found::Float(v) => format!("float {v:?}"),
            Found::Str(v) => format!("string {}", Quoted(v)),
            Found::Bytes => "binary data".to_owned(),
            Found::Null => "null".to_owned(),
            Found::Seq => "array".to_owned(),
            Found::Map if human => "object".to_owned(),
            Found::Map => "map".to_owned(),
            Found::Extension => "a MessagePack extension".to_owned(),
            Found::Enum => "an enum".to_owned(),
        }
    }
}

/// A string from the input, quoted and cut short if long.
pub(super) struct Quoted<'a>(pub(super) &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 40;
        match self.0.char_indices().nth(SHOWN) {
            None => write!(f, "{:?}", self.0),
            Some((end, _)) => write!(f, "{:?}...", &self.0[..end]),
        }
    }
}

/// `expected one of `a`, `b`` for the names a lookup could have matched.
pub(super) fn one_of<'a>(mut names: impl ExactSizeIterator<Item = &'a str>, none: &str) -> String {
    match names.len() {
        0 => none.to_owned(),
        1 => format!("expected `{}`", names.next().unwrap_or_default()),
        _ => format!("expected one of {}", ticked(names)),
    }
}

/// `` `a`, `b` ``.
pub(super) fn ticked<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for (i, name) in names.enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(out, "{sep}`{name}`");
    }
    out
}

/// `missing field `a`` or `missing fields `a`, `b``.
pub(super) fn missing(what: &str, names: &[&str]) -> String {
    let plural = if names.len() == 1 { "" } else { "s" };
    format!("missing {what}{plural} {}", ticked(names.iter().copied()))
}

pub(super) fn unsupported(ty: &Type) -> String {
    format!(
        "unsupported type `{}`: resources, futures, streams and error contexts cannot be sent as JSON or MessagePack",
        Wit::short(ty)
    )
}

/// The `message` of the first unsupported type inside `ty`, its path in `trail`.
pub(super) fn find_unsupported(ty: &Type, trail: &mut Trail) -> Option<String> {
    let nested = |trail: &mut Trail, segment: Segment, ty: &Type| {
        let message = find_unsupported(ty, trail)?;
        trail.segments.push(segment);
        Some(message)
    };
    match ty {
        Type::Own(_) | Type::Borrow(_) | Type::Future(_) | Type::Stream(_) | Type::ErrorContext => {
            Some(unsupported(ty))
        }
        Type::List(list) => nested(trail, Segment::Each, &list.ty()),
        Type::FixedLengthList(list) => nested(trail, Segment::Each, &list.ty()),
        Type::Option(option) => find_unsupported(&option.ty(), trail),
        Type::Map(map) => find_unsupported(&map.key(), trail)
            .or_else(|| nested(trail, Segment::Each, &map.value())),
        Type::Record(record) => record
            .fields()
            .find_map(|f| nested(trail, Segment::Name(f.name.to_owned()), &f.ty)),
        Type::Tuple(tuple) => tuple
            .types()
            .enumerate()
            .find_map(|(i, ty)| nested(trail, Segment::Index(i), &ty)),
        Type::Variant(variant) => variant.cases().find_map(|case| {
            let ty = case.ty?;
            nested(trail, Segment::Name(case.name.to_owned()), &ty)
        }),
        Type::Result(result) => {
            let ok = result
                .ok()
                .and_then(|ty| nested(trail, Segment::Name("ok".into()), &ty));
            ok.or_else(|| {
                let ty = result.err()?;
                nested(trail, Segment::Name("err".into()), &ty)
            })
        }
        _ => None,
    }
}
