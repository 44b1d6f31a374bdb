//! Signatures called through typed functions: byte lists that cross as
//! bytes, and small values that cross without `Val`s.
//!
//! wasmtime's dynamic calls take and give [`Val`]s, and a `list<u8>` as
//! `Val`s is one `Val` (40 bytes) per byte: a 24 MiB payload would hold
//! 960 MiB of host memory. An action whose signature is made of byte
//! lists, strings and integers ([`TypedShape`]) is called through a typed
//! function instead, so its bytes are copied as bytes, into the guest and
//! out of it, and a string or an integer is lowered as what it is: no
//! `Val` is built, checked against the signature and dropped per call.
//!
//! Typed imports of the same shapes are linked as typed host functions
//! (see `imports.rs`): a byte list crosses from the calling guest to the
//! providing one as one `Vec<u8>`, both ways.
//!
//! Everything else still crosses as `Val`s, bounded by the package's
//! [`host_budget`]: the decoder refuses parameters that would take more
//! (see [`crate::codec::DecodeOptions`]), and wasmtime's hostcall fuel, set
//! to the same figure, stops a result that would.

use wasmtime::Store;
use wasmtime::component::{ComponentNamedList, Func, Lift, Lower, Type, Val};

use super::HostState;
use super::host::{call_error_val, from_wit_error, is_call_error_result};
use super::wit::steedos::package::types::CallError as WitCallError;
use crate::codec::{Arg, DEFAULT_BUDGET};

/// Host memory one call's values may take for a package whose instances
/// have `memory` bytes: never less than wasmtime's default hostcall fuel,
/// and twice the memory limit for larger packages, so any `list<u8>` that
/// fits in the guest crosses as bytes.
pub fn host_budget(memory: u64) -> usize {
    let twice = usize::try_from(memory.saturating_mul(2)).unwrap_or(usize::MAX);
    twice.max(DEFAULT_BUDGET)
}

/// A `list<u8>`, a `string`, a `u32` or a `u64` at the top of a signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Atom {
    Bytes,
    Text,
    U32,
    U64,
}

impl Atom {
    fn of(ty: &Type) -> Option<Atom> {
        match ty {
            Type::String => Some(Atom::Text),
            Type::U32 => Some(Atom::U32),
            Type::U64 => Some(Atom::U64),
            Type::List(list) if matches!(list.ty(), Type::U8) => Some(Atom::Bytes),
            _ => None,
        }
    }
}

/// The parameters of a typed signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Takes {
    Nothing,
    One(Atom),
    Two(Atom, Atom),
}

/// The result of a typed signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Returns {
    Nothing,
    Bytes,
    Text,
    /// `result<list<u8>, string>`
    BytesOrText,
    /// `result<_, string>`
    UnitOrText,
    /// `result<string, string>`
    TextOrText,
    /// `result<list<u8>, call-error>`: a typed import's broker failures
    /// come back as its error case.
    BytesOrCallError,
    U32,
    U64,
}

/// A signature called through a typed function: at most two parameters,
/// each a `list<u8>`, `string`, `u32` or `u64`; a result that is nothing,
/// a `list<u8>`, a `string`, a `u32`, a `u64`, a `result` of `list<u8>`,
/// `string` or nothing with a `string` error, or a
/// `result<list<u8>, call-error>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypedShape {
    pub(super) takes: Takes,
    pub(super) returns: Returns,
}

