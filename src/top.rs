//! `posta top`: a live terminal view of a running daemon's metrics endpoint (see
//! `docs/top.md`). Three plain parts and a thin UI:
//!
//! - [`scrape`]: one HTTP/1.1 `GET /metrics` over a std `TcpStream`, with a deadline;
//! - [`parse`]: the Prometheus text (0.0.4) into a [`Snapshot`];
//! - [`actor_rows`] / [`stat_rows`] / [`render_text`]: the tables (counters with their rate
//!   per second between two scrapes), shared by `--once` and the ratatui live view ([`run`]).

use std::io::{self, IsTerminal, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::config::IniFile;

/// Time allowed for one scrape (connect, request, whole answer). The endpoint waits up to
/// 2 seconds for the queue manager's counts, so this must be longer.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read.
pub const MAX_ANSWER: usize = 4 * 1024 * 1024;
/// Shortest and longest `--interval`.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// Actor kinds in the order the daemon renders them (unknown kinds follow, as they came).
pub const ACTOR_KINDS: [&str; 6] = [
    "connection",
    "transaction",
    "queue_manager",
    "queue_file",
    "remote_mx",
    "resolver",
];

/// `posta top` options.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Config directory: the endpoint is its `metrics.ini [main] listen`.
    #[arg(short, long, value_name = "DIR", default_value = "config")]
    pub config: PathBuf,
    /// The metrics endpoint to read instead of the config's: HOST:PORT, or a bare PORT (127.0.0.1).
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "config")]
    pub addr: Option<String>,
    /// Time between refreshes: 500ms, 1s, 2s, 1m (a bare number is seconds).
    #[arg(long, value_name = "TIME", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Print one plain-text table to stdout and exit (for scripts; rates need two scrapes, shown as -).
    #[arg(long)]
    pub once: bool,
}

/// Why `posta top` could not go on.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    /// No usable endpoint address.
    #[error("{0}")]
    Address(String),
    /// Nothing answers at the address.
    #[error("cannot connect to the metrics endpoint {addr}: {source} (is posta running, with metrics.ini [main] listen set to this address?)")]
    Connect { addr: String, source: io::Error },
    /// Something answered, but not a usable metrics page.
    #[error("metrics endpoint {addr}: {msg}")]
    Scrape { addr: String, msg: String },
    /// The terminal could not be set up or drawn on.
    #[error("terminal: {0}")]
    Terminal(#[from] io::Error),
}

// ---------------------------------------------------------------------------------------------
// The model

/// One actor kind's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActorStats {
    pub kind: String,
    pub live: u64,
    pub started: u64,
    pub stopped: u64,
    pub panics: u64,
    /// `posta_actor_mailbox_depth`: messages waiting for this kind's handlers.
    pub mailbox: u64,
}

/// `posta_queue_items` (absent when the queue manager did not answer in time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueItems {
    pub waiting: u64,
    pub in_flight: u64,
}

/// What one scrape says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Known kinds first, in [`ACTOR_KINDS`] order.
    pub actors: Vec<ActorStats>,
    pub messages_queued: u64,
    pub commit_errors: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
    pub connections_opened: u64,
    pub connections_reused: u64,
    pub queue: Option<QueueItems>,
    /// `posta_queue_oldest_age_seconds` (with the queue items).
    pub oldest_age_s: Option<u64>,
}

/// One sample line: `name{labels} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Parse Prometheus text into a [`Snapshot`]. Unknown families are ignored; an answer with no
/// `posta_` sample at all is an error (not a posta endpoint).
pub fn parse(text: &str) -> Result<Snapshot, String> {
    let samples = parse_samples(text)?;
    if !samples.iter().any(|s| s.name.starts_with("posta_")) {
        return Err("the answer has no posta_ metrics (is this a posta metrics endpoint?)".into());
    }
    Ok(Snapshot::from_samples(&samples))
}

