//! What the parser knows about Redis commands: names, which arguments are
//! keys, and which commands change the connection.
use std::sync::Arc;

use super::resp::{Leaf, Message};
use crate::protocols::kv::{printable_key, TextBuilder};

/// Commands whose second word names the operation (`CLIENT SETNAME`).
const CONTAINERS: &[&str] = &[
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "FUNCTION", "LATENCY", "MEMORY", "MODULE", "OBJECT", "PUBSUB",
    "SCRIPT", "SLOWLOG", "XGROUP", "XINFO",
];

/// Commands with no key among their arguments: with keys shown, all their
/// arguments stay `?` (AUTH's password, HELLO's credentials, PUBLISH's
/// message...).
const NO_KEYS: &[&str] = &[
    "AUTH",
    "HELLO",
    "PING",
    "ECHO",
    "SELECT",
    "QUIT",
    "RESET",
    "MULTI",
    "EXEC",
    "DISCARD",
    "UNWATCH",
    "INFO",
    "DBSIZE",
    "FLUSHDB",
    "FLUSHALL",
    "SAVE",
    "BGSAVE",
    "BGREWRITEAOF",
    "LASTSAVE",
    "SHUTDOWN",
    "TIME",
    "RANDOMKEY",
    "KEYS",
    "SCAN",
    "PUBLISH",
    "SPUBLISH",
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "SSUBSCRIBE",
    "UNSUBSCRIBE",
    "PUNSUBSCRIBE",
    "SUNSUBSCRIBE",
    "WAIT",
    "WAITAOF",
    "SWAPDB",
    "MIGRATE",
    "REPLICAOF",
    "SLAVEOF",
    "FAILOVER",
    "MONITOR",
    "SYNC",
    "PSYNC",
    "REPLCONF",
    "DEBUG",
    "LOLWUT",
    "ROLE",
    "READONLY",
    "READWRITE",
    "ASKING",
    "EVAL_RO",
    "SCRIPT",
];

/// Every argument is a key.
const ALL_KEYS: &[&str] = &[
    "MGET",
    "DEL",
    "UNLINK",
    "EXISTS",
    "TOUCH",
    "WATCH",
    "SINTER",
    "SUNION",
    "SDIFF",
    "PFCOUNT",
    "PFMERGE",
    "RENAME",
    "RENAMENX",
    "SDIFFSTORE",
    "SINTERSTORE",
    "SUNIONSTORE",
    "RPOPLPUSH",
    "COPY",
];

/// Every argument but the last (a timeout) is a key.
const BLOCKING_KEYS: &[&str] = &["BLPOP", "BRPOP", "BZPOPMIN", "BZPOPMAX", "BRPOPLPUSH"];

/// Commands that may wait for a long time by design: not given up on
/// when the connection idles.
const BLOCKING: &[&str] = &[
    "BLPOP",
    "BRPOP",
    "BZPOPMIN",
    "BZPOPMAX",
    "BRPOPLPUSH",
    "BLMOVE",
    "BLMPOP",
    "BZMPOP",
    "XREAD",
    "XREADGROUP",
    "WAIT",
    "WAITAOF",
    "CLIENT PAUSE",
];

/// Commands after which the connection only receives pushes (RESP2).
pub const SUBSCRIBE: &[&str] =
    &["SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"];

/// What a command's success changes on the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// `SELECT n`.
    Select(u32),
    /// `HELLO [protover]`: RESP3 from now on when 3.
    Hello(Option<u8>),
    /// `RESET`: database 0, RESP2, no subscriptions.
    Reset,
    /// May block for long by design.
    Blocking,
}

/// A command as the span shows it.
pub struct Command {
    pub operation: Arc<str>,
    pub text: Arc<str>,
    pub truncated: bool,
    pub effect: Effect,
    /// A (un)subscription: its replies are pushes.
    pub subscribe: bool,
}

fn word(leaf: &Leaf) -> Option<String> {
    let w = leaf.text()?;
    let ok = !w.is_empty()
        && w.len() <= 32
        && w[0].is_ascii_alphabetic()
        && w.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'|'));
    ok.then(|| String::from_utf8_lossy(w).to_ascii_uppercase())
}

fn number<T: std::str::FromStr>(leaf: Option<&Leaf>) -> Option<T> {
    std::str::from_utf8(leaf?.text()?).ok()?.parse().ok()
}

/// Which argument positions (after the operation's words) are keys.
fn is_key(op: &str, args: &[Leaf], count: usize, i: usize) -> bool {
    if CONTAINERS.contains(&op.split(' ').next().unwrap_or_default()) || NO_KEYS.contains(&op) {
        return false;
    }
    if ALL_KEYS.contains(&op) {
        return true;
    }
    if BLOCKING_KEYS.contains(&op) {
        return i + 1 < count;
    }
    match op {
        "MSET" | "MSETNX" => i.is_multiple_of(2),
        // script/sha, numkeys, keys...
        "EVAL" | "EVALSHA" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => {
            number::<usize>(args.get(1)).is_some_and(|n| i >= 2 && i < 2 + n)
        }
        "SMOVE" | "LMOVE" | "BLMOVE" => i < 2,
        _ => i == 0,
    }
}

/// Reads a request value as a command; None for what Redis ignores (an
/// empty array) or what is no command at all.
pub fn command(msg: &Message, keys: bool) -> Option<Command> {
    if !matches!(msg.kind, b'*' | b'i') || msg.count == 0 {
        return None;
    }
    let first = msg.leaves.first()?;
    let Some(name) = word(first) else {
        return Some(Command {
            operation: Arc::from("_OTHER"),
            text: Arc::from("_OTHER"),
            truncated: false,
            effect: Effect::None,
            subscribe: false,
        });
    };
    let mut words = 1;
    let mut operation = name;
    if CONTAINERS.contains(&operation.as_str()) {
        if let Some(sub) = msg.leaves.get(1).and_then(word) {
            operation = format!("{operation} {sub}");
            words = 2;
        }
    }
    let args = msg.leaves.get(words..).unwrap_or_default();
    let count = usize::try_from(msg.count).unwrap_or(usize::MAX).saturating_sub(words);
    let mut text = TextBuilder::new(&operation);
    for i in 0..count {
        let key = keys
            && is_key(&operation, args, count, i)
            && args.get(i).and_then(Leaf::text).and_then(printable_key).is_some();
        match args.get(i).and_then(Leaf::text).and_then(printable_key) {
            Some(k) if key => text.word(k),
            _ => text.word("?"),
        }
        if text.full() {
            break;
        }
    }
    let effect = match operation.as_str() {
        "SELECT" => number(args.first()).map_or(Effect::None, Effect::Select),
        "HELLO" => Effect::Hello(number(args.first())),
        "RESET" => Effect::Reset,
        op if BLOCKING.contains(&op) => Effect::Blocking,
        _ => Effect::None,
    };
    let subscribe = SUBSCRIBE.contains(&operation.as_str());
    let truncated = msg.cut || text.full();
    Some(Command { operation: Arc::from(operation), text: text.finish(), truncated, effect, subscribe })
}
