//! The codec's tests, over one WAT component with a function whose
//! parameters are every WIT type kind.

mod errors;
mod limits;
mod properties;
mod schema;
mod values;

use super::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::LazyLock;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;
use wasmtime::{Config, Engine};

/// Every type kind, as the parameters of one imported function (named
/// after their kind), plus a few functions for the parameter tests.
const FIXTURE: &str = r#"(component
    (type $item' (record (field "sku" string) (field "qty" u32)))
    (import "item" (type $item (eq $item')))
    (type $order' (record (field "id" u64) (field "items" (list $item))
                          (field "note" (option string))))
    (import "order" (type $order (eq $order')))
    (type $stock' (variant (case "in-stock" u32) (case "discontinued")
                           (case "backordered" (tuple u32 string))))
    (import "stock" (type $stock (eq $stock')))
    (type $colour' (enum "red" "green" "blue"))
    (import "colour" (type $colour (eq $colour')))
    (type $perms' (flags "read" "write" "exec"))
    (import "perms" (type $perms (eq $perms')))
    (import "handle" (type $handle (sub resource)))
    (import "kinds" (func
        (param "bool" bool) (param "s8" s8) (param "u8" u8) (param "s16" s16)
        (param "u16" u16) (param "s32" s32) (param "u32" u32) (param "s64" s64)
        (param "u64" u64) (param "f32" f32) (param "f64" f64) (param "char" char)
        (param "string" string) (param "list-string" (list string))
        (param "bytes" (list u8)) (param "tuple" (tuple u8 string))
        (param "opt" (option u64)) (param "opt-opt" (option (option u32))) (param "res" (result u64 (error string)))
        (param "res-ok" (result u64)) (param "res-err" (result (error string)))
        (param "res-none" (result)) (param "order" $order) (param "stock" $stock)
        (param "colour" $colour) (param "perms" $perms)
        (param "map" (map string u32)) (param "map-u32" (map u32 string))
        (param "fixed" (list u8 4)) (param "stocks" (list (option $stock)))
        (param "own" (own $handle)) (param "holder" (tuple u32 (list (own $handle))))))
    (import "reserve" (func (param "sku" string) (param "qty" u32)
                            (param "note" (option string))
                            (result (result u64 (error string)))))
    (import "ping" (func))
)"#;

/// A function's parameters and result.
type Signature = (Vec<(String, Type)>, Option<Type>);

struct Fixture {
    kinds: HashMap<String, Type>,
    funcs: HashMap<String, Signature>,
}

static TYPES: LazyLock<Fixture> = LazyLock::new(|| {
    let mut config = Config::new();
    config.wasm_component_model_map(true);
    config.wasm_component_model_fixed_length_lists(true);
    let engine = Engine::new(&config).expect("engine");
    let component = Component::new(&engine, FIXTURE).expect("fixture validates");
    let mut funcs = HashMap::new();
    for (name, item) in component.component_type().imports(&engine) {
        if let ComponentItem::ComponentFunc(func) = item.ty {
            let params: Vec<_> = func.params().map(|(n, t)| (n.to_owned(), t)).collect();
            funcs.insert(name.to_owned(), (params, func.results().next()));
        }
    }
    let kinds = funcs["kinds"].0.iter().cloned().collect();
    Fixture { kinds, funcs }
});

fn ty(kind: &str) -> &'static Type {
    &TYPES.kinds[kind]
}

fn func(name: &str) -> &'static Signature {
    &TYPES.funcs[name]
}

fn json(kind: &str, text: &str) -> Result<Val, CodecError> {
    decode_value(ty(kind), Format::Json, text.as_bytes())
}

fn json_error(kind: &str, text: &str) -> String {
    match json(kind, text) {
        Ok(val) => panic!("{kind} accepted {text} as {val:?}"),
        Err(e) => e.to_string(),
    }
}

fn msgpack(kind: &str, bytes: &[u8]) -> Result<Val, CodecError> {
    decode_value(ty(kind), Format::MessagePack, bytes)
}

fn params_error(name: &str, format: Format, bytes: &[u8]) -> String {
    let (params, _) = func(name);
    match decode_params(params, format, bytes) {
        Ok(vals) => panic!("{name} accepted {bytes:?} as {vals:?}"),
        Err(e) => e.to_string(),
    }
}

fn string(s: &str) -> Val {
    Val::String(s.to_owned())
}

fn some(val: Val) -> Val {
    Val::Option(Some(Box::new(val)))
}

/// The canonical JSON of one value of every kind.
const CANONICAL: &[(&str, &str)] = &[
    ("bool", "true"),
    ("s8", "-128"),
    ("u8", "255"),
    ("s16", "-32768"),
    ("u16", "65535"),
    ("s32", "-2147483648"),
    ("u32", "4294967295"),
    ("s64", "-9223372036854775808"),
    ("u64", "18446744073709551615"),
    ("f32", "1.5"),
    ("f64", "-2.25"),
    ("f64", r#""NaN""#),
    ("f32", r#""-Infinity""#),
    ("char", r#""é""#),
    ("string", r#""hello \"world\"""#),
    ("list-string", r#"["a","b"]"#),
    ("list-string", "[]"),
    ("bytes", r#""AQID/w==""#),
    ("bytes", r#""""#),
    ("tuple", r#"[7,"x"]"#),
    ("opt", "null"),
    ("opt", "5"),
    ("res", r#"{"ok":5}"#),
    ("res", r#"{"err":"no"}"#),
    ("res-ok", r#"{"err":null}"#),
    ("res-err", r#"{"ok":null}"#),
    ("res-none", r#"{"ok":null}"#),
    (
        "order",
        r#"{"id":1,"items":[{"sku":"A","qty":2},{"sku":"B","qty":1}],"note":"gift"}"#,
    ),
    ("order", r#"{"id":1,"items":[],"note":null}"#),
    ("stock", r#"{"in-stock":3}"#),
    ("stock", r#""discontinued""#),
    ("stock", r#"{"backordered":[2,"May"]}"#),
    ("colour", r#""green""#),
    ("perms", r#"["read","exec"]"#),
    ("perms", "[]"),
    ("map", r#"{"a":1,"b":2}"#),
    ("map-u32", r#"[[1,"a"],[2,"b"]]"#),
    ("fixed", "[1,2,3,4]"),
    ("stocks", r#"[null,"discontinued",{"in-stock":1}]"#),
];
