//! Connection limits: how many sessions at once in total, how many at once per client address,
//! and how many new connections per client address in a period (`connection.ini [max]`, see
//! `docs/config.md`).
//!
//! Checked by the listener right after `accept`, before a session exists, so a flood costs one
//! `421` line and a closed socket. The state is shared by every worker thread: an atomic for
//! the total and a `DashMap` keyed by IP for the per-address counts. A map entry is locked only
//! for the few instructions of one check or one release, never across an `.await`.
//!
//! An admitted connection holds a [`ConnSlot`]; dropping it (normal end, error, or a panic
//! unwinding through the connection's future) gives the slot back.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// The limits. `0` (or `None`) turns a limit off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// `[max] connections`: concurrent sessions in total.
    pub total: usize,
    /// `[max] connections_per_ip`: concurrent sessions per client address.
    pub per_ip: usize,
    /// `[max] connection_rate`: new connections per client address per period.
    pub rate: Option<Rate>,
    /// `[max] connections_exempt`: client addresses the per-address and rate limits skip
    /// (local submission, health checks; Postfix exempts `$mynetworks` the same way).
    pub exempt: Vec<ipnet::IpNet>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            total: 0,
            per_ip: 50,
            rate: None,
            exempt: default_exempt(),
        }
    }
}

/// The default `[max] connections_exempt`: this host's loopback addresses.
pub fn default_exempt() -> Vec<ipnet::IpNet> {
    ["127.0.0.1/32", "::1/128"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// `count` connections per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

impl Rate {
    /// Parse `N/period`: `30/60` (seconds), `30/60s`, `100/5m`, `1000/1h`. `0` means off.
    pub fn parse(s: &str) -> Result<Option<Rate>, String> {
        let s = s.trim();
        if s.is_empty() || s == "0" {
            return Ok(None);
        }
        let bad = || format!("'{s}' is not a rate (expected N/period, e.g. 30/60s, 100/5m)");
        let (n, p) = s.split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let p = p.trim();
        let (num, unit) = match p.find(|c: char| !c.is_ascii_digit()) {
            Some(i) => (&p[..i], &p[i..]),
            None => (p, "s"),
        };
        let num: u64 = num.parse().map_err(|_| bad())?;
        let secs = match unit {
            "s" => num,
            "m" => num.saturating_mul(60),
            "h" => num.saturating_mul(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Ok(None);
        }
        if secs == 0 {
            return Err(format!("'{s}': the period must be at least one second"));
        }
        Ok(Some(Rate {
            count,
            period: Duration::from_secs(secs),
        }))
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// `[max] connections` reached.
    Total,
    /// `[max] connections_per_ip` reached for this address.
    PerIp,
    /// `[max] connection_rate` exceeded for this address.
    Rate,
}

impl Refusal {
    /// The reply line written before closing (RFC 3463 X.7.0: other security or policy
    /// status; 421 because the client may well try again later).
    pub fn reply(self) -> &'static [u8] {
        match self {
            Refusal::Total => b"421 4.7.0 Too many connections, try again later\r\n",
            Refusal::PerIp => b"421 4.7.0 Too many connections from your address, try again later\r\n",
            Refusal::Rate => b"421 4.7.0 Connection rate limit exceeded for your address, try again later\r\n",
        }
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Total => "total",
            Refusal::PerIp => "per_ip",
            Refusal::Rate => "rate",
        }
    }
}

/// What one client address has open and how many connections it made in the current window.
#[derive(Debug)]
struct PerIp {
    live: usize,
    window_start: Instant,
    window_count: u32,
}

/// Entries kept before a pass drops those of addresses with nothing open and no live window.
const PRUNE_AT: usize = 4096;

/// The shared counters. One per daemon.
#[derive(Debug)]
pub struct ConnLimits {
    /// Swapped as a whole on reload; the counters stay.
    cfg: std::sync::RwLock<Arc<LimitsConfig>>,
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, PerIp>,
    /// Map size that triggers the next prune (grows with the map so pruning stays rare).
    prune_at: AtomicUsize,
}

impl ConnLimits {
    pub fn new(cfg: LimitsConfig) -> Arc<Self> {
        Arc::new(ConnLimits {
            cfg: std::sync::RwLock::new(Arc::new(cfg)),
            total: AtomicUsize::new(0),
            per_ip: DashMap::new(),
            prune_at: AtomicUsize::new(PRUNE_AT),
        })
    }

    /// The limits now.
    pub fn config(&self) -> Arc<LimitsConfig> {
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// New limits (reload): they apply to connections admitted from now on; the sessions
    /// already counted stay counted. A limit that was off did not track addresses, so the
    /// per-address count starts from the connections admitted after the change.
    pub fn set_config(&self, cfg: LimitsConfig) {
        *self.cfg.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cfg);
    }

    /// Sessions open now.
    pub fn live(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Admit a new connection from `ip`, or say why not: the total, per-address and rate
    /// limits. The address is the client's as far as posta knows it at accept.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, Refusal> {
        self.admit_at(ip, Instant::now())
    }

    /// [`admit`](Self::admit) at a given instant (tests).
    pub fn admit_at(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<ConnSlot, Refusal> {
        let mut slot = self.admit_total()?;
        slot.attach_ip_at(ip, now)?;
        Ok(slot)
    }

    /// Admit against the total limit only, for a connection whose client address is not known
    /// yet (it comes from a PROXY header or XCLIENT): call [`ConnSlot::attach_ip`] once it is.
    pub fn admit_total(self: &Arc<Self>) -> Result<ConnSlot, Refusal> {
        let total = self.total.fetch_add(1, Ordering::AcqRel);
        let max = self.config().total;
        if max > 0 && total >= max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total);
        }
        Ok(ConnSlot {
            limits: self.clone(),
            ip: None,
        })
    }

    /// True when per-address state is kept (a per-address or rate limit is on).
    fn tracks_ips(&self) -> bool {
        let cfg = self.config();
        cfg.per_ip > 0 || cfg.rate.is_some()
    }

    /// The per-address checks, under that address's map entry only.
    fn admit_ip(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let cfg = self.config();
        let mut e = self.per_ip.entry(ip).or_insert_with(|| PerIp {
            live: 0,
            window_start: now,
            window_count: 0,
        });
        if cfg.per_ip > 0 && e.live >= cfg.per_ip {
            return Err(Refusal::PerIp);
        }
        if let Some(rate) = cfg.rate {
            if now.saturating_duration_since(e.window_start) >= rate.period {
                e.window_start = now;
                e.window_count = 0;
            }
            if e.window_count >= rate.count {
                return Err(Refusal::Rate);
            }
            e.window_count += 1;
        }
        e.live += 1;
        Ok(())
    }

    fn release(&self, ip: Option<IpAddr>) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = ip {
            self.release_ip(ip);
        }
    }

    fn release_ip(&self, ip: IpAddr) {
        let rate = self.config().rate.is_some();
        // Without a rate window there is nothing to remember about an address with no session.
        self.per_ip.remove_if_mut(&ip, |_, e| {
            e.live = e.live.saturating_sub(1);
            e.live == 0 && !rate
        });
    }

    /// Drop entries with no session and an expired window, when the map has grown.
    fn maybe_prune(&self, now: Instant) {
        let limit = self.prune_at.load(Ordering::Relaxed);
        if self.per_ip.len() < limit {
            return;
        }
        let period = self.config().rate.map(|r| r.period).unwrap_or_default();
        self.per_ip
            .retain(|_, e| e.live > 0 || now.saturating_duration_since(e.window_start) < period);
        let next = (self.per_ip.len() * 2).max(PRUNE_AT);
        self.prune_at.store(next, Ordering::Relaxed);
    }

    /// Addresses currently tracked (tests).
    pub fn tracked(&self) -> usize {
        self.per_ip.len()
    }
}

