//! The cluster's public-key infrastructure and its TLS, shared by masters (coord), the
//! client library and the agent: one place that makes certificates, reads identities
//! back from them and sets up rustls.
//!
//! - [`cert`]: the cluster CA, node and client certificates, [`cert::PeerIdentity`].
//! - [`tls`]: [`tls::Credentials`] (replaceable at run time) and the rustls
//!   configurations built from them; the digest-pinned configuration a joining node uses.
//! - [`net`]: TLS channels for tonic clients and the accepting side for tonic servers.
//! - [`files`]: credentials as PEM files, written 0600.

pub mod cert;
pub mod files;
pub mod net;
pub mod tls;

pub use cert::{CertRole, PeerIdentity};
pub use files::CredentialFiles;
pub use net::PeerInfo;
pub use tls::{ClientTls, Credentials};

/// DER types of certificates and keys (rustls's).
pub use rustls::pki_types as types;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Malformed or mismatched certificates, keys, requests or names.
    #[error("{0}")]
    Invalid(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Io(String),
}

/// Seconds since the Unix epoch now: the unit certificates' validity is read in
/// ([`PeerIdentity::not_after_unix`]).
pub fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn secret_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}
