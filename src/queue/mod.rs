//! The queue as plain types: the Haraka queue file codec and the durable commit.

pub mod file;
pub mod inspect;
pub mod item;
pub mod maildir;
pub mod route;
pub mod schedule;
pub mod spool;
pub mod timer_wheel;

pub use file::{decode, encode_header, QueueFileError, QueueName, Todo, TodoAddress};
pub use spool::{CommitRequest, MessageBody, Spool};
