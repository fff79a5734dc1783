//! The actors: thin shells that own state and move messages between the plain types.

pub mod connection;
pub mod control;
pub mod delivery_supervisor;
pub mod listener;
pub mod metrics_http;
pub mod proxy;
pub mod queue_file;
pub mod queue_manager;
pub mod remote_mx;
pub mod resolver;
pub mod tls;
pub mod transaction;
pub mod txn_log;
