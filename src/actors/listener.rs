//! The Listener actor: one per worker arbiter, on its own SO_REUSEPORT socket, so the kernel
//! spreads connections over workers and an accepted connection never crosses threads.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::connection::{ConnectionActor, Shared};
use crate::limits::Refusal;
use crate::metrics::{count_replies, metrics};

pub struct Listener {
    socket: Option<std::net::TcpListener>,
    shared: Arc<Shared>,
    /// On `smtps_port`: every connection starts with a TLS handshake (RFC 8314).
    implicit_tls: bool,
}

impl Listener {
    pub fn new(socket: std::net::TcpListener, shared: Arc<Shared>, implicit_tls: bool) -> Self {
        Listener {
            socket: Some(socket),
            shared,
            implicit_tls,
        }
    }
}

impl Actor for Listener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(socket) = self.socket.take() else {
            return;
        };
        let shared = self.shared.clone();
        ctx.spawn(accept_loop(socket, shared, self.implicit_tls).into_actor(self));
    }
}

async fn accept_loop(socket: std::net::TcpListener, shared: Arc<Shared>, implicit_tls: bool) {
    let listener = match tokio::net::TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot use listener socket");
            return;
        }
    };
    let local = listener.local_addr().ok();
    let mut stop = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return, // graceful shutdown: stop accepting
        };
        match accepted {
            Ok((stream, peer)) => {
                // Limits first: a refused client costs one reply line, no session.
                // A listed proxy's connections count under the total only until its PROXY
                // header names the client (the driver counts that address then).
                let proxied = shared.snapshot().1.proxy.trusts(peer.ip());
                let admitted = if proxied {
                    shared.limits.admit_total()
                } else {
                    shared.limits.admit(peer.ip())
                };
                let slot = match admitted {
                    Ok(slot) => slot,
                    Err(r) => {
                        refuse(stream, r);
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().ok().or(local).unwrap_or(peer);
                ConnectionActor::new(stream, peer, local, shared.clone(), implicit_tls)
                    .with_slot(slot)
                    .start();
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Over a connection limit: one `421 4.7.0` line and close. The write does not wait: a fresh
/// socket has room for one line, and a client that cannot take it loses nothing.
fn refuse(stream: tokio::net::TcpStream, r: Refusal) {
    metrics().limits.refused(r);
    // debug: a flood must not become a flood of log lines (the metric counts them).
    tracing::debug!(peer = ?stream.peer_addr().ok(), limit = r.label(), "connection refused by a limit");
    if stream.try_write(r.reply()).is_ok() {
        count_replies(metrics(), r.reply());
    }
    if let Ok(s) = stream.into_std() {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
}
