//! One MySQL command awaiting its response, and the walk through that
//! response packet by packet (OK, ERR, result sets, prepare answers, LOCAL
//! INFILE).
use super::packets::{
    le16, lenenc, ok_status, parse_err, terminator_status, MAX_PACKET, SERVER_MORE_RESULTS_EXISTS,
    SERVER_STATUS_CURSOR_EXISTS,
};
use crate::protocols::sql::{DbError, Request, SharedQuery, Timing};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum CmdKind {
    Query,
    Execute,
    Prepare,
    Fetch,
    InitDb(String),
    ChangeUser(Option<String>),
    FieldList,
    Simple,
    /// Unknown response shape: consumes server packets until the next command.
    Opaque,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Resp {
    Start,
    ColumnDefs(u64),
    AfterDefs,
    Rows,
    LocalInfile,
    /// Packets left in a prepare answer's parameter/column definitions.
    Skip(u64),
    /// Ignore everything until the next command.
    Drain,
}

#[derive(Debug)]
pub struct Command {
    pub(super) kind: CmdKind,
    pub(super) query: Option<SharedQuery>,
    pub(super) start: Timing,
    pub(super) next_seq: u8,
    pub(super) state: Resp,
    pub(super) rows: u64,
    pub(super) result_sets: u32,
    pub(super) affected: u64,
    pub(super) saw_ok: bool,
    pub(super) error: Option<DbError>,
}

pub(super) enum Step {
    More,
    Done,
}

impl Request for Command {
    fn gives_span(&self) -> bool {
        matches!(self.kind, CmdKind::Query | CmdKind::Execute)
    }

    fn waiting_since_before(&self, ns: u64) -> bool {
        self.start.enter_ns < ns && self.kind != CmdKind::Opaque && self.state != Resp::Drain
    }

    /// The classic protocol answers each command on its own.
    fn ends_batch(&self) -> bool {
        true
    }
}

impl Command {
    pub(super) fn advance(
        &mut self,
        body: &[u8],
        len: u32,
        deprecate_eof: Option<bool>,
        system: &str,
    ) -> Result<Step, &'static str> {
        let first = body.first().copied();
        if first == Some(0xff) && !matches!(self.state, Resp::ColumnDefs(_) | Resp::Skip(_)) {
            self.error = Some(parse_err(body, system));
            return Ok(Step::Done);
        }
        let is_terminator = first == Some(0xfe) && len < MAX_PACKET;
        match (&self.kind, self.state) {
            (CmdKind::Simple | CmdKind::InitDb(_), _) => Ok(Step::Done),
            (CmdKind::ChangeUser(_), _) => Ok(if first == Some(0x00) { Step::Done } else { Step::More }),
            (CmdKind::Opaque, _) | (_, Resp::Drain) => Ok(Step::More),
            (CmdKind::FieldList, _) => Ok(if is_terminator { Step::Done } else { Step::More }),
            (CmdKind::Prepare, Resp::Start) => {
                if first != Some(0x00) {
                    return Err("mysql: unexpected answer to COM_STMT_PREPARE");
                }
                // The caller records the statement id.
                let columns = u64::from(le16(body, 5).unwrap_or(0));
                let params = u64::from(le16(body, 7).unwrap_or(0));
                let eofs = |n: u64| u64::from(n > 0);
                let remaining = match deprecate_eof {
                    Some(true) => Some(columns + params),
                    Some(false) => Some(columns + params + eofs(columns) + eofs(params)),
                    None => None,
                };
                self.state = match remaining {
                    Some(0) => return Ok(Step::Done),
                    Some(n) => Resp::Skip(n),
                    None => Resp::Drain,
                };
                Ok(Step::More)
            }
            (_, Resp::Skip(n)) => {
                if n <= 1 {
                    Ok(Step::Done)
                } else {
                    self.state = Resp::Skip(n - 1);
                    Ok(Step::More)
                }
            }
            (_, Resp::Start) => match first {
                Some(0x00) => {
                    let (affected, status) = ok_status(body).unwrap_or((0, 0));
                    self.affected = self.affected.saturating_add(affected);
                    self.saw_ok = true;
                    Ok(if status & SERVER_MORE_RESULTS_EXISTS != 0 { Step::More } else { Step::Done })
                }
                Some(0xfb) if self.kind == CmdKind::Query => {
                    self.state = Resp::LocalInfile;
                    Ok(Step::More)
                }
                Some(0xfe) => {
                    Ok(if terminator_status(body) & SERVER_MORE_RESULTS_EXISTS != 0 { Step::More } else { Step::Done })
                }
                _ => {
                    let Some((count, used)) = lenenc(body, 0) else {
                        return Err("mysql: bad column count");
                    };
                    if count == 0 {
                        return Err("mysql: bad column count");
                    }
                    // A byte after the count: optional-metadata / MariaDB
                    // metadata-cache flag; 0 means no column definitions.
                    let metadata = body.get(used).is_none_or(|flag| *flag != 0);
                    self.result_sets += 1;
                    self.state = if metadata { Resp::ColumnDefs(count) } else { Resp::AfterDefs };
                    Ok(Step::More)
                }
            },
            (_, Resp::ColumnDefs(n)) => {
                self.state = if n <= 1 { Resp::AfterDefs } else { Resp::ColumnDefs(n - 1) };
                Ok(Step::More)
            }
            (_, Resp::AfterDefs) => {
                if is_terminator {
                    let intermediate = match deprecate_eof {
                        Some(deprecate) => !deprecate,
                        // An EOF is 5 bytes; an OK with 0xfe header at least 7.
                        None => body.len() <= 5 && len <= 5,
                    };
                    if intermediate {
                        if terminator_status(body) & SERVER_STATUS_CURSOR_EXISTS != 0 {
                            // Rows come later through COM_STMT_FETCH.
                            return Ok(Step::Done);
                        }
                        self.state = Resp::Rows;
                        return Ok(Step::More);
                    }
                    return Ok(self.end_of_rows(body));
                }
                self.rows += 1;
                self.state = Resp::Rows;
                Ok(Step::More)
            }
            (_, Resp::Rows) => {
                if is_terminator {
                    return Ok(self.end_of_rows(body));
                }
                self.rows += 1;
                Ok(Step::More)
            }
            (_, Resp::LocalInfile) => match first {
                Some(0x00) => {
                    self.affected = self.affected.saturating_add(ok_status(body).map_or(0, |(a, _)| a));
                    self.saw_ok = true;
                    Ok(Step::Done)
                }
                _ => Ok(Step::More),
            },
        }
    }

    fn end_of_rows(&mut self, body: &[u8]) -> Step {
        if terminator_status(body) & SERVER_MORE_RESULTS_EXISTS != 0 {
            self.state = Resp::Start;
            Step::More
        } else {
            Step::Done
        }
    }
}
