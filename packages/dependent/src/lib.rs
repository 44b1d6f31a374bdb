//! `dependent`: calls `fragile` through a typed import and reports what
//! came back (see `wit/dependent.wit`).

steedos_sdk::generate!({
    path: ["../../wit", "../fragile/wit", "wit"],
    world: "test:dependent/dependent-package",
});

use exports::test::dependent::dependent::Guest;
use test::fragile::fragile::{self, CallError};

struct Dependent;

impl Guest for Dependent {
    fn relay(text: String) -> String {
        match fragile::echo(&text) {
            Ok(answer) => format!("ok: {answer}"),
            Err(e) => {
                let (case, detail) = match e {
                    CallError::NotFound(m) => ("not-found", m),
                    CallError::InvalidParams(m) => ("invalid-params", m),
                    CallError::Timeout => ("timeout", String::new()),
                    CallError::Crashed(m) => ("crashed", m),
                    CallError::Overloaded(m) => ("overloaded", m),
                    CallError::Denied(m) => ("denied", m),
                    CallError::Failed(m) => ("failed", m),
                };
                format!("err: {case}: {detail}")
            }
        }
    }

    fn relay_plain(text: String) -> String {
        fragile::plain(&text)
    }
}

export!(Dependent);
