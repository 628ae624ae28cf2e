//! ABI layout and counter-table checks of the crate root.
extern crate std;
use super::*;
use core::mem::size_of;

#[test]
fn layouts_have_no_implicit_padding() {
    assert_eq!(size_of::<SockKey>(), 8);
    assert_eq!(size_of::<ConnInfo>(), 32);
    assert_eq!(size_of::<DataEvent>(), 56);
    assert_eq!(size_of::<ConnEvent>(), 88);
    assert_eq!(size_of::<ProcessEvent>(), 32);
    assert_eq!(size_of::<TraceCtx>(), 48);
    assert_eq!(size_of::<Pending>(), 56);
    assert_eq!(size_of::<TraceCtxEvent>(), 64);
    // The kernel writes it in front of a DataEvent: a multiple of 8 keeps
    // that event's u64 fields aligned in the ring.
    assert_eq!(size_of::<DataCtxPrefix>(), 40);
    assert_eq!(size_of::<InjectRequest>(), 64);
    assert_eq!(size_of::<http::HeaderScan>(), 80);
    assert_eq!(b"traceparent: 00-".len() + 32 + 1 + 16 + 1 + 2 + 2, TRACEPARENT_LINE_LEN);
}

#[test]
fn skip_counters_line_up_with_reasons() {
    assert_eq!(Counter::skip(skip_reason::ALREADY_HAS_TRACEPARENT), Counter::SkipAlreadyHasTraceparent as u32);
    assert_eq!(Counter::skip(skip_reason::AGENT_STALLED), Counter::SkipAgentStalled as u32);
    assert_eq!(Counter::skip(skip_reason::COUNT), Counter::IncomingTraceparent as u32);
    use http::response::skip;
    assert_eq!(Counter::response_skip(skip::HAS_TRACE_HEADER), Counter::ResponseSkipHasTraceHeader as u32);
    assert_eq!(Counter::response_skip(skip::PUSH_FAILED), Counter::ResponseSkipPushFailed as u32);
    assert_eq!(Counter::response_skip(skip::AGENT_STALLED), Counter::ResponseSkipAgentStalled as u32);
    assert_eq!(Counter::response_skip(skip::COUNT), COUNTER_COUNT);
    for (i, c) in Counter::ALL.iter().enumerate() {
        assert_eq!(*c as usize, i);
    }
}

#[test]
fn a_verdict_carries_a_response_header_mode_or_none() {
    use http::response::mode;
    assert_eq!(verdict::response_mode(verdict::TRACED), None);
    assert_eq!(verdict::response_mode(verdict::UNTRACED), None);
    for m in [mode::OFF, mode::TRACERESPONSE, mode::X_TRACE_ID] {
        let v = verdict::traced_with(m);
        assert_eq!(v & 3, verdict::TRACED, "still traced, and never UNTRACED");
        assert_eq!(verdict::response_mode(v), Some(m));
    }
}

#[test]
fn counter_names_are_unique_and_described() {
    for (i, a) in Counter::ALL.iter().enumerate() {
        assert!(!a.help().is_empty(), "{a:?}");
        assert!(Counter::ALL[i + 1..].iter().all(|b| b.name() != a.name()), "{a:?}");
    }
    assert_eq!(Counter::ALL.len(), COUNTER_COUNT as usize);
}

#[test]
fn ratio_sampling_matches_the_sdk_rule() {
    let id = |low: u64| {
        let mut t = [0u8; 16];
        t[8..].copy_from_slice(&low.to_be_bytes());
        t
    };
    assert!(!sampled_by_threshold(&id(0), ratio_threshold(0.0)));
    assert!(sampled_by_threshold(&id(u64::MAX), ratio_threshold(1.0)));
    let t = ratio_threshold(0.25);
    assert!(sampled_by_threshold(&id((1u64 << 62) - 2), t));
    assert!(!sampled_by_threshold(&id(1u64 << 62), t));
    // Roughly a quarter of evenly spread ids.
    let hits = (0..1000u64).filter(|i| sampled_by_threshold(&id(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), t)).count();
    assert!((200..300).contains(&hits), "{hits}");
}

#[test]
fn capture_mask_bounds_capture() {
    assert!(MAX_CAPTURE.is_power_of_two());
    assert_eq!(CAPTURE_MASK + 1, MAX_CAPTURE);
}
