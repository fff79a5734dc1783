//! The timer wheel that holds every waiting queue item.
//!
//! A waiting item is a row here, not a timer and not an actor (DESIGN.md section 3): the
//! QueueManager keeps one `TimerWheel`, asks it what is due, and sleeps until
//! [`TimerWheel::next_due`]. Haraka's equivalent is `outbound/timer_queue.js`, a sorted array
//! ticked once a second; `drain()` on SIGHUP and `discard(id)` map to [`TimerWheel::drain_all`]
//! / [`TimerWheel::reschedule_all`] and [`TimerWheel::remove`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::time::Duration;

/// One waiting item.
#[derive(Debug, Clone)]
struct Row<K> {
    key: K,
    due: u64,
    /// 0, or for an item moved by a flush its due time before the flush, so flushed items
    /// keep their old order among themselves without a sort.
    rank: u64,
    /// Taken from a counter at each schedule: breaks ties between equal due times (FIFO)
    /// and tells a live heap entry from a stale one.
    seq: u64,
}

/// A heap entry: `(due, rank, seq, slot)`, smallest first.
type Entry = Reverse<(u64, u64, u64, u32)>;

/// Every waiting queue item, ordered by due time, each found again by its key.
///
/// # Shape: a binary heap with lazy deletion, not a hierarchical wheel or a B-tree
///
/// Rows live in a slab (`Vec<Option<Row>>` plus a free list); a `HashMap<K, slot>` finds a
/// row by key; a `BinaryHeap` of `(due, rank, seq, slot)` orders them. Removing or
/// rescheduling an item only changes its row; its old heap entry goes stale (its `seq` no
/// longer matches) and is skipped when it reaches the top. The heap is rebuilt in one linear
/// pass when stale entries outnumber live ones, so it holds at most about twice the queue.
///
/// - **Exact times, no tick.** A hierarchical wheel rounds due times to its tick and has to
///   be advanced (cascading buckets) even when nothing is due. The heap answers "what is due"
///   and "when is the next one" exactly, so the QueueManager sleeps until
///   [`next_due`](Self::next_due) and never wakes for nothing. Retry delays span 64 s to
///   36 h (Haraka's default schedule); a wheel would need several levels to hold them.
/// - **Cheap rows.** Insert is a slab push, a heap push (O(log n) moves in a flat `Vec`) and
///   a hash insert; removal is O(1). A `BTreeMap<(due, seq), K>` with a key index was the
///   other candidate: with the same index it measured about three times slower to fill with
///   1,000,000 items in a release build (0.7 s against 0.25 s on the 2-core dev machine) and
///   twice as slow unoptimised, because each insert walks and splits tree nodes scattered
///   over memory. Most of what remains is hashing the key (std's SipHash, kept on purpose:
///   keys can carry recipient domains).
/// - **FIFO for equal due times**: `seq` orders items due in the same millisecond by when
///   they were scheduled.
/// - **Flush in linear time**: a flush gives every moved item the new due time and keeps its
///   old one as `rank`, then rebuilds the heap in one pass; no sort of the whole queue.
///
/// Memory is one slab row (key + 24 bytes), one or two heap entries (32 bytes each) and one
/// index entry (key + slot) per item.
#[derive(Debug, Clone)]
pub struct TimerWheel<K> {
    rows: Vec<Option<Row<K>>>,
    free: Vec<u32>,
    index: HashMap<K, u32>,
    heap: BinaryHeap<Entry>,
    next_seq: u64,
}

impl<K: Eq + Hash + Clone> Default for TimerWheel<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone> TimerWheel<K> {
    /// An empty wheel.
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty wheel with room for `n` items (the queue size found at start).
    pub fn with_capacity(n: usize) -> Self {
        TimerWheel {
            rows: Vec::with_capacity(n),
            free: Vec::new(),
            index: HashMap::with_capacity(n),
            heap: BinaryHeap::with_capacity(n),
            next_seq: 0,
        }
    }

    fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    fn is_live(&self, &Reverse((_, _, seq, slot)): &Entry) -> bool {
        matches!(&self.rows[slot as usize], Some(r) if r.seq == seq)
    }

