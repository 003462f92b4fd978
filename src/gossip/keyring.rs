//! Gossip encryption keys (Consul's `encrypt` / `keyring`) and the packet
//! envelope.

use std::fmt;
use std::path::Path;

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::aes::Aes192;
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::KeyError;

/// First byte of a packet sent without encryption.
pub(crate) const VERSION_PLAIN: u8 = 0x01;
/// First byte of an AES-GCM packet: `[version][12-byte nonce][ciphertext][16-byte tag]`.
pub(crate) const VERSION_AES_GCM: u8 = 0x02;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes the envelope adds to what foca produces.
pub(crate) const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
/// Keys are gossiped in full inside one packet; Consul setups rarely hold
/// more than two or three at once.
pub(crate) const MAX_KEYS: usize = 8;

/// Short keyed digest of a key, gossiped instead of the key itself when
/// members report which keys they hold.
pub(crate) type Fingerprint = [u8; 8];

#[derive(Clone)]
enum Cipher {
    A128(Aes128Gcm),
    A192(AesGcm<Aes192, U12>),
    A256(Aes256Gcm),
}

impl Cipher {
    fn new(raw: &[u8]) -> Result<Cipher, KeyError> {
        let bad = |_| KeyError::Length(raw.len());
        Ok(match raw.len() {
            16 => Cipher::A128(Aes128Gcm::new_from_slice(raw).map_err(bad)?),
            24 => Cipher::A192(AesGcm::<Aes192, U12>::new_from_slice(raw).map_err(bad)?),
            32 => Cipher::A256(Aes256Gcm::new_from_slice(raw).map_err(bad)?),
            n => return Err(KeyError::Length(n)),
        })
    }

    fn seal(&self, nonce: &[u8], aad: &[u8], buf: &mut [u8]) -> Option<[u8; TAG_LEN]> {
        let nonce = Nonce::<U12>::from_slice(nonce);
        let tag = match self {
            Cipher::A128(c) => c.encrypt_in_place_detached(nonce, aad, buf),
            Cipher::A192(c) => c.encrypt_in_place_detached(nonce, aad, buf),
            Cipher::A256(c) => c.encrypt_in_place_detached(nonce, aad, buf),
        }
        .ok()?;
        Some(tag.into())
    }

    fn open(&self, nonce: &[u8], aad: &[u8], buf: &mut Vec<u8>) -> bool {
        let nonce = Nonce::<U12>::from_slice(nonce);
        match self {
            Cipher::A128(c) => c.decrypt_in_place(nonce, aad, buf),
            Cipher::A192(c) => c.decrypt_in_place(nonce, aad, buf),
            Cipher::A256(c) => c.decrypt_in_place(nonce, aad, buf),
        }
        .is_ok()
    }
}

#[derive(Clone)]
struct Key {
    raw: Vec<u8>,
    cipher: Cipher,
    fingerprint: Fingerprint,
}

impl Key {
    fn from_raw(raw: Vec<u8>) -> Result<Key, KeyError> {
        let cipher = Cipher::new(&raw)?;
        // The GCM tag of an empty message under a fixed nonce identifies the
        // key without revealing it.
        let mut empty = [0u8; 0];
        let tag = cipher
            .seal(&[0u8; NONCE_LEN], b"beacon-keyring-fingerprint", &mut empty)
            .ok_or(KeyError::Length(raw.len()))?;
        let mut fingerprint = [0u8; 8];
        fingerprint.copy_from_slice(&tag[..8]);
        Ok(Key {
            raw,
            cipher,
            fingerprint,
        })
    }

    fn parse(b64: &str) -> Result<Key, KeyError> {
        let raw = B64
            .decode(b64.trim())
            .map_err(|e| KeyError::Base64(e.to_string()))?;
        Key::from_raw(raw)
    }
}

/// The gossip encryption keys of this agent: one primary key, used to
/// encrypt, plus any other installed keys, all tried when decrypting
/// (Consul's keyring). Keys are AES keys of 16, 24 or 32 bytes (AES-128,
/// AES-192, AES-256 in GCM mode), written in standard base64 as
/// `consul keygen` prints them.
#[derive(Clone)]
pub struct Keyring {
    // Primary first.
    keys: Vec<Key>,
}

impl fmt::Debug for Keyring {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Keyring {
    /// A keyring holding only `primary_base64`.
    ///
    /// # Errors
    /// [`KeyError::Base64`] when the text is not standard base64,
    /// [`KeyError::Length`] when it does not decode to 16, 24 or 32 bytes.
    pub fn new(primary_base64: &str) -> Result<Keyring, KeyError> {
        Ok(Keyring {
            keys: vec![Key::parse(primary_base64)?],
        })
    }

