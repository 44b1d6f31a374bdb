//! What the benches share: how fast the machine is right now, medians.

// Each bench uses a part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Blocks of 64 KiB hashed per second on each of `threads` threads at once.
pub fn hash_rate(threads: usize) -> f64 {
    let window = Duration::from_millis(400);
    let block = vec![7u8; 64 * 1024];
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let end = Instant::now() + window;
                    let mut n = 0u64;
                    while Instant::now() < end {
                        std::hint::black_box(blake3::hash(std::hint::black_box(&block)));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or(0))
            .sum::<u64>() as f64
            / window.as_secs_f64()
    })
}

/// `machine.two_core_speedup`: how much two threads of CPU-bound work get
/// done together over one alone. The two virtual cores here are at times
/// two hyperthreads of one physical core (about 1.1) and at times two
/// cores (about 2); multi-threaded figures follow it, so benches print it
/// beside them.
pub fn two_core_speedup() -> f64 {
    let alone = hash_rate(1);
    hash_rate(2) / alone
}

/// The median of `values` (0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}
