//! `rogue`: a hostile package for the host's tests. Each action or hook
//! does one thing an attacker would try against the broker (a call from
//! `started`, an event flood, a self-amplifying event chain, a log flood),
//! and reports what came back so a test can assert on it from outside.

steedos_sdk::generate!({
    path: ["../../wit", "wit"],
    world: "test:rogue/rogue-package",
});

use std::io::Write as _;
use std::sync::Mutex;

use serde::Serialize;
use steedos_sdk::CallContext;
use steedos_sdk::wit::broker;

use exports::steedos::package::events::Guest as EventsGuest;
use exports::steedos::package::lifecycle::Guest as LifecycleGuest;
use exports::test::rogue::rogue::Guest as RogueGuest;

static STARTED_OUTCOME: Mutex<String> = Mutex::new(String::new());

/// The parameters of `tally.record`.
#[derive(Serialize)]
struct Record<'a> {
    event: &'a str,
    instance: u64,
}

fn record(event: &str) -> Result<(), String> {
    let params = steedos_sdk::encode(&Record { event, instance: 0 })?;
    broker::call("tally.record", &params)
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

struct Rogue;

impl RogueGuest for Rogue {
    fn started_outcome() -> String {
        let outcome = STARTED_OUTCOME.lock().map(|o| o.clone()).unwrap_or_default();
        if outcome.is_empty() { "none".into() } else { outcome }
    }

    fn emit_many(event: String, count: u32, size: u32) -> u32 {
        let payload = vec![0x5a_u8; size as usize];
        let mut sent = 0;
        for _ in 0..count {
            broker::emit(&event, &payload);
            sent += 1;
        }
        sent
    }

    fn log(message: String, times: u32) {
        for _ in 0..times {
            steedos_sdk::info!("{message}");
        }
    }

    fn spew(bytes: u64) {
        let mut line = vec![b'y'; 1023];
        line.push(b'\n');
        let mut out = std::io::stdout().lock();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(line.len() as u64) as usize;
            if out.write_all(&line[..n]).is_err() {
                return;
            }
            left -= n as u64;
        }
        let _ = out.flush();
    }

    fn crash() {
        panic!("rogue crashes on purpose");
    }
}

impl EventsGuest for Rogue {
    fn handle(event: String, payload: Vec<u8>, _ctx: CallContext) {
        if event.starts_with("chain.") {
            let _ = record(&event);
            broker::emit(&event, &payload);
            broker::emit(&event, &payload);
            return;
        }
        let ms: u64 = std::env::var("ROGUE_HANDLE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        if let Err(e) = record(&event) {
            steedos_sdk::warn!("tally.record for `{event}` failed: {e}");
        }
    }
}

impl LifecycleGuest for Rogue {
    fn started() -> Result<(), String> {
        // `tally` may still be starting beside it: wait for it, not for a grant.
        let mut outcome = record("started");
        for _ in 0..200 {
            match &outcome {
                Err(e) if e.starts_with("NotFound") => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    outcome = record("started");
                }
                _ => break,
            }
        }
        let outcome = match outcome {
            Ok(()) => "ok".to_string(),
            Err(e) => e,
        };
        if let Ok(mut o) = STARTED_OUTCOME.lock() {
            *o = outcome;
        }
        Ok(())
    }

    fn stopped() {}
}

export!(Rogue);
