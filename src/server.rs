//! Wiring: builds the store, the reactors, the router and the worker pool,
//! runs them, and stops them in order on a signal.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Poll, Token, Waker};

use crate::api::{Api, Options as ApiOptions};
use crate::bus::CoreMsg;
use crate::config::{resolve, Config, FsyncPolicy};
use crate::memory::{TrimStats, Trimmer};
use crate::metrics::{Metered, Metrics};
use crate::net::listener;
use crate::net::mailbox::Mailbox;
use crate::net::reactor::{Listeners, Reactor, Settings};
use crate::presence::{self, Presence};
use crate::router::Router;
use crate::store::embedded::{EmbeddedStore, Fsync, Options};
use crate::store::redis::feed::Feed;
use crate::store::redis::{Options as RedisOptions, RedisStore};
use crate::store::Store;
use crate::worker;

/// The waker's token in every reactor's poll (see `net::reactor`).
const WAKER: Token = Token(1);

/// The store the configuration names.
struct Opened {
    store: Arc<dyn Store>,
    /// The same store, when it is Redis (its feed needs it).
    redis: Option<Arc<RedisStore>>,
    /// For the start line.
    name: String,
}

fn open_store(cfg: &Config, node: &str) -> Result<Opened, String> {
    if let Some(url) = &cfg.redis {
        let opts = RedisOptions {
            url: url.clone(),
            pool: cfg.redis_lanes(),
            timeout: Duration::from_millis(cfg.redis_timeout_ms),
            inbox_cap: cfg.inbox_cap,
            token_cache: Duration::from_secs(cfg.token_cache_secs),
            node: node.to_owned(),
            route_ttl: presence::route_ttl(Duration::from_secs(cfg.presence_secs)),
            wait_replicas: cfg.redis_wait_replicas,
        };
        let store =
            Arc::new(RedisStore::open(&opts).map_err(|e| format!("opening Redis at {url}: {e}"))?);
        return Ok(Opened {
            store: store.clone(),
            redis: Some(store),
            name: format!("redis:{url}"),
        });
    }
    let mut opts = Options::new(&cfg.data_dir);
    opts.inbox_cap = cfg.inbox_cap;
    opts.repair = cfg.repair;
    opts.fsync = match cfg.fsync {
        FsyncPolicy::Always => Fsync::Always,
        FsyncPolicy::Everysec => Fsync::EverySec,
    };
    let store = EmbeddedStore::open(opts)
        .map_err(|e| format!("opening the store in {}: {e}", cfg.data_dir.display()))?;
    Ok(Opened {
        store: Arc::new(store),
        redis: None,
        name: format!("embedded:{}", cfg.data_dir.display()),
    })
}

/// Shortest admin key accepted: a key is a password that never needs to be
/// typed, so anything short is a mistake (an empty one turned the check off).
const MIN_ADMIN_KEY: usize = 16;

/// The addresses the API and admin listeners take.
struct Addrs {
    public: Vec<SocketAddr>,
    admin: Vec<SocketAddr>,
}

fn resolve_addrs(cfg: &Config) -> Result<Addrs, String> {
    Ok(Addrs {
        public: resolve(&cfg.listen, "--listen")?,
        admin: match &cfg.admin_listen {
            Some(a) => resolve(a, "--admin-listen")?,
            None => Vec::new(),
        },
    })
}

/// Refuses to start with settings that would quietly be unsafe.
fn check_unsafe(cfg: &Config, addrs: &Addrs) -> Result<(), String> {
    if let Some(key) = &cfg.admin_key {
        if key.len() < MIN_ADMIN_KEY {
            return Err(format!(
                "--admin-key must be at least {MIN_ADMIN_KEY} bytes (it has {})",
                key.len()
            ));
        }
    }
    if let Some(a) = addrs.admin.iter().find(|a| !a.ip().is_loopback()) {
        if cfg.admin_key.is_none() {
            return Err(format!(
                "--admin-listen {a} is not a loopback address: set --admin-key too"
            ));
        }
    }
    if !cfg.reuseport {
        let all = addrs.public.iter().chain(&addrs.admin);
        for &addr in all.filter(|a| a.port() != 0) {
            listener::check_free(addr).map_err(|e| match e.kind() {
                std::io::ErrorKind::AddrInUse => format!(
                    "{addr} is already served by another process; pass --reuseport \
                     to share it on purpose (several nodes on one Redis). If nothing \
                     listens there, a connection holds it as its local port: pick a \
                     port outside net.ipv4.ip_local_port_range"
                ),
                _ => format!("binding {addr}: {e}"),
            })?;
        }
    }
    Ok(())
}