/// AUTH failures per client address over all its connections (`auth.ini lockout_failures`):
/// past the limit, the address's AUTH attempts are answered without being checked until the
/// window that started with its first counted failure is over. An attempt being checked holds
/// a place ([`AuthLockout::begin`] .. [`AuthLockout::end`]), so parallel connections cannot
/// get more checks through than the limit. Memory is bounded: at most `LOCKOUT_MAX_TRACKED`
/// addresses (past it, new addresses are not tracked until old windows end); a pass drops
/// ended windows each time the map has doubled since the last one.
#[derive(Debug)]
pub struct AuthLockout {
    /// Address key → its window.
    entries: DashMap<IpAddr, LockoutEntry>,
    prune_at: AtomicUsize,
}

#[derive(Debug, Clone, Copy)]
struct LockoutEntry {
    failures: u32,
    /// Attempts being checked now.
    checking: u32,
    start: Instant,
}

/// Addresses tracked at most by [`AuthLockout`].
const LOCKOUT_MAX_TRACKED: usize = 100_000;

impl Default for AuthLockout {
    fn default() -> Self {
        AuthLockout {
            entries: DashMap::new(),
            prune_at: AtomicUsize::new(PRUNE_AT),
        }
    }
}

impl AuthLockout {
    /// An AUTH attempt from `ip` is about to be checked: false when the address is locked out
    /// (`max` failures and attempts in progress within `window`; never when `max` is 0),
    /// else its place is held until [`end`](Self::end).
    pub fn begin(&self, ip: IpAddr, max: u32, window: Duration) -> bool {
        self.begin_at(ip, max, window, Instant::now())
    }

