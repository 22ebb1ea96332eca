//! Secrets: Memory Key minting and hashing, key ids, and the provider-key cipher.
//!
//! A Memory Key is 32 bytes from the OS random generator shown as `mk_` + 43 base62 digits,
//! followed by a checksum: the CRC32 (IEEE) of those 46 characters as 6 base62 digits, as
//! GitHub's tokens carry one. The checksum lets a secret scanner validate a leaked key
//! offline, and lets the server refuse a mistyped or forged key before any catalog lookup
//! ([`passes_checksum`]). Keys minted before the checksum (`mk_` + 43 digits) keep working:
//! they have no checksum to check and go to the lookup as before. Only a key's SHA-256 is
//! kept; a presented key is hashed and looked up by that hash, and the stored hash is
//! compared again in constant time. Provider keys are sealed with
//! ChaCha20-Poly1305 under a 32-byte secret that lives in `DATA_DIR/secret.key` (0600) or
//! `MEMORYROUTER_SECRET_KEY` (64 hex digits); the associated data binds each ciphertext to
//! its account and provider so a ciphertext cannot be moved to another slot.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest::{SHA256, digest};

use crate::error::Error;

/// Prefix of every Memory Key.
pub(crate) const KEY_PREFIX: &str = "mk_";
/// Random bytes behind a Memory Key.
pub(crate) const KEY_RANDOM_BYTES: usize = 32;
/// Base62 digits needed for 32 bytes: ceil(256 / log2(62)) = 43.
pub(crate) const KEY_DIGITS: usize = 43;
/// Base62 digits of the checksum: a CRC32 is below 2^32 < 62^6.
pub(crate) const KEY_CHECKSUM_DIGITS: usize = 6;
/// Base62 characters in a key id after `key_` (16 digits ≈ 95 bits: collisions are moot).
pub(crate) const KEY_ID_DIGITS: usize = 16;
/// Characters of the key shown in listings (`mk_` + 4), enough to recognise, useless to guess.
pub(crate) const KEY_HINT_CHARS: usize = 7;
/// Bytes of the provider-key encryption secret.
pub(crate) const SECRET_KEY_BYTES: usize = 32;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// SHA-256 of a Memory Key's text.
pub(crate) type KeyHash = [u8; 32];

/// Fills `buf` from the operating system's generator.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), Error> {
    getrandom::fill(buf).map_err(|_| Error::Random)
}

/// Encodes `bytes` as a big-endian number in base62, left-padded with `0` to `width`.
fn base62(bytes: &[u8], width: usize) -> String {
    let mut number = bytes.to_vec();
    let mut digits = Vec::with_capacity(width);
    // Schoolbook long division by 62, least significant digit first.
    while number.iter().any(|b| *b != 0) {
        let mut remainder: u32 = 0;
        for byte in number.iter_mut() {
            let value = (remainder << 8) | u32::from(*byte);
            *byte = (value / 62) as u8;
            remainder = value % 62;
        }
        digits.push(BASE62[remainder as usize]);
    }
    while digits.len() < width {
        digits.push(b'0');
    }
    digits.reverse();
    digits.into_iter().map(char::from).collect()
}

/// A fresh Memory Key: `mk_` + 43 random base62 digits + their 6-digit checksum.
pub(crate) fn mint_key() -> Result<String, Error> {
    let mut bytes = [0u8; KEY_RANDOM_BYTES];
    random_bytes(&mut bytes)?;
    let body = format!("{KEY_PREFIX}{}", base62(&bytes, KEY_DIGITS));
    let sum = checksum(&body);
    Ok(body + &sum)
}

/// The checksum of a key's first 46 characters (`mk_` + the random digits): their CRC32
/// (IEEE, as zlib computes it) as 6 base62 digits, big-endian, `0`-padded.
fn checksum(body: &str) -> String {
    base62(
        &crc32fast::hash(body.as_bytes()).to_be_bytes(),
        KEY_CHECKSUM_DIGITS,
    )
}

