//! Event intake: decodes ring-buffer records written by the kernel programs.
//!
//! Records are borrowed, not copied: the pipeline handles each one while the
//! ring-buffer slot is still held, so a data event's payload is never
//! allocated unless a parser keeps some of it.
use std::mem::size_of;

use bytemuck::Pod;
use waggle_common::{
    exec_env::{flags as exec_flags, ExecEnvEvent, ExecEnvHeader},
    ConnEvent, DataCtxPrefix, DataEvent, EventKind, ProcessEvent, TraceCtxEvent, MAX_CAPTURE,
};

#[derive(Debug)]
pub enum RawEvent<'a> {
    Data {
        header: DataEvent,
        payload: &'a [u8],
    },
    ConnOpen(ConnEvent),
    ConnClose(ConnEvent),
    ConnUnverified(ConnEvent),
    ConnInherited(ConnEvent),
    ProcessFork(ProcessEvent),
    ProcessExit(ProcessEvent),
    ThreadStart(ProcessEvent),
    /// Trace selection is on and the process exec'ed (tgid only).
    ProcessExec(ProcessEvent),
    ServerCtx(TraceCtxEvent),
    ClientCtx(TraceCtxEvent),
    /// A data record that carries the context its syscall started: the
    /// same as that ServerCtx or ClientCtx record, then this Data record.
    DataCtx {
        started: Started,
        header: DataEvent,
        payload: &'a [u8],
    },
    /// A process exec'ed: the OTEL_* values the kernel found in its new
    /// environment (borrowed from the record).
    ExecEnv {
        header: ExecEnvHeader,
        service_name: Option<&'a [u8]>,
        resource_attributes: Option<&'a [u8]>,
    },
}

/// The context a DataCtx record's syscall started, as the separate record
/// would have carried it.
#[derive(Debug)]
pub enum Started {
    Server(TraceCtxEvent),
    Client(TraceCtxEvent),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty ring-buffer record")]
    Empty,
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
    #[error("{kind:?} record of {len} bytes is shorter than its header")]
    Short { kind: EventKind, len: usize },
    #[error("data record claims {claimed} payload bytes but carries {carried}")]
    BadPayloadLength { claimed: usize, carried: usize },
    #[error("data record says its syscall moved {total} bytes, less than the {captured} captured or more than a syscall can")]
    BadTotalLength { total: u64, captured: usize },
}

/// Copies the record's header out: the ring buffer aligns records to 8
/// bytes, not to T.
fn read_header<T: Pod>(bytes: &[u8], kind: EventKind) -> Result<T, DecodeError> {
    match bytes.get(..size_of::<T>()) {
        Some(head) => Ok(bytemuck::pod_read_unaligned(head)),
        None => Err(DecodeError::Short { kind, len: bytes.len() }),
    }
}

pub fn decode(bytes: &[u8]) -> Result<RawEvent<'_>, DecodeError> {
    let first = *bytes.first().ok_or(DecodeError::Empty)?;
    let kind = EventKind::from_u8(first).ok_or(DecodeError::UnknownKind(first))?;
    Ok(match kind {
        EventKind::Data => {
            let (header, payload) = decode_data(bytes)?;
            RawEvent::Data { header, payload }
        }
        EventKind::DataCtx => decode_data_ctx(bytes)?,
        EventKind::ConnOpen => RawEvent::ConnOpen(read_header(bytes, kind)?),
        EventKind::ConnClose => RawEvent::ConnClose(read_header(bytes, kind)?),
        EventKind::ConnUnverified => RawEvent::ConnUnverified(read_header(bytes, kind)?),
        EventKind::ConnInherited => RawEvent::ConnInherited(read_header(bytes, kind)?),
        EventKind::ProcessFork => RawEvent::ProcessFork(read_header(bytes, kind)?),
        EventKind::ProcessExit => RawEvent::ProcessExit(read_header(bytes, kind)?),
        EventKind::ThreadStart => RawEvent::ThreadStart(read_header(bytes, kind)?),
        EventKind::ServerCtx => RawEvent::ServerCtx(read_header(bytes, kind)?),
        EventKind::ClientCtx => RawEvent::ClientCtx(read_header(bytes, kind)?),
        EventKind::ProcessExec => RawEvent::ProcessExec(read_header(bytes, kind)?),
        EventKind::ExecEnv => decode_exec_env(bytes, kind)?,
    })
}