    fn begin_at(&self, ip: IpAddr, max: u32, window: Duration, now: Instant) -> bool {
        if max == 0 {
            return true;
        }
        self.maybe_prune(window, now);
        let key = client_key(ip);
        if !self.entries.contains_key(&key) && self.entries.len() >= LOCKOUT_MAX_TRACKED {
            return true; // full: not tracked (see the type's documentation)
        }
        let mut e = self.entries.entry(key).or_insert(LockoutEntry {
            failures: 0,
            checking: 0,
            start: now,
        });
        if now.saturating_duration_since(e.start) >= window {
            (e.failures, e.start) = (0, now);
        }
        if e.failures.saturating_add(e.checking) >= max {
            return false;
        }
        e.checking += 1;
        true
    }

    /// The attempt [`begin`](Self::begin) let through was checked, with `failures` new
    /// failures (0 or 1).
    pub fn end(&self, ip: IpAddr, failures: u32, max: u32, window: Duration) {
        self.end_at(ip, failures, max, window, Instant::now())
    }

    fn end_at(&self, ip: IpAddr, failures: u32, max: u32, window: Duration, now: Instant) {
        if max == 0 {
            return;
        }
        if let Some(mut e) = self.entries.get_mut(&client_key(ip)) {
            e.checking = e.checking.saturating_sub(1);
            if now.saturating_duration_since(e.start) >= window {
                (e.failures, e.start) = (0, now);
            }
            e.failures = e.failures.saturating_add(failures);
        }
    }

    /// Failures outside an attempt's check (a SASL exchange the server refused itself).
    pub fn failed(&self, ip: IpAddr, n: u32, max: u32, window: Duration) {
        if max > 0 && self.begin(ip, u32::MAX, window) {
            self.end(ip, n, max, window);
        }
    }

    /// Drop ended windows once the map has doubled since the last pass.
    fn maybe_prune(&self, window: Duration, now: Instant) {
        let at = self.prune_at.load(Ordering::Relaxed);
        if self.entries.len() <= at {
            return;
        }
        self.entries
            .retain(|_, e| e.checking > 0 || now.saturating_duration_since(e.start) < window);
        self.prune_at
            .store((self.entries.len() * 2).max(PRUNE_AT), Ordering::Relaxed);
    }

    /// Addresses tracked (tests).
    pub fn tracked(&self) -> usize {
        self.entries.len()
    }
}

