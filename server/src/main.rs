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

fn main() -> std::process::ExitCode {
    sluice_server::cli::main()
}
