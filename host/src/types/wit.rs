//! The text of a WIT type or function signature (`list<string>`,
//! `func(sku: string, qty: u32) -> result<u64, string>`), written
//! structurally because wasmtime keeps no type names. Read by OpenAPI
//! summaries, CLI listings and the codec's error messages; it renders only
//! and must not decide how a type is encoded.

use std::fmt::{self, Write as _};

use wasmtime::component::Type;
use wasmtime::component::types::ResultType;

/// Renders a type in WIT syntax: `list<string>`, `result<u64, string>`,
/// `record { sku: string, qty: u32 }`, `variant { in-stock(u32), gone }`.
///
/// Structural, because wasmtime does not keep type names.
pub fn wit_type(ty: &Type) -> String {
    Wit::full(ty).to_string()
}

/// Renders a function type in WIT syntax:
/// `func(sku: string, qty: u32) -> result<u64, string>`.
pub fn wit_signature(params: &[(String, Type)], result: Option<&Type>) -> String {
    let mut out = String::from("func(");
    for (i, (name, ty)) in params.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(out, "{sep}{name}: {}", Wit::full(ty));
    }
    out.push(')');
    if let Some(ty) = result {
        let _ = write!(out, " -> {}", Wit::full(ty));
    }
    out
}

/// A type in WIT syntax; bodies of records, variants, enums and flags nested
/// deeper than `depth` are elided as `{ ... }` (error messages stay short).
pub(crate) struct Wit<'a> {
    ty: &'a Type,
    depth: usize,
}

impl<'a> Wit<'a> {
    pub(crate) fn full(ty: &'a Type) -> Self {
        Wit {
            ty,
            depth: usize::MAX,
        }
    }

    /// For error messages: the outer body shown, inner ones elided.
    pub(crate) fn short(ty: &'a Type) -> Self {
        Wit { ty, depth: 1 }
    }

    fn inner<'b>(&self, ty: &'b Type) -> Wit<'b> {
        Wit {
            ty,
            depth: self.depth,
        }
    }

    /// `kind { a, b }`, or `kind { ... }` past the depth limit.
    fn body<T>(
        &self,
        f: &mut fmt::Formatter<'_>,
        kind: &str,
        items: impl Iterator<Item = T>,
        mut item: impl FnMut(&mut fmt::Formatter<'_>, T, usize) -> fmt::Result,
    ) -> fmt::Result {
        if self.depth == 0 {
            return write!(f, "{kind} {{ ... }}");
        }
        write!(f, "{kind} {{")?;
        let mut empty = true;
        for (i, x) in items.enumerate() {
            f.write_str(if i == 0 { " " } else { ", " })?;
            item(f, x, self.depth - 1)?;
            empty = false;
        }
        f.write_str(if empty { "}" } else { " }" })
    }
}

impl fmt::Display for Wit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.ty {
            Type::Bool => "bool",
            Type::S8 => "s8",
            Type::U8 => "u8",
            Type::S16 => "s16",
            Type::U16 => "u16",
            Type::S32 => "s32",
            Type::U32 => "u32",
            Type::S64 => "s64",
            Type::U64 => "u64",
            Type::Float32 => "f32",
            Type::Float64 => "f64",
            Type::Char => "char",
            Type::String => "string",
            Type::ErrorContext => "error-context",
            Type::Own(_) => "own<resource>",
            Type::Borrow(_) => "borrow<resource>",
            _ => return self.compound(f),
        };
        f.write_str(name)
    }
}

impl Wit<'_> {
    fn compound(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ty {
            Type::List(list) => write!(f, "list<{}>", self.inner(&list.ty())),
            Type::FixedLengthList(list) => {
                write!(f, "list<{}, {}>", self.inner(&list.ty()), list.len())
            }
            Type::Map(map) => write!(
                f,
                "map<{}, {}>",
                self.inner(&map.key()),
                self.inner(&map.value())
            ),
            Type::Option(option) => write!(f, "option<{}>", self.inner(&option.ty())),
            Type::Result(result) => self.result(f, result),
            Type::Tuple(tuple) => {
                f.write_str("tuple<")?;
                for (i, ty) in tuple.types().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{}", self.inner(&ty))?;
                }
                f.write_str(">")
            }
            Type::Record(record) => self.body(f, "record", record.fields(), |f, field, depth| {
                write!(
                    f,
                    "{}: {}",
                    field.name,
                    Wit {
                        ty: &field.ty,
                        depth
                    }
                )
            }),
            Type::Variant(variant) => {
                self.body(
                    f,
                    "variant",
                    variant.cases(),
                    |f, case, depth| match &case.ty {
                        None => f.write_str(case.name),
                        Some(ty) => write!(f, "{}({})", case.name, Wit { ty, depth }),
                    },
                )
            }
            Type::Enum(e) => self.body(f, "enum", e.names(), |f, name, _| f.write_str(name)),
            Type::Flags(flags) => {
                self.body(f, "flags", flags.names(), |f, name, _| f.write_str(name))
            }
            Type::Future(future) => match future.ty() {
                None => f.write_str("future"),
                Some(ty) => write!(f, "future<{}>", self.inner(&ty)),
            },
            Type::Stream(stream) => match stream.ty() {
                None => f.write_str("stream"),
                Some(ty) => write!(f, "stream<{}>", self.inner(&ty)),
            },
            _ => Ok(()),
        }
    }

    fn result(&self, f: &mut fmt::Formatter<'_>, result: &ResultType) -> fmt::Result {
        match (result.ok(), result.err()) {
            (None, None) => f.write_str("result"),
            (Some(ok), None) => write!(f, "result<{}>", self.inner(&ok)),
            (None, Some(err)) => write!(f, "result<_, {}>", self.inner(&err)),
            (Some(ok), Some(err)) => {
                write!(f, "result<{}, {}>", self.inner(&ok), self.inner(&err))
            }
        }
    }
}
