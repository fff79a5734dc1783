//! Test harness: start the real daemon (in-process, on an ephemeral loopback port, with its
//! own temp config and queue dirs) and talk SMTP to it over real TCP.
#![allow(dead_code)]

pub mod dns;
pub mod dsn;
pub mod haproxy;
pub mod process;
pub mod relay;
pub mod sink;
pub mod whoami;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use posta::config::Config;
use posta::hooks::PluginRegistry;
use posta::server::RunningServer;

/// A running daemon with its directories. Dropping it stops the daemon.
pub struct TestServer {
    pub server: RunningServer,
    pub root: tempfile::TempDir,
}

impl TestServer {
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }
    pub fn config_dir(&self) -> PathBuf {
        self.root.path().join("config")
    }
    pub fn queue_dir(&self) -> PathBuf {
        self.root.path().join("queue")
    }
    /// Committed queue files (temp files excluded), sorted by name.
    pub fn queue_files(&self) -> Vec<PathBuf> {
        queue_files(&self.queue_dir())
    }
    /// Connect a client and read the greeting.
    pub fn client(&self) -> Client {
        Client::connect(self.addr())
    }
}

/// Committed queue files in `dir`.
pub fn queue_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    // Temp files and the `.lock` file are not queue items.
    v.retain(|p| {
        let n = p.file_name().unwrap().to_string_lossy();
        !n.starts_with("__tmp__") && !n.starts_with('.')
    });
    v.retain(|p| p.is_file());
    v.sort();
    v
}

/// Temp files (`__tmp__.*`) in `dir`.
pub fn temp_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("__tmp__"))
        .collect()
}

/// Write the default test config into `dir`: listen 127.0.0.1:0, one worker, local domain
/// `example.test`, plugins `rcpt_to.in_host_list`, delivery disabled (`outbound.ini`).
pub fn write_default_config(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("smtp.ini"),
        "[main]\nlisten=127.0.0.1:0\nnodes=1\ninactivity_timeout=30\n",
    )
    .unwrap();
    std::fs::write(dir.join("host_list"), "example.test\n").unwrap();
    std::fs::write(dir.join("plugins"), "rcpt_to.in_host_list\n").unwrap();
    std::fs::write(dir.join("me"), "mx.example.test\n").unwrap();
    // Inbound tests look at the queue: keep what is accepted there (no delivery).
    std::fs::write(dir.join("outbound.ini"), "[main]\ndisabled=true\n").unwrap();
}

/// Start with the default config, after `setup` may change files in the config dir.
pub fn start(setup: impl FnOnce(&Path)) -> TestServer {
    start_with(setup, PluginRegistry::builtin())
}

/// Start with a custom plugin registry (test-only plugins).
pub fn start_with(setup: impl FnOnce(&Path), registry: PluginRegistry) -> TestServer {
    let root = tempfile::tempdir().unwrap();
    let cfg_dir = root.path().join("config");
    write_default_config(&cfg_dir);
    setup(&cfg_dir);
    let cfg = Config::load(&cfg_dir).expect("test config loads");
    let server = posta::server::start(&cfg, &registry).expect("server starts");
    TestServer { server, root }
}

/// A reply: code and text lines (without the code prefix).
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// A blocking SMTP client with timeouts, so a test can never hang.
pub struct Client {
    pub reader: BufReader<TcpStream>,
    pub greeting: Reply,
}

/// A TCP connection to `to` from the local address `source` (another loopback address stands
/// for another client, e.g. one a proxy reports), connect bounded at 10 s, with the tests'
/// 20 s read and write timeouts.
pub fn connect_bound(source: std::net::IpAddr, to: SocketAddr) -> TcpStream {
    let domain = socket2::Domain::for_address(to);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(source, 0).into()).unwrap();
    sock.connect_timeout(&to.into(), Duration::from_secs(10)).unwrap();
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    stream
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        Client::greeted(stream)
    }

    /// Connect from the local address `source` ([`connect_bound`]).
    pub fn connect_from(source: std::net::IpAddr, addr: SocketAddr) -> Client {
        Client::greeted(connect_bound(source, addr))
    }

    fn greeted(stream: TcpStream) -> Client {
        let mut reader = BufReader::new(stream);
        let greeting = read_reply(&mut reader).expect("greeting");
        Client { reader, greeting }
    }

    /// Send raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    /// Read one (possibly multi-line) reply; `None` when the server closed the connection.
    pub fn reply(&mut self) -> Option<Reply> {
        read_reply(&mut self.reader)
    }

    /// Send a command line (CRLF added) and read its reply.
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
            .unwrap_or_else(|| panic!("connection closed after {line:?}"))
    }

    /// Send a command and assert the reply code.
    pub fn expect(&mut self, line: &str, code: u16) -> Reply {
        let r = self.cmd(line);
        assert_eq!(r.code, code, "{line:?} -> {r:?}");
        r
    }

    /// EHLO, MAIL, RCPT... DATA, body, dot: returns the final reply.
    pub fn send_mail(&mut self, from: &str, rcpts: &[&str], body: &[u8]) -> Reply {
        self.expect(&format!("MAIL FROM:<{from}>"), 250);
        for r in rcpts {
            self.expect(&format!("RCPT TO:<{r}>"), 250);
        }
        self.expect("DATA", 354);
        self.send(body);
        self.send(b"\r\n.\r\n");
        self.reply().expect("reply after DATA")
    }

    /// True when the server has closed the connection (reads EOF within the timeout).
    pub fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        matches!(self.reader.read(&mut buf), Ok(0) | Err(_))
    }
}

/// Read a reply from any buffered reader.
pub fn read_reply<R: BufRead>(r: &mut R) -> Option<Reply> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        if !line.ends_with('\n') {
            return None; // connection closed in the middle of a line
        }
        assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
        assert!(line.len() <= 512, "reply line too long: {line:?}");
        let code: u16 = line[..3].parse().expect("reply code");
        let sep = line.as_bytes()[3];
        lines.push(line[4..].trim_end().to_string());
        if sep == b' ' {
            return Some(Reply { code, lines });
        }
        assert_eq!(sep, b'-', "bad reply separator in {line:?}");
    }
}
