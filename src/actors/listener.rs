//! The Listener actor: one per worker arbiter, on its own SO_REUSEPORT socket, so the kernel
//! spreads connections over workers and an accepted connection never crosses threads.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::connection::{ConnectionActor, Shared};

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
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().ok().or(local).unwrap_or(peer);
                ConnectionActor::new(stream, peer, local, shared.clone(), implicit_tls).start();
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
