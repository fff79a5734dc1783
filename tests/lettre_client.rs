//! A real third-party SMTP client (lettre) sends through posta: plain, several recipients and
//! domains, and an SMTPUTF8 address.

mod common;

use lettre::message::{header::ContentType, Mailbox, Message};
use lettre::{SmtpTransport, Transport};

fn transport(addr: std::net::SocketAddr) -> SmtpTransport {
    SmtpTransport::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .build()
}

#[test]
fn lettre_sends_mail() {
    let srv = common::start(|cfg| std::fs::write(cfg.join("host_list"), "example.test\nother.test\n").unwrap());
    let mailer = transport(srv.addr());
    let email = Message::builder()
        .from("Sender <sender@remote.example>".parse::<Mailbox>().unwrap())
        .to("One <one@example.test>".parse::<Mailbox>().unwrap())
        .to("Two <two@other.test>".parse::<Mailbox>().unwrap())
        .to("Three <three@example.test>".parse::<Mailbox>().unwrap())
        .subject("lettre test")
        .header(ContentType::TEXT_PLAIN)
        .body(String::from(".leading dot\nsecond line\n"))
        .unwrap();
    let resp = mailer.send(&email).expect("lettre send");
    assert_eq!(resp.code().to_string(), "250");
    // One queue file per recipient domain.
    let files = srv.queue_files();
    assert_eq!(files.len(), 2);
    let mut rcpts = 0;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let (todo, msg) = posta::queue::decode(&bytes).unwrap();
        rcpts += todo.rcpt_to.len();
        let msg = String::from_utf8_lossy(msg);
        assert!(msg.contains("Subject: lettre test\r\n"), "{msg}");
        assert!(msg.contains("\r\n..leading dot\r\n"), "stored dot-stuffed: {msg}");
    }
    assert_eq!(rcpts, 3);
}

#[test]
fn lettre_refused_recipient_is_an_error() {
    let srv = common::start(|_| {});
    let email = Message::builder()
        .from("sender@remote.example".parse::<Mailbox>().unwrap())
        .to("someone@not-local.example".parse::<Mailbox>().unwrap())
        .subject("x")
        .body(String::from("x"))
        .unwrap();
    let err = transport(srv.addr()).send(&email).unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert!(srv.queue_files().is_empty());
}
