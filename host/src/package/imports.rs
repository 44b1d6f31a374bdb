//! Typed imports: how a package's import of another package's interface
//! is linked. Each imported function forwards to the providing package
//! through the [`Router`](super::Router); one whose signature has a typed
//! shape ([`TypedShape`]) is linked as a typed host function, so its
//! byte lists are copied as bytes out of the caller and into it, never
//! turned into a `Val` per byte, and its strings and integers cross with
//! no `Val` built; any other crosses as values.
//!
//! It owns the linking and the forwarding; what a typed shape is and how an
//! action is called with one is `bytes.rs`'s, the rest of the host side of
//! imports is `host.rs`'s.

use std::sync::Arc;

use wasmtime::StoreContextMut;
use wasmtime::component::{ComponentNamedList, Lift, Linker, LinkerInstance, Lower, Val};

use super::bytes::{Atom, Output, Params, Returns, Takes, TypedShape};
use super::host::{ImportTarget, call_error_val, caller, to_wit_error};
use super::wit::steedos::package::types::CallError as WitCallError;
use super::{Caller, HostState, TypedImport};
use crate::codec::Arg;
use crate::context::{CallError, ErrorKind, ReplyMeta};
use crate::engine::coarse_now;

/// Adds one typed import to `linker`: each function forwards to
/// `targets[i]` through the router, its byte lists as bytes when its
/// signature has a typed shape ([`TypedShape`]), as values otherwise.
pub fn link_typed_import(
    linker: &mut Linker<HostState>,
    import: &TypedImport,
    targets: Vec<Arc<ImportTarget>>,
) -> wasmtime::Result<()> {
    let mut inst = linker.instance(&import.interface)?;
    for ((fname, func), target) in import.functions.iter().zip(targets) {
        let params: Vec<_> = func.params().map(|(n, t)| (n.to_owned(), t)).collect();
        if let Some(shape) = TypedShape::of(&params, func.results().next().as_ref()) {
            link_import(&mut inst, fname, shape, target)?;
            continue;
        }
        inst.func_new_async(fname, move |store, _ty, params, results| {
            let target = target.clone();
            Box::new(async move {
                let outcome = forward(store, &target, Params::Vals(params)).await;
                match outcome {
                    Ok(value) => {
                        if let (Some(slot), Some(v)) = (results.first_mut(), value) {
                            *slot = v.into_val();
                        }
                        Ok(())
                    }
                    Err(e) if target.errors_as_value => {
                        if let Some(slot) = results.first_mut() {
                            *slot = Val::Result(Err(Some(Box::new(call_error_val(&e)))));
                        }
                        Ok(())
                    }
                    Err(e) => Err(import_failed(&target, e)),
                }
            })
        })?;
    }
    Ok(())
}

/// One call through a typed import: the calling instance's caller, the
/// router, and the time waited added to the caller's.
pub(super) async fn forward(
    mut store: StoreContextMut<'_, HostState>,
    target: &ImportTarget,
    params: Params<'_>,
) -> Result<Option<Output>, CallError> {
    let HostState {
        package,
        grants,
        router,
        call,
        ..
    } = store.data();
    let mut spare = None;
    let reply = ReplyMeta::default();
    let from = Caller {
        reply: Some(&reply),
        ..caller(package, grants, call, &mut spare)
    };
    let started = coarse_now();
    let outcome = router.call_import(from, target, params).await;
    let state = store.data_mut();
    state.waited += coarse_now().saturating_duration_since(started);
    state.merge_reply(&reply);
    outcome
}

/// A typed call that failed: the trap fails only this invocation of the
/// caller; its instance is recycled.
pub(super) fn import_failed(target: &ImportTarget, e: CallError) -> wasmtime::Error {
    wasmtime::format_err!("typed call to `{}` failed: {e}", target.label)
}

/// A parameter of a typed import of a typed shape, as the provider takes it.
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

/// The parameters of a typed import of a typed shape.
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

/// The result of a typed import of a typed shape, from what the provider
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
    shape: TypedShape,
    target: Arc<ImportTarget>,
) -> wasmtime::Result<()> {
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
        Takes::Nothing => returns!(()),
        Takes::One(B) => returns!((Vec<u8>,)),
        Takes::One(a) => plain!(a, A => returns!((A,))),
        Takes::Two(B, B) => returns!((Vec<u8>, Vec<u8>)),
        Takes::Two(B, b) => plain!(b, T => returns!((Vec<u8>, T))),
        Takes::Two(a, B) => plain!(a, T => returns!((T, Vec<u8>))),
        Takes::Two(a, b) => plain!(a, A => plain!(b, T => returns!((A, T)))),
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
