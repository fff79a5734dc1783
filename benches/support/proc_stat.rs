//! CPU time of a process from `/proc/PID/stat`, shared by the load and commit benches.

use std::process::Command;

/// `getconf CLK_TCK` (100 when unknown).
pub fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// (user, system) CPU ms of a process, its reaped children included.
pub fn cpu_ms(pid: &str, tck: u64) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // Fields after the command name start at `state` (field 3): utime is field 14.
    let (ut, st, cut, cst) = (f.get(11)?, f.get(12)?, f.get(13)?, f.get(14)?);
    Some(((ut + cut) * 1000 / tck, (st + cst) * 1000 / tck))
}