/// A DataEvent and the payload bytes it says it carries.
fn decode_data(bytes: &[u8]) -> Result<(DataEvent, &[u8]), DecodeError> {
    let header: DataEvent = read_header(bytes, EventKind::Data)?;
    let claimed = header.captured_len as usize;
    let carried = bytes.len() - size_of::<DataEvent>();
    if claimed > carried || claimed > MAX_CAPTURE {
        return Err(DecodeError::BadPayloadLength { claimed, carried });
    }
    // A syscall returns at most isize::MAX bytes.
    if header.total_len < claimed as u64 || header.total_len > isize::MAX as u64 {
        return Err(DecodeError::BadTotalLength { total: header.total_len, captured: claimed });
    }
    let start = size_of::<DataEvent>();
    Ok((header, &bytes[start..start + claimed]))
}

/// The prefix's ids with the identity and timestamp of the DataEvent after
/// it, as the kernel would have sent them in a record of their own.
fn decode_data_ctx(bytes: &[u8]) -> Result<RawEvent<'_>, DecodeError> {
    let prefix: DataCtxPrefix = read_header(bytes, EventKind::DataCtx)?;
    let (header, payload) = decode_data(&bytes[size_of::<DataCtxPrefix>()..])?;
    let ctx = |ts_ns| TraceCtxEvent {
        kind: prefix.ctx_kind,
        flags: prefix.flags,
        _pad0: [0; 2],
        tgid: header.tgid,
        tid: header.tid,
        fd: header.fd,
        conn_id: header.conn_id,
        ts_ns,
        trace_id: prefix.trace_id,
        span_id: prefix.span_id,
        parent_span_id: prefix.parent_span_id,
    };
    let started = match EventKind::from_u8(prefix.ctx_kind) {
        Some(EventKind::ServerCtx) => Started::Server(ctx(header.exit_ns)),
        Some(EventKind::ClientCtx) => Started::Client(ctx(header.enter_ns)),
        _ => return Err(DecodeError::UnknownKind(prefix.ctx_kind)),
    };
    Ok(RawEvent::DataCtx { started, header, payload })
}