/// False for a key with a checksum that does not hold: a typo or a forgery, refused before
/// any lookup. True for a key whose checksum holds and for a key minted before keys had
/// one (`mk_` + 43 digits), which only the lookup can judge. Call after [`looks_like_key`].
pub(crate) fn passes_checksum(key: &str) -> bool {
    let sum_at = KEY_PREFIX.len() + KEY_DIGITS;
    match (key.get(..sum_at), key.get(sum_at..)) {
        (Some(_), Some("")) => true,
        (Some(body), Some(sum)) => constant_time_eq(checksum(body).as_bytes(), sum.as_bytes()),
        _ => false,
    }
}

/// `prefix` + `digits` uniformly random base62 characters (rejection sampling keeps the
/// distribution uniform: bytes ≥ 248 are redrawn).
pub(crate) fn random_id(prefix: &str, digits: usize) -> Result<String, Error> {
    let mut out = String::with_capacity(prefix.len() + digits);
    out.push_str(prefix);
    let mut pool = [0u8; 64];
    while out.len() < prefix.len() + digits {
        random_bytes(&mut pool)?;
        for byte in pool {
            if byte < 248 && out.len() < prefix.len() + digits {
                out.push(char::from(BASE62[usize::from(byte % 62)]));
            }
        }
    }
    Ok(out)
}

