//! Reading the OTEL_* variables a resource depends on from a process's
//! environment (/proc/<pid>/environ).
use std::io::{self, BufRead, BufReader, Read};

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct OtelEnv {
    pub(super) service_name: Option<String>,
    pub(super) resource_attributes: Option<String>,
}

/// The OTEL_* variables a process's resource depends on, from its environ,
/// scanning at most `cap` bytes. An entry cut by the cap is ignored (every
/// complete entry ends with NUL). Like getenv, the first occurrence wins.
pub(super) fn otel_env(reader: impl Read, cap: u64) -> io::Result<OtelEnv> {
    let mut reader = BufReader::new(reader.take(cap));
    let mut env = OtelEnv::default();
    let mut entry = Vec::new();
    loop {
        entry.clear();
        if reader.read_until(0, &mut entry)? == 0 {
            break;
        }
        let Some(complete) = entry.strip_suffix(&[0]) else { break };
        if let Some(v) = complete.strip_prefix(b"OTEL_SERVICE_NAME=") {
            env.service_name.get_or_insert_with(|| String::from_utf8_lossy(v).into_owned());
        } else if let Some(v) = complete.strip_prefix(b"OTEL_RESOURCE_ATTRIBUTES=") {
            env.resource_attributes.get_or_insert_with(|| String::from_utf8_lossy(v).into_owned());
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environ_reading_is_capped_and_takes_first_occurrence() {
        let env = b"PATH=/bin\0OTEL_SERVICE_NAME=svc\0OTEL_SERVICE_NAME=second\0OTEL_RESOURCE_ATTRIBUTES=a=b\0";
        assert_eq!(
            otel_env(&env[..], 1 << 20).unwrap(),
            OtelEnv { service_name: Some("svc".into()), resource_attributes: Some("a=b".into()) }
        );
        // A huge variable before ours: the cap stops the scan, the cut entry
        // is not taken.
        let mut big = b"JUNK=".to_vec();
        big.extend(std::iter::repeat_n(b'x', 10_000));
        big.extend_from_slice(b"\0OTEL_SERVICE_NAME=late\0");
        assert_eq!(otel_env(&big[..], 4096).unwrap(), OtelEnv::default());
        assert_eq!(otel_env(&big[..], 1 << 20).unwrap().service_name.as_deref(), Some("late"));
        // Cut in the middle of our own variable: ignored rather than truncated.
        let cut = b"OTEL_SERVICE_NAME=longname\0";
        assert_eq!(otel_env(&cut[..], 22).unwrap(), OtelEnv::default());
    }
}
