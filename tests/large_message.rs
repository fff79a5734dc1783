//! A 50 MB message streams to the spool: the daemon's peak memory does not grow with the
//! message size, and the queued copy is complete.

mod common;

use common::process::{free_port, spawn_daemon};
use common::*;

#[test]
fn fifty_megabyte_message_uses_bounded_memory() {
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("config");
    write_default_config(&cfg);
    std::fs::write(cfg.join("connection.ini"), "[max]\nbytes=60000000\n").unwrap();
    let d = spawn_daemon(&cfg, free_port());
    let mut c = Client::connect(d.addr);
    c.expect("EHLO big.example", 250);
    let baseline_kb = d.status_kb("VmHWM:");
    c.expect("MAIL FROM:<a@remote.example> SIZE=52428800", 250);
    c.expect("RCPT TO:<u@example.test>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: big\r\n\r\n");
    let line = [b'x'; 78];
    let mut chunk = Vec::with_capacity(1 << 20);
    while chunk.len() < (1 << 20) - 80 {
        chunk.extend_from_slice(&line);
        chunk.extend_from_slice(b"\r\n");
    }
    let mut total = 0;
    while total < 50 << 20 {
        c.send(&chunk);
        total += chunk.len();
    }
    c.send(b".\r\n");
    let r = c.reply().unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    let peak_kb = d.status_kb("VmHWM:");
    eprintln!("50 MB message: peak RSS {baseline_kb} kB before, {peak_kb} kB after");
    // Memory must not follow the message: 50 MB through, well under 50 MB of growth.
    assert!(
        peak_kb < baseline_kb + 20 * 1024,
        "peak RSS grew from {baseline_kb} kB to {peak_kb} kB for a 50 MB message"
    );
    let files = queue_files(&root.path().join("queue"));
    assert_eq!(files.len(), 1);
    let size = std::fs::metadata(&files[0]).unwrap().len() as usize;
    assert!(size > total, "queue file {size} bytes < {total} sent");
}
