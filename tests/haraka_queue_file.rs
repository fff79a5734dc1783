//! posta reads a queue file exactly as Haraka 3.1 writes it (fixture built from the format:
//! 4-byte big-endian length, "\n" + tab-indented JSON todo + "\n", then the dot-stuffed
//! message), and writes the same header bytes back.

use posta::queue::{decode, encode_header, QueueName};

const NAME: &str = "1747300000123_1747300000123_0_4242_Xy7Qz1_3_haraka.example";

fn fixture() -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/haraka-queue")
        .join(NAME);
    std::fs::read(path).unwrap()
}

#[test]
fn reads_a_haraka_queue_file() {
    let bytes = fixture();
    let (todo, msg) = decode(&bytes).unwrap();
    assert_eq!(todo.queue_time, 1747300000123);
    assert_eq!(todo.domain, "example.net");
    assert_eq!(todo.uuid, "6C1E8E3B-1D4F-4C3A-9A59-5E9B5D2E7A10.1.1");
    assert!(!todo.force_tls);
    assert_eq!(todo.rcpt_to.len(), 2);
    assert_eq!(todo.rcpt_to[1].original, "<Bob@Example.NET>");
    assert_eq!(todo.rcpt_to[1].host.as_deref(), Some("example.net"));
    assert_eq!(todo.mail_from.user.as_deref(), Some("sender"));
    assert_eq!(todo.notes["local_sender"], serde_json::Value::Bool(true));
    assert!(msg.starts_with(b"Received: from client.example"));
    assert!(msg.windows(4).any(|w| w == b"\r\n..") && !msg.windows(5).any(|w| w == b"\r\n.\r\n"));
}

#[test]
fn writes_the_same_header_bytes() {
    let bytes = fixture();
    let (todo, msg) = decode(&bytes).unwrap();
    let header = encode_header(&todo);
    assert_eq!(header, bytes[..bytes.len() - msg.len()], "header differs from Haraka's");
}

#[test]
fn parses_haraka_file_names() {
    let n = QueueName::parse(NAME).unwrap();
    assert_eq!(
        (n.arrival, n.next_attempt, n.attempts, n.pid),
        (1747300000123, 1747300000123, 0, 4242)
    );
    assert_eq!(
        (n.uid.as_str(), n.counter, n.host.as_str()),
        ("Xy7Qz1", 3, "haraka.example")
    );
    assert_eq!(n.to_string(), NAME);
}

#[test]
fn corrupt_variants_are_errors_not_panics() {
    let bytes = fixture();
    for cut in [0, 2, 4, 100, 681] {
        assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut wrong_len = bytes.clone();
    wrong_len[3] = wrong_len[3].wrapping_add(7);
    assert!(decode(&wrong_len).is_err());
}
