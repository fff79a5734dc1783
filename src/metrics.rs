//! Process-wide counters per actor kind, lock-free (atomics), and their Prometheus text
//! rendering (served on `GET /metrics` by `actors::metrics_http`, see `docs/metrics.md`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dashmap::DashMap;

use crate::actors::queue_manager::QueueCounts;

/// Counters for one actor kind.
#[derive(Debug, Default)]
pub struct ActorCounters {
    pub started: AtomicU64,
    pub stopped: AtomicU64,
    pub panics: AtomicU64,
    /// Restarts by a supervisor (the delivery supervisor counts under `queue_file`).
    pub restarts: AtomicU64,
    /// Messages handled by the instrumented handlers of this kind.
    pub messages: AtomicU64,
    /// Time spent in the instrumented handlers of this kind.
    pub handler_seconds: Histogram,
    /// Messages waiting in this kind's mailboxes (see [`MailboxTicket`]).
    pub mailbox: AtomicU64,
}

/// Carried by a message: counts it in its actor kind's `mailbox` gauge from when it is built
/// (just before it is sent) until the handler takes it, or it is dropped undelivered (the
/// actor is gone). Exact without any lock: the gauge is incremented here and decremented on
/// drop.
#[derive(Debug)]
pub struct MailboxTicket(Option<&'static AtomicU64>);

impl MailboxTicket {
    pub fn new(gauge: &'static AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        MailboxTicket(Some(gauge))
    }

    /// The handler has the message: no longer waiting (for handlers that keep the message
    /// while they work).
    pub fn taken(&mut self) {
        if let Some(g) = self.0.take() {
            g.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for MailboxTicket {
    fn drop(&mut self) {
        self.taken();
    }
}

/// Upper bounds (seconds) of the histogram buckets; `+Inf` is implied.
pub const BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0];

/// A latency histogram with fixed [`BUCKETS`], lock-free. Each bucket holds the observations
/// that fell into it alone; rendering makes them cumulative. The sum is kept in microseconds.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Record one observation of `secs` seconds (negative or NaN counts as 0).
    pub fn observe(&self, secs: f64) {
        let secs = if secs.is_nan() || secs < 0.0 { 0.0 } else { secs };
        if let Some(i) = BUCKETS.iter().position(|le| secs <= *le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((secs * 1e6).round().min(u64::MAX as f64) as u64, Ordering::Relaxed);
    }

    /// Record the time elapsed since `start`.
    pub fn observe_since(&self, start: Instant) {
        self.observe(start.elapsed().as_secs_f64());
    }

    /// Render `name_bucket`, `name_sum` and `name_count` (no HELP/TYPE).
    fn render(&self, out: &mut String, name: &str, label: Option<(&str, &str)>) {
        let (prefix, sep) = match label {
            Some((k, v)) => (format!("{k}=\"{v}\""), ","),
            None => (String::new(), ""),
        };
        let mut cumulative = 0;
        for (le, b) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += b.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{prefix}{sep}le=\"{le}\"}} {cumulative}");
        }
        // Read once: +Inf and _count must agree even while observations race the scrape.
        let count = self.count.load(Ordering::Relaxed).max(cumulative);
        let _ = writeln!(out, "{name}_bucket{{{prefix}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let labels = if prefix.is_empty() {
            String::new()
        } else {
            format!("{{{prefix}}}")
        };
        let _ = writeln!(out, "{name}_sum{labels} {sum}");
        let _ = writeln!(out, "{name}_count{labels} {count}");
    }
}

/// Counters of one remote MX (`host:port`).
#[derive(Debug, Default)]
pub struct MxCounters {
    pub opened: AtomicU64,
    pub reused: AtomicU64,
    pub failures: AtomicU64,
}

/// Distinct `mx` label values kept; further MXs are counted under `mx="other"`.
pub const MAX_MX_LABELS: usize = 1000;

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
    /// Inbound TLS handshakes (STARTTLS and implicit TLS) that succeeded / failed or timed out.
    pub tls_handshakes: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    /// Bytes a client pipelined after STARTTLS, thrown away (command injection attempts).
    pub starttls_discarded_bytes: AtomicU64,
    /// Replies sent to SMTP clients, by code.
    pub smtp_replies: DashMap<u16, AtomicU64>,
    /// MAIL commands that started a transaction (added when the connection closes).
    pub smtp_transactions: AtomicU64,
    /// Time from queueing to delivery of delivered messages.
    pub delivery_seconds: Histogram,
    /// Per remote MX (`host:port`), bounded to [`MAX_MX_LABELS`] entries plus `other`.
    pub remote_mxs: DashMap<String, MxCounters>,
    /// Connections refused by the connection limits, and sessions ended by a deadline.
    pub limits: LimitCounters,
}

