//! The throughput scenarios: saturated nginx, the Flask and Node.js apps
//! with and without tracing (waggle vs each language's OpenTelemetry SDK), a
//! new connection per request against nginx and Flask, PostgreSQL, and the
//! sustained fixed-rate steps, nginx over HTTPS, and many idle connections. Every scenario alternates the order of its
//! variants from round to round (baseline first, then agent first, ...), so
//! a slow drift of the machine (other work, thermal) spreads over all sides.
mod conn;
mod flask;
mod https;
mod idle;
mod nginx;
mod node;
mod postgres;
mod sdk;
mod sustained;

pub use conn::{conn, ConnResults, ConnRound, CONNECTION_CLOSE};
pub use flask::{flask, FLASK_WORKERS, FLASK_WRK_CONNECTIONS};
pub use https::https;
pub use idle::{client_main as idle_client, idle, IdleStep, IDLE_SAMPLE};
pub use nginx::{nginx, Nginx, NginxRound, NGINX_WRK_CONNECTIONS, NGINX_WRK_THREADS};
pub use node::{node, NODE_WRK_CONNECTIONS};
pub use postgres::{postgres, PgRound, PGBENCH_CLIENTS};
pub use sdk::SdkRound;
pub use sustained::{sustained, SustainedStep, SUSTAINED_CONNECTIONS};
