//! The Redis key layout (see docs/redis.md) and the encoding of stored
//! messages. Every key of one user (or group) carries the same hash tag, so a
//! script touching a user's keys stays in one Redis Cluster slot.
//!
//! Appids, usernames and `cmsgid`s come from clients, so every such part is
//! escaped ([`part`]): `:` separates parts and `{`/`}` delimit the hash tag,
//! and without escaping appid `a` + name `b:c` and appid `a:b` + name `c`
//! would share a key.

use serde::{Deserialize, Serialize};

use crate::store::{Gid, Message, MsgId, NewMessage, Uid};

/// The pub/sub channels on which appends are announced: one per node,
/// `hs:deliver:NODE` (see [`deliver_channel`]); an append is announced on
/// the channels of the nodes its receivers' [`routes`] name, so a node
/// hears only of its own users.
pub const DELIVER_PREFIX: &str = "hs:deliver:";

/// The announcement channel of node `node` (its presence id).
pub fn deliver_channel(node: &str) -> String {
    format!("{DELIVER_PREFIX}{node}")
}
/// The pub/sub channel on which logouts announce a token (see [`untoken`]),
/// so every node drops it from its token cache and ends the subscriptions
/// held with it.
pub const UNTOKEN_CHANNEL: &str = "hs:untoken";

/// A logout's announcement on [`UNTOKEN_CHANNEL`]: `[appid, uid, selector]`.
pub fn untoken(appid: &str, uid: Uid, selector: &str) -> String {
    serde_json::json!([appid, uid, selector]).to_string()
}

/// An announcement read back: `(appid, uid, selector)`. Servers before
/// subscriptions ended on logout announced the bare selector: `None`
/// owner then.
pub fn parse_untoken(payload: &[u8]) -> Option<(Option<(String, Uid)>, String)> {
    if let Ok((appid, uid, selector)) = serde_json::from_slice::<(String, Uid, String)>(payload) {
        return Some((Some((appid, uid)), selector));
    }
    let selector = std::str::from_utf8(payload).ok()?;
    Some((None, selector.to_owned()))
}

/// A client-given key part with `%`, `:`, `{` and `}` percent-escaped, so
/// parts never run into each other or out of the hash tag. Names without
/// those characters (nearly all) are their own key part, so keys written
/// before this escaping still match.
pub fn part(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.bytes().any(|b| matches!(b, b'%' | b':' | b'{' | b'}')) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out.into()
}

/// `hs:{a:APPID}:uids`: the last uid given out in an app (INCR).
pub fn uid_counter(appid: &str) -> String {
    format!("hs:{{a:{}}}:uids", part(appid))
}

/// `hs:{a:APPID}:gids`: the last gid given out in an app (INCR).
pub fn gid_counter(appid: &str) -> String {
    format!("hs:{{a:{}}}:gids", part(appid))
}

/// `hs:{n:APPID:USERNAME}`: string, the uid of a username.
pub fn username(appid: &str, name: &str) -> String {
    format!("hs:{{n:{}:{}}}", part(appid), part(name))
}

/// `hs:{u:APPID:UID}`: hash `name`, `pass`, `seq` (last msgid), `ack`,
/// and once they happen `epoch` (see `scripts::page`), `tokens` (tokens
/// made), `groups` (groups created).
pub fn user(appid: &str, uid: Uid) -> String {
    format!("hs:{{u:{}:{uid}}}", part(appid))
}

/// `hs:{u:APPID:UID}:box`: list, the un-acked messages in msgid order,
/// each `<msgid>:<message JSON>`. Appended at the tail (`RPUSH`: O(1), and
/// a few bytes a message beyond its own in a listpack), trimmed at the
/// head. Msgids follow on in it but may skip ahead after a
/// lost write (see `scripts::page`), so the scripts find a msgid by its
/// position and check it (see `scripts::INBOX_FIND`).
pub fn inbox(appid: &str, uid: Uid) -> String {
    format!("hs:{{u:{}:{uid}}}:box", part(appid))
}

