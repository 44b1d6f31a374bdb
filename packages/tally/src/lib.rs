//! `tally`: records `(event, instance)` pairs for tests to read back.

steedos_sdk::generate!({
    path: ["../../wit", "wit"],
    world: "test:tally/tally-package",
});

use std::cell::RefCell;

use exports::test::tally::tally::Guest;

thread_local! {
    static ENTRIES: RefCell<Vec<(String, u64)>> = const { RefCell::new(Vec::new()) };
}

struct Tally;

impl Guest for Tally {
    fn record(event: String, instance: u64) {
        ENTRIES.with_borrow_mut(|e| e.push((event, instance)));
    }

    fn entries() -> Vec<(String, u64)> {
        ENTRIES.with_borrow(|e| e.clone())
    }

    fn reset() {
        ENTRIES.with_borrow_mut(Vec::clear);
    }
}

export!(Tally);
