//! One TOML file per daemon (`--config FILE`, or `SPG_CONFIG`), under environment variables and
//! flags: a setting given as a flag wins over its environment variable, which wins over the
//! file, which wins over the default.
//!
//! The file's keys are the flags' long names with `_` for `-` (`--data-dir` → `data_dir`,
//! `--state-store` → `state_store`); a flag given several times takes an array. The file is
//! turned into flags placed before the command line's own, for the settings neither the
//! command line nor the environment gives, and every value is checked with the flag's own
//! parser first, so an error names the key. Unknown keys are errors; a file holding a secret
//! (an API key, a password in a URL) must not be readable by group or others.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// The file's flag and its environment variable.
pub const CONFIG_FLAG: &str = "config";
/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "SPG_CONFIG";

/// The `--config` flag every daemon takes (flatten it into the daemon's arguments).
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArg {
    /// TOML file of settings (keys: the flags' names with `_`, e.g. `data_dir`); flags and
    /// environment variables override it.
    #[arg(long = CONFIG_FLAG, env = CONFIG_ENV)]
    pub config: Option<PathBuf>,
}

/// What went wrong with a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("config file {file} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key no flag of this daemon has.
    #[error("config file {file}: unknown key `{key}`")]
    UnknownKey {
        /// The file.
        file: PathBuf,
        /// The key.
        key: String,
    },
    /// A value its flag does not accept.
    #[error("config file {file}: key `{key}`: {message}")]
    Value {
        /// The file.
        file: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A file with secrets that others may read.
    #[error(
        "config file {file} holds a secret (`{key}`) but group or others may read it: \
         chmod 600 {file}"
    )]
    Exposed {
        /// The file.
        file: PathBuf,
        /// The first secret key found.
        key: String,
    },
}

/// A command line with a config file's settings put in.
#[derive(Debug, Clone)]
pub struct Expanded {
    /// The arguments to parse.
    pub argv: Vec<OsString>,
    /// The file, if one was given.
    pub file: Option<PathBuf>,
    /// Ids of the arguments whose values came from the file.
    pub from_file: BTreeSet<String>,
}

/// Whether an argument carries a secret (its value is never printed).
pub fn is_secret(arg: &clap::Arg) -> bool {
    let id = arg.get_id().as_str();
    arg.is_hide_env_values_set()
        || id.ends_with("api_key")
        || id.ends_with("password")
        || id.ends_with("secret")
}

/// The key of an argument in a config file.
pub fn key_of(arg: &clap::Arg) -> Option<String> {
    arg.get_long().map(|l| l.replace('-', "_"))
}

/// Put the settings of the config file named in `argv[at..]` (`--config FILE`,
/// `--config=FILE`) or by `SPG_CONFIG` into `argv`, right at `at` (after the program and
/// subcommand names), for the arguments of `cmd` that neither `argv` nor the environment sets.
pub fn expand(cmd: &Command, argv: Vec<OsString>, at: usize) -> Result<Expanded, ConfigError> {
    let file = config_path(&argv[at.min(argv.len())..]);
    let Some(file) = file else {
        return Ok(Expanded {
            argv,
            file: None,
            from_file: BTreeSet::new(),
        });
    };
    let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            file: file.clone(),
            message: e.message().to_string(),
        })?;
    let mut cmd = cmd.clone();
    cmd.build();
    let given = given_longs(&argv[at.min(argv.len())..]);
    let mut injected: Vec<OsString> = Vec::new();
    let mut from_file = BTreeSet::new();
    let mut secret_key = None;
    for (key, value) in &table {
        let arg = cmd
            .get_arguments()
            .find(|a| key_of(a).as_deref() == Some(key.as_str()) && key != CONFIG_FLAG)
            .ok_or_else(|| ConfigError::UnknownKey {
                file: file.clone(),
                key: key.clone(),
            })?;
        let bad = |message: String| ConfigError::Value {
            file: file.clone(),
            key: key.clone(),
            message,
        };
        let values = toml_values(value).map_err(bad)?;
        let multiple = matches!(arg.get_action(), ArgAction::Append);
        if values.len() != 1 && !multiple {
            return Err(bad("takes one value, not an array".into()));
        }
        for v in &values {
            check_value(arg, v).map_err(bad)?;
        }
        if secret_key.is_none() && (is_secret(arg) || values.iter().any(|v| has_password(v))) {
            secret_key = Some(key.clone());
        }
        let long = arg.get_long().unwrap_or_default();
        let in_env = arg.get_env().is_some_and(|e| std::env::var_os(e).is_some());
        if given.contains(long) || in_env {
            continue;
        }
        from_file.insert(arg.get_id().to_string());
        match arg.get_action() {
            ArgAction::SetTrue | ArgAction::SetFalse => {
                let on = values.first().is_some_and(|v| v == "true");
                if on == matches!(arg.get_action(), ArgAction::SetTrue) {
                    injected.push(format!("--{long}").into());
                }
            }
            _ => {
                for v in values {
                    injected.push(format!("--{long}").into());
                    injected.push(v.into());
                }
            }
        }
    }
    if let Some(key) = secret_key {
        check_private(&file, &key)?;
    }
    let mut out = argv;
    let at = at.min(out.len());
    out.splice(at..at, injected);
    Ok(Expanded {
        argv: out,
        file: Some(file),
        from_file,
    })
}

