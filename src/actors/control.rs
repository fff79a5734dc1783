//! The control socket: `posta queue list|stat|flush|delete|hold|release` against a running
//! daemon.
//!
//! The daemon listens on the Unix socket `<queue>/.control` (mode 0600, created at start,
//! removed on a clean stop) with a small task on the delivery arbiter. A client sends one JSON
//! request line and reads one JSON response line:
//!
//! - `{"cmd":"list"}` (optional `held`, `domain`, `sender`, `older_than_ms`), `{"cmd":"stat"}`:
//!   read from the directory with the offline functions ([`inspect::list`], [`inspect::stat`],
//!   on a blocking thread), plus what the QueueManager knows: which items are being delivered,
//!   and when each waiting one is due in its timer wheel.
//! - `{"cmd":"flush"}` (everything), `{"cmd":"flush","ids":[..]}`, or with the filters of
//!   `list` (e.g. `{"cmd":"flush","domain":"d"}`): rescheduled in the timer wheel; the files
//!   keep their names.
//! - `{"cmd":"delete"|"hold"|"release","ids":[..]}`: done by the QueueManager itself, so an item
//!   being delivered is refused and a waiting one leaves the timer wheel before its file goes.
//!
//! - `{"cmd":"bounce","ids":[..],"reason":".."}`: the QueueManager queues a DSN for each item
//!   through the daemon's spool and removes it (refused while it is being delivered).
//! - `{"cmd":"reload"}`: re-read the config directory, as SIGHUP does, and answer what happened
//!   (`reloaded`), or why the new config was refused (`error`; the running config stays).
//!
//! A request is at most [`MAX_REQUEST`] bytes and must arrive within [`READ_TIMEOUT`].

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::queue_manager::{BounceItems, Control, Counts, Flush, ItemState, Lookup, QueueManager};
use crate::hooks::state::now_ms;
use crate::queue::inspect::{self, Entry, Filter, InspectError, Stat};

/// The socket's file name in the queue dir.
pub const SOCKET_NAME: &str = ".control";
/// Largest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Time allowed for the request line to arrive.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for writing the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the client waits for the answer (a `list` of a large queue reads every header).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);
/// Connections served at once.
pub const MAX_CONCURRENT: usize = 8;

/// `<queue>/.control`.
pub fn socket_path(queue_dir: &Path) -> PathBuf {
    queue_dir.join(SOCKET_NAME)
}

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum ControlRequest {
    List {
        /// The items in `hold/` instead.
        #[serde(default, skip_serializing_if = "is_false")]
        held: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        domain: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        older_than_ms: Option<u64>,
    },
    Stat,
    /// No ids and no filter: everything.
    Flush {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ids: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        domain: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        older_than_ms: Option<u64>,
    },
    Delete {
        ids: Vec<String>,
    },
    Hold {
        ids: Vec<String>,
    },
    Release {
        ids: Vec<String>,
    },
    /// Bounce now: a DSN with `reason` to each item's sender.
    Bounce {
        ids: Vec<String>,
        reason: String,
    },
    Reload,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What was done to one item: `ok` is the line to print, or `error` says why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdResult {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl IdResult {
    pub fn new(id: &str, r: Result<String, String>) -> IdResult {
        let (ok, error) = match r {
            Ok(line) => (Some(line), None),
            Err(e) => (None, Some(e)),
        };
        IdResult {
            id: id.to_string(),
            ok,
            error,
        }
    }
}

/// One response line. Only the fields of the command asked for are present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlResponse {
    /// The request as a whole failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `list`: the entries, oldest first (`next_attempt_ms` is the due time in the daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<Entry>>,
    /// `list`: the ids among `entries` being delivered now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_flight: Vec<String>,
    /// `stat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat: Option<Stat>,
    /// `stat` and a flush of everything: items waiting in the daemon's timer wheel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<usize>,
    /// `stat` and a flush of everything: items being delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivering: Option<usize>,
    /// `flush`, `delete`, `hold`, `release`: one per item.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<IdResult>,
    /// `reload`: what the reload did (the same text as its log line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reloaded: Option<String>,
}

/// A reload asked for over the control socket, sent to the daemon's main loop (which owns the
/// reloader); the answer is what was reloaded, or why the new config was refused.
pub type ReloadAsk = tokio::sync::oneshot::Sender<Result<String, String>>;

/// What the control socket's handlers need.
#[derive(Clone)]
struct Ctl {
    dir: PathBuf,
    manager: Addr<QueueManager>,
    reload: Option<tokio::sync::mpsc::Sender<ReloadAsk>>,
}

impl ControlResponse {
    fn error(e: impl Into<String>) -> ControlResponse {
        ControlResponse {
            error: Some(e.into()),
            ..Default::default()
        }
    }
}

// ---- daemon side ----

/// Bind `<queue>/.control` and serve it on `arbiter`. A failure is logged; the daemon then
/// runs without a control socket (the tools fall back to working on the files).
pub fn start(
    arbiter: &Arbiter,
    queue_dir: &Path,
    manager: Addr<QueueManager>,
    reload: Option<tokio::sync::mpsc::Sender<ReloadAsk>>,
) {
    let path = socket_path(queue_dir);
    let listener = match bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot create the control socket; `posta queue` works offline only");
            return;
        }
    };
    let ctl = Ctl {
        dir: queue_dir.to_path_buf(),
        manager,
        reload,
    };
    arbiter.spawn(async move {
        match UnixListener::from_std(listener) {
            Ok(l) => serve(l, ctl).await,
            Err(e) => tracing::error!(error = %e, "control socket: cannot use the socket"),
        }
    });
}

