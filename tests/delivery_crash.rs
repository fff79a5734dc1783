//! kill -9 during delivery, several times: every message that got a 250 reaches the sink in
//! the end (at-least-once), and duplicates only come from the window between the sink's 250
//! and the unlink of the queue file.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::{free_port, spawn_daemon};
use common::relay::{message_id, relay_config, submit};
use common::sink::{eventually, Sink};
use common::*;

#[test]
fn kill_during_delivery_loses_nothing_acknowledged() {
    let sink = Sink::start();
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("config");
    relay_config(&cfg, sink.port());
    let port = free_port();
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let mut next = 0;
    // Kill points: after these many messages reached the sink (spread, deterministic).
    for kill_at in [15usize, 70, 140] {
        let mut d = spawn_daemon(&cfg, port);
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (acked, addr) = (acked.clone(), d.addr);
                let ids = next + w * 1000..next + w * 1000 + 60;
                std::thread::spawn(move || submit(addr, ids, &acked))
            })
            .collect();
        next += 4000;
        assert!(
            eventually(Duration::from_secs(60), || sink.message_count() >= kill_at),
            "deliveries did not reach {kill_at}"
        );
        d.kill9();
        for w in workers {
            w.join().unwrap();
        }
    }
    // Restart and let the queue drain.
    let _d = spawn_daemon(&cfg, port);
    let acked = acked.lock().unwrap().clone();
    let delivered = || -> HashSet<String> { sink.messages().iter().filter_map(|m| message_id(&m.body)).collect() };
    let drained = eventually(Duration::from_secs(90), || {
        acked.is_subset(&delivered()) && queue_files(&root.path().join("queue")).is_empty()
    });
    let got = delivered();
    let lost: Vec<_> = acked.difference(&got).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {} of {}: {lost:?}",
        lost.len(),
        acked.len()
    );
    assert!(drained, "queue did not drain");
    let mut counts: HashMap<String, usize> = HashMap::new();
    for m in sink.messages() {
        if let Some(id) = message_id(&m.body) {
            *counts.entry(id).or_default() += 1;
        }
    }
    let dups: usize = counts.values().map(|c| c - 1).sum();
    eprintln!(
        "crash test: {} acknowledged, {} delivered ({} unique), {dups} duplicates from 3 kills",
        acked.len(),
        sink.message_count(),
        counts.len()
    );
    // Duplicates only come from messages in flight at a kill: at most the in-flight window.
    assert!(dups <= 3 * 100, "{dups} duplicates");
}
