//! Join tokens: `CLTKN-1-<cluster digest>-<secret>`.
//!
//! The digest names the cluster a token belongs to. Today it is derived from the cluster
//! id; when mutual TLS arrives it becomes the digest of the cluster CA (as Swarm's
//! `SWMTKN-1-<CA digest>-<secret>`), so a joining node can pin the CA with no new format.

use sha2::{Digest, Sha256};

const PREFIX: &str = "CLTKN";
const VERSION: &str = "1";
const DIGEST_CHARS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub digest: String,
    pub secret: String,
}

pub fn cluster_digest(cluster_id: &str) -> String {
    let h = Sha256::digest(cluster_id.as_bytes());
    hex::encode(h)[..DIGEST_CHARS].to_string()
}

pub fn format_token(cluster_id: &str, secret: &str) -> String {
    format!("{PREFIX}-{VERSION}-{}-{secret}", cluster_digest(cluster_id))
}

/// A stable 64-bit cluster id for etcd response headers.
pub fn cluster_id_u64(cluster_id: &str) -> u64 {
    let h = Sha256::digest(cluster_id.as_bytes());
    u64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
}

pub fn parse_token(s: &str) -> Result<JoinToken, String> {
    let bad = || {
        format!("malformed token: expected {PREFIX}-{VERSION}-<32 hex digits>-<secret>, as printed by `cluster token`")
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
        let t = format_token("abc", "s3cr3tS3cr3tS3cr3t");
        let p = parse_token(&t).unwrap();
        assert_eq!(p.digest, cluster_digest("abc"));
        assert_eq!(p.secret, "s3cr3tS3cr3tS3cr3t");
        for bad in [
            "",
            "CLTKN-1",
            "SWMTKN-1-aaaa-bbbb",
            "CLTKN-2-00000000000000000000000000000000-abcdefghijklmnopq",
            "CLTKN-1-zz000000000000000000000000000000-abcdefghijklmnopq",
            "CLTKN-1-00000000000000000000000000000000-short",
        ] {
            assert!(parse_token(bad).is_err(), "{bad} accepted");
        }
    }
}
