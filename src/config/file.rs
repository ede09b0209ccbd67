//! Parsing: the command line and environment, with the `--config` file's settings as their
//! defaults; and the effective configuration as `audit-service config` prints it.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use super::settings::Cli;

/// What the command line, the environment and the configuration file ask for.
pub struct Parsed {
    pub cli: Cli,
    /// For `config`: the effective configuration, as it prints.
    pub effective: Option<String>,
}

/// Parses the command line like `Cli::parse`, with the settings of `--config` (or
/// `AUDIT_CONFIG`) as defaults. A usage error exits as clap does; a bad file is an error.
pub fn parse() -> anyhow::Result<Parsed> {
    parse_from(std::env::args_os().collect())
}

fn parse_from(mut args: Vec<OsString>) -> anyhow::Result<Parsed> {
    let mut command = Cli::command();
    let mut from_file = BTreeSet::new();
    if let Some(path) = take_config_path(&mut args) {
        let text = read_config(&path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        let table: toml::Table = text
            .parse()
            .with_context(|| format!("{} is not TOML", path.display()))?;
        let at = || path.display().to_string();
        for (key, value) in table {
            anyhow::ensure!(
                is_setting(&command, &key),
                "{}: unknown setting `{key}`: keys are the long flag names of \
                 `audit-service serve --help`",
                at()
            );
            let values = setting_values(&key, &value).with_context(at)?;
            command = set_default(command, &key, &values);
            from_file.insert(key);
        }
    }
    let matches = command.get_matches_from(args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    let effective = match matches.subcommand() {
        Some(("config", config)) => Some(effective(&Cli::command(), config, &from_file)),
        _ => None,
    };
    Ok(Parsed { cli, effective })
}

/// Largest configuration file.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The text of a configuration file of at most `MAX_CONFIG_BYTES` (a device that never
/// ends, like `/dev/zero`, is refused once it passes that).
fn read_config(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)?;
    anyhow::ensure!(
        text.len() as u64 <= MAX_CONFIG_BYTES,
        "it is larger than {} KiB",
        MAX_CONFIG_BYTES >> 10
    );
    Ok(text)
}

/// Takes `--config PATH` or `--config=PATH` off the command line; else `AUDIT_CONFIG`.
fn take_config_path(args: &mut Vec<OsString>) -> Option<PathBuf> {
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    for i in 1..end {
        if args[i] == "--config" && i + 1 < end {
            let path = args.remove(i + 1);
            args.remove(i);
            return Some(PathBuf::from(path));
        }
        let path = args[i].to_str().and_then(|a| a.strip_prefix("--config="));
        if let Some(path) = path.map(PathBuf::from) {
            args.remove(i);
            return Some(path);
        }
    }
    std::env::var_os("AUDIT_CONFIG").map(PathBuf::from)
}

/// A file value as the command line would give it: scalars as text, arrays as their items.
fn setting_values(key: &str, value: &toml::Value) -> anyhow::Result<Vec<String>> {
    let scalar = |value: &toml::Value| match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ => Err(anyhow::anyhow!("`{key}` takes a string, number or boolean")),
    };
    match value {
        toml::Value::Array(items) => items.iter().map(scalar).collect(),
        value => Ok(vec![scalar(value)?]),
    }
}

/// The setting (an argument with an environment variable) whose long flag is `key` in
/// `command` itself.
fn setting(command: &clap::Command, key: &str) -> Option<clap::Id> {
    command
        .get_arguments()
        .find(|a| a.get_long() == Some(key) && a.get_env().is_some() && key != "config")
        .map(|a| a.get_id().clone())
}

/// Whether `command` or one of its subcommands has the setting `key`.
fn is_setting(command: &clap::Command, key: &str) -> bool {
    setting(command, key).is_some() || command.get_subcommands().any(|s| is_setting(s, key))
}

/// Makes `values` the default of the setting `key`, wherever it appears (the server's
/// flags, and every subcommand taking it).
fn set_default(command: clap::Command, key: &str, values: &[String]) -> clap::Command {
    let mut command = match setting(&command, key) {
        Some(id) => {
            let values: Vec<clap::builder::OsStr> =
                values.iter().map(|v| v.clone().into()).collect();
            // `--help` shows defaults: not a secret from the file.
            let secret = SECRET.contains(&key) || URLS.contains(&key);
            command.mut_arg(id, |arg| {
                arg.default_values(values).hide_default_value(secret)
            })
        }
        None => command,
    };
    let names: Vec<String> = command
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in names {
        command = command.mut_subcommand(name, |sub| set_default(sub, key, values));
    }
    command
}

/// Settings whose values are never printed: secrets, and URLs that may hold a password.
const SECRET: [&str; 1] = ["jwt-hs256-secret"];
const URLS: [&str; 2] = ["database-url", "read-database-url"];

/// The `config` subcommand's settings as TOML lines, each with where its value came from.
fn effective(
    command: &clap::Command,
    matches: &ArgMatches,
    from_file: &BTreeSet<String>,
) -> String {
    let Some(config) = command.find_subcommand("config") else {
        return String::new();
    };
    let mut out = String::new();
    for arg in config.get_arguments() {
        let (Some(key), Some(env)) = (arg.get_long(), arg.get_env()) else {
            continue;
        };
        let id = arg.get_id().as_str();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag".to_owned(),
            Some(ValueSource::EnvVariable) => format!("environment, {}", env.to_string_lossy()),
            Some(ValueSource::DefaultValue) if from_file.contains(key) => "file".to_owned(),
            Some(ValueSource::DefaultValue) => "default".to_owned(),
            _ => "not set".to_owned(),
        };
        let values: Vec<String> = matches
            .get_raw(id)
            .into_iter()
            .flatten()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let shown = |value: &str| {
            if SECRET.contains(&key) {
                "[redacted]".to_owned()
            } else if URLS.contains(&key) {
                redact_password(value)
            } else {
                value.to_owned()
            }
        };
        let value = match (
            values.as_slice(),
            arg.get_num_args().is_some_and(|n| n.max_values() > 1)
                || arg.get_value_delimiter().is_some(),
        ) {
            ([], _) => {
                out.push_str(&format!("# {key} is not set\n"));
                continue;
            }
            (values, true) => {
                toml::Value::Array(values.iter().map(|v| toml_scalar(&shown(v))).collect())
            }
            ([value, ..], false) => toml_scalar(&shown(value)),
        };
        out.push_str(&format!("{key} = {value}  # {source}\n"));
    }
    out
}

/// A value as TOML: numbers and booleans bare, everything else a string.
fn toml_scalar(value: &str) -> toml::Value {
    if let Ok(i) = value.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = value.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(value.to_owned())
    }
}

/// `scheme://user:password@host/...?password=...` with the passwords replaced.
fn redact_password(url: &str) -> String {
    let url = redact_userinfo(url);
    match url.split_once('?') {
        Some((base, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                        format!("{name}=[redacted]")
                    }
                    _ => p.to_owned(),
                })
                .collect();
            format!("{base}?{}", params.join("&"))
        }
        None => url,
    }
}

fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let password = if userinfo.contains(':') {
                ":[redacted]"
            } else {
                ""
            };
            format!("{scheme}://{user}{password}@{host}{path}")
        }
        None => url.to_owned(),
    }
}
