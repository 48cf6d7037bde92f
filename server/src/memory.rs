//! The memory governor: keeps the process's resident memory under `--memory-limit` by
//! resizing the two shares that can shrink — RocksDB's cache and the epoch's dirty state.
//!
//! Why a feedback loop on top of [`MemoryBudget`]'s fixed shares: the shares bound what each
//! part *holds*, but the process's resident memory also counts what the allocator keeps after
//! a free (mimalloc returns freed pages to the system after a delay), the binary itself, and
//! queries; none of these has a share, and how much they take depends on the workload. The
//! governor measures what the shares cannot see — the resident set — and, while it is over
//! the limit, takes the difference out of the cache (evicted blocks are freed) and shortens
//! epochs; once well under, it gives the shares back. RisingWave's memory manager works the
//! same way, from jemalloc's statistics.

use std::sync::Arc;
use std::time::Duration;

use sluice_engine::Dataflow;
use sluice_storage::StateStore;

use crate::MemoryBudget;

/// The smallest `--memory-limit` measured to hold (BENCHMARKS.md, "Memory limit"): 512 MB
/// holds with state five times over it, 256 MB does not (peaks near 300 MB). The process's
/// fixed part (binary, runtime, threads) is about 100 MB, and the shares' floors and a
/// checkpoint's commit need the rest. Smaller limits are accepted (tests use them to make
/// state outgrow memory cheaply) with a warning at start-up: state and epochs stay bounded by
/// their shares, the resident set does not stay under the limit.
pub const SMALLEST_HELD_LIMIT: usize = 512 << 20;

/// How often the governor reads the resident set. Reading `/proc/self/status` costs tens of
/// microseconds; at 500 ms the resident set rose past the limit between two readings.
pub const GOVERNOR_PERIOD: Duration = Duration::from_millis(100);

/// The sizes the governor gives the two shares, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shares {
    /// RocksDB's block cache (memtables are charged to it).
    pub cache: usize,
    /// [`sluice_sql::DataflowConfig::epoch_memory_limit`].
    pub epoch: usize,
}

/// Decides the shares from the resident set (see the module doc). Pure: the loop that reads
/// the resident set and applies the shares is [`spawn`].
#[derive(Debug, Clone)]
pub struct MemoryGovernor {
    limit: usize,
    full: Shares,
    floor: Shares,
    current: Shares,
    /// Readings left to skip after a shrink (see [`SETTLE_READINGS`]).
    settling: u32,
}

/// Readings the governor lets pass after it shrinks the shares before it may shrink again:
/// memory freed by the shrink (evicted blocks, flushed memtables) leaves the resident set only
/// after mimalloc's purge delay (100 ms, set by `main`), so the next reading would still show
/// the excess, and the same excess would be taken again, driving the shares to their floors.
pub const SETTLE_READINGS: u32 = 2;

impl MemoryGovernor {
    /// A governor for a process limit of `limit` bytes, starting from (and never growing past)
    /// the shares of `budget`.
    pub fn new(limit: usize, budget: MemoryBudget) -> Self {
        let full = Shares { cache: budget.state_store, epoch: budget.epoch };
        // Below these the cache thrashes and epochs commit every few rows, for little memory.
        let floor = Shares { cache: (full.cache / 8).max(8 << 20).min(full.cache), epoch: (full.epoch / 8).max(1 << 20).min(full.epoch) };
        Self { limit, full, floor, current: full, settling: 0 }
    }

    /// The shares now.
    pub fn shares(&self) -> Shares {
        self.current
    }

    /// The high and low marks for the current shares, in bytes of resident set.
    ///
    /// The high mark leaves room under the limit for what grows between two readings, the
    /// larger of a tenth of the limit and two epochs' shares: a checkpoint's commit holds the
    /// epoch's writes twice more for a moment (RocksDB's write batch and its memtable) on top
    /// of what the reading saw, and those spikes, not the level, are what passed the limit
    /// (BENCHMARKS.md, "Memory limit"). The low mark is an eighth of the limit below it.
    pub fn marks(&self) -> (usize, usize) {
        let reserve = (self.limit / 10).max(2 * self.current.epoch);
        let high = self.limit.saturating_sub(reserve);
        (high, high.saturating_sub(self.limit / 8))
    }

