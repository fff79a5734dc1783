//! `posta install --root DIR`: the system layout staged in a temp dir, idempotent, never
//! overwriting the admin's config; the installed config passes `check-config`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn posta(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_posta")).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn install(root: &Path) -> (bool, String) {
    posta(&[
        "install",
        "--root",
        root.to_str().unwrap(),
        "--config-from",
        concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
        "--no-user",
    ])
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn install_stages_the_layout_and_is_idempotent() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let (ok, out) = install(root);
    assert!(ok, "{out}");
    let etc = root.join("etc/posta");
    // The binary, runnable.
    let bin = root.join("usr/local/bin/posta");
    assert_eq!(mode(&bin), 0o755);
    let v = Command::new(&bin).arg("--help").output().unwrap();
    assert!(v.status.success());
    // The config: the shipped one, with the system paths and port 25.
    let read = |f: &str| std::fs::read_to_string(etc.join(f)).unwrap();
    assert_eq!(read("queue_dir").trim(), "/var/spool/posta");
    assert!(read("maildir.ini").contains("path=/var/mail/posta"));
    assert!(read("smtp.ini").contains("\nlisten=[::0]:25\n"), "{}", read("smtp.ini"));
    assert!(!read("smtp.ini").contains("2525"));
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/host_list");
    assert_eq!(read("host_list"), std::fs::read_to_string(shipped).unwrap());
    // Private spool and Maildir roots; the packaged unit.
    assert_eq!(mode(&root.join("var/spool/posta")), 0o750);
    assert_eq!(mode(&root.join("var/mail/posta")), 0o750);
    let packaged = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/posta.service");
    assert_eq!(
        std::fs::read(root.join("etc/systemd/system/posta.service")).unwrap(),
        std::fs::read(packaged).unwrap()
    );
    assert!(out.contains(&format!("config {} OK", etc.display())), "{out}");
    let (ok, check) = posta(&["check-config", "-c", etc.to_str().unwrap()]);
    assert!(ok, "{check}");

    // Again, after the admin changed the config: nothing is overwritten.
    std::fs::write(etc.join("host_list"), "example.org\n").unwrap();
    std::fs::write(etc.join("smtp.ini"), "[main]\nlisten=0.0.0.0:25\n").unwrap();
    let (ok, out) = install(root);
    assert!(ok, "{out}");
    assert!(!out.contains("created"), "{out}");
    assert!(!out.contains("updated"), "{out}");
    assert_eq!(read("host_list"), "example.org\n");
    assert_eq!(read("smtp.ini"), "[main]\nlisten=0.0.0.0:25\n");

    // A changed unit (an upgrade) is replaced; a broken config is reported.
    std::fs::write(root.join("etc/systemd/system/posta.service"), "old").unwrap();
    std::fs::write(etc.join("smtp.ini"), "[main]\nlisten=nowhere\n").unwrap();
    let (ok, out) = install(root);
    assert!(!ok, "{out}");
    assert!(out.contains("updated") && out.contains("posta.service"), "{out}");
    assert!(out.contains("smtp.ini") && out.contains("listen"), "{out}");
}

#[test]
fn install_reports_a_missing_config_source() {
    let d = tempfile::tempdir().unwrap();
    let (ok, out) = posta(&[
        "install",
        "--root",
        d.path().to_str().unwrap(),
        "--config-from",
        "/nonexistent/config",
        "--no-user",
    ]);
    assert!(!ok);
    assert!(out.contains("/nonexistent/config"), "{out}");
}
