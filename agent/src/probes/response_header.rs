//! `--trace-response-header`: whether this kernel may have it, said once.
//!
//! Inserting into responses needs server sockets in a sockmap while
//! requests arrive on them (the sk_msg program runs only on sockets in
//! one). A socket in a sockmap gets the kernel's tcp_bpf receive path, which
//! on current kernels (6.6.128+, 6.12.75+, 6.18.14+) answers FIONREAD with 0
//! instead of the bytes waiting: a server that sizes its reads with it would
//! stall. Client sockets dodge that by leaving the map at their first
//! packet; a server socket cannot. So the feature is off wherever the
//! start-up FIONREAD check (`sockmap::check_fionread`) does not say
//! Correct, and on where it does (the kernel side is in the eBPF crate's
//! response.rs and sock.rs).
use super::sockmap::FionreadCheck;

/// Why the response header is off, for the one log line; None when it
/// may be on.
/// `sockops`: the sockops program that puts sockets into the sockmap is
/// attached.
pub(super) fn off_reason(fionread: Option<&Result<FionreadCheck, String>>, sockops: bool) -> Option<String> {
    Some(match fionread {
        None => "it needs the sk_msg program propagation attaches, and propagation is off or could not attach here"
            .to_owned(),
        Some(_) if !sockops => {
            "it needs the sockops program that puts server sockets into the sockmap, and it did not attach here (see its \"probe skipped\" line)".to_owned()
        }
        Some(Err(e)) => format!("FIONREAD on sockets in a sockmap could not be checked ({e}), so keeping server sockets in one could not be verified safe"),
        Some(Ok(FionreadCheck::Misreports { reported })) => format!(
            "this kernel misreports FIONREAD for sockets in a sockmap (said {reported} with 1000 bytes waiting); server sockets would have to stay in one while requests arrive, and servers that size reads with FIONREAD would stall"
        ),
        Some(Ok(FionreadCheck::Correct)) => return None,
    })
}

/// Says once, when some process would get a response header, whether it
/// does. Returns true when responses get the header.
pub(super) fn gate(wanted: bool, fionread: Option<&Result<FionreadCheck, String>>, sockops: bool) -> bool {
    if !wanted {
        return false;
    }
    match off_reason(fionread, sockops) {
        Some(reason) => {
            // The reason is the message: the one line a user greps for.
            tracing::warn!("trace-response-header off: {reason}");
            false
        }
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_with_a_reason_on_every_kernel_answer() {
        let misreports = Ok(FionreadCheck::Misreports { reported: 0 });
        let correct = Ok(FionreadCheck::Correct);
        assert!(off_reason(Some(&misreports), true).unwrap().contains("misreports FIONREAD"));
        assert!(off_reason(Some(&Err("x".to_owned())), true).unwrap().contains("could not be checked"));
        assert!(off_reason(None, false).unwrap().contains("propagation"));
        assert!(off_reason(Some(&correct), false).unwrap().contains("sockops"));
        assert_eq!(off_reason(Some(&correct), true), None);
        assert!(gate(true, Some(&correct), true));
        assert!(!gate(true, Some(&correct), false));
        assert!(!gate(false, Some(&correct), true));
        assert!(!gate(false, Some(&misreports), true));
        assert!(!gate(true, Some(&misreports), true));
    }
}