/// Parse this process's command line as `T`, with the config file's settings put in; print
/// the error and exit on a bad one (as clap does).
pub fn parse<T: clap::Parser>() -> T {
    parse_from(std::env::args_os().collect(), 1)
}

/// [`parse`] over `argv`, with the file's settings going in at `at`.
pub fn parse_from<T: clap::Parser>(argv: Vec<OsString>, at: usize) -> T {
    let cmd = T::command();
    let sub = if at > 1 {
        argv.get(1)
            .and_then(|s| s.to_str())
            .and_then(|s| cmd.find_subcommand(s))
            .cloned()
    } else {
        None
    };
    let target = sub.as_ref().unwrap_or(&cmd);
    let expanded = match expand(target, argv, at) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    match T::try_parse_from(&expanded.argv) {
        Ok(t) => t,
        Err(e) => {
            if e.kind() == clap::error::ErrorKind::MissingRequiredArgument {
                eprintln!("error: {}", missing_message(target, &e));
                std::process::exit(2);
            }
            e.exit()
        }
    }
}

/// Name the settings a "required argument missing" error is about by their keys too.
pub fn missing_message(cmd: &Command, e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let mut parts = Vec::new();
    if let Some(ContextValue::Strings(missing)) = e.get(ContextKind::InvalidArg) {
        for m in missing {
            let long = m
                .trim_start_matches("--")
                .split([' ', '='])
                .next()
                .unwrap_or_default();
            match cmd.get_arguments().find(|a| a.get_long() == Some(long)) {
                Some(a) => {
                    let env = a
                        .get_env()
                        .map(|e| format!(", environment {}", e.to_string_lossy()))
                        .unwrap_or_default();
                    parts.push(format!(
                        "`{}` (flag --{long}{env}, or key `{}` in the config file)",
                        a.get_id(),
                        key_of(a).unwrap_or_default()
                    ));
                }
                None => parts.push(m.clone()),
            }
        }
    }
    if parts.is_empty() {
        return e.to_string();
    }
    format!("missing setting {}", parts.join(", "))
}

/// One resolved setting of a daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Its key.
    pub key: String,
    /// Its value, secrets masked; `None` when unset.
    pub value: Option<String>,
    /// `flag`, `env`, `file` or `default`.
    pub source: &'static str,
}

