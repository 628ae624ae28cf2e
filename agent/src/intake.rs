//! Event intake: decodes ring-buffer records written by the kernel programs.
//!
//! Records are borrowed, not copied: the pipeline handles each one while the
//! ring-buffer slot is still held, so a data event's payload is never
//! allocated unless a parser keeps some of it.
use std::mem::size_of;

use bytemuck::Pod;
use waggle_common::{ConnEvent, DataEvent, EventKind, ProcessEvent, TraceCtxEvent, MAX_CAPTURE};

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
            let header: DataEvent = read_header(bytes, kind)?;
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
            RawEvent::Data { header, payload: &bytes[start..start + claimed] }
        }
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
