//! Redis Cluster: the pool's lanes, one set per master, and every command
//! routed to the master of its key's slot.
//!
//! The `redis` crate's own `ClusterConnection` routes a pipeline as a whole
//! by its first command and serves one caller at a time; the lanes' batching
//! of many workers' calls into one round trip is what makes the store fast
//! (see `pool`). So the crate speaks the protocol here (connections,
//! replies, MOVED and ASK errors) and this module routes: each command's
//! slot (CRC16 of its key's hash tag, as the cluster specification defines
//! it), the slot map read with `CLUSTER SLOTS`, commands split per master
//! and sent to all of them at once, redirections followed, and the map read
//! again after a `MOVED` or a failed master.
//!
//! The store keeps each call inside one slot (its keys share a hash tag,
//! docs/redis.md), so a pipeline's commands need no order across masters,
//! except around a command without a key (`PUBLISH`): that one runs after
//! everything before it has been answered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::{Client, Connection, ConnectionLike, RedisResult, ServerErrorKind, Value};

use super::pool::{closed, closed_owned, connect, resp3, wait_for, Lanes, Shared, Source};
use crate::store::{Result, StoreError};

/// Hash slots in a Redis Cluster.
pub const SLOTS: usize = 16384;
/// The URL scheme that names a cluster by some of its nodes.
pub const SCHEME: &str = "redis+cluster://";
/// Redirections (MOVED, ASK) followed for one command before giving up:
/// more means the cluster is reconfiguring faster than we can follow.
const MAX_REDIRECTS: usize = 5;
/// Least time between two reads of the slot map caused by failures.
const REFRESH_EVERY: Duration = Duration::from_millis(100);
/// A slot no known master serves.
const UNSERVED: u16 = u16::MAX;

/// The nodes `url` names if it is a cluster URL
/// (`redis+cluster://HOST:PORT,HOST:PORT`), else `None`.
pub fn seeds(url: &str) -> Option<Result<Vec<String>>> {
    let rest = url.strip_prefix(SCHEME)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let seeds: Vec<String> = rest
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let bad = seeds.is_empty() || seeds.iter().any(|s| s.contains(['/', '@', '?']));
    Some(if bad {
        Err(StoreError::Unavailable(format!(
            "bad Redis Cluster URL {url:?}: expected {SCHEME}HOST:PORT[,HOST:PORT...]"
        )))
    } else {
        Ok(seeds)
    })
}

/// The hash slot of `key`: CRC16 of its hash tag (the part between the
/// first `{` and the next `}`, if not empty), or of the whole key.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let len = key[open + 1..].iter().position(|&b| b == b'}')?;
            (len > 0).then(|| &key[open + 1..open + 1 + len])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS as u16
}

/// Which masters know which slots.
struct Map {
    /// Per slot, its master's index in `nodes` (`UNSERVED`: none).
    slots: Vec<u16>,
    /// Every node ever seen as a master, with its lanes; a node that is no
    /// longer one keeps its (idle) lanes, so a map never waits for lane
    /// threads to end.
    nodes: Vec<(String, Arc<Lanes>)>,
}

pub struct Cluster {
    map: RwLock<Arc<Map>>,
    seeds: Vec<String>,
    lanes: usize,
    timeout: Duration,
    shared: Shared,
    /// A master failed or redirected: read the map again before routing.
    stale: AtomicBool,
    /// When the map was last read; one refresh at a time.
    refreshed: Mutex<Instant>,
}

impl Cluster {
    /// Reads the slot map from the first of `seeds` that answers and starts
    /// `lanes` lanes to each master.
    pub fn connect(
        seeds: Vec<String>,
        lanes: usize,
        timeout: Duration,
        shared: &Shared,
    ) -> Result<Cluster> {
        let cluster = Cluster {
            map: RwLock::new(Arc::new(Map {
                slots: vec![UNSERVED; SLOTS],
                nodes: Vec::new(),
            })),
            seeds,
            lanes,
            timeout,
            shared: shared.clone(),
            stale: AtomicBool::new(false),
            refreshed: Mutex::new(Instant::now()),
        };
        cluster
            .refresh()
            .map_err(|e| StoreError::Unavailable(format!("reading the cluster's slots: {e}")))?;
        Ok(cluster)
    }

