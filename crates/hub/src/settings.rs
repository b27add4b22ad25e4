//! What every command starts from: the hub's configuration (file, environment, command-line
//! overrides) and the agency directory, with the demo district compiled in as a fallback so that
//! `referral-hub up` works from any directory.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use jiff::tz::TimeZone;
use referral_core::{
    config::{HubConfig, Mode},
    directory::Directory,
};

/// The demo district, as shipped in `deploy/demo-district.toml`.
pub const EMBEDDED_DIRECTORY: &str = include_str!("../../../deploy/demo-district.toml");

/// The directory file the configuration names when nothing else is configured.
const DEFAULT_DIRECTORY_FILE: &str = "deploy/demo-district.toml";

/// The global options every command shares.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
}

/// The loaded configuration and where the directory came from.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: HubConfig,
    pub overrides: Overrides,
}

/// Where the agency directory was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectorySource {
    File(PathBuf),
    /// The copy of `deploy/demo-district.toml` compiled into the binary.
    Embedded,
}

impl std::fmt::Display for DirectorySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Embedded => f.write_str("the built-in demo district"),
        }
    }
}

impl Settings {
    /// Reads the configuration file (when given) and the environment, then applies `--data-dir`.
    pub fn load(overrides: Overrides) -> anyhow::Result<Self> {
        let mut config = HubConfig::load(overrides.config_file.as_deref())?;
        if let Some(dir) = &overrides.data_dir {
            config.data_dir = dir.clone();
        }
        Ok(Self { config, overrides })
    }

    pub fn development(&self) -> bool {
        self.config.mode == Mode::Development
    }

    /// The agency directory: the configured file, or the built-in demo district when the default
    /// file is not there (a configured file that is missing is an error).
    pub fn directory(&self) -> anyhow::Result<(Directory, DirectorySource)> {
        let path = &self.config.directory_file;
        if path == Path::new(DEFAULT_DIRECTORY_FILE) && !path.exists() {
            let directory = Directory::parse(EMBEDDED_DIRECTORY)
                .context("the built-in demo district is not valid")?;
            return Ok((directory, DirectorySource::Embedded));
        }
        let directory = Directory::load(path)?;
        Ok((directory, DirectorySource::File(path.clone())))
    }

    /// The global options to repeat in a hint, so that a suggested command reaches the same hub:
    /// `--config` and `--data-dir` when they were given.
    pub fn hint_prefix(&self) -> String {
        let mut prefix = String::from("referral-hub");
        if let Some(file) = &self.overrides.config_file {
            prefix.push_str(&format!(
                " --config {}",
                shell_word(&file.display().to_string())
            ));
        }
        if let Some(dir) = &self.overrides.data_dir {
            prefix.push_str(&format!(
                " --data-dir {}",
                shell_word(&dir.display().to_string())
            ));
        }
        prefix
    }
}

/// The time zone of an agency's district (Asia/Almaty when unknown).
pub fn agency_time_zone(directory: Option<&Directory>, agency: &str) -> TimeZone {
    directory
        .and_then(|d| d.agency(agency).and_then(|a| d.district(&a.district)))
        .and_then(|d| TimeZone::get(&d.time_zone).ok())
        .or_else(|| TimeZone::get("Asia/Almaty").ok())
        .unwrap_or(TimeZone::UTC)
}

/// `s` quoted for a POSIX shell when it needs it.
pub fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_directory_is_the_demo_district() {
        let directory = Directory::parse(EMBEDDED_DIRECTORY).unwrap();
        assert!(directory.commission_of("demo-district").is_some());
        assert_eq!(
            agency_time_zone(Some(&directory), "school-1").iana_name(),
            Some("Asia/Almaty")
        );
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("/tmp/hubdemo"), "/tmp/hubdemo");
        assert_eq!(shell_word("my dir"), "'my dir'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }
}
