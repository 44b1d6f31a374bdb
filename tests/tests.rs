//! Integration tests of steedos-wasm, on real components built from source
//! by `build.rs` (see `util.rs`). One test binary; one module per concern.

mod bytes;
mod calls;
mod cluster;
mod cluster_hostile;
mod cluster_resilience;
mod events;
mod faults;
mod gateway;
mod gateway_hostile;
mod guest_logs;
mod http_out;
mod http_serve;
mod kv;
mod lifecycle;
mod loading;
mod meta;
mod operations;
mod polyglot;
mod resilience;
mod sandbox;
mod steedos;
mod telemetry;
