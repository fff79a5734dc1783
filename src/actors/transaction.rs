//! The Transaction actor: receives one message's body as it streams in and commits it to the
//! queue. Small bodies stay in memory; past `spool_after` bytes they go to a spool file, so
//! memory does not grow with message size.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;

use crate::metrics::{inc, metrics, MailboxTicket};
use crate::protocol::session::CommitError;
use crate::queue::spool::{CommitRequest, MessageBody, Spool};

/// Body bytes in stored form.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Chunk(pub Vec<u8>, pub MailboxTicket);

impl Chunk {
    pub fn new(bytes: Vec<u8>) -> Self {
        Chunk(bytes, MailboxTicket::new(&metrics().transaction.mailbox))
    }
}

/// Commit the message; answers with the queue file names.
#[derive(Message)]
#[rtype(result = "Result<Vec<String>, CommitError>")]
pub struct Commit(pub CommitRequest, pub MailboxTicket);

impl Commit {
    pub fn new(req: CommitRequest) -> Self {
        Commit(req, MailboxTicket::new(&metrics().transaction.mailbox))
    }
}

/// What every Transaction actor of a server shares (`actors.ini`).
#[derive(Clone)]
pub struct TxnLimits {
    /// `[mailbox] transaction`.
    pub mailbox: usize,
    /// `[concurrency] commits`: queue commits at once, per process.
    pub commits: Arc<tokio::sync::Semaphore>,
}

impl TxnLimits {
    pub fn new(a: &crate::config::ActorsConfig) -> TxnLimits {
        TxnLimits {
            mailbox: a.transaction_mailbox,
            commits: Arc::new(tokio::sync::Semaphore::new(a.commits)),
        }
    }
}

pub struct TransactionActor {
    spool: Arc<Spool>,
    spool_after: usize,
    limits: TxnLimits,
    uuid: String,
    tail: Vec<u8>,
    file: Option<(File, PathBuf)>,
    /// A write to the spool file failed; the commit will answer with it.
    failed: Option<std::io::Error>,
}

impl TransactionActor {
    pub fn new(spool: Arc<Spool>, spool_after: usize, limits: TxnLimits, uuid: String) -> Self {
        TransactionActor {
            spool,
            spool_after,
            limits,
            uuid,
            tail: Vec::new(),
            file: None,
            failed: None,
        }
    }

    /// Move the in-memory part to the spool file.
    fn spill(&mut self) -> std::io::Result<()> {
        if self.file.is_none() {
            let path = self.spool.body_path(&self.uuid);
            let f = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
            self.file = Some((f, path));
        }
        if let Some((f, _)) = self.file.as_mut() {
            f.write_all(&self.tail)?;
        }
        self.tail.clear();
        Ok(())
    }
}

impl Actor for TransactionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.limits.mailbox);
        inc(&metrics().transaction.started);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        inc(&metrics().transaction.stopped);
        // The spool file is only a staging copy: the queue files (if any) hold the message.
        if let Some((_, path)) = self.file.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Handler<Chunk> for TransactionActor {
    type Result = ();

    fn handle(&mut self, msg: Chunk, _: &mut Self::Context) {
        inc(&metrics().transaction.messages);
        if self.failed.is_some() {
            return;
        }
        if self.tail.is_empty() {
            self.tail = msg.0;
        } else {
            self.tail.extend_from_slice(&msg.0);
        }
        if self.tail.len() > self.spool_after {
            if let Err(e) = self.spill() {
                self.failed = Some(e);
            }
        }
    }
}

impl Handler<Commit> for TransactionActor {
    type Result = ResponseFuture<Result<Vec<String>, CommitError>>;

    fn handle(&mut self, mut msg: Commit, ctx: &mut Self::Context) -> Self::Result {
        msg.1.taken();
        let entered = std::time::Instant::now();
        inc(&metrics().transaction.messages);
        let spool = self.spool.clone();
        let failed = self.failed.take();
        // The commit owns the spool file from here and removes it when done.
        let spooled = self.file.take().map(|(_, p)| p);
        let body = MessageBody {
            spooled: spooled.clone(),
            tail: std::mem::take(&mut self.tail),
        };
        let slots = self.limits.commits.clone();
        ctx.stop();
        Box::pin(async move {
            if let Some(e) = failed {
                inc(&metrics().commit_errors);
                metrics().transaction.handler_seconds.observe_since(entered);
                return Err(crate::queue::spool::commit_error(&e));
            }
            // A bounded number of committers: concurrent fsyncs are what the file system
            // batches (8 threads already reach its group-commit rate), and more threads only
            // contend for the queue directory's lock.
            let _slot = slots.acquire_owned().await;
            let res = actix_rt::task::spawn_blocking(move || {
                let r = spool.commit(&msg.0, &body);
                if let Some(p) = spooled {
                    let _ = std::fs::remove_file(p);
                }
                r
            })
            .await;
            let res = res.unwrap_or_else(|e| Err(CommitError::Temporary(format!("commit task failed: {e}"))));
            match &res {
                Ok(_) => inc(&metrics().messages_queued),
                Err(_) => inc(&metrics().commit_errors),
            }
            metrics().transaction.handler_seconds.observe_since(entered);
            res
        })
    }
}
