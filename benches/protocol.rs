//! Micro-benchmarks of the sans-IO protocol layer (no sockets, no actors):
//!
//! - `command_parser`: a realistic client command mix through `check_line` + `parse_command`
//!   + `parse_mail`/`parse_rcpt`/`parse_bdat` (throughput in commands/s);
//! - `data_receiver`: `BodyReceiver::feed` over a 1 MB message in 16 KB and 64 KB reads and over
//!   a 1 KB message (throughput in MB/s), plus BDAT mode for the 1 MB message;
//! - `session`: one whole SMTP conversation through `Session` (greeting, EHLO, pipelined
//!   MAIL/RCPT/DATA, a 1 KB body, QUIT) with every hook answered at once (CONT, OK for `rcpt`)
//!   and the commit answered `Ok`.
//!
//! Run: `cargo bench --bench protocol -- --warm-up-time 1 --measurement-time 3`
//! (results and the machine they were measured on: `benches/README.md`).

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use posta::hooks::{Connection, Hook, HookResult, Outcome};
use posta::protocol::command::{check_line, parse_bdat, parse_command, parse_mail, parse_rcpt, Command, ParseContext};
use posta::protocol::data::{BodyLimits, BodyReceiver, Mode};
use posta::protocol::{Action, Session, SessionConfig};

/// What a typical ESMTP client sends, one line per command (without CRLF), in the proportions
/// of single-recipient and multi-recipient transactions.
const COMMANDS: &[&str] = &[
    "EHLO mail-ed1-f53.google.com",
    "MAIL FROM:<bounces+1234567-abcd-user=example.org@em1234.sendgrid.net> SIZE=48213 BODY=8BITMIME",
    "RCPT TO:<user@example.org>",
    "DATA",
    "MAIL FROM:<newsletter@lists.example.com> SIZE=10240",
    "RCPT TO:<alice@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@example.org",
    "RCPT TO:<bob@example.org>",
    "RCPT TO:<carol.smith@sub.example.org>",
    "DATA",
    "MAIL FROM:<> BODY=BINARYMIME SMTPUTF8",
    "RCPT TO:<postmaster>",
    "BDAT 65536",
    "BDAT 1024 LAST",
    "RSET",
    "MAIL FROM:<sender@[192.0.2.1]> RET=HDRS ENVID=QQ314159",
    "RCPT TO:<jöran@exämple.org>",
    "NOOP",
    "QUIT",
];

const CX: ParseContext = ParseContext {
    esmtp: true,
    strict: false,
    smtputf8_offered: true,
    utf8_txn: true,
    max_bytes: 26_214_400,
};

/// Parse one command line as the session does. Returns something that depends on the result
/// so that nothing is optimised away.
fn parse_one(line: &[u8]) -> usize {
    let Ok(text) = check_line(line, true) else {
        return 1;
    };
    match parse_command(text) {
        Command::Mail(a) => match parse_mail(a, CX) {
            Ok((m, p)) => m.map_or(0, |m| m.local.len()) + p.size.unwrap_or(0) as usize,
            Err(r) => r.code as usize,
        },
        Command::Rcpt(a) => match parse_rcpt(a, CX) {
            Ok((m, _)) => m.domain.len(),
            Err(r) => r.code as usize,
        },
        Command::Bdat(a) => parse_bdat(a).map_or(0, |(n, _)| n as usize),
        c => c.verb().len(),
    }
}

fn bench_commands(c: &mut Criterion) {
    let lines: Vec<&[u8]> = COMMANDS.iter().map(|l| l.as_bytes()).collect();
    let bytes: usize = lines.iter().map(|l| l.len() + 2).sum();
    let mut g = c.benchmark_group("command_parser");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function(format!("mix_{}_commands", lines.len()), |b| {
        b.iter(|| {
            let mut acc = 0;
            for l in &lines {
                acc += parse_one(black_box(l));
            }
            acc
        })
    });
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("mix_bytes", |b| {
        b.iter(|| lines.iter().map(|l| parse_one(black_box(l))).sum::<usize>())
    });
    g.finish();
}

/// A realistic message of about `size` bytes: headers, a text part with quoted lines and a
/// few lines that start with a dot (stuffed, as on the wire), and a base64 attachment.
/// Ends with the DATA terminator.
fn message(size: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(size + 1024);
    m.extend_from_slice(
        b"Received: from mail.example.com (mail.example.com [192.0.2.10])\r\n\
          \tby mx.example.org with ESMTPS id 4Xyz123abc\r\n\
          \tfor <user@example.org>; Tue, 25 Nov 2025 10:00:00 +0000\r\n\
          DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=s1;\r\n\
          \th=from:to:subject:date:message-id; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n\
          \tb=dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZSBqdXN0IGZpbGxlciBmb3IgdGhlIGJlbmNo\r\n\
          From: Alice Example <alice@example.com>\r\n\
          To: Bob <user@example.org>\r\n\
          Subject: Quarterly report and the numbers you asked for\r\n\
          Date: Tue, 25 Nov 2025 10:00:00 +0000\r\n\
          Message-ID: <20251125100000.12345@mail.example.com>\r\n\
          MIME-Version: 1.0\r\n\
          Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
          --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
    );
    let text = [
        &b"Hello Bob, here is the report we talked about on Monday. The numbers are in\r\n"[..],
        b"the attachment; the summary is below. Let me know if anything looks off.\r\n",
        b"> On Monday you wrote: could you send the quarterly numbers before Friday?\r\n",
        b"..and this line started with a dot, so the client stuffed it.\r\n",
        b"\r\n",
    ];
    let text_end = size / 4;
    let mut i = 0;
    while m.len() < text_end {
        m.extend_from_slice(text[i % text.len()]);
        i += 1;
    }
    m.extend_from_slice(
        b"\r\n--b1\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\n\
          Content-Transfer-Encoding: base64\r\n\r\n",
    );
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut k = 0u64;
    while m.len() + 80 < size {
        for _ in 0..76 {
            k = k.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            m.push(alphabet[(k >> 58) as usize]);
        }
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b"--b1--\r\n.\r\n");
    m
}