    /// A `ConnectionLike` for one API call's commands.
    pub fn handle(&self, wait: Duration) -> ClusterHandle<'_> {
        ClusterHandle {
            cluster: self,
            last: None,
            wait,
        }
    }

    /// A new RESP3 connection to the master of `channel`'s slot
    /// (SSUBSCRIBE), with the slot map read first.
    pub fn connect_for(&self, channel: &[u8]) -> RedisResult<Connection> {
        self.refresh()?;
        let (addr, _) = self.master(slot(channel))?;
        connect(&resp3(&client(&addr)?), self.timeout)
    }

    /// Redis came back: read the map again before the next call.
    pub fn reconnected(&self) {
        self.stale.store(true, Ordering::Release);
    }

    fn current(&self) -> Arc<Map> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The master of `slot`, its map read again first if it went stale.
    fn master(&self, slot: u16) -> RedisResult<(String, Arc<Lanes>)> {
        if self.stale.load(Ordering::Acquire) {
            self.refresh_soon();
        }
        let map = self.current();
        let i = map.slots[usize::from(slot)];
        map.nodes
            .get(usize::from(i))
            .cloned()
            .ok_or_else(|| closed("no master serves this slot"))
    }

    /// The lanes to the node at `addr` (an ASK redirection's target).
    fn node_at(&self, addr: &str) -> RedisResult<Arc<Lanes>> {
        if let Some((_, lanes)) = self.current().nodes.iter().find(|(a, _)| a == addr) {
            return Ok(lanes.clone());
        }
        self.refresh()?;
        self.current()
            .nodes
            .iter()
            .find(|(a, _)| a == addr)
            .map(|(_, l)| l.clone())
            .ok_or_else(|| closed("redirected to a node the cluster does not list"))
    }

    /// Every master (a `SCRIPT LOAD` goes to each).
    fn masters(&self) -> Vec<Arc<Lanes>> {
        let map = self.current();
        let mut served: Vec<u16> = map
            .slots
            .iter()
            .copied()
            .filter(|&i| i != UNSERVED)
            .collect();
        served.sort_unstable();
        served.dedup();
        served
            .into_iter()
            .map(|i| map.nodes[usize::from(i)].1.clone())
            .collect()
    }

    /// Reads the map again unless that was done within [`REFRESH_EVERY`]
    /// (failing masters would otherwise have every call ask); a failure
    /// leaves it stale, for the next call to try.
    fn refresh_soon(&self) {
        // One lock for the test and the read: the workers that found the
        // map stale together wait for one read, then use it.
        let mut last = self.refreshed.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= REFRESH_EVERY {
            let _ = self.refresh_locked(&mut last);
        }
    }

    /// Reads `CLUSTER SLOTS` from the first node that answers (the known
    /// masters, then the seeds) and puts the new map in place.
    fn refresh(&self) -> RedisResult<()> {
        let mut last = self.refreshed.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh_locked(&mut last)
    }

    /// [`Cluster::refresh`], its lock held: `last` is when it last ran.
    fn refresh_locked(&self, last: &mut Instant) -> RedisResult<()> {
        self.stale.store(false, Ordering::Release);
        *last = Instant::now();
        let old = self.current();
        let mut candidates: Vec<&str> = old.nodes.iter().map(|(a, _)| a.as_str()).collect();
        candidates.extend(self.seeds.iter().map(String::as_str));
        let mut error = closed("no cluster node to ask");
        for addr in candidates {
            match self.read_slots(addr) {
                Ok(ranges) => {
                    let map = self.build(&old, &ranges)?;
                    *self.map.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
                    return Ok(());
                }
                Err(e) => error = e,
            }
        }
        self.stale.store(true, Ordering::Release);
        Err(error)
    }

    /// `CLUSTER SLOTS` as asked of `addr`: (first slot, last slot, master).
    fn read_slots(&self, addr: &str) -> RedisResult<Vec<(u16, u16, String)>> {
        let mut con = connect(&client(addr)?, self.timeout)?;
        let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con)?;
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        parse_slots(reply, host)
    }

    /// The map for `ranges`, keeping the lanes of nodes `old` knew.
    fn build(&self, old: &Map, ranges: &[(u16, u16, String)]) -> RedisResult<Map> {
        let mut map = Map {
            slots: vec![UNSERVED; SLOTS],
            nodes: old.nodes.clone(),
        };
        for (first, last, addr) in ranges {
            let i = match map.nodes.iter().position(|(a, _)| a == addr) {
                Some(i) => i,
                None => {
                    let lanes = Lanes::start(
                        &Source::Fixed(client(addr)?),
                        self.lanes,
                        self.timeout,
                        &self.shared,
                    )
                    .map_err(|e| closed_owned(e.to_string()))?;
                    map.nodes.push((addr.clone(), Arc::new(lanes)));
                    map.nodes.len() - 1
                }
            };
            let i = u16::try_from(i).map_err(|_| closed("too many cluster nodes"))?;
            for s in *first..=*last {
                if let Some(slot) = map.slots.get_mut(usize::from(s)) {
                    *slot = i;
                }
            }
        }
        Ok(map)
    }
}

