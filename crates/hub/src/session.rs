//! The CLI's session: who is logged in, with which token, at which agency service. Kept in
//! `<data-dir>/cli/session.json`, readable by its owner only (the token is a credential).

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A logged-in user. `Debug` does not print the token.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    pub agency: String,
    pub user: String,
    /// The bearer token sent with every call.
    pub token: String,
    /// The agency service's staff API, e.g. `https://127.0.0.1:7402`.
    pub endpoint: String,
    /// When the token expires, if known.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("agency", &self.agency)
            .field("user", &self.user)
            .field("token", &"[redacted]")
            .field("endpoint", &self.endpoint)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// `<data-dir>/cli/session.json`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("cli").join("session.json")
}

impl Session {
    /// Writes the session file (mode 0600, in a directory of mode 0700), replacing any other.
    pub fn save(&self, file: &Path) -> anyhow::Result<()> {
        let dir = file.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
        let text = serde_json::to_string_pretty(self)?;
        // Write a fresh file with mode 0600 from the start, then move it into place, so the token
        // is never readable by others, not even for a moment.
        let tmp = file.with_extension("json.tmp");
        let _ = fs::remove_file(&tmp);
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        out.write_all(text.as_bytes())
            .and_then(|()| out.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, file).with_context(|| format!("cannot write {}", file.display()))?;
        Ok(())
    }

    /// Reads the session file; `None` when there is none.
    pub fn load(file: &Path) -> anyhow::Result<Option<Self>> {
        let text = match fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
        };
        let session = serde_json::from_str(&text).with_context(|| {
            format!(
                "the session file {} is damaged; log in again",
                file.display()
            )
        })?;
        Ok(Some(session))
    }

    /// Whether the token has expired at `now` (unknown expiry counts as valid: the service decides).
    pub fn expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path());
        assert_eq!(Session::load(&file).unwrap(), None);
        let session = Session {
            agency: "school-1".into(),
            user: "director".into(),
            token: "secret.token.value".into(),
            endpoint: "https://127.0.0.1:7402".into(),
            expires_at: Some("2025-03-10T13:00:00Z".parse().unwrap()),
        };
        session.save(&file).unwrap();
        session.save(&file).unwrap(); // replacing works
        let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(file.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert_eq!(Session::load(&file).unwrap(), Some(session.clone()));
        assert!(!format!("{session:?}").contains("secret"));
        assert!(session.expired("2025-03-10T13:00:00Z".parse().unwrap()));
        assert!(!session.expired("2025-03-10T12:59:59Z".parse().unwrap()));
    }
}
