//! The Redis connection state machine: commands in, replies matched in
//! order, spans out.
use waggle_common::Role;

use super::{
    commands::{command, Effect},
    resp::{parse_int, Framed, Message, RespReader},
};
use crate::{
    model::{AttrValue, Attribute, ParsedSpan, Protocol},
    protocols::{
        kv::{error, error_code, Exchanges, KvParser, Pending},
        sql::Outcome,
        Chunk, Feed, ParserConfig, ProtocolParser,
    },
};

/// `db.system.name`.
pub const SYSTEM: &str = "redis";

pub struct RedisParser {
    conn: Exchanges<Effect>,
    keys: bool,
    requests: RespReader,
    replies: RespReader,
    framed: Vec<Framed>,
    /// The server speaks RESP3 (a `HELLO 3` succeeded): pushes are typed.
    resp3: bool,
    /// RESP2 subscribed mode: every reply is a push until the last
    /// subscription ends.
    subscribed: bool,
}

impl RedisParser {
    pub fn new(role: Role, config: &ParserConfig) -> Self {
        let mut conn = Exchanges::new(role, SYSTEM);
        // A connection starts on database 0; SELECT moves it.
        conn.namespace = Some("0".to_owned());
        RedisParser {
            conn,
            keys: config.cache_keys,
            requests: RespReader::new(true),
            replies: RespReader::new(false),
            framed: Vec::new(),
            resp3: false,
            subscribed: false,
        }
    }

    fn on_request(&mut self, msg: Message) -> Result<(), Feed> {
        let Some(cmd) = command(&msg, self.keys) else {
            return Ok(());
        };
        if cmd.subscribe {
            // Their replies are pushes (RESP3) or the start of subscribed
            // mode (RESP2): no span, counted.
            self.conn.skip_one();
            if !self.resp3 {
                self.subscribed = true;
            }
            return Ok(());
        }
        if cmd.effect == Effect::Reset {
            self.subscribed = false;
        } else if self.subscribed {
            // PING and friends in RESP2 subscribed mode: answered by pushes.
            self.conn.skip_one();
            return Ok(());
        }
        self.conn.push(Pending {
            operation: cmd.operation,
            text: cmd.text,
            truncated: cmd.truncated,
            start: msg.start,
            effect: cmd.effect,
        })
    }

    fn on_reply(&mut self, msg: Message, out: &mut Vec<ParsedSpan>) {
        if msg.kind == b'>' {
            self.conn.skip_one();
            return;
        }
        let Some(p) = self.conn.pending.pop_front() else {
            if self.subscribed {
                self.conn.skip_one();
                self.end_of_subscriptions(&msg);
            } else {
                // A reply to nothing we saw (joined mid-stream).
                self.conn.drop_one();
            }
            return;
        };
        let failed = matches!(msg.kind, b'-' | b'!');
        let outcome = if failed {
            Outcome { error: Some(error(SYSTEM, error_code(&msg.head))), ..Outcome::default() }
        } else {
            Outcome::default()
        };
        let mut extra: Vec<Attribute> = Vec::new();
        if msg.kind == b'+' && msg.head == b"QUEUED" {
            // Inside MULTI: the command runs at EXEC, whose span covers it.
            extra.push(("waggle.db.redis.queued", AttrValue::Bool(true)));
        }
        self.conn.emit(&p, msg.end_ns, outcome, extra, out);
        if failed {
            return;
        }
        match p.effect {
            Effect::Select(db) => self.conn.namespace = Some(db.to_string()),
            Effect::Hello(Some(v)) => self.resp3 = v == 3,
            Effect::Reset => {
                self.conn.namespace = Some("0".to_owned());
                self.resp3 = false;
                self.subscribed = false;
            }
            Effect::Hello(None) | Effect::None | Effect::Blocking => {}
        }
    }

    /// A RESP2 `unsubscribe`/`punsubscribe`/`sunsubscribe` push whose count
    /// of remaining subscriptions is 0 ends subscribed mode.
    fn end_of_subscriptions(&mut self, msg: &Message) {
        let kind = msg.leaves.first().and_then(|l| l.text()).map(<[u8]>::to_ascii_lowercase);
        let remaining = msg.leaves.get(2).and_then(|l| l.text()).and_then(parse_int);
        if kind.is_some_and(|k| k.ends_with(b"unsubscribe")) && remaining == Some(0) {
            self.subscribed = false;
        }
    }

    fn frontend(&mut self, chunk: &Chunk<'_>) -> Feed {
        self.framed.clear();
        self.requests.push(chunk, &mut self.framed);
        let framed = std::mem::take(&mut self.framed);
        let mut feed = Feed::Continue;
        for f in framed {
            match f {
                Framed::Message(msg) => {
                    if let Err(stop) = self.on_request(msg) {
                        feed = stop;
                        break;
                    }
                }
                Framed::Lost(reason) => {
                    feed = Feed::LostSync(reason);
                    break;
                }
            }
        }
        feed
    }

    fn backend(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) {
        self.conn.last_backend_exit = chunk.exit_ns;
        if self.conn.hunting {
            return;
        }
        self.framed.clear();
        self.replies.push(chunk, &mut self.framed);
        let framed = std::mem::take(&mut self.framed);
        for f in framed {
            match f {
                Framed::Message(msg) => self.on_reply(msg, out),
                Framed::Lost(reason) => {
                    tracing::trace!(protocol = SYSTEM, reason, "reply framing lost; hunting for its end");
                    self.conn.hunting = true;
                    break;
                }
            }
        }
    }
}

impl KvParser for RedisParser {
    type Effect = Effect;
    fn exchanges(&mut self) -> &mut Exchanges<Effect> {
        &mut self.conn
    }
    fn on_frontend(&mut self, chunk: &Chunk<'_>, _out: &mut Vec<ParsedSpan>) -> Feed {
        self.frontend(chunk)
    }
    fn on_backend(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) {
        self.backend(chunk, out);
    }
    fn resync_replies(&mut self) {
        self.replies.resync();
    }
}

impl ProtocolParser for RedisParser {
    fn protocol(&self) -> Protocol {
        Protocol::Redis
    }

    fn on_data(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed {
        self.feed(chunk, out)
    }

    fn on_close(&mut self, _ts_ns: u64, out: &mut Vec<ParsedSpan>) {
        self.close(out);
    }

    fn on_idle(&mut self, older_than_ns: u64, out: &mut Vec<ParsedSpan>) {
        if self.idle(older_than_ns, out, |effect| *effect == Effect::Blocking) {
            // A reply that never came: later replies cannot be matched.
            self.conn.poison("Redis command unanswered");
        }
    }

    fn take_dropped(&mut self) -> u64 {
        self.conn.take_dropped()
    }

    fn take_skipped(&mut self) -> u64 {
        self.conn.take_skipped()
    }

    fn buffered_bytes(&self) -> usize {
        self.conn.buffered_bytes() + self.requests.buffered_bytes() + self.replies.buffered_bytes()
    }
}
