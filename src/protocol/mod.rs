//! Sans-IO wire formats: no actix, no tokio. Everything here is tested with byte slices.

pub mod address;
pub mod command;
pub mod data;
pub mod deadline;
pub mod proxy;
pub mod reply;
pub mod sasl;
pub mod session;
pub mod xclient;

pub use reply::Reply;
pub use session::{Action, BareEol, CommitError, Session, SessionConfig};
pub mod client;
pub mod dsn;