/// The address a client is counted under: IPv4 as is (an IPv4-mapped IPv6 address as its
/// IPv4 address), IPv6 by its /64, which is what one subscriber or host usually gets; counting
/// each /128 would give a single host 2^64 separate budgets.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// One admitted connection. Dropping it releases its place.
#[derive(Debug)]
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    ip: Option<IpAddr>,
}

impl ConnSlot {
    /// Counted under a client address already (at accept, or by [`attach_ip`](Self::attach_ip)).
    pub fn has_ip(&self) -> bool {
        self.ip.is_some()
    }

    /// Count this connection under client address `ip` (per-address and rate limits): at
    /// accept, or later when a PROXY header or XCLIENT names the real client. A slot already
    /// counted under another address moves (its old place is given back first). On a refusal
    /// the slot stays counted in the total only; the caller answers `421` and drops it.
    pub fn attach_ip(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        self.attach_ip_at(ip, Instant::now())
    }

    fn attach_ip_at(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        if !self.limits.tracks_ips() {
            return Ok(());
        }
        if let Some(old) = self.ip.take() {
            self.limits.release_ip(old);
        }
        if self
            .limits
            .config()
            .exempt
            .iter()
            .any(|n| n.contains(&ip.to_canonical()))
        {
            return Ok(());
        }
        let ip = client_key(ip);
        self.limits.admit_ip(ip, now)?;
        self.limits.maybe_prune(now);
        self.ip = Some(ip);
        Ok(())
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.limits.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_lockout_counts_per_address_within_the_window() {
        let l = AuthLockout::default();
        let (t0, w) = (Instant::now(), Duration::from_secs(600));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let fail = |ip: IpAddr, at: Instant| {
            assert!(l.begin_at(ip, 3, w, at));
            l.end_at(ip, 1, 3, w, at);
        };
        fail(a, t0);
        fail(a, t0);
        // A third attempt is being checked: no fourth one gets through meanwhile.
        assert!(l.begin_at(a, 3, w, t0));
        assert!(!l.begin_at(a, 3, w, t0), "parallel attempts past the limit");
        l.end_at(a, 0, 3, w, t0); // it succeeded
        fail(a, t0 + Duration::from_secs(10));
        assert!(!l.begin_at(a, 3, w, t0 + Duration::from_secs(10)), "locked");
        assert!(l.begin_at(a, 0, w, t0), "0 is off");
        // The window counts from the first failure; after it the address starts afresh.
        assert!(l.begin_at(a, 3, w, t0 + w));
        l.end_at(a, 0, 3, w, t0 + w);
        // Another address is not affected; IPv6 counts per /64.
        assert!(l.begin_at("192.0.2.2".parse().unwrap(), 3, w, t0));
        for _ in 0..3 {
            fail("2001:db8::1".parse().unwrap(), t0);
        }
        assert!(!l.begin_at("2001:db8::ffff".parse().unwrap(), 3, w, t0));
    }

    #[test]
    fn auth_lockout_map_is_bounded_and_pruned() {
        let l = AuthLockout::default();
        let (t0, w) = (Instant::now(), Duration::from_secs(60));
        for i in 0..(PRUNE_AT as u32 + 10) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(l.begin_at(ip, 5, w, t0));
            l.end_at(ip, 1, 5, w, t0);
        }
        assert_eq!(l.tracked(), PRUNE_AT + 10, "nothing to drop while every window is open");
        // Their windows are over: once the map has doubled, a pass drops them.
        for i in 0..(PRUNE_AT as u32 + 10) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            assert!(l.begin_at(ip, 5, w, t0 + w));
            l.end_at(ip, 1, 5, w, t0 + w);
        }
        assert!(l.tracked() <= PRUNE_AT + 10, "{} tracked", l.tracked());
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn limits(total: usize, per_ip: usize, rate: Option<Rate>) -> Arc<ConnLimits> {
        ConnLimits::new(LimitsConfig {
            total,
            per_ip,
            rate,
            exempt: Vec::new(),
        })
    }

