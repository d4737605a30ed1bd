//! Credentials on disk: PEM files in one directory, written 0600 and atomically.
//!
//! A credential is `ca.crt` (every CA to trust, PEM, one or more), `<stem>.crt` (the
//! holder's chain, leaf first) and `<stem>.key` (its PKCS#8 key). Nodes use the stem
//! `node`; client credentials use their role (`admin`, `reader`), so that
//! `etcdctl --cacert DIR/ca.crt --cert DIR/admin.crt --key DIR/admin.key` reads them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::tls::Credentials;
use crate::PkiError;

/// The three files of one credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CredentialFiles {
    pub fn in_dir(dir: &Path, stem: &str) -> CredentialFiles {
        CredentialFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        }
    }

    pub fn exist(&self) -> bool {
        self.ca.exists() && self.cert.exists() && self.key.exists()
    }

    /// Reads all three and builds [`Credentials`].
    pub fn load(&self) -> Result<Arc<Credentials>, PkiError> {
        let roots = read_certs(&self.ca)?;
        let chain = read_certs(&self.cert)?;
        let key = read_key(&self.key)?;
        Credentials::new(roots, chain, Some(key))
    }

    /// Writes all three (0600; the directory is created 0700 if absent).
    pub fn save(
        &self,
        roots: &[CertificateDer<'_>],
        chain: &[CertificateDer<'_>],
        key: &PrivateKeyDer<'_>,
    ) -> Result<(), PkiError> {
        write_certs(&self.ca, roots)?;
        write_certs(&self.cert, chain)?;
        write_key(&self.key, key)
    }
}

fn io(path: &Path, e: std::io::Error) -> PkiError {
    PkiError::Io(format!("{}: {e}", path.display()))
}

fn read_pem(path: &Path, tag: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let text = std::fs::read(path).map_err(|e| io(path, e))?;
    let blocks = pem::parse_many(&text).map_err(|e| PkiError::Invalid(format!("{}: not PEM: {e}", path.display())))?;
    let found: Vec<Vec<u8>> = blocks.into_iter().filter(|b| b.tag() == tag).map(|b| b.into_contents()).collect();
    if found.is_empty() {
        return Err(PkiError::Invalid(format!("{}: no {tag} in it", path.display())));
    }
    Ok(found)
}

pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    Ok(read_pem(path, "CERTIFICATE")?.into_iter().map(CertificateDer::from).collect())
}

pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    let mut keys = read_pem(path, "PRIVATE KEY")?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(keys.swap_remove(0))))
}

/// PEM text of certificates.
pub fn certs_pem(certs: &[CertificateDer<'_>]) -> String {
    let blocks: Vec<pem::Pem> = certs.iter().map(|c| pem::Pem::new("CERTIFICATE", c.to_vec())).collect();
    pem::encode_many(&blocks)
}

pub fn write_certs(path: &Path, certs: &[CertificateDer<'_>]) -> Result<(), PkiError> {
    write_private(path, certs_pem(certs).as_bytes())
}

pub fn write_key(path: &Path, key: &PrivateKeyDer<'_>) -> Result<(), PkiError> {
    write_private(path, pem::encode(&pem::Pem::new("PRIVATE KEY", key.secret_der().to_vec())).as_bytes())
}

/// Writes `bytes` to `path` through a temporary file, 0600, fsynced, then renamed.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| io(dir, e))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io(dir, e))
}
