//! Online status across processes: each process tells the store which
//! users it has online, every `--presence-secs`, and `/online` asks the
//! router (this process) and the store (every other live process).
//!
//! On the embedded store there is one process, and the store has nobody to
//! tell: the router's answer is the whole answer. On Redis a process
//! replaces its set of online users each refresh; the set expires after
//! three refreshes, so a process killed with SIGKILL takes its users
//! offline within that, and a process that stops cleanly takes them
//! offline at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::router::AppKey;
use crate::router::Router;
use crate::store::{Store, Uid};

/// Routes renewed per refresh: one uid residue class of this many.
const ROUTE_SLICES: u64 = 10;

/// A published presence outlives this many refreshes: a late refresh is
/// not an outage.
const TTL_REFRESHES: u64 = 3;
/// How often the refresh thread looks whether it must stop.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// The refresh thread.
pub struct Presence {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    store: Arc<dyn Store>,
    node: String,
}

/// This process's presence id: random, so a restarted process never reads
/// its predecessor's set as another's.
pub fn node_id() -> String {
    let mut b = [0u8; 8];
    // Without randomness the pid still tells processes of one box apart.
    if getrandom::getrandom(&mut b).is_err() {
        return format!("p{}", std::process::id());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Presence {
    /// Publishes `router`'s online users to `store` every `every`.
    pub fn start(
        router: Arc<Router>,
        store: Arc<dyn Store>,
        node: String,
        every: Duration,
    ) -> std::io::Result<Presence> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, store, node) = (stop.clone(), store.clone(), node.clone());
            std::thread::Builder::new()
                .name("haoshuo-presence".into())
                .spawn(move || refresh_loop(&router, &*store, &node, every, &stop))?
        };
        Ok(Presence {
            stop,
            thread: Some(thread),
            store,
            node,
        })
    }

    /// Stops refreshing and takes this process's users offline.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = self.store.withdraw_presence(&self.node);
    }
}

fn refresh_loop(
    router: &Router,
    store: &dyn Store,
    node: &str,
    every: Duration,
    stop: &AtomicBool,
) {
    let ttl = every.as_secs().max(1) * TTL_REFRESHES;
    let mut tick: u64 = 0;
    while !stop.load(Ordering::Acquire) {
        // A store that cannot be reached now is tried again next time.
        let _ = refresh(router, store, node, ttl, tick % ROUTE_SLICES);
        tick += 1;
        let next = Instant::now() + every;
        while Instant::now() < next && !stop.load(Ordering::Acquire) {
            std::thread::sleep(STOP_CHECK.min(next.saturating_duration_since(Instant::now())));
        }
    }
}

/// How long a route holds when presence refreshes every `every`: the
/// refreshes renew each route within [`ROUTE_SLICES`] of them, and a
/// late refresh or two is no reason to lose a user's announcements.
pub fn route_ttl(every: Duration) -> Duration {
    every.max(Duration::from_secs(1)) * (ROUTE_SLICES * TTL_REFRESHES) as u32
}

/// Users handed to the store per call: what a refresh holds at once,
/// however many users are online (a refresh that first listed every user,
/// their appids and the members' strings held some 150 bytes per user at
/// once, every `--presence-secs`).
const PRESENCE_BATCH: usize = 1000;

/// Replaces this process's presence with the users the router has online,
/// and renews the routes of those whose uid is `class` modulo
/// [`ROUTE_SLICES`].
fn refresh(
    router: &Router,
    store: &dyn Store,
    node: &str,
    ttl: u64,
    class: u64,
) -> crate::store::Result<()> {
    store.presence_begin(node)?;
    let mut renew: Vec<Uid> = Vec::with_capacity(PRESENCE_BATCH);
    let added = each_online(router, |appid, uids| {
        store.presence_add(node, appid, uids)?;
        renew.clear();
        renew.extend(uids.iter().filter(|&&uid| uid % ROUTE_SLICES == class));
        store.renew_routes(appid, &renew)
    })?;
    store.presence_commit(node, added, ttl)
}

/// Hands `f` the users the router has online, at most [`PRESENCE_BATCH`]
/// at a time and one app per call, so nothing holds them all at once;
/// stops at the first error. Returns how many users it handed over.
pub fn each_online(
    router: &Router,
    mut f: impl FnMut(&str, &[Uid]) -> crate::store::Result<()>,
) -> crate::store::Result<usize> {
    let mut batch: Vec<(AppKey, Uid)> = Vec::with_capacity(PRESENCE_BATCH);
    let mut uids: Vec<Uid> = Vec::with_capacity(PRESENCE_BATCH);
    let mut added = 0;
    let mut failed = None;
    let mut send = |batch: &mut Vec<(AppKey, Uid)>| -> crate::store::Result<()> {
        batch.sort_unstable();
        for run in batch.chunk_by(|a, b| a.0 == b.0) {
            uids.clear();
            uids.extend(run.iter().map(|&(_, uid)| uid));
            f(&router.app_name(run[0].0), &uids)?;
        }
        added += batch.len();
        batch.clear();
        Ok(())
    };
    router.for_each_online(Instant::now(), |users| {
        for &u in users {
            if failed.is_some() {
                return;
            }
            batch.push(u);
            if batch.len() == PRESENCE_BATCH {
                failed = send(&mut batch).err();
            }
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    send(&mut batch)?;
    Ok(added)
}
