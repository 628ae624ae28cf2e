//! Identity of a traced connection.
use std::net::SocketAddr;

use waggle_common::Role;

/// Identity of the connection a span came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnMeta {
    pub pid: u32,
    pub fd: u32,
    pub conn_id: u64,
    pub role: Role,
    pub protocol: &'static str,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
}
