//! `audit`: an event subscriber. It handles the events `steedos.toml`
//! subscribes it to (`order.*` in the shop app), logs each one and keeps the
//! last 100 in memory, per instance, for `audit.recent`.

steedos_sdk::generate!({
    path: ["../../../../wit", "wit"],
    world: "acme:audit/audit",
});

use std::cell::RefCell;
use std::collections::VecDeque;

use serde::Deserialize;
use steedos_sdk::CallContext;

use exports::acme::audit::log::{Entry, Guest as LogGuest};
use exports::steedos::package::events::Guest as EventsGuest;
use exports::steedos::package::lifecycle::Guest as LifecycleGuest;

const KEEP: usize = 100;

thread_local! {
    static RECENT: RefCell<VecDeque<Entry>> = const { RefCell::new(VecDeque::new()) };
}

/// The part of `shop`'s `order.placed` payload a summary shows.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct OrderPlaced {
    order_id: u64,
    total_cents: u64,
    lines: Vec<serde::de::IgnoredAny>,
}

fn summarize(event: &str, payload: &[u8]) -> String {
    match (event, steedos_sdk::decode::<OrderPlaced>(payload)) {
        ("order.placed", Ok(o)) => format!(
            "order {}: {} line(s), {} cents",
            o.order_id,
            o.lines.len(),
            o.total_cents
        ),
        _ => format!("{} byte payload", payload.len()),
    }
}

struct Audit;

impl EventsGuest for Audit {
    fn handle(event: String, payload: Vec<u8>, ctx: CallContext) {
        let summary = summarize(&event, &payload);
        steedos_sdk::info!("{event} [{}]: {summary}", ctx.request_id);
        RECENT.with_borrow_mut(|recent| {
            if recent.len() == KEEP {
                recent.pop_front();
            }
            recent.push_back(Entry {
                event,
                request_id: ctx.request_id,
                summary,
            });
        });
    }
}

impl LogGuest for Audit {
    fn recent() -> Vec<Entry> {
        RECENT.with_borrow(|recent| recent.iter().cloned().collect())
    }
}

impl LifecycleGuest for Audit {
    fn started() -> Result<(), String> {
        steedos_sdk::info!("audit started, keeping the last {KEEP} events");
        Ok(())
    }

    fn stopped() {
        steedos_sdk::info!("audit stopped");
    }
}

export!(Audit);
