//! rustls configurations for masters and their clients, built from [`Credentials`] that
//! can be replaced while running: a renewed certificate or a rotated CA applies to the
//! next handshake, with no restart and no new listener.

use std::sync::{Arc, Mutex, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};

use crate::cert::{digest, PeerIdentity, SERVER_NAME};
use crate::PkiError;

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls(e: rustls::Error) -> PkiError {
    PkiError::Tls(e.to_string())
}

fn root_store(roots: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, PkiError> {
    if roots.is_empty() {
        return Err(PkiError::Invalid("no CA certificate to trust".into()));
    }
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).map_err(tls)?;
    }
    Ok(Arc::new(store))
}

/// What one handshake uses: replaced whole, never edited.
#[derive(Debug)]
struct State {
    identity: Option<PeerIdentity>,
    key: Option<Arc<CertifiedKey>>,
    roots: Vec<CertificateDer<'static>>,
    /// The trusted CAs' common names (each CA's is distinct).
    root_names: Vec<String>,
    server_verifier: Arc<WebPkiServerVerifier>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

/// The certificates a process trusts (the cluster CA, two during a rotation) and, unless
/// it is anonymous, its own certificate chain and key.
#[derive(Debug)]
pub struct Credentials {
    state: RwLock<Arc<State>>,
    /// Bumped by every [`Credentials::replace`]: holders of long-lived connections
    /// reconnect when it moves, so that peers see the new certificate.
    generation: std::sync::atomic::AtomicU64,
}

impl Credentials {
    /// `chain` starts with this process's certificate; an empty chain is an anonymous
    /// client that can only reach calls open to everyone.
    pub fn new(
        roots: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: Option<PrivateKeyDer<'static>>,
    ) -> Result<Arc<Credentials>, PkiError> {
        Ok(Arc::new(Credentials {
            state: RwLock::new(Arc::new(build(roots, chain, key)?)),
            generation: Default::default(),
        }))
    }

    /// Replaces everything at once; the next handshake uses it.
    pub fn replace(
        &self,
        roots: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: Option<PrivateKeyDer<'static>>,
    ) -> Result<(), PkiError> {
        let s = build(roots, chain, key)?;
        *self.state.write().expect("credentials lock") = Arc::new(s);
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Replaces the trusted CAs only, keeping this process's certificate and key: the
    /// next handshake verifies peers against `roots`. Long-lived connections are not
    /// told (the generation stays), since what this process presents did not change.
    pub fn set_roots(&self, roots: Vec<CertificateDer<'static>>) -> Result<(), PkiError> {
        let cur = self.current();
        let mut s = build(roots, Vec::new(), None)?;
        s.identity = cur.identity.clone();
        s.key = cur.key.clone();
        *self.state.write().expect("credentials lock") = Arc::new(s);
        Ok(())
    }

    /// How many times [`Credentials::replace`] ran.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn current(&self) -> Arc<State> {
        self.state.read().expect("credentials lock").clone()
    }

    /// Who this process's own certificate names.
    pub fn identity(&self) -> Option<PeerIdentity> {
        self.current().identity.clone()
    }

    /// Whether a CA named `issuer` (its common name) is trusted now. A connection
    /// verified its peer's certificate when it opened; this answers, on each request,
    /// whether that certificate's CA is still trusted (after a CA rotation, it is not).
    pub fn trusts_issuer(&self, issuer: &str) -> bool {
        self.current().root_names.iter().any(|n| n == issuer)
    }

    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.current().roots.clone()
    }

    /// This process's chain, leaf first.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current().key.as_ref().map(|k| k.cert.clone()).unwrap_or_default()
    }

    /// A server that asks every client for a certificate of this cluster's CA but also
    /// accepts clients without one (a joining node has none yet); what each caller may do
    /// is decided per call from the identity found, or not found, at the handshake.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, PkiError> {
        let mut c = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls)?
            .with_client_cert_verifier(Arc::new(LiveClientVerifier(self.clone())))
            .with_cert_resolver(Arc::new(LiveResolver(self.clone())));
        c.alpn_protocols = vec![b"h2".to_vec()];
        // No resumption: a resumed session carries the identity of the certificate that
        // was verified when it began, so a renewed, expired or rotated-out certificate
        // would keep its old standing. Every connection verifies a certificate now.
        c.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        c.send_tls13_tickets = 0;
        Ok(Arc::new(c))
    }

    /// [`Credentials::server_config`] for the HTTP face: the same certificates and
    /// optional client certificate, speaking HTTP/1.1 as well as HTTP/2 (browsers, curl,
    /// HAProxy and scripts).
    pub fn http_server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, PkiError> {
        let mut c = Arc::unwrap_or_clone(self.server_config()?);
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(c))
    }

    /// A client of masters: verifies [`SERVER_NAME`] against the trusted CAs and presents
    /// this process's certificate when it has one.
    pub fn client_config(self: &Arc<Self>) -> Result<Arc<ClientConfig>, PkiError> {
        let mut c = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LiveServerVerifier(self.clone())))
            .with_client_cert_resolver(Arc::new(LiveResolver(self.clone())));
        c.alpn_protocols = vec![b"h2".to_vec()];
        c.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(c))
    }

    /// A [`ClientTls`] for masters of this cluster.
    pub fn client(self: &Arc<Self>) -> Result<ClientTls, PkiError> {
        Ok(ClientTls {
            config: self.client_config()?,
            server_name: ServerName::try_from(SERVER_NAME).expect("valid name"),
            creds: Some(self.clone()),
        })
    }
}

