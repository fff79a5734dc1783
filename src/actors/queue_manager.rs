//! The QueueManager actor: the one place that knows every queued item and decides what is
//! due. Waiting items are rows in one timer wheel (no timer and no actor per item); due
//! items go to the DeliverySupervisor, up to `concurrency_max` at a time.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;

use super::control::IdResult;
use super::delivery_supervisor::{DeliverItem, DeliverySupervisor};
use crate::hooks::state::now_ms;
use crate::metrics::{inc, metrics, MailboxTicket};
use crate::queue::file::QueueName;
use crate::queue::inspect::{self, InspectError};
use crate::queue::item;
use crate::queue::timer_wheel::TimerWheel;

/// New queue files from an inbound commit (due now).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Enqueue(pub Vec<String>, pub MailboxTicket);

impl Enqueue {
    pub fn new(names: Vec<String>) -> Self {
        Enqueue(names, MailboxTicket::new(&metrics().queue_manager.mailbox))
    }
}

/// A delivery attempt finished.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Finished {
    pub name: String,
    /// The item is still queued under this name, due at this time (ms).
    pub retry: Option<(String, u64)>,
    pub ticket: MailboxTicket,
}

impl Finished {
    pub fn new(name: String, retry: Option<(String, u64)>) -> Self {
        Finished {
            name,
            retry,
            ticket: MailboxTicket::new(&metrics().queue_manager.mailbox),
        }
    }
}

/// Retry everything now (SIGUSR1 / `posta queue flush`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

/// Shutting down: start no more deliveries (queued items stay for the next start). Answers
/// how many are still in flight; sent repeatedly until that is 0.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Drain;

/// Counts for status and tests.
#[derive(Message)]
#[rtype(result = "QueueCounts")]
pub struct Counts;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, MessageResponse)]
pub struct QueueCounts {
    pub waiting: usize,
    pub in_flight: usize,
    /// Items (waiting and in flight) by age since arrival, in the buckets of `posta queue
    /// stat` ([`inspect::AGE_BOUNDS_MIN`] minutes, then older).
    pub by_age: [u64; inspect::AGE_BOUNDS_MIN.len() + 1],
    /// Arrival time (ms) of the oldest item.
    pub oldest_arrival_ms: Option<u64>,
}

impl QueueCounts {
    /// Count `names` (queue file names; the arrival time is their first field) by age.
    fn add_ages<'a>(&mut self, names: impl Iterator<Item = &'a String>, now: u64) {
        for name in names {
            let Some(arrival) = name.split('_').next().and_then(|a| a.parse::<u64>().ok()) else {
                continue;
            };
            self.by_age[inspect::age_bucket(now.saturating_sub(arrival))] += 1;
            self.oldest_arrival_ms = Some(self.oldest_arrival_ms.map_or(arrival, |o| o.min(arrival)));
        }
    }
}

/// Where the daemon has these items (ids are queue file names), in order (control socket:
/// `posta queue list`).
#[derive(Message, Debug)]
#[rtype(result = "Vec<ItemState>")]
pub struct Lookup(pub Vec<String>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemState {
    /// In the timer wheel, due at this time (ms).
    Waiting(u64),
    /// Being delivered.
    InFlight,
    /// Neither (held, just renamed, or put there behind the daemon's back).
    Unknown,
}

/// An operator's change to queued items (control socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlOp {
    /// Due now in the timer wheel (the file keeps its name); an item being delivered is retried
    /// at once if the attempt defers it.
    Flush,
    /// Out of the timer wheel, then unlinked. Refused while the item is being delivered.
    Delete,
    /// Out of the timer wheel, then moved to `hold/`. Refused while the item is being delivered.
    Hold,
    /// Moved back from `hold/`, then into the timer wheel at the due time in its name.
    Release,
}

/// Apply `op` to each id; one result per id, in order.
#[derive(Message, Debug)]
#[rtype(result = "Vec<IdResult>")]
pub struct Control {
    pub op: ControlOp,
    pub ids: Vec<String>,
}

/// Bounce these items now (control socket): each gets an RFC 3464 DSN with `reason`, queued
/// through the daemon's spool, and leaves the queue; an item being delivered is refused.
#[derive(Message, Debug)]
#[rtype(result = "Vec<IdResult>")]
pub struct BounceItems {
    pub ids: Vec<String>,
    pub reason: String,
}

/// A reloaded `outbound.ini` (SIGHUP / `posta reload`): concurrency and `disabled` apply
/// at once, the rest to deliveries started from now on.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ReloadOutbound(pub crate::config::OutboundConfig);

