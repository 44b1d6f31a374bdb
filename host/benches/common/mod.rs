//! What the benches share: how fast the machine is right now, medians.

// Each bench uses a part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Blocks of 64 KiB hashed per second by `threads` threads at once, each
/// hashing the same number of blocks: the best of a few tries, and timed
/// as a whole, so that a thread the scheduler left waiting for a while
/// slows a try (which the best of them discounts) rather than counting
/// as a thread that did no work.
pub fn hash_rate(threads: usize) -> f64 {
    const BLOCKS: u64 = 400;
    const TRIES: usize = 5;
    let block = vec![7u8; 64 * 1024];
    (0..TRIES)
        .map(|_| {
            let began = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| {
                        for _ in 0..BLOCKS {
                            std::hint::black_box(blake3::hash(std::hint::black_box(&block)));
                        }
                    });
                }
            });
            (BLOCKS * threads as u64) as f64 / began.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
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

/// A child process killed (and reaped) when dropped: a server a bench starts.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A redis-server at `bin` on a free port of 127.0.0.1, without
/// persistence, once it accepts connections; and its port.
pub async fn redis_server(bin: &std::path::Path) -> anyhow::Result<(Killed, u16)> {
    use std::process::{Command, Stdio};
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Killed(
        Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_for_port(port, "redis-server").await?;
    Ok((child, port))
}

/// Waits (up to 10 s) until `what` accepts connections on 127.0.0.1:`port`.
pub async fn wait_for_port(port: u16, what: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "{what} did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Runs a bench's `run` on the two-worker runtime every bench uses.
pub fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(run: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run)
}

/// Requests per second `wrk` (two threads, `connections` connections, for
/// `seconds`) reached at `url` with the Lua `script`; an error when any
/// answer was not 2xx or the output cannot be read.
pub fn wrk(
    url: &str,
    script: &std::path::Path,
    connections: u32,
    seconds: u32,
) -> anyhow::Result<f64> {
    let out = std::process::Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        !text.contains("Non-2xx"),
        "wrk saw errors at {url}:\n{text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("cannot read wrk's output:\n{text}"))
}
