//! The `sluice` binary; everything lives in the library's `cli` module so that test harnesses can
//! build the very same command.

/// mimalloc instead of the system allocator: operators allocate and free many small buffers per
/// row and per group, and glibc's malloc spent a quarter of an aggregate's time consolidating
/// free chunks (measured with `perf record`, see BENCHMARKS.md). Its `override` feature also
/// makes it the C allocator, so RocksDB's C++ allocations share its heap: glibc's per-thread
/// arenas held 60–80 MB of freed memory beside RocksDB's live data (BENCHMARKS.md, durable
/// state). The `mimalloc` feature (default) turns both on.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long mimalloc keeps freed pages before giving them back to the system, in
/// milliseconds, unless `MIMALLOC_PURGE_DELAY` says otherwise.
///
/// Why: mimalloc's default is a second, and each checkpoint frees its write batches at once,
/// so for a second the process holds an epoch's memory twice; with `--memory-limit` that was
/// the difference between peaks over and under the limit (BENCHMARKS.md, "Memory limit").
/// 100 ms gave the same throughput; 0 cost up to 10%.
#[cfg(feature = "mimalloc")]
const PURGE_DELAY_MS: &str = "100";

/// Sets [`PURGE_DELAY_MS`] and runs this binary again, if the environment does not set it.
///
/// mimalloc reads its options from the environment once, when the process starts, before
/// `main`; setting one from the program takes an `unsafe` call by the option's number, which
/// the workspace forbids. `exec` keeps the process id, arguments and open descriptors, so
/// nothing outside sees a difference. If `exec` fails, the server runs with mimalloc's default.
#[cfg(all(feature = "mimalloc", unix))]
fn exec_with_purge_delay() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let error = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("MIMALLOC_PURGE_DELAY", PURGE_DELAY_MS)
        .exec();
    eprintln!("note: could not restart with MIMALLOC_PURGE_DELAY={PURGE_DELAY_MS} ({error}); going on with mimalloc's default");
}

fn main() -> std::process::ExitCode {
    #[cfg(all(feature = "mimalloc", unix))]
    exec_with_purge_delay();
    sluice_server::cli::main()
}
