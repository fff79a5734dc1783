//! The DeliverySupervisor: starts one QueueFile actor per item being delivered and reports
//! each outcome to the QueueManager. It runs under `actix::Supervisor`, so it is restarted if
//! it ever stops; a panic inside one delivery is caught at the QueueFile boundary.

use crate::metrics::MailboxTicket;
use std::rc::Rc;

use actix::prelude::*;

use super::queue_file::{DeliveryCtx, QueueFile};
use super::queue_manager::{Finished, QueueManager};

/// Deliver this queue item now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeliverItem(pub String, pub MailboxTicket);

impl DeliverItem {
    pub fn new(name: String) -> Self {
        DeliverItem(name, MailboxTicket::new(&crate::metrics::metrics().queue_file.mailbox))
    }
}

/// Tell the supervisor where to report (set once, after the QueueManager started).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReportTo(pub Addr<QueueManager>);

pub struct DeliverySupervisor {
    cx: Rc<DeliveryCtx>,
    manager: Option<Addr<QueueManager>>,
}

impl DeliverySupervisor {
    pub fn new(cx: Rc<DeliveryCtx>) -> Self {
        DeliverySupervisor { cx, manager: None }
    }
}

impl Actor for DeliverySupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.cx.actors.delivery_mailbox);
    }
}

impl Supervised for DeliverySupervisor {
    fn restarting(&mut self, _: &mut Self::Context) {
        crate::metrics::inc(&crate::metrics::metrics().queue_file.restarts);
        tracing::warn!("delivery supervisor restarting");
    }
}

impl Handler<ReportTo> for DeliverySupervisor {
    type Result = ();
    fn handle(&mut self, msg: ReportTo, _: &mut Self::Context) {
        self.manager = Some(msg.0);
    }
}

impl Handler<DeliverItem> for DeliverySupervisor {
    type Result = ();
    fn handle(&mut self, msg: DeliverItem, ctx: &mut Self::Context) {
        let me = ctx.address().recipient();
        QueueFile::new(self.cx.clone(), msg.0, me).start();
    }
}

impl Handler<Finished> for DeliverySupervisor {
    type Result = ();
    fn handle(&mut self, msg: Finished, _: &mut Self::Context) {
        if let Some(m) = &self.manager {
            m.do_send(msg);
        }
    }
}
