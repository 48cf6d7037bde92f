//! Keeping files that compaction or retention removed from the list until no query can still
//! be reading them.
//!
//! A query lists its files as of its statement's snapshot; a commit after that may retire
//! some of them (merged into a larger file, or past retention). Every scan plan holds a
//! [`ScanPin`] with the time it was planned, and a retired file is deleted only when both a
//! grace period has passed since it was retired (covering the moment between a statement's
//! snapshot and its scan being planned) and no plan made before the end of that period is
//! still alive. After a crash no query is running, and the start-up cleanup deletes every
//! unlisted file.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a retired file stays at least.
pub const DELETE_GRACE: Duration = Duration::from_secs(10);

/// The live scan plans, by when they were planned.
#[derive(Debug, Default)]
pub struct ScanPins {
    next: AtomicU64,
    live: Mutex<BTreeMap<u64, Instant>>,
}

/// A scan plan's hold on the files it lists; released when dropped.
#[derive(Debug)]
pub struct ScanPin {
    pins: Arc<ScanPins>,
    id: u64,
}

impl Drop for ScanPin {
    fn drop(&mut self) {
        self.pins.live.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

impl ScanPins {
    /// Pins for a scan planned now.
    pub fn pin(self: &Arc<Self>) -> ScanPin {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.live.lock().unwrap_or_else(|p| p.into_inner()).insert(id, Instant::now());
        ScanPin { pins: Arc::clone(self), id }
    }

    /// Whether a file retired at `retired` may be deleted `now`.
    pub fn may_delete(&self, retired: Instant, now: Instant) -> bool {
        let settled = retired + DELETE_GRACE;
        now >= settled && self.live.lock().unwrap_or_else(|p| p.into_inner()).values().all(|planned| *planned >= settled)
    }
}

/// Retired files waiting to be deleted, with when they were retired.
#[derive(Debug, Default)]
pub struct Retired {
    files: Vec<(Instant, String)>,
}

impl Retired {
    /// Retires `paths` now.
    pub fn add(&mut self, paths: impl IntoIterator<Item = String>) {
        let now = Instant::now();
        self.files.extend(paths.into_iter().map(|p| (now, p)));
    }

    /// Takes the files that may be deleted now.
    pub fn due(&mut self, pins: &ScanPins) -> Vec<String> {
        let now = Instant::now();
        let (due, keep): (Vec<_>, Vec<_>) = self.files.drain(..).partition(|(at, _)| pins.may_delete(*at, now));
        self.files = keep;
        due.into_iter().map(|(_, p)| p).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retired_file_outlives_the_grace_and_every_older_scan() {
        let pins = Arc::new(ScanPins::default());
        let retired = Instant::now();
        let old_scan = pins.pin();
        assert!(!pins.may_delete(retired, retired), "within the grace period");
        let later = retired + DELETE_GRACE + Duration::from_millis(1);
        assert!(!pins.may_delete(retired, later), "a scan planned before the end of the grace is alive");
        drop(old_scan);
        assert!(pins.may_delete(retired, later));
    }
}