impl Snapshot {
    pub fn from_samples(samples: &[Sample]) -> Snapshot {
        let mut snap = Snapshot::default();
        // Live is taken from posta_actor_live when present, else started minus stopped.
        let mut live_seen: Vec<String> = Vec::new();
        let mut waiting = None;
        let mut in_flight = None;
        for s in samples {
            let v = count(s.value);
            match s.name.as_str() {
                "posta_actor_started_total"
                | "posta_actor_stopped_total"
                | "posta_actor_live"
                | "posta_actor_panics_total"
                | "posta_actor_mailbox_depth" => {
                    let Some(kind) = s.label("kind") else { continue };
                    let a = snap.actor(kind);
                    match s.name.as_str() {
                        "posta_actor_started_total" => a.started = v,
                        "posta_actor_stopped_total" => a.stopped = v,
                        "posta_actor_panics_total" => a.panics = v,
                        "posta_actor_mailbox_depth" => a.mailbox = v,
                        _ => {
                            a.live = v;
                            live_seen.push(kind.to_string());
                        }
                    }
                }
                "posta_messages_queued_total" => snap.messages_queued = v,
                "posta_commit_errors_total" => snap.commit_errors = v,
                "posta_deliveries_total" => match s.label("outcome") {
                    Some("delivered") => snap.delivered = v,
                    Some("deferred") => snap.deferred = v,
                    Some("bounced") => snap.bounced = v,
                    _ => {}
                },
                "posta_outbound_connections_opened_total" => snap.connections_opened = v,
                "posta_outbound_connections_reused_total" => snap.connections_reused = v,
                "posta_queue_oldest_age_seconds" => snap.oldest_age_s = Some(v),
                "posta_queue_items" => match s.label("state") {
                    Some("waiting") => waiting = Some(v),
                    Some("in_flight") => in_flight = Some(v),
                    _ => {}
                },
                _ => {}
            }
        }
        for a in &mut snap.actors {
            if !live_seen.contains(&a.kind) {
                a.live = a.started.saturating_sub(a.stopped);
            }
        }
        let rank = |k: &str| ACTOR_KINDS.iter().position(|x| *x == k).unwrap_or(usize::MAX);
        snap.actors.sort_by_key(|a| rank(&a.kind)); // stable: unknown kinds keep their order
        if waiting.is_some() || in_flight.is_some() {
            snap.queue = Some(QueueItems {
                waiting: waiting.unwrap_or(0),
                in_flight: in_flight.unwrap_or(0),
            });
        }
        snap
    }

    fn actor(&mut self, kind: &str) -> &mut ActorStats {
        let i = match self.actors.iter().position(|a| a.kind == kind) {
            Some(i) => i,
            None => {
                self.actors.push(ActorStats {
                    kind: kind.to_string(),
                    ..ActorStats::default()
                });
                self.actors.len() - 1
            }
        };
        &mut self.actors[i]
    }
}

/// A sample value as a count: negative, NaN and infinite values read as 0.
fn count(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v.round() as u64
    } else {
        0
    }
}

/// Every sample of a Prometheus text page (comments and blank lines skipped).
pub fn parse_samples(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_sample(line).map_err(|e| format!("line {}: {e}: {line:?}", n + 1))?);
    }
    Ok(out)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("no metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = parse_labels(r, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let raw = fields.next().ok_or("no value")?;
    let value = parse_value(raw).ok_or_else(|| format!("bad value {raw:?}"))?;
    match fields.next() {
        Some(ts) if ts.parse::<i64>().is_err() => return Err(format!("bad timestamp {ts:?}")),
        _ => {}
    }
    if fields.next().is_some() {
        return Err("trailing text".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parse `k="v",...}` (after the `{`); returns what follows the `}`.
fn parse_labels<'a>(mut s: &'a str, out: &mut Vec<(String, String)>) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(r) = s.strip_prefix('}') {
            return Ok(r);
        }
        let (key, r) = s.split_once('=').ok_or("label without '='")?;
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name {key:?}"));
        }
        let r = r.trim_start().strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        out.push((key.to_string(), value));
        s = r[end + 1..].trim_start();
        if let Some(r) = s.strip_prefix(',') {
            s = r;
        } else if !s.starts_with('}') {
            return Err("expected ',' or '}' after a label".into());
        }
    }
}

