//! The conformance suite every [`StateStore`] backend must pass.
//!
//! Backends call [`run_all`] from their own tests with a factory of fresh stores, so the
//! in-memory and RocksDB backends are held to exactly the same semantics.
#![allow(clippy::unwrap_used)]

use crate::{KeyRange, StateStore, StorageError, WriteBatch};

/// Builds a fresh, empty store for one check.
pub type StoreFactory<'a> = &'a dyn Fn() -> Box<dyn StateStore>;

/// Runs every check against stores made by `factory`; panics on the first violation.
pub fn run_all(factory: StoreFactory<'_>) {
    put_get_delete(factory());
    epochs_strictly_increase(factory());
    snapshots_are_stable(factory());
    scans_are_ordered_and_bounded(factory());
    drop_table_removes_only_that_table(factory());
    later_ops_in_a_batch_win(factory());
    last_key_is_the_greatest_in_range(factory());
    the_last_table_scans_to_the_end_of_the_key_space(factory());
}

fn scan_keys(store: &dyn StateStore, table: u32, range: KeyRange) -> Vec<Vec<u8>> {
    let snap = store.snapshot();
    let keys = snap.scan(table, range).unwrap().map(|kv| kv.unwrap().0.to_vec()).collect();
    keys
}

fn put_get_delete(store: Box<dyn StateStore>) {
    assert_eq!(store.committed_epoch(), 0);
    let mut b = WriteBatch::new();
    b.put(1, b"a".to_vec(), b"1".to_vec());
    b.put(1, b"b".to_vec(), b"2".to_vec());
    store.commit(1, b).unwrap();
    let snap = store.snapshot();
    assert_eq!(snap.epoch(), 1);
    assert_eq!(snap.get(1, b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(snap.get(2, b"a").unwrap(), None);
    let mut b = WriteBatch::new();
    b.delete(1, b"a".to_vec());
    b.delete(1, b"missing".to_vec());
    store.commit(2, b).unwrap();
    assert_eq!(store.snapshot().get(1, b"a").unwrap(), None);
    assert_eq!(store.snapshot().get(1, b"b").unwrap().as_deref(), Some(&b"2"[..]));
}

fn epochs_strictly_increase(store: Box<dyn StateStore>) {
    store.commit(5, WriteBatch::new()).unwrap();
    let mut b = WriteBatch::new();
    b.put(1, b"k".to_vec(), b"v".to_vec());
    match store.commit(5, b.clone()) {
        Err(StorageError::EpochOutOfOrder { committed: 5, attempted: 5 }) => {}
        other => panic!("repeating an epoch must fail, got {other:?}"),
    }
    assert!(store.commit(3, b).is_err());
    assert_eq!(store.committed_epoch(), 5);
    assert_eq!(store.snapshot().get(1, b"k").unwrap(), None, "a refused batch must not apply");
}

fn snapshots_are_stable(store: Box<dyn StateStore>) {
    let mut b = WriteBatch::new();
    b.put(1, b"k".to_vec(), b"old".to_vec());
    store.commit(1, b).unwrap();
    let before = store.snapshot();
    let mut b = WriteBatch::new();
    b.put(1, b"k".to_vec(), b"new".to_vec());
    b.put(1, b"k2".to_vec(), b"x".to_vec());
    store.commit(2, b).unwrap();
    assert_eq!(before.epoch(), 1);
    assert_eq!(before.get(1, b"k").unwrap().as_deref(), Some(&b"old"[..]));
    assert_eq!(before.scan(1, KeyRange::all()).unwrap().count(), 1);
    assert_eq!(store.snapshot().get(1, b"k").unwrap().as_deref(), Some(&b"new"[..]));
}

fn scans_are_ordered_and_bounded(store: Box<dyn StateStore>) {
    let mut b = WriteBatch::new();
    for k in [&b"b1"[..], b"a", b"b", b"b\xff", b"c", b"b2"] {
        b.put(7, k.to_vec(), b"v".to_vec());
    }
    b.put(8, b"b1".to_vec(), b"other table".to_vec());
    store.commit(1, b).unwrap();
    let all = scan_keys(store.as_ref(), 7, KeyRange::all());
    assert_eq!(all, vec![b"a".to_vec(), b"b".to_vec(), b"b1".to_vec(), b"b2".to_vec(), b"b\xff".to_vec(), b"c".to_vec()]);
    let with_b = scan_keys(store.as_ref(), 7, KeyRange::prefix(b"b"));
    assert_eq!(with_b.len(), 4);
    assert!(with_b.iter().all(|k| k.starts_with(b"b")));
    let range = KeyRange {
        start: std::ops::Bound::Excluded(b"a".to_vec()),
        end: std::ops::Bound::Included(b"b1".to_vec()),
    };
    assert_eq!(scan_keys(store.as_ref(), 7, range), vec![b"b".to_vec(), b"b1".to_vec()]);
    assert!(scan_keys(store.as_ref(), 99, KeyRange::all()).is_empty());
}

fn drop_table_removes_only_that_table(store: Box<dyn StateStore>) {
    let mut b = WriteBatch::new();
    b.put(1, b"a".to_vec(), b"1".to_vec());
    b.put(2, b"a".to_vec(), b"2".to_vec());
    store.commit(1, b).unwrap();
    let mut b = WriteBatch::new();
    b.drop_table(1);
    store.commit(2, b).unwrap();
    assert!(scan_keys(store.as_ref(), 1, KeyRange::all()).is_empty());
    assert_eq!(scan_keys(store.as_ref(), 2, KeyRange::all()).len(), 1);
}

fn later_ops_in_a_batch_win(store: Box<dyn StateStore>) {
    let mut b = WriteBatch::new();
    b.put(1, b"a".to_vec(), b"1".to_vec());
    b.put(1, b"a".to_vec(), b"2".to_vec());
    b.put(1, b"gone".to_vec(), b"x".to_vec());
    b.delete(1, b"gone".to_vec());
    b.put(2, b"old".to_vec(), b"x".to_vec());
    b.drop_table(2);
    b.put(2, b"new".to_vec(), b"y".to_vec());
    store.commit(1, b).unwrap();
    let snap = store.snapshot();
    assert_eq!(snap.get(1, b"a").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(snap.get(1, b"gone").unwrap(), None);
    assert_eq!(scan_keys(store.as_ref(), 2, KeyRange::all()), vec![b"new".to_vec()]);
}

fn last_key_is_the_greatest_in_range(store: Box<dyn StateStore>) {
    let mut b = WriteBatch::new();
    for k in [&b"a"[..], b"b", b"b1", b"b\xff", b"c"] {
        b.put(7, k.to_vec(), b"v".to_vec());
    }
    b.put(8, b"z".to_vec(), b"other table".to_vec());
    b.put(6, b"zz".to_vec(), b"other table".to_vec());
    store.commit(1, b).unwrap();
    let mut b = WriteBatch::new();
    b.delete(7, b"c".to_vec());
    store.commit(2, b).unwrap();
    let snap = store.snapshot();
    let last = |range: KeyRange| snap.last_key(7, range).unwrap().map(|k| k.to_vec());
    assert_eq!(last(KeyRange::all()), Some(b"b\xff".to_vec()), "a deleted key is not the last");
    assert_eq!(last(KeyRange::prefix(b"b")), Some(b"b\xff".to_vec()));
    assert_eq!(last(KeyRange::prefix(b"a")), Some(b"a".to_vec()));
    assert_eq!(last(KeyRange::prefix(b"d")), None);
    let below_b1 = KeyRange { start: std::ops::Bound::Unbounded, end: std::ops::Bound::Excluded(b"b1".to_vec()) };
    assert_eq!(last(below_b1), Some(b"b".to_vec()));
    let through_b1 = KeyRange { start: std::ops::Bound::Excluded(b"a".to_vec()), end: std::ops::Bound::Included(b"b1".to_vec()) };
    assert_eq!(last(through_b1), Some(b"b1".to_vec()));
    let only_a_excluded = KeyRange { start: std::ops::Bound::Excluded(b"a".to_vec()), end: std::ops::Bound::Excluded(b"b".to_vec()) };
    assert_eq!(last(only_a_excluded), None);
    assert_eq!(snap.last_key(99, KeyRange::all()).unwrap(), None);
    assert_eq!(snap.last_key(u32::MAX, KeyRange::all()).unwrap(), None);
}

/// The last table id has no next table to bound its keys: a scan of it still reads every key,
/// those starting with 0xff bytes included, and an inclusive end still includes its key.
fn the_last_table_scans_to_the_end_of_the_key_space(store: Box<dyn StateStore>) {
    let mut b = WriteBatch::new();
    for k in [&b"a"[..], b"\xff", b"\xff\xff\x01"] {
        b.put(u32::MAX, k.to_vec(), b"v".to_vec());
    }
    b.put(u32::MAX - 1, b"\xff".to_vec(), b"other table".to_vec());
    store.commit(1, b).unwrap();
    let all = vec![b"a".to_vec(), b"\xff".to_vec(), b"\xff\xff\x01".to_vec()];
    assert_eq!(scan_keys(store.as_ref(), u32::MAX, KeyRange::all()), all);
    assert_eq!(scan_keys(store.as_ref(), u32::MAX - 1, KeyRange::all()), vec![b"\xff".to_vec()]);
    let through_ff = KeyRange { start: std::ops::Bound::Excluded(b"a".to_vec()), end: std::ops::Bound::Included(b"\xff".to_vec()) };
    assert_eq!(scan_keys(store.as_ref(), u32::MAX, through_ff), vec![b"\xff".to_vec()]);
    assert_eq!(store.snapshot().last_key(u32::MAX, KeyRange::all()).unwrap(), Some(bytes::Bytes::from_static(b"\xff\xff\x01")));
}
