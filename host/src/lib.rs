//! steedos-wasm
