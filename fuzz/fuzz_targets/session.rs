//! A whole `Session` driven like the Connection actor does, fed the input in pieces. The first
//! bytes pick the segment length and how hooks are answered. It must never panic, always close
//! within a bounded number of steps, and only write well-formed reply lines.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use posta::hooks::{Connection, Hook, HookResult, Outcome};
use posta::protocol::{Action, CommitError, Session, SessionConfig};

const OUTCOMES: [Outcome; 8] = [
    Outcome::Cont,
    Outcome::Ok,
    Outcome::Deny,
    Outcome::DenySoft,
    Outcome::DenyDisconnect,
    Outcome::DenySoftDisconnect,
    Outcome::Disconnect,
    Outcome::Stop,
];

fn check_output(out: &[u8]) {
    let mut rest = out;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("reply output not CRLF-terminated");
        let l = &rest[..end];
        assert!(end + 2 <= 512, "reply line over 512 octets");
        assert!(
            l.len() >= 4
                && (b'2'..=b'5').contains(&l[0])
                && l[1].is_ascii_digit()
                && l[2].is_ascii_digit()
                && (l[3] == b' ' || l[3] == b'-'),
            "bad reply line {:?}",
            String::from_utf8_lossy(l)
        );
        assert!(!l.contains(&b'\r') && !l.contains(&b'\n'));
        rest = &rest[end + 2..];
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let step = 1 + data[0] as usize % 128;
    // 0: accept everything (OK for rcpt, CONT elsewhere); otherwise cycle through outcomes.
    let mode = data[1];
    let input = &data[2..];
    let mut cfg = SessionConfig::defaults("mx.example.test");
    cfg.max_bytes = 8192;
    cfg.max_recipients = 4;
    let remote: SocketAddr = "192.0.2.1:40000".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:25".parse().unwrap();
    let mut s = Session::new(Arc::new(cfg), Connection::new(remote, local));
    let mut segs = input.chunks(step);
    let mut out = Vec::new();
    let mut n = 0usize;
    let mut peer_closed = false;
    for _ in 0..200_000 {
        match s.next_action() {
            Action::Hook(h) => {
                n += 1;
                let r = if mode == 0 || mode & 1 == 0 {
                    match h {
                        Hook::Rcpt(_) => HookResult::new(Outcome::Ok),
                        _ => HookResult::CONT,
                    }
                } else {
                    let o = OUTCOMES[(n * (mode as usize >> 1) + n / 3) % OUTCOMES.len()];
                    if n.is_multiple_of(5) {
                        HookResult::with_msg(o, "custom\r\n550 forged line")
                    } else {
                        HookResult::new(o)
                    }
                };
                s.hook_done(r);
            }
            Action::Commit => {
                n += 1;
                let r = match (mode >> 4, n % 4) {
                    (1, 0) => Err(CommitError::DiskFull),
                    (2, 0) => Err(CommitError::Temporary("fuzz".into())),
                    _ => Ok("queued".into()),
                };
                s.commit_done(r);
            }
            Action::Body(_) | Action::Discard | Action::Pause(_) => {}
            // The handshake "succeeds": the session goes on as after STARTTLS.
            Action::StartTls { .. } => {
                out.extend_from_slice(&s.take_output());
                s.tls_started(posta::hooks::state::TlsInfo::default());
            }
            Action::NeedInput => {
                out.extend_from_slice(&s.take_output());
                match segs.next() {
                    Some(seg) => s.receive(seg),
                    None if !peer_closed => {
                        peer_closed = true;
                        s.peer_closed();
                    }
                    None => panic!("session wants input after peer_closed"),
                }
            }
            Action::Close => {
                out.extend_from_slice(&s.take_output());
                check_output(&out);
                return;
            }
        }
    }
    panic!("session did not close within the step bound");
});