fn parse_value(raw: &str) -> Option<f64> {
    match raw {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if raw.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => raw.parse().ok(),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Tables

/// Rows of the actor table: kind, live, started, stopped, panics, mailbox depth.
pub fn actor_rows(snap: &Snapshot) -> Vec<[String; 6]> {
    snap.actors
        .iter()
        .map(|a| {
            [
                a.kind.clone(),
                a.live.to_string(),
                a.started.to_string(),
                a.stopped.to_string(),
                a.panics.to_string(),
                a.mailbox.to_string(),
            ]
        })
        .collect()
}

pub const ACTOR_HEAD: [&str; 6] = ["KIND", "LIVE", "STARTED", "STOPPED", "PANICS", "MAILBOX"];
pub const STAT_HEAD: [&str; 3] = ["METRIC", "TOTAL", "/s"];

/// One line of the second table.
#[derive(Debug, Clone, PartialEq)]
pub struct StatRow {
    pub label: &'static str,
    /// `None`: not in the scrape (queue items when the queue manager did not answer).
    pub value: Option<u64>,
    /// Counters only, from the second scrape on.
    pub rate: Option<f64>,
    pub counter: bool,
}

impl StatRow {
    /// label, total, rate per second (`-` for a counter without a previous scrape, empty for a gauge).
    pub fn cells(&self) -> [String; 3] {
        [
            self.label.to_string(),
            self.value.map_or_else(|| "n/a".to_string(), |v| v.to_string()),
            match (self.counter, self.rate) {
                (false, _) => String::new(),
                (true, None) => "-".to_string(),
                (true, Some(r)) => format!("{r:.1}"),
            },
        ]
    }
}

/// Reads one counter of a snapshot.
type Getter = fn(&Snapshot) -> u64;

/// Counters and gauges, with each counter's rate per second since `prev` (taken `elapsed`
/// before `cur`). A counter that went down (the daemon restarted) counts from 0.
pub fn stat_rows(cur: &Snapshot, prev: Option<(&Snapshot, Duration)>) -> Vec<StatRow> {
    let counters: [(&'static str, Getter); 7] = [
        ("messages queued", |s| s.messages_queued),
        ("commit errors", |s| s.commit_errors),
        ("delivered", |s| s.delivered),
        ("deferred", |s| s.deferred),
        ("bounced", |s| s.bounced),
        ("outbound conns opened", |s| s.connections_opened),
        ("outbound conns reused", |s| s.connections_reused),
    ];
    let mut rows: Vec<StatRow> = counters
        .iter()
        .map(|(label, get)| {
            let now = get(cur);
            let rate = prev.and_then(|(p, elapsed)| {
                let secs = elapsed.as_secs_f64();
                let before = get(p);
                let delta = if now >= before { now - before } else { now };
                (secs > 0.0).then(|| delta as f64 / secs)
            });
            StatRow {
                label,
                value: Some(now),
                rate,
                counter: true,
            }
        })
        .collect();
    rows.push(StatRow {
        label: "queue waiting",
        value: cur.queue.map(|q| q.waiting),
        rate: None,
        counter: false,
    });
    rows.push(StatRow {
        label: "queue in flight",
        value: cur.queue.map(|q| q.in_flight),
        rate: None,
        counter: false,
    });
    rows.push(StatRow {
        label: "queue oldest (s)",
        value: cur.oldest_age_s,
        rate: None,
        counter: false,
    });
    rows
}

/// The plain-text view (`--once`): a title line, the actor table and the metric table.
pub fn render_text(addr: &str, cur: &Snapshot, prev: Option<(&Snapshot, Duration)>) -> String {
    let mut out = format!("posta top: http://{addr}/metrics\n\n");
    let actors = actor_rows(cur);
    table(
        &mut out,
        &ACTOR_HEAD,
        actors.iter().map(|r| r.each_ref().map(String::as_str)),
    );
    out.push('\n');
    let stats: Vec<[String; 3]> = stat_rows(cur, prev).iter().map(StatRow::cells).collect();
    table(
        &mut out,
        &STAT_HEAD,
        stats.iter().map(|r| r.each_ref().map(String::as_str)),
    );
    out
}

/// Columns padded to their widest cell: the first left-aligned, the others right-aligned.
fn table<'a, const N: usize>(out: &mut String, head: &[&'a str; N], rows: impl Iterator<Item = [&'a str; N]> + Clone) {
    let mut width = head.map(|h| h.chars().count());
    for r in rows.clone() {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(*head).chain(rows) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i == 0 {
                line.push_str(&format!("{c:<w$}", w = width[0]));
            } else {
                line.push_str(&format!("  {c:>w$}", w = width[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

// ---------------------------------------------------------------------------------------------
// Where, and the scrape

/// A metrics endpoint: what the user named, and the addresses it resolves to.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` as given (for messages and the `Host` header).
    pub display: String,
    pub addrs: Vec<SocketAddr>,
}

/// `--addr`: `HOST:PORT`, `[v6]:PORT`, or a bare `PORT` (127.0.0.1). An `http://` prefix and a
/// `/metrics` path are accepted and dropped.
pub fn target_from_addr(raw: &str) -> Result<Target, TopError> {
    let s = raw.trim();
    let s = s.strip_prefix("http://").unwrap_or(s);
    let s = s.strip_suffix("/metrics").unwrap_or(s).trim_end_matches('/');
    if let Ok(port) = s.parse::<u16>() {
        return Ok(target(SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
    }
    let bad = |why: String| TopError::Address(format!("--addr {raw:?}: {why}"));
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| bad(format!("{e} (expected HOST:PORT)")))?
        .collect();
    if addrs.is_empty() {
        return Err(bad("no address found".into()));
    }
    Ok(Target {
        display: s.to_string(),
        addrs,
    })
}

fn target(addr: SocketAddr) -> Target {
    Target {
        display: addr.to_string(),
        addrs: vec![addr],
    }
}

/// `-c DIR`: the `[main] listen` of `DIR/metrics.ini`, read as the daemon reads it. A wildcard
/// address (`0.0.0.0`, `::`) is reached on loopback.
pub fn target_from_config(dir: &Path) -> Result<Target, TopError> {
    let file = dir.join("metrics.ini");
    let f = IniFile::load(dir, "metrics.ini").map_err(|e| TopError::Address(e.to_string()))?;
    let raw = f.string("main", "listen", "");
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(TopError::Address(format!(
            "{} has no [main] listen: the metrics endpoint is off (set it and restart posta, or give --addr HOST:PORT)",
            file.display()
        )));
    }
    let addr = if let Ok(port) = raw.parse::<u16>() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    } else if let Some(port) = raw.strip_prefix("localhost:").and_then(|p| p.parse::<u16>().ok()) {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    } else {
        raw.parse::<SocketAddr>().map_err(|_| {
            TopError::Address(format!(
                "{}: [main] listen: {raw:?} is not an address (expected ip:port, [ipv6]:port, localhost:port or port)",
                file.display()
            ))
        })?
    };
    if addr.port() == 0 {
        return Err(TopError::Address(format!(
            "{}: [main] listen has port 0 (a free port picked at start): give --addr HOST:PORT",
            file.display()
        )));
    }
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(target(SocketAddr::new(ip, addr.port())))
}

/// `GET /metrics` within `timeout` (connect, request and the whole answer); the body of a
/// `200` answer.
pub fn scrape(t: &Target, timeout: Duration) -> Result<String, TopError> {
    let deadline = Instant::now() + timeout;
    let scrape_err = |msg: String| TopError::Scrape {
        addr: t.display.clone(),
        msg,
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    let mut stream = None;
    for a in &t.addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let Some(mut stream) = stream else {
        return Err(TopError::Connect {
            addr: t.display.clone(),
            source: last,
        });
    };
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nUser-Agent: posta-top/{}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
        t.display,
        env!("CARGO_PKG_VERSION")
    );
    stream
        .set_write_timeout(Some(timeout))
        .and_then(|_| stream.write_all(request.as_bytes()))
        .map_err(|e| scrape_err(format!("sending the request: {e}")))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(scrape_err(format!(
                "no complete answer within {}s",
                timeout.as_secs_f64()
            )));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| scrape_err(e.to_string()))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.len() > MAX_ANSWER {
                    return Err(scrape_err(format!("answer larger than {MAX_ANSWER} bytes")));
                }
                if answer_complete(&answer) {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(scrape_err(format!(
                    "no complete answer within {}s",
                    timeout.as_secs_f64()
                )));
            }
            Err(e) => return Err(scrape_err(format!("reading the answer: {e}"))),
        }
    }
    http_body(&answer).map_err(scrape_err)
}

/// True when `answer` has a full head and a `Content-Length` body (no need to wait for EOF).
fn answer_complete(answer: &[u8]) -> bool {
    let Some(end) = find(answer, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]);
    header(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|len| answer.len() >= end + 4 + len)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The body of a whole HTTP/1.x answer read to its end: `200` only; `Content-Length` and
/// `chunked` bodies are both understood.
pub fn http_body(answer: &[u8]) -> Result<String, String> {
    if answer.is_empty() {
        return Err("the connection was closed without an answer".into());
    }
    let end = find(answer, b"\r\n\r\n").ok_or("incomplete HTTP answer (no end of headers)")?;
    let head = String::from_utf8_lossy(&answer[..end]);
    let status = head.lines().next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    let (proto, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !proto.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(format!("not an HTTP answer: {:?}", truncate(status, 80)));
    }
    if code != "200" {
        return Err(format!(
            "HTTP {} (expected 200 from GET /metrics)",
            status[proto.len()..].trim()
        ));
    }
    let mut body = answer[end + 4..].to_vec();
    if header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body)?;
    } else if let Some(v) = header(&head, "content-length") {
        let len: usize = v.parse().map_err(|_| format!("bad Content-Length {v:?}"))?;
        if body.len() < len {
            return Err(format!("answer cut short: {} of {len} body bytes", body.len()));
        }
        body.truncate(len);
    }
    String::from_utf8(body).map_err(|_| "the body is not UTF-8".to_string())
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = find(b, b"\r\n").ok_or("bad chunked body")?;
        let size_field = String::from_utf8_lossy(&b[..eol]);
        let size_hex = size_field.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| "bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("chunked body cut short".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Scrape and parse.
pub fn fetch(t: &Target, timeout: Duration) -> Result<Snapshot, TopError> {
    let body = scrape(t, timeout)?;
    parse(&body).map_err(|msg| TopError::Scrape {
        addr: t.display.clone(),
        msg,
    })
}

/// `--interval`: `500ms`, `1s`, `2m`, or a bare number of seconds (`1.5`).
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("bad interval {s:?}: use e.g. 500ms, 1s, 2.5s, 1m");
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(bad()),
    };
    let d = Duration::try_from_secs_f64(secs).map_err(|_| bad())?;
    if d < MIN_INTERVAL || d > MAX_INTERVAL {
        return Err(format!("interval {s:?} out of range: between 100ms and 1h"));
    }
    Ok(d)
}

