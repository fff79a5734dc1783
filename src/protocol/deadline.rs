//! Slow-client deadlines, as plain data: the driver asks [`Deadlines::next`] before it waits
//! for input and sleeps until the answer (or its inactivity timeout, whichever is first).
//!
//! The inactivity timeout alone lets a client keep a session forever by sending one byte just
//! before each timeout (slow loris). These deadlines bound the work itself:
//!
//! - a command line must be complete within `command` of its first byte;
//! - a message (DATA, or the BDAT chunks of one transaction) must arrive within `data`, and at
//!   no less than `data_min_rate` bytes per second once `data_grace` has passed: each byte
//!   received buys `1 / data_min_rate` seconds;
//! - a session may last `session`; a message being received may finish first (its own
//!   deadlines bound it), then the next command gets the `421`.
//!
//! Time is passed in, so the rules are tested without a clock.

use std::time::{Duration, Instant};

/// `connection.ini [deadline]`. `None` (or a rate of 0) turns a deadline off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlineConfig {
    /// `command`: seconds to complete one command line, from its first byte.
    pub command: Option<Duration>,
    /// `data`: seconds to receive one whole message.
    pub data: Option<Duration>,
    /// `data_min_rate`: bytes per second a message must average after the grace period.
    pub data_min_rate: u64,
    /// `data_grace`: seconds before the minimum rate applies.
    pub data_grace: Duration,
    /// `session`: seconds a session may last.
    pub session: Option<Duration>,
}

impl Default for DeadlineConfig {
    fn default() -> Self {
        DeadlineConfig {
            command: Some(Duration::from_secs(300)),
            data: None,
            data_min_rate: 500,
            data_grace: Duration::from_secs(30),
            session: None,
        }
    }
}

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    Command,
    Message,
    Session,
}

impl Deadline {
    /// What the `421 4.4.2` reply says happened.
    pub fn text(self) -> &'static str {
        match self {
            Deadline::Command => "command line too slow",
            Deadline::Message => "message data too slow",
            Deadline::Session => "session too long",
        }
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Deadline::Command => "command",
            Deadline::Message => "message",
            Deadline::Session => "session",
        }
    }
}

/// What the session is doing, as far as the deadlines care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Message data (DATA or a BDAT transaction) is being received.
    pub receiving_message: bool,
    /// Part of a command line is buffered.
    pub partial_line: bool,
    /// Command lines taken so far (a new count means a new line started).
    pub lines: u64,
}

#[derive(Debug, Clone, Copy)]
struct MessageClock {
    start: Instant,
    bytes: u64,
}

/// The clocks of one session.
#[derive(Debug, Clone)]
pub struct Deadlines {
    cfg: DeadlineConfig,
    session_start: Instant,
    /// Lines taken when the current partial line began, and when.
    line: Option<(u64, Instant)>,
    message: Option<MessageClock>,
}

impl Deadlines {
    pub fn new(cfg: DeadlineConfig, now: Instant) -> Self {
        Deadlines {
            cfg,
            session_start: now,
            line: None,
            message: None,
        }
    }

    /// Bytes read from the client (counted toward the message rate while a message arrives).
    pub fn received(&mut self, n: usize) {
        if let Some(m) = &mut self.message {
            m.bytes = m.bytes.saturating_add(n as u64);
        }
    }

    /// Bring the clocks up to date with `p` and return the earliest deadline, if any.
    pub fn next(&mut self, p: Progress, now: Instant) -> Option<(Instant, Deadline)> {
        if p.receiving_message {
            self.line = None;
            let m = *self.message.get_or_insert(MessageClock { start: now, bytes: 0 });
            return self.message_due(m);
        }
        self.message = None;
        let line = self.line_due(p, now).map(|t| (t, Deadline::Command));
        let session = self
            .cfg
            .session
            .and_then(|d| self.session_start.checked_add(d))
            .map(|t| (t, Deadline::Session));
        earliest(line, session)
    }