    /// The shares to apply when the process is `resident` bytes and the cache holds
    /// `cache_used` bytes ([`StateStore::cache_usage`]; None: the store does not say). Over the high mark (see
    /// [`MemoryGovernor::marks`]), the excess comes out of the cache and the epoch's share
    /// halves, after which [`SETTLE_READINGS`] readings pass before the next shrink. The cache
    /// gives up the excess out of what it holds when that is below its share: a cache still
    /// filling (at start, in a flood) would otherwise lose part of its unused share, free
    /// nothing, and go on growing. Under the low mark, the cache grows back by a 128th of its
    /// full size (or what is left below the mark) and the epoch's share by a 32nd — at
    /// [`GOVERNOR_PERIOD`], about 8% of the full cache and a third more epoch per second, so
    /// that growth does not overshoot. In between, nothing changes, so the loop settles
    /// instead of oscillating.
    pub fn adjust(&mut self, resident: usize, cache_used: Option<usize>) -> Shares {
        let (high, low) = self.marks();
        let Shares { cache, epoch } = self.current;
        if self.settling > 0 {
            self.settling -= 1;
            if resident > high {
                return self.current;
            }
        }
        self.current = if resident > high {
            self.settling = SETTLE_READINGS;
            let held = cache_used.map_or(cache, |used| used.min(cache));
            Shares { cache: held.saturating_sub(resident - high).max(self.floor.cache), epoch: (epoch / 2).max(self.floor.epoch) }
        } else if resident < low {
            let step = (self.full.cache / 128).min(low - resident);
            Shares { cache: (cache + step).min(self.full.cache), epoch: (epoch + epoch / 32).min(self.full.epoch) }
        } else {
            self.current
        };
        self.current
    }
}

/// The process's resident set in bytes (`VmRSS`; Linux only).
pub fn resident_bytes() -> Option<usize> {
    process_status_bytes("VmRSS")
}

/// The process's peak resident set so far in bytes (`VmHWM`; Linux only).
pub fn peak_resident_bytes() -> Option<usize> {
    process_status_bytes("VmHWM")
}

/// A size field of `/proc/self/status` (given in kB there), in bytes.
fn process_status_bytes(field: &str) -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb << 10)
}

