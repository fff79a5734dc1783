//! The timer wheel that holds every waiting queue item. Being written.