/// `hs:{u:APPID:UID}:inbox`: the inbox as servers before the list kept
/// it, a sorted set (score msgid, the same members). The first page or
/// ack that finds it merges it into [`inbox`] and deletes it.
pub fn old_inbox(appid: &str, uid: Uid) -> String {
    format!("hs:{{u:{}:{uid}}}:inbox", part(appid))
}

/// `hs:{u:APPID:UID}:at`: hash, the nodes that have `uid` subscribed:
/// node id -> until when (unix seconds) the entry holds. A node writes it
/// before it reads a new subscription's first page, and renews it while
/// it keeps the user; the append script announces to the nodes whose
/// entries hold and deletes the others.
pub fn routes(appid: &str, uid: Uid) -> String {
    format!("hs:{{u:{}:{uid}}}:at", part(appid))
}

/// `hs:{u:APPID:UID}:tokens`: sorted set, the selectors of the user's
/// tokens, scored in the order they were made (the token quota).
pub fn tokens(appid: &str, uid: Uid) -> String {
    format!("hs:{{u:{}:{uid}}}:tokens", part(appid))
}

/// `hs:{u:APPID:UID}:once:FROMID:CMSGID`: string, set while a send with
/// that `cmsgid` is remembered for that receiver (expires by itself).
pub fn once(appid: &str, uid: Uid, fromid: Uid, cmsgid: &str) -> String {
    format!(
        "hs:{{u:{}:{uid}}}:once:{fromid}:{}",
        part(appid),
        part(cmsgid)
    )
}

/// `hs:{u:APPID:FROMID}:sent:CMSGID`: string, the fingerprint of the
/// message a sender's `cmsgid` names, while it is remembered.
pub fn sent(appid: &str, fromid: Uid, cmsgid: &str) -> String {
    format!("hs:{{u:{}:{fromid}}}:sent:{}", part(appid), part(cmsgid))
}

/// `hs:{g:APPID:GID}`: hash `owner`, `name`, `members` (comma-separated uids).
pub fn group(appid: &str, gid: Gid) -> String {
    format!("hs:{{g:{}:{gid}}}", part(appid))
}

/// `hs:nodes`: sorted set, each live process's presence id, scored by when
/// its presence expires (unix seconds).
pub const NODES: &str = "hs:nodes";

/// `hs:on:{NODE}`: set, the users process NODE has online, as
/// [`presence_member`]s; expires unless the process refreshes it. The hash
/// tag keeps it in one slot with the set a refresh fills
/// ([`presence_next`]), which replaces it by RENAME.
pub fn presence(node: &str) -> String {
    format!("{PRESENCE_PREFIX}{node}{PRESENCE_SUFFIX}")
}

/// What a presence set's key puts before and after its node's id.
pub const PRESENCE_PREFIX: &str = "hs:on:{";
pub const PRESENCE_SUFFIX: &str = "}";

/// `hs:on:{NODE}:next`: the set a presence refresh of NODE fills before
/// it replaces NODE's presence.
pub fn presence_next(node: &str) -> String {
    format!("{}:next", presence(node))
}

/// A user in a presence set: `APPID:UID` (APPID escaped as in every key).
pub fn presence_member(appid: &str, uid: Uid) -> String {
    format!("{}:{uid}", part(appid))
}

/// `hs:{t:SELECTOR}`: hash `v` (verifier), `a` (appid), `u` (uid), `e`
/// (expiry, unix seconds); expires itself at `e`.
pub fn token(selector: &str) -> String {
    format!("hs:{{t:{selector}}}")
}

/// A message as it sits in an inbox (without its msgid, which is its score).
#[derive(Serialize, Deserialize)]
pub struct Stored<'a> {
    pub f: Uid,
    pub t: u64,
    pub d: u8,
    #[serde(borrow)]
    pub c: std::borrow::Cow<'a, str>,
}