// ---------------------------------------------------------------------------------------------
// The command

/// `posta top`.
pub fn run(args: &TopArgs) -> Result<(), TopError> {
    let target = match &args.addr {
        Some(a) => target_from_addr(a)?,
        None => target_from_config(&args.config)?,
    };
    if args.once {
        let snap = fetch(&target, SCRAPE_TIMEOUT)?;
        let mut out = io::stdout().lock();
        out.write_all(render_text(&target.display, &snap, None).as_bytes())?;
        out.flush()?;
        return Ok(());
    }
    if !io::stdout().is_terminal() {
        return Err(TopError::Address(
            "standard output is not a terminal: use --once for a plain-text table".into(),
        ));
    }
    live(target, args.interval)
}

/// What the live view shows.
#[derive(Default)]
struct LiveState {
    cur: Option<(Instant, Snapshot)>,
    prev: Option<(Instant, Snapshot)>,
    updated: Option<chrono::DateTime<chrono::Local>>,
    error: Option<String>,
}

impl LiveState {
    fn update(&mut self, at: Instant, r: Result<Snapshot, TopError>) {
        match r {
            Ok(s) => {
                self.prev = self.cur.take();
                self.cur = Some((at, s));
                self.updated = Some(chrono::Local::now());
                self.error = None;
            }
            Err(e) => self.error = Some(e.to_string()),
        }
    }

