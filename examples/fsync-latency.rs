//! The victim of berth's IO isolation benchmark (tests/bench/io-isolation): appends 4 KiB to a
//! file and fsyncs after each write, for a number of writes or seconds, then prints the fsync
//! latencies' count, p50, p99 and max in milliseconds, one `key=value` per field.
//!   fsync-latency FILE [MAX_WRITES] [MAX_SECONDS]

use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: fsync-latency FILE [MAX_WRITES] [MAX_SECONDS]"))?;
    let max_writes: usize = args.next().map_or(Ok(200), |a| a.parse())?;
    let max_time = Duration::from_secs(args.next().map_or(Ok(30), |a| a.parse())?);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let block = [0x5au8; 4096];
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(max_writes);
    while latencies.len() < max_writes && start.elapsed() < max_time {
        file.write_all(&block)?;
        let before = Instant::now();
        file.sync_all()?;
        latencies.push(before.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies.get(index).copied().unwrap_or(0.0)
    };
    println!(
        "count={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1}",
        latencies.len(),
        at(0.50),
        at(0.99),
        latencies.last().copied().unwrap_or(0.0)
    );
    Ok(())
}