/// What an operator's bounce needs: the daemon's spool (it holds the queue dir's lock) and
/// the DSN settings.
pub struct BounceCtx {
    pub spool: std::sync::Arc<crate::queue::spool::Spool>,
    pub me: String,
    pub template: Option<crate::protocol::dsn::BounceTemplate>,
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
    bounce: Option<BounceCtx>,
    /// The delivery side's shared settings (for reloads).
    delivery: Option<std::rc::Rc<super::queue_file::DeliveryCtx>>,
    /// Shutting down ([`Drain`]): nothing new is started.
    draining: bool,
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
            bounce: None,
            delivery: None,
            draining: false,
        }
    }

    /// The delivery context whose settings a reload replaces.
    pub fn with_delivery(mut self, cx: std::rc::Rc<super::queue_file::DeliveryCtx>) -> Self {
        self.delivery = Some(cx);
        self
    }

    /// Let the control socket bounce items (`posta queue bounce` with a daemon running).
    pub fn with_bounce(mut self, b: BounceCtx) -> Self {
        self.bounce = Some(b);
        self
    }

    /// One [`BounceItems`] item. Ok is the line the tool prints.
    fn bounce_one(&mut self, id: &str, reason: &str, now: u64) -> Result<String, String> {
        let Some(b) = &self.bounce else {
            return Err("this daemon cannot bounce (no spool); stop it and bounce offline".into());
        };
        let name = inspect::locate(&self.dir, id).map_err(|e| e.to_string())?.name;
        if self.in_flight.contains(&name) {
            return Err(format!(
                "{name} is being delivered now; try again when the attempt is over"
            ));
        }
        let due = self.wheel.due_of(&name);
        if due.is_some() {
            self.wheel.remove(&name);
        }
        let opts = inspect::BounceOptions {
            reason,
            me: &b.me,
            template: b.template.as_ref(),
            now_ms: now,
        };
        match inspect::bounce_with(&self.dir, &name, &opts, &b.spool) {
            Ok(done) => {
                if let inspect::Bounced::Queued { dsn, .. } = &done {
                    for n in dsn {
                        self.wheel.insert(now, n.clone());
                    }
                }
                Ok(done.describe(id))
            }
            Err(e) => {
                if let Some(due) = due {
                    self.wheel.insert(due, name);
                }
                Err(e.to_string())
            }
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

    /// One [`Control`] operation on one item. Ok is the line the tool prints.
    fn control_one(&mut self, op: ControlOp, id: &str, now: u64) -> Result<String, String> {
        let loc = inspect::locate(&self.dir, id).map_err(|e| e.to_string())?;
        let name = loc.name;
        let delivering = self.in_flight.contains(&name);
        let busy = |name: &str| format!("{name} is being delivered now; try again when the attempt is over");
        match op {
            ControlOp::Flush if loc.held => Err(InspectError::Held(name).to_string()),
            ControlOp::Flush if delivering => {
                self.flushed_in_flight.insert(name.clone());
                Ok(format!("{name}: being delivered now; retried at once if deferred"))
            }
            ControlOp::Flush => match self.wheel.due_of(&name) {
                Some(due) if due <= now => Ok(format!("{name}: already due")),
                // Not in the wheel (released or restored behind the daemon's back): adopt it.
                _ => {
                    self.wheel.insert(now, name.clone());
                    Ok(format!("flushed {name}"))
                }
            },
            ControlOp::Delete | ControlOp::Hold if delivering => Err(busy(&name)),
            ControlOp::Hold if loc.held => Err(InspectError::AlreadyHeld(name).to_string()),
            ControlOp::Delete | ControlOp::Hold => {
                let due = if loc.held { None } else { self.wheel.due_of(&name) };
                if due.is_some() {
                    self.wheel.remove(&name);
                }
                let done = if op == ControlOp::Delete {
                    inspect::delete(&self.dir, &name).map(|_| format!("deleted {id}"))
                } else {
                    inspect::hold(&self.dir, &name).map(|l| format!("held {}", l.name))
                };
                done.map_err(|e| {
                    if let Some(due) = due {
                        self.wheel.insert(due, name.clone());
                    }
                    e.to_string()
                })
            }
            ControlOp::Release if !loc.held => Err(InspectError::NotHeld(name).to_string()),
            ControlOp::Release => {
                let l = inspect::release(&self.dir, &name).map_err(|e| e.to_string())?;
                let due = QueueName::parse(&name).map_or(now, |q| q.next_attempt);
                self.wheel.insert(due, name);
                Ok(format!("released {}", l.name))
            }
        }
    }

    /// Start what is due, then sleep until the next due item.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if !self.disabled && !self.draining {
            let now = now_ms();
            let room = self.concurrency.saturating_sub(self.in_flight.len());
            for name in self.wheel.pop_due(now, room) {
                self.in_flight.insert(name.clone());
                self.supervisor.do_send(DeliverItem::new(name));
            }
        }
        self.arm(ctx);
    }

    /// One timer for the whole queue, re-armed for the earliest item.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        let Some(due) = self.wheel.next_due() else {
            return;
        };
        if self.disabled || self.draining {
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
        let capacity = self
            .delivery
            .as_ref()
            .map_or(1024, |cx| cx.actors.queue_manager_mailbox);
        ctx.set_mailbox_capacity(capacity);
        self.load();
        self.pump(ctx);
    }
}

