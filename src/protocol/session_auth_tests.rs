//! SMTP AUTH in the session, with byte slices: sequencing, replies, the failure delay and
//! the brute-force limit, when AUTH is offered, submission ports.

use super::*;
use crate::protocol::sasl::encode;
use std::net::SocketAddr;
use std::time::Duration;

struct Run {
    out: String,
    pauses: Vec<Duration>,
    closed: bool,
    conn: Connection,
}

fn cfg(mechs: &[Mechanism]) -> SessionConfig {
    let mut c = SessionConfig::defaults("mx.test");
    c.auth.mechanisms = mechs.to_vec();
    c.auth.failure_delay = Duration::from_millis(100);
    c.auth.max_failures = 3;
    c
}

/// Run `input` from `peer` to local port `port`; the auth hook accepts alice/pw only, and
/// answers DENYSOFT for user "tempfail".
fn run_from(cfg: SessionConfig, peer: &str, port: u16, input: &[u8]) -> Run {
    let peer: SocketAddr = format!("{peer}:4000").parse().unwrap();
    let local: SocketAddr = SocketAddr::new("127.0.0.1".parse().unwrap(), port);
    let mut s = Session::new(Arc::new(cfg), Connection::new(peer, local));
    let (mut fed, mut pauses, mut closed) = (false, Vec::new(), false);
    for _ in 0..10_000 {
        match s.next_action() {
            Action::Hook(Hook::Auth(a)) => s.hook_done(match a.user.as_str() {
                "tempfail" => HookResult::new(Outcome::DenySoft),
                "alice" if a.verify("pw") => HookResult::new(Outcome::Ok),
                _ => HookResult::CONT,
            }),
            Action::Hook(Hook::Rcpt(_)) => s.hook_done(HookResult::new(Outcome::Ok)),
            Action::Hook(_) => s.hook_done(HookResult::CONT),
            Action::Pause(d) => pauses.push(d),
            Action::StartTls { .. } => s.peer_closed(),
            Action::NeedInput if !fed => {
                fed = true;
                s.receive(input);
            }
            Action::NeedInput => s.peer_closed(),
            Action::Close => {
                closed = true;
                break;
            }
            Action::Body(_) | Action::Commit | Action::Discard => {}
        }
    }
    let out = String::from_utf8_lossy(&s.take_output()).into_owned();
    Run {
        out,
        pauses,
        closed,
        conn: s.conn().clone(),
    }
}

fn run(input: &[u8]) -> Run {
    run_from(cfg(&Mechanism::ALL), "127.0.0.1", 25, input)
}

fn codes(out: &str) -> Vec<u16> {
    out.lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| l[..3].parse().unwrap())
        .collect()
}

fn plain(user: &str, pass: &str) -> String {
    encode(format!("\0{user}\0{pass}").as_bytes())
}

#[test]
fn plain_with_initial_response() {
    let input = format!(
        "EHLO c\r\nAUTH PLAIN {}\r\nMAIL FROM:<a@b.test>\r\n",
        plain("alice", "pw")
    );
    let r = run(input.as_bytes());
    assert!(r.out.contains("250 AUTH PLAIN LOGIN CRAM-MD5\r\n"), "{}", r.out);
    assert_eq!(codes(&r.out), vec![220, 250, 235, 250]);
    assert!(r.out.contains("235 2.7.0 Authentication successful\r\n"));
    assert!(r.conn.relaying);
    assert_eq!(r.conn.auth_user.as_deref(), Some("alice"));
    assert_eq!(r.conn.notes["auth_user"], "alice");
    assert_eq!(r.conn.notes["auth_method"], "PLAIN");
    assert!(r.pauses.is_empty());
}