impl<'a> Stored<'a> {
    pub fn of(msg: &'a NewMessage) -> Stored<'a> {
        Stored {
            f: msg.fromid,
            t: msg.toid,
            d: msg.datatype,
            c: std::borrow::Cow::Borrowed(&msg.content),
        }
    }

    pub fn into_message(self, msgid: MsgId) -> Message {
        Message {
            msgid,
            fromid: self.f,
            toid: self.t,
            datatype: self.d,
            content: self.c.as_ref().into(),
        }
    }
}

/// Decodes an inbox member `<msgid>:<json>`.
pub fn decode_member(member: &[u8]) -> Option<Message> {
    let colon = member.iter().position(|&b| b == b':')?;
    let msgid = std::str::from_utf8(&member[..colon]).ok()?.parse().ok()?;
    let stored: Stored = serde_json::from_slice(&member[colon + 1..]).ok()?;
    Some(stored.into_message(msgid))
}

/// An announcement on [`DELIVER_CHANNEL`]: `[appid, message, [[uid,
/// msgid], ...]]`, one per append call, naming every receiver it reached.
/// The worker writes the part up to the receivers, the script the rest
/// (see `scripts::APPEND`).
#[derive(Deserialize)]
pub struct Announce<'a>(
    #[serde(borrow)] pub std::borrow::Cow<'a, str>,
    #[serde(borrow)] pub Stored<'a>,
    pub Vec<(Uid, MsgId)>,
);

/// The part of an announcement the appending worker writes.
pub fn announce_prefix(appid: &str, stored_json: &str) -> String {
    let appid = serde_json::to_string(appid).unwrap_or_default();
    format!("[{appid},{stored_json},")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn members_and_announcements_round_trip() {
        let msg = NewMessage {
            fromid: 1,
            toid: 7,
            datatype: 2,
            content: Arc::from("a:b \"c\" 好"),
        };
        let json = serde_json::to_string(&Stored::of(&msg)).unwrap();
        let m = decode_member(format!("42:{json}").as_bytes()).unwrap();
        assert_eq!((m.msgid, m.fromid, m.toid, m.datatype), (42, 1, 7, 2));
        assert_eq!(&*m.content, "a:b \"c\" 好");

        let wire = format!("{}[[9,42],[3,1]]]", announce_prefix("te\"st", &json));
        let Announce(appid, stored, got) = serde_json::from_str(&wire).unwrap();
        assert_eq!((&*appid, got), ("te\"st", vec![(9, 42), (3, 1)]));
        assert_eq!(stored.c, "a:b \"c\" 好");
        assert!(decode_member(b"nocolon").is_none());
        assert!(decode_member(b"x:{}").is_none());
    }

    #[test]
    fn logout_announcements_round_trip() {
        let wire = untoken("a:\"b", 7, "5e1ec7");
        assert_eq!(wire, r#"["a:\"b",7,"5e1ec7"]"#);
        assert_eq!(
            parse_untoken(wire.as_bytes()),
            Some((Some(("a:\"b".to_string(), 7)), "5e1ec7".to_string()))
        );
        // An older server announced the bare selector.
        assert_eq!(parse_untoken(b"5e1ec7"), Some((None, "5e1ec7".to_string())));
        assert_eq!(parse_untoken(b"\xff"), None);
    }

    #[test]
    fn client_parts_cannot_share_a_key_or_leave_the_hash_tag() {
        // (appid, username) pairs that naive joining maps to one key.
        assert_ne!(username("a", "b:c"), username("a:b", "c"));
        assert_ne!(username("a%3A", "b"), username("a:", "b"));
        assert_eq!(
            username("app", "alice"),
            "hs:{n:app:alice}",
            "plain names unchanged"
        );
        for key in [username("x}y", "{z"), user("a}b", 1), inbox("{", 2)] {
            let open = key.find('{').unwrap();
            let close = key.find('}').unwrap();
            assert_eq!(key[open + 1..].find('{'), None, "{key}");
            assert!(close == key.rfind('}').unwrap(), "one hash tag: {key}");
        }
        assert_ne!(once("a", 1, 2, "k:1"), once("a", 1, 2, "k%3A1"));
    }

    #[test]
    fn a_users_keys_share_one_hash_tag() {
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_string();
        assert_eq!(tag(&user("app", 5)), tag(&inbox("app", 5)));
        assert_ne!(tag(&user("app", 5)), tag(&user("app", 6)));
    }
}
