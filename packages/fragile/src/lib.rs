//! `fragile`: a callee behind a typed import that traps, loops or fails
//! when asked to (see `wit/fragile.wit`).

steedos_sdk::generate!({
    path: ["../../wit", "wit"],
    world: "test:fragile/fragile-package",
});

use exports::test::fragile::fragile::{CallError, Guest};

struct Fragile;

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
        _ => text,
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
}

export!(Fragile);