/// Connection-limit refusals (`connection.ini [max]`) and slow-client deadline closes
/// (`connection.ini [deadline]`), by reason.
#[derive(Debug, Default)]
pub struct LimitCounters {
    pub refused_total: AtomicU64,
    pub refused_per_ip: AtomicU64,
    pub refused_rate: AtomicU64,
    pub deadline_command: AtomicU64,
    pub deadline_message: AtomicU64,
    pub deadline_session: AtomicU64,
    /// AUTH attempts refused unchecked by `auth.ini lockout_failures`.
    pub auth_lockouts: AtomicU64,
}

impl LimitCounters {
    /// Count a refused connection.
    pub fn refused(&self, r: crate::limits::Refusal) {
        inc(match r {
            crate::limits::Refusal::Total => &self.refused_total,
            crate::limits::Refusal::PerIp => &self.refused_per_ip,
            crate::limits::Refusal::Rate => &self.refused_rate,
        });
    }

    /// Count a session closed by a deadline.
    pub fn deadline(&self, d: crate::protocol::deadline::Deadline) {
        use crate::protocol::deadline::Deadline;
        inc(match d {
            Deadline::Command => &self.deadline_command,
            Deadline::Message => &self.deadline_message,
            Deadline::Session => &self.deadline_session,
        });
    }

    fn render(&self, out: &mut String) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let name = "posta_connections_refused_total";
        header(
            out,
            name,
            "counter",
            "Connections refused with 421 by a connection limit, by reason.",
        );
        for (reason, c) in [
            ("total", &self.refused_total),
            ("per_ip", &self.refused_per_ip),
            ("rate", &self.refused_rate),
        ] {
            sample(out, name, Some(("reason", reason)), load(c));
        }
        let name = "posta_session_deadlines_total";
        header(
            out,
            name,
            "counter",
            "Sessions closed with 421 by a slow-client deadline, by deadline.",
        );
        for (deadline, c) in [
            ("command", &self.deadline_command),
            ("message", &self.deadline_message),
            ("session", &self.deadline_session),
        ] {
            sample(out, name, Some(("deadline", deadline)), load(c));
        }
        let name = "posta_auth_lockouts_total";
        header(
            out,
            name,
            "counter",
            "AUTH attempts answered 454 without a check: too many failures from the client's address.",
        );
        sample(out, name, None, load(&self.auth_lockouts));
    }
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