/// Bind under a temporary name, restrict it to the owner, then rename it into place, so the
/// socket is never reachable with looser permissions. A socket file left at `path` is stale
/// (the caller holds the queue dir's lock) and is replaced.
fn bind(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    let tmp = path.with_file_name(format!("{SOCKET_NAME}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let l = std::os::unix::net::UnixListener::bind(&tmp)?;
    let placed = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
        .and_then(|()| fs::rename(&tmp, path))
        .and_then(|()| l.set_nonblocking(true));
    if let Err(e) = placed {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(l)
}

/// Remove the socket file (clean stop).
pub fn remove_socket(queue_dir: &Path) {
    let _ = fs::remove_file(socket_path(queue_dir));
}

async fn serve(listener: UnixListener, ctl: Ctl) {
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let ctl = ctl.clone();
                actix::spawn(async move {
                    handle(stream, &ctl).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(stream: UnixStream, ctl: &Ctl) {
    let (rd, mut wr) = stream.into_split();
    let resp = match tokio::time::timeout(READ_TIMEOUT, read_request(rd)).await {
        Err(_) => ControlResponse::error("timed out reading the request"),
        Ok(Err(e)) => ControlResponse::error(e),
        Ok(Ok(req)) => {
            tracing::info!(request = ?req, "control request");
            answer(req, ctl).await
        }
    };
    let mut line = serde_json::to_vec(&resp)
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot write the answer: {e}\"}}").into_bytes());
    line.push(b'\n');
    let _ = tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&line)).await;
}

async fn read_request(rd: tokio::net::unix::OwnedReadHalf) -> Result<ControlRequest, String> {
    let mut buf = Vec::new();
    tokio::io::BufReader::new(rd.take(MAX_REQUEST as u64 + 1))
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| format!("cannot read the request: {e}"))?;
    if buf.len() > MAX_REQUEST {
        return Err(format!("request larger than {MAX_REQUEST} bytes"));
    }
    serde_json::from_slice(&buf).map_err(|e| format!("bad request: {e}"))
}

/// Run an offline queue function on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, InspectError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("internal error: {e}")),
    }
}

const NO_MANAGER: &str = "the daemon's queue manager is not running";