/// A running server.
pub struct Server {
    /// Where the API listens: each address `--listen` named.
    addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    /// The Redis announcement listener, with the Redis store.
    feed: Option<Feed>,
    /// The online-status refresh, with the Redis store.
    presence: Option<Presence>,
    /// Gives freed heap back, unless `--heap-trim-secs 0`.
    trimmer: Option<Trimmer>,
    store: Arc<dyn Store>,
    router: Arc<Router>,
    reactors: Vec<JoinHandle<io::Result<()>>>,
    workers: Vec<JoinHandle<()>>,
    store_name: String,
}

impl Server {
    /// Opens the store, binds the port and starts every thread.
    pub fn start(cfg: &Config) -> Result<Server, String> {
        let addrs = resolve_addrs(cfg)?;
        check_unsafe(cfg, &addrs)?;
        // This process's id among the nodes of one Redis: its presence set
        // and its announcement channel.
        let node = presence::node_id();
        let Opened {
            store,
            redis,
            name: store_name,
        } = open_store(cfg, &node)?;

        let threads = cfg.threads();
        let (jobs, job_rx) = worker::queue(cfg.job_queue);
        let trims = Arc::new(TrimStats::default());
        let mut metrics = Metrics::new(threads).with_trims(trims.clone());
        // The workers' side: a sender kept here would keep them running.
        let queued = job_rx.depth();
        metrics = metrics.with_queue(move || queued() as u64, cfg.job_queue);
        if let Some(r) = &redis {
            let r = r.clone();
            metrics = metrics.with_redis(move || r.reconnects());
        }
        let metrics = Arc::new(metrics);
        // Every store call is timed, the presence thread's too (the Redis
        // feed's own reads are not: they are not API calls).
        let store: Arc<dyn Store> = Arc::new(Metered::new(store, metrics.clone()));
        let mut polls = Vec::with_capacity(threads);
        let mut mailboxes = Vec::with_capacity(threads);
        let mut inboxes = Vec::with_capacity(threads);
        for _ in 0..threads {
            let poll = Poll::new().map_err(|e| format!("creating a poller: {e}"))?;
            let waker = Waker::new(poll.registry(), WAKER).map_err(|e| e.to_string())?;
            let (mailbox, inbox) = Mailbox::with_capacity(waker, cfg.mailbox_capacity);
            polls.push(poll);
            mailboxes.push(mailbox);
            inboxes.push(inbox);
        }
        let router = Arc::new(
            Router::new(mailboxes.clone(), cfg.max_subs_per_user, cfg.max_conns)
                .with_poll_grace(std::time::Duration::from_secs(u64::from(cfg.heartbeat))),
        );
        let api = Arc::new(
            Api::new(
                store.clone(),
                router.clone(),
                ApiOptions {
                    page_size: cfg.page_size as usize,
                    page_bytes: cfg.page_bytes as usize,
                    token_ttl: cfg.token_ttl,
                    admin_key: cfg.admin_key.clone(),
                    cmsgid_window: cfg.cmsgid_window,
                    hash_concurrency: cfg.hash_concurrency(),
                    auth_per_ip: cfg.auth_per_ip,
                    login_per_user: cfg.login_per_user,
                    send_rate: cfg.send_rate,
                    max_group_members: cfg.max_group_members as usize,
                    max_groups_per_user: cfg.max_groups_per_user as usize,
                    max_tokens_per_user: cfg.max_tokens_per_user as usize,
                    allow_origin: cfg.allow_origin.clone(),
                    demo: cfg.demo,
                    node: node.clone(),
                    trust_proxy: cfg.trust_proxy.clone(),
                },
            )
            .with_metrics(metrics.clone()),
        );
        let feed = match &redis {
            Some(r) => Some(Feed::start(r, router.clone())?),
            None => None,
        };
        let presence = match &redis {
            Some(_) => Some(
                Presence::start(
                    router.clone(),
                    store.clone(),
                    node.clone(),
                    Duration::from_secs(cfg.presence_secs),
                )
                .map_err(|e| format!("starting the presence thread: {e}"))?,
            ),
            None => None,
        };
        let trimmer = match cfg.heap_trim_secs {
            0 => None,
            secs => Some(
                Trimmer::start(Duration::from_secs(secs), trims)
                    .map_err(|e| format!("starting the heap trimmer: {e}"))?,
            ),
        };
        let batching = worker::Batching::for_store(redis.is_some());
        let work = worker::Work {
            jobs: jobs.clone(),
            // Which calls run on the reactors, `Api::runs_inline` says.
            inline: Some(api.clone()),
        };
        let workers = worker::spawn(cfg.workers(), api, job_rx, batching);

        // The first listener fixes the port (port 0 picks one); the others
        // bind the same one, on every address.
        let mut public = addrs.public;
        let mut reactors = Vec::with_capacity(threads);
        // The admin listener is small traffic: the first reactor serves it
        // (on the first address its name resolves to).
        let mut admin = match addrs.admin.first() {
            Some(&a) => Some(listener::bind(a).map_err(|e| format!("binding {a}: {e}"))?),
            None => None,
        };
        let admin_addr = match &admin {
            Some(l) => Some(l.local_addr().map_err(|e| e.to_string())?),
            None => None,
        };
        for (core, ((poll, mailbox), inbox)) in
            polls.into_iter().zip(mailboxes).zip(inboxes).enumerate()
        {
            let mut listeners = Vec::with_capacity(public.len());
            for i in 0..public.len() {
                let addr = public[i];
                let l = listener::bind(addr).map_err(|e| format!("binding {addr}: {e}"))?;
                public[i] = l.local_addr().map_err(|e| e.to_string())?;
                if addr.port() == 0 {
                    // Port 0 picked one: every other address takes it too.
                    let port = public[i].port();
                    public.iter_mut().for_each(|a| a.set_port(port));
                }
                listeners.push(l);
            }
            let set = Settings {
                core: core as u16,
                max_conns: cfg.max_conns.div_ceil(threads),
                max_body: cfg.max_body,
                heartbeat: cfg.heartbeat,
                poll_timeout: cfg.poll_timeout,
                send_timeout: cfg.send_timeout,
                request_timeout: cfg.request_timeout,
                keepalive_timeout: cfg.keepalive_timeout,
                linger_timeout: cfg.linger_timeout,
                jobs_per_wake: batching.jobs_per_wake,
                yield_after: cfg.yield_after_us.0,
                slow_turn: cfg.slow_turn_ms.0,
            };
            let listeners = Listeners {
                public: listeners,
                admin: admin.take(),
            };
            let reactor = Reactor::new(
                set,
                poll,
                listeners,
                inbox,
                mailbox,
                router.clone(),
                work.clone(),
                metrics.clone(),
            )
            .map_err(|e| format!("starting reactor {core}: {e}"))?;
            let handle = std::thread::Builder::new()
                .name(format!("haoshuo-core-{core}"))
                .spawn(move || {
                    let ran = reactor.run();
                    if let Err(e) = &ran {
                        error!("reactor {core} failed: {e}");
                    }
                    ran
                })
                .map_err(|e| e.to_string())?;
            reactors.push(handle);
        }
        Ok(Server {
            addrs: public,
            admin_addr,
            feed,
            presence,
            trimmer,
            store,
            router,
            reactors,
            workers,
            store_name,
        })
    }

    /// The first address the API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every address the API listens on.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Where the admin listener listens, if it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn store_name(&self) -> &str {
        &self.store_name
    }

    /// Stops accepting, ends streams cleanly, lets the workers finish what
    /// they hold, and makes the store durable.
    pub fn stop(self) -> Result<(), String> {
        for core in 0..self.router.cores() {
            self.router.mailbox(core as u16).send(CoreMsg::Shutdown);
        }
        for r in self.reactors {
            match r.join() {
                Ok(Ok(())) => {}
                // Logged by its thread as it failed.
                Ok(Err(_)) => {}
                Err(_) => error!("a reactor panicked"),
            }
        }
        // Every job sender lived in a reactor: the workers drain and exit.
        for w in self.workers {
            let _ = w.join();
        }
        if let Some(presence) = self.presence {
            presence.stop();
        }
        if let Some(feed) = self.feed {
            feed.stop();
        }
        drop(self.trimmer);
        self.store
            .flush()
            .map_err(|e| format!("flushing the store: {e}"))
    }
}