/// A client for the node at `addr` (`HOST:PORT`).
fn client(addr: &str) -> RedisResult<Client> {
    Client::open(format!("redis://{addr}/"))
}

/// `CLUSTER SLOTS`' reply as (first slot, last slot, master `HOST:PORT`);
/// a master listed without a host is on `host`, the node that answered.
fn parse_slots(reply: Value, host: &str) -> RedisResult<Vec<(u16, u16, String)>> {
    let bad = || closed("a CLUSTER SLOTS reply of an unknown shape");
    let Value::Array(ranges) = reply else {
        return Err(bad());
    };
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(range) = range else {
            return Err(bad());
        };
        let [Value::Int(first), Value::Int(last), Value::Array(master), ..] = range.as_slice()
        else {
            return Err(bad());
        };
        let (ip, port) = match master.as_slice() {
            [ip, Value::Int(port), ..] => (ip, *port),
            _ => return Err(bad()),
        };
        let ip = match ip {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::SimpleString(s) => s.clone(),
            _ => return Err(bad()),
        };
        let ip = if ip.is_empty() || ip == "?" {
            host.to_owned()
        } else {
            ip
        };
        let (Ok(first), Ok(last)) = (u16::try_from(*first), u16::try_from(*last)) else {
            return Err(bad());
        };
        out.push((first, last, format!("{ip}:{port}")));
    }
    Ok(out)
}

/// Where one command goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// The master of this slot.
    Slot(u16),
    /// No key: the master the previous command went to (any master for
    /// the first), once everything before it is answered.
    Any,
    /// Every master (`SCRIPT LOAD`); the first master's reply is the
    /// answer, and any error is.
    All,
}

/// One packed command: its bytes and where it goes.
#[derive(Debug)]
struct Packed<'a> {
    bytes: &'a [u8],
    route: Route,
}

/// Splits the packed commands of a pipeline (RESP arrays of bulk strings,
/// as `redis::Cmd` writes them) and routes each.
fn split(mut bytes: &[u8]) -> RedisResult<Vec<Packed<'_>>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let whole = bytes;
        let count = header(&mut bytes, b'*')?;
        let mut args: [&[u8]; 4] = [b""; 4];
        for i in 0..count {
            let len = header(&mut bytes, b'$')?;
            if bytes.len() < len + 2 || &bytes[len..len + 2] != b"\r\n" {
                return Err(closed("a malformed packed command"));
            }
            if let Some(arg) = args.get_mut(i) {
                *arg = &bytes[..len];
            }
            bytes = &bytes[len + 2..];
        }
        let used = whole.len() - bytes.len();
        out.push(Packed {
            bytes: &whole[..used],
            route: route(&args[..count.min(4)]),
        });
    }
    Ok(out)
}

/// Reads `<kind><number>\r\n` off the front of `bytes`.
fn header(bytes: &mut &[u8], kind: u8) -> RedisResult<usize> {
    let bad = || closed("a malformed packed command");
    let end = bytes
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or_else(bad)?;
    if bytes.first() != Some(&kind) {
        return Err(bad());
    }
    let n = std::str::from_utf8(&bytes[1..end])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    *bytes = &bytes[end + 2..];
    Ok(n)
}

/// Where a command with these first arguments goes: the commands the
/// store sends take their key first, but for scripts (`EVALSHA sha
/// numkeys key...`) and the commands without a key.
fn route(args: &[&[u8]]) -> Route {
    let name = args
        .first()
        .map(|n| n.to_ascii_uppercase())
        .unwrap_or_default();
    match name.as_slice() {
        b"EVAL" | b"EVALSHA" => match (args.get(2), args.get(3)) {
            (Some(n), Some(key)) if *n != b"0" => Route::Slot(slot(key)),
            _ => Route::Any,
        },
        b"SCRIPT" | b"FLUSHALL" => Route::All,
        b"PING" | b"PUBLISH" | b"ASKING" | b"CLUSTER" | b"INFO" | b"WAIT" => Route::Any,
        _ => args.get(1).map_or(Route::Any, |key| Route::Slot(slot(key))),
    }
}

