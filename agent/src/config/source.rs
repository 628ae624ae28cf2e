//! Where a setting's raw value comes from: the environment (read through
//! [`Env`] so tests never touch the process environment), a flag or a file
//! key. The origin travels with the value, so [`ConfigError`] names the flag,
//! variable or file key that held a bad value.
use std::{fmt, path::Path, path::PathBuf};

/// Source of environment variables.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{setting}: {message}")]
    Invalid { setting: String, message: String },
    #[error("reading config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
}

/// Where a value came from; its Display names the setting in errors.
#[derive(Clone, Debug)]
pub(super) enum Source {
    Flag(&'static str),
    Env(&'static str),
    File { key: &'static str, path: PathBuf },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "--{flag}"),
            Source::Env(var) => f.write_str(var),
            Source::File { key, path } => write!(f, "{key} in {}", path.display()),
        }
    }
}

impl Source {
    pub(super) fn invalid(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { setting: self.to_string(), message: message.into() }
    }
}

/// A raw value with its origin.
pub(super) type Sourced<T> = Option<(T, Source)>;

/// Environment lookups: the OTel spec treats an empty value as unset.
pub(super) fn env_var(env: &dyn Env, key: &'static str) -> Sourced<String> {
    env.var(key).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).map(|v| (v, Source::Env(key)))
}

pub(super) fn flag<T>(value: Option<T>, name: &'static str) -> Sourced<T> {
    value.map(|v| (v, Source::Flag(name)))
}

pub(super) fn file_key<T>(value: Option<T>, key: &'static str, path: Option<&Path>) -> Sourced<T> {
    match (value, path) {
        (Some(v), Some(path)) => Some((v, Source::File { key, path: path.to_owned() })),
        _ => None,
    }
}

pub(super) fn first<T>(candidates: impl IntoIterator<Item = Sourced<T>>) -> Sourced<T> {
    candidates.into_iter().flatten().next()
}
