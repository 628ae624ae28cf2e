//! The cycle both cache parsers follow around their own framing: a command
//! written ends a reply hunt, a poisoned connection loses sync, and a parser
//! about to be replaced or closed drops what it holds.
use super::Exchanges;
use crate::{
    model::ParsedSpan,
    protocols::{Chunk, Feed},
};

/// What a cache parser supplies; [`KvParser::feed`], [`KvParser::close`]
/// and [`KvParser::idle`] are the shared halves of its `ProtocolParser`
/// methods.
pub trait KvParser {
    type Effect;
    fn exchanges(&mut self) -> &mut Exchanges<Self::Effect>;
    fn on_frontend(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed;
    fn on_backend(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>);
    /// The reply reader starts over at the next read (a hunt ended).
    fn resync_replies(&mut self);
    /// Drops what the parser holds beyond its exchanges.
    fn clear_own(&mut self) {}

    fn end_hunt(&mut self, out: &mut Vec<ParsedSpan>) {
        self.exchanges().end_hunt(out);
        self.resync_replies();
    }

    fn clear(&mut self) {
        self.exchanges().clear();
        self.clear_own();
    }

    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<ParsedSpan>) -> Feed {
        if let Some(reason) = self.exchanges().take_poison() {
            return Feed::LostSync(reason);
        }
        let conn = self.exchanges();
        let feed = if chunk.direction == conn.frontend {
            if conn.hunting {
                self.end_hunt(out);
            }
            self.on_frontend(chunk, out)
        } else {
            self.on_backend(chunk, out);
            Feed::Continue
        };
        let feed = match (feed, self.exchanges().take_poison()) {
            (Feed::Continue, Some(reason)) => Feed::LostSync(reason),
            (feed, _) => feed,
        };
        if feed != Feed::Continue {
            // The parser is about to be replaced: what it holds is lost.
            self.clear();
        }
        feed
    }

    fn close(&mut self, out: &mut Vec<ParsedSpan>) {
        if self.exchanges().hunting {
            self.end_hunt(out);
        }
        self.clear();
    }

    /// Ends a hunt whose replies stopped before `older_than_ns`; true when a
    /// command older than that is still unanswered and `may_wait` does not
    /// excuse it (the caller poisons the connection).
    fn idle(
        &mut self,
        older_than_ns: u64,
        out: &mut Vec<ParsedSpan>,
        may_wait: impl Fn(&Self::Effect) -> bool,
    ) -> bool {
        let conn = self.exchanges();
        if conn.hunting && conn.last_backend_exit < older_than_ns {
            self.end_hunt(out);
        }
        self.exchanges().pending.iter().any(|p| p.start.enter_ns < older_than_ns && !may_wait(&p.effect))
    }
}
