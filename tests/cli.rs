//! The command line: `posta check-config` and start-up errors name the file, key and problem.

mod common;

use std::process::Command;

fn posta(args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_posta"))
        .args(args)
        .arg(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn config_with(file: &str, content: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    common::write_default_config(root.path());
    std::fs::write(
        root.path().join("plugins"),
        "rcpt_to.in_host_list\nmax_unrecognized_commands\n",
    )
    .unwrap();
    std::fs::write(root.path().join(file), content).unwrap();
    root
}

#[test]
fn the_repository_config_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let (ok, text) = posta(&["check-config", "-c"], &dir);
    assert!(ok, "{text}");
    assert!(text.contains("OK"), "{text}");
}

#[test]
fn bad_values_are_named() {
    let cases = [
        ("smtp.ini", "[main]\nlisten=somewhere\n", "smtp.ini: [main] listen"),
        (
            "smtp.ini",
            "[main]\nlisten=127.0.0.1:0\ninactivity_timeout=soon\n",
            "[main] inactivity_timeout",
        ),
        ("connection.ini", "[max]\nbytes=-5\n", "connection.ini: [max] bytes"),
        ("connection.ini", "[main]\nsmtputf8=perhaps\n", "[main] smtputf8"),
        ("connection.ini", "[main]\nbare_eol=sometimes\n", "[main] bare_eol"),
        ("connection.ini", "[max]\nline_length=10\n", "[max] line_length"),
        (
            "connection.ini",
            "[max\nbytes=5\n",
            "connection.ini: not a valid ini file",
        ),
        (
            "plugins",
            "rcpt_to.in_host_list\nno.such.plugin\n",
            "unknown plugin 'no.such.plugin'",
        ),
        ("plugin_timeout", "forever\n", "plugin_timeout"),
        ("max_unrecognized_commands", "many\n", "max_unrecognized_commands"),
        (
            "actors.ini",
            "[concurrency]\ncommits=0\n",
            "actors.ini: [concurrency] commits",
        ),
        (
            "outbound.ini",
            "[main]\ndelay_warning=99999999\n",
            "outbound.ini: [main] delay_warning",
        ),
        ("outbound.ini", "[main]\ndelay_warning=soon\n", "[main] delay_warning"),
        (
            "auth.ini",
            "[main]\nlockout_window=0\n",
            "auth.ini: [main] lockout_window",
        ),
        (
            "auth.ini",
            "[main]\nlockout_failures=-1\n",
            "auth.ini: [main] lockout_failures",
        ),
        (
            "actors.ini",
            "[mailbox]\ntransaction=lots\n",
            "actors.ini: [mailbox] transaction",
        ),
    ];
    for (file, content, needle) in cases {
        let dir = config_with(file, content);
        let (ok, text) = posta(&["check-config", "-c"], dir.path());
        assert!(!ok, "{file} {content:?} was accepted");
        assert!(text.contains(needle), "{file} {content:?}: {text}");
        // `run` refuses to start with the same message.
        let (ok, text) = posta(&["run", "-c"], dir.path());
        assert!(!ok && text.contains(needle), "run with bad {file}: {text}");
    }
}

#[test]
fn missing_config_dir() {
    let (ok, text) = posta(&["check-config", "-c"], std::path::Path::new("/nonexistent/posta"));
    assert!(!ok);
    assert!(text.contains("does not exist"), "{text}");
}

/// `auth_proxy.ini`: an unreadable or empty `ca` and a bad `tls_verify` stop start-up with the
/// file and key named.
#[test]
fn auth_proxy_tls_settings_are_checked() {
    for (ini, needle) in [
        ("[main]\nca=missing.pem\n", "auth_proxy.ini: [main] ca"),
        ("[main]\nca=empty.pem\n", "no CA certificate found"),
        ("[main]\ntls_verify=maybe\n", "auth_proxy.ini: [main] tls_verify"),
    ] {
        let dir = config_with("auth_proxy.ini", ini);
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        std::fs::write(dir.path().join("plugins"), "auth/auth_proxy\nrcpt_to.in_host_list\n").unwrap();
        let (ok, text) = posta(&["check-config", "-c"], dir.path());
        assert!(!ok, "{ini:?} was accepted");
        assert!(text.contains(needle), "{ini:?}: {text}");
    }
}