/// The header alone when the exec set neither variable; else the whole
/// record, each value as long as the header says (at most VALUE_CAP - 1).
fn decode_exec_env(bytes: &[u8], kind: EventKind) -> Result<RawEvent<'_>, DecodeError> {
    let header: ExecEnvHeader = read_header(bytes, kind)?;
    if header.flags & (exec_flags::SERVICE_NAME | exec_flags::RESOURCE_ATTRIBUTES) == 0 {
        return Ok(RawEvent::ExecEnv { header, service_name: None, resource_attributes: None });
    }
    if bytes.len() < size_of::<ExecEnvEvent>() {
        return Err(DecodeError::Short { kind, len: bytes.len() });
    }
    let start = size_of::<ExecEnvHeader>();
    let cap = waggle_common::exec_env::VALUE_CAP;
    let value = |flag: u8, at: usize, len: u8| {
        (header.flags & flag != 0).then(|| &bytes[at..at + usize::from(len).min(cap - 1)])
    };
    Ok(RawEvent::ExecEnv {
        header,
        service_name: value(exec_flags::SERVICE_NAME, start, header.service_name_len),
        resource_attributes: value(exec_flags::RESOURCE_ATTRIBUTES, start + cap, header.resource_attributes_len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_bytes<T: Pod>(v: &T) -> Vec<u8> {
        bytemuck::bytes_of(v).to_vec()
    }

    #[test]
    fn decodes_data_with_payload() {
        let header = DataEvent {
            kind: EventKind::Data as u8,
            direction: 1,
            captured_len: 5,
            total_len: 9000,
            tgid: 42,
            ..Default::default()
        };
        let mut rec = as_bytes(&header);
        rec.extend_from_slice(b"GET /");
        rec.extend_from_slice(&[0, 0, 0]); // ring-buffer records are 8-byte padded
        match decode(&rec).unwrap() {
            RawEvent::Data { header, payload } => {
                assert_eq!(payload, b"GET /");
                assert_eq!(header.total_len, 9000);
                assert_eq!(header.tgid, 42);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A DataCtx record is the context record and the data record the
    /// kernel would otherwise send: the ids from the prefix, the rest from
    /// the DataEvent, the timestamp by role (server: the read's exit,
    /// client: the send's entry).
    #[test]
    fn decodes_data_with_the_context_its_syscall_started() {
        let header = DataEvent {
            kind: EventKind::Data as u8,
            captured_len: 3,
            total_len: 3,
            tgid: 42,
            tid: 43,
            fd: 7,
            conn_id: 99,
            enter_ns: 1000,
            exit_ns: 2000,
            ..Default::default()
        };
        let record = |ctx_kind: EventKind| {
            let prefix = DataCtxPrefix {
                kind: EventKind::DataCtx as u8,
                ctx_kind: ctx_kind as u8,
                flags: 1,
                trace_id: [0xAB; 16],
                span_id: [0xCD; 8],
                parent_span_id: [0xEF; 8],
                ..Default::default()
            };
            let mut rec = as_bytes(&prefix);
            rec.extend_from_slice(&as_bytes(&header));
            rec.extend_from_slice(b"GET\0\0\0\0\0");
            rec
        };
        let server = record(EventKind::ServerCtx);
        match decode(&server).unwrap() {
            RawEvent::DataCtx { started: Started::Server(ctx), header, payload } => {
                assert_eq!(payload, b"GET");
                assert_eq!(header.conn_id, 99);
                assert_eq!(ctx.kind, EventKind::ServerCtx as u8);
                assert_eq!((ctx.tgid, ctx.tid, ctx.fd, ctx.conn_id, ctx.ts_ns), (42, 43, 7, 99, 2000));
                assert_eq!(
                    (ctx.flags, ctx.trace_id, ctx.span_id, ctx.parent_span_id),
                    (1, [0xAB; 16], [0xCD; 8], [0xEF; 8])
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        match decode(&record(EventKind::ClientCtx)).unwrap() {
            RawEvent::DataCtx { started: Started::Client(ctx), .. } => assert_eq!(ctx.ts_ns, 1000),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            decode(&record(EventKind::ConnOpen)).unwrap_err(),
            DecodeError::UnknownKind(EventKind::ConnOpen as u8)
        );
        assert!(matches!(decode(&server[..30]), Err(DecodeError::Short { .. })));
        assert!(matches!(decode(&server[..60]), Err(DecodeError::Short { .. })));
        let mut lying = server.clone();
        lying[40 + 4] = 9; // captured_len
        assert!(matches!(decode(&lying), Err(DecodeError::BadPayloadLength { .. })));
    }

    #[test]
    fn decodes_exec_env_records_whole_or_header_only() {
        let header = ExecEnvHeader { kind: EventKind::ExecEnv as u8, tgid: 7, boot_ns: 9, ..Default::default() };
        match decode(&as_bytes(&header)).unwrap() {
            RawEvent::ExecEnv { header, service_name: None, resource_attributes: None } => assert_eq!(header.tgid, 7),
            other => panic!("unexpected {other:?}"),
        }
        let mut ev: ExecEnvEvent = bytemuck::Zeroable::zeroed();
        ev.header = ExecEnvHeader {
            flags: exec_flags::SERVICE_NAME | exec_flags::RESOURCE_ATTRIBUTES,
            service_name_len: 10,
            resource_attributes_len: 3,
            ..header
        };
        ev.service_name[..10].copy_from_slice(b"edge-proxy");
        ev.resource_attributes[..3].copy_from_slice(b"a=b");
        match decode(&as_bytes(&ev)).unwrap() {
            RawEvent::ExecEnv { service_name, resource_attributes, .. } => {
                assert_eq!(service_name, Some(&b"edge-proxy"[..]));
                assert_eq!(resource_attributes, Some(&b"a=b"[..]));
            }
            other => panic!("unexpected {other:?}"),
        }
        // A record claiming values must carry them.
        let short = &as_bytes(&ev)[..40];
        assert!(matches!(decode(short), Err(DecodeError::Short { .. })));
    }

    #[test]
    fn rejects_lying_lengths_and_garbage() {
        let header = DataEvent { kind: EventKind::Data as u8, captured_len: 100, ..Default::default() };
        let rec = as_bytes(&header);
        assert!(matches!(decode(&rec), Err(DecodeError::BadPayloadLength { .. })));
        let mut rec =
            as_bytes(&DataEvent { kind: EventKind::Data as u8, captured_len: 2, total_len: 1, ..Default::default() });
        rec.extend_from_slice(b"ab");
        assert!(matches!(decode(&rec), Err(DecodeError::BadTotalLength { total: 1, captured: 2 })));
        let rec = as_bytes(&DataEvent {
            kind: EventKind::Data as u8,
            captured_len: 0,
            total_len: u64::MAX,
            ..Default::default()
        });
        assert!(matches!(decode(&rec), Err(DecodeError::BadTotalLength { .. })));
        assert_eq!(decode(&[]).unwrap_err(), DecodeError::Empty);
        assert_eq!(decode(&[99, 1, 2]).unwrap_err(), DecodeError::UnknownKind(99));
        assert!(matches!(decode(&[EventKind::ConnOpen as u8, 0]), Err(DecodeError::Short { .. })));
    }
}