/// One API call's view of the cluster.
pub struct ClusterHandle<'a> {
    cluster: &'a Cluster,
    /// The master the previous command went to: where a command without a
    /// key follows it.
    last: Option<Arc<Lanes>>,
    wait: Duration,
}

impl ClusterHandle<'_> {
    /// Runs the packed commands, each on its slot's master, and answers
    /// their replies in order.
    fn run(&mut self, bytes: &[u8]) -> RedisResult<Vec<Value>> {
        let cmds = split(bytes)?;
        let mut replies: Vec<Option<Value>> = vec![None; cmds.len()];
        let mut start = 0;
        while start < cmds.len() {
            // A stage: the keyed commands up to the next one without a
            // key, or that one alone.
            let end = match cmds[start].route {
                Route::Slot(_) => {
                    start
                        + cmds[start..]
                            .iter()
                            .take_while(|c| matches!(c.route, Route::Slot(_)))
                            .count()
                }
                _ => start + 1,
            };
            let stage: Vec<usize> = (start..end).collect();
            self.stage(&cmds, &stage, &mut replies)?;
            start = end;
        }
        replies
            .into_iter()
            .map(|r| r.ok_or_else(|| closed("a command was not answered")))
            .collect()
    }

    /// Runs the commands `which` of `cmds` (one stage), following
    /// redirections, and fills in their replies.
    fn stage(
        &mut self,
        cmds: &[Packed<'_>],
        which: &[usize],
        replies: &mut [Option<Value>],
    ) -> RedisResult<()> {
        let mut todo: Vec<usize> = which.to_vec();
        for _ in 0..=MAX_REDIRECTS {
            // Group by master, in order.
            let mut groups: Vec<(Arc<Lanes>, Vec<usize>)> = Vec::new();
            for &i in &todo {
                let lanes = match cmds[i].route {
                    Route::Slot(s) => self.cluster.master(s)?.1,
                    Route::Any => match &self.last {
                        Some(l) => l.clone(),
                        None => self
                            .cluster
                            .masters()
                            .into_iter()
                            .next()
                            .ok_or_else(|| closed("the cluster has no master"))?,
                    },
                    Route::All => {
                        replies[i] = Some(self.everywhere(cmds[i].bytes)?);
                        continue;
                    }
                };
                match groups.iter_mut().find(|(l, _)| Arc::ptr_eq(l, &lanes)) {
                    Some((_, g)) => g.push(i),
                    None => groups.push((lanes, vec![i])),
                }
            }
            let mut asked = Vec::new();
            for (lanes, group) in &groups {
                if lanes.down() {
                    self.cluster.stale.store(true, Ordering::Release);
                    return Err(closed("a Redis Cluster master is down"));
                }
                let bytes: Vec<u8> = group.iter().flat_map(|&i| cmds[i].bytes).copied().collect();
                asked.push(lanes.submit(bytes, 0, group.len())?);
            }
            let mut redirected = Vec::new();
            for ((lanes, group), answer) in groups.iter().zip(&asked) {
                let got = wait_for(answer, self.wait).inspect_err(|_| {
                    self.cluster.stale.store(true, Ordering::Release);
                })?;
                self.last = Some(lanes.clone());
                for (&i, reply) in group.iter().zip(got) {
                    match redirect(&reply) {
                        Some(Redirect::Moved) => redirected.push(i),
                        Some(Redirect::Ask(addr)) => {
                            replies[i] = Some(self.ask(&addr, cmds[i].bytes)?);
                        }
                        None => replies[i] = Some(reply),
                    }
                }
            }
            if redirected.is_empty() {
                return Ok(());
            }
            self.cluster.refresh()?;
            todo = redirected;
        }
        Err(closed("too many cluster redirections"))
    }

    /// Sends `bytes` to the node at `addr` after `ASKING` (a slot being
    /// migrated there).
    fn ask(&self, addr: &str, bytes: &[u8]) -> RedisResult<Value> {
        let lanes = self.cluster.node_at(addr)?;
        let mut packed = redis::cmd("ASKING").get_packed_command();
        packed.extend_from_slice(bytes);
        let answer = lanes.submit(packed, 1, 1)?;
        wait_for(&answer, self.wait)?
            .pop()
            .ok_or_else(|| closed("no reply"))
    }

    /// Sends `bytes` to every master; the first one's reply, or the first
    /// error.
    fn everywhere(&self, bytes: &[u8]) -> RedisResult<Value> {
        let masters = self.cluster.masters();
        let asked: Vec<_> = masters
            .iter()
            .map(|l| l.submit(bytes.to_vec(), 0, 1))
            .collect::<RedisResult<_>>()?;
        let mut first = None;
        for answer in &asked {
            let reply = wait_for(answer, self.wait)?
                .pop()
                .ok_or_else(|| closed("no reply"))?;
            if let Value::ServerError(e) = &reply {
                return Err(e.clone().into());
            }
            first.get_or_insert(reply);
        }
        first.ok_or_else(|| closed("the cluster has no master"))
    }
}