impl TypedShape {
    /// The shape of `params -> result`, if it has one.
    pub fn of(params: &[(String, Type)], result: Option<&Type>) -> Option<TypedShape> {
        let takes = match params {
            [] => Takes::Nothing,
            [(_, a)] => Takes::One(Atom::of(a)?),
            [(_, a), (_, b)] => Takes::Two(Atom::of(a)?, Atom::of(b)?),
            _ => return None,
        };
        let returns = match result {
            None => Returns::Nothing,
            Some(Type::Result(r)) => match (r.ok().as_ref().map(Atom::of), r.err()) {
                (Some(Some(Atom::Bytes)), Some(_)) if is_call_error_result(result) => {
                    Returns::BytesOrCallError
                }
                (ok, Some(Type::String)) => match ok {
                    None => Returns::UnitOrText,
                    Some(Some(Atom::Bytes)) => Returns::BytesOrText,
                    Some(Some(Atom::Text)) => Returns::TextOrText,
                    Some(_) => return None,
                },
                _ => return None,
            },
            Some(ty) => match Atom::of(ty)? {
                Atom::Bytes => Returns::Bytes,
                Atom::Text => Returns::Text,
                Atom::U32 => Returns::U32,
                Atom::U64 => Returns::U64,
            },
        };
        Some(TypedShape { takes, returns })
    }
}

/// A call's parameters as the broker hands them over.
#[derive(Clone, Copy, Debug)]
pub enum Params<'a> {
    /// Component values (typed imports, [`crate::broker::Broker::call`]).
    Vals(&'a [Val]),
    /// Decoded for an action: a `list<u8>` as bytes.
    Args(&'a [Arg]),
}

/// What a call returned.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// A component value.
    Val(Val),
    /// A `list<u8>`, as bytes.
    Bytes(Vec<u8>),
    /// The `ok` case of a `result<list<u8>, E>`, as bytes.
    OkBytes(Vec<u8>),
}

impl Output {
    /// The output as a component value (a byte list becomes a `Val` per byte).
    pub fn into_val(self) -> Val {
        let list = |bytes: Vec<u8>| Val::List(bytes.into_iter().map(Val::U8).collect());
        match self {
            Output::Val(val) => val,
            Output::Bytes(bytes) => list(bytes),
            Output::OkBytes(bytes) => Val::Result(Ok(Some(Box::new(list(bytes))))),
        }
    }
}

