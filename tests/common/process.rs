//! Running the real `posta` binary as a child process (for kill -9 and memory tests).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A daemon child process, killed with SIGKILL when dropped.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A field of /proc/PID/status in kB (VmHWM = peak RSS).
    pub fn status_kb(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Point the config in `cfg_dir` at `port` and start `posta run` on it; waits (bounded)
/// until the port accepts connections.
pub fn spawn_daemon(cfg_dir: &Path, port: u16) -> Daemon {
    let smtp = format!("[main]\nlisten=127.0.0.1:{port}\nnodes=2\ninactivity_timeout=30\n");
    std::fs::write(cfg_dir.join("smtp.ini"), smtp).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_posta"))
        .args(["run", "-c"])
        .arg(cfg_dir)
        .env("POSTA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn posta");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "posta did not start listening on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon { child, addr }
}

/// `posta <cmd> -c <cfg>` with `POSTA_LOG` set to `log` (`None`: unset, so `log.ini` decides),
/// stderr collected by a thread whose result is the whole log once the child has exited.
pub fn spawn_captured(cmd: &str, cfg: &Path, log: Option<&str>) -> (Child, std::thread::JoinHandle<String>) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_posta"));
    c.args([cmd, "-c"])
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match log {
        Some(level) => c.env("POSTA_LOG", level),
        None => c.env_remove("POSTA_LOG"),
    };
    let mut child = c.spawn().expect("spawn posta");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    (child, reader)
}

/// Wait (bounded) for a child to exit: its status, or `None` after `within` (it is then
/// killed and reaped, so no test leaves a daemon behind).
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
