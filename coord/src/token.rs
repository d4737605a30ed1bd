//! Join tokens: `CLTKN-1-<CA digest>-<secret>`.
//!
//! The digest is the SHA-256 of the cluster CA's certificate (as Swarm's
//! `SWMTKN-1-<CA digest>-<secret>`): a joining node trusts the server only if the CA in
//! its TLS chain has that digest, before it sends the secret.

use sha2::{Digest, Sha256};

const PREFIX: &str = "CLTKN";
const VERSION: &str = "1";
const DIGEST_CHARS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub digest: String,
    pub secret: String,
}

/// A token from the CA digest (hex SHA-256 of the CA certificate) and a secret.
pub fn format_token(ca_digest: &str, secret: &str) -> String {
    format!("{PREFIX}-{VERSION}-{ca_digest}-{secret}")
}

/// A stable 64-bit cluster id for etcd response headers.
pub fn cluster_id_u64(cluster_id: &str) -> u64 {
    let h = Sha256::digest(cluster_id.as_bytes());
    u64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
}

pub fn parse_token(s: &str) -> Result<JoinToken, String> {
    let bad = || {
        format!("malformed token: expected {PREFIX}-{VERSION}-<64 hex digits>-<secret>, as printed by `cluster token`")
    };
    let mut parts = s.trim().splitn(4, '-');
    let (Some(p), Some(v), Some(d), Some(secret)) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    if p != PREFIX || v != VERSION {
        return Err(bad());
    }
    if d.len() != DIGEST_CHARS || !d.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    if secret.len() < 16 || !secret.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(bad());
    }
    Ok(JoinToken { digest: d.to_ascii_lowercase(), secret: secret.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_malformed_ones_are_refused() {
        let d = "ab".repeat(32);
        let t = format_token(&d, "s3cr3tS3cr3tS3cr3t");
        let p = parse_token(&t).unwrap();
        assert_eq!(p.digest, d);
        assert_eq!(p.secret, "s3cr3tS3cr3tS3cr3t");
        for bad in [
            "",
            "CLTKN-1",
            "SWMTKN-1-aaaa-bbbb",
            "CLTKN-2-0000000000000000000000000000000000000000000000000000000000000000-abcdefghijklmnopq",
            "CLTKN-1-zz00000000000000000000000000000000000000000000000000000000000000-abcdefghijklmnopq",
            "CLTKN-1-00000000000000000000000000000000-abcdefghijklmnopq",
            "CLTKN-1-0000000000000000000000000000000000000000000000000000000000000000-short",
        ] {
            assert!(parse_token(bad).is_err(), "{bad} accepted");
        }
    }
}