enum Redirect {
    Moved,
    Ask(String),
}

/// Whether `reply` sends the command elsewhere.
fn redirect(reply: &Value) -> Option<Redirect> {
    let Value::ServerError(e) = reply else {
        return None;
    };
    match e.kind()? {
        ServerErrorKind::Moved => Some(Redirect::Moved),
        ServerErrorKind::Ask => {
            // "ASK <slot> <host>:<port>"
            let addr = e.details()?.split_whitespace().nth(1)?;
            Some(Redirect::Ask(addr.to_owned()))
        }
        _ => None,
    }
}

impl ConnectionLike for ClusterHandle<'_> {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        self.run(cmd)?.pop().ok_or_else(|| closed("no reply"))
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let mut replies = self.run(cmd)?;
        if replies.len() != offset + count {
            return Err(closed("a pipeline answered with the wrong count"));
        }
        Ok(replies.split_off(offset))
    }

    fn get_db(&self) -> i64 {
        0
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<String>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_the_specifications() {
        // Examples from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
        assert_eq!(
            slot(b"hs:{u:app:7}:inbox"),
            slot(b"hs:{u:app:7}"),
            "a user's keys share a slot"
        );
    }

    #[test]
    fn commands_are_split_and_routed() {
        let mut p = redis::pipe();
        p.cmd("HSET").arg("hs:{u:a:1}:at").arg("n").arg(1);
        p.cmd("EVALSHA")
            .arg("abc")
            .arg(2)
            .arg("hs:{u:a:2}")
            .arg("x");
        p.cmd("EVALSHA").arg("abc").arg(0).arg("x");
        p.cmd("PUBLISH").arg("ch").arg("m");
        p.cmd("SCRIPT").arg("LOAD").arg("return 1");
        p.cmd("ping");
        let packed = p.get_packed_pipeline();
        let cmds = split(&packed).expect("split");
        let routes: Vec<Route> = cmds.iter().map(|c| c.route).collect();
        assert_eq!(
            routes,
            [
                Route::Slot(slot(b"u:a:1")),
                Route::Slot(slot(b"u:a:2")),
                Route::Any,
                Route::Any,
                Route::All,
                Route::Any
            ]
        );
        let joined: Vec<u8> = cmds.iter().flat_map(|c| c.bytes).copied().collect();
        assert_eq!(joined, packed, "the parts are the whole, in order");
        assert!(split(b"*1\r\n$4\r\nPING\r").is_err());
        assert!(split(b"*2\r\n$3\r\nGET\r\n").is_err());
    }

    #[test]
    fn cluster_urls() {
        assert!(seeds("redis://127.0.0.1:6379/0").is_none());
        let s = seeds("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/")
            .expect("a cluster URL")
            .expect("valid");
        assert_eq!(s, ["127.0.0.1:7000", "127.0.0.1:7001"]);
        assert!(seeds("redis+cluster://").expect("a cluster URL").is_err());
        assert!(seeds("redis+cluster://h:1/0")
            .expect("a cluster URL")
            .is_err());
    }

    #[test]
    fn cluster_slots_replies_are_read() {
        let node = |ip: &str, port| {
            Value::Array(vec![
                Value::BulkString(ip.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node("", 7001)]),
        ]);
        let ranges = parse_slots(reply, "10.0.0.9").expect("parsed");
        assert_eq!(
            ranges,
            [
                (0, 5460, "127.0.0.1:7000".to_owned()),
                (5461, 16383, "10.0.0.9:7001".to_owned())
            ]
        );
        assert!(parse_slots(Value::Int(1), "h").is_err());
    }
}
