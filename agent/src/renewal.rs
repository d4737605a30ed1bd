//! Keeps a node's certificate valid without a restart: it renews when a third of the
//! certificate's lifetime is left, and at once when the cluster's CA record changes (a
//! CA rotation). A master signs its own renewal from its replicated state; a worker asks
//! a master (`RenewCert`). The new key, certificate and trusted CAs are written to the
//! data dir and swapped into the live credentials: the next TLS handshake uses them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use coord::node::CoordNode;
use pki::cert::Signed;
use pki::types::CertificateDer;
use proto::clusterpb as pb;
use proto::clusterpb::cluster_admin_client::ClusterAdminClient;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::daemon::{admin_credential, node_credential, TLS_DIR};

/// Where the digest of the CA record the node's certificate came from is kept.
const RECORD_FILE: &str = "ca-record";

/// Who signs a renewal.
pub enum Signer {
    /// A master: its own state holds the CA.
    Local(Arc<CoordNode>),
    /// A worker: the masters it knows (kept current by its session).
    Remote(Arc<Mutex<Vec<String>>>),
}

pub struct Keeper {
    pub dir: PathBuf,
    pub creds: Arc<pki::Credentials>,
    pub signer: Signer,
    /// The cluster's CA record digest as the leader last sent it (workers).
    pub hint: watch::Receiver<String>,
    /// Notified after each renewal (the agent session reopens on a new connection).
    pub renewed: Arc<Notify>,
}

fn record_path(dir: &Path) -> PathBuf {
    dir.join(TLS_DIR).join(RECORD_FILE)
}

/// Records which CA record the node's certificate came from (at init, join and each
/// renewal), so that a restart does not renew for nothing.
pub fn save_record_digest(dir: &Path, digest: &str) {
    if let Err(e) = pki::files::write_private(&record_path(dir), digest.as_bytes()) {
        warn!("saving the CA record digest: {e}");
    }
}

