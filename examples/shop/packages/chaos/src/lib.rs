//! `chaos`: faults on demand (panic, trap, endless loop, memory exhaustion,
//! stack overflow, a huge reply), so that the host's containment can be
//! seen and tested.

steedos_sdk::generate!({
    path: ["../../../../wit", "wit"],
    world: "acme:chaos/chaos",
});

use std::hint::black_box;

use exports::acme::chaos::faults::Guest;

const MIB: usize = 1 << 20;
const PAGE: usize = 64 << 10;

struct Chaos;

impl Guest for Chaos {
    fn ok() -> String {
        "alive".to_string()
    }

    fn crash() -> String {
        panic!("chaos.crash: panicking on purpose")
    }

    fn maybe_crash(crash: bool) -> String {
        match crash {
            true => panic!("chaos.maybe-crash: panicking on purpose"),
            false => "alive".to_string(),
        }
    }

    fn trap() {
        core::arch::wasm32::unreachable()
    }

    fn spin() {
        let mut n = 0u64;
        loop {
            n = black_box(n.wrapping_add(1));
        }
    }

    fn oom() -> u64 {
        let mut held: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut block = Vec::new();
            if block.try_reserve_exact(MIB).is_err() || held.try_reserve(1).is_err() {
                break;
            }
            block.resize(MIB, 0);
            // Touch every page so the memory is really used.
            for i in (0..MIB).step_by(PAGE) {
                block[i] = black_box(1);
            }
            held.push(block);
        }
        black_box(&held);
        held.len() as u64
    }

    fn deep(n: u32) -> u32 {
        descend(n)
    }

    fn flood(count: u32, size: u32) -> u32 {
        let payload = vec![0x5a_u8; size as usize];
        for _ in 0..count {
            steedos_sdk::wit::broker::emit("order.flood", &payload);
        }
        count
    }

    fn huge(mib: u32) -> Vec<u8> {
        vec![0xa5; (mib as usize).saturating_mul(MIB)]
    }
}

/// One level per call, with a 1 KiB frame the optimizer must keep.
#[inline(never)]
fn descend(n: u32) -> u32 {
    if n == 0 {
        return 0;
    }
    let frame = black_box([0u8; 1024]);
    let below = descend(black_box(n - 1));
    black_box(&frame);
    below + 1
}

export!(Chaos);
