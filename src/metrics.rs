//! Process-wide counters per actor kind, lock-free (atomics). The exporter and `posta top`
//! come with the operations issue; the counters are kept from the start so every actor
//! reports from day one.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters for one actor kind.
#[derive(Debug, Default)]
pub struct ActorCounters {
    pub started: AtomicU64,
    pub stopped: AtomicU64,
    pub panics: AtomicU64,
}

impl ActorCounters {
    pub fn live(&self) -> u64 {
        self.started
            .load(Ordering::Relaxed)
            .saturating_sub(self.stopped.load(Ordering::Relaxed))
    }
}

/// All counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connection: ActorCounters,
    pub transaction: ActorCounters,
    pub queue_manager: ActorCounters,
    pub queue_file: ActorCounters,
    pub remote_mx: ActorCounters,
    pub resolver: ActorCounters,
    pub deliveries_ok: AtomicU64,
    pub deliveries_deferred: AtomicU64,
    pub deliveries_bounced: AtomicU64,
    pub connections_opened: AtomicU64,
    pub connections_reused: AtomicU64,
    pub messages_queued: AtomicU64,
    pub commit_errors: AtomicU64,
}

static METRICS: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();

/// The process-wide registry.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(Metrics::default)
}

/// Add one.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
