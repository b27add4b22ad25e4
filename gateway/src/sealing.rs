//! Payloads sealed at rest: the forms a message carries are stored encrypted, with an AEAD cipher
//! (XChaCha20-Poly1305, a random 24-byte nonce per message) under a key named by its id, so keys
//! can rotate. The message id is bound as associated data: a sealed payload moved to another
//! message's row does not open.
//!
//! A sealed payload is `[format 1][key id length][key id][nonce: 24 bytes][ciphertext and tag]`.
//! The header (format and key id) is authenticated too.
//!
//! Keys come from a key file (one key per line, `<key id> <base64 of 32 bytes>`, `#` comments;
//! readable only by its owner, checked like an SSH key) and/or from a secret given inline (the
//! same lines, separated by newlines or `;`). Old keys stay in the keyring to open what they
//! sealed; new payloads are sealed with the active key. Errors name key ids, never key material
//! and never payloads.

use std::{
    collections::BTreeMap,
    fmt,
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use base64::Engine as _;
use chacha20poly1305::{
    Key, KeyInit as _, XChaCha20Poly1305, XNonce,
    aead::{Aead as _, Generate as _, Payload},
};

/// The only sealed format so far.
const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const MAX_KEY_ID_LEN: usize = 64;
/// Domain separation of the associated data.
const AAD_CONTEXT: &[u8] = b"referral-hub sealed payload v1";

/// Why payload keys could not be loaded. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the payload key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the payload key file {path} can be read by other users (mode {mode:03o}); it must be readable only by its owner: chmod 600 {path}"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("the payload key file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{source_name}, line {line}: {reason}")]
    Syntax {
        source_name: String,
        line: usize,
        reason: String,
    },
    #[error("no payload keys: configure a key file or inline keys")]
    Empty,
    #[error("the active payload key {key_id} is not in the keyring")]
    UnknownActive { key_id: String },
    #[error(
        "the keyring holds {count} payload keys: name the one new payloads are sealed with (gateway.payload_active_key)"
    )]
    ActiveNotNamed { count: usize },
    #[error("cannot write the payload key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why a payload could not be sealed or opened. Names the key id at most.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error(
        "no payload key with id {key_id} in the keyring, but stored payloads are sealed with it: add the key back to the payload key file"
    )]
    UnknownKey { key_id: String },
    #[error("the sealed payload is not in a known format")]
    Malformed,
    #[error(
        "the sealed payload does not open with key {key_id}: it was sealed with another key of that id, for another message, or the stored bytes were changed"
    )]
    Rejected { key_id: String },
    #[error("the payload cannot be sealed")]
    Seal,
}

/// Where the keys come from.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeySources<'a> {
    /// The key file.
    pub file: Option<&'a Path>,
    /// Key lines given inline (a secret), separated by newlines or `;`.
    pub inline: Option<&'a str>,
    /// The key new payloads are sealed with; may be left out when there is one key.
    pub active: Option<&'a str>,
}

struct Keyring {
    keys: BTreeMap<String, XChaCha20Poly1305>,
    active: String,
}

/// The keyring and the active key: seals new payloads, opens stored ones.
#[derive(Clone)]
pub struct PayloadSealer(Arc<Keyring>);

impl fmt::Debug for PayloadSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PayloadSealer")
            .field("key_ids", &self.0.keys.keys().collect::<Vec<_>>())
            .field("active", &self.0.active)
            .finish()
    }
}

/// A sealed payload and the id of the key that sealed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub bytes: Vec<u8>,
}

fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Parses key lines (`<key id> <base64 key>`; blank lines and `#` comments skipped) into
/// `keys`. `split_semicolons` also splits lines at `;` (inline keys from the environment).
fn parse_keys(
    text: &str,
    source_name: &str,
    split_semicolons: bool,
    keys: &mut BTreeMap<String, [u8; 32]>,
) -> Result<(), KeyError> {
    let syntax = |line: usize, reason: String| KeyError::Syntax {
        source_name: source_name.to_owned(),
        line,
        reason,
    };
    let entries: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .flat_map(|(n, line)| {
            let parts: Vec<&str> = if split_semicolons {
                line.split(';').collect()
            } else {
                vec![line]
            };
            parts.into_iter().map(move |p| (n + 1, p))
        })
        .collect();
    for (line, entry) in entries {
        let entry = entry.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let mut fields = entry.split_whitespace();
        let (Some(id), Some(key), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(syntax(line, "expected `<key id> <base64 key>`".into()));
        };
        if !valid_key_id(id) {
            // The text is not echoed: it could be a key written in the wrong column.
            return Err(syntax(
                line,
                format!("a key id is 1 to {MAX_KEY_ID_LEN} letters, digits, '-', '_' or '.'"),
            ));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key)
            .map_err(|_| syntax(line, format!("the key {id} is not valid base64")))?;
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            syntax(
                line,
                format!("the key {id} must be 32 bytes, it is {}", bytes.len()),
            )
        })?;
        match keys.get(id) {
            Some(existing) if *existing != key => {
                return Err(syntax(
                    line,
                    format!("the key id {id} is given twice with different keys"),
                ));
            }
            _ => {
                keys.insert(id.to_owned(), key);
            }
        }
    }
    Ok(())
}

