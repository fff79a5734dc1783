//! Graceful shutdown with the real binary: SIGTERM stops accepting, idle sessions get
//! `421 4.3.2`, a message being received is finished and acknowledged, and posta exits 0.

mod common;

use std::process::Command;
use std::time::Duration;

use common::process::{free_port, spawn_daemon};
use common::*;

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
    assert!(st.success());
}

#[test]
fn sigterm_finishes_messages_and_closes_idle_sessions() {
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("config");
    write_default_config(&cfg);
    let mut d = spawn_daemon(&cfg, free_port());
    let mut idle = Client::connect(d.addr);
    idle.expect("EHLO idle.example", 250);
    let mut busy = Client::connect(d.addr);
    busy.expect("EHLO busy.example", 250);
    busy.expect("MAIL FROM:<a@remote.example>", 250);
    busy.expect("RCPT TO:<u@example.test>", 250);
    busy.expect("DATA", 354);
    busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n");

    signal(d.pid(), "-TERM");
    // The idle session is told to come back later.
    let r = idle.reply().expect("421 for the idle session");
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text().starts_with("4.3.2"), "{r:?}");
    assert!(idle.is_closed());
    // The message in flight is completed and acknowledged, then the session is closed.
    busy.send(b"second half\r\n.\r\n");
    assert_eq!(busy.reply().unwrap().code, 250);
    assert_eq!(busy.reply().map(|r| r.code), Some(421));
    // No new connections, and a clean exit.
    let status = wait_exit(&mut d.child, Duration::from_secs(20));
    assert_eq!(status, Some(0), "posta should exit 0 after a graceful shutdown");
    assert!(
        std::net::TcpStream::connect(d.addr).is_err(),
        "still accepting after shutdown"
    );
    assert_eq!(queue_files(&root.path().join("queue")).len(), 1);
}

#[test]
fn second_signal_stops_at_once() {
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("config");
    write_default_config(&cfg);
    let mut d = spawn_daemon(&cfg, free_port());
    let mut busy = Client::connect(d.addr);
    busy.expect("EHLO busy.example", 250);
    busy.expect("MAIL FROM:<a@remote.example>", 250);
    busy.expect("RCPT TO:<u@example.test>", 250);
    busy.expect("DATA", 354);
    signal(d.pid(), "-TERM");
    // Sync point: the first signal was handled once the listener refuses connections.
    let refused = (0..1000).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        std::net::TcpStream::connect(d.addr).is_err()
    });
    assert!(refused, "the first SIGTERM did not stop the listener");
    signal(d.pid(), "-TERM");
    assert_eq!(wait_exit(&mut d.child, Duration::from_secs(20)), Some(0));
    assert!(queue_files(&root.path().join("queue")).is_empty());
}

/// Wait (bounded) for the child to exit; its exit code.
fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    common::process::wait_exit(child, limit).and_then(|s| s.code())
}

/// SIGTERM in the middle of traffic (clients sending, deliveries running): posta exits 0, and
/// after a restart every message that got a 250 reaches the next hop.
#[test]
fn sigterm_under_traffic_loses_nothing_acknowledged() {
    use common::relay::{message_id, relay_config, submit};
    use common::sink::{eventually, Sink};
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    let sink = Sink::start();
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("config");
    relay_config(&cfg, sink.port());
    let port = free_port();
    let mut d = spawn_daemon(&cfg, port);
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let clients: Vec<_> = (0..4)
        .map(|w| {
            let (acked, addr) = (acked.clone(), d.addr);
            std::thread::spawn(move || submit(addr, w * 1000..w * 1000 + 50, &acked))
        })
        .collect();
    // Sync point: deliveries are under way.
    assert!(eventually(Duration::from_secs(60), || sink.message_count() >= 10));
    signal(d.pid(), "-TERM");
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(wait_exit(&mut d.child, Duration::from_secs(40)), Some(0));
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    // Restart: what was still queued is delivered.
    let _d2 = spawn_daemon(&cfg, port);
    let delivered = || -> HashSet<String> { sink.messages().iter().filter_map(|m| message_id(&m.body)).collect() };
    assert!(
        eventually(Duration::from_secs(60), || acked.is_subset(&delivered())),
        "acknowledged but not delivered: {:?}",
        acked.difference(&delivered()).collect::<Vec<_>>()
    );
}

/// SIGTERM while a delivery waits for the next hop's reply: no new delivery starts, the one in
/// progress finishes before posta exits, so its queue file is gone and a restart does not send
/// the message again.
#[test]
fn sigterm_lets_a_delivery_in_progress_finish() {
    use common::relay::relay_config;
    use common::sink::{eventually, Sink};

    let sink = Sink::builder().reply_delay(Duration::from_secs(2)).start();
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("config");
    relay_config(&cfg, sink.port());
    let mut d = spawn_daemon(&cfg, free_port());
    let mut c = Client::connect(d.addr);
    c.expect("EHLO client.test", 250);
    let r = c.send_mail(
        "s@client.test",
        &["r@remote.test"],
        b"Subject: slow hop\r\n\r\nhello\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("QUIT", 221);
    // Sync point: the sink holds back its reply to the message.
    assert!(eventually(Duration::from_secs(30), || sink.replies_waiting() >= 1));
    signal(d.pid(), "-TERM");
    assert_eq!(wait_exit(&mut d.child, Duration::from_secs(40)), Some(0));
    assert_eq!(sink.message_count(), 1);
    assert!(
        queue_files(&root.path().join("queue")).is_empty(),
        "the delivered message is still queued: it would be sent again"
    );
}