/// Count every reply in `out` (bytes written to an SMTP client): each line starting with three
/// digits and a space (the last line of a reply) counts once under its code.
pub fn count_replies(m: &Metrics, out: &[u8]) {
    for line in out.split(|b| *b == b'\n') {
        if let [a, b, c, b' ', ..] = *line {
            if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() {
                let code = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
                // The guard is dropped at the end of each statement (never held across .await).
                if let Some(n) = m.smtp_replies.get(&code) {
                    n.fetch_add(1, Ordering::Relaxed);
                } else {
                    m.smtp_replies.entry(code).or_default().fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Metrics {
    /// Apply `f` to the counters of remote MX `mx` (`host:port`); past [`MAX_MX_LABELS`]
    /// distinct MXs, new ones share the `other` entry.
    pub fn per_mx(&self, mx: &str, f: impl FnOnce(&MxCounters)) {
        if let Some(c) = self.remote_mxs.get(mx) {
            return f(&c);
        }
        let key = if self.remote_mxs.len() < MAX_MX_LABELS {
            mx
        } else {
            "other"
        };
        let c = self.remote_mxs.entry(key.to_string()).or_default();
        f(&c);
    }

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
        "posta_actor_mailbox_depth",
        "gauge",
        "Messages sent to actors of this kind and not yet taken by their handler, by actor kind.",
    );
    for (kind, c) in &kinds {
        sample(
            &mut out,
            "posta_actor_mailbox_depth",
            Some(("kind", kind)),
            load(&c.mailbox),
        );
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
        "posta_actor_restarts_total",
        "counter",
        "Restarts by a supervisor, by actor kind (the delivery supervisor counts under queue_file).",
    );
    for (kind, c) in &kinds {
        sample(
            &mut out,
            "posta_actor_restarts_total",
            Some(("kind", kind)),
            load(&c.restarts),
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
        "posta_tls_handshakes_total",
        "counter",
        "Inbound TLS handshakes (STARTTLS and implicit TLS), by result.",
    );
    for (result, c) in [("ok", &m.tls_handshakes), ("failed", &m.tls_handshake_failures)] {
        sample(
            &mut out,
            "posta_tls_handshakes_total",
            Some(("result", result)),
            load(c),
        );
    }
    header(
        &mut out,
        "posta_starttls_discarded_bytes_total",
        "counter",
        "Bytes pipelined after STARTTLS and discarded (RFC 3207; command injection).",
    );
    sample(
        &mut out,
        "posta_starttls_discarded_bytes_total",
        None,
        load(&m.starttls_discarded_bytes),
    );
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
    header(
        &mut out,
        "posta_actor_messages_total",
        "counter",
        "Messages handled by the instrumented actor handlers, by actor kind.",
    );
    for (kind, c) in &kinds {
        sample(
            &mut out,
            "posta_actor_messages_total",
            Some(("kind", kind)),
            load(&c.messages),
        );
    }
    header(
        &mut out,
        "posta_actor_handler_seconds",
        "histogram",
        "Time spent in the actor handlers that do real work, by actor kind.",
    );
    for (kind, c) in [
        ("transaction", &m.transaction),
        ("remote_mx", &m.remote_mx),
        ("resolver", &m.resolver),
    ] {
        c.handler_seconds
            .render(&mut out, "posta_actor_handler_seconds", Some(("kind", kind)));
    }
    header(
        &mut out,
        "posta_smtp_replies_total",
        "counter",
        "Replies sent to SMTP clients, by reply code.",
    );
    let mut replies: Vec<(u16, u64)> = m.smtp_replies.iter().map(|e| (*e.key(), load(e.value()))).collect();
    replies.sort_unstable();
    for (code, n) in replies {
        sample(
            &mut out,
            "posta_smtp_replies_total",
            Some(("code", &code.to_string())),
            n,
        );
    }
    header(
        &mut out,
        "posta_smtp_transactions_total",
        "counter",
        "SMTP transactions started (MAIL accepted), counted when their connection closes.",
    );
    sample(
        &mut out,
        "posta_smtp_transactions_total",
        None,
        load(&m.smtp_transactions),
    );
    header(
        &mut out,
        "posta_delivery_seconds",
        "histogram",
        "Time from queueing to delivery of delivered messages.",
    );
    m.delivery_seconds.render(&mut out, "posta_delivery_seconds", None);
    let mut mxs: Vec<(String, [u64; 3])> = m
        .remote_mxs
        .iter()
        .map(|e| {
            let c = e.value();
            (e.key().clone(), [load(&c.opened), load(&c.reused), load(&c.failures)])
        })
        .collect();
    mxs.sort_unstable();
    for (i, (name, help)) in [
        (
            "posta_remote_mx_sessions_opened_total",
            "New outbound SMTP sessions opened, by remote MX (host:port).",
        ),
        (
            "posta_remote_mx_sessions_reused_total",
            "Deliveries tried on a pooled outbound session, by remote MX (host:port).",
        ),
        (
            "posta_remote_mx_failures_total",
            "Delivery jobs that ended in an error, by remote MX (host:port).",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        header(&mut out, name, "counter", help);
        for (mx, v) in &mxs {
            sample(&mut out, name, Some(("mx", &escape(mx))), v[i]);
        }
    }
    m.limits.render(&mut out);
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
        render_queue_age(&mut out, &q);
    }
    out
}

/// `posta_queue_items_by_age` (the buckets of `posta queue stat`) and the oldest item's age.
fn render_queue_age(out: &mut String, q: &QueueCounts) {
    use crate::queue::inspect::AGE_BOUNDS_MIN;
    header(
        out,
        "posta_queue_items_by_age",
        "gauge",
        "Queue items (waiting and in flight) by time since arrival: younger than the age label in minutes and older than the previous bucket; age older is the rest.",
    );
    for (i, n) in q.by_age.iter().enumerate() {
        let label = AGE_BOUNDS_MIN.get(i).map_or("older".to_string(), |m| m.to_string());
        sample(out, "posta_queue_items_by_age", Some(("age", &label)), *n);
    }
    header(
        out,
        "posta_queue_oldest_age_seconds",
        "gauge",
        "Time since the oldest queue item arrived (0 when the queue is empty).",
    );
    let age = q
        .oldest_arrival_ms
        .map_or(0, |a| crate::hooks::state::now_ms().saturating_sub(a) / 1000);
    sample(out, "posta_queue_oldest_age_seconds", None, age);
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value with `\\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One sample line; label values must already be escaped.
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
                by_age: [2, 0, 0, 0, 0, 0, 0, 0, 0, 3],
                oldest_arrival_ms: Some(1),
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
        assert!(text.contains("posta_queue_items_by_age{age=\"5\"} 2\n"), "{text}");
        assert!(text.contains("posta_queue_items_by_age{age=\"older\"} 3\n"));
        // Arrived at ms 1 of 1970: older than 50 years.
        let oldest = text
            .lines()
            .find_map(|l| l.strip_prefix("posta_queue_oldest_age_seconds "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap();
        assert!(oldest > 50 * 365 * 86_400, "{oldest}");
        // Every family has HELP and TYPE right before its samples; every sample is `name value`.
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(kind == "counter" || kind == "gauge" || kind == "histogram", "{line}");
                assert!(typed.insert(name.to_string()), "family typed twice: {line}");
            } else if !line.starts_with("# HELP ") {
                let (series, value) = line.rsplit_once(' ').unwrap();
                value.parse::<f64>().unwrap();
                let name = series.split('{').next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                    .unwrap_or(name);
                assert!(typed.contains(family), "sample before its TYPE: {line}");
            }
        }
        assert_eq!(typed.len(), 27);
        assert!(text.contains("posta_connections_refused_total{reason=\"per_ip\"} 0\n"));
        assert!(text.contains("posta_session_deadlines_total{deadline=\"command\"} 0\n"));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn mailbox_tickets_count_until_taken_or_dropped() {
        static GAUGE: AtomicU64 = AtomicU64::new(0);
        let mut a = MailboxTicket::new(&GAUGE);
        let b = MailboxTicket::new(&GAUGE);
        assert_eq!(GAUGE.load(Ordering::Relaxed), 2);
        a.taken();
        assert_eq!(GAUGE.load(Ordering::Relaxed), 1);
        a.taken(); // twice: counted once
        drop(a);
        assert_eq!(GAUGE.load(Ordering::Relaxed), 1);
        drop(b); // dropped undelivered
        assert_eq!(GAUGE.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        for secs in [0.001, 0.01, 0.2, 0.7, 7200.0, -1.0] {
            m.delivery_seconds.observe(secs);
        }
        m.transaction.handler_seconds.observe(0.03);
        let text = render_prometheus(&m, None);
        for (le, n) in [
            ("0.01", 3), // 0.001, 0.01 (bounds are inclusive) and -1 (as 0)
            ("0.05", 3),
            ("0.1", 3),
            ("0.5", 4),
            ("1", 5),
            ("5", 5),
            ("3600", 5),
            ("+Inf", 6),
        ] {
            let line = format!("posta_delivery_seconds_bucket{{le=\"{le}\"}} {n}\n");
            assert!(text.contains(&line), "{line}{text}");
        }
        assert!(text.contains("posta_delivery_seconds_count 6\n"), "{text}");
        assert!(text.contains("posta_delivery_seconds_sum 7200.911\n"), "{text}");
        assert!(text.contains("# TYPE posta_delivery_seconds histogram\n"));
        assert!(text.contains("posta_actor_handler_seconds_bucket{kind=\"transaction\",le=\"0.01\"} 0\n"));
        assert!(text.contains("posta_actor_handler_seconds_bucket{kind=\"transaction\",le=\"0.05\"} 1\n"));
        assert!(text.contains("posta_actor_handler_seconds_bucket{kind=\"transaction\",le=\"+Inf\"} 1\n"));
        assert!(text.contains("posta_actor_handler_seconds_count{kind=\"transaction\"} 1\n"));
        assert!(text.contains("posta_actor_handler_seconds_count{kind=\"resolver\"} 0\n"));
        // Buckets never decrease and +Inf equals _count, for every series.
        let mut last: Option<(String, u64)> = None;
        for line in text.lines().filter(|l| l.contains("_bucket{")) {
            let (series, v) = line.rsplit_once(' ').unwrap();
            let v: u64 = v.parse().unwrap();
            let key = series.split("le=").next().unwrap().to_string();
            if let Some((k, prev)) = &last {
                if *k == key {
                    assert!(v >= *prev, "{line}");
                }
            }
            if series.contains("le=\"+Inf\"") {
                let count = series.replace("_bucket", "_count");
                let count = count.replace(",le=\"+Inf\"", "").replace("{le=\"+Inf\"}", "");
                assert!(text.contains(&format!("{count} {v}\n")), "{count} {v}");
            }
            last = Some((key, v));
        }
    }

    #[test]
    fn replies_and_remote_mx_labels() {
        let m = Metrics::default();
        count_replies(&m, b"220 hi\r\n250-a\r\n250-b\r\n250 c\r\n354 go\r\n250 ok\r\n12 x\r\n");
        count_replies(&m, b"550 5.1.1 no\r\n");
        m.per_mx("mx.example:25", |c| inc(&c.opened));
        m.per_mx("mx.example:25", |c| inc(&c.reused));
        m.per_mx("a\"b:25", |c| inc(&c.failures));
        let text = render_prometheus(&m, None);
        assert!(text.contains("posta_smtp_replies_total{code=\"220\"} 1\n"), "{text}");
        assert!(text.contains("posta_smtp_replies_total{code=\"250\"} 2\n"), "{text}");
        assert!(text.contains("posta_smtp_replies_total{code=\"354\"} 1\n"));
        assert!(text.contains("posta_smtp_replies_total{code=\"550\"} 1\n"));
        assert!(text.contains("posta_remote_mx_sessions_opened_total{mx=\"mx.example:25\"} 1\n"));
        assert!(text.contains("posta_remote_mx_sessions_reused_total{mx=\"mx.example:25\"} 1\n"));
        assert!(
            text.contains("posta_remote_mx_failures_total{mx=\"a\\\"b:25\"} 1\n"),
            "{text}"
        );
        // Bounded label set.
        for i in 0..MAX_MX_LABELS + 5 {
            m.per_mx(&format!("h{i}:25"), |c| inc(&c.opened));
        }
        assert_eq!(m.remote_mxs.len(), MAX_MX_LABELS + 1);
        let other = m.remote_mxs.get("other").unwrap().opened.load(Ordering::Relaxed);
        assert_eq!(other, 7);
    }

    #[test]
    fn queue_gauge_only_when_known() {
        let text = render_prometheus(&Metrics::default(), None);
        assert!(!text.contains("posta_queue_items"));
    }
}
