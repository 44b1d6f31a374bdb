//! `fragile`: a callee behind a typed import that traps, loops or fails
//! when asked to (see `wit/fragile.wit`).

steedos_sdk::generate!({
    path: ["../../wit", "wit"],
    world: "test:fragile/fragile-package",
});

use std::time::Duration;

use exports::steedos::package::events::Guest as EventsGuest;
use exports::steedos::package::lifecycle::Guest as LifecycleGuest;
use exports::test::fragile::fragile::{CallError, Guest};
use steedos_sdk::wit::broker;
use steedos_sdk::CallContext;

struct Fragile;

/// A random id, fixed for the life of the instance.
fn instance() -> u64 {
    use std::hash::BuildHasher as _;
    thread_local! {
        static ID: u64 = std::collections::hash_map::RandomState::new().hash_one(0u8);
    }
    ID.with(|id| *id)
}

/// Does what `text` asks for: trap, loop, or answer it.
fn obey(text: String) -> String {
    match text.as_str() {
        "trap" => panic!("fragile was asked to trap"),
        "loop" => {
            let mut spins = 0u64;
            loop {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
        }
        "whoami" => format!("{:016x}", instance()),
        _ => {
            if let Some(ms) = text.strip_prefix("sleep:").and_then(|ms| ms.parse().ok()) {
                steedos_sdk::info!("sleeping {ms} ms in {:016x}", instance());
                std::thread::sleep(Duration::from_millis(ms));
                steedos_sdk::info!("slept {ms} ms in {:016x}", instance());
            } else if let Some(ms) = text.strip_prefix("emit:") {
                broker::emit("fragile.slow", ms.as_bytes());
            }
            text
        }
    }
}

impl Guest for Fragile {
    fn echo(text: String) -> Result<String, CallError> {
        match text.strip_prefix("fail:") {
            Some(why) => Err(CallError::Failed(why.to_string())),
            None => Ok(obey(text)),
        }
    }

    fn plain(text: String) -> String {
        obey(text)
    }

    fn spare(text: String, tag: Option<String>) -> Result<String, CallError> {
        Ok(format!(
            "spare: {text}, tag {}",
            tag.as_deref().unwrap_or("none")
        ))
    }

    fn needs_count(count: u32) -> Result<String, CallError> {
        Ok(format!("needs-count: {count}"))
    }

    fn needs_number(text: u32) -> Result<String, CallError> {
        Ok(format!("needs-number: {text}"))
    }
}

impl EventsGuest for Fragile {
    fn handle(event: String, payload: Vec<u8>, _ctx: CallContext) {
        let ms: u64 = String::from_utf8_lossy(&payload).parse().unwrap_or(0);
        steedos_sdk::info!("handling {event}");
        std::thread::sleep(Duration::from_millis(ms));
        steedos_sdk::info!("handled {event} after {ms} ms");
    }
}

impl LifecycleGuest for Fragile {
    fn started() -> Result<(), String> {
        Ok(())
    }

    fn stopped() {
        steedos_sdk::info!("stopped {:016x}", instance());
    }
}

export!(Fragile);