/// One argument of a typed call, borrowed from the decoded ones or the values.
enum In<'a> {
    Bytes(&'a [u8]),
    Text(&'a str),
    U32(u32),
    U64(u64),
}

impl<'a> In<'a> {
    fn of(arg: &'a Arg, atom: Atom) -> Option<In<'a>> {
        match (arg, atom) {
            (Arg::Bytes(bytes), Atom::Bytes) => Some(In::Bytes(bytes)),
            (Arg::Val(val), _) => In::of_val(val, atom),
            _ => None,
        }
    }

    /// A value as `atom`; a byte list given as values stays values (its
    /// `Val`s are already built: nothing to save).
    fn of_val(val: &'a Val, atom: Atom) -> Option<In<'a>> {
        match (val, atom) {
            (Val::String(text), Atom::Text) => Some(In::Text(text)),
            (Val::U32(n), Atom::U32) => Some(In::U32(*n)),
            (Val::U64(n), Atom::U64) => Some(In::U64(*n)),
            _ => None,
        }
    }
}

/// Calls `returns` with the typed parameters of `$in`, one Rust type per
/// kind of argument: (`$in`, ...) => `$call` for each combination.
macro_rules! each_in {
    ($f:ident ($func:ident, $store:ident, $returns:expr) for ()) => {
        $f($func, $store, $returns, ()).await
    };
    ($f:ident ($func:ident, $store:ident, $returns:expr) for ($a:expr)) => {
        match $a {
            In::Bytes(x) => $f($func, $store, $returns, (x,)).await,
            In::Text(x) => $f($func, $store, $returns, (x,)).await,
            In::U32(x) => $f($func, $store, $returns, (x,)).await,
            In::U64(x) => $f($func, $store, $returns, (x,)).await,
        }
    };
    ($f:ident ($func:ident, $store:ident, $returns:expr) for ($a:expr, $b:expr)) => {
        match $a {
            In::Bytes(x) => each_in!(@second $f ($func, $store, $returns) x, $b),
            In::Text(x) => each_in!(@second $f ($func, $store, $returns) x, $b),
            In::U32(x) => each_in!(@second $f ($func, $store, $returns) x, $b),
            In::U64(x) => each_in!(@second $f ($func, $store, $returns) x, $b),
        }
    };
    (@second $f:ident ($func:ident, $store:ident, $returns:expr) $x:ident, $b:expr) => {
        match $b {
            In::Bytes(y) => $f($func, $store, $returns, ($x, y)).await,
            In::Text(y) => $f($func, $store, $returns, ($x, y)).await,
            In::U32(y) => $f($func, $store, $returns, ($x, y)).await,
            In::U64(y) => $f($func, $store, $returns, ($x, y)).await,
        }
    };
}

/// Calls `func`, of shape `shape`, with `params` through a typed function.
/// `None` if `params` do not fit the shape (the caller then uses `Val`s).
pub(super) async fn call(
    func: Func,
    store: &mut Store<HostState>,
    shape: TypedShape,
    params: Params<'_>,
) -> Option<wasmtime::Result<Option<Output>>> {
    let one = |i: usize, atom| match params {
        Params::Args(args) => args.get(i).and_then(|arg| In::of(arg, atom)),
        Params::Vals(vals) => vals.get(i).and_then(|val| In::of_val(val, atom)),
    };
    let given = match params {
        Params::Args(args) => args.len(),
        Params::Vals(vals) => vals.len(),
    };
    let r = shape.returns;
    Some(match shape.takes {
        Takes::Nothing if given == 0 => each_in!(returns(func, store, r) for ()),
        Takes::One(a) if given == 1 => each_in!(returns(func, store, r) for (one(0, a)?)),
        Takes::Two(a, b) if given == 2 => {
            each_in!(returns(func, store, r) for (one(0, a)?, one(1, b)?))
        }
        _ => return None,
    })
}

/// A `result<list<u8>, call-error>`: the bytes, or the error case as a value.
async fn or_call_error<P>(
    func: Func,
    store: &mut Store<HostState>,
    params: P,
) -> wasmtime::Result<Option<Output>>
where
    P: ComponentNamedList + Lower + Send + Sync,
{
    let (r,) = typed::<P, (Result<Vec<u8>, WitCallError>,)>(func, store, params).await?;
    Ok(Some(r.map_or_else(
        |e| {
            Output::Val(Val::Result(Err(Some(Box::new(call_error_val(
                &from_wit_error(e),
            ))))))
        },
        Output::OkBytes,
    )))
}

/// The `err` case of a `result<_, string>`.
fn failed(e: String) -> Output {
    Output::Val(Val::Result(Err(Some(Box::new(Val::String(e))))))
}

async fn returns<P>(
    func: Func,
    store: &mut Store<HostState>,
    returns: Returns,
    params: P,
) -> wasmtime::Result<Option<Output>>
where
    P: ComponentNamedList + Lower + Send + Sync,
{
    Ok(match returns {
        Returns::Nothing => {
            typed::<P, ()>(func, store, params).await?;
            None
        }
        Returns::Bytes => {
            let (bytes,) = typed::<P, (Vec<u8>,)>(func, store, params).await?;
            Some(Output::Bytes(bytes))
        }
        Returns::Text => {
            let (s,) = typed::<P, (String,)>(func, store, params).await?;
            Some(Output::Val(Val::String(s)))
        }
        Returns::BytesOrText => {
            let (r,) = typed::<P, (Result<Vec<u8>, String>,)>(func, store, params).await?;
            Some(r.map_or_else(failed, Output::OkBytes))
        }
        Returns::UnitOrText => {
            let (r,) = typed::<P, (Result<(), String>,)>(func, store, params).await?;
            Some(r.map_or_else(failed, |()| Output::Val(Val::Result(Ok(None)))))
        }
        Returns::TextOrText => {
            let (r,) = typed::<P, (Result<String, String>,)>(func, store, params).await?;
            Some(r.map_or_else(failed, |s| {
                Output::Val(Val::Result(Ok(Some(Box::new(Val::String(s))))))
            }))
        }
        Returns::BytesOrCallError => or_call_error(func, store, params).await?,
        Returns::U32 => {
            let (n,) = typed::<P, (u32,)>(func, store, params).await?;
            Some(Output::Val(Val::U32(n)))
        }
        Returns::U64 => {
            let (n,) = typed::<P, (u64,)>(func, store, params).await?;
            Some(Output::Val(Val::U64(n)))
        }
    })
}

async fn typed<P, R>(func: Func, store: &mut Store<HostState>, params: P) -> wasmtime::Result<R>
where
    P: ComponentNamedList + Lower + Send + Sync,
    R: ComponentNamedList + Lift + Send + Sync + 'static,
{
    let typed = func.typed::<P, R>(&*store)?;
    // Boxed: wasmtime's call future (about 1.4 KB) would otherwise be
    // copied into, and with, every call future above it.
    crate::boxed::pinned(|| typed.call_async(store, params)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::component::Component;
    use wasmtime::component::types::ComponentItem;
    use wasmtime::{Config, Engine};

    fn shape(func: &str) -> Option<TypedShape> {
        let engine = Engine::new(&Config::new()).expect("engine");
        let text = format!("(component (import \"f\" (func {func})))");
        let component = Component::new(&engine, text).expect("valid");
        let ty = component.component_type();
        let (_, item) = ty.imports(&engine).next().expect("one import");
        let ComponentItem::ComponentFunc(f) = item.ty else {
            panic!("not a function")
        };
        let params: Vec<_> = f.params().map(|(n, t)| (n.to_owned(), t)).collect();
        TypedShape::of(&params, f.results().next().as_ref())
    }

    #[test]
    fn typed_shapes_are_signatures_of_bytes_strings_and_integers() {
        let bytes = |takes, returns| Some(TypedShape { takes, returns });
        use Atom::{Bytes as B, Text as T};
        let echo = "(param \"d\" (list u8)) (result (list u8))";
        assert_eq!(shape(echo), bytes(Takes::One(B), Returns::Bytes));
        let read = "(param \"p\" string) (result (result (list u8) (error string)))";
        assert_eq!(shape(read), bytes(Takes::One(T), Returns::BytesOrText));
        let put = "(param \"k\" string) (param \"v\" (list u8)) (result (result (error string)))";
        assert_eq!(shape(put), bytes(Takes::Two(T, B), Returns::UnitOrText));
        assert_eq!(
            shape("(result (list u8))"),
            bytes(Takes::Nothing, Returns::Bytes)
        );
        let make = "(param \"n\" u32) (result (list u8))";
        assert_eq!(shape(make), bytes(Takes::One(Atom::U32), Returns::Bytes));
        let sum = "(param \"d\" (list u8)) (result u64)";
        assert_eq!(shape(sum), bytes(Takes::One(B), Returns::U64));
        // Without bytes too: no `Val` is built for a string or an integer.
        let hello = "(param \"s\" string) (result string)";
        assert_eq!(shape(hello), bytes(Takes::One(T), Returns::Text));
        let count = "(param \"n\" u32) (result u64)";
        assert_eq!(shape(count), bytes(Takes::One(Atom::U32), Returns::U64));
        assert_eq!(shape(""), bytes(Takes::Nothing, Returns::Nothing));
        // Anything else: values, as before.
        assert_eq!(shape("(param \"d\" (list u8)) (result s16)"), None);
        assert_eq!(shape("(param \"d\" (list u16)) (result (list u8))"), None);
        let three = "(param \"a\" (list u8)) (param \"b\" (list u8)) (param \"c\" (list u8))";
        assert_eq!(shape(three), None);
        let err_bytes = "(param \"d\" (list u8)) (result (result (list u8) (error u32)))";
        assert_eq!(shape(err_bytes), None);
    }

    #[test]
    fn host_budget_follows_the_memory_limit_above_the_default() {
        assert_eq!(host_budget(1 << 20), DEFAULT_BUDGET);
        assert_eq!(host_budget(64 << 20), DEFAULT_BUDGET);
        assert_eq!(host_budget(1 << 30), 2 << 30);
    }
}
