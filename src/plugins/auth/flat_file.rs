//! `auth/flat_file`: users and passwords from `auth_flat_file.ini`.
//!
//! ```ini
//! [core]
//! methods = PLAIN,LOGIN,CRAM-MD5
//! [users]
//! alice = secret
//! ```
//!
//! A user not in `[users]` is left to the next auth plugin (CONT); a known user with the
//! wrong password is refused (DENY). User names are case-insensitive (ini keys are).

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::hooks::{Hook, HookContext, HookName, HookResult, HookReturn, Outcome, Plugin};
use crate::protocol::sasl::Mechanism;

const FILE: &str = "auth_flat_file.ini";

pub struct FlatFile {
    methods: Vec<Mechanism>,
    users: HashMap<String, String>,
}

impl FlatFile {
    pub fn build(cfg: &Config) -> Result<Arc<dyn Plugin>, ConfigError> {
        let ini = cfg.ini(FILE)?;
        let methods = match ini.get("core", "methods") {
            None => Mechanism::ALL.to_vec(),
            Some(v) => parse_methods(v).map_err(|p| ini.invalid("core", "methods", p))?,
        };
        let users = ini
            .keys("users")
            .into_iter()
            .filter_map(|u| ini.get("users", &u).map(|p| (u.clone(), p.to_string())))
            .collect();
        Ok(Arc::new(FlatFile { methods, users }))
    }
}

/// `PLAIN,LOGIN,CRAM-MD5` (commas or spaces), at least one.
pub fn parse_methods(v: &str) -> Result<Vec<Mechanism>, String> {
    let mut out = Vec::new();
    for name in v.split([',', ' ']).map(str::trim).filter(|n| !n.is_empty()) {
        let m = Mechanism::parse(name)
            .ok_or_else(|| format!("unknown mechanism '{name}' (known: PLAIN, LOGIN, CRAM-MD5)"))?;
        if !out.contains(&m) {
            out.push(m);
        }
    }
    if out.is_empty() {
        return Err("no mechanism given".into());
    }
    Ok(out)
}

impl Plugin for FlatFile {
    fn name(&self) -> &str {
        "auth/flat_file"
    }
    fn hooks(&self) -> &[HookName] {
        &[HookName::Auth]
    }
    fn auth_mechanisms(&self) -> &[Mechanism] {
        &self.methods
    }
    fn call<'a>(&'a self, hook: &'a Hook, _: &'a mut HookContext<'_>) -> HookReturn<'a> {
        let Hook::Auth(a) = hook else {
            return HookResult::CONT.into();
        };
        if !self.methods.contains(&a.mechanism) {
            return HookResult::CONT.into();
        }
        match self.users.get(&a.user.to_lowercase()) {
            None => HookResult::CONT.into(),
            Some(pass) if a.verify(pass) => HookResult::new(Outcome::Ok).into(),
            Some(_) => HookResult::new(Outcome::Deny).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods() {
        assert_eq!(
            parse_methods("PLAIN, cram-md5 LOGIN,PLAIN").unwrap(),
            vec![Mechanism::Plain, Mechanism::CramMd5, Mechanism::Login]
        );
        assert!(parse_methods("PLAIN,XOAUTH2").unwrap_err().contains("XOAUTH2"));
        assert!(parse_methods(" , ").is_err());
    }

    #[test]
    fn config_errors_name_file_and_key() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(FILE), "[core]\nmethods=PLAIN,NTLM\n").unwrap();
        let cfg = Config::load(d.path()).unwrap();
        let e = FlatFile::build(&cfg).err().unwrap();
        assert_eq!((e.file.as_str(), e.key.as_deref()), (FILE, Some("[core] methods")));
    }
}
