//! The actors: thin shells that own state and move messages between the plain types.

pub mod connection;
pub mod listener;
pub mod transaction;
