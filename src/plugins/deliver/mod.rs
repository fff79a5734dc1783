//! `deliver/*` plugins (posta's local delivery routes).

pub mod maildir;