/// Runs the governor for `store` and `dataflow` every [`GOVERNOR_PERIOD`] until the returned
/// task is aborted. Without `/proc` (not Linux) it logs that once and stops: the fixed shares
/// still apply.
pub fn spawn(limit: usize, budget: MemoryBudget, store: Arc<dyn StateStore>, dataflow: Dataflow) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut governor = MemoryGovernor::new(limit, budget);
        let mut timer = tokio::time::interval(GOVERNOR_PERIOD);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            timer.tick().await;
            let Some(resident) = resident_bytes() else {
                tracing::info!("the resident set cannot be read here: memory stays in its fixed shares");
                return;
            };
            if tracing::enabled!(tracing::Level::TRACE) {
                // What the resident set holds, as far as the store can tell, at each reading.
                let parts: Vec<String> = store.memory_usage().iter().map(|(part, bytes)| format!("{part}={}", bytes >> 20)).collect();
                tracing::trace!(resident_mb = resident >> 20, store_mb = %parts.join(" "), "memory reading");
            }
            let before = governor.shares();
            let after = governor.adjust(resident, store.cache_usage());
            if after != before {
                tracing::debug!(resident, cache = after.cache, epoch = after.epoch, "memory shares adjusted");
                store.set_cache_capacity(after.cache);
                dataflow.set_epoch_memory_limit(after.epoch);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: usize = 1 << 20;

    fn governor() -> MemoryGovernor {
        MemoryGovernor::new(512 * MB, MemoryBudget::of(512 * MB))
    }

    #[test]
    fn over_the_limit_the_excess_comes_out_of_the_cache_and_epochs_shorten() {
        let mut g = governor();
        let full = g.shares();
        // At 512 MB the epoch's share is 32 MB: the high mark leaves two of them, 64 MB, free.
        assert_eq!(g.marks(), (448 * MB, 384 * MB));
        // 600 MB resident against the high mark: the cache gives up the 152 MB.
        let shares = g.adjust(600 * MB, None);
        assert_eq!(shares.cache, full.cache - 152 * MB);
        assert_eq!(shares.epoch, full.epoch / 2);
        // With shorter epochs a tenth of the limit is the larger reserve.
        assert_eq!(g.marks(), (512 * MB - 512 * MB / 10, 512 * MB - 512 * MB / 10 - 64 * MB));
        // However far over and for however long, never below the floors.
        for _ in 0..10 {
            g.adjust(10_000 * MB, None);
        }
        assert_eq!(g.shares(), Shares { cache: full.cache / 8, epoch: full.epoch / 8 });
    }

    #[test]
    fn between_the_marks_nothing_changes_and_under_them_the_shares_grow_back_to_full() {
        let mut g = governor();
        let full = g.shares();
        let shrunk = g.adjust(700 * MB, None);
        assert_eq!(g.adjust(420 * MB, None), shrunk, "420 MB is between the marks");
        let mut grown = shrunk;
        for _ in 0..256 {
            grown = g.adjust(100 * MB, None);
        }
        assert_eq!(grown, full);
        // Growing never passes full.
        assert_eq!(g.adjust(0, None), full);
    }

    #[test]
    fn after_a_shrink_the_excess_is_not_taken_again_until_the_memory_could_leave() {
        let mut g = governor();
        let first = g.adjust(500 * MB, None);
        // The freed memory has not left the resident set yet: the same reading changes nothing.
        for _ in 0..SETTLE_READINGS {
            assert_eq!(g.adjust(500 * MB, None), first);
        }
        // Still over afterwards: the excess left now comes out.
        let second = g.adjust(500 * MB, None);
        assert!(second.cache < first.cache && second.epoch < first.epoch, "{second:?} after {first:?}");
    }

    /// A cache still filling gives up the excess out of what it holds, not out of its unused
    /// share (which would free nothing and let it grow on).
    #[test]
    fn a_cache_below_its_share_shrinks_from_what_it_holds() {
        let mut g = governor();
        let full = g.shares();
        // 100 MB over the high mark while the cache holds 150 MB of its 256 MB share.
        assert_eq!(g.adjust(548 * MB, Some(150 * MB)).cache, 50 * MB);
        // Never below the floor (an eighth of the share) either.
        let mut g = governor();
        assert_eq!(g.adjust(548 * MB, Some(120 * MB)).cache, full.cache / 8);
        // A store that says nothing, or a full cache, shrinks from the share as before.
        let mut g = governor();
        assert_eq!(g.adjust(548 * MB, None).cache, full.cache - 100 * MB);
        let mut g = governor();
        assert_eq!(g.adjust(548 * MB, Some(full.cache + 10 * MB)).cache, full.cache - 100 * MB);
    }

    #[test]
    fn growth_stops_at_the_low_mark() {
        let mut g = governor();
        let shrunk = g.adjust(10_000 * MB, None);
        // With the epoch's share halved, a tenth of the limit is the reserve: the low mark is
        // 512 - 51.2 - 64 MB.
        let (_, low) = g.marks();
        assert_eq!(low, 512 * MB - 512 * MB / 10 - 64 * MB);
        // Half a megabyte under it there is less than one MB to grow into.
        let grown = g.adjust(low - MB / 2, None);
        assert!(grown.cache - shrunk.cache < MB, "{grown:?} from {shrunk:?}");
    }

    #[test]
    fn the_resident_set_is_read() {
        if cfg!(target_os = "linux") {
            let (now, peak) = (resident_bytes().unwrap_or(0), peak_resident_bytes().unwrap_or(0));
            assert!(now > 0 && peak >= now, "VmRSS {now}, VmHWM {peak}");
        }
    }
}