async fn answer(req: ControlRequest, ctl: &Ctl) -> ControlResponse {
    let (dir, manager) = (ctl.dir.as_path(), &ctl.manager);
    let now = now_ms();
    let d = dir.to_path_buf();
    match req {
        ControlRequest::Reload => reload(ctl).await,
        ControlRequest::Bounce { ids, reason } => match manager.send(BounceItems { ids, reason }).await {
            Ok(results) => ControlResponse {
                results,
                ..Default::default()
            },
            Err(e) => ControlResponse::error(format!("queue manager: {e}")),
        },
        ControlRequest::List {
            held,
            domain,
            sender,
            older_than_ms,
        } => {
            let filter = Filter {
                domain,
                sender,
                older_than_ms,
            };
            let mut entries = match blocking(move || inspect::list(&d, &filter, held, now)).await {
                Ok(e) => e,
                Err(e) => return ControlResponse::error(e),
            };
            let mut in_flight = Vec::new();
            if !held {
                let ids = entries.iter().map(|e| e.id().to_string()).collect();
                let Ok(states) = manager.send(Lookup(ids)).await else {
                    return ControlResponse::error(NO_MANAGER);
                };
                for (e, st) in entries.iter_mut().zip(states) {
                    match (st, e) {
                        (ItemState::InFlight, e) => in_flight.push(e.id().to_string()),
                        (ItemState::Waiting(due), Entry::Item(s)) => s.next_attempt_ms = due,
                        _ => {}
                    }
                }
            }
            ControlResponse {
                entries: Some(entries),
                in_flight,
                ..Default::default()
            }
        }
        ControlRequest::Stat => {
            let stat = match blocking(move || inspect::stat(&d, now)).await {
                Ok(s) => s,
                Err(e) => return ControlResponse::error(e),
            };
            let Ok(counts) = manager.send(Counts).await else {
                return ControlResponse::error(NO_MANAGER);
            };
            ControlResponse {
                stat: Some(stat),
                waiting: Some(counts.waiting),
                delivering: Some(counts.in_flight),
                ..Default::default()
            }
        }
        ControlRequest::Flush {
            ids,
            domain,
            sender,
            older_than_ms,
        } => {
            let filter = Filter {
                domain,
                sender,
                older_than_ms,
            };
            let filtered = filter != Filter::default();
            if !ids.is_empty() && filtered {
                return ControlResponse::error("give item ids or filters, not both");
            }
            if ids.is_empty() && !filtered {
                // Everything: one pass over the timer wheel, no file read.
                let (Ok(()), Ok(counts)) = (manager.send(Flush).await, manager.send(Counts).await) else {
                    return ControlResponse::error(NO_MANAGER);
                };
                return ControlResponse {
                    waiting: Some(counts.waiting),
                    delivering: Some(counts.in_flight),
                    ..Default::default()
                };
            }
            let ids = if filtered {
                let listed = blocking(move || inspect::list(&d, &filter, false, now)).await;
                match listed {
                    Ok(entries) => entries
                        .into_iter()
                        .filter_map(|e| match e {
                            Entry::Item(s) => Some(s.id),
                            Entry::Corrupt { .. } => None,
                        })
                        .collect(),
                    Err(e) => return ControlResponse::error(e),
                }
            } else {
                ids
            };
            control(manager, ControlOp::Flush, ids).await
        }
        ControlRequest::Delete { ids } => control(manager, ControlOp::Delete, ids).await,
        ControlRequest::Hold { ids } => control(manager, ControlOp::Hold, ids).await,
        ControlRequest::Release { ids } => control(manager, ControlOp::Release, ids).await,
    }
}

pub use super::queue_manager::ControlOp;

/// Hand the reload to the daemon's main loop and wait for its answer.
async fn reload(ctl: &Ctl) -> ControlResponse {
    let Some(tx) = &ctl.reload else {
        return ControlResponse::error("this daemon cannot reload (it runs embedded, not as `posta run`)");
    };
    let (ask, answer) = tokio::sync::oneshot::channel();
    if tx.send(ask).await.is_err() {
        return ControlResponse::error("the daemon is shutting down");
    }
    match answer.await {
        Ok(Ok(done)) => ControlResponse {
            reloaded: Some(done),
            ..Default::default()
        },
        Ok(Err(e)) => ControlResponse::error(e),
        Err(_) => ControlResponse::error("the daemon is shutting down"),
    }
}

