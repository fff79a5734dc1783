//! A RemoteMx actor (one per destination) stops itself once it has had nothing to do for
//! `pool_idle_timeout`, and the next message to that destination starts a new one: a daemon
//! that talks to many destinations over months keeps actors only for the ones in use.
//!
//! Its own test binary: the actor counters are process-wide, and no other daemon runs here.
//! Every wait is a bounded poll; traffic stays on 127.0.0.1.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::dns::{DnsServer, Zone};
use common::sink::{eventually, Sink};
use common::*;
use posta::metrics::metrics;

const WAIT: Duration = Duration::from_secs(30);

fn live_remote_mx() -> u64 {
    let c = &metrics().remote_mx;
    c.started.load(Ordering::Relaxed) - c.stopped.load(Ordering::Relaxed)
}

fn submit(srv: &TestServer, rcpt: &str) {
    let mut c = srv.client();
    c.expect("EHLO client.test", 250);
    let r = c.send_mail("s@client.test", &[rcpt], b"Subject: idle\r\n\r\nhello\r\n");
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("QUIT", 221);
}

#[test]
fn an_unused_remote_mx_actor_stops_and_a_new_one_serves_the_next_message() {
    let sink = Sink::start();
    let dns = DnsServer::start(
        Zone::new()
            .mx("remote.test", 10, "mx.remote.test")
            .a("mx.remote.test", [127, 0, 0, 1]),
    );
    let outbound = format!(
        "[main]\nnameservers={}\nmx_port={}\nlocal_mx_ok=true\ntemp_fail_intervals=1h\n\
         connect_timeout=5\nreply_timeout=30\npool_idle_timeout=1\n",
        dns.addr(),
        sink.port()
    );
    let srv = start(|d| {
        std::fs::write(d.join("plugins"), "relay\nrcpt_to.in_host_list\n").unwrap();
        std::fs::write(d.join("relay_acl_allow"), "127.0.0.0/8\n").unwrap();
        std::fs::write(d.join("outbound.ini"), &outbound).unwrap();
    });
    let started = metrics().remote_mx.started.load(Ordering::Relaxed);

    submit(&srv, "bob@remote.test");
    assert!(sink.wait_for(1, WAIT), "nothing delivered; sink saw {:?}", sink.stats());
    assert_eq!(metrics().remote_mx.started.load(Ordering::Relaxed), started + 1);

    // Its pooled session closes after 1 s idle, then the actor stops.
    assert!(
        eventually(WAIT, || live_remote_mx() == 0),
        "the RemoteMx actor is still alive ({} live)",
        live_remote_mx()
    );

    // The same destination again: a new actor, a new session, the message arrives.
    submit(&srv, "carol@remote.test");
    assert!(
        sink.wait_for(2, WAIT),
        "second message not delivered; sink saw {:?}",
        sink.stats()
    );
    assert_eq!(metrics().remote_mx.started.load(Ordering::Relaxed), started + 2);
    assert_eq!(sink.messages()[1].rcpts, vec!["carol@remote.test".to_string()]);
}
