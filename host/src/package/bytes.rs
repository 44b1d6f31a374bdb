//! Byte lists that cross as bytes.
//!
//! wasmtime's dynamic calls take and give [`Val`]s, and a `list<u8>` as
//! `Val`s is one `Val` (40 bytes) per byte: a 24 MiB payload would hold
//! 960 MiB of host memory. An action whose signature is made of byte lists
//! and strings ([`ByteShape`]) is called through a typed function instead,
//! so its bytes are copied as bytes, into the guest and out of it.
//!
//! Typed imports of the same shapes are linked as typed host functions
//! ([`link_import`]): a byte list crosses from the calling guest to the
//! providing one as one `Vec<u8>`, both ways.
//!
//! Everything else still crosses as `Val`s, bounded by the package's
//! [`host_budget`]: the decoder refuses parameters that would take more
//! (see [`crate::codec::DecodeOptions`]), and wasmtime's hostcall fuel, set
//! to the same figure, stops a result that would.

use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::{ComponentNamedList, Func, Lift, LinkerInstance, Lower, Type, Val};

use super::HostState;
use super::host::{
    ImportTarget, call_error_val, forward, from_wit_error, import_failed, is_call_error_result,
    to_wit_error,
};
use super::wit::steedos::package::types::CallError as WitCallError;
use crate::codec::{Arg, DEFAULT_BUDGET};
use crate::context::{CallError, ErrorKind};

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
enum Atom {
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

/// The parameters of a byte-shaped signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Takes {
    Nothing,
    One(Atom),
    Two(Atom, Atom),
}

/// The result of a byte-shaped signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Returns {
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

impl Returns {
    fn bytes(self) -> bool {
        matches!(
            self,
            Returns::Bytes | Returns::BytesOrText | Returns::BytesOrCallError
        )
    }
}

/// A signature whose byte lists can cross as bytes: at most two
/// parameters, each a `list<u8>`, `string`, `u32` or `u64`; a result that
/// is nothing, a `list<u8>`, a `string`, a `u32`, a `u64`, a `result` of
/// `list<u8>`, `string` or nothing with a `string` error, or a
/// `result<list<u8>, call-error>`; and a `list<u8>` somewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteShape {
    takes: Takes,
    returns: Returns,
}

impl ByteShape {
    /// The shape of `params -> result`, if it is byte-shaped.
    pub fn of(params: &[(String, Type)], result: Option<&Type>) -> Option<ByteShape> {
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
        let shape = ByteShape { takes, returns };
        (shape.takes_bytes() || returns.bytes()).then_some(shape)
    }

    fn takes_bytes(self) -> bool {
        match self.takes {
            Takes::Nothing => false,
            Takes::One(a) => a == Atom::Bytes,
            Takes::Two(a, b) => a == Atom::Bytes || b == Atom::Bytes,
        }
    }
}

