//! Byte encodings below every other module: bincode for values (state-machine records,
//! Raft payloads on the wire) and order-preserving keys. Pure: no RocksDB.

use serde::de::DeserializeOwned;
use serde::Serialize;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Serialize>(v: &T) -> std::io::Result<Vec<u8>> {
    bincode::serde::encode_to_vec(v, config()).map_err(|e| std::io::Error::other(e.to_string()))
}

/// Decodes bytes this node wrote itself (its own RocksDB and snapshot files).
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> std::io::Result<T> {
    decode_with(b, config())
}

/// Decodes bytes from the network. bincode allocates what a length prefix claims before
/// it reads the bytes, so ten bytes that claim a huge string would allocate it (or abort
/// the process). The limit caps what one decode may claim in total, in proportion to
/// the input: a real message claims at most a small multiple of its size (a decoded
/// value is larger than its varint encoding), and a forged length fails cleanly.
pub fn decode_untrusted<T: DeserializeOwned>(b: &[u8]) -> std::io::Result<T> {
    const K: usize = 1 << 10;
    match b.len() {
        n if n <= 64 * K => decode_with(b, config().with_limit::<{ 4 << 20 }>()),
        n if n <= K * K => decode_with(b, config().with_limit::<{ 64 << 20 }>()),
        n if n <= 16 * K * K => decode_with(b, config().with_limit::<{ 512 << 20 }>()),
        _ => decode_with(b, config().with_limit::<{ 2 << 30 }>()),
    }
}

fn decode_with<T: DeserializeOwned, C: bincode::config::Config>(b: &[u8], c: C) -> std::io::Result<T> {
    let (v, n) = bincode::serde::decode_from_slice(b, c)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    // A value that does not consume its bytes is corrupt, not merely old.
    if n != b.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "trailing bytes"));
    }
    Ok(v)
}

pub fn u64_key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

pub fn key_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8-byte key"))
}

/// Escapes a user key so that `escape(a) ++ TERM < escape(b) ++ TERM` iff `a < b`, and
/// no escaped key is a prefix of another: 0x00 becomes 0x00 0xFF, and 0x00 0x00 ends it.
pub fn escape_key(out: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// Inverse of [`escape_key`]; returns the key and the rest of the input.
pub fn unescape_key(b: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut key = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == 0 {
            match b.get(i + 1)? {
                0 => return Some((key, &b[i + 2..])),
                0xff => {
                    key.push(0);
                    i += 2;
                }
                _ => return None,
            }
        } else {
            key.push(b[i]);
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_keys_sort_like_raw_keys() {
        let keys: Vec<&[u8]> = vec![b"", b"\0", b"\0\0", b"\0a", b"a", b"a\0", b"a\0b", b"ab", b"b"];
        let enc: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| {
                let mut v = Vec::new();
                escape_key(&mut v, k);
                v.extend_from_slice(&u64_key(7));
                v
            })
            .collect();
        for w in enc.windows(2) {
            assert!(w[0] < w[1], "{:?} !< {:?}", w[0], w[1]);
        }
        for (k, e) in keys.iter().zip(&enc) {
            let (d, rest) = unescape_key(e).unwrap();
            assert_eq!(&d, k);
            assert_eq!(key_u64(rest), 7);
        }
    }
}