async fn control(manager: &Addr<QueueManager>, op: ControlOp, ids: Vec<String>) -> ControlResponse {
    if ids.is_empty() && op != ControlOp::Flush {
        return ControlResponse::error("no item ids given");
    }
    match manager.send(Control { op, ids }).await {
        Ok(results) => ControlResponse {
            results,
            ..Default::default()
        },
        Err(_) => ControlResponse::error(NO_MANAGER),
    }
}

// ---- client side ----

/// Send `req` to the daemon serving `queue_dir`. `None` when no daemon answers there (no
/// socket file, or nothing listening on it: a daemon that was killed): work offline then.
pub fn request(queue_dir: &Path, req: &ControlRequest) -> Option<Result<ControlResponse, String>> {
    let path = socket_path(queue_dir);
    let stream = match StdUnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => return None,
        Err(e) => {
            return Some(Err(format!(
                "cannot connect to the daemon's control socket {}: {e}",
                path.display()
            )))
        }
    };
    Some(exchange(stream, req).map_err(|e| format!("control socket {}: {e}", path.display())))
}

/// True when a daemon accepts connections on `queue_dir`'s control socket.
pub fn daemon_listening(queue_dir: &Path) -> bool {
    StdUnixStream::connect(socket_path(queue_dir)).is_ok()
}

fn exchange(mut stream: StdUnixStream, req: &ControlRequest) -> Result<ControlResponse, String> {
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(READ_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer: {e}"))?;
    if answer.is_empty() {
        return Err("the daemon closed the connection without an answer".into());
    }
    let resp: ControlResponse = serde_json::from_str(&answer).map_err(|e| format!("bad answer: {e}"))?;
    match resp.error {
        Some(e) => Err(e),
        None => Ok(resp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_on_the_wire() {
        let r: ControlRequest = serde_json::from_str(r#"{"cmd":"flush","domain":"d"}"#).unwrap();
        assert_eq!(
            r,
            ControlRequest::Flush {
                ids: vec![],
                domain: Some("d".into()),
                sender: None,
                older_than_ms: None
            }
        );
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"cmd":"flush","domain":"d"}"#);
        let r: ControlRequest = serde_json::from_str(r#"{"cmd":"stat"}"#).unwrap();
        assert_eq!(r, ControlRequest::Stat);
        let r: ControlRequest = serde_json::from_str(r#"{"cmd":"hold","ids":["a","b"]}"#).unwrap();
        assert_eq!(
            r,
            ControlRequest::Hold {
                ids: vec!["a".into(), "b".into()]
            }
        );
        // A misspelt filter must not flush everything; a missing id list is an error.
        assert!(serde_json::from_str::<ControlRequest>(r#"{"cmd":"flush","domian":"d"}"#).is_err());
        assert!(serde_json::from_str::<ControlRequest>(r#"{"cmd":"delete"}"#).is_err());
        assert!(serde_json::from_str::<ControlRequest>(r#"{"cmd":"bounce","ids":["a"]}"#).is_err());
    }

    #[test]
    fn responses_round_trip() {
        let resp = ControlResponse {
            results: vec![
                IdResult::new("a", Ok("deleted a".into())),
                IdResult::new("b", Err("b is being delivered now".into())),
            ],
            ..Default::default()
        };
        let s = serde_json::to_string(&resp).unwrap();
        assert_eq!(
            s,
            r#"{"results":[{"id":"a","ok":"deleted a"},{"id":"b","error":"b is being delivered now"}]}"#
        );
        assert_eq!(serde_json::from_str::<ControlResponse>(&s).unwrap(), resp);
    }

    #[test]
    fn no_socket_means_offline() {
        let d = tempfile::tempdir().unwrap();
        assert!(request(d.path(), &ControlRequest::Stat).is_none());
        // A stale socket file (nobody listening) too.
        drop(std::os::unix::net::UnixListener::bind(socket_path(d.path())).unwrap());
        assert!(request(d.path(), &ControlRequest::Stat).is_none());
    }

    #[test]
    fn bind_replaces_a_stale_socket_with_an_owner_only_one() {
        let d = tempfile::tempdir().unwrap();
        let path = socket_path(d.path());
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let _l = bind(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(StdUnixStream::connect(&path).is_ok());
        // Only the socket is left: no temporary name.
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from(SOCKET_NAME)]);
    }
}