const LIMITS: BodyLimits = BodyLimits {
    max_bytes: 26_214_400,
    max_line: 992,
};

/// Feed `msg` in reads of `seg` bytes, draining the output after each read as the session does.
fn receive(mode: Mode, msg: &[u8], seg: usize, out: &mut Vec<u8>) -> usize {
    let mut r = BodyReceiver::new(mode, LIMITS);
    let mut stored = 0;
    for chunk in msg.chunks(seg) {
        out.clear();
        let fed = r.feed(chunk, out);
        stored += out.len();
        if fed.done {
            break;
        }
    }
    if mode != Mode::Data {
        out.clear();
        r.finish(out);
        stored += out.len();
    }
    stored
}

fn bench_data(c: &mut Criterion) {
    let big = message(1 << 20);
    let small = message(1024);
    let mut g = c.benchmark_group("data_receiver");
    let mut out = Vec::with_capacity(128 * 1024);
    for (name, msg, seg) in [
        ("1MB_16KB_reads", &big, 16 * 1024),
        ("1MB_64KB_reads", &big, 64 * 1024),
        ("1KB_one_read", &small, 64 * 1024),
    ] {
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_function(name, |b| b.iter(|| receive(Mode::Data, black_box(msg), seg, &mut out)));
    }
    // BDAT: the same octets as one chunk, without the DATA terminator.
    let bdat = &big[..big.len() - 3];
    g.throughput(Throughput::Bytes(bdat.len() as u64));
    g.bench_function("1MB_bdat_64KB_reads", |b| {
        b.iter(|| receive(Mode::Bdat, black_box(bdat), 64 * 1024, &mut out))
    });
    g.finish();
}

/// One client conversation as the client writes it: greeting wait, EHLO, one pipelined group,
/// the body with QUIT behind it.
fn conversation(body: &[u8]) -> Vec<Vec<u8>> {
    let mut data = body.to_vec();
    data.extend_from_slice(b"QUIT\r\n");
    vec![
        b"EHLO client.example.com\r\n".to_vec(),
        b"MAIL FROM:<alice@example.com> SIZE=1200 BODY=8BITMIME\r\nRCPT TO:<user@localhost>\r\nDATA\r\n".to_vec(),
        data,
    ]
}

/// Drive one session to the end. Returns the number of reply bytes.
fn run_session(cfg: &Arc<SessionConfig>, reads: &[Vec<u8>]) -> usize {
    let remote: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:25".parse().unwrap();
    let mut s = Session::new(cfg.clone(), Connection::new(remote, local));
    let mut replies = 0;
    let mut next = 0;
    let mut body = 0;
    // Bounded: a session of this size needs well under 100 steps.
    for _ in 0..1000 {
        match s.next_action() {
            Action::Hook(Hook::Rcpt(_)) => s.hook_done(HookResult::new(Outcome::Ok)),
            Action::Hook(_) => s.hook_done(HookResult::CONT),
            Action::Body(b) => body += b.len(),
            Action::Commit => s.commit_done(Ok("queued".into())),
            Action::Discard | Action::Pause(_) => {}
            Action::NeedInput => {
                replies += s.take_output().len();
                if next < reads.len() {
                    s.receive(&reads[next]);
                    next += 1;
                } else {
                    s.peer_closed();
                }
            }
            Action::StartTls { .. } => s.peer_closed(),
            Action::Close => break,
        }
    }
    replies += s.take_output().len();
    assert!(body > 1000, "the message did not reach the spool");
    replies
}

fn bench_session(c: &mut Criterion) {
    let cfg = Arc::new(SessionConfig::defaults("mx.example.org"));
    let reads = conversation(&message(1024));
    // Sanity check once: greeting, EHLO, 250 250 354, 250 queued, 221.
    assert!(run_session(&cfg, &reads) > 300);
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Elements(1));
    g.bench_function("1KB_transaction_pipelined", |b| {
        b.iter(|| run_session(&cfg, black_box(&reads)))
    });
    g.finish();
}

criterion_group!(benches, bench_commands, bench_data, bench_session);
criterion_main!(benches);