    /// Reads a keyring file in the format of Consul's `serf/local.keyring`:
    /// a JSON array of base64 keys, primary first. `Ok(None)` when the file
    /// does not exist.
    ///
    /// # Errors
    /// [`KeyError::Io`] when the file cannot be read, [`KeyError::Format`]
    /// when it is not such an array, [`KeyError::Empty`] when the array is
    /// empty, and the errors of [`Keyring::new`] for a bad key.
    pub fn load(path: impl AsRef<Path>) -> Result<Option<Keyring>, KeyError> {
        let path = path.as_ref();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(KeyError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let format = |reason: &str| KeyError::Format {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let strings: Vec<String> = serde_json::from_str(&text)
            .map_err(|e| format(&format!("expected a JSON array of strings: {e}")))?;
        let keys = strings
            .iter()
            .map(|b64| Key::parse(b64))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        let mut ring = Keyring { keys: Vec::new() };
        for key in keys {
            ring.push_unique(key);
        }
        ring.check_size()?;
        Ok(Some(ring))
    }

    /// Writes the keyring in the format [`Keyring::load`] reads, replacing
    /// the file atomically (temporary file then rename), readable by the
    /// owner only.
    pub(crate) fn save(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut text = serde_json::to_string_pretty(&self.keys()).expect("strings encode");
        text.push('\n');
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        {
            use std::io::Write as _;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                options.mode(0o600);
            }
            let mut file = options.open(&tmp).map_err(io)?;
            file.write_all(text.as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Every installed key in base64, primary first.
    pub fn keys(&self) -> Vec<String> {
        self.keys.iter().map(|k| B64.encode(&k.raw)).collect()
    }

    /// The primary key (the one used to encrypt) in base64.
    pub fn primary(&self) -> String {
        B64.encode(&self.keys[0].raw)
    }

    pub(crate) fn raw_keys(&self) -> Vec<Vec<u8>> {
        self.keys.iter().map(|k| k.raw.clone()).collect()
    }

    pub(crate) fn from_raw_keys(raw: Vec<Vec<u8>>) -> Result<Keyring, KeyError> {
        let mut ring = Keyring { keys: Vec::new() };
        for r in raw {
            ring.push_unique(Key::from_raw(r)?);
        }
        if ring.keys.is_empty() {
            return Err(KeyError::Empty);
        }
        ring.check_size()?;
        Ok(ring)
    }

    /// Fingerprints of every key, primary first.
    pub(crate) fn fingerprints(&self) -> Vec<Fingerprint> {
        self.keys.iter().map(|k| k.fingerprint).collect()
    }

    pub(crate) fn known(&self) -> impl Iterator<Item = (Fingerprint, String)> + '_ {
        self.keys
            .iter()
            .map(|k| (k.fingerprint, B64.encode(&k.raw)))
    }

    pub(crate) fn with_installed(&self, b64: &str) -> Result<Keyring, KeyError> {
        let mut ring = self.clone();
        ring.push_unique(Key::parse(b64)?);
        ring.check_size()?;
        Ok(ring)
    }

    /// Where an installed key stands (0: the primary).
    fn position(&self, b64: &str) -> Result<usize, KeyError> {
        let key = Key::parse(b64)?;
        self.keys
            .iter()
            .position(|k| k.raw == key.raw)
            .ok_or_else(|| KeyError::NotInstalled(b64.trim().to_string()))
    }

    pub(crate) fn with_primary(&self, b64: &str) -> Result<Keyring, KeyError> {
        let pos = self.position(b64)?;
        let mut ring = self.clone();
        let key = ring.keys.remove(pos);
        ring.keys.insert(0, key);
        Ok(ring)
    }

    pub(crate) fn without(&self, b64: &str) -> Result<Keyring, KeyError> {
        let pos = self.position(b64)?;
        if pos == 0 {
            return Err(KeyError::RemovePrimary);
        }
        let mut ring = self.clone();
        ring.keys.remove(pos);
        Ok(ring)
    }

    pub(crate) fn same_keys(&self, other: &Keyring) -> bool {
        self.keys.len() == other.keys.len()
            && self
                .keys
                .iter()
                .zip(&other.keys)
                .all(|(a, b)| a.raw == b.raw)
    }

    fn push_unique(&mut self, key: Key) {
        if !self.keys.iter().any(|k| k.raw == key.raw) {
            self.keys.push(key);
        }
    }

    fn check_size(&self) -> Result<(), KeyError> {
        if self.keys.len() > MAX_KEYS {
            Err(KeyError::TooMany(MAX_KEYS))
        } else {
            Ok(())
        }
    }

    /// Wraps `plain` in the envelope, encrypted with the primary key, into
    /// `out` (cleared first).
    pub(crate) fn seal(&self, plain: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        out.push(VERSION_AES_GCM);
        let mut nonce = [0u8; NONCE_LEN];
        rand_foca::fill(&mut nonce);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let start = 1 + NONCE_LEN;
        match self.keys[0]
            .cipher
            .seal(&nonce, &[VERSION_AES_GCM], &mut out[start..])
        {
            Some(tag) => {
                out.extend_from_slice(&tag);
                true
            }
            None => false,
        }
    }

    /// Opens an envelope (version byte included) with each key in turn;
    /// the plaintext is left in `out`.
    pub(crate) fn open(&self, packet: &[u8], out: &mut Vec<u8>) -> bool {
        if packet.len() < OVERHEAD || packet[0] != VERSION_AES_GCM {
            return false;
        }
        let nonce = &packet[1..1 + NONCE_LEN];
        let body = &packet[1 + NONCE_LEN..];
        self.keys.iter().any(|k| {
            out.clear();
            out.extend_from_slice(body);
            k.cipher.open(nonce, &[VERSION_AES_GCM], out)
        })
    }
}

/// A new random gossip key: base64 of 32 random bytes (AES-256), as
/// `consul keygen` prints (`beacon keygen`).
pub fn generate_key() -> String {
    let mut raw = [0u8; 32];
    rand_foca::fill(&mut raw);
    B64.encode(raw)
}
