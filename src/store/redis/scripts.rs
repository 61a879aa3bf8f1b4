//! The Lua scripts that make multi-step changes atomic inside Redis.
//! `redis::Script` sends them by SHA (EVALSHA) and loads them again when a
//! restarted Redis answers NOSCRIPT.

/// Appends one message to the inboxes of several users and announces it
/// to the nodes that serve them, atomically: no two messages get one msgid
/// in an inbox, none is skipped, and the announcement of N+1 is never
/// published before N's.
///
/// KEYS, per receiver: its user hash, its inbox (a list: see
/// `keys::inbox`; one in the old format is merged by the next page or ack,
/// see [`INBOX_FIND`]), its routes (the nodes
/// that have it subscribed, see `keys::routes`), and (with a `cmsgid`)
/// the send's `once` key in its slot: ARGV[6] keys each. ARGV[1] the
/// stored message JSON, ARGV[2] the announcement channels' prefix, ARGV[3]
/// the announcement up to its receivers (`[appid,message,`), ARGV[4]
/// seconds a `cmsgid` is remembered, ARGV[5] the inbox cap (0: none; over
/// it the oldest message goes), ARGV[6] keys per receiver (3 or 4), ARGV[7]
/// the time (unix seconds) routes are held to, ARGV[8..] the receivers'
/// uids. Returns, per receiver, its msgid, or -2 if it already got this
/// `cmsgid` (nothing written for it); if any receiver does not exist,
/// nothing at all is written and its entry is -1 (the others 0). Each node
/// that serves some of the receivers gets one announcement on its channel,
/// `[appid,message,[[uid,msgid],...]]`, naming its receivers; a node whose
/// route has run out is dropped from the routes, not announced to.
///
/// With ARGV[2] empty (a Redis Cluster) nothing is published: after the
/// receivers' entries the answer lists, per node, the node and its
/// receivers (`[uid,msgid],...`), and the caller announces them by sharded
/// pub/sub (a script may only touch its own slot's channels).
///
/// Every key of a call must live on one Redis node: a standalone Redis
/// takes any receivers; a Redis Cluster needs one call per slot.
pub const APPEND: &str = r#"
local per, cap, now = tonumber(ARGV[6]), tonumber(ARGV[5]), tonumber(ARGV[7])
local out, n = {}, #KEYS / per
local missing = false
for i = 1, n do
  if redis.call('EXISTS', KEYS[per * (i - 1) + 1]) == 0 then
    out[i] = -1
    missing = true
  else
    out[i] = 0
  end
