//! Process-wide counters per actor kind, lock-free (atomics), and their Prometheus text
//! rendering (served on `GET /metrics` by `actors::metrics_http`, see `docs/metrics.md`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::actors::queue_manager::QueueCounts;

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

impl Metrics {
    /// Each actor kind with its label value, in a fixed order.
    pub fn actor_kinds(&self) -> [(&'static str, &ActorCounters); 6] {
        [
            ("connection", &self.connection),
            ("transaction", &self.transaction),
            ("queue_manager", &self.queue_manager),
            ("queue_file", &self.queue_file),
            ("remote_mx", &self.remote_mx),
            ("resolver", &self.resolver),
        ]
    }
}

/// The content type of [`render_prometheus`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Render every counter in the Prometheus text exposition format (0.0.4). `queue` adds the
/// `posta_queue_items` gauge when the queue manager answered.
pub fn render_prometheus(m: &Metrics, queue: Option<QueueCounts>) -> String {
    let mut out = String::with_capacity(4096);
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let kinds = m.actor_kinds();

    header(
        &mut out,
        "posta_actor_started_total",
        "counter",
        "Actors started, by actor kind.",
    );
    for (kind, c) in &kinds {
        sample(
            &mut out,
            "posta_actor_started_total",
            Some(("kind", kind)),
            load(&c.started),
        );
    }
    header(
        &mut out,
        "posta_actor_stopped_total",
        "counter",
        "Actors stopped, by actor kind.",
    );
    for (kind, c) in &kinds {
        sample(
            &mut out,
            "posta_actor_stopped_total",
            Some(("kind", kind)),
            load(&c.stopped),
        );
    }
    header(
        &mut out,
        "posta_actor_live",
        "gauge",
        "Actors running now (started minus stopped), by actor kind.",
    );
    for (kind, c) in &kinds {
        sample(&mut out, "posta_actor_live", Some(("kind", kind)), c.live());
    }
    header(
        &mut out,
        "posta_actor_panics_total",
        "counter",
        "Panics caught at an actor's boundary, by actor kind.",
    );
    for (kind, c) in &kinds {
        sample(
            &mut out,
            "posta_actor_panics_total",
            Some(("kind", kind)),
            load(&c.panics),
        );
    }
    header(
        &mut out,
        "posta_messages_queued_total",
        "counter",
        "Inbound messages committed to the queue (acknowledged with 250).",
    );
    sample(&mut out, "posta_messages_queued_total", None, load(&m.messages_queued));
    header(
        &mut out,
        "posta_commit_errors_total",
        "counter",
        "Inbound messages whose commit to the queue failed (answered 451/452).",
    );
    sample(&mut out, "posta_commit_errors_total", None, load(&m.commit_errors));
    header(
        &mut out,
        "posta_deliveries_total",
        "counter",
        "Outbound recipient outcomes of finished delivery attempts.",
    );
    for (outcome, c) in [
        ("delivered", &m.deliveries_ok),
        ("deferred", &m.deliveries_deferred),
        ("bounced", &m.deliveries_bounced),
    ] {
        sample(&mut out, "posta_deliveries_total", Some(("outcome", outcome)), load(c));
    }
    header(
        &mut out,
        "posta_outbound_connections_opened_total",
        "counter",
        "New TCP connections opened to remote MXs.",
    );
    sample(
        &mut out,
        "posta_outbound_connections_opened_total",
        None,
        load(&m.connections_opened),
    );
    header(
        &mut out,
        "posta_outbound_connections_reused_total",
        "counter",
        "Deliveries sent over a pooled, already open connection to a remote MX.",
    );
    sample(
        &mut out,
        "posta_outbound_connections_reused_total",
        None,
        load(&m.connections_reused),
    );
    if let Some(q) = queue {
        header(
            &mut out,
            "posta_queue_items",
            "gauge",
            "Queue items known to the queue manager, by state.",
        );
        sample(
            &mut out,
            "posta_queue_items",
            Some(("state", "waiting")),
            q.waiting as u64,
        );
        sample(
            &mut out,
            "posta_queue_items",
            Some(("state", "in_flight")),
            q.in_flight as u64,
        );
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample line; label values here are fixed identifiers (no escaping needed).
fn sample(out: &mut String, name: &str, label: Option<(&str, &str)>, value: u64) {
    let _ = match label {
        Some((k, v)) => writeln!(out, "{name}{{{k}=\"{v}\"}} {value}"),
        None => writeln!(out, "{name} {value}"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_help_and_type() {
        let m = Metrics::default();
        inc(&m.connection.started);
        inc(&m.connection.started);
        inc(&m.connection.stopped);
        inc(&m.messages_queued);
        m.deliveries_bounced.fetch_add(3, Ordering::Relaxed);
        let text = render_prometheus(
            &m,
            Some(QueueCounts {
                waiting: 4,
                in_flight: 1,
            }),
        );
        assert!(
            text.contains("posta_actor_started_total{kind=\"connection\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("posta_actor_stopped_total{kind=\"connection\"} 1\n"));
        assert!(text.contains("posta_actor_live{kind=\"connection\"} 1\n"));
        assert!(text.contains("posta_actor_panics_total{kind=\"resolver\"} 0\n"));
        assert!(text.contains("posta_messages_queued_total 1\n"));
        assert!(text.contains("posta_deliveries_total{outcome=\"bounced\"} 3\n"));
        assert!(text.contains("posta_queue_items{state=\"waiting\"} 4\n"));
        assert!(text.contains("posta_queue_items{state=\"in_flight\"} 1\n"));
        // Every family has HELP and TYPE right before its samples; every sample is `name value`.
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(kind == "counter" || kind == "gauge", "{line}");
                assert!(typed.insert(name.to_string()), "family typed twice: {line}");
            } else if !line.starts_with("# HELP ") {
                let (series, value) = line.rsplit_once(' ').unwrap();
                value.parse::<u64>().unwrap();
                let name = series.split('{').next().unwrap();
                assert!(typed.contains(name), "sample before its TYPE: {line}");
            }
        }
        assert_eq!(typed.len(), 10);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn queue_gauge_only_when_known() {
        let text = render_prometheus(&Metrics::default(), None);
        assert!(!text.contains("posta_queue_items"));
    }
}