/// True when `text` has the shape of a Memory Key (without suffix), with or without a
/// checksum, whether the checksum holds or not. Cheap pre-check so provider keys and
/// garbage are rejected before hashing, and the proxy's test that a would-be provider key
/// is not a Memory Key (a mistyped Memory Key is never sent upstream either).
pub(crate) fn looks_like_key(text: &str) -> bool {
    text.strip_prefix(KEY_PREFIX).is_some_and(|rest| {
        (rest.len() == KEY_DIGITS || rest.len() == KEY_DIGITS + KEY_CHECKSUM_DIGITS)
            && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

pub(crate) fn hash_key(key: &str) -> KeyHash {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, key.as_bytes()).as_ref());
    out
}

/// Compares two byte strings in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The shown-in-listings prefix of a key.
pub(crate) fn key_hint(key: &str) -> String {
    key.chars().take(KEY_HINT_CHARS).collect()
}

/// A masked provider key: first 3 and last 4 characters (`sk-…wxyz`), or `…` if too short.
pub(crate) fn mask(api_key: &str) -> String {
    let chars: Vec<char> = api_key.chars().collect();
    if chars.len() < 12 {
        return "…".to_owned();
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

/// Seals and opens provider keys.
pub(crate) struct Cipher {
    key: LessSafeKey,
}

impl Cipher {
    pub(crate) fn new(secret: &[u8; SECRET_KEY_BYTES]) -> Result<Self, Error> {
        let unbound =
            UnboundKey::new(&CHACHA20_POLY1305, secret).map_err(|_| Error::SecretKey {
                reason: "ChaCha20-Poly1305 rejected the key".into(),
            })?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Returns hex(nonce ‖ ciphertext ‖ tag). A random 96-bit nonce per message is safe
    /// here: an account stores a handful of provider keys, far from the 2^32 birthday bound.
    pub(crate) fn seal(&self, plaintext: &str, aad: &str) -> Result<String, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        let mut in_out = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| Error::SecretKey {
                reason: "encryption failed".into(),
            })?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&in_out);
        Ok(to_hex(&out))
    }

    /// Opens what [`Cipher::seal`] produced; `None` if the secret or the aad differ.
    pub(crate) fn open(&self, sealed_hex: &str, aad: &str) -> Option<String> {
        let sealed = from_hex(sealed_hex)?;
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut in_out = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut in_out)
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape_and_differ() {
        let a = mint_key().unwrap();
        let b = mint_key().unwrap();
        assert!(looks_like_key(&a), "{a}");
        assert_ne!(a, b);
        assert!(!looks_like_key("sk-not-a-memory-key"));
        assert!(!looks_like_key(&format!("{a}x")));
    }

    #[test]
    fn minted_keys_carry_a_checksum_that_catches_every_typo() {
        let key = mint_key().unwrap();
        assert_eq!(
            key.len(),
            KEY_PREFIX.len() + KEY_DIGITS + KEY_CHECKSUM_DIGITS
        );
        assert!(looks_like_key(&key) && passes_checksum(&key), "{key}");
        let bytes = key.as_bytes();
        let mut typos = 0;
        // Every single-character substitution, anywhere after the prefix.
        for at in KEY_PREFIX.len()..bytes.len() {
            for &digit in BASE62 {
                if digit == bytes[at] {
                    continue;
                }
                let mut typo = bytes.to_vec();
                typo[at] = digit;
                let typo = String::from_utf8(typo).unwrap();
                assert!(looks_like_key(&typo), "the shape is kept: {typo}");
                assert!(!passes_checksum(&typo), "{typo}");
                typos += 1;
            }
        }
        // Every swap of two neighbouring, different characters.
        for at in KEY_PREFIX.len()..bytes.len() - 1 {
            if bytes[at] != bytes[at + 1] {
                let mut typo = bytes.to_vec();
                typo.swap(at, at + 1);
                assert!(!passes_checksum(&String::from_utf8(typo).unwrap()));
                typos += 1;
            }
        }
        assert!(typos > 49 * 61, "{typos}");
    }

    #[test]
    fn forged_keys_fail_the_checksum_and_old_keys_pass_it() {
        // 200,000 forgeries of the right shape from a fixed sequence: a random checksum
        // holds with probability 62^-6 (about 1 in 57 billion), so none may pass.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            BASE62[(state % 62) as usize]
        };
        for _ in 0..200_000 {
            let digits: Vec<u8> = (0..KEY_DIGITS + KEY_CHECKSUM_DIGITS)
                .map(|_| next())
                .collect();
            let forged = format!("{KEY_PREFIX}{}", String::from_utf8(digits).unwrap());
            assert!(looks_like_key(&forged));
            assert!(!passes_checksum(&forged), "{forged}");
        }
        // A key minted before the checksum: the shape holds, and only the lookup judges it.
        let legacy = format!(
            "{KEY_PREFIX}{}",
            base62(&[7u8; KEY_RANDOM_BYTES], KEY_DIGITS)
        );
        assert!(looks_like_key(&legacy) && passes_checksum(&legacy));
        // The checksum is the CRC32 of the first 46 characters, base62, as documented.
        let key = mint_key().unwrap();
        let (body, sum) = key.split_at(KEY_PREFIX.len() + KEY_DIGITS);
        let crc = sum.bytes().fold(0u64, |n, d| {
            n * 62 + BASE62.iter().position(|b| *b == d).unwrap() as u64
        });
        assert_eq!(crc, u64::from(crc32fast::hash(body.as_bytes())));
        for bad in [
            "mk_short",
            "",
            "mk_",
            &format!("{key}0"),
            &key[..key.len() - 1],
        ] {
            assert!(!(looks_like_key(bad) && passes_checksum(bad)), "{bad}");
        }
    }

    #[test]
    fn base62_encodes_numbers() {
        assert_eq!(base62(&[0, 61], 2), "0z");
        assert_eq!(base62(&[0, 62], 3), "010");
        assert_eq!(base62(&[0xff; 32], 0).len(), KEY_DIGITS);
    }

    #[test]
    fn ids_are_prefixed_base62() {
        let id = random_id("key_", KEY_ID_DIGITS).unwrap();
        assert_eq!(id.len(), 4 + KEY_ID_DIGITS);
        assert!(id[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn cipher_round_trips_and_binds_aad() {
        let cipher = Cipher::new(&[7u8; SECRET_KEY_BYTES]).unwrap();
        let sealed = cipher
            .seal("sk-secret-provider-key", "acct/openai")
            .unwrap();
        assert!(!sealed.contains("secret"));
        assert_eq!(
            cipher.open(&sealed, "acct/openai").as_deref(),
            Some("sk-secret-provider-key")
        );
        assert_eq!(cipher.open(&sealed, "acct/anthropic"), None);
        let other = Cipher::new(&[8u8; SECRET_KEY_BYTES]).unwrap();
        assert_eq!(other.open(&sealed, "acct/openai"), None);
    }

    #[test]
    fn masks_provider_keys() {
        assert_eq!(mask("sk-abcdefghijklmnop"), "sk-…mnop");
        assert_eq!(mask("short"), "…");
    }
}