impl Handler<Enqueue> for QueueManager {
    type Result = ();
    fn handle(&mut self, msg: Enqueue, ctx: &mut Self::Context) {
        inc(&metrics().queue_manager.messages);
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
        inc(&metrics().queue_manager.messages);
        self.in_flight.remove(&msg.name);
        let flushed = self.flushed_in_flight.remove(&msg.name);
        if let Some((name, due)) = msg.retry {
            // A control flush or release may have started the renamed file already.
            if !self.in_flight.contains(&name) {
                self.wheel.insert(if flushed { now_ms() } else { due }, name);
            }
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

impl Handler<Drain> for QueueManager {
    type Result = usize;
    fn handle(&mut self, _: Drain, ctx: &mut Self::Context) -> usize {
        if !self.draining {
            self.draining = true;
            if let Some((h, _)) = self.timer.take() {
                ctx.cancel_future(h);
            }
            tracing::info!(in_flight = self.in_flight.len(), "shutting down: no new deliveries");
        }
        self.in_flight.len()
    }
}

impl Handler<Counts> for QueueManager {
    type Result = QueueCounts;
    fn handle(&mut self, _: Counts, _: &mut Self::Context) -> QueueCounts {
        let mut c = QueueCounts {
            waiting: self.wheel.len(),
            in_flight: self.in_flight.len(),
            ..Default::default()
        };
        let now = now_ms();
        // One pass over the names (no file is read): fine for scrape intervals even with a
        // million items.
        c.add_ages(self.wheel.iter().map(|(_, k)| k), now);
        c.add_ages(self.in_flight.iter(), now);
        c
    }
}

impl Handler<Lookup> for QueueManager {
    type Result = Vec<ItemState>;
    fn handle(&mut self, msg: Lookup, _: &mut Self::Context) -> Vec<ItemState> {
        msg.0
            .iter()
            .map(|name| {
                if self.in_flight.contains(name) {
                    ItemState::InFlight
                } else {
                    self.wheel.due_of(name).map_or(ItemState::Unknown, ItemState::Waiting)
                }
            })
            .collect()
    }
}

impl QueueManager {
    /// Apply `f` to each id (an operator's request), log each outcome under `op`, then start
    /// whatever became due.
    fn each_id(
        &mut self,
        ctx: &mut Context<Self>,
        op: &str,
        ids: &[String],
        mut f: impl FnMut(&mut Self, &str, u64) -> Result<String, String>,
    ) -> Vec<IdResult> {
        let now = now_ms();
        let out = ids
            .iter()
            .map(|id| {
                let r = f(self, id, now);
                match &r {
                    Ok(line) => tracing::info!(op, item = %id, "{line}"),
                    Err(e) => tracing::info!(op, item = %id, error = %e, "refused"),
                }
                IdResult::new(id, r)
            })
            .collect();
        self.pump(ctx);
        out
    }
}

impl Handler<Control> for QueueManager {
    type Result = Vec<IdResult>;
    fn handle(&mut self, msg: Control, ctx: &mut Self::Context) -> Vec<IdResult> {
        let name = format!("{:?}", msg.op).to_lowercase();
        self.each_id(ctx, &name, &msg.ids, |qm, id, now| qm.control_one(msg.op, id, now))
    }
}

impl Handler<BounceItems> for QueueManager {
    type Result = Vec<IdResult>;
    fn handle(&mut self, msg: BounceItems, ctx: &mut Self::Context) -> Vec<IdResult> {
        tracing::info!(items = msg.ids.len(), reason = %msg.reason, "bounce requested");
        self.each_id(ctx, "bounce", &msg.ids, |qm, id, now| {
            qm.bounce_one(id, &msg.reason, now)
        })
    }
}

impl Handler<ReloadOutbound> for QueueManager {
    type Result = ();
    fn handle(&mut self, msg: ReloadOutbound, ctx: &mut Self::Context) {
        let ob = msg.0;
        self.concurrency = ob.concurrency_max.max(1);
        self.disabled = ob.disabled;
        if let Some(cx) = &self.delivery {
            cx.reload(ob);
        }
        tracing::info!(
            concurrency = self.concurrency,
            disabled = self.disabled,
            "outbound.ini reloaded"
        );
        self.pump(ctx);
    }
}
