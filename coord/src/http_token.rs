//! Bearer tokens of the HTTP face: their format, how one is drawn, and how a presented
//! one is checked against the replicated hashes. `cht_<id>_<secret>`: the id (16 hex
//! digits) names the token in listings; the log holds only the SHA-256 of the whole
//! token.

use std::collections::BTreeMap;

use sha2::Digest;

use crate::cluster::HttpToken;

pub const PREFIX: &str = "cht_";

/// A new token: (id, the token, its hash). Randomness is drawn here, by the master
/// serving the request, never in apply.
pub fn draw() -> (String, String, String) {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 24];
    rand::fill(&mut id);
    rand::fill(&mut secret);
    let id = hex::encode(id);
    let token = format!("{PREFIX}{id}_{}", hex::encode(secret));
    let hash = hash(&token);
    (id, token, hash)
}

pub fn hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// The role of a presented token, if it is one the cluster issued and has not revoked.
pub fn check<'a>(tokens: &'a BTreeMap<String, HttpToken>, presented: &str) -> Option<&'a HttpToken> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, _) = rest.split_once('_')?;
    let t = tokens.get(id)?;
    // Hashes of equal length, compared whole: the time taken says nothing of the secret.
    let h = hash(presented);
    let same = h.len() == t.hash.len() && h.bytes().zip(t.hash.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    same.then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_issued_token_checks_out() {
        let (id, token, hash) = draw();
        let mut m = BTreeMap::new();
        m.insert(
            id.clone(),
            HttpToken { id: id.clone(), hash, role: "reader".into(), name: String::new(), created_ms: 0 },
        );
        assert_eq!(check(&m, &token).map(|t| t.role.as_str()), Some("reader"));
        let mut wrong = token.clone();
        wrong.pop();
        wrong.push(if token.ends_with('0') { '1' } else { '0' });
        assert!(check(&m, &wrong).is_none());
        assert!(check(&m, "cht_").is_none());
        assert!(check(&m, "Bearer x").is_none());
        let (_, other, _) = draw();
        assert!(check(&m, &other).is_none());
    }
}
