//! Credential encryption at rest.
//!
//! A [`Vault`] holds one ChaCha20-Poly1305 key, kept hex-encoded in a key file that only
//! its owner may read (mode 0600). [`Vault::seal`] turns a password into
//! `hex(nonce || ciphertext)`; [`Vault::open`] turns it back into a [`Secret`], or fails
//! with [`VaultError::Decrypt`] if the key is wrong, the data was altered, or the
//! associated data (AAD) differs from the one it was sealed with. Callers bind each
//! ciphertext to its owner by passing the user's bare JID (and what the value is) as the
//! AAD, so a ciphertext copied into another user's record does not decrypt.
//!
//! The key file lives apart from the data it protects: losing it makes every sealed value
//! unreadable, and leaking it together with the store leaks every password.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bridge_core::Secret;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// Length of a ChaCha20-Poly1305 key in bytes.
const KEY_LEN: usize = 32;
/// Length of the (random, per-seal) nonce in bytes: 96 bits.
const NONCE_LEN: usize = 12;
/// Length of the Poly1305 authentication tag appended to every ciphertext.
const TAG_LEN: usize = 16;

/// Why a key file could not be used or a sealed value could not be opened.
///
/// Every message names the key file, so an operator knows which file to look at. None
/// contains key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The key file could not be read, created or written.
    #[error("cannot {action} the key file {}: {source}", key_file.display())]
    Io {
        /// What was being attempted, e.g. "read" or "create".
        action: &'static str,
        /// The key file concerned.
        key_file: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The key file exists but does not hold a key.
    #[error(
        "the key file {} is malformed: {reason}; it must contain exactly 64 hex characters \
         (a 32-byte key)",
        key_file.display()
    )]
    Malformed {
        /// The key file concerned.
        key_file: PathBuf,
        /// What is wrong with it (never its contents).
        reason: String,
    },
    /// The key file can be accessed by group or others.
    #[error(
        "the key file {} has mode {mode:04o}, which lets group or others access it; \
         it should be 0600 (run `chmod 600 {}`)",
        key_file.display(),
        key_file.display()
    )]
    Permissions {
        /// The key file concerned.
        key_file: PathBuf,
        /// Its permission bits (`st_mode & 0o7777`).
        mode: u32,
    },
    /// A sealed value did not decrypt: wrong key, wrong associated data, or altered data.
    #[error(
        "cannot decrypt a sealed value with the key file {}: {reason}",
        key_file.display()
    )]
    Decrypt {
        /// The key file whose key was used.
        key_file: PathBuf,
        /// Why, in general terms.
        reason: &'static str,
    },
}

/// A ChaCha20-Poly1305 key loaded from a key file, used to seal credentials at rest.
///
/// `Debug` shows only the key file path, never the key.
pub struct Vault {
    cipher: ChaCha20Poly1305,
    key_file: PathBuf,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Loads the key from `key_file`, creating the file with a fresh random key if it
    /// does not exist.
    ///
    /// A new key file is written with mode 0600 and appears atomically: it is written and
    /// fsynced under a temporary name (created with `O_CREAT|O_EXCL`, mode 0600) and then
    /// hard-linked into place, which fails rather than replacing a key file that appeared
    /// in the meantime (in which case that one is loaded). The directory is fsynced
    /// afterwards. So a crash never leaves an empty or partial key file behind, and two
    /// processes racing to create the key end up with the same key.
    ///
    /// An existing key file is refused if group or others have any access to it, or if it
    /// does not hold exactly 64 hex characters (surrounding whitespace is ignored).
    pub fn open_or_create(key_file: &Path) -> Result<Vault, VaultError> {
        match Self::load(key_file) {
            Err(VaultError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Self::create(key_file)
            }
            other => other,
        }
    }

