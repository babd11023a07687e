//! Where the config file is: `--config`, `$CTSENTRY_CONFIG`, `config/ctsentry.toml` in the
//! working directory (a checkout), `/etc/ctsentry/ctsentry.toml` (an installed box).

use std::path::{Path, PathBuf};

use super::normalize;

/// The environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "CTSENTRY_CONFIG";
/// The config of a checkout, relative to the working directory.
pub const CHECKOUT_CONFIG: &str = "config/ctsentry.toml";
/// The config of an installed box.
pub const SYSTEM_CONFIG: &str = "/etc/ctsentry/ctsentry.toml";

/// Where the config file was found, and by which rule (DESIGN.md: `--config`,
/// `$CTSENTRY_CONFIG`, `config/ctsentry.toml` in the working directory, `/etc/ctsentry/ctsentry.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// Given with `--config`.
    Flag(PathBuf),
    /// Named by `$CTSENTRY_CONFIG`.
    Env(PathBuf),
    /// `config/ctsentry.toml` in the working directory (a checkout).
    Checkout(PathBuf),
    /// `/etc/ctsentry/ctsentry.toml` (an installed box).
    System(PathBuf),
    /// None of them exists: built-in defaults.
    None,
}

impl ConfigSource {
    /// Applies the lookup order. An explicit `--config` or `$CTSENTRY_CONFIG` is taken even when
    /// the file is missing (loading it then says so); the two default places only when they exist.
    pub fn locate(flag: Option<&Path>) -> ConfigSource {
        if let Some(p) = flag {
            return ConfigSource::Flag(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
            return ConfigSource::Env(PathBuf::from(p));
        }
        if Path::new(CHECKOUT_CONFIG).is_file() {
            return ConfigSource::Checkout(PathBuf::from(CHECKOUT_CONFIG));
        }
        if Path::new(SYSTEM_CONFIG).is_file() {
            return ConfigSource::System(PathBuf::from(SYSTEM_CONFIG));
        }
        ConfigSource::None
    }

    /// The file, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigSource::Flag(p) | ConfigSource::Env(p) | ConfigSource::Checkout(p) | ConfigSource::System(p) => Some(p),
            ConfigSource::None => None,
        }
    }
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::Flag(p) => write!(f, "{} (--config)", p.display()),
            ConfigSource::Env(p) => write!(f, "{} (${CONFIG_ENV})", p.display()),
            ConfigSource::Checkout(p) => write!(f, "{} (working directory)", normalize(p).display()),
            ConfigSource::System(p) => write!(f, "{}", p.display()),
            ConfigSource::None => write!(f, "none: no --config, no ${CONFIG_ENV}, no ./{CHECKOUT_CONFIG}, no {SYSTEM_CONFIG}"),
        }
    }
}