    #[test]
    fn total_limit_and_release() {
        let l = limits(2, 0, None);
        let a = l.admit(ip(1)).unwrap();
        let _b = l.admit(ip(2)).unwrap();
        assert_eq!(l.admit(ip(3)).unwrap_err(), Refusal::Total);
        drop(a);
        assert!(l.admit(ip(3)).is_ok());
        assert_eq!(
            l.tracked(),
            0,
            "nothing tracked per address when only the total is limited"
        );
    }

    #[test]
    fn per_ip_limit_is_per_address() {
        let l = limits(0, 2, None);
        let s: Vec<_> = (0..2).map(|_| l.admit(ip(2)).unwrap()).collect();
        assert_eq!(l.admit(ip(2)).unwrap_err(), Refusal::PerIp);
        assert!(l.admit(ip(3)).is_ok(), "another address is not affected");
        drop(s);
        assert!(l.admit(ip(2)).is_ok());
        assert_eq!(l.live(), 0);
        assert_eq!(l.tracked(), 0, "entries go away with their last session");
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        let l = limits(0, 1, None);
        let _a = l.admit(ip(2)).unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(l.admit(mapped).unwrap_err(), Refusal::PerIp);
    }

    #[test]
    fn ipv6_counts_per_64() {
        let l = limits(0, 1, None);
        let _a = l.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(l.admit(same_64).unwrap_err(), Refusal::PerIp);
        assert!(l.admit("2001:db8:1:3::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn rate_window() {
        let rate = Rate::parse("2/10").unwrap();
        let l = limits(0, 0, rate);
        let t0 = Instant::now();
        drop(l.admit_at(ip(2), t0).unwrap());
        drop(l.admit_at(ip(2), t0).unwrap());
        assert_eq!(l.admit_at(ip(2), t0).unwrap_err(), Refusal::Rate);
        assert!(l.admit_at(ip(3), t0).is_ok());
        assert!(l.admit_at(ip(2), t0 + Duration::from_secs(10)).is_ok());
        assert_eq!(l.live(), 0, "refusals give their place back");
    }

    #[test]
    fn an_address_learnt_later_is_counted_then() {
        let l = limits(0, 1, None);
        let _lb_client = l.admit(ip(7)).unwrap();
        // Behind a proxy: admitted on the total first, the real address attached later.
        let mut a = l.admit_total().unwrap();
        assert_eq!(l.tracked(), 1);
        a.attach_ip(ip(8)).unwrap();
        let mut b = l.admit_total().unwrap();
        assert_eq!(b.attach_ip(ip(8)).unwrap_err(), Refusal::PerIp);
        // XCLIENT moving a session to another address frees its old place.
        a.attach_ip(ip(9)).unwrap();
        b.attach_ip(ip(8)).unwrap();
        drop((a, b));
        assert_eq!(l.live(), 1);
    }

    #[test]
    fn rate_syntax() {
        assert_eq!(Rate::parse("0").unwrap(), None);
        assert_eq!(Rate::parse("").unwrap(), None);
        let r = Rate::parse("100/5m").unwrap().unwrap();
        assert_eq!((r.count, r.period), (100, Duration::from_secs(300)));
        assert_eq!(Rate::parse("3/1h").unwrap().unwrap().period, Duration::from_secs(3600));
        assert_eq!(Rate::parse("3/20s").unwrap().unwrap().period, Duration::from_secs(20));
        for bad in ["3", "x/1", "3/0", "3/5d", "3/", "/5", "-1/5"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prune_keeps_the_map_bounded() {
        let rate = Rate::parse("5/1").unwrap();
        let l = limits(0, 0, rate);
        let t0 = Instant::now();
        for i in 0..(PRUNE_AT as u32 - 1) {
            drop(l.admit_at(IpAddr::from(i.to_be_bytes()), t0).unwrap());
        }
        let later = t0 + Duration::from_secs(2);
        drop(l.admit_at(ip(9), later).unwrap());
        assert!(l.tracked() < 10, "{} entries left", l.tracked());
    }
}