    /// Loads the key from an existing `key_file`; never creates one.
    ///
    /// Fails with [`VaultError::Io`] (kind `NotFound`) if the file does not exist, and
    /// like [`Vault::open_or_create`] if it is malformed or too permissive.
    pub fn load(key_file: &Path) -> Result<Vault, VaultError> {
        let io_err = |action, source| VaultError::Io {
            action,
            key_file: key_file.to_owned(),
            source,
        };
        let file = File::open(key_file).map_err(|e| io_err("read", e))?;
        let metadata = file.metadata().map_err(|e| io_err("read", e))?;
        if !metadata.is_file() {
            return Err(VaultError::Malformed {
                key_file: key_file.to_owned(),
                reason: "it is not a regular file".into(),
            });
        }
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(VaultError::Permissions {
                key_file: key_file.to_owned(),
                mode,
            });
        }
        // A key file is 65 bytes; reading a little more is enough to report a wrong length
        // without slurping whatever large file the path may point to by mistake.
        let mut contents = Vec::with_capacity(128);
        file.take(4096)
            .read_to_end(&mut contents)
            .map_err(|e| io_err("read", e))?;
        let key = parse_key(&contents).map_err(|reason| VaultError::Malformed {
            key_file: key_file.to_owned(),
            reason,
        })?;
        Ok(Vault::from_key(&key, key_file))
    }

    fn create(key_file: &Path) -> Result<Vault, VaultError> {
        let io_err = |action, source| VaultError::Io {
            action,
            key_file: key_file.to_owned(),
            source,
        };
        let key = ChaCha20Poly1305::generate_key(&mut OsRng);
        let mut encoded = hex::encode(key.as_slice());
        encoded.push('\n');

        let dir = match key_file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let file_name = key_file
            .file_name()
            .ok_or_else(|| VaultError::Malformed {
                key_file: key_file.to_owned(),
                reason: "the path does not name a file".into(),
            })?
            .to_string_lossy();
        let tmp = dir.join(format!(
            ".{file_name}.tmp-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));

        let write_tmp = || -> io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            // The mode given to open() is filtered by the umask, which can only remove
            // bits; set it explicitly anyway so the file is exactly 0600.
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
            file.write_all(encoded.as_bytes())?;
            file.sync_all()
        };
        let linked = write_tmp().and_then(|()| fs::hard_link(&tmp, key_file));
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            // Someone else created the key file first: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Self::load(key_file),
            Err(e) => return Err(io_err("create", e)),
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("sync the directory of", e))?;
        tracing::info!(key_file = %key_file.display(), "created a new credential key file");
        Ok(Vault::from_key(&key, key_file))
    }

    fn from_key(key: &Key, key_file: &Path) -> Vault {
        Vault {
            cipher: ChaCha20Poly1305::new(key),
            key_file: key_file.to_owned(),
        }
    }

    /// The key file this vault's key came from.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// Encrypts `plaintext`, binding it to `aad`, under a fresh random 96-bit nonce.
    ///
    /// Returns `hex(nonce || ciphertext || tag)`. The same `aad` must be passed to
    /// [`Vault::open`].
    pub fn seal(&self, plaintext: &str, aad: &[u8]) -> String {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad,
                },
            )
            .expect("ChaCha20-Poly1305 encryption only fails for inputs over 256 GiB");
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        hex::encode(out)
    }

    /// Decrypts a value produced by [`Vault::seal`] with the same key and `aad`.
    ///
    /// Anything else (another key, another `aad`, a single altered bit, bad hex, a
    /// truncated value) fails with [`VaultError::Decrypt`]; it never yields garbage.
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Secret, VaultError> {
        let decrypt_err = |reason| VaultError::Decrypt {
            key_file: self.key_file.clone(),
            reason,
        };
        let bytes = hex::decode(sealed).map_err(|_| decrypt_err("the value is not hex"))?;
        if bytes.len() < NONCE_LEN + TAG_LEN {
            return Err(decrypt_err("the value is too short to be sealed data"));
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let plaintext = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| {
                decrypt_err(
                    "authentication failed (wrong key, value sealed for another record, \
                     or altered data)",
                )
            })?;
        String::from_utf8(plaintext)
            .map(Secret::new)
            .map_err(|_| decrypt_err("the decrypted value is not UTF-8"))
    }
}

