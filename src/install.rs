//! `posta install`: the system layout of docs/install.md in one idempotent step.
//!
//! Binary `/usr/local/bin/posta`, user and group `posta`, config `/etc/posta` (the shipped
//! config adjusted for the system: queue `/var/spool/posta`, Maildirs `/var/mail/posta`,
//! listen on port 25), the queue and Maildir roots (0750, owned by `posta`), and the systemd
//! unit. Nothing that exists is overwritten, except the binary and the unit when they differ
//! (an upgrade); a config file the admin changed is never touched. Every path is under
//! `root` (default `/`), so a package build or a test can stage the tree elsewhere.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The unit shipped in `packaging/`, compiled in so the binary alone can install it.
pub const UNIT: &str = include_str!("../packaging/posta.service");

/// Where things go, relative to the root.
pub const BIN: &str = "usr/local/bin/posta";
pub const ETC: &str = "etc/posta";
pub const SPOOL: &str = "var/spool/posta";
pub const MAIL: &str = "var/mail/posta";
pub const UNIT_PATH: &str = "etc/systemd/system/posta.service";

/// What to install.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub root: PathBuf,
    /// The config directory to start `/etc/posta` from.
    pub config_from: PathBuf,
    /// `smtp.ini [main] listen` for a new `/etc/posta`.
    pub listen: String,
    /// Create the `posta` user and group and give it the spool and Maildir roots.
    pub user: bool,
    pub systemd: bool,
}

/// One line per step: what was done.
pub type Report = Vec<String>;

/// Install; the report says what was created, updated or kept.
pub fn install(o: &InstallOptions) -> Result<Report, String> {
    let mut report = Report::new();
    let at = |rel: &str| o.root.join(rel);
    install_binary(&at(BIN), &mut report)?;
    let owner = if o.user { Some(ensure_user(&mut report)?) } else { None };
    for dir in [SPOOL, MAIL] {
        private_dir(&at(dir), owner, &mut report)?;
    }
    install_config(o, &at(ETC), &mut report)?;
    if o.systemd {
        write_if_different(&at(UNIT_PATH), UNIT.as_bytes(), 0o644, &mut report)?;
    }
    Ok(report)
}

fn err(what: &'static str, p: &Path) -> impl FnOnce(io::Error) -> String {
    let p = p.display().to_string();
    move |e| format!("cannot {what} {p}: {e}")
}

fn install_binary(dst: &Path, report: &mut Report) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find the running binary: {e}"))?;
    if fs::canonicalize(&me).ok() == fs::canonicalize(dst).ok() {
        report.push(format!("kept {} (the running binary)", dst.display()));
        return Ok(());
    }
    let bytes = fs::read(&me).map_err(err("read", &me))?;
    write_if_different(dst, &bytes, 0o755, report)
}

/// Write `bytes` at `dst` (through a temp file and a rename) unless it already holds them.
fn write_if_different(dst: &Path, bytes: &[u8], mode: u32, report: &mut Report) -> Result<(), String> {
    let old = fs::read(dst).ok();
    if old.as_deref() == Some(bytes) {
        report.push(format!("kept {} (up to date)", dst.display()));
        return Ok(());
    }
    let parent = dst.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).map_err(err("create", parent))?;
    let tmp = dst.with_extension("posta-install.tmp");
    fs::write(&tmp, bytes).map_err(err("write", &tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(err("chmod", &tmp))?;
    fs::rename(&tmp, dst).map_err(err("replace", dst))?;
    let verb = if old.is_some() { "updated" } else { "created" };
    report.push(format!("{verb} {}", dst.display()));
    Ok(())
}

/// The `posta` user's uid and gid, creating the system group and user when missing.
fn ensure_user(report: &mut Report) -> Result<(u32, u32), String> {
    if let Some(ids) = user_ids() {
        report.push("kept user posta (exists)".into());
        return Ok(ids);
    }
    run("groupadd", &["--system", "posta"])?;
    run(
        "useradd",
        &[
            "--system",
            "--gid",
            "posta",
            "--home-dir",
            "/var/spool/posta",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "posta",
        ],
    )?;
    report.push("created user and group posta".into());
    user_ids().ok_or_else(|| "user posta was created but cannot be found".into())
}

fn user_ids() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "posta"]).output().ok()?;
        out.status.success().then_some(())?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let st = Command::new(cmd)
        .args(args)
        .status()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    st.success()
        .then_some(())
        .ok_or_else(|| format!("{cmd} {} failed ({st})", args.join(" ")))
}

