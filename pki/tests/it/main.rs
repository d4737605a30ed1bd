//! Real TLS handshakes on loopback between credentials this crate makes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use pki::cert::{new_key_and_csr, Ca, CertRole, NodeCert, DEFAULT_CERT_VALIDITY};
use pki::net::{incoming, AcceptLimits};
use pki::{ClientTls, Credentials};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn manager(ca: &Ca, id: u64, now: SystemTime, validity: Duration) -> Arc<Credentials> {
    let (key, csr) = new_key_and_csr().unwrap();
    let spec = NodeCert { cluster_id: "c1", node_id: id, role: CertRole::Manager, hosts: &[], validity, now };
    let cert = ca.sign_node(&csr, &spec).unwrap();
    Credentials::new(vec![ca.cert.clone()], vec![cert, ca.cert.clone()], Some(key)).unwrap()
}

fn client(ca: &Ca, role: CertRole, now: SystemTime, validity: Duration) -> Arc<Credentials> {
    let (cert, key) = ca.issue_client("c1", role, "ops", validity, now).unwrap();
    Credentials::new(vec![ca.cert.clone()], vec![cert], Some(key)).unwrap()
}

/// Serves one connection at a time; each accepted one reports the identity it saw.
async fn server(creds: Arc<Credentials>) -> (String, tokio::sync::mpsc::Receiver<Option<pki::PeerIdentity>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut conns = Box::pin(incoming(l, creds.server_config().unwrap(), AcceptLimits::default()));
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Some(Ok(mut c)) = conns.next().await {
            use tonic::transport::server::Connected;
            let _ = tx.send(c.connect_info().identity).await;
            let mut b = [0u8; 4];
            if c.read_exact(&mut b).await.is_ok() {
                let _ = c.write_all(&b).await;
            }
        }
    });
    (addr, rx)
}

async fn dial(addr: &str, tls: &ClientTls) -> std::io::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    let mut s = tokio_rustls::TlsConnector::from(tls.config.clone()).connect(tls.server_name.clone(), tcp).await?;
    s.write_all(b"ping").await?;
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await?;
    Ok(())
}

#[tokio::test]
async fn mutual_tls_reads_the_clients_role_and_refuses_strangers() {
    let now = SystemTime::now();
    let ca = Ca::generate("c1", now).unwrap();
    let (addr, mut seen) = server(manager(&ca, 1, now, DEFAULT_CERT_VALIDITY)).await;

    dial(&addr, &client(&ca, CertRole::Admin, now, DEFAULT_CERT_VALIDITY).client().unwrap()).await.unwrap();
    let id = seen.recv().await.unwrap().unwrap();
    assert_eq!((id.role, id.name.as_str()), (CertRole::Admin, "ops"));

    // A client without a certificate gets through the handshake, named by nobody.
    let anon = Credentials::new(vec![ca.cert.clone()], vec![], None).unwrap();
    dial(&addr, &anon.client().unwrap()).await.unwrap();
    assert_eq!(seen.recv().await.unwrap(), None);

    // Another cluster's CA: the server refuses its certificate, and the client refuses
    // the server's.
    let other = Ca::generate("c2", now).unwrap();
    assert!(dial(&addr, &client(&other, CertRole::Admin, now, DEFAULT_CERT_VALIDITY).client().unwrap()).await.is_err());
    let stranger = Credentials::new(vec![other.cert.clone()], vec![], None).unwrap();
    assert!(dial(&addr, &stranger.client().unwrap()).await.is_err());

    // An expired client certificate is refused; a renewed one, swapped in, works.
    let old = client(&ca, CertRole::Admin, now - Duration::from_secs(7200), Duration::from_secs(60));
    assert!(dial(&addr, &old.client().unwrap()).await.is_err());
    let (cert, key) = ca.issue_client("c1", CertRole::Admin, "ops", DEFAULT_CERT_VALIDITY, now).unwrap();
    old.replace(vec![ca.cert.clone()], vec![cert], Some(key)).unwrap();
    dial(&addr, &old.client().unwrap()).await.unwrap();
    assert!(seen.recv().await.unwrap().is_some());

    // A worker certificate cannot serve as a master: it lacks the server name.
    let (wkey, csr) = new_key_and_csr().unwrap();
    let spec = NodeCert {
        cluster_id: "c1",
        node_id: 9,
        role: CertRole::Worker,
        hosts: &[],
        validity: DEFAULT_CERT_VALIDITY,
        now,
    };
    let wcert = ca.sign_node(&csr, &spec).unwrap();
    let worker = Credentials::new(vec![ca.cert.clone()], vec![wcert, ca.cert.clone()], Some(wkey)).unwrap();
    let (waddr, _seen) = server(worker).await;
    assert!(dial(&waddr, &client(&ca, CertRole::Admin, now, DEFAULT_CERT_VALIDITY).client().unwrap()).await.is_err());
}