/// Parses a key file's contents: 64 hex characters, optionally surrounded by whitespace.
/// The error never quotes the contents.
fn parse_key(contents: &[u8]) -> Result<Key, String> {
    let text = std::str::from_utf8(contents)
        .map_err(|_| "it is not text".to_string())?
        .trim();
    if text.len() != 2 * KEY_LEN {
        return Err(format!("it has {} characters", text.len()));
    }
    let mut key = Key::default();
    hex::decode_to_slice(text, key.as_mut_slice())
        .map_err(|_| "it contains characters that are not hex digits".to_string())?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn write_key_file(path: &Path, contents: &str, mode: u32) {
        fs::write(path, contents).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn creates_a_0600_key_file_of_64_hex_chars() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let vault = Vault::open_or_create(&path).unwrap();
        assert_eq!(vault.key_file(), path);
        assert_eq!(mode_of(&path), 0o600);
        let contents = fs::read_to_string(&path).unwrap();
        let key = contents.trim_end();
        assert_eq!(key.len(), 64);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
        // Nothing but the key file is left in the directory.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("key")]);
    }

    #[test]
    fn reopening_uses_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let first = Vault::open_or_create(&path).unwrap();
        let before = fs::read(&path).unwrap();
        let sealed = first.seal("hunter2", b"alice@example.org");
        let second = Vault::open_or_create(&path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), before, "the key file was rewritten");
        let third = Vault::load(&path).unwrap();
        for v in [&second, &third] {
            assert_eq!(v.open(&sealed, b"alice@example.org").unwrap().expose(), "hunter2");
        }
    }

    #[test]
    fn racing_creators_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let vaults: Vec<Vault> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| Vault::open_or_create(&path).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let sealed = vaults[0].seal("pw", b"aad");
        for v in &vaults {
            assert_eq!(v.open(&sealed, b"aad").unwrap().expose(), "pw");
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn load_does_not_create() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let err = Vault::load(&path).unwrap_err();
        assert!(
            matches!(&err, VaultError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert!(err.to_string().contains(&path.display().to_string()));
        assert!(!path.exists());
    }

    #[test]
    fn refuses_a_key_file_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_key_file(&path, &"ab".repeat(32), 0o644);
        let err = Vault::open_or_create(&path).unwrap_err();
        assert!(
            matches!(err, VaultError::Permissions { mode: 0o644, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("0644"), "{msg}");
        assert!(msg.contains("0600"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        // Group-readable only is refused too, and the file is left alone.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            Vault::open_or_create(&path),
            Err(VaultError::Permissions { mode: 0o640, .. })
        ));
        assert_eq!(fs::read_to_string(&path).unwrap(), "ab".repeat(32));
        // 0400 is fine.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        Vault::open_or_create(&path).unwrap();
    }

    #[test]
    fn refuses_a_malformed_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let secretish = "z".repeat(64);
        for bad in ["", "abcd", &"ab".repeat(33), &secretish, "\u{e9}"] {
            write_key_file(&path, bad, 0o600);
            let err = Vault::open_or_create(&path).unwrap_err();
            assert!(matches!(err, VaultError::Malformed { .. }), "{bad:?}: {err:?}");
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("64 hex characters"), "{msg}");
            assert!(!msg.contains(&secretish), "the message quotes the key file: {msg}");
        }
        // Not overwritten by open_or_create.
        assert_eq!(fs::read_to_string(&path).unwrap(), "\u{e9}");
        // A trailing newline (as `echo` writes) is accepted.
        write_key_file(&path, &format!("{}\n", "0f".repeat(32)), 0o600);
        Vault::open_or_create(&path).unwrap();
    }

    #[test]
    fn seal_open_round_trip_with_fresh_nonces() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open_or_create(&dir.path().join("key")).unwrap();
        for plaintext in ["", "hunter2", "pässwörd with spaces \u{1f511}"] {
            let a = vault.seal(plaintext, b"alice@example.org");
            let b = vault.seal(plaintext, b"alice@example.org");
            assert_ne!(a, b, "nonce reused");
            assert_eq!(a.len(), 2 * (NONCE_LEN + plaintext.len() + TAG_LEN));
            assert!(!a.contains(&hex::encode(plaintext)) || plaintext.is_empty());
            assert_eq!(vault.open(&a, b"alice@example.org").unwrap().expose(), plaintext);
            assert_eq!(vault.open(&b, b"alice@example.org").unwrap().expose(), plaintext);
        }
    }

    #[test]
    fn tampered_values_fail_to_decrypt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let vault = Vault::open_or_create(&path).unwrap();
        let sealed = vault.seal("hunter2", b"alice@example.org");
        // Flip each hex digit in turn: nonce, ciphertext and tag are all covered.
        for i in 0..sealed.len() {
            let mut bytes = sealed.clone().into_bytes();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            let tampered = String::from_utf8(bytes).unwrap();
            let err = vault.open(&tampered, b"alice@example.org").unwrap_err();
            assert!(matches!(err, VaultError::Decrypt { .. }), "{i}: {err:?}");
        }
        let short = &sealed[..2 * (NONCE_LEN + TAG_LEN) - 2];
        let extended = format!("{sealed}00");
        for bad in [short, &sealed[..sealed.len() - 2], &extended, "not hex", "abc", ""] {
            let err = vault.open(bad, b"alice@example.org").unwrap_err();
            assert!(matches!(err, VaultError::Decrypt { .. }), "{bad:?}: {err:?}");
            assert!(err.to_string().contains(&path.display().to_string()));
        }
    }

    #[test]
    fn ciphertext_bound_to_its_aad() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open_or_create(&dir.path().join("key")).unwrap();
        let sealed = vault.seal("hunter2", b"alice@example.org");
        for other in [&b"bob@example.org"[..], b"alice@example.or", b""] {
            assert!(matches!(
                vault.open(&sealed, other),
                Err(VaultError::Decrypt { .. })
            ));
        }
    }

    #[test]
    fn wrong_key_fails_to_decrypt() {
        let dir = tempfile::tempdir().unwrap();
        let a = Vault::open_or_create(&dir.path().join("a")).unwrap();
        let b = Vault::open_or_create(&dir.path().join("b")).unwrap();
        let sealed = a.seal("hunter2", b"alice@example.org");
        let err = b.open(&sealed, b"alice@example.org").unwrap_err();
        assert!(matches!(err, VaultError::Decrypt { .. }), "{err:?}");
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let vault = Vault::open_or_create(&path).unwrap();
        let key = fs::read_to_string(&path).unwrap();
        let debug = format!("{vault:?}");
        assert!(!debug.contains(key.trim()), "{debug}");
        assert!(!debug.to_lowercase().contains("cipher"), "{debug}");
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("key");
        let err = Vault::open_or_create(&path).unwrap_err();
        assert!(matches!(err, VaultError::Io { action: "create", .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));
    }
}
