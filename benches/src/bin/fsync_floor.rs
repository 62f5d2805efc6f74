//! The machine's fsync floor: append a small record to a file and fdatasync it, N times, in the
//! directory the store would use. Every durable write of a single client costs at least this.
//! Then the same in redb, as the Raft log writes it: one 512 B row inserted and committed
//! durably per transaction.

use std::io::Write;
use std::time::Instant;

use shoal_benches::{Summary, micros};

/// Times `iterations` calls of `step` (given the call's number) and prints their percentiles.
fn measure(what: &str, iterations: usize, mut step: impl FnMut(u64) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut samples = Vec::with_capacity(iterations);
    for index in 0..iterations as u64 {
        let start = Instant::now();
        step(index)?;
        samples.push(start.elapsed());
    }
    let summary = Summary::of(samples);
    println!("{what}, {} runs): p50 {}, p99 {}, max {}", summary.count, micros(summary.p50), micros(summary.p99), micros(summary.max));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let directory = std::env::args().nth(1).unwrap_or_else(|| ".".into());
    let iterations: usize = std::env::args().nth(2).and_then(|n| n.parse().ok()).unwrap_or(2000);
    let record = [0x5au8; 512];

    let path = std::path::Path::new(&directory).join("fsync-floor.tmp");
    let mut file = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
    measure("fsync floor (512 B append + fdatasync", iterations, |_| {
        file.write_all(&record)?;
        Ok(file.sync_data()?)
    })?;
    drop(file);
    std::fs::remove_file(&path)?;

    let path = std::path::Path::new(&directory).join("redb-floor.tmp");
    let database = redb::Database::create(&path)?;
    let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("floor");
    measure("redb commit (one 512 B row, durable", iterations, |index| {
        let write = database.begin_write()?;
        write.open_table(table)?.insert(index, record.as_slice())?;
        Ok(write.commit()?)
    })?;
    drop(database);
    std::fs::remove_file(&path)?;
    Ok(())
}
