//! `statuses`: fails with an error value naming an HTTP status, so a test
//! can pin the gateway's use of it; divides, so a test can meet the floats
//! JSON has no number for.

steedos_sdk::generate!({
    path: ["../../wit", "wit"],
    world: "test:statuses/statuses-package",
});

use exports::test::statuses::statuses::{Guest, Problem};

struct Statuses;

impl Guest for Statuses {
    fn refuse(status: u32, message: String) -> Result<String, Problem> {
        Err(Problem { status, message })
    }

    fn ratio(a: f64, b: f64) -> f64 {
        a / b
    }
}

export!(Statuses);
