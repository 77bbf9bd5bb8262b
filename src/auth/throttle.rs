//! Throttle for failed authentication attempts, per client IP and per API public key.
//!
//! Each source (an IP address, and the public key named in the request when
//! known) has a failure counter over a sliding window. When a counter reaches
//! the limit inside the window, the source is locked for the cool-down from
//! that moment; once the cool-down has passed its counter starts from zero.
//!
//! Rules kept throughout:
//! - A limit of 0 disables the throttle: nothing is recorded, nothing is locked.
//! - [`FailureThrottle::locked`] never allocates, and takes no lock at all while
//!   nothing is tracked.
//! - Memory is bounded: idle entries are pruned as new ones arrive, and each of
//!   the IP and key tables holds at most a fixed number of entries (by default
//!   [`DEFAULT_MAX_TRACKED`]); when full, the entries idle the longest are
//!   dropped, unlocked ones before locked ones.
//! - Public keys longer than [`MAX_KEY_LEN`] bytes are tracked under their first
//!   [`MAX_KEY_LEN`] bytes. IPv4-mapped IPv6 addresses count as their IPv4 form.
//! - The window is sliding with a granularity of 1/8 of it: a failure counts
//!   for at least `window` and at most 9/8 of `window`.

use std::collections::hash_map::{Entry as MapEntry, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Default cap on the number of tracked IPs, and separately of tracked public keys.
pub const DEFAULT_MAX_TRACKED: usize = 100_000;

/// Public keys are tracked under at most this many leading bytes.
pub const MAX_KEY_LEN: usize = 64;

/// Longest cool-down applied; longer settings are cut to this.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Number of slots the window is divided into.
const SLOTS: u32 = 8;

/// Slots kept: the window's slots plus the current, partly elapsed one.
const RING: usize = SLOTS as usize + 1;

/// Number of independently locked shards per table.
const SHARDS: usize = 16;

/// Failure state of one IP or key.
struct Record {
    /// Time origin for slot numbers.
    origin: Instant,
    /// Slot number of the most recent failure.
    head: u64,
    /// Failure counts; slot `s` lives at `ring[s % RING]` while `head - s < RING`.
    ring: [u32; RING],
    /// End of the cool-down, when locked.
    locked_until: Option<Instant>,
    /// Time of the last recorded failure.
    last_failure: Instant,
}

impl Record {
    fn new(now: Instant) -> Self {
        Self {
            origin: now,
            head: 0,
            ring: [0; RING],
            locked_until: None,
            last_failure: now,
        }
    }

    fn is_locked(&self, now: Instant) -> bool {
        self.locked_until.is_some_and(|until| until > now)
    }

    /// Whether this record holds no state any more and can be dropped.
    fn is_idle(&self, now: Instant, forget_after: Duration) -> bool {
        !self.is_locked(now) && now.saturating_duration_since(self.last_failure) >= forget_after
    }

    /// Adds one failure; returns true when this reaches `limit` and locks the record.
    fn add_failure(
        &mut self,
        now: Instant,
        slot: Duration,
        limit: u32,
        cooldown: Duration,
    ) -> bool {
        if self.is_locked(now) {
            // Failures during a cool-down are not counted.
            return false;
        }
        if self.locked_until.take().is_some() {
            // The cool-down has passed: start from zero.
            *self = Self::new(now);
        }
        let elapsed = now.saturating_duration_since(self.origin);
        let slot_no =
            u64::try_from(elapsed.as_nanos() / slot.as_nanos().max(1)).unwrap_or(u64::MAX);
        if slot_no > self.head {
            let advance = slot_no - self.head;
            if advance >= RING as u64 {
                self.ring = [0; RING];
            } else {
                for s in self.head + 1..=slot_no {
                    self.ring[ring_index(s)] = 0;
                }
            }
            self.head = slot_no;
        }
        // A failure timed before the head (concurrent callers) counts in the head slot.
        let head = self.head;
        let cell = &mut self.ring[ring_index(head)];
        *cell = cell.saturating_add(1);
        if now > self.last_failure {
            self.last_failure = now;
        }
        let total = self.ring.iter().fold(0u32, |acc, c| acc.saturating_add(*c));
        if total >= limit {
            // Capped so that absurd settings cannot overflow the clock.
            let until = now.checked_add(cooldown.min(MAX_COOLDOWN)).unwrap_or(now);
            self.locked_until = Some(until);
            self.ring = [0; RING];
            return true;
        }
        false
    }
}

fn ring_index(slot: u64) -> usize {
    // The remainder is below RING, so the cast is lossless.
    (slot % RING as u64) as usize
}

/// One lock's worth of a table.
struct Shard<K> {
    map: HashMap<K, Record>,
    inserts_since_prune: usize,
}

/// Records for one kind of source (IPs or keys), split into shards.
struct Table<K> {
    shards: Vec<Mutex<Shard<K>>>,
    hasher: RandomState,
    /// Total number of records, kept so `locked` can skip locking when zero.
    len: AtomicUsize,
    shard_capacity: usize,
}

impl<K: Hash + Eq> Table<K> {
    fn new(max_tracked: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        inserts_since_prune: 0,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            len: AtomicUsize::new(0),
            shard_capacity: max_tracked.div_ceil(SHARDS).max(1),
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> Option<&Mutex<Shard<K>>> {
        let h = self.hasher.hash_one(key);
        self.shards.get((h % SHARDS as u64) as usize)
    }

    /// Remaining cool-down of `key`, if locked.
    fn remaining<Q>(&self, key: &Q, now: Instant) -> Option<Duration>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let shard = self
            .shard(key)?
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let until = shard.map.get(key)?.locked_until?;
        until
            .checked_duration_since(now)
            .filter(|left| !left.is_zero())
    }

    /// Records a failure for `key`.
    fn record<Q>(&self, key: &Q, now: Instant, params: &Params)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let Some(shard) = self.shard(key) else {
            return;
        };
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(record) = shard.map.get_mut(key) {
            record.add_failure(now, params.slot, params.limit, params.cooldown);
            return;
        }
        let before = shard.map.len();
        shard.inserts_since_prune += 1;
        if before >= self.shard_capacity || shard.inserts_since_prune >= (before / 2).max(64) {
            shard
                .map
                .retain(|_, r| !r.is_idle(now, params.forget_after));
            shard.inserts_since_prune = 0;
        }
        if shard.map.len() >= self.shard_capacity {
            // Drop about 1/8 of the shard (at least one), idle-longest first,
            // unlocked before locked, so the O(n) work is amortised.
            let excess = shard.map.len() + 1 - self.shard_capacity;
            let drop = excess.max(self.shard_capacity / 8).min(shard.map.len());
            evict_oldest(&mut shard.map, drop, now);
        }
        let mut record = Record::new(now);
        record.add_failure(now, params.slot, params.limit, params.cooldown);
        if let MapEntry::Vacant(v) = shard.map.entry(key.to_owned()) {
            v.insert(record);
        }
        let after = shard.map.len();
        if after >= before {
            self.len.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.len.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

/// Removes the `count` records that are least worth keeping: unlocked before
/// locked, then oldest last failure first.
fn evict_oldest<K: Hash + Eq>(map: &mut HashMap<K, Record>, count: usize, now: Instant) {
    if count == 0 {
        return;
    }
    let mut ranks: Vec<(bool, Instant)> = map
        .values()
        .map(|r| (r.is_locked(now), r.last_failure))
        .collect();
    let Some(cut_index) = count.checked_sub(1) else {
        return;
    };
    if cut_index >= ranks.len() {
        map.clear();
        return;
    }
    let (below, cut, _) = ranks.select_nth_unstable(cut_index);
    let cut = *cut;
    // Everything ranked below the cut goes; ties at the cut only as far as needed.
    let mut ties_to_drop = count - below.iter().filter(|r| **r < cut).count();
    map.retain(|_, r| {
        let rank = (r.is_locked(now), r.last_failure);
        if rank < cut {
            return false;
        }
        if rank == cut && ties_to_drop > 0 {
            ties_to_drop -= 1;
            return false;
        }
        true
    });
}

/// Settings shared by both tables.
struct Params {
    limit: u32,
    cooldown: Duration,
    /// Length of one window slot.
    slot: Duration,
    /// Time after the last failure when an unlocked record is forgotten.
    forget_after: Duration,
}

/// Counts failed authentications per IP and per public key and locks sources
/// that fail too often. `Send + Sync`; share it behind an `Arc`.
pub struct FailureThrottle {
    params: Params,
    ips: Table<IpAddr>,
    keys: Table<String>,
}

impl fmt::Debug for FailureThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureThrottle")
            .field("limit", &self.params.limit)
            .field("cooldown", &self.params.cooldown)
            .field("window_slot", &self.params.slot)
            .field("tracked_ips", &self.ips.len())
            .field("tracked_keys", &self.keys.len())
            .finish()
    }
}

/// Truncates a public key to at most [`MAX_KEY_LEN`] bytes, on a char boundary.
fn tracked_key(key: &str) -> &str {
    let mut end = key.len().min(MAX_KEY_LEN);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    key.get(..end).unwrap_or_default()
}

impl FailureThrottle {
    /// limit = failures allowed per window; 0 disables the throttle entirely.
    ///
    /// Tracks at most [`DEFAULT_MAX_TRACKED`] IPs and as many public keys.
    pub fn new(limit: u32, window: Duration, cooldown: Duration) -> Self {
        Self::with_max_tracked(limit, window, cooldown, DEFAULT_MAX_TRACKED)
    }

    /// Like [`FailureThrottle::new`], tracking at most about `max_tracked` IPs
    /// and as many public keys (the cap is split over 16 shards, rounded up).
    pub fn with_max_tracked(
        limit: u32,
        window: Duration,
        cooldown: Duration,
        max_tracked: usize,
    ) -> Self {
        let slot = (window / SLOTS).max(Duration::from_millis(1));
        Self {
            params: Params {
                limit,
                cooldown,
                slot,
                forget_after: slot.saturating_mul(SLOTS + 1),
            },
            ips: Table::new(max_tracked),
            keys: Table::new(max_tracked),
        }
    }

    /// If this source or this public key is in cool-down, the time until it ends.
    ///
    /// When both are locked, the longer of the two remaining times.
    pub fn locked(&self, ip: IpAddr, public_key: Option<&str>, now: Instant) -> Option<Duration> {
        if self.params.limit == 0 {
            return None;
        }
        let by_ip = self.ips.remaining(&ip.to_canonical(), now);
        let by_key = public_key.and_then(|k| self.keys.remaining(tracked_key(k), now));
        by_ip.max(by_key)
    }

    /// Records one failed attempt (for the ip, and for the key when known).
    pub fn record_failure(&self, ip: IpAddr, public_key: Option<&str>, now: Instant) {
        if self.params.limit == 0 {
            return;
        }
        self.ips.record(&ip.to_canonical(), now, &self.params);
        if let Some(key) = public_key {
            self.keys.record(tracked_key(key), now, &self.params);
        }
    }

    /// Number of IPs currently tracked (locked or with recent failures, until pruned).
    pub fn tracked_ips(&self) -> usize {
        self.ips.len()
    }

    /// Number of public keys currently tracked (locked or with recent failures, until pruned).
    pub fn tracked_keys(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const MIN: Duration = Duration::from_secs(60);

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn under_limit_not_locked_and_reaching_limit_locks_ip_and_key() {
        let t = FailureThrottle::new(3, MIN, secs(300));
        let t0 = Instant::now();
        assert_eq!(t.locked(ip(1), Some("KEYA"), t0), None);
        t.record_failure(ip(1), Some("KEYA"), t0);
        t.record_failure(ip(1), Some("KEYA"), t0 + secs(1));
        assert_eq!(t.locked(ip(1), Some("KEYA"), t0 + secs(2)), None);
        t.record_failure(ip(1), Some("KEYA"), t0 + secs(2));
        // Locked for the cool-down from the third failure.
        assert_eq!(t.locked(ip(1), Some("KEYA"), t0 + secs(2)), Some(secs(300)));
        assert_eq!(t.locked(ip(1), None, t0 + secs(12)), Some(secs(290)));
        assert_eq!(
            t.locked(ip(1), Some("OTHER"), t0 + secs(12)),
            Some(secs(290))
        );
        // The key is locked from any IP.
        assert_eq!(
            t.locked(ip(2), Some("KEYA"), t0 + secs(12)),
            Some(secs(290))
        );
        // A different IP with another key is not.
        assert_eq!(t.locked(ip(2), Some("KEYB"), t0 + secs(12)), None);
        assert_eq!(t.locked(ip(2), None, t0 + secs(12)), None);
    }

    #[test]
    fn ip_and_key_count_separately() {
        let t = FailureThrottle::new(3, MIN, secs(300));
        let t0 = Instant::now();
        // One key attacked from three IPs: the key locks, the IPs do not.
        for n in 1..=3 {
            t.record_failure(ip(n), Some("KEY"), t0);
        }
        assert!(t.locked(ip(9), Some("KEY"), t0).is_some());
        for n in 1..=3 {
            assert_eq!(t.locked(ip(n), None, t0), None);
        }
        // One IP trying three keys: the IP locks, the keys do not.
        for k in ["K1", "K2", "K3"] {
            t.record_failure(ip(20), Some(k), t0);
        }
        assert!(t.locked(ip(20), None, t0).is_some());
        assert_eq!(t.locked(ip(21), Some("K1"), t0), None);
        // Unknown key: only the IP counts.
        for _ in 0..3 {
            t.record_failure(ip(30), None, t0);
        }
        assert!(t.locked(ip(30), None, t0).is_some());
        assert_eq!(t.tracked_keys(), 4);
    }

    #[test]
    fn cooldown_ends_and_counter_restarts() {
        let t = FailureThrottle::new(2, MIN, secs(30));
        let t0 = Instant::now();
        t.record_failure(ip(1), Some("K"), t0);
        t.record_failure(ip(1), Some("K"), t0 + secs(1));
        assert_eq!(t.locked(ip(1), Some("K"), t0 + secs(1)), Some(secs(30)));
        // Failures during the cool-down neither extend it nor count later.
        t.record_failure(ip(1), Some("K"), t0 + secs(20));
        assert_eq!(t.locked(ip(1), Some("K"), t0 + secs(30)), Some(secs(1)));
        assert_eq!(t.locked(ip(1), Some("K"), t0 + secs(31)), None);
        // The counter starts from zero: one failure does not lock again.
        t.record_failure(ip(1), Some("K"), t0 + secs(32));
        assert_eq!(t.locked(ip(1), Some("K"), t0 + secs(32)), None);
        t.record_failure(ip(1), Some("K"), t0 + secs(33));
        assert_eq!(t.locked(ip(1), Some("K"), t0 + secs(33)), Some(secs(30)));
    }

    #[test]
    fn limit_zero_never_locks() {
        let t = FailureThrottle::new(0, MIN, secs(300));
        let t0 = Instant::now();
        for _ in 0..1000 {
            t.record_failure(ip(1), Some("K"), t0);
        }
        assert_eq!(t.locked(ip(1), Some("K"), t0), None);
        assert_eq!(t.tracked_ips(), 0);
        assert_eq!(t.tracked_keys(), 0);
    }

    #[test]
    fn limit_one_locks_on_first_failure() {
        let t = FailureThrottle::new(1, MIN, secs(10));
        let t0 = Instant::now();
        t.record_failure(ip(1), None, t0);
        assert_eq!(t.locked(ip(1), None, t0), Some(secs(10)));
    }

    #[test]
    fn window_slides() {
        let t = FailureThrottle::new(3, MIN, secs(300));
        let t0 = Instant::now();
        t.record_failure(ip(1), Some("K"), t0);
        t.record_failure(ip(1), Some("K"), t0 + secs(10));
        // The first failure is forgotten once more than 9/8 window has passed.
        t.record_failure(ip(1), Some("K"), t0 + secs(68));
        assert_eq!(t.locked(ip(1), Some("K"), t0 + secs(68)), None);
        // The second one (t0+10) is still inside the window at t0+69.
        t.record_failure(ip(1), Some("K"), t0 + secs(69));
        assert!(t.locked(ip(1), Some("K"), t0 + secs(69)).is_some());

        // Failures spread out slower than limit/window never lock.
        let t = FailureThrottle::new(3, MIN, secs(300));
        for i in 0..100 {
            let now = t0 + secs(35 * i);
            t.record_failure(ip(2), Some("S"), now);
            assert_eq!(t.locked(ip(2), Some("S"), now), None, "i={i}");
        }
        // A failure counts for at least the whole window.
        let t = FailureThrottle::new(2, MIN, secs(300));
        t.record_failure(ip(3), None, t0);
        t.record_failure(ip(3), None, t0 + MIN);
        assert!(t.locked(ip(3), None, t0 + MIN).is_some());
    }

    #[test]
    fn long_keys_and_mapped_ips() {
        let t = FailureThrottle::new(2, MIN, secs(300));
        let t0 = Instant::now();
        let long_a = format!("{}A", "k".repeat(MAX_KEY_LEN));
        let long_b = format!("{}B", "k".repeat(MAX_KEY_LEN));
        t.record_failure(ip(1), Some(&long_a), t0);
        t.record_failure(ip(2), Some(&long_b), t0);
        // Both share the truncated form.
        assert!(t
            .locked(ip(3), Some(&"k".repeat(MAX_KEY_LEN)), t0)
            .is_some());
        assert!(t.locked(ip(3), Some(&long_a), t0).is_some());
        // Multi-byte characters are cut on a char boundary.
        let wide = "é".repeat(MAX_KEY_LEN);
        assert_eq!(tracked_key(&wide).len(), MAX_KEY_LEN);
        assert_eq!(tracked_key(&format!("a{wide}")).len(), MAX_KEY_LEN - 1);
        assert_eq!(tracked_key("short"), "short");
        // IPv4-mapped IPv6 is the same source as the IPv4 address.
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        t.record_failure(v4, None, t0);
        t.record_failure(mapped, None, t0);
        assert!(t.locked(v4, None, t0).is_some());
        assert!(t.locked(mapped, None, t0).is_some());
        assert_eq!(t.locked(IpAddr::V6(Ipv6Addr::LOCALHOST), None, t0), None);
    }

    #[test]
    fn memory_is_bounded_and_idle_entries_pruned() {
        let t = FailureThrottle::with_max_tracked(5, MIN, secs(300), 160);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let addr = IpAddr::V4(Ipv4Addr::from(i));
            t.record_failure(
                addr,
                Some(&format!("key{i}")),
                t0 + Duration::from_millis(u64::from(i)),
            );
        }
        assert!(t.tracked_ips() <= 160, "{}", t.tracked_ips());
        assert!(t.tracked_keys() <= 160, "{}", t.tracked_keys());
        // A locked source survives a flood of one-off failures from others.
        let t = FailureThrottle::with_max_tracked(2, MIN, secs(3600), 160);
        t.record_failure(ip(1), Some("VICTIM"), t0);
        t.record_failure(ip(1), Some("VICTIM"), t0);
        for i in 0..10_000u32 {
            let addr = IpAddr::V4(Ipv4Addr::from(i + 1_000_000));
            t.record_failure(addr, Some(&format!("flood{i}")), t0 + secs(1));
        }
        assert!(t.locked(ip(1), None, t0 + secs(2)).is_some());
        assert!(t.locked(ip(99), Some("VICTIM"), t0 + secs(2)).is_some());
        // Later, idle entries are pruned as new ones arrive.
        let t = FailureThrottle::new(5, MIN, secs(300));
        for i in 0..5_000u32 {
            t.record_failure(IpAddr::V4(Ipv4Addr::from(i)), None, t0);
        }
        assert_eq!(t.tracked_ips(), 5_000);
        let later = t0 + secs(600);
        for i in 0..5_000u32 {
            t.record_failure(IpAddr::V4(Ipv4Addr::from(i + 100_000)), None, later);
        }
        assert!(t.tracked_ips() < 7_500, "{}", t.tracked_ips());
    }

    #[test]
    fn extreme_settings_do_not_panic() {
        let t0 = Instant::now();
        let t = FailureThrottle::with_max_tracked(1, Duration::MAX, Duration::MAX, 0);
        t.record_failure(ip(1), Some(""), t0);
        assert!(t.locked(ip(1), Some(""), t0 + secs(3600)).is_some());
        let t = FailureThrottle::new(u32::MAX, Duration::ZERO, Duration::ZERO);
        for _ in 0..100 {
            t.record_failure(ip(1), None, t0);
        }
        assert_eq!(t.locked(ip(1), None, t0), None);
        let t = FailureThrottle::new(1, Duration::ZERO, Duration::ZERO);
        t.record_failure(ip(1), None, t0);
        assert_eq!(t.locked(ip(1), None, t0), None);
    }

    #[test]
    fn concurrent_use() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<FailureThrottle>();
        let t = std::sync::Arc::new(FailureThrottle::new(1000, MIN, secs(300)));
        let t0 = Instant::now();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for _ in 0..125 {
                        assert_eq!(t.locked(ip(1), Some("K"), t0), None);
                        t.record_failure(ip(1), Some("K"), t0);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        assert!(t.locked(ip(1), Some("K"), t0).is_some());
    }
}