#[test]
fn plain_separate_step_and_login() {
    let input = format!("EHLO c\r\nAUTH PLAIN\r\n{}\r\n", plain("alice", "pw"));
    let r = run(input.as_bytes());
    assert_eq!(codes(&r.out), vec![220, 250, 334, 235]);
    assert!(r.out.contains("\r\n334 \r\n"), "{}", r.out);
    let input = format!("EHLO c\r\nAUTH LOGIN\r\n{}\r\n{}\r\n", encode(b"alice"), encode(b"pw"));
    let r = run(input.as_bytes());
    assert!(
        r.out.contains("334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 "),
        "{}",
        r.out
    );
}

#[test]
fn cancel_bad_base64_unknown_mechanism() {
    let r = run(b"EHLO c\r\nAUTH LOGIN\r\n*\r\nAUTH PLAIN\r\n%%%\r\nAUTH GSSAPI\r\nAUTH\r\n");
    assert_eq!(codes(&r.out), vec![220, 250, 334, 501, 334, 501, 504, 501]);
    assert!(r.out.contains("501 5.0.0 Authentication cancelled\r\n"));
    assert!(r.out.contains("501 5.5.2 "));
    assert!(r.out.contains("504 5.5.4 "));
    assert_eq!(r.conn.auth_failures, 0);
}

#[test]
fn mechanism_not_offered_is_504() {
    let r = run_from(
        cfg(&[Mechanism::Plain]),
        "127.0.0.1",
        25,
        b"EHLO c\r\nAUTH CRAM-MD5\r\n",
    );
    assert!(r.out.contains("250 AUTH PLAIN\r\n"), "{}", r.out);
    assert_eq!(codes(&r.out), vec![220, 250, 504]);
}

#[test]
fn sequencing_is_503() {
    let ok = plain("alice", "pw");
    let input = format!(
        "AUTH PLAIN {ok}\r\nHELO c\r\nAUTH PLAIN {ok}\r\nEHLO c\r\nMAIL FROM:<a@b.test>\r\nAUTH PLAIN {ok}\r\nRSET\r\nAUTH PLAIN {ok}\r\nAUTH PLAIN {ok}\r\n"
    );
    let r = run(input.as_bytes());
    assert_eq!(codes(&r.out), vec![220, 503, 250, 503, 250, 250, 503, 250, 235, 503]);
}

#[test]
fn failures_pause_then_421() {
    let bad = plain("alice", "nope");
    let input = format!("EHLO c\r\nAUTH PLAIN {bad}\r\nAUTH PLAIN {bad}\r\nAUTH PLAIN {bad}\r\nNOOP\r\n");
    let r = run(input.as_bytes());
    assert_eq!(codes(&r.out), vec![220, 250, 535, 535, 421]);
    assert!(r.out.contains("535 5.7.8 Authentication credentials invalid\r\n"));
    assert_eq!(r.pauses, [100, 200, 400].map(Duration::from_millis).to_vec());
    assert!(r.closed);
    assert_eq!(r.conn.auth_failures, 3);
}

#[test]
fn authzid_mismatch_and_tempfail() {
    let input = format!(
        "EHLO c\r\nAUTH PLAIN {}\r\nAUTH PLAIN {}\r\n",
        encode(b"bob\0alice\0pw"),
        plain("tempfail", "x")
    );
    let r = run(input.as_bytes());
    assert_eq!(codes(&r.out), vec![220, 250, 535, 454]);
    assert!(r.out.contains("454 4.7.0 "));
    assert_eq!(r.conn.auth_failures, 1);
}

