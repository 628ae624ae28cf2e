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
    pub protocol: Protocol,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
}

/// What a connection speaks, once a parser recognised it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Not (yet) recognised.
    #[default]
    Unknown,
    Http1,
    Postgres,
    Mysql,
    Redis,
    Memcached,
    FastCgi,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Unknown => "unknown",
            Protocol::Http1 => "http1",
            Protocol::Postgres => "postgresql",
            Protocol::Mysql => "mysql",
            Protocol::Redis => "redis",
            Protocol::Memcached => "memcached",
            Protocol::FastCgi => "fastcgi",
        }
    }

    /// A database or cache wire protocol: its server side duplicates the
    /// clients' spans, so database and cache servers are not traced.
    pub fn is_database(self) -> bool {
        matches!(self, Protocol::Postgres | Protocol::Mysql | Protocol::Redis | Protocol::Memcached)
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