/// Every setting of `cmd` as `matches` resolved it, secrets masked.
pub fn resolved(
    cmd: &Command,
    matches: &ArgMatches,
    from_file: &BTreeSet<String>,
) -> Vec<Resolved> {
    let mut out = Vec::new();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(key) = key_of(arg) else { continue };
        if matches!(id, "help" | "version" | CONFIG_FLAG) {
            continue;
        }
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) if from_file.contains(id) => "file",
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "env",
            Some(ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        let raw: Option<Vec<String>> = matches.get_raw(id).map(|vs| {
            vs.map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        });
        let value = match (raw, arg.get_action()) {
            (_, ArgAction::SetTrue) => Some(matches.get_flag(id).to_string()),
            (None, _) => None,
            (Some(vs), _) if is_secret(arg) => Some(if vs.is_empty() {
                String::new()
            } else {
                "********".into()
            }),
            (Some(vs), _) => Some(vs.iter().map(|v| mask_url(v)).collect::<Vec<_>>().join(",")),
        };
        out.push(Resolved { key, value, source });
    }
    out
}

/// `url` (or `name=url`) with the password of its user info replaced by `********` (anything
/// else as is).
pub fn mask_url(v: &str) -> String {
    match url::Url::parse(v) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("********"));
            u.to_string()
        }
        Ok(_) => v.to_string(),
        Err(_) => match v.split_once('=') {
            Some((name, rest)) => format!("{name}={}", mask_url(rest)),
            None => v.to_string(),
        },
    }
}

fn has_password(v: &str) -> bool {
    let v = v.split_once('=').map(|(_, u)| u).unwrap_or(v);
    url::Url::parse(v).is_ok_and(|u| u.password().is_some())
}

fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let flag = format!("--{CONFIG_FLAG}");
    let prefix = format!("--{CONFIG_FLAG}=");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(s) = a.to_str() else { continue };
        if s == "--" {
            break;
        }
        if s == flag {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = s.strip_prefix(&prefix) {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os(CONFIG_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The long flags `args` gives (`--name` or `--name=value`).
fn given_longs(args: &[OsString]) -> BTreeSet<&str> {
    args.iter()
        .filter_map(|a| a.to_str())
        .take_while(|a| *a != "--")
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a))
        .collect()
}

fn toml_values(v: &toml::Value) -> Result<Vec<String>, String> {
    fn scalar(v: &toml::Value) -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            other => Err(format!(
                "expected a string, number or boolean, found {}",
                other.type_str()
            )),
        }
    }
    match v {
        toml::Value::Array(a) => a.iter().map(scalar).collect(),
        other => Ok(vec![scalar(other)?]),
    }
}

/// Check `v` with the argument's own parser (each part, for a delimited one).
fn check_value(arg: &clap::Arg, v: &str) -> Result<(), String> {
    if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
        return match v {
            "true" | "false" => Ok(()),
            _ => Err(format!("expected true or false, found {v:?}")),
        };
    }
    let parts: Vec<&str> = match arg.get_value_delimiter() {
        Some(d) => v.split(d).collect(),
        None => vec![v],
    };
    // The argument alone, without its relations to others, parses the value as it would.
    let single = arg
        .clone()
        .required(false)
        .requires(clap::builder::Resettable::<clap::Id>::Reset)
        .conflicts_with(clap::builder::Resettable::<clap::Id>::Reset)
        .required_unless_present(clap::builder::Resettable::<clap::Id>::Reset)
        .overrides_with(clap::builder::Resettable::<clap::Id>::Reset)
        .env(None)
        .default_value(None)
        .value_delimiter(None);
    let long = arg.get_long().unwrap_or_default().to_string();
    let probe = Command::new("config").no_binary_name(true).arg(single);
    for p in parts {
        probe
            .clone()
            .try_get_matches_from([format!("--{long}"), p.to_string()])
            .map_err(|e| {
                let msg = e.render().to_string();
                let first = msg.lines().next().unwrap_or_default();
                first.trim_start_matches("error: ").to_string()
            })?;
    }
    Ok(())
}

