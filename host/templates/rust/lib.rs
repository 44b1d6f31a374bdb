//! `@NAME@`: a steedos-wasm package in Rust. Its actions are the functions
//! of the `api` interface in `wit/@NAME@.wit`.

// Bindings for the world in wit/ (its deps/ folder holds the host's WIT).
steedos_sdk::generate!({
    path: "wit",
    world: "local:@NAME@/@NAME@",
});

use exports::local::@SNAKE@::api::Guest;

struct Package;

impl Guest for Package {
    /// `result<string, string>` in WIT: an `Err` fails this call only, and
    /// the caller gets `failed` with its text. A panic traps the instance,
    /// which the host replaces.
    fn hello(name: String) -> Result<String, String> {
        if name.trim().is_empty() {
            return Err("name must not be empty".to_string());
        }
        steedos_sdk::info!("greeting {name}");
        Ok(format!("Hello, {name}!"))
    }
}

export!(Package);

// To call another package by name (serde values, MessagePack on the wire):
//
//     #[derive(serde::Serialize)]
//     struct GetItem<'a> { sku: &'a str }
//     let item: Option<Item> = steedos_sdk::call("inventory.get-item", &GetItem { sku: "apple" })
//         .map_err(|e| e.to_string())?;
//
// (add `serde = { version = "1", features = ["derive"] }` to Cargo.toml).
