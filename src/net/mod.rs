//! The network layer: one mio reactor per core and what it is made of.
//!
//! `reactor` runs the event loop; `conn` is one connection's state and byte
//! queues; `mailbox` carries answers and live messages from other threads to
//! a reactor; `timer` is the coarse wheel behind every timeout; `listener`
//! binds the shared port. The HTTP protocol itself lives in `crate::http`.

pub mod conn;
pub mod listener;
pub mod mailbox;
pub mod reactor;
pub mod timer;
