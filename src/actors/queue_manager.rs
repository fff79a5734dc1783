//! The QueueManager actor: the one place that knows every queued item and decides what is
//! due. Waiting items are rows in one timer wheel (no timer and no actor per item); due
//! items go to the DeliverySupervisor, up to `concurrency_max` at a time.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;

use super::delivery_supervisor::{DeliverItem, DeliverySupervisor};
use crate::hooks::state::now_ms;
use crate::metrics::{inc, metrics};
use crate::queue::item;
use crate::queue::timer_wheel::TimerWheel;

/// New queue files from an inbound commit (due now).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Enqueue(pub Vec<String>);

/// A delivery attempt finished.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Finished {
    pub name: String,
    /// The item is still queued under this name, due at this time (ms).
    pub retry: Option<(String, u64)>,
}

/// Retry everything now (SIGUSR1 / `posta queue flush`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

/// Counts for status and tests.
#[derive(Message)]
#[rtype(result = "QueueCounts")]
pub struct Counts;

#[derive(Debug, Clone, Copy, PartialEq, Eq, MessageResponse)]
pub struct QueueCounts {
    pub waiting: usize,
    pub in_flight: usize,
}

pub struct QueueManager {
    dir: PathBuf,
    wheel: TimerWheel<String>,
    in_flight: HashSet<String>,
    concurrency: usize,
    supervisor: Addr<DeliverySupervisor>,
    timer: Option<(SpawnHandle, u64)>,
    disabled: bool,
    /// Items in flight when a flush came: their retry is due at once.
    flushed_in_flight: HashSet<String>,
}

impl QueueManager {
    pub fn new(dir: PathBuf, concurrency: usize, supervisor: Addr<DeliverySupervisor>, disabled: bool) -> Self {
        QueueManager {
            dir,
            wheel: TimerWheel::new(),
            in_flight: HashSet::new(),
            concurrency: concurrency.max(1),
            supervisor,
            timer: None,
            disabled,
            flushed_in_flight: HashSet::new(),
        }
    }

    /// Load the queue dir: due times come from file names, no file is opened.
    fn load(&mut self) {
        let (items, strangers) = match item::scan(&self.dir) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot read the queue dir");
                return;
            }
        };
        for name in strangers {
            match item::quarantine(&self.dir, &name) {
                Ok(p) => tracing::warn!(file = %name, moved_to = %p.display(), "not a queue file name, moved aside"),
                Err(e) => tracing::error!(file = %name, error = %e, "cannot move a stray file aside"),
            }
        }
        let n = items.len();
        for (name, due) in items {
            self.wheel.insert(due, name);
        }
        if n > 0 {
            tracing::info!(items = n, "queue loaded");
        }
    }

    /// Start what is due, then sleep until the next due item.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if !self.disabled {
            let now = now_ms();
            let room = self.concurrency.saturating_sub(self.in_flight.len());
            for name in self.wheel.pop_due(now, room) {
                self.in_flight.insert(name.clone());
                self.supervisor.do_send(DeliverItem(name));
            }
        }
        self.arm(ctx);
    }

    /// One timer for the whole queue, re-armed for the earliest item.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        let Some(due) = self.wheel.next_due() else {
            return;
        };
        if self.disabled {
            return; // nothing is started; no timer needed
        }
        if self.in_flight.len() >= self.concurrency {
            return; // a Finished message will pump again
        }
        if let Some((h, at)) = self.timer {
            if at <= due {
                return;
            }
            ctx.cancel_future(h);
        }
        let wait = Duration::from_millis(due.saturating_sub(now_ms()).clamp(1, 3_600_000));
        let h = ctx.run_later(wait, |act, ctx| {
            act.timer = None;
            act.pump(ctx);
        });
        self.timer = Some((h, due));
    }
}

impl Actor for QueueManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        inc(&metrics().queue_manager.started);
        ctx.set_mailbox_capacity(1024);
        self.load();
        self.pump(ctx);
    }
}

impl Handler<Enqueue> for QueueManager {
    type Result = ();
    fn handle(&mut self, msg: Enqueue, ctx: &mut Self::Context) {
        let now = now_ms();
        for name in msg.0 {
            // The start-up scan may already have picked it up and started it.
            if !self.in_flight.contains(&name) {
                self.wheel.insert(now, name);
            }
        }
        self.pump(ctx);
    }
}

impl Handler<Finished> for QueueManager {
    type Result = ();
    fn handle(&mut self, msg: Finished, ctx: &mut Self::Context) {
        self.in_flight.remove(&msg.name);
        let flushed = self.flushed_in_flight.remove(&msg.name);
        if let Some((name, due)) = msg.retry {
            self.wheel.insert(if flushed { now_ms() } else { due }, name);
        }
        self.pump(ctx);
    }
}

impl Handler<Flush> for QueueManager {
    type Result = ();
    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) {
        self.wheel.reschedule_all(now_ms());
        self.flushed_in_flight.extend(self.in_flight.iter().cloned());
        self.pump(ctx);
    }
}

impl Handler<Counts> for QueueManager {
    type Result = QueueCounts;
    fn handle(&mut self, _: Counts, _: &mut Self::Context) -> QueueCounts {
        QueueCounts {
            waiting: self.wheel.len(),
            in_flight: self.in_flight.len(),
        }
    }
}
