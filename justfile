# The everyday commands. `just --list` shows them; `cargo install just` if
# you do not have just (every recipe is plain cargo underneath).

# List the recipes.
default:
    @just --list

# Build the host and every package of examples/shop.
build:
    cargo build --release -p steedos-wasm
    cargo run --release -p steedos-wasm -- build examples/shop

# Run examples/shop until Ctrl-C (builds what is out of date first).
demo:
    cargo run --release -p steedos-wasm -- run examples/shop

# Call one action of examples/shop, e.g. `just call greeter.hello '{"name":"Ada"}'`.
call action params="{}":
    cargo run --release -p steedos-wasm -- call examples/shop {{action}} '{{params}}'

# Every test, with its own set-up of node, nats-server and Python tools (see ./test).
test *args:
    ./test {{args}}

# Lints and formatting, as CI would want them.
check:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# The benchmarks, in release mode, with the peer figures measured in the same run.
bench:
    cargo bench -p steedos-wasm --bench broker
    cargo bench -p steedos-wasm --bench gateway
    cargo bench -p steedos-wasm --bench resilience
    cargo bench -p steedos-wasm --bench http
    cargo bench -p steedos-wasm --bench kv
    cargo bench -p steedos-wasm --bench telemetry
    cd bench/moleculer && npm install --no-audit --no-fund --silent && node local.js
    cargo bench -p steedos-wasm --bench cluster
