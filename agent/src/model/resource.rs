//! Who a span is from: a process's resource, and the one parser of
//! `OTEL_RESOURCE_ATTRIBUTES` (the agent's own, and each traced process's).

/// Resource of one traced process.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProcessResource {
    pub service_name: String,
    pub pid: u32,
    pub executable_name: String,
    /// All other resource attributes (host.name, the process's and the
    /// agent's OTEL_RESOURCE_ATTRIBUTES, ...), sorted by key.
    pub attributes: Vec<(String, String)>,
}

/// Why an `OTEL_RESOURCE_ATTRIBUTES` value was refused. Never carries a
/// value: the same `key=value` syntax holds credentials in
/// `OTEL_EXPORTER_OTLP_HEADERS`. Entries count from 1.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResourceAttributesError {
    #[error("entry {entry} is not key=value")]
    NotKeyValue { entry: usize },
    #[error("entry {entry} has an empty key")]
    EmptyKey { entry: usize },
    #[error("value of {key:?} has a malformed percent-escape (% must be followed by two hex digits)")]
    BadEscape { key: String },
    #[error("value of {key:?} is not valid UTF-8 once percent-decoded")]
    NotUtf8 { key: String },
}

/// Parses `OTEL_RESOURCE_ATTRIBUTES` as the OpenTelemetry specification
/// defines it (W3C Baggage without properties): `key=value` entries
/// separated by commas, keys and values trimmed, values percent-decoded
/// (keys are not: only values are encoded). Empty entries (`a=b,,c=d`, a
/// trailing comma) are ignored; a later duplicate key replaces the earlier
/// value in place, as in the OTel SDKs. Any malformed entry refuses the
/// whole value, as the specification asks ("the entire environment variable
/// value SHOULD be discarded").
pub fn parse_resource_attributes(raw: &str) -> Result<Vec<(String, String)>, ResourceAttributesError> {
    let mut out = Vec::new();
    for (i, entry) in raw.split(',').enumerate() {
        if let Some((key, value)) = parse_entry(i + 1, entry)? {
            upsert(&mut out, key, value);
        }
    }
    Ok(out)
}

/// [`parse_resource_attributes`] for a value the agent cannot get fixed: a
/// traced process's own environment. A malformed entry is passed to
/// `skipped` and left out instead of refusing the rest: the attributes that
/// are well-formed still describe the process better than none.
pub fn parse_resource_attributes_lossy(
    raw: &str,
    mut skipped: impl FnMut(ResourceAttributesError),
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, entry) in raw.split(',').enumerate() {
        match parse_entry(i + 1, entry) {
            Ok(Some((key, value))) => upsert(&mut out, key, value),
            Ok(None) => {}
            Err(e) => skipped(e),
        }
    }
    out
}

/// One comma-separated entry; None when it is blank.
fn parse_entry(entry: usize, raw: &str) -> Result<Option<(String, String)>, ResourceAttributesError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let (key, value) = raw.split_once('=').ok_or(ResourceAttributesError::NotKeyValue { entry })?;
    let key = key.trim();
    if key.is_empty() {
        return Err(ResourceAttributesError::EmptyKey { entry });
    }
    let value = value.trim();
    // percent_decode_str passes a stray `%` through unchanged; a value an
    // application meant to encode but got wrong is refused instead.
    let escapes_ok = value.split('%').skip(1).all(|rest| rest.as_bytes().get(..2).is_some_and(is_hex_pair));
    if !escapes_ok {
        return Err(ResourceAttributesError::BadEscape { key: key.to_owned() });
    }
    let value = percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .map_err(|_| ResourceAttributesError::NotUtf8 { key: key.to_owned() })?;
    Ok(Some((key.to_owned(), value.into_owned())))
}

fn is_hex_pair(pair: &[u8]) -> bool {
    pair.iter().all(u8::is_ascii_hexdigit)
}