    /// Drop stale entries from the top of the heap, so `peek` is always a live item (this is
    /// what lets [`next_due`](Self::next_due) take `&self`), and rebuild the heap when stale
    /// entries have piled up below the top.
    fn settle(&mut self) {
        while let Some(top) = self.heap.peek() {
            if self.is_live(top) {
                break;
            }
            self.heap.pop();
        }
        if self.heap.len() > 2 * self.index.len() + 1024 {
            self.rebuild_heap();
        }
    }

    fn rebuild_heap(&mut self) {
        let entries: Vec<Entry> = self
            .rows
            .iter()
            .enumerate()
            .filter_map(|(slot, r)| r.as_ref().map(|r| Reverse((r.due, r.rank, r.seq, slot as u32))))
            .collect();
        self.heap = BinaryHeap::from(entries);
    }

    fn free_slot(&mut self, slot: u32) -> Row<K> {
        self.free.push(slot);
        // Callers pass only slots they found live.
        self.rows[slot as usize].take().expect("live slot")
    }

    /// Schedule `key` at `due` (ms since the epoch). A key already present is moved to the new
    /// time (and to the back of the line among items due then); its old due time is returned.
    pub fn insert(&mut self, due: u64, key: K) -> Option<u64> {
        let seq = self.take_seq();
        let row = Some(Row {
            key: key.clone(),
            due,
            rank: 0,
            seq,
        });
        let slot = match self.free.pop() {
            Some(slot) => {
                self.rows[slot as usize] = row;
                slot
            }
            None => {
                self.rows.push(row);
                u32::try_from(self.rows.len() - 1).expect("fewer than 2^32 queue items")
            }
        };
        self.heap.push(Reverse((due, 0, seq, slot)));
        // One hash lookup whether the key is new or not (hashing is most of an insert's cost):
        // a key already waiting gets a new row and its old row is freed, leaving a stale entry.
        let old_slot = self.index.insert(key, slot)?;
        let old = self.free_slot(old_slot);
        self.settle();
        Some(old.due)
    }

    /// Take `key` out of the wheel. False when it was not there.
    pub fn remove(&mut self, key: &K) -> bool {
        match self.index.remove(key) {
            Some(slot) => {
                self.free_slot(slot);
                self.settle();
                true
            }
            None => false,
        }
    }

