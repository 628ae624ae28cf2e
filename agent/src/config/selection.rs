//! The `trace` settings: include and exclude rules and the default
//! excludes, each from flag > environment > file (a list given at a higher
//! level replaces the lower one whole).
use std::path::Path;

use super::{
    file::FileTrace,
    source::{env_var, file_key, first, flag},
    values::parse_on_off,
    CliArgs, ConfigError, Env,
};
use crate::selection::{default_excludes, parse_rule, parse_rule_list, Rule, Rules};

/// One rule list: a `;`-separated flag or variable, or a YAML list.
fn rule_list(
    flag_value: Option<String>,
    flag_name: &'static str,
    env: &dyn Env,
    var: &'static str,
    file_value: Option<Vec<String>>,
    file_key_name: &'static str,
    path: Option<&Path>,
) -> Result<Vec<Rule>, ConfigError> {
    if let Some((raw, source)) = first([flag(flag_value, flag_name), env_var(env, var)]) {
        return parse_rule_list(&raw).map_err(|e| source.invalid(e));
    }
    match file_key(file_value, file_key_name, path) {
        Some((list, source)) => {
            list.iter().map(|r| parse_rule(r).map_err(|e| source.invalid(format!("{r:?}: {e}")))).collect()
        }
        None => Ok(Vec::new()),
    }
}

pub(super) fn resolve(
    args: &CliArgs,
    env: &dyn Env,
    file: Option<FileTrace>,
    path: Option<&Path>,
) -> Result<Rules, ConfigError> {
    let file = file.unwrap_or_default();
    let include = rule_list(
        args.trace_include.clone(),
        "trace-include",
        env,
        "WAGGLE_TRACE_INCLUDE",
        file.include,
        "trace.include",
        path,
    )?;
    let mut exclude = rule_list(
        args.trace_exclude.clone(),
        "trace-exclude",
        env,
        "WAGGLE_TRACE_EXCLUDE",
        file.exclude,
        "trace.exclude",
        path,
    )?;
    let defaults = match first([
        flag(args.trace_default_excludes.clone(), "trace-default-excludes"),
        env_var(env, "WAGGLE_TRACE_DEFAULT_EXCLUDES"),
        file_key(file.default_excludes.map(|b| b.to_string()), "trace.default_excludes", path),
    ]) {
        Some((raw, source)) => parse_on_off(&raw, &source)?,
        None => true,
    };
    if let Some(r) = exclude.iter().find(|r| r.response_header.is_some()) {
        return Err(ConfigError::Invalid {
            setting: "trace-exclude".to_owned(),
            message: format!("{:?}: trace_response_header=... belongs on an include rule", r.text),
        });
    }
    if defaults {
        exclude.extend(default_excludes());
    }
    Ok(Rules { include, exclude })
}