    fn line_due(&mut self, p: Progress, now: Instant) -> Option<Instant> {
        if !p.partial_line {
            self.line = None;
            return None;
        }
        let (lines, start) = match self.line {
            Some((n, t)) if n == p.lines => (n, t),
            _ => (p.lines, now),
        };
        self.line = Some((lines, start));
        // checked: a huge configured value means "never", not an overflow panic.
        self.cfg.command.and_then(|d| start.checked_add(d))
    }

    fn message_due(&self, m: MessageClock) -> Option<(Instant, Deadline)> {
        let whole = self.cfg.data.and_then(|d| m.start.checked_add(d));
        let rate = (self.cfg.data_min_rate > 0)
            .then(|| {
                let earned = Duration::from_millis(m.bytes.saturating_mul(1000) / self.cfg.data_min_rate);
                m.start.checked_add(earned.max(self.cfg.data_grace))
            })
            .flatten();
        let whole = whole.map(|t| (t, Deadline::Message));
        let rate = rate.map(|t| (t, Deadline::Message));
        earliest(whole, rate)
    }
}

fn earliest(a: Option<(Instant, Deadline)>, b: Option<(Instant, Deadline)>) -> Option<(Instant, Deadline)> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.0 < x.0 { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn cfg() -> DeadlineConfig {
        DeadlineConfig {
            command: Some(secs(10)),
            data: Some(secs(100)),
            data_min_rate: 100,
            data_grace: secs(5),
            session: Some(secs(1000)),
        }
    }

    const IDLE: Progress = Progress {
        receiving_message: false,
        partial_line: false,
        lines: 0,
    };

    #[test]
    fn idle_session_has_only_the_session_deadline() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(cfg(), t0);
        assert_eq!(d.next(IDLE, t0 + secs(50)), Some((t0 + secs(1000), Deadline::Session)));
        let mut off = Deadlines::new(DeadlineConfig { session: None, ..cfg() }, t0);
        assert_eq!(off.next(IDLE, t0), None);
    }

    #[test]
    fn a_line_is_timed_from_its_first_byte() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(cfg(), t0);
        let partial = Progress {
            partial_line: true,
            ..IDLE
        };
        assert_eq!(d.next(partial, t0 + secs(3)), Some((t0 + secs(13), Deadline::Command)));
        // More bytes of the same line do not move the deadline.
        assert_eq!(d.next(partial, t0 + secs(9)), Some((t0 + secs(13), Deadline::Command)));
        // The next line (pipelined, so the buffer never emptied) starts a new clock.
        let next_line = Progress { lines: 1, ..partial };
        assert_eq!(
            d.next(next_line, t0 + secs(12)),
            Some((t0 + secs(22), Deadline::Command))
        );
    }

    #[test]
    fn message_rate_and_whole_message() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(cfg(), t0);
        let msg = Progress {
            receiving_message: true,
            ..IDLE
        };
        // Grace first.
        assert_eq!(d.next(msg, t0), Some((t0 + secs(5), Deadline::Message)));
        // 2000 bytes at 100 B/s buy 20 s.
        d.received(2000);
        assert_eq!(d.next(msg, t0 + secs(4)), Some((t0 + secs(20), Deadline::Message)));
        // Plenty of bytes: the whole-message deadline is the earlier one.
        d.received(1_000_000);
        assert_eq!(d.next(msg, t0 + secs(6)), Some((t0 + secs(100), Deadline::Message)));
        // Back to commands: the message clock is gone, a new message starts afresh.
        assert_eq!(d.next(IDLE, t0 + secs(7)).map(|x| x.1), Some(Deadline::Session));
        assert_eq!(d.next(msg, t0 + secs(8)), Some((t0 + secs(13), Deadline::Message)));
    }

    #[test]
    fn all_off() {
        let t0 = Instant::now();
        let off = DeadlineConfig {
            command: None,
            data: None,
            data_min_rate: 0,
            data_grace: secs(0),
            session: None,
        };
        let mut d = Deadlines::new(off, t0);
        let busy = Progress {
            receiving_message: true,
            partial_line: true,
            lines: 3,
        };
        assert_eq!(d.next(busy, t0), None);
        assert_eq!(
            d.next(
                Progress {
                    receiving_message: false,
                    ..busy
                },
                t0
            ),
            None
        );
    }
}