end
if missing then return out end
local by, nodes = {}, {}
for i = 1, n do
  local base = per * (i - 1)
  local u, box, at = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
  local once = per == 4 and KEYS[base + 4]
  if once and not redis.call('SET', once, '1', 'NX', 'EX', ARGV[4]) then
    out[i] = -2
  else
    local id = redis.call('HINCRBY', u, 'seq', 1)
    local over = redis.call('RPUSH', box, id .. ':' .. ARGV[1]) - cap
    if cap > 0 and over > 0 then redis.call('LTRIM', box, over, -1) end
    out[i] = id
    local routes = redis.call('HGETALL', at)
    for j = 1, #routes, 2 do
      local node = routes[j]
      if tonumber(routes[j + 1]) >= now then
        local list = by[node]
        if not list then
          list = {}
          by[node] = list
          nodes[#nodes + 1] = node
        end
        list[#list + 1] = '[' .. ARGV[7 + i] .. ',' .. id .. ']'
      else
        redis.call('HDEL', at, node)
      end
    end
  end
end
for _, node in ipairs(nodes) do
  if ARGV[2] == '' then
    out[#out + 1] = node
    out[#out + 1] = table.concat(by[node], ',')
  else
    redis.call('PUBLISH', ARGV[2] .. node, ARGV[3] .. '[' .. table.concat(by[node], ',') .. ']]')
  end
end
return out
"#;

/// What the page and ack scripts share, before their own code: the
/// functions that read an inbox list (`keys::inbox`).
///
/// `merge_old(box, old)` merges an inbox of the old format (a sorted set,
/// `keys::old_inbox`) into the list, in msgid order, and deletes it: an
/// append writes to the list at once, so both may hold messages.
///
/// `find(box, from)` is the index in the list of the first message whose
/// msgid is `from` or more (its length if none), and that length. Msgids
/// follow on in a list, so the index is `from` less the first msgid, and
/// a look at it confirms it; after a lost write (see [`PAGE`]) they skip
/// ahead, and it is looked for from the start.
const INBOX_FIND: &str = r#"
local function id_of(m) return tonumber(string.match(m, '^%d+')) end
local function merge_old(box, old)
  if redis.call('EXISTS', old) == 0 then return end
  local a, b = redis.call('ZRANGE', old, 0, -1), redis.call('LRANGE', box, 0, -1)
  local all, i, j = {}, 1, 1
  while i <= #a or j <= #b do
    if j > #b or (i <= #a and id_of(a[i]) < id_of(b[j])) then
      all[#all + 1] = a[i]
      i = i + 1
    else
      all[#all + 1] = b[j]
      j = j + 1
    end
  end
  redis.call('DEL', box, old)
  for k = 1, #all, 1000 do
    redis.call('RPUSH', box, unpack(all, k, math.min(k + 999, #all)))
  end
end
local function find(box, from)
  local n = redis.call('LLEN', box)
  if n == 0 then return 0, 0 end
  local i = from - id_of(redis.call('LINDEX', box, 0))
  if i <= 0 then return 0, n end
  if i < n and id_of(redis.call('LINDEX', box, i)) == from then return i, n end
  if id_of(redis.call('LINDEX', box, -1)) < from then return n, n end
  for k, m in ipairs(redis.call('LRANGE', box, 0, -1)) do
    if id_of(m) >= from then return k - 1, n end
  end
  return n, n
end
"#;

/// Moves a user's ack position forward (never back, never past the last
/// msgid) and trims what it covers from the inbox.
///
/// KEYS[1] user hash, KEYS[2] inbox, KEYS[3] the inbox of the old format
/// (merged first: see [`INBOX_FIND`]). ARGV[1] endid.
/// Returns the ack position, or -1 if the user does not exist.
pub fn ack() -> String {
    format!("{INBOX_FIND}{ACK}")
}

const ACK: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
merge_old(KEYS[2], KEYS[3])
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local cur = tonumber(redis.call('HGET', KEYS[1], 'ack') or '0')
local e = math.min(tonumber(ARGV[1]), seq)
if e > cur then
  redis.call('HSET', KEYS[1], 'ack', e)
  local k = find(KEYS[2], e + 1)
  if k > 0 then redis.call('LTRIM', KEYS[2], k, -1) end
  return e
end
return cur
"#;

/// Reads one page of an inbox and its last msgid at one instant.
///
/// KEYS[1] user hash, KEYS[2] inbox, KEYS[3] the inbox of the old format
/// (merged first: see [`INBOX_FIND`]). ARGV[1] first msgid, ARGV[2] most
/// messages, ARGV[3] most bytes (each member counts its length; the first
/// is returned whatever its size). Returns `{last msgid, members}`, or -1
/// if the user does not exist. Cutting by bytes here keeps a page of large
/// messages from crossing the wire whole to be cut client-side.
///
/// The reader has received every msgid below ARGV[1]. A counter behind that
/// means Redis lost acknowledged writes (a failover to a lagging replica,
/// `appendfsync everysec`): the counter is raised to the reader's position
/// and the user's `epoch` counted up, in the same instant, and the answer
/// is `{last, members, epoch, last msgid found}`. Msgids in the inbox then
/// skip from the last found to past the reader's position.
pub fn page() -> String {
    format!("{INBOX_FIND}{PAGE}")
}

const PAGE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
merge_old(KEYS[2], KEYS[3])
local last = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local seen = tonumber(ARGV[1]) - 1
local epoch, found
if seen > last then
  redis.call('HSET', KEYS[1], 'seq', seen)
  epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
  found, last = last, seen
end
local i, n = find(KEYS[2], tonumber(ARGV[1]))
local stop, ms = math.min(i + tonumber(ARGV[2]), n) - 1, {}
if stop >= i then ms = redis.call('LRANGE', KEYS[2], i, stop) end
local cap, size, out = tonumber(ARGV[3]), 0, {}
for i, m in ipairs(ms) do
  size = size + #m
  if i > 1 and size > cap then break end
  out[i] = m
end
if epoch then return {last, out, epoch, found} end
return {last, out}
"#;

/// Records a new login token of a user and says which of its tokens go
/// beyond the quota, oldest first.
///
/// KEYS[1] user hash, KEYS[2] the user's token list (sorted set, score the
/// order tokens were made in). ARGV[1] selector, ARGV[2] its expiry (unix
/// seconds; the list lives as long as its newest token), ARGV[3] most
/// tokens kept (0: no limit). Returns the selectors dropped from the list,
/// or -1 if the user does not exist.
pub const TOKENS: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local n = redis.call('HINCRBY', KEYS[1], 'tokens', 1)
redis.call('ZADD', KEYS[2], n, ARGV[1])
redis.call('EXPIREAT', KEYS[2], ARGV[2])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if tonumber(ARGV[3]) == 0 or over <= 0 then return {} end
local old = redis.call('ZRANGE', KEYS[2], 0, over - 1)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
return old
"#;

/// Which of some users another live process has online: one round trip
/// for the whole list.
///
/// ARGV[1] now (unix seconds), ARGV[2] the asking process's id, ARGV[3]
/// the key of the live processes (`keys::NODES`), ARGV[4] and ARGV[5] what
/// a process's id goes between in its set's key (`keys::PRESENCE_PREFIX`,
/// `keys::PRESENCE_SUFFIX`), ARGV[6..] the users as presence members.
/// Returns 1 or 0 per user. Reads keys it is not given (every live
/// process's set): a standalone Redis only; a cluster asks each set in a
/// pipeline instead.
pub const ONLINE: &str = r#"
local nodes = redis.call('ZRANGEBYSCORE', ARGV[3], ARGV[1], '+inf')
local out = {}
for i = 6, #ARGV do out[i - 5] = 0 end
for _, node in ipairs(nodes) do
  if node ~= ARGV[2] then
    local hit = redis.call('SMISMEMBER', ARGV[4] .. node .. ARGV[5], unpack(ARGV, 6))
    for i, h in ipairs(hit) do
      if h == 1 then out[i] = 1 end
    end
  end
end
return out
"#;

/// Counts a group against its owner's quota.
///
/// KEYS[1] the owner's user hash. ARGV[1] most groups one user may create
/// (0: no limit). Returns the owner's count with this group, -1 if the
/// owner does not exist, -2 if the quota is reached (nothing counted).
pub const OWN_GROUP: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local n = tonumber(redis.call('HGET', KEYS[1], 'groups') or '0')
local cap = tonumber(ARGV[1])
if cap > 0 and n >= cap then return -2 end
return redis.call('HINCRBY', KEYS[1], 'groups', 1)
"#;

/// Claims a sender's `cmsgid` for one message, or says whom it names.
///
/// KEYS[1] the sender's `sent` key (in the sender's slot). ARGV[1] the
/// message's fingerprint, ARGV[2] seconds it is remembered. Returns 0 if
/// the cmsgid is new (now claimed), 1 if it names this same message (a
/// retry), 2 if it names another message. Time does not move inside a
/// script, so the key cannot expire between the SET and the GET.
pub const SENT: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 2
"#;
