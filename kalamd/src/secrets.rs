//! Storage credentials are encrypted at rest (sql.md §6): AES-256-GCM with a key that kalamd
//! creates on first use in `<data_dir>/secrets/storage.key` (mode 0600). A stored value is
//! base64 of `nonce ‖ ciphertext ‖ tag`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::EngineError;

const KEY_LEN: usize = 32;

pub struct SecretBox {
    key: LessSafeKey,
    rng: SystemRandom,
}

fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets").join("storage.key")
}

impl SecretBox {
    /// Loads the key, creating it (and its directory, mode 0700) the first time.
    pub fn open(data_dir: &Path) -> Result<SecretBox, EngineError> {
        let path = key_path(data_dir);
        let rng = SystemRandom::new();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let dir = path.parent().ok_or_else(|| EngineError::internal("key path has no parent"))?;
                std::fs::create_dir_all(dir).map_err(|e| EngineError::internal(format!("{}: {e}", dir.display())))?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| EngineError::internal(format!("{}: {e}", dir.display())))?;
                let mut key = [0u8; KEY_LEN];
                rng.fill(&mut key).map_err(|_| EngineError::internal("no randomness for the storage key"))?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| EngineError::internal(format!("{}: {e}", path.display())))?;
                file.write_all(&key).and_then(|()| file.sync_all()).map_err(EngineError::internal)?;
                key.to_vec()
            }
            Err(e) => return Err(EngineError::internal(format!("{}: {e}", path.display()))),
        };
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| EngineError::internal(format!("{} is not a {KEY_LEN}-byte key", path.display())))?;
        Ok(SecretBox { key: LessSafeKey::new(unbound), rng })
    }

    pub fn seal(&self, plain: &str) -> Result<String, EngineError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| EngineError::internal("no randomness for a nonce"))?;
        let mut data = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .map_err(|_| EngineError::internal("credential encryption failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(STANDARD.encode(out))
    }

    pub fn open_sealed(&self, sealed: &str) -> Result<String, EngineError> {
        let bytes = STANDARD.decode(sealed).map_err(|_| EngineError::internal("stored credentials are not base64"))?;
        if bytes.len() < NONCE_LEN {
            return Err(EngineError::internal("stored credentials are truncated"));
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| EngineError::internal("bad nonce"))?;
        let mut data = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut data)
            .map_err(|_| EngineError::internal("stored credentials cannot be decrypted with this key"))?;
        String::from_utf8(plain.to_vec()).map_err(|_| EngineError::internal("stored credentials are not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_and_the_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = SecretBox::open(dir.path()).unwrap().seal(r#"{"secret_access_key":"s"}"#).unwrap();
        assert!(!sealed.contains("secret_access_key"));
        let again = SecretBox::open(dir.path()).unwrap();
        assert_eq!(again.open_sealed(&sealed).unwrap(), r#"{"secret_access_key":"s"}"#);
        let mode = std::fs::metadata(key_path(dir.path())).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let other = tempfile::tempdir().unwrap();
        assert!(SecretBox::open(other.path()).unwrap().open_sealed(&sealed).is_err());
    }
}
