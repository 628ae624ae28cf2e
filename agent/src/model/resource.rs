//! Who a span is from.

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