    /// True when `key` is waiting in the wheel.
    pub fn contains(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    /// When `key` is due, if it is waiting.
    pub fn due_of(&self, key: &K) -> Option<u64> {
        let slot = *self.index.get(key)?;
        self.rows[slot as usize].as_ref().map(|r| r.due)
    }

    /// Remove and return up to `max` items due at or before `now_ms`, earliest first (FIFO
    /// among equal due times). `max` lets the caller take only as many as it has delivery
    /// slots for; the rest stay due and come out on the next call.
    pub fn pop_due(&mut self, now_ms: u64, max: usize) -> Vec<K> {
        let mut out = Vec::with_capacity(max.min(self.index.len()).min(1024));
        while out.len() < max {
            // The top is live: every mutation ends with `settle`.
            let Some(&Reverse((due, _, _, slot))) = self.heap.peek() else {
                break;
            };
            if due > now_ms {
                break;
            }
            self.heap.pop();
            let row = self.free_slot(slot);
            self.index.remove(&row.key);
            out.push(row.key);
            self.settle();
        }
        out
    }

    /// Due time of the earliest item, `None` when the wheel is empty.
    pub fn next_due(&self) -> Option<u64> {
        self.heap.peek().map(|&Reverse((due, _, _, _))| due)
    }

    /// How long to sleep from `now_ms` until the earliest item is due: zero when something is
    /// already due, `None` when the wheel is empty (sleep until an insert).
    pub fn until_next(&self, now_ms: u64) -> Option<Duration> {
        self.next_due().map(|d| Duration::from_millis(d.saturating_sub(now_ms)))
    }

    /// Number of waiting items.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The live rows' slots, earliest first.
    fn sorted_slots(&self) -> Vec<u32> {
        let mut v: Vec<(u64, u64, u64, u32)> = self
            .rows
            .iter()
            .enumerate()
            .filter_map(|(slot, r)| r.as_ref().map(|r| (r.due, r.rank, r.seq, slot as u32)))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, _, _, slot)| slot).collect()
    }

    /// Remove and return every item, earliest first: "deliver the whole queue now"
    /// (Haraka's `temp_fail_queue.drain()` on SIGHUP) when the caller can take them all.
    pub fn drain_all(&mut self) -> Vec<K> {
        let order = self.sorted_slots();
        let mut rows = std::mem::take(&mut self.rows);
        self.free.clear();
        self.index.clear();
        self.heap.clear();
        order
            .into_iter()
            .filter_map(|slot| rows[slot as usize].take().map(|r| r.key))
            .collect()
    }

    /// Make every item due at `now_ms` without taking it out ("flush the queue"), keeping their
    /// relative order. Unlike [`drain_all`](Self::drain_all) this respects the caller's
    /// delivery concurrency: the items then come out of [`pop_due`](Self::pop_due) as slots
    /// free up. Items already due are left as they are. Returns how many were moved.
    pub fn reschedule_all(&mut self, now_ms: u64) -> usize {
        self.reschedule_matching(now_ms, |_| true)
    }

    /// Like [`reschedule_all`](Self::reschedule_all) for the items whose key matches `pred`
    /// (Haraka's `flushQueue <domain>`, `haraka --qunstick domain`). Returns how many moved.
    pub fn reschedule_matching(&mut self, now_ms: u64, mut pred: impl FnMut(&K) -> bool) -> usize {
        // A moved item gets `now_ms` as its due time and keeps its old one as its rank, so
        // the moved items stay in their old order and follow the items already due (rank 0).
        // Then one linear heap rebuild instead of a push per item.
        let mut moved = 0;
        for row in self.rows.iter_mut().flatten() {
            if row.due > now_ms && pred(&row.key) {
                row.rank = row.due;
                row.due = now_ms;
                moved += 1;
            }
        }
        if moved > 0 {
            self.rebuild_heap();
        }
        moved
    }

    /// Every waiting item with its due time, earliest first (for `posta queue list`).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &K)> + '_ {
        self.sorted_slots()
            .into_iter()
            .filter_map(move |slot| self.rows[slot as usize].as_ref().map(|r| (r.due, &r.key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_due_order() {
        let mut w = TimerWheel::new();
        w.insert(300, "c");
        w.insert(100, "a");
        w.insert(200, "b");
        assert_eq!(w.len(), 3);
        assert_eq!(w.next_due(), Some(100));
        assert_eq!(w.pop_due(99, 10), Vec::<&str>::new());
        assert_eq!(w.pop_due(250, 10), vec!["a", "b"]);
        assert_eq!(w.next_due(), Some(300));
        assert_eq!(w.pop_due(1000, 10), vec!["c"]);
        assert!(w.is_empty());
        assert_eq!(w.next_due(), None);
    }

    #[test]
    fn equal_due_times_are_fifo() {
        let mut w = TimerWheel::new();
        for k in [5, 3, 9, 1, 7] {
            w.insert(1000, k);
        }
        w.insert(999, 42);
        assert_eq!(w.pop_due(1000, 100), vec![42, 5, 3, 9, 1, 7]);
    }

    #[test]
    fn max_limits_a_pop_and_the_rest_stay_due() {
        let mut w = TimerWheel::new();
        for k in 0..10 {
            w.insert(k, k);
        }
        assert_eq!(w.pop_due(100, 3), vec![0, 1, 2]);
        assert_eq!(w.pop_due(100, 0), Vec::<u64>::new());
        assert_eq!(w.len(), 7);
        assert_eq!(w.next_due(), Some(3));
        assert_eq!(w.pop_due(100, 100), vec![3, 4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn remove_and_reinsert() {
        let mut w = TimerWheel::new();
        w.insert(10, "a".to_string());
        w.insert(20, "b".to_string());
        assert!(w.remove(&"a".to_string()));
        assert!(!w.remove(&"a".to_string()));
        assert!(!w.contains(&"a".to_string()));
        assert_eq!(w.len(), 1);
        assert_eq!(w.next_due(), Some(20));
        // Inserting a key again moves it instead of keeping two rows.
        assert_eq!(w.insert(5, "b".to_string()), Some(20));
        assert_eq!(w.len(), 1);
        assert_eq!(w.due_of(&"b".to_string()), Some(5));
        assert_eq!(w.pop_due(100, 10), vec!["b".to_string()]);
        assert!(w.is_empty());
    }

    #[test]
    fn until_next_is_zero_when_due_and_none_when_empty() {
        let mut w = TimerWheel::new();
        assert_eq!(w.until_next(0), None);
        w.insert(1500, 1);
        assert_eq!(w.until_next(1000), Some(Duration::from_millis(500)));
        assert_eq!(w.until_next(2000), Some(Duration::ZERO));
    }

    #[test]
    fn drain_all_returns_everything_in_order() {
        let mut w = TimerWheel::new();
        w.insert(30, 'c');
        w.insert(10, 'a');
        w.insert(20, 'b');
        assert_eq!(w.drain_all(), vec!['a', 'b', 'c']);
        assert!(w.is_empty());
        assert!(!w.remove(&'a'));
    }

    #[test]
    fn reschedule_all_makes_everything_due_keeping_order() {
        let mut w = TimerWheel::new();
        w.insert(5, "due-already");
        w.insert(500, "x");
        w.insert(100, "y");
        w.insert(100, "z");
        assert_eq!(w.reschedule_all(50), 3);
        assert_eq!(w.next_due(), Some(5));
        assert_eq!(w.due_of(&"x"), Some(50));
        assert_eq!(w.len(), 4);
        assert_eq!(w.pop_due(50, 10), vec!["due-already", "y", "z", "x"]);
    }

    #[test]
    fn reschedule_matching_moves_only_matches() {
        let mut w = TimerWheel::new();
        w.insert(100, "a.example/1");
        w.insert(200, "b.example/1");
        w.insert(300, "a.example/2");
        assert_eq!(w.reschedule_matching(10, |k| k.starts_with("a.example")), 2);
        assert_eq!(w.pop_due(10, 10), vec!["a.example/1", "a.example/2"]);
        assert_eq!(w.due_of(&"b.example/1"), Some(200));
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn iter_lists_in_due_order() {
        let mut w = TimerWheel::new();
        w.insert(2, 'b');
        w.insert(1, 'a');
        let v: Vec<_> = w.iter().map(|(d, k)| (d, *k)).collect();
        assert_eq!(v, vec![(1, 'a'), (2, 'b')]);
    }

    #[test]
    fn a_million_items_are_cheap() {
        // Scale, not speed: timing lives in benches/, not in tests.
        const N: u64 = 1_000_000;
        let mut w = TimerWheel::with_capacity(N as usize);
        // Spread over a day, in an order that is not already sorted.
        for i in 0..N {
            let due = (i.wrapping_mul(7_919) % 86_400) * 1000;
            w.insert(due, i);
        }
        assert_eq!(w.len(), N as usize);
        assert_eq!(w.next_due(), Some(0));
        assert!(w.remove(&12_345));
        let first = w.pop_due(1_000_000, 10_000);
        assert!(!first.is_empty());
        assert_eq!(first.len(), 10_000);
        // A flush of the whole queue, then the first items still come out in their old order.
        assert_eq!(w.reschedule_all(0), N as usize - 1 - first.len());
        assert_eq!(w.len(), N as usize - 1 - first.len());
        let next = w.pop_due(0, 1000);
        let dues: Vec<u64> = next.iter().map(|&i| (i.wrapping_mul(7_919) % 86_400) * 1000).collect();
        assert!(dues.windows(2).all(|d| d[0] <= d[1]), "flush kept the order");
    }

    #[test]
    fn stale_heap_entries_do_not_pile_up() {
        let mut w = TimerWheel::new();
        for i in 0..10_000u32 {
            w.insert(u64::from(i), i);
        }
        // Rescheduling one key again and again leaves stale entries behind; removing most keys
        // leaves more. The heap is compacted so it stays near the number of live items.
        for round in 0..10_000u64 {
            w.insert(20_000 + round, 7);
        }
        for i in 0..9_000u32 {
            w.remove(&i);
        }
        assert_eq!(w.len(), 1_000);
        assert!(w.heap.len() <= 2 * w.len() + 1024, "heap holds {}", w.heap.len());
        assert_eq!(w.next_due(), Some(9_000));
        assert_eq!(w.due_of(&7), None);
        // Freed slots are reused (a rescheduled key takes a new row before its old one is
        // freed, hence one more than the most items ever waiting).
        w.insert(1, 424_242);
        assert_eq!(w.rows.len(), 10_001);
        assert_eq!(w.pop_due(1, 10), vec![424_242]);
    }
}