impl Keeper {
    /// Runs until the process ends.
    pub async fn run(mut self) {
        let mut known = std::fs::read_to_string(record_path(&self.dir)).unwrap_or_default().trim().to_string();
        let mut failures = 0u32;
        loop {
            let Some(me) = self.creds.identity() else { return };
            // Certificates are backdated (for peers whose clocks are behind): the lifetime
            // counts from when it was signed.
            let signed = me.not_before_unix + pki::cert::BACKDATE.as_secs() as i64;
            let lifetime = (me.not_after_unix - signed).max(3);
            let renew_at = me.not_after_unix - lifetime / 3;
            let wait = Duration::from_secs((renew_at - pki::now_unix()).max(0) as u64);
            if let Signer::Local(coord) = &self.signer {
                // The replicated CA record says whom to trust: follow it now, whether or
                // not this node's own renewal succeeds (a master learns of the end of a
                // CA rotation from its state, and must stop trusting the old CA then).
                self.follow_trusted(coord);
            }
            let reason = if failures > 0 {
                // After a failure, wait whatever the trigger was (1 s, doubling to 32 s).
                tokio::time::sleep(Duration::from_secs(1 << failures.min(5))).await;
                "retrying"
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => "a third of its lifetime is left",
                    _ = self.ca_changed(&known) => "the cluster CA changed",
                }
            };
            if let Signer::Local(coord) = &self.signer {
                self.follow_trusted(coord);
            }
            info!(reason, "renewing this node's certificate");
            match self.renew().await {
                Ok(record) => {
                    failures = 0;
                    info!(reason, "node certificate renewed");
                    save_record_digest(&self.dir, &record);
                    known = record;
                    self.renewed.notify_waiters();
                    // Never more than one renewal a second, whatever the certificates say.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    failures += 1;
                    let left = me.not_after_unix - pki::now_unix();
                    if left > 0 {
                        warn!(reason, "renewing this node's certificate failed ({left} s of validity left): {e:#}");
                    } else {
                        warn!(
                            reason,
                            "renewing this node's certificate failed and it has expired: the cluster no longer accepts \
                             this node; remove its data dir and join again with a token ({e:#})"
                        );
                    }
                }
            }
        }
    }

    /// Trusts exactly the CAs the replicated record names, if that differs from now.
    fn follow_trusted(&self, coord: &CoordNode) {
        let Some(trusted) = coord.view(|v| v.ca().map(|c| c.trusted.clone())) else { return };
        let trusted: Vec<CertificateDer<'static>> = trusted.into_iter().map(CertificateDer::from).collect();
        if trusted != self.creds.roots() {
            match self.creds.set_roots(trusted) {
                Ok(()) => info!("trusted CAs follow the cluster's CA record"),
                Err(e) => warn!("applying the cluster's trusted CAs failed: {e}"),
            }
        }
    }

    /// Resolves when the cluster's CA record is other than `known`.
    async fn ca_changed(&mut self, known: &str) {
        loop {
            let current = match &self.signer {
                Signer::Local(coord) => coord.ca_record_digest(),
                Signer::Remote(_) => self.hint.borrow().clone(),
            };
            if !current.is_empty() && current != known {
                return;
            }
            match &self.signer {
                // A master sees the change in its own state: SetCa applied.
                Signer::Local(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                Signer::Remote(_) => {
                    if self.hint.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                }
            }
        }
    }

    /// One renewal; returns the CA record digest the new certificate came from.
    async fn renew(&self) -> anyhow::Result<String> {
        let me = self.creds.identity().context("this node has no certificate")?;
        let (key, csr) = pki::cert::new_key_and_csr()?;
        let issued = match &self.signer {
            Signer::Local(coord) => pb::CertResponse::from(coord.renew_node_cert(&me, &csr)?),
            Signer::Remote(masters) => {
                let masters = masters.lock().expect("masters").clone();
                let tls = self.creds.client()?;
                let mut last = anyhow::anyhow!("no master known");
                let mut got = None;
                for m in &masters {
                    let call = async {
                        let ch = client::channel(m, &tls)?;
                        let r = ClusterAdminClient::new(ch).renew_cert(pb::RenewCertRequest { csr: csr.clone() }).await;
                        r.map(|r| r.into_inner()).map_err(|s| anyhow::Error::from(client::ClientError::from(s)))
                    };
                    match tokio::time::timeout(Duration::from_secs(5), call).await {
                        Ok(Ok(r)) => {
                            got = Some(r);
                            break;
                        }
                        Ok(Err(e)) => last = e.context(format!("asking {m}")),
                        Err(_) => last = anyhow::anyhow!("{m} did not answer within 5 s"),
                    }
                }
                got.ok_or(last)?
            }
        };
        let Signed { chain, trusted } = Signed::from_der(issued.cert, issued.chain, issued.trusted);
        let got = pki::PeerIdentity::from_der(&chain[0])?;
        anyhow::ensure!(
            got.node_id == me.node_id && got.role == me.role,
            "the renewed certificate names {} {:?}, not this node",
            got.role,
            got.node_id
        );
        // The files first: a crash after this point restarts with the new certificate.
        node_credential(&self.dir).save(&trusted, &chain, &key)?;
        self.creds.replace(trusted.clone(), chain, Some(key))?;
        if let Signer::Local(coord) = &self.signer {
            // The node's own renewal stands whatever happens to this one.
            if let Err(e) = self.refresh_admin(coord, &trusted, &got.issuer) {
                warn!("reissuing the admin credential in the data dir failed: {e:#}");
            }
        }
        Ok(issued.ca_record_digest)
    }

    /// The admin credential `init` left in a master's data dir follows a CA rotation, so
    /// that `cluster … --data-dir` keeps working on that machine.
    fn refresh_admin(
        &self,
        coord: &CoordNode,
        trusted: &[CertificateDer<'static>],
        issuer: &str,
    ) -> anyhow::Result<()> {
        let files = admin_credential(&self.dir);
        if !files.exist() {
            return Ok(());
        }
        let current = pki::files::read_certs(&files.cert)?;
        let same_ca =
            current.first().and_then(|c| pki::PeerIdentity::from_der(c).ok()).is_some_and(|i| i.issuer == issuer);
        if same_ca {
            return Ok(());
        }
        let (key, csr) = pki::cert::new_key_and_csr()?;
        let i = coord.issue_client_cert(pki::CertRole::Admin, "admin", &csr, coord::certs::CLIENT_CERT_VALIDITY)?;
        files.save(trusted, &Signed::from_der(i.cert, i.chain, vec![]).chain, &key)?;
        info!(path = %files.cert.display(), "admin credential reissued by the new CA");
        Ok(())
    }
}
