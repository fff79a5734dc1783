//! One log line per SMTP transaction, and a span that carries its uuid.
//!
//! The Connection actor's driver calls [`TxnLog::track`] after every step of the session: a
//! new transaction (MAIL accepted) starts a record; when it ends (queued, RSET, a new HELO,
//! rejected at the end of DATA, or the client left) one `transaction` line goes out with
//! Haraka's transaction uuid (`<connection uuid>.<n>`), sender, recipients, size, outcome and
//! time, inside the connection's span. Hooks run in a `txn` span, so plugin log lines carry
//! the transaction uuid too.

use std::time::Instant;

use crate::hooks::state::Transaction;

/// The transaction being followed.
pub struct TxnLog {
    uuid: String,
    from: String,
    rcpts: usize,
    bytes: u64,
    started: Instant,
    /// The queue ids, once the message was committed.
    queued: Option<String>,
}

impl TxnLog {
    fn new(t: &Transaction) -> TxnLog {
        TxnLog {
            uuid: t.uuid.clone(),
            from: t.sender(),
            rcpts: t.rcpt_to.len(),
            bytes: t.data_bytes,
            started: Instant::now(),
            queued: None,
        }
    }

    /// Follow `current` (the session's transaction now): update the record, or close it and
    /// start the next one.
    pub fn track(slot: &mut Option<TxnLog>, current: Option<&Transaction>) {
        match (slot.as_mut(), current) {
            (Some(l), Some(t)) if l.uuid == t.uuid => {
                l.rcpts = t.rcpt_to.len();
                l.bytes = t.data_bytes;
            }
            (_, current) => {
                TxnLog::end(slot);
                *slot = current.map(TxnLog::new);
            }
        }
    }

    /// The message was committed under these queue ids.
    pub fn queued(slot: &mut Option<TxnLog>, ids: &str) {
        if let Some(l) = slot {
            l.queued = Some(ids.to_string());
        }
    }

    /// Log the summary line of the transaction in `slot`, if any.
    pub fn end(slot: &mut Option<TxnLog>) {
        let Some(l) = slot.take() else {
            return;
        };
        tracing::info!(
            txn = %l.uuid,
            from = %l.from,
            rcpts = l.rcpts,
            bytes = l.bytes,
            outcome = if l.queued.is_some() { "queued" } else { "not queued" },
            queue_ids = l.queued.as_deref().unwrap_or(""),
            time_ms = l.started.elapsed().as_millis() as u64,
            "transaction"
        );
    }

    /// The span hooks of this transaction run in (none between transactions).
    pub fn span(current: Option<&Transaction>) -> tracing::Span {
        match current {
            Some(t) => tracing::info_span!("txn", uuid = %t.uuid),
            None => tracing::Span::none(),
        }
    }
}