#[test]
fn cram_md5_round_trip() {
    // The challenge is random: answer it from the 334 line.
    let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let mut s = Session::new(Arc::new(cfg(&Mechanism::ALL)), Connection::new(peer, peer));
    s.receive(b"EHLO c\r\nAUTH CRAM-MD5\r\n");
    while !matches!(s.phase, Phase::Auth(_)) {
        match s.next_action() {
            Action::Hook(_) => s.hook_done(HookResult::CONT),
            a => assert!(matches!(a, Action::NeedInput), "{a:?}"),
        }
    }
    let out = String::from_utf8(s.take_output()).unwrap();
    let b64 = out.lines().last().unwrap().strip_prefix("334 ").unwrap();
    let challenge =
        String::from_utf8(base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap()).unwrap();
    assert!(
        challenge.starts_with('<') && challenge.ends_with("@mx.test>"),
        "{challenge}"
    );
    let digest = sasl::cram_md5_digest("pw", &challenge);
    s.receive(format!("{}\r\n", encode(format!("alice {digest}").as_bytes())).as_bytes());
    match s.next_action() {
        Action::Hook(Hook::Auth(a)) => {
            assert!(a.verify("pw"));
            s.hook_done(HookResult::new(Outcome::Ok));
        }
        a => panic!("{a:?}"),
    }
    assert!(matches!(s.next_action(), Action::NeedInput));
    assert!(String::from_utf8(s.take_output()).unwrap().starts_with("235 2.7.0"));
}

#[test]
fn public_remote_without_tls_gets_538() {
    let input = format!("EHLO c\r\nAUTH PLAIN {}\r\n", plain("alice", "pw"));
    let r = run_from(cfg(&Mechanism::ALL), "192.0.2.1", 25, input.as_bytes());
    assert!(!r.out.contains("AUTH"), "{}", r.out);
    assert_eq!(codes(&r.out), vec![220, 250, 538]);
    assert!(r.out.contains("538 5.7.11 "));
    let mut c = cfg(&Mechanism::ALL);
    c.auth.plaintext_private = false;
    let r = run_from(c, "127.0.0.1", 25, input.as_bytes());
    assert_eq!(codes(&r.out), vec![220, 250, 538]);
}

#[test]
fn submission_port_needs_auth() {
    let input = format!(
        "EHLO c\r\nMAIL FROM:<a@b.test>\r\nAUTH PLAIN {}\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@far.example>\r\n",
        plain("alice", "pw")
    );
    let r = run_from(cfg(&Mechanism::ALL), "127.0.0.1", 587, input.as_bytes());
    assert_eq!(codes(&r.out), vec![220, 250, 550, 235, 250, 250]);
    assert!(r.out.contains("550 5.7.0 Authentication required\r\n"));
}

#[test]
fn overlong_sasl_line_closes() {
    let mut input = b"EHLO c\r\nAUTH PLAIN\r\n".to_vec();
    input.extend(std::iter::repeat_n(b'A', 600));
    input.extend_from_slice(b"\r\n");
    let r = run(&input);
    assert_eq!(codes(&r.out), vec![220, 250, 334, 500]);
    assert!(r.out.contains("500 5.5.6 "));
    assert!(r.closed);
}

#[test]
fn without_auth_plugins_auth_is_unrecognized() {
    let r = run_from(cfg(&[]), "127.0.0.1", 25, b"EHLO c\r\nAUTH PLAIN\r\n");
    assert!(!r.out.contains("AUTH"));
    assert_eq!(codes(&r.out), vec![220, 250, 500]);
}

#[test]
fn garbage_in_the_exchange_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(4954);
    let alphabet = b"AB+/=* \r\n\0\x16\x03\xffz9";
    for start in [
        "AUTH PLAIN",
        "AUTH LOGIN",
        "AUTH CRAM-MD5",
        "AUTH PLAIN =",
        "AUTH LOGIN *",
    ] {
        for _ in 0..200 {
            let mut input = format!("EHLO c\r\n{start}\r\n").into_bytes();
            let n = rng.gen_range(0..700);
            input.extend((0..n).map(|_| alphabet[rng.gen_range(0..alphabet.len())]));
            let r = run(&input);
            assert!(r.closed);
            assert!(
                codes(&r.out)
                    .iter()
                    .all(|c| [220, 250, 334, 235, 421, 500, 501, 503, 504, 535].contains(c)),
                "{}",
                r.out
            );
        }
    }
}
