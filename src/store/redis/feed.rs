//! The live feed: one thread per server process subscribed to its own
//! announcement channel (`hs:deliver:NODE`, by sharded pub/sub on a Redis
//! Cluster: appends to users this process
//! serves, see `keys::routes`), handing every announced append to the
//! router, and to the logout channel, dropping logged-out tokens from the
//! token cache and ending the subscriptions held with them. Between
//! messages it sweeps expired tokens out of the cache.
//!
//! Announcements come in the order Redis ran the appends, so per user in
//! msgid order. When the subscription breaks (Redis restarted, network) the
//! thread reconnects with backoff and then tells every reactor to catch its
//! subscribers up from the store: whatever was announced meanwhile is read
//! back, so a stream is never silently stuck.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::PushKind;

use crate::router::Router;
use crate::store::{NewMessage, Store};

use super::keys::{deliver_channel, parse_untoken, Announce, UNTOKEN_CHANNEL};
use super::RedisStore;
use crate::auth;

/// How often the blocked read wakes to check for shutdown.
const STOP_CHECK: Duration = Duration::from_millis(200);
/// Wait before reconnecting after the subscription broke.
const RECONNECT_WAIT: Duration = Duration::from_millis(200);

pub struct Feed {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Feed {
    /// Starts the thread and waits until it is subscribed, so nothing
    /// announced after the server started is missed.
    pub fn start(store: &Arc<RedisStore>, router: Arc<Router>) -> Result<Feed, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (store, flag) = (store.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("haoshuo-redis-feed".into())
            .spawn(move || run(&store, &router, &flag, Some(ready_tx)))
            .map_err(|e| e.to_string())?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Feed {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(format!("subscribing to the Redis announcements: {e}")),
            Err(_) => Err("the Redis feed thread died at start".into()),
        }
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Subscribes, listens until the subscription breaks, and again, until
/// stopped. The first failure to subscribe is reported through `ready`.
fn run(
    store: &RedisStore,
    router: &Router,
    stop: &AtomicBool,
    mut ready: Option<mpsc::Sender<Result<(), String>>>,
) {
    let channel = deliver_channel(store.node());
    while !stop.load(Ordering::Acquire) {
        let subscribed = subscribe(store, &channel);
        let mut con = match (subscribed, ready.take()) {
            (Err(e), Some(r)) => {
                let _ = r.send(Err(e.to_string()));
                return;
            }
            (Err(_), None) => {
                std::thread::sleep(RECONNECT_WAIT);
                continue;
            }
            (Ok(con), Some(r)) => {
                let _ = r.send(Ok(()));
                con
            }
            // Announcements were lost while the subscription was down; the
            // catch-up reads go through the pool, which need not wait out
            // its backoff now that Redis answers, and whose connections
            // most likely went down with ours: each lane makes a new one.
            // Logouts were lost too: forget every cached token. And
            // cached groups: a Redis that lost data may reuse a gid. A
            // Redis that lost data lost our routes as well: they are
            // written again before the catch-up reads, so an append after
            // them is announced and one before them is read.
            (Ok(con), None) => {
                store.pool().reconnected();
                store.tokens().clear();
                store.groups().clear();
                // If Redis fails again now, the next reconnect tries again.
                let _ = crate::presence::each_online(router, |appid, uids| {
                    store.renew_routes(appid, uids)
                });
                router.catch_up_everyone();
                con
            }
        };
        let mut swept = Instant::now();
        while !stop.load(Ordering::Acquire) {
            // This thread wakes at least every STOP_CHECK: it also rids
            // the token cache of tokens past their trust.
            if swept.elapsed() >= store.tokens().sweep_every() {
                swept = Instant::now();
                store.tokens().sweep(swept);
            }
            // RESP3: everything on a subscribed connection is a push, which
            // the crate never mistakes for a late reply after a timeout.
            match con.recv_response() {
                Ok(redis::Value::Push { kind, data }) => match (kind, data.as_slice()) {
                    (PushKind::Message | PushKind::SMessage, [from, payload]) => {
                        let (Some(from), Some(payload)) = (bytes(from), bytes(payload)) else {
                            continue;
                        };
                        if from == UNTOKEN_CHANNEL.as_bytes() {
                            untoken(store, router, payload);
                        } else {
                            deliver(router, payload);
                        }
                    }
                    // A cluster moved our channel's slot to another master.
                    (PushKind::SUnsubscribe, _) => {
                        warn!("the Redis feed's channel moved to another master; resubscribing");
                        break;
                    }
                    _ => {}
                },
                Ok(_) => {}
                Err(e) if e.is_timeout() => {}
                Err(e) => {
                    warn!("the Redis feed lost its subscription ({e}); reconnecting");
                    break;
                }
            }
        }
    }
}

/// A connection subscribed to this node's announcements and to logouts:
/// on a Redis Cluster, to the master of the channel's slot with SSUBSCRIBE
/// (sharded pub/sub: an announcement goes only to that master, not to
/// every node of the cluster); logouts, rare, by plain pub/sub, which a
/// cluster hands to every node.
fn subscribe(store: &RedisStore, channel: &str) -> redis::RedisResult<redis::Connection> {
    let mut con = store.pool().connect_for(channel)?;
    let kind = if store.pool().is_cluster() {
        "SSUBSCRIBE"
    } else {
        "SUBSCRIBE"
    };
    let mut packed = redis::cmd(kind).arg(channel).get_packed_command();
    packed.extend(
        redis::cmd("SUBSCRIBE")
            .arg(UNTOKEN_CHANNEL)
            .get_packed_command(),
    );
    con.send_packed_command(&packed)?;
    for _ in 0..2 {
        match con.recv_response()? {
            redis::Value::Push {
                kind: PushKind::Subscribe | PushKind::SSubscribe,
                ..
            } => {}
            reply => {
                return Err(redis::RedisError::from(std::io::Error::other(format!(
                    "unexpected answer to {kind}: {reply:?}"
                ))))
            }
        }
    }
    con.set_read_timeout(Some(STOP_CHECK))?;
    Ok(con)
}

/// A bulk string's bytes.
fn bytes(v: &redis::Value) -> Option<&[u8]> {
    match v {
        redis::Value::BulkString(b) => Some(b),
        _ => None,
    }
}

/// A logout on some node: the token leaves the cache, and the
/// subscriptions held with it here end.
fn untoken(store: &RedisStore, router: &Router, payload: &[u8]) {
    let Some((owner, selector)) = parse_untoken(payload) else {
        return;
    };
    store.tokens().forget(&selector);
    if let Some((appid, uid)) = owner {
        router.revoke(router.app_key(&appid), uid, auth::selector_tag(&selector));
    }
}

fn deliver(router: &Router, payload: &[u8]) {
    // Only our own scripts publish here; anything else is ignored.
    let Ok(Announce(appid, stored, receivers)) = serde_json::from_slice(payload) else {
        return;
    };
    let msg = NewMessage {
        fromid: stored.f,
        toid: stored.t,
        datatype: stored.d,
        content: stored.c.as_ref().into(),
    };
    router.publish(router.app_key(&appid), &receivers, &msg);
}