    fn prev(&self) -> Option<(&Snapshot, Duration)> {
        let (now, _) = self.cur.as_ref()?;
        let (then, p) = self.prev.as_ref()?;
        Some((p, now.duration_since(*then)))
    }
}

/// Raw mode and the alternate screen for as long as it lives: dropping it (on return, on an
/// error, while unwinding) restores the terminal; ratatui's panic hook does too.
struct Tui(ratatui::DefaultTerminal);

impl Tui {
    fn new() -> io::Result<Tui> {
        match ratatui::try_init() {
            Ok(t) => Ok(Tui(t)),
            Err(e) => {
                ratatui::restore();
                Err(e)
            }
        }
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

fn live(target: Target, interval: Duration) -> Result<(), TopError> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

    // Scrapes run on their own thread so that keys stay responsive while one waits; the thread
    // ends at its next send after the view is gone (or with the process).
    let (tx, rx) = mpsc::channel();
    let scraper = target.clone();
    std::thread::Builder::new()
        .name("posta-top-scrape".into())
        .spawn(move || loop {
            let start = Instant::now();
            let r = fetch(&scraper, SCRAPE_TIMEOUT.max(interval));
            if tx.send((Instant::now(), r)).is_err() {
                return;
            }
            std::thread::sleep(interval.saturating_sub(start.elapsed()));
        })?;

    let mut tui = Tui::new()?;
    let mut state = LiveState::default();
    loop {
        while let Ok((at, r)) = rx.try_recv() {
            state.update(at, r);
        }
        tui.0.draw(|f| draw(f, &state, &target, interval))?;
        if event::poll(Duration::from_millis(100))? {
            if let Event::Key(k) = event::read()? {
                let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                let quit = matches!(k.code, KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc);
                if k.kind == KeyEventKind::Press && (ctrl_c || quit) {
                    return Ok(());
                }
            }
        }
    }
}

fn draw(f: &mut ratatui::Frame, state: &LiveState, target: &Target, interval: Duration) {
    use ratatui::layout::{Constraint, Layout};
    use ratatui::style::{Color, Style, Stylize};
    use ratatui::text::{Line, Span};
    use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};

    let title = Line::from(vec![
        Span::from("posta top ").bold(),
        Span::from(format!("http://{}/metrics", target.display)),
        Span::from(format!("  every {}s", interval.as_secs_f64())),
        Span::from(match state.updated {
            Some(t) => format!("  updated {}", t.format("%H:%M:%S")),
            None => String::new(),
        }),
    ]);
    let status = match (&state.error, &state.cur) {
        (Some(e), _) => Line::from(format!("scrape failed: {e}")).style(Style::new().fg(Color::Red)),
        (None, None) => Line::from("waiting for the first scrape..."),
        (None, Some(_)) => Line::from(""),
    };
    let footer = Line::from("q or Ctrl-C: quit").dim();

