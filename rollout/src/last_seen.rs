//! When each node last checked in, buffered in memory and written in batches.
//!
//! Owns: the buffer of "node N was seen at T" facts that steady-state check-ins produce.
//! Does not own: the write (the service flushes a [`LastSeen::take`]n batch in one
//! transaction) nor any rule (no policy reads `last_seen`: it is shown to operators only).
//!
//! Why a buffer: a node with nothing new to report is told "not yet" by a check-in that only
//! reads (see `Service::check_in_with_token`); its last-seen time is the one fact it would
//! still write. Writing it per check-in would make every check-in a write transaction — on
//! SQLite one at a time — for a value no decision depends on. Buffered, a fleet of 10,000
//! nodes checking in every few seconds costs one transaction per flush instead of thousands.
//! The price: a crash loses at most one flush interval of last-seen times (the nodes' next
//! check-ins restore them), and a listing on another replica may show a time up to one
//! interval old. Every other part of a check-in (events, progress, admissions, the node's
//! reported version, slot and state) is still written before the answer is sent.

use std::collections::HashMap;
use std::sync::Mutex;

use basalt_manifest::chrono::{DateTime, Utc};

/// The buffer: the newest time each node was seen since the last flush.
#[derive(Debug, Default)]
pub struct LastSeen {
    seen: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl LastSeen {
    /// Records that `node` checked in at `at` (an older time than one already held is kept
    /// out: check-ins answered out of order never move the time back).
    pub fn record(&self, node: &str, at: DateTime<Utc>) {
        let mut seen = self.lock();
        match seen.get_mut(node) {
            Some(held) => *held = (*held).max(at),
            None => {
                seen.insert(node.to_owned(), at);
            }
        }
    }

    /// Takes every buffered fact out, for a flush.
    pub fn take(&self) -> HashMap<String, DateTime<Utc>> {
        std::mem::take(&mut *self.lock())
    }

    /// Puts back a batch whose flush failed, keeping the newer time where the node was seen
    /// again meanwhile.
    pub fn restore(&self, batch: HashMap<String, DateTime<Utc>>) {
        for (node, at) in batch {
            self.record(&node, at);
        }
    }

    /// How many nodes are waiting to be written.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, DateTime<Utc>>> {
        // Holding the lock never panics (plain map operations): a poisoned map is still whole.
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).expect("valid time")
    }

    #[test]
    fn keeps_the_newest_time_per_node() {
        let b = LastSeen::default();
        b.record("n1", t(10));
        b.record("n1", t(5));
        b.record("n2", t(7));
        b.record("n1", t(12));
        let batch = b.take();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch["n1"], t(12));
        assert_eq!(batch["n2"], t(7));
        assert!(b.is_empty());
    }

    #[test]
    fn a_failed_flush_is_put_back_without_losing_newer_times() {
        let b = LastSeen::default();
        b.record("n1", t(10));
        b.record("n2", t(10));
        let batch = b.take();
        b.record("n1", t(20));
        b.restore(batch);
        let again = b.take();
        assert_eq!(again["n1"], t(20));
        assert_eq!(again["n2"], t(10));
    }
}