/// Reads a key file, refusing one that others can read (like an SSH private key).
fn read_key_file(path: &Path) -> Result<String, KeyError> {
    let read_err = |source| KeyError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_file() {
        return Err(KeyError::NotAFile {
            path: path.to_owned(),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
    }
    std::fs::read_to_string(path).map_err(read_err)
}

/// Creates a key file holding one new random key `key_id`, readable only by its owner (mode
/// 0600). Refuses to overwrite an existing file.
/// Writes a new secret (base64 of 32 random bytes, one line) to a new file readable only by its
/// owner: the development child-link secret.
pub fn generate_secret_file(path: &Path) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    let secret = base64::engine::general_purpose::STANDARD.encode(<[u8; 32]>::generate());
    writeln!(file, "{secret}")?;
    file.sync_all()
}

/// A secret given as base64: at least 32 bytes.
pub fn decode_secret(text: &str) -> Result<Vec<u8>, String> {
    let secret = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| "not base64".to_owned())?;
    if secret.len() < 32 {
        return Err("shorter than 32 bytes".to_owned());
    }
    Ok(secret)
}

pub fn generate_key_file(path: &Path, key_id: &str) -> Result<(), KeyError> {
    let write_err = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    if !valid_key_id(key_id) {
        return Err(KeyError::Syntax {
            source_name: "the generated key".into(),
            line: 1,
            reason: "invalid key id".into(),
        });
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(write_err)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(write_err)?;
    let key = base64::engine::general_purpose::STANDARD.encode(<[u8; 32]>::generate());
    write!(
        file,
        "# referral-hub payload keys: one per line, `<key id> <base64 of 32 random bytes>`.\n\
         # Keep a key while payloads sealed with it are stored; new payloads use the active key.\n\
         {key_id} {key}\n"
    )
    .and_then(|()| file.sync_all())
    .map_err(write_err)
}

impl PayloadSealer {
    /// A keyring of `keys`, sealing with `active` (which may be left out when there is one key).
    pub fn from_keys(
        keys: impl IntoIterator<Item = (String, [u8; 32])>,
        active: Option<&str>,
    ) -> Result<Self, KeyError> {
        let keys: BTreeMap<String, [u8; 32]> = keys.into_iter().collect();
        Self::build(keys, active)
    }

    fn build(keys: BTreeMap<String, [u8; 32]>, active: Option<&str>) -> Result<Self, KeyError> {
        let active = match active.map(str::trim).filter(|a| !a.is_empty()) {
            Some(a) if keys.contains_key(a) => a.to_owned(),
            Some(a) => {
                return Err(KeyError::UnknownActive {
                    key_id: a.to_owned(),
                });
            }
            None if keys.len() == 1 => keys.keys().next().cloned().unwrap_or_default(),
            None if keys.is_empty() => return Err(KeyError::Empty),
            None => return Err(KeyError::ActiveNotNamed { count: keys.len() }),
        };
        let keys = keys
            .into_iter()
            .map(|(id, key)| (id, XChaCha20Poly1305::new(&Key::from(key))))
            .collect();
        Ok(Self(Arc::new(Keyring { keys, active })))
    }

    /// Loads the keyring from a key file and/or inline keys (both may be given; a key id given in
    /// both must name the same key).
    pub fn load(sources: KeySources<'_>) -> Result<Self, KeyError> {
        let mut keys = BTreeMap::new();
        if let Some(path) = sources.file {
            let text = read_key_file(path)?;
            parse_keys(
                &text,
                &format!("the payload key file {}", path.display()),
                false,
                &mut keys,
            )?;
        }
        if let Some(inline) = sources.inline {
            parse_keys(inline, "the inline payload keys", true, &mut keys)?;
        }
        Self::build(keys, sources.active)
    }

    /// A keyring of one random key held only in memory: what it seals cannot be opened by any
    /// other keyring, so it suits only a store that lives no longer than this process (unit
    /// tests). Deployments load their keys with [`PayloadSealer::load`].
    pub fn ephemeral() -> Self {
        let id = format!(
            "ephemeral-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let keys = BTreeMap::from([(id.clone(), <[u8; 32]>::generate())]);
        // One key, so the active one is found.
        match Self::build(keys, Some(&id)) {
            Ok(sealer) => sealer,
            Err(_) => unreachable!("a one-key keyring has its active key"),
        }
    }

    /// The id of the key new payloads are sealed with.
    pub fn active_key_id(&self) -> &str {
        &self.0.active
    }

    /// Whether the keyring holds `key_id`.
    pub fn has_key(&self, key_id: &str) -> bool {
        self.0.keys.contains_key(key_id)
    }

    /// Every key id of the keyring.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.0.keys.keys().map(String::as_str)
    }

    /// Seals `plaintext` for message `message_id` with the active key.
    pub fn seal(&self, message_id: &str, plaintext: &[u8]) -> Result<Sealed, SealError> {
        let key_id = self.0.active.as_str();
        let cipher = self
            .0
            .keys
            .get(key_id)
            .ok_or_else(|| SealError::UnknownKey {
                key_id: key_id.to_owned(),
            })?;
        let mut bytes = header(key_id);
        let nonce = XNonce::generate();
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &associated_data(message_id, &bytes),
                },
            )
            .map_err(|_| SealError::Seal)?;
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&ciphertext);
        Ok(Sealed {
            key_id: key_id.to_owned(),
            bytes,
        })
    }

    /// Opens a payload sealed for message `message_id`, with whichever key of the keyring sealed
    /// it.
    pub fn open(&self, message_id: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let (key_id, header_len) = parse_header(sealed)?;
        let cipher = self
            .0
            .keys
            .get(key_id)
            .ok_or_else(|| SealError::UnknownKey {
                key_id: key_id.to_owned(),
            })?;
        let rest = &sealed[header_len..];
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| SealError::Malformed)?;
        cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: &associated_data(message_id, &sealed[..header_len]),
                },
            )
            .map_err(|_| SealError::Rejected {
                key_id: key_id.to_owned(),
            })
    }
}