/// A 0750 directory owned by the posta user (when there is one).
fn private_dir(p: &Path, owner: Option<(u32, u32)>, report: &mut Report) -> Result<(), String> {
    let existed = p.is_dir();
    fs::create_dir_all(p).map_err(err("create", p))?;
    if existed {
        report.push(format!("kept {} (exists)", p.display()));
        return Ok(());
    }
    fs::set_permissions(p, fs::Permissions::from_mode(0o750)).map_err(err("chmod", p))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(err("chown", p))?;
    }
    report.push(format!("created {}", p.display()));
    Ok(())
}

/// Copy the files of `config_from` that `/etc/posta` lacks; a new install gets the system
/// paths and the listen address. Existing files are never changed.
fn install_config(o: &InstallOptions, etc: &Path, report: &mut Report) -> Result<(), String> {
    let fresh = !etc.join("smtp.ini").exists();
    fs::create_dir_all(etc).map_err(err("create", etc))?;
    let entries = fs::read_dir(&o.config_from).map_err(err("read", &o.config_from))?;
    let mut copied = 0;
    for e in entries.flatten() {
        let (src, name) = (e.path(), e.file_name());
        let dst = etc.join(&name);
        if !src.is_file() || dst.exists() {
            continue;
        }
        fs::copy(&src, &dst).map_err(err("copy", &src))?;
        copied += 1;
    }
    if !fresh {
        report.push(format!(
            "kept {} (exists; {copied} missing file(s) added)",
            etc.display()
        ));
        return Ok(());
    }
    let system = [
        ("queue_dir", "/var/spool/posta\n".to_string()),
        ("maildir.ini", "[main]\npath=/var/mail/posta\n".to_string()),
        ("smtp.ini", system_smtp_ini(etc, &o.listen)),
    ];
    for (name, text) in system {
        let p = etc.join(name);
        fs::write(&p, text).map_err(err("write", &p))?;
    }
    report.push(format!(
        "created {} from {} (queue_dir /var/spool/posta, Maildirs /var/mail/posta, listen {})",
        etc.display(),
        o.config_from.display(),
        o.listen
    ));
    Ok(())
}

/// The copied smtp.ini with its `listen` line replaced.
fn system_smtp_ini(etc: &Path, listen: &str) -> String {
    let old = fs::read_to_string(etc.join("smtp.ini")).unwrap_or_else(|_| "[main]\n".into());
    let mut replaced = false;
    let mut out: Vec<String> = old
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("listen") && l.contains('=') && !replaced {
                replaced = true;
                format!("listen={listen}")
            } else {
                l.to_string()
            }
        })
        .collect();
    if !replaced {
        let at = out.iter().position(|l| l.trim() == "[main]").map_or(0, |i| i + 1);
        if at == 0 {
            out.insert(0, "[main]".into());
        }
        out.insert(at.max(1), format!("listen={listen}"));
    }
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_is_replaced_or_added() {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("smtp.ini"),
            "; c\n[main]\nlisten=127.0.0.1:2525\nnodes=2\n",
        )
        .unwrap();
        assert_eq!(
            system_smtp_ini(d.path(), "[::0]:25"),
            "; c\n[main]\nlisten=[::0]:25\nnodes=2\n"
        );
        fs::write(d.path().join("smtp.ini"), "[main]\nnodes=2\n").unwrap();
        assert_eq!(
            system_smtp_ini(d.path(), "0.0.0.0:25"),
            "[main]\nlisten=0.0.0.0:25\nnodes=2\n"
        );
        fs::remove_file(d.path().join("smtp.ini")).unwrap();
        assert_eq!(system_smtp_ini(d.path(), "0.0.0.0:25"), "[main]\nlisten=0.0.0.0:25\n");
    }

    #[test]
    fn the_unit_is_the_packaged_one() {
        assert!(UNIT.contains("ExecStart=/usr/local/bin/posta run -c /etc/posta"));
        assert!(UNIT.contains("ReadWritePaths=/var/spool/posta /var/mail/posta"));
    }
}