fn build(
    roots: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: Option<PrivateKeyDer<'static>>,
) -> Result<State, PkiError> {
    let store = root_store(&roots)?;
    let server_verifier = WebPkiServerVerifier::builder_with_provider(store.clone(), provider())
        .build()
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    let client_verifier = WebPkiClientVerifier::builder_with_provider(store, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    let (identity, key) = match (chain.first(), key) {
        (None, None) => (None, None),
        (Some(leaf), Some(key)) => {
            let identity = PeerIdentity::from_der(leaf)?;
            let signer = provider().key_provider.load_private_key(key).map_err(tls)?;
            let ck = CertifiedKey::new(chain, signer);
            ck.keys_match().map_err(|e| PkiError::Invalid(format!("the key does not match the certificate: {e}")))?;
            (Some(identity), Some(Arc::new(ck)))
        }
        _ => return Err(PkiError::Invalid("a certificate needs its key, and a key its certificate".into())),
    };
    let root_names = roots.iter().filter_map(|r| crate::cert::common_name(r)).collect();
    Ok(State { identity, key, roots, root_names, server_verifier, client_verifier })
}

#[derive(Debug)]
struct LiveResolver(Arc<Credentials>);

impl ResolvesServerCert for LiveResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().key.clone()
    }
}

impl ResolvesClientCert for LiveResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.current().key.clone()
    }

    fn has_certs(&self) -> bool {
        self.0.current().key.is_some()
    }
}

#[derive(Debug)]
struct LiveServerVerifier(Arc<Credentials>);

impl ServerCertVerifier for LiveServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.current().server_verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().server_verifier.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().server_verifier.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().server_verifier.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct LiveClientVerifier(Arc<Credentials>);

impl ClientCertVerifier for LiveClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would borrow from state that can be replaced; clients send their one
        // certificate without them.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.current().client_verifier.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().client_verifier.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().client_verifier.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().client_verifier.supported_verify_schemes()
    }
}

/// Where a pinned handshake leaves the CA certificate that matched.
pub type PinnedCa = Arc<Mutex<Option<CertificateDer<'static>>>>;

/// How a client dials with TLS: its configuration and the name it verifies.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
    /// The live credentials behind `config`, when it has them.
    pub creds: Option<Arc<Credentials>>,
}

impl ClientTls {
    /// The generation of the live credentials behind it (0: fixed ones): a connection
    /// made at another generation presents an older certificate.
    pub fn generation(&self) -> u64 {
        self.creds.as_ref().map_or(0, |c| c.generation())
    }

    /// For a server outside the cluster (etcd, in benchmarks): trusts `roots`, verifies
    /// `server_name`, presents `chain`/`key` if given.
    pub fn for_server(
        roots: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: Option<PrivateKeyDer<'static>>,
        server_name: &str,
    ) -> Result<ClientTls, PkiError> {
        let store = root_store(&roots)?;
        let b = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().map_err(tls)?;
        let b = b.with_root_certificates(store);
        let mut c = match key {
            Some(k) => b.with_client_auth_cert(chain, k).map_err(tls)?,
            None => b.with_no_client_auth(),
        };
        c.alpn_protocols = vec![b"h2".to_vec()];
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|_| PkiError::Invalid(format!("{server_name:?} is not a server name")))?;
        Ok(ClientTls { config: Arc::new(c), server_name, creds: None })
    }

    /// For a node that is joining: it trusts nothing yet, so it accepts a server whose
    /// chain contains a CA certificate with the SHA-256 `ca_digest` (from the join token)
    /// and whose certificate that CA signed for [`SERVER_NAME`]. Anything else fails the
    /// handshake, before a byte of the request (and its secret) is sent. The CA that
    /// matched is left in the returned slot.
    pub fn pinned(ca_digest: &str) -> Result<(ClientTls, PinnedCa), PkiError> {
        let found = Arc::new(Mutex::new(None));
        let verifier = Arc::new(PinnedVerifier { digest: ca_digest.to_ascii_lowercase(), found: found.clone() });
        let mut c = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        c.alpn_protocols = vec![b"h2".to_vec()];
        Ok((
            ClientTls {
                config: Arc::new(c),
                server_name: ServerName::try_from(SERVER_NAME).expect("valid name"),
                creds: None,
            },
            found,
        ))
    }
}

#[derive(Debug)]
struct PinnedVerifier {
    digest: String,
    found: PinnedCa,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| digest(c) == self.digest) else {
            return Err(rustls::Error::General(
                "the server's CA does not match the join token's CA digest: this is not the cluster the token is for"
                    .into(),
            ));
        };
        let ca = ca.clone().into_owned();
        let store = root_store(std::slice::from_ref(&ca)).map_err(|e| rustls::Error::General(e.to_string()))?;
        let v = WebPkiServerVerifier::builder_with_provider(store, provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let others: Vec<_> = intermediates.iter().filter(|c| digest(c) != self.digest).cloned().collect();
        let ok = v.verify_server_cert(end_entity, &others, server_name, ocsp, now)?;
        *self.found.lock().expect("pinned CA slot") = Some(ca);
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}