/// The key id a sealed payload names, without opening it.
pub fn sealed_key_id(sealed: &[u8]) -> Result<&str, SealError> {
    parse_header(sealed).map(|(id, _)| id)
}

fn header(key_id: &str) -> Vec<u8> {
    let mut header = Vec::with_capacity(2 + key_id.len() + NONCE_LEN);
    header.push(FORMAT_V1);
    // Key ids are at most 64 bytes (checked when the keyring is built).
    header.push(u8::try_from(key_id.len()).unwrap_or(u8::MAX));
    header.extend_from_slice(key_id.as_bytes());
    header
}

/// The key id and the header's length.
fn parse_header(sealed: &[u8]) -> Result<(&str, usize), SealError> {
    let [format, len, rest @ ..] = sealed else {
        return Err(SealError::Malformed);
    };
    let len = usize::from(*len);
    if *format != FORMAT_V1 || len == 0 || len > MAX_KEY_ID_LEN || rest.len() < len {
        return Err(SealError::Malformed);
    }
    let key_id = std::str::from_utf8(&rest[..len]).map_err(|_| SealError::Malformed)?;
    if !valid_key_id(key_id) {
        return Err(SealError::Malformed);
    }
    Ok((key_id, 2 + len))
}

/// What is authenticated besides the ciphertext: the message the payload belongs to, and the
/// header (format and key id).
fn associated_data(message_id: &str, header: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_CONTEXT.len() + message_id.len() + header.len() + 2);
    aad.extend_from_slice(AAD_CONTEXT);
    aad.push(0);
    aad.extend_from_slice(message_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(header);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: &[u8] = "Айгерим Нурланқызы, ИИН 120304500123, ул. Абая 10".as_bytes();

    fn key(byte: u8) -> [u8; 32] {
        [byte; 32]
    }

    fn sealer(keys: &[(&str, u8)], active: &str) -> PayloadSealer {
        PayloadSealer::from_keys(
            keys.iter().map(|(id, b)| ((*id).to_owned(), key(*b))),
            Some(active),
        )
        .unwrap()
    }

    #[test]
    fn a_sealed_payload_opens_and_does_not_show_the_plaintext() {
        let s = sealer(&[("k1", 1)], "k1");
        let sealed = s.seal("m-1", FORM).unwrap();
        assert_eq!(sealed.key_id, "k1");
        assert_eq!(sealed_key_id(&sealed.bytes).unwrap(), "k1");
        assert!(
            !sealed
                .bytes
                .windows(8)
                .any(|w| FORM.windows(8).any(|f| f == w)),
            "no 8 bytes of the plaintext appear in the sealed form"
        );
        assert_eq!(s.open("m-1", &sealed.bytes).unwrap(), FORM);
        // A fresh nonce each time: the same payload seals differently.
        assert_ne!(s.seal("m-1", FORM).unwrap().bytes, sealed.bytes);
    }

    #[test]
    fn another_key_of_the_same_id_does_not_open_it() {
        let sealed = sealer(&[("k1", 1)], "k1").seal("m-1", FORM).unwrap();
        let other = sealer(&[("k1", 2)], "k1");
        assert_eq!(
            other.open("m-1", &sealed.bytes),
            Err(SealError::Rejected {
                key_id: "k1".into()
            })
        );
        let without = sealer(&[("k2", 1)], "k2");
        let err = without.open("m-1", &sealed.bytes).unwrap_err();
        assert_eq!(
            err,
            SealError::UnknownKey {
                key_id: "k1".into()
            }
        );
        assert!(err.to_string().contains("k1"), "the error names the key id");
    }

    #[test]
    fn a_changed_byte_anywhere_is_refused() {
        let s = sealer(&[("k1", 1), ("k2", 2)], "k1");
        let sealed = s.seal("m-1", FORM).unwrap().bytes;
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 0x01;
            assert!(
                s.open("m-1", &tampered).is_err(),
                "a change of byte {i} is noticed"
            );
        }
        assert!(s.open("m-1", &sealed[..sealed.len() - 1]).is_err());
        assert!(s.open("m-1", &[]).is_err());
    }

    #[test]
    fn a_payload_moved_to_another_message_does_not_open() {
        let s = sealer(&[("k1", 1)], "k1");
        let sealed = s.seal("m-1", FORM).unwrap();
        assert_eq!(
            s.open("m-2", &sealed.bytes),
            Err(SealError::Rejected {
                key_id: "k1".into()
            })
        );
    }

    #[test]
    fn after_rotation_old_payloads_open_and_new_ones_use_the_new_key() {
        let before = sealer(&[("2026-a", 1)], "2026-a");
        let old = before.seal("m-1", FORM).unwrap();
        let after = sealer(&[("2026-a", 1), ("2026-b", 2)], "2026-b");
        assert_eq!(after.active_key_id(), "2026-b");
        assert_eq!(after.open("m-1", &old.bytes).unwrap(), FORM);
        let new = after.seal("m-2", FORM).unwrap();
        assert_eq!(new.key_id, "2026-b");
        assert_eq!(sealed_key_id(&new.bytes).unwrap(), "2026-b");
        // The retired key alone cannot open what the new key sealed.
        assert!(matches!(
            before.open("m-2", &new.bytes),
            Err(SealError::UnknownKey { .. })
        ));
    }

    #[test]
    fn key_files_are_parsed_checked_and_generated_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("payload-keys");
        generate_key_file(&path, "dev-1").unwrap();
        assert!(
            generate_key_file(&path, "dev-1").is_err(),
            "never overwritten"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let s = PayloadSealer::load(KeySources {
            file: Some(&path),
            ..KeySources::default()
        })
        .unwrap();
        assert_eq!(s.active_key_id(), "dev-1");
        let sealed = s.seal("m", b"x").unwrap();
        assert_eq!(s.open("m", &sealed.bytes).unwrap(), b"x");
        assert_eq!(
            format!("{s:?}"),
            r#"PayloadSealer { key_ids: ["dev-1"], active: "dev-1" }"#,
            "the keys never print"
        );

        // A second key inline, and the active one named.
        let k2 = base64::engine::general_purpose::STANDARD.encode(key(7));
        let inline = format!("k-2 {k2}; # comment");
        let both = PayloadSealer::load(KeySources {
            file: Some(&path),
            inline: Some(&inline),
            active: Some("k-2"),
        })
        .unwrap();
        assert_eq!(both.key_ids().collect::<Vec<_>>(), ["dev-1", "k-2"]);
        assert_eq!(both.open("m", &sealed.bytes).unwrap(), b"x");
        assert!(matches!(
            PayloadSealer::load(KeySources {
                file: Some(&path),
                inline: Some(&inline),
                active: None,
            }),
            Err(KeyError::ActiveNotNamed { count: 2 })
        ));
        assert!(matches!(
            PayloadSealer::load(KeySources {
                inline: Some(&inline),
                active: Some("k-3"),
                ..KeySources::default()
            }),
            Err(KeyError::UnknownActive { .. })
        ));

        // Syntax errors name the line, never the key.
        for (bad, what) in [
            ("k1", "expected"),
            ("k1 not-base64!", "base64"),
            ("k1 AAAA", "32 bytes"),
            (format!("{k2} k1").as_str(), "key id"),
        ] {
            let err = PayloadSealer::load(KeySources {
                inline: Some(bad),
                ..KeySources::default()
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains(what), "{err}");
            assert!(!err.contains(&k2), "{err}");
        }
        assert!(matches!(
            PayloadSealer::load(KeySources::default()),
            Err(KeyError::Empty)
        ));
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("payload-keys");
        generate_key_file(&path, "k1").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = PayloadSealer::load(KeySources {
            file: Some(&path),
            ..KeySources::default()
        })
        .unwrap_err();
        assert!(matches!(err, KeyError::Permissions { mode: 0o640, .. }));
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
