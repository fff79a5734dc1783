//! The real HAProxy in front of a test daemon, sending the PROXY protocol (v1 or v2).
//! `scripts/test-deps.sh` installs it when it is missing.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `haproxy -db` (foreground), killed when dropped.
pub struct Haproxy {
    child: Child,
    /// Where clients connect.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// `send-proxy` (v1) or `send-proxy-v2`.
#[derive(Debug, Clone, Copy)]
pub enum Version {
    V1,
    V2,
}

impl Haproxy {
    /// Listen on a free loopback port and forward to `backend` with the PROXY header.
    pub fn start(backend: SocketAddr, version: Version) -> Haproxy {
        let bin = haproxy_bin();
        let dir = tempfile::tempdir().unwrap();
        let addr = free_port();
        let send = match version {
            Version::V1 => "send-proxy",
            Version::V2 => "send-proxy-v2",
        };
        let cfg = format!(
            "global\n    maxconn 64\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\n\
             frontend smtp\n    bind {addr}\n    default_backend posta\n\n\
             backend posta\n    server posta {backend} {send}\n"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new(&bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let mut h = Haproxy { child, addr, _dir: dir };
        h.wait_listening();
        h
    }

    /// Poll the frontend port until it accepts (bounded), or fail with HAProxy's stderr.
    fn wait_listening(&mut self) {
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("haproxy exited ({status}): {err}");
            }
            // A bare connect, closed at once: HAProxy may not even reach the backend.
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("haproxy did not start listening on {}", self.addr);
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound and released; HAProxy binds it right after).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The haproxy binary: on PATH or in /usr/sbin, else installed by `scripts/test-deps.sh`
/// (once per test binary: tests run in parallel and apt-get takes a lock).
pub fn haproxy_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(locate_or_install).clone()
}

fn locate_or_install() -> PathBuf {
    if let Some(p) = find("haproxy") {
        return p;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-deps.sh");
    let status = Command::new("sh").arg(&script).status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "{} failed ({status:?}); install the Debian package haproxy",
        script.display()
    );
    find("haproxy").expect("haproxy installed by scripts/test-deps.sh")
}

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}
