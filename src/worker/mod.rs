//! The worker pool: where API calls meet the store.
//!
//! Reactors never block on storage: they put a [`Job`] on one shared
//! bounded channel and go on. Each worker thread takes jobs, runs them
//! against the [`Api`], and sends the answer to the mailbox of the reactor
//! that owns the connection, which wakes it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::api::{Api, Request};
use crate::bus::{CoreMsg, Reply, Sub, SubKey};
use crate::http::response::error_response;

/// Jobs that may wait for a worker, by default (`--job-queue`). When the
/// queue is full, reactors answer 503 at once instead of queueing without
/// bound: past this many, a client would wait longer for its answer than
/// it would to retry.
pub const QUEUE_CAPACITY: usize = 64 * 1024;

pub enum Job {
    /// A complete request from a connection.
    Request { origin: SubKey, req: Request },
    /// A subscriber asks for the page of stored messages from `sub.next` on.
    Page { origin: SubKey, sub: Sub },
}

/// The job queue, holding at most `capacity` jobs.
pub fn queue(capacity: usize) -> (Sender<Job>, Receiver<Job>) {
    crossbeam_channel::bounded(capacity)
}

/// Starts `n` workers; they exit when every sender of `jobs` is dropped.
pub fn spawn(n: usize, api: Arc<Api>, jobs: Receiver<Job>) -> Vec<JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let api = api.clone();
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("haoshuo-worker-{i}"))
                .spawn(move || run(&api, &jobs))
                .expect("spawning a worker thread")
        })
        .collect()
}

fn run(api: &Api, jobs: &Receiver<Job>) {
    for job in jobs {
        let (origin, msg) = match job {
            Job::Request { origin, req } => {
                // A bug in one handler must not leave its client waiting
                // forever, nor take the worker down with it: answer 500.
                let reply = catch_unwind(AssertUnwindSafe(|| api.handle(origin, &req)))
                    .unwrap_or_else(|_| Reply::Http {
                        bytes: error_response(500, "internal error", false),
                        keep_alive: false,
                    });
                (
                    origin,
                    CoreMsg::Reply {
                        conn: origin.conn,
                        reply,
                    },
                )
            }
            Job::Page { origin, sub } => {
                let page = catch_unwind(AssertUnwindSafe(|| api.page(&sub))).unwrap_or(None);
                let conn = origin.conn;
                (origin, CoreMsg::Page { conn, page })
            }
        };
        api.router().mailbox(origin.core).send(msg);
    }
}