/// `Ok` when `file` (holding the secret of setting `key`) is readable by its owner only.
pub fn check_private(file: &Path, key: &str) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file)
        .map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(ConfigError::Exposed {
            file: file.to_path_buf(),
            key: key.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Demo {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, default_value = "./d")]
        data_dir: PathBuf,
        #[arg(long, env = "SPG_DEMO_TIMEOUT_UNSET_IN_TESTS", default_value = "5m",
              value_parser = crate::parse_duration)]
        idle_timeout: std::time::Duration,
        #[arg(long = "safekeeper")]
        safekeepers: Vec<String>,
        #[arg(long)]
        autoscale: bool,
        #[arg(long, hide_env_values = true, env = "SPG_DEMO_KEY_UNSET_IN_TESTS")]
        api_key: Option<String>,
        #[arg(long)]
        name: String,
    }

    fn file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("c.toml");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn run(args: &[&str]) -> Result<(Demo, Expanded), ConfigError> {
        let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
        let e = expand(&Demo::command(), argv, 1)?;
        let d = Demo::try_parse_from(&e.argv).expect("parses");
        Ok((d, e))
    }

    #[test]
    fn file_values_fill_what_flags_leave() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(
            dir.path(),
            "data_dir = \"/x\"\nidle_timeout = \"3s\"\nsafekeeper = [\"a=https://a\", \"b=https://b\"]\nautoscale = true\nname = \"n\"\n",
            0o644,
        );
        let (d, e) = run(&["p", "--config", f.to_str().unwrap(), "--data-dir", "/y"]).unwrap();
        assert_eq!(d.data_dir, PathBuf::from("/y"), "the flag wins");
        assert_eq!(d.idle_timeout, std::time::Duration::from_secs(3));
        assert_eq!(d.safekeepers, vec!["a=https://a", "b=https://b"]);
        assert!(d.autoscale);
        assert!(e.from_file.contains("idle_timeout"));
        assert!(!e.from_file.contains("data_dir"));
        let m = Demo::command().try_get_matches_from(&e.argv).unwrap();
        let r = resolved(&Demo::command(), &m, &e.from_file);
        let get = |k: &str| r.iter().find(|x| x.key == k).unwrap().clone();
        assert_eq!(get("data_dir").source, "flag");
        assert_eq!(get("idle_timeout").source, "file");
        assert_eq!(get("name").value.as_deref(), Some("n"));
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), "name = \"n\"\nidel_timeout = \"3s\"\n", 0o600);
        let err = run(&["p", "--config", f.to_str().unwrap()]).unwrap_err();
        assert!(matches!(&err, ConfigError::UnknownKey { key, .. } if key == "idel_timeout"));
        assert!(err.to_string().contains("idel_timeout"), "{err}");

        let f = file(dir.path(), "name = \"n\"\nidle_timeout = \"soon\"\n", 0o600);
        let err = run(&["p", "--config", f.to_str().unwrap()]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Value { key, .. } if key == "idle_timeout"),
            "{err}"
        );

        let f = file(dir.path(), "name = [\"a\", \"b\"]\n", 0o600);
        let err = run(&["p", "--config", f.to_str().unwrap()]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Value { key, .. } if key == "name"),
            "{err}"
        );

        let f = file(dir.path(), "name = \"n\"\napi_key = \"s3cret\"\n", 0o644);
        let err = run(&["p", "--config", f.to_str().unwrap()]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Exposed { key, .. } if key == "api_key"),
            "{err}"
        );
        assert!(!err.to_string().contains("s3cret"));

        let f = file(dir.path(), "name = \n", 0o600);
        let err = run(&["p", "--config", f.to_str().unwrap()]).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    }

    #[test]
    fn secrets_are_masked() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(
            dir.path(),
            "name = \"n\"\napi_key = \"s3cret\"\nsafekeeper = [\"a=https://u:pw@a\"]\n",
            0o600,
        );
        let (_, e) = run(&["p", "--config", f.to_str().unwrap()]).unwrap();
        let m = Demo::command().try_get_matches_from(&e.argv).unwrap();
        let r = resolved(&Demo::command(), &m, &e.from_file);
        let shown = format!("{r:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("********"));
        assert_eq!(
            mask_url("postgres://u:pw@h/db"),
            "postgres://u:********@h/db"
        );
    }
}