/// A call's parameters as the broker hands them over.
#[derive(Clone, Copy, Debug)]
pub enum Params<'a> {
    /// Component values (typed imports, [`crate::broker::Broker::call`]).
    Vals(&'a [Val]),
    /// Decoded for a byte-shaped action: its `list<u8>` as bytes.
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

/// One argument of a byte-shaped call, borrowed from the decoded ones.
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
            (Arg::Val(Val::String(text)), Atom::Text) => Some(In::Text(text)),
            (Arg::Val(Val::U32(n)), Atom::U32) => Some(In::U32(*n)),
            (Arg::Val(Val::U64(n)), Atom::U64) => Some(In::U64(*n)),
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

/// Calls `func`, of byte shape `shape`, with `args` through a typed
/// function. `None` if `args` do not fit the shape (the caller then uses
/// `Val`s).
pub(super) async fn call(
    func: Func,
    store: &mut Store<HostState>,
    shape: ByteShape,
    args: &[Arg],
) -> Option<wasmtime::Result<Option<Output>>> {
    let one = |i: usize, atom| args.get(i).and_then(|arg| In::of(arg, atom));
    let r = shape.returns;
    // Parameters without bytes go with results that have them: only those
    // combinations are instantiated.
    Some(match (shape.takes, shape.takes_bytes()) {
        (Takes::Nothing, _) if args.is_empty() => each_in!(returns_bytes(func, store, r) for ()),
        (Takes::One(a), true) if args.len() == 1 => {
            each_in!(returns(func, store, r) for (one(0, a)?))
        }
        (Takes::One(a), false) if args.len() == 1 => {
            each_in!(returns_bytes(func, store, r) for (one(0, a)?))
        }
        (Takes::Two(a, b), true) if args.len() == 2 => {
            each_in!(returns(func, store, r) for (one(0, a)?, one(1, b)?))
        }
        (Takes::Two(a, b), false) if args.len() == 2 => {
            each_in!(returns_bytes(func, store, r) for (one(0, a)?, one(1, b)?))
        }
        _ => return None,
    })
}

/// [`returns`] for parameters without bytes: the result has them.
async fn returns_bytes<P>(
    func: Func,
    store: &mut Store<HostState>,
    returns: Returns,
    params: P,
) -> wasmtime::Result<Option<Output>>
where
    P: ComponentNamedList + Lower + Send + Sync,
{
    match returns {
        Returns::Bytes => {
            let (bytes,) = typed::<P, (Vec<u8>,)>(func, store, params).await?;
            Ok(Some(Output::Bytes(bytes)))
        }
        Returns::BytesOrCallError => or_call_error(func, store, params).await,
        _ => {
            let (r,) = typed::<P, (Result<Vec<u8>, String>,)>(func, store, params).await?;
            Ok(Some(r.map_or_else(failed, Output::OkBytes)))
        }
    }
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
    typed.call_async(store, params).await
}

/// A parameter of a byte-shaped typed import, as the provider takes it.
trait IntoArg {
    fn into_arg(self) -> Arg;
}

impl IntoArg for Vec<u8> {
    fn into_arg(self) -> Arg {
        Arg::Bytes(self)
    }
}

impl IntoArg for String {
    fn into_arg(self) -> Arg {
        Arg::Val(Val::String(self))
    }
}

impl IntoArg for u32 {
    fn into_arg(self) -> Arg {
        Arg::Val(Val::U32(self))
    }
}

impl IntoArg for u64 {
    fn into_arg(self) -> Arg {
        Arg::Val(Val::U64(self))
    }
}

/// The parameters of a byte-shaped typed import.
trait IntoArgs {
    fn into_args(self) -> Vec<Arg>;
}

impl IntoArgs for () {
    fn into_args(self) -> Vec<Arg> {
        Vec::new()
    }
}

impl<A: IntoArg> IntoArgs for (A,) {
    fn into_args(self) -> Vec<Arg> {
        vec![self.0.into_arg()]
    }
}

impl<A: IntoArg, B: IntoArg> IntoArgs for (A, B) {
    fn into_args(self) -> Vec<Arg> {
        vec![self.0.into_arg(), self.1.into_arg()]
    }
}

/// The result of a byte-shaped typed import, from what the provider
/// returned (as bytes, or as values when it crossed as values); `None`
/// when it does not fit.
trait FromOutput: Sized {
    fn from_output(out: Option<Output>) -> Option<Self>;

    /// A broker failure as this result, when it has a `call-error` case.
    fn from_error(_: &CallError) -> Option<Self> {
        None
    }
}

/// A `list<u8>` that crossed as values.
fn list_bytes(val: Val) -> Option<Vec<u8>> {
    let Val::List(items) = val else { return None };
    items
        .into_iter()
        .map(|v| match v {
            Val::U8(b) => Some(b),
            _ => None,
        })
        .collect()
}

fn out_bytes(out: Output) -> Option<Vec<u8>> {
    match out {
        Output::Bytes(bytes) => Some(bytes),
        Output::Val(val) => list_bytes(val),
        Output::OkBytes(_) => None,
    }
}

/// A `result<T, string>` that crossed as a value or as `ok` bytes.
fn out_result<T>(out: Output, ok: impl Fn(Option<Val>) -> Option<T>) -> Option<Result<T, String>> {
    match out {
        Output::OkBytes(bytes) => {
            ok(Some(Val::List(bytes.into_iter().map(Val::U8).collect()))).map(Ok)
        }
        Output::Val(Val::Result(Ok(v))) => ok(v.map(|b| *b)).map(Ok),
        Output::Val(Val::Result(Err(Some(e)))) => match *e {
            Val::String(e) => Some(Err(e)),
            _ => None,
        },
        _ => None,
    }
}

impl FromOutput for () {
    fn from_output(out: Option<Output>) -> Option<Self> {
        out.is_none().then_some(())
    }
}

impl FromOutput for (Vec<u8>,) {
    fn from_output(out: Option<Output>) -> Option<Self> {
        out_bytes(out?).map(|b| (b,))
    }
}

impl FromOutput for (String,) {
    fn from_output(out: Option<Output>) -> Option<Self> {
        match out? {
            Output::Val(Val::String(s)) => Some((s,)),
            _ => None,
        }
    }
}

impl FromOutput for (u32,) {
    fn from_output(out: Option<Output>) -> Option<Self> {
        match out? {
            Output::Val(Val::U32(n)) => Some((n,)),
            _ => None,
        }
    }
}

impl FromOutput for (u64,) {
    fn from_output(out: Option<Output>) -> Option<Self> {
        match out? {
            Output::Val(Val::U64(n)) => Some((n,)),
            _ => None,
        }
    }
}

impl FromOutput for (Result<Vec<u8>, String>,) {
    fn from_output(out: Option<Output>) -> Option<Self> {
        match out? {
            // Not turned into values and back: the common case.
            Output::OkBytes(bytes) => Some((Ok(bytes),)),
            out => out_result(out, |v| list_bytes(v?)).map(|r| (r,)),
        }
    }
}

impl FromOutput for (Result<(), String>,) {
    fn from_output(out: Option<Output>) -> Option<Self> {
        out_result(out?, |v| v.is_none().then_some(())).map(|r| (r,))
    }
}

impl FromOutput for (Result<String, String>,) {
    fn from_output(out: Option<Output>) -> Option<Self> {
        let text = |v: Option<Val>| match v? {
            Val::String(s) => Some(s),
            _ => None,
        };
        out_result(out?, text).map(|r| (r,))
    }
}

impl FromOutput for (Result<Vec<u8>, WitCallError>,) {
    fn from_output(out: Option<Output>) -> Option<Self> {
        let r = match out? {
            Output::OkBytes(bytes) => Ok(bytes),
            Output::Val(Val::Result(Ok(Some(v)))) => Ok(list_bytes(*v)?),
            Output::Val(Val::Result(Err(Some(e)))) => Err(to_wit_error(call_error_of(*e)?)),
            _ => return None,
        };
        Some((r,))
    }

    fn from_error(e: &CallError) -> Option<Self> {
        Some((Err(to_wit_error(e.clone())),))
    }
}

/// A `call-error` value as the error it stands for.
fn call_error_of(val: Val) -> Option<CallError> {
    let Val::Variant(case, payload) = val else {
        return None;
    };
    let kind = ErrorKind::ALL.into_iter().find(|k| k.name() == case)?;
    let message = match payload.map(|p| *p) {
        Some(Val::String(m)) => m,
        _ => String::new(),
    };
    Some(CallError::new(kind, message))
}

/// Links one function of a typed import whose signature is `shape` as a
/// typed host function, so its byte lists are copied as bytes out of the
/// caller and into it, never turned into a `Val` per byte.
pub(super) fn link_import(
    inst: &mut LinkerInstance<'_, HostState>,
    name: &str,
    shape: ByteShape,
    target: Arc<ImportTarget>,
) -> wasmtime::Result<()> {
    // Every result for parameters with bytes; results with bytes for the
    // others (the only byte shapes there are).
    macro_rules! returns {
        ($p:ty) => {
            match shape.returns {
                Returns::Nothing => wrap::<$p, ()>(inst, name, target),
                Returns::Bytes => wrap::<$p, (Vec<u8>,)>(inst, name, target),
                Returns::Text => wrap::<$p, (String,)>(inst, name, target),
                Returns::BytesOrText => wrap::<$p, (Result<Vec<u8>, String>,)>(inst, name, target),
                Returns::UnitOrText => wrap::<$p, (Result<(), String>,)>(inst, name, target),
                Returns::TextOrText => wrap::<$p, (Result<String, String>,)>(inst, name, target),
                Returns::BytesOrCallError => {
                    wrap::<$p, (Result<Vec<u8>, WitCallError>,)>(inst, name, target)
                }
                Returns::U32 => wrap::<$p, (u32,)>(inst, name, target),
                Returns::U64 => wrap::<$p, (u64,)>(inst, name, target),
            }
        };
    }
    macro_rules! returns_bytes {
        ($p:ty) => {
            match shape.returns {
                Returns::Bytes => wrap::<$p, (Vec<u8>,)>(inst, name, target),
                Returns::BytesOrCallError => {
                    wrap::<$p, (Result<Vec<u8>, WitCallError>,)>(inst, name, target)
                }
                _ => wrap::<$p, (Result<Vec<u8>, String>,)>(inst, name, target),
            }
        };
    }
    // `$t` is the Rust type of atom `$a` other than bytes.
    macro_rules! plain {
        ($a:expr, $t:ident => $body:expr) => {
            match $a {
                Atom::Text => {
                    type $t = String;
                    $body
                }
                Atom::U32 => {
                    type $t = u32;
                    $body
                }
                Atom::U64 | Atom::Bytes => {
                    type $t = u64;
                    $body
                }
            }
        };
    }
    use Atom::Bytes as B;
    match shape.takes {
        Takes::Nothing => returns_bytes!(()),
        Takes::One(B) => returns!((Vec<u8>,)),
        Takes::One(a) => plain!(a, A => returns_bytes!((A,))),
        Takes::Two(B, B) => returns!((Vec<u8>, Vec<u8>)),
        Takes::Two(B, b) => plain!(b, T => returns!((Vec<u8>, T))),
        Takes::Two(a, B) => plain!(a, T => returns!((T, Vec<u8>))),
        Takes::Two(a, b) => plain!(a, A => plain!(b, T => returns_bytes!((A, T)))),
    }
}

/// [`link_import`] for parameters `P` and results `R`.
fn wrap<P, R>(
    inst: &mut LinkerInstance<'_, HostState>,
    name: &str,
    target: Arc<ImportTarget>,
) -> wasmtime::Result<()>
where
    P: ComponentNamedList + Lift + IntoArgs + Send + 'static,
    R: ComponentNamedList + Lower + FromOutput + Send + Sync + 'static,
{
    inst.func_wrap_async(name, move |store, params: P| {
        let target = target.clone();
        Box::new(async move {
            let args = params.into_args();
            let out = forward(store, &target, Params::Args(&args)).await;
            drop(args);
            let out = match out {
                Ok(out) => out,
                Err(e) => return R::from_error(&e).ok_or_else(|| import_failed(&target, e)),
            };
            R::from_output(out).ok_or_else(|| {
                wasmtime::format_err!(
                    "typed call to `{}`: the provider's result does not have the imported type",
                    target.label
                )
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::component::Component;
    use wasmtime::component::types::ComponentItem;
    use wasmtime::{Config, Engine};

    fn shape(func: &str) -> Option<ByteShape> {
        let engine = Engine::new(&Config::new()).expect("engine");
        let text = format!("(component (import \"f\" (func {func})))");
        let component = Component::new(&engine, text).expect("valid");
        let ty = component.component_type();
        let (_, item) = ty.imports(&engine).next().expect("one import");
        let ComponentItem::ComponentFunc(f) = item.ty else {
            panic!("not a function")
        };
        let params: Vec<_> = f.params().map(|(n, t)| (n.to_owned(), t)).collect();
        ByteShape::of(&params, f.results().next().as_ref())
    }

    #[test]
    fn byte_shapes_are_signatures_of_bytes_and_strings_with_bytes_in_them() {
        let bytes = |takes, returns| Some(ByteShape { takes, returns });
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
        // No bytes, or something else: values as before.
        assert_eq!(shape("(param \"s\" string) (result string)"), None);
        assert_eq!(shape("(param \"n\" u32) (result u64)"), None);
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
