//! Finding the credential a `cluster` command connects with: the files given, a
//! credential directory, or a node's data dir (its admin credential if `init` made one
//! there, else the node's own certificate, which a manager may use as an admin).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::daemon::{admin_credential, node_credential, TLS_DIR};

/// The data dir looked in when none is given.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cluster";

/// Where a command may find its credential, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct CredentialSource {
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// A directory with `ca.crt` and `admin.crt`/`admin.key` (or `reader.*`), as
    /// `cluster cert issue --out` writes.
    pub cert_dir: Option<PathBuf>,
    /// A node's data dir.
    pub data_dir: Option<PathBuf>,
}

impl CredentialSource {
    /// The files to use, in this order: `--cacert/--cert/--key`, `--cert-dir`,
    /// `--data-dir`, then the default data dir.
    pub fn files(&self) -> anyhow::Result<pki::CredentialFiles> {
        match (&self.cacert, &self.cert, &self.key) {
            (Some(ca), Some(cert), Some(key)) => {
                return Ok(pki::CredentialFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() })
            }
            (None, None, None) => {}
            _ => bail!("--cacert, --cert and --key go together"),
        }
        if let Some(d) = &self.cert_dir {
            return first_in(d, &["admin", "reader", "node"]).with_context(|| {
                format!("{} holds no ca.crt with admin.*, reader.* or node.* beside it", d.display())
            });
        }
        let data = self.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let found = [admin_credential(&data), node_credential(&data)].into_iter().find(|f| f.exist());
        match found {
            Some(f) => Ok(f),
            None if self.data_dir.is_some() => {
                bail!("{} holds no credential (looked for {}/admin.crt and node.crt)", data.display(), TLS_DIR)
            }
            None => bail!(
                "no credential to connect with: every connection is mutual TLS. Give --data-dir of a master \
                 (its {TLS_DIR}/ holds one), --cert-dir DIR (from `cluster cert issue`), or --cacert, --cert and --key"
            ),
        }
    }

    pub fn load(&self) -> anyhow::Result<Arc<pki::Credentials>> {
        let f = self.files()?;
        f.load().with_context(|| format!("loading the credential {}", f.cert.display()))
    }
}

fn first_in(dir: &Path, stems: &[&str]) -> Option<pki::CredentialFiles> {
    stems.iter().map(|s| pki::CredentialFiles::in_dir(dir, s)).find(|f| f.exist())
}