#[tokio::test]
async fn a_joiner_pins_the_ca_by_digest_before_sending_anything() {
    let now = SystemTime::now();
    let ca = Ca::generate("c1", now).unwrap();
    let (addr, _seen) = server(manager(&ca, 1, now, DEFAULT_CERT_VALIDITY)).await;
    let (tls, found) = ClientTls::pinned(&ca.digest()).unwrap();
    dial(&addr, &tls).await.unwrap();
    assert_eq!(found.lock().unwrap().clone(), Some(ca.cert.clone()));

    let impostor = Ca::generate("c1", now).unwrap();
    let (tls, found) = ClientTls::pinned(&impostor.digest()).unwrap();
    let err = dial(&addr, &tls).await.unwrap_err();
    assert!(err.to_string().contains("CA digest"), "{err}");
    assert_eq!(found.lock().unwrap().clone(), None::<CertificateDer<'static>>);
}

#[tokio::test]
async fn a_cross_signed_ca_bridges_old_and_new_trust() {
    let now = SystemTime::now();
    let old = Ca::generate("c1", now).unwrap();
    let new = Ca::generate("c1", now + Duration::from_secs(1)).unwrap();
    let bridge = old.cross_sign(&new, now).unwrap();
    // A server already on the new CA presents the bridge; a client that trusts only the
    // old CA still accepts it.
    let (key, csr) = new_key_and_csr().unwrap();
    let spec = NodeCert {
        cluster_id: "c1",
        node_id: 1,
        role: CertRole::Manager,
        hosts: &[],
        validity: DEFAULT_CERT_VALIDITY,
        now,
    };
    let cert = new.sign_node(&csr, &spec).unwrap();
    let srv =
        Credentials::new(vec![old.cert.clone(), new.cert.clone()], vec![cert, bridge.clone()], Some(key)).unwrap();
    let (addr, _seen) = server(srv).await;
    dial(&addr, &client(&old, CertRole::Admin, now, DEFAULT_CERT_VALIDITY).client().unwrap()).await.unwrap();
    dial(&addr, &client(&new, CertRole::Admin, now, DEFAULT_CERT_VALIDITY).client().unwrap()).await.unwrap();
}

/// Certificate requests and certificates arrive from the network (Join, RenewCert,
/// IssueCert, and every peer's handshake): random and mutated bytes are refused with an
/// error, never a panic, and a request that is accepted yields a certificate for the
/// request's key only.
mod untrusted_bytes {
    use super::*;
    use proptest::prelude::*;

    fn sign(ca: &Ca, csr: &[u8]) -> Result<CertificateDer<'static>, pki::PkiError> {
        let spec = NodeCert {
            cluster_id: "c",
            node_id: 7,
            role: CertRole::Worker,
            hosts: &[],
            validity: DEFAULT_CERT_VALIDITY,
            now: SystemTime::now(),
        };
        ca.sign_node(csr, &spec)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_are_refused_as_requests_and_certificates(b in proptest::collection::vec(any::<u8>(), 0..2048)) {
            prop_assert!(pki::cert::check_csr(&b).is_err());
            let _ = pki::PeerIdentity::from_der(&b);
            let _ = pki::cert::common_name(&b);
        }

        #[test]
        fn mutated_requests_are_refused_or_sign_the_same_key(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
        ) {
            let ca = Ca::generate("c", SystemTime::now()).unwrap();
            let (_key, csr) = new_key_and_csr().unwrap();
            let mut b = csr.clone();
            for (at, byte, op) in edits {
                if b.is_empty() { break; }
                let i = at.index(b.len());
                match op {
                    0 => b[i] = byte,
                    1 => b.insert(i, byte),
                    _ => b.truncate(i),
                }
            }
            let checked = pki::cert::check_csr(&b);
            let signed = sign(&ca, &b);
            // Whatever check_csr says, signing says the same.
            prop_assert_eq!(checked.is_ok(), signed.is_ok());
            if let (Ok(cert), true) = (signed, b != csr) {
                // A mutation that still verifies (in a field the signature does not
                // cover) must leave the key alone: the certificate names the node and
                // carries the key of the original request.
                let id = pki::PeerIdentity::from_der(&cert).unwrap();
                prop_assert_eq!(id.node_id, Some(7));
                let ours = sign(&ca, &csr).unwrap();
                let key = |d: &[u8]| x509_parser::parse_x509_certificate(d).unwrap().1.public_key().raw.to_vec();
                prop_assert_eq!(key(&cert), key(&ours));
            }
        }
    }
}