    let snap = state.cur.as_ref().map(|(_, s)| s);
    let actors = snap.map(actor_rows).unwrap_or_default();
    let stats = snap.map(|s| stat_rows(s, state.prev())).unwrap_or_default();
    let [head, msg, actor_area, stat_area, _, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(actors.len() as u16 + 3),
        Constraint::Length(stats.len() as u16 + 3),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(f.area());
    f.render_widget(Paragraph::new(title), head);
    f.render_widget(Paragraph::new(status), msg);
    f.render_widget(Paragraph::new(footer), foot);

    let right = |s: String| Cell::from(Line::from(s).right_aligned());
    let header = |cols: &[&'static str]| {
        Row::new(
            cols.iter()
                .enumerate()
                .map(|(i, c)| if i == 0 { Cell::from(*c) } else { right(c.to_string()) }),
        )
        .style(Style::new().bold().reversed())
    };
    if snap.is_none() {
        return;
    }
    let rows = snap.into_iter().flat_map(|s| &s.actors).zip(actors).map(|(a, cells)| {
        let [kind, rest @ ..] = cells;
        let row = Row::new(std::iter::once(Cell::from(kind)).chain(rest.map(right)));
        if a.panics > 0 {
            row.style(Style::new().fg(Color::Red).bold())
        } else {
            row
        }
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(16),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(8),
        ],
    )
    .header(header(&ACTOR_HEAD))
    .block(Block::bordered().title(" actors "));
    f.render_widget(table, actor_area);

    let rows = stats.iter().map(|r| {
        let [label, total, rate] = r.cells();
        let row = Row::new([Cell::from(label), right(total), right(rate)]);
        let alarm = matches!(r.label, "commit errors" | "bounced") && r.value.unwrap_or(0) > 0;
        if alarm {
            row.style(Style::new().fg(Color::Yellow))
        } else {
            row
        }
    });
    let table = Table::new(
        rows,
        [Constraint::Length(24), Constraint::Length(12), Constraint::Length(10)],
    )
    .header(header(&STAT_HEAD))
    .block(Block::bordered().title(" messages, deliveries, queue "));
    f.render_widget(table, stat_area);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# HELP posta_actor_started_total Actors started, by actor kind.
# TYPE posta_actor_started_total counter
posta_actor_started_total{kind=\"connection\"} 3
posta_actor_started_total{kind=\"transaction\"} 2
posta_actor_started_total{kind=\"queue_manager\"} 1
posta_actor_started_total{kind=\"queue_file\"} 0
posta_actor_started_total{kind=\"remote_mx\"} 0
posta_actor_started_total{kind=\"resolver\"} 1
# TYPE posta_actor_stopped_total counter
posta_actor_stopped_total{kind=\"connection\"} 2
posta_actor_stopped_total{kind=\"transaction\"} 2
# TYPE posta_actor_live gauge
posta_actor_live{kind=\"connection\"} 1
posta_actor_live{kind=\"transaction\"} 0
posta_actor_live{kind=\"queue_manager\"} 1
# TYPE posta_actor_panics_total counter
posta_actor_panics_total{kind=\"queue_file\"} 4
# TYPE posta_actor_mailbox_depth gauge
posta_actor_mailbox_depth{kind=\"connection\"} 0
posta_actor_mailbox_depth{kind=\"transaction\"} 3
# TYPE posta_messages_queued_total counter
posta_messages_queued_total 2
# TYPE posta_commit_errors_total counter
posta_commit_errors_total 1
# TYPE posta_deliveries_total counter
posta_deliveries_total{outcome=\"delivered\"} 10
posta_deliveries_total{outcome=\"deferred\"} 5
posta_deliveries_total{outcome=\"bounced\"} 1
# TYPE posta_outbound_connections_opened_total counter
posta_outbound_connections_opened_total 7
posta_outbound_connections_reused_total 6
# TYPE posta_queue_items gauge
posta_queue_items{state=\"waiting\"} 4
posta_queue_items{state=\"in_flight\"} 1
# TYPE posta_queue_oldest_age_seconds gauge
posta_queue_oldest_age_seconds 90
";

    #[test]
    fn parses_sample_text() {
        let s = parse(SAMPLE).unwrap();
        let kinds: Vec<&str> = s.actors.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(kinds, ACTOR_KINDS);
        assert_eq!(
            s.actors[0],
            ActorStats {
                kind: "connection".into(),
                live: 1,
                started: 3,
                stopped: 2,
                panics: 0,
                mailbox: 0,
            }
        );
        assert_eq!(s.actors[3].panics, 4);
        assert_eq!(s.actors[1].mailbox, 3);
        assert_eq!(s.oldest_age_s, Some(90));
        // No posta_actor_live sample: started minus stopped.
        assert_eq!(s.actors[5].live, 1);
        assert_eq!(s.messages_queued, 2);
        assert_eq!(s.commit_errors, 1);
        assert_eq!((s.delivered, s.deferred, s.bounced), (10, 5, 1));
        assert_eq!((s.connections_opened, s.connections_reused), (7, 6));
        assert_eq!(
            s.queue,
            Some(QueueItems {
                waiting: 4,
                in_flight: 1
            })
        );
    }

    #[test]
    fn parses_the_daemons_own_rendering() {
        use crate::actors::queue_manager::QueueCounts;
        use crate::metrics::{inc, render_prometheus, Metrics};
        let m = Metrics::default();
        inc(&m.connection.started);
        inc(&m.messages_queued);
        inc(&m.deliveries_deferred);
        let with_queue = parse(&render_prometheus(
            &m,
            Some(QueueCounts {
                waiting: 2,
                ..Default::default()
            }),
        ))
        .unwrap();
        assert_eq!(with_queue.actors.len(), 6);
        assert_eq!(with_queue.actors[0].live, 1);
        assert_eq!(with_queue.messages_queued, 1);
        assert_eq!(with_queue.deferred, 1);
        assert_eq!(with_queue.queue.unwrap().waiting, 2);
        // The queue manager did not answer: no gauge, shown as n/a.
        let without = parse(&render_prometheus(&m, None)).unwrap();
        assert_eq!(without.queue, None);
        let rows = stat_rows(&without, None);
        assert_eq!(rows.last().unwrap().cells()[1], "n/a");
    }

    #[test]
    fn parser_edge_cases() {
        let text = "posta_actor_started_total{ kind = \"weird \\\"kind\\\"\" , other=\"a,b}\" , } 1e3 1700000000000\n\
                    \n   # a comment\n\
                    posta_actor_started_total{kind=\"connection\"} 5\n\
                    other_family_total 12\n\
                    posta_messages_queued_total +Inf\n\
                    posta_commit_errors_total NaN\n\
                    posta_deliveries_total{outcome=\"delivered\"} 2.6\n";
        let samples = parse_samples(text).unwrap();
        assert_eq!(samples[0].label("kind"), Some("weird \"kind\""));
        assert_eq!(samples[0].label("other"), Some("a,b}"));
        assert_eq!(samples[0].value, 1000.0);
        let s = Snapshot::from_samples(&samples);
        // Known kinds first, then the unknown one.
        assert_eq!(s.actors[0].kind, "connection");
        assert_eq!(s.actors[1].kind, "weird \"kind\"");
        assert_eq!(s.actors[1].started, 1000);
        assert_eq!(s.messages_queued, 0, "infinite reads as 0");
        assert_eq!(s.commit_errors, 0, "NaN reads as 0");
        assert_eq!(s.delivered, 3);
        assert_eq!(s.queue, None);

        for bad in [
            "posta_x{kind=\"a\" 1",
            "posta_x{kind=a} 1",
            "posta_x{kind=\"a} 1",
            "posta_x",
            "posta_x one",
            "posta_x 1 2 3",
            "posta_x 1 soon",
            "{kind=\"a\"} 1",
        ] {
            let err = parse_samples(bad).unwrap_err();
            assert!(err.starts_with("line 1: "), "{bad}: {err}");
        }
        assert!(parse("# nothing\nnode_load1 0.5\n")
            .unwrap_err()
            .contains("no posta_ metrics"));
        assert!(parse("").is_err());
    }

    #[test]
    fn rates_between_scrapes() {
        let prev = parse(SAMPLE).unwrap();
        let mut cur = prev.clone();
        cur.messages_queued += 10;
        cur.delivered += 4;
        cur.bounced = 0; // went down: the daemon restarted
        let rows = stat_rows(&cur, Some((&prev, Duration::from_secs(2))));
        let get = |label: &str| rows.iter().find(|r| r.label == label).unwrap().clone();
        assert_eq!(get("messages queued").rate, Some(5.0));
        assert_eq!(get("delivered").rate, Some(2.0));
        assert_eq!(get("deferred").rate, Some(0.0));
        assert_eq!(get("bounced").rate, Some(0.0));
        assert_eq!(get("messages queued").cells(), ["messages queued", "12", "5.0"]);
        assert_eq!(get("queue waiting").cells(), ["queue waiting", "4", ""]);
        let first = stat_rows(&cur, None);
        assert_eq!(first[0].cells()[2], "-");
        let zero = stat_rows(&cur, Some((&prev, Duration::ZERO)));
        assert_eq!(zero[0].rate, None);
    }

    #[test]
    fn text_table() {
        let s = parse(SAMPLE).unwrap();
        let text = render_text("127.0.0.1:9225", &s, None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "posta top: http://127.0.0.1:9225/metrics");
        assert_eq!(lines[2], "KIND           LIVE  STARTED  STOPPED  PANICS  MAILBOX");
        assert_eq!(lines[3], "connection        1        3        2       0        0");
        assert_eq!(lines[4], "transaction       0        2        2       0        3");
        assert_eq!(lines[6], "queue_file        0        0        0       4        0");
        assert!(text.contains("\nmessages queued            2   -\n"), "{text}");
        assert!(text.contains("\nqueue in flight            1\n"), "{text}");
        assert!(text.contains("\nqueue oldest (s)          90\n"), "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn live_view_draws_tables_and_rates() {
        use ratatui::backend::TestBackend;
        let prev = parse(SAMPLE).unwrap();
        let mut cur = prev.clone();
        cur.messages_queued += 10;
        let t0 = Instant::now();
        let mut state = LiveState::default();
        state.update(t0, Ok(prev));
        state.update(t0 + Duration::from_secs(2), Ok(cur));
        state.update(t0 + Duration::from_secs(3), Err(TopError::Address("boom".into())));
        let target = target_from_addr("127.0.0.1:9225").unwrap();
        let mut term = ratatui::Terminal::new(TestBackend::new(80, 30)).unwrap();
        term.draw(|f| draw(f, &state, &target, Duration::from_secs(1))).unwrap();
        let buf = term.backend().buffer();
        let lines: Vec<String> = buf
            .content()
            .chunks(buf.area.width as usize)
            .map(|row| row.iter().map(|c| c.symbol()).collect())
            .collect();
        let screen = lines.join("\n");
        assert!(
            lines[0].starts_with("posta top http://127.0.0.1:9225/metrics  every 1s  updated "),
            "{screen}"
        );
        assert!(lines[1].starts_with("scrape failed: boom"), "{screen}");
        let row = |label: &str| {
            let l = lines
                .iter()
                .find(|l| l.contains(label))
                .unwrap_or_else(|| panic!("{label}:\n{screen}"));
            l.trim()
                .trim_matches('│')
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(row("queue_file"), ["queue_file", "0", "0", "0", "4", "0"], "{screen}");
        assert_eq!(row("messages queued"), ["messages", "queued", "12", "5.0"], "{screen}");
        assert_eq!(row("queue waiting"), ["queue", "waiting", "4"], "{screen}");
        assert!(lines[29].starts_with("q or Ctrl-C: quit"), "{screen}");
    }

    #[test]
    fn http_answers() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(http_body(ok).unwrap(), "hello");
        assert!(answer_complete(ok));
        assert!(!answer_complete(&ok[..ok.len() - 1]));
        assert!(http_body(&ok[..ok.len() - 1]).unwrap_err().contains("cut short"));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n";
        assert_eq!(http_body(chunked).unwrap(), "hello");
        let eof = b"HTTP/1.0 200 OK\r\n\r\nbody to eof";
        assert_eq!(http_body(eof).unwrap(), "body to eof");
        let nf = http_body(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").unwrap_err();
        assert!(nf.contains("HTTP 404 Not Found"), "{nf}");
        assert!(http_body(b"SSH-2.0-OpenSSH\r\n\r\n")
            .unwrap_err()
            .contains("not an HTTP answer"));
        assert!(http_body(b"").unwrap_err().contains("closed without an answer"));
        assert!(http_body(b"HTTP/1.1 200 OK\r\n").unwrap_err().contains("incomplete"));
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_interval("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_interval("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_interval("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_interval("1m").unwrap(), Duration::from_secs(60));
        for bad in ["", "s", "1h", "-1s", "10ms", "2m30s", "nan", "1e9"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        let t = target_from_addr("9225").unwrap();
        assert_eq!(t.addrs, vec!["127.0.0.1:9225".parse::<SocketAddr>().unwrap()]);
        let t = target_from_addr("http://[::1]:9225/metrics").unwrap();
        assert_eq!(t.display, "[::1]:9225");
        assert!(target_from_addr("no-port").is_err());

        let dir = tempfile::tempdir().unwrap();
        let err = target_from_config(dir.path()).unwrap_err().to_string();
        assert!(err.contains("metrics.ini has no [main] listen"), "{err}");
        for (listen, want) in [
            ("9325", "127.0.0.1:9325"),
            ("localhost:9325", "127.0.0.1:9325"),
            ("0.0.0.0:9325", "127.0.0.1:9325"),
            ("[::]:9325", "[::1]:9325"),
            ("127.0.0.2:80", "127.0.0.2:80"),
        ] {
            std::fs::write(dir.path().join("metrics.ini"), format!("[main]\nlisten={listen}\n")).unwrap();
            let t = target_from_config(dir.path()).unwrap();
            assert_eq!(t.addrs, vec![want.parse::<SocketAddr>().unwrap()], "{listen}");
        }
        std::fs::write(dir.path().join("metrics.ini"), "[main]\nlisten=127.0.0.1:0\n").unwrap();
        let err = target_from_config(dir.path()).unwrap_err().to_string();
        assert!(err.contains("port 0"), "{err}");
        std::fs::write(dir.path().join("metrics.ini"), "[main]\nlisten=nowhere\n").unwrap();
        assert!(target_from_config(dir.path()).is_err());
    }
}
