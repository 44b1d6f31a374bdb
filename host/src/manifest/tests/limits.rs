//! The limits a package may set (here: `emit_rate`), read from the file.

use super::*;

/// `emit_rate`: a size a second, from `[defaults]` or the package, with its
/// default; out of range or not a size is an error naming the package.
#[test]
fn emit_rate_is_a_size_a_second_with_a_default() {
    let text = "[defaults]\nemit_rate = \"8 MiB\"\n[packages.a]\ncomponent = \"a.wasm\"\n\
                [packages.b]\ncomponent = \"b.wasm\"\nemit_rate = \"1 GiB\"\n";
    let m = parse_inline(text).expect("valid");
    assert!(m.rejected.is_empty(), "{:?}", m.rejected);
    let rate = |name: &str| {
        m.packages
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.emit_rate)
    };
    assert_eq!((rate("a"), rate("b")), (Some(8 << 20), Some(1 << 30)));
    let m = parse_inline("[packages.a]\ncomponent = \"a.wasm\"\n").expect("valid");
    assert_eq!(m.packages[0].emit_rate, DEFAULT_EMIT_RATE);
    for (bad, says) in [
        ("\"fast\"", "is not a size"),
        ("\"1 KiB\"", "out of range (64 KiB..=64 GiB)"),
        ("\"1 TiB\"", "out of range (64 KiB..=64 GiB)"),
    ] {
        let text = format!("[packages.a]\ncomponent = \"a.wasm\"\nemit_rate = {bad}\n");
        let e = match parse_inline(&text) {
            Ok(m) => m
                .rejected
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("package `a`: emit_rate: ") && e.contains(says),
            "{bad}: {e}"
        );
    }
}