fn upsert(out: &mut Vec<(String, String)>, key: String, value: String) {
    match out.iter_mut().find(|(k, _)| *k == key) {
        Some(existing) => existing.1 = value,
        None => out.push((key, value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn err(raw: &str) -> String {
        parse_resource_attributes(raw).unwrap_err().to_string()
    }

    #[test]
    fn entries_are_trimmed_and_values_percent_decoded() {
        assert_eq!(parse_resource_attributes("b=env%20two,d=env").unwrap(), pairs(&[("b", "env two"), ("d", "env")]));
        assert_eq!(
            parse_resource_attributes("Authorization=Basic%20abc%3D%3D , x-tenant = t1").unwrap(),
            pairs(&[("Authorization", "Basic abc=="), ("x-tenant", "t1")])
        );
        assert_eq!(
            parse_resource_attributes(" k=v , k2=v%20x,k3=a=b,emoji=%F0%9F%90%9D,e=").unwrap(),
            pairs(&[("k", "v"), ("k2", "v x"), ("k3", "a=b"), ("emoji", "🐝"), ("e", "")])
        );
        assert_eq!(parse_resource_attributes("k=%2C%3d").unwrap(), pairs(&[("k", ",=")]));
        // Whitespace inside the encoding survives the trim.
        assert_eq!(parse_resource_attributes("k=%20x%20").unwrap(), pairs(&[("k", " x ")]));
        // Keys are not decoded: only values are percent-encoded.
        assert_eq!(parse_resource_attributes("a%20b=c").unwrap(), pairs(&[("a%20b", "c")]));
    }

    #[test]
    fn blank_entries_are_ignored_and_later_duplicates_win() {
        assert!(parse_resource_attributes("").unwrap().is_empty());
        assert!(parse_resource_attributes(" , ,").unwrap().is_empty());
        assert_eq!(parse_resource_attributes("a=1,,b=2,").unwrap(), pairs(&[("a", "1"), ("b", "2")]));
        assert_eq!(parse_resource_attributes("k=v,b=2,k=last").unwrap(), pairs(&[("k", "last"), ("b", "2")]));
    }

    #[test]
    fn malformed_entries_refuse_the_whole_value_without_echoing_it() {
        assert_eq!(err("authorization:Bearer s3cr3t"), "entry 1 is not key=value");
        assert_eq!(err("a=1,noequals"), "entry 2 is not key=value");
        assert_eq!(err("a=1,,=empty"), "entry 3 has an empty key");
        assert_eq!(err(" = x"), "entry 1 has an empty key");
        for bad in ["k=%4", "k=%zz", "k=100%", "k=%%41", "k=%+f"] {
            assert_eq!(
                parse_resource_attributes(bad),
                Err(ResourceAttributesError::BadEscape { key: "k".into() }),
                "{bad}"
            );
        }
        assert_eq!(err("k=%ff"), "value of \"k\" is not valid UTF-8 once percent-decoded");
        let e = err("k=s3cr%0At%ff");
        assert!(!e.contains("s3cr"), "{e}");
    }

    #[test]
    fn lossy_parsing_skips_only_malformed_entries() {
        let mut skipped = Vec::new();
        let parsed = parse_resource_attributes_lossy(
            " k=v , k2=v%20x,noequals,=empty,k3=a=b,bad=%4,k=last,emoji=%F0%9F%90%9D,nonutf=%ff",
            |e| skipped.push(e),
        );
        assert_eq!(parsed, pairs(&[("k", "last"), ("k2", "v x"), ("k3", "a=b"), ("emoji", "🐝")]));
        assert_eq!(
            skipped,
            vec![
                ResourceAttributesError::NotKeyValue { entry: 3 },
                ResourceAttributesError::EmptyKey { entry: 4 },
                ResourceAttributesError::BadEscape { key: "bad".into() },
                ResourceAttributesError::NotUtf8 { key: "nonutf".into() },
            ]
        );
        assert!(parse_resource_attributes_lossy("", |_| panic!("nothing to skip")).is_empty());
    }
}
