//! `auth/*` plugins: backends for the `auth` hook, which the session runs with a finished
//! SMTP AUTH exchange (see docs/auth.md). A backend answers OK (good credentials), DENY
//! (bad ones), DENYSOFT (cannot tell now) or CONT (not its user or mechanism).

pub mod auth_proxy;
pub mod flat_file;
