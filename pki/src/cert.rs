//! Certificates: the cluster CA, node and client certificates it signs, and the identity
//! read back from a certificate.
//!
//! Who a certificate names lives in its subject: `O` is the cluster id, `OU` the role
//! (`cluster-manager`, `cluster-worker`, `cluster-admin`, `cluster-reader`) and `CN` the
//! node id for nodes or a user name for clients (the etcd convention: the CN is the
//! user). Only a manager certificate carries the server name [`SERVER_NAME`], so a
//! worker or client certificate cannot pose as a master.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::PkiError;

/// The DNS name every manager certificate carries and every client of a master verifies,
/// whatever address it dialled.
pub const SERVER_NAME: &str = "cluster-manager";

/// How long a new CA lasts (Swarm: 20 years).
pub const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 86_400);
/// Default lifetime of node and client certificates (Swarm's 90 days).
pub const DEFAULT_CERT_VALIDITY: Duration = Duration::from_secs(90 * 86_400);
/// Certificates start this long before they are signed, so that a peer whose clock is
/// behind still accepts them.
pub const BACKDATE: Duration = Duration::from_secs(3600);
/// Largest CSR accepted: a P-256 request is about 300 bytes.
pub const MAX_CSR_BYTES: usize = 8 << 10;

/// What a certificate lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CertRole {
    /// A master: Raft traffic, serving clients, signing joins.
    Manager,
    /// A node that runs only an agent.
    Worker,
    /// An operator or application with full access.
    Admin,
    /// An application that may only read (KV reads and watches, listings).
    Reader,
}

impl CertRole {
    /// The `OU` value that names this role.
    pub fn unit(self) -> &'static str {
        match self {
            CertRole::Manager => "cluster-manager",
            CertRole::Worker => "cluster-worker",
            CertRole::Admin => "cluster-admin",
            CertRole::Reader => "cluster-reader",
        }
    }

    fn from_unit(s: &str) -> Option<CertRole> {
        [CertRole::Manager, CertRole::Worker, CertRole::Admin, CertRole::Reader].into_iter().find(|r| r.unit() == s)
    }

    /// Nodes have ids; clients have names.
    pub fn is_node(self) -> bool {
        matches!(self, CertRole::Manager | CertRole::Worker)
    }
}

impl fmt::Display for CertRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertRole::Manager => "manager",
            CertRole::Worker => "worker",
            CertRole::Admin => "admin",
            CertRole::Reader => "reader",
        })
    }
}

impl FromStr for CertRole {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<CertRole, PkiError> {
        match s {
            "manager" => Ok(CertRole::Manager),
            "worker" => Ok(CertRole::Worker),
            "admin" => Ok(CertRole::Admin),
            "reader" => Ok(CertRole::Reader),
            other => Err(PkiError::Invalid(format!("unknown role {other:?}: use manager, worker, admin or reader"))),
        }
    }
}

/// Who a verified peer certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub cluster_id: String,
    pub role: CertRole,
    /// Set for managers and workers.
    pub node_id: Option<u64>,
    /// The `CN`: the node id as text for nodes, the user name for clients.
    pub name: String,
    /// Seconds since the Unix epoch.
    pub not_after_unix: i64,
    pub not_before_unix: i64,
    /// The issuing CA's `CN` (each CA's is distinct, see [`Ca::name`]).
    pub issuer: String,
}

impl PeerIdentity {
    /// Reads the identity from a DER certificate. Only meaningful for a certificate whose
    /// chain was verified; this function checks the shape, not the signature.
    pub fn from_der(der: &[u8]) -> Result<PeerIdentity, PkiError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| PkiError::Invalid(format!("not an X.509 certificate: {e}")))?;
        let subject = cert.subject();
        let one = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>, what: &str| {
            let v: Vec<_> = it.collect();
            match v.as_slice() {
                [a] => a
                    .as_str()
                    .map(str::to_string)
                    .map_err(|_| PkiError::Invalid(format!("certificate {what} is not text"))),
                _ => Err(PkiError::Invalid(format!("certificate subject needs exactly one {what}"))),
            }
        };
        let cluster_id = one(&mut subject.iter_organization(), "O (cluster id)")?;
        let unit = one(&mut subject.iter_organizational_unit(), "OU (role)")?;
        let name = one(&mut subject.iter_common_name(), "CN")?;
        let role = CertRole::from_unit(&unit)
            .ok_or_else(|| PkiError::Invalid(format!("certificate OU {unit:?} names no cluster role")))?;
        let node_id = if role.is_node() {
            Some(
                name.parse::<u64>()
                    .map_err(|_| PkiError::Invalid(format!("node certificate CN {name:?} is not a node id")))?,
            )
        } else {
            None
        };
        let issuer =
            cert.issuer().iter_common_name().next().and_then(|a| a.as_str().ok()).unwrap_or_default().to_string();
        Ok(PeerIdentity {
            cluster_id,
            role,
            node_id,
            name,
            not_after_unix: cert.validity().not_after.timestamp(),
            not_before_unix: cert.validity().not_before.timestamp(),
            issuer,
        })
    }
}

/// A signed certificate as it travels from the CA to its holder (join, renewal,
/// `cluster cert issue`), DER: what to present (the certificate first, then the signing
/// CA and, during a CA rotation, the bridge) and the CAs to trust.
#[derive(Debug, Clone)]
pub struct Signed {
    pub chain: Vec<CertificateDer<'static>>,
    pub trusted: Vec<CertificateDer<'static>>,
}

impl Signed {
    /// From the wire's parts: the certificate, what follows it, and the trusted CAs.
    pub fn from_der(cert: Vec<u8>, chain: Vec<Vec<u8>>, trusted: Vec<Vec<u8>>) -> Signed {
        Signed {
            chain: std::iter::once(cert).chain(chain).map(CertificateDer::from).collect(),
            trusted: trusted.into_iter().map(CertificateDer::from).collect(),
        }
    }
}

/// The host part of `host:port` (an IPv6 address without its brackets).
pub fn host_of(addr: &str) -> String {
    addr.parse::<std::net::SocketAddr>().map(|a| a.ip().to_string()).unwrap_or_else(|_| {
        addr.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']']).to_string()).unwrap_or_else(|| addr.to_string())
    })
}

/// A certificate's subject common name, if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, x) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = x.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// The SHA-256 of a certificate's DER bytes, lowercase hex: what a join token pins.
pub fn digest(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// What a node certificate says, and for how long.
#[derive(Debug, Clone)]
pub struct NodeCert<'a> {
    pub cluster_id: &'a str,
    pub node_id: u64,
    /// Manager or worker.
    pub role: CertRole,
    /// IPs or DNS names a manager is reached at, added to its names.
    pub hosts: &'a [String],
    pub validity: Duration,
    pub now: std::time::SystemTime,
}

/// A CA that can sign: its certificate and key.
pub struct Ca {
    pub cert: CertificateDer<'static>,
    key: KeyPair,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").field("digest", &digest(&self.cert)).finish_non_exhaustive()
    }
}

fn to_offset(t: std::time::SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    rand::fill(&mut b);
    // A positive INTEGER: clear the top bit.
    b[0] &= 0x7f;
    SerialNumber::from_slice(&b)
}

fn rc(e: rcgen::Error) -> PkiError {
    PkiError::Invalid(e.to_string())
}

impl Ca {
    /// A new self-signed CA for `cluster_id`, valid from `now`.
    pub fn generate(cluster_id: &str, now: std::time::SystemTime) -> Result<Ca, PkiError> {
        let key = KeyPair::generate().map_err(rc)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = ca_name(cluster_id, now);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        p.not_before = to_offset(now - BACKDATE);
        p.not_after = to_offset(now + CA_VALIDITY);
        p.serial_number = Some(random_serial());
        let cert = p.self_signed(&key).map_err(rc)?;
        Ca::from_der(cert.der().to_vec(), &key.serialize_der())
    }

    /// A CA from its DER certificate and PKCS#8 key, checking that they belong together.
    pub fn from_der(cert: Vec<u8>, key_pkcs8: &[u8]) -> Result<Ca, PkiError> {
        let key = KeyPair::try_from(key_pkcs8).map_err(|e| PkiError::Invalid(format!("CA key: {e}")))?;
        let cert = CertificateDer::from(cert);
        let (_, x) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| PkiError::Invalid(format!("CA certificate: {e}")))?;
        if x.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(PkiError::Invalid("the CA key does not match the CA certificate".into()));
        }
        let issuer = Issuer::from_ca_cert_der(&cert, KeyPair::try_from(key_pkcs8).map_err(rc)?).map_err(rc)?;
        Ok(Ca { cert, key, issuer })
    }

    /// The key, PKCS#8 DER.
    pub fn key_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }

    pub fn digest(&self) -> String {
        digest(&self.cert)
    }

    /// Signs a CSR for node `node_id` of `cluster_id` as `role` (manager or worker). The
    /// subject and names come from here, never from the request: only its public key is
    /// used. `hosts` (IPs or DNS names) are added to a manager's names so that clients
    /// dialling an address (etcdctl) can verify it.
    pub fn sign_node(&self, csr_der: &[u8], n: &NodeCert<'_>) -> Result<CertificateDer<'static>, PkiError> {
        if !n.role.is_node() {
            return Err(PkiError::Invalid(format!("{} is not a node role", n.role)));
        }
        let public = csr_public_key(csr_der)?;
        let p = leaf_params(n.cluster_id, n.role, &n.node_id.to_string(), n.hosts, n.validity, n.now)?;
        Ok(p.signed_by(&public, &self.issuer).map_err(rc)?.der().clone())
    }

    /// This CA's `CN`, distinct per CA: what [`PeerIdentity::issuer`] holds for the
    /// certificates it signs.
    pub fn name(&self) -> String {
        common_name(&self.cert).unwrap_or_default()
    }

    /// A client certificate (`admin` or `reader`) named `user` for the key of a CSR.
    pub fn sign_client(
        &self,
        csr_der: &[u8],
        cluster_id: &str,
        role: CertRole,
        user: &str,
        validity: Duration,
        now: std::time::SystemTime,
    ) -> Result<CertificateDer<'static>, PkiError> {
        if role.is_node() {
            return Err(PkiError::Invalid(format!("{role} certificates are made by join, not issued")));
        }
        let public = csr_public_key(csr_der)?;
        let p = leaf_params(cluster_id, role, user, &[], validity, now)?;
        Ok(p.signed_by(&public, &self.issuer).map_err(rc)?.der().clone())
    }

    /// A new key and a certificate for a client (`admin` or `reader`) named `user`.
    pub fn issue_client(
        &self,
        cluster_id: &str,
        role: CertRole,
        user: &str,
        validity: Duration,
        now: std::time::SystemTime,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), PkiError> {
        if role.is_node() {
            return Err(PkiError::Invalid(format!("{role} certificates are made by join, not issued")));
        }
        let key = KeyPair::generate().map_err(rc)?;
        let p = leaf_params(cluster_id, role, user, &[], validity, now)?;
        let cert = p.signed_by(&key, &self.issuer).map_err(rc)?.der().clone();
        Ok((cert, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))))
    }

    /// This CA's key signing another CA's certificate (same subject and key as `other`):
    /// the bridge that lets nodes that trust only this CA accept certificates from `other`
    /// during a rotation.
    pub fn cross_sign(&self, other: &Ca, now: std::time::SystemTime) -> Result<CertificateDer<'static>, PkiError> {
        let (_, x) = x509_parser::parse_x509_certificate(&other.cert)
            .map_err(|e| PkiError::Invalid(format!("CA certificate: {e}")))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = ca_name_of(x.subject())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        p.not_before = to_offset(now - BACKDATE);
        p.not_after = OffsetDateTime::from_unix_timestamp(x.validity().not_after.timestamp())
            .map_err(|e| PkiError::Invalid(e.to_string()))?;
        p.serial_number = Some(random_serial());
        Ok(p.signed_by(&other.key, &self.issuer).map_err(rc)?.der().clone())
    }
}

/// The subject of a CA this module made (`O`, `OU`, `CN`), rebuilt from the certificate.
fn ca_name_of(subject: &x509_parser::x509::X509Name<'_>) -> Result<DistinguishedName, PkiError> {
    let text = |a: Option<&x509_parser::x509::AttributeTypeAndValue<'_>>| {
        a.and_then(|a| a.as_str().ok())
            .map(str::to_string)
            .ok_or_else(|| PkiError::Invalid("CA subject lacks O, OU or CN".into()))
    };
    let mut n = DistinguishedName::new();
    n.push(DnType::OrganizationName, text(subject.iter_organization().next())?);
    n.push(DnType::OrganizationalUnitName, text(subject.iter_organizational_unit().next())?);
    n.push(DnType::CommonName, text(subject.iter_common_name().next())?);
    Ok(n)
}

fn ca_name(cluster_id: &str, now: std::time::SystemTime) -> DistinguishedName {
    let mut n = DistinguishedName::new();
    n.push(DnType::OrganizationName, cluster_id);
    n.push(DnType::OrganizationalUnitName, "cluster-ca");
    // Distinct per CA, so a rotated CA never shares a subject with the one it replaces:
    // trust after a rotation is decided by this name, and two CAs made in the same second
    // (an `init` followed at once by a rotation) must still differ. The seconds are for
    // people; the random part is what keeps names apart.
    let secs = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let tag: u32 = rand::random();
    n.push(DnType::CommonName, format!("cluster CA {secs}-{tag:08x}"));
    n
}

fn leaf_params(
    cluster_id: &str,
    role: CertRole,
    cn: &str,
    hosts: &[String],
    validity: Duration,
    now: std::time::SystemTime,
) -> Result<CertificateParams, PkiError> {
    if cn.is_empty() || cn.len() > 64 {
        return Err(PkiError::Invalid(format!("certificate name {cn:?} must be 1 to 64 characters")));
    }
    let mut p = CertificateParams::default();
    let mut n = DistinguishedName::new();
    n.push(DnType::OrganizationName, cluster_id);
    n.push(DnType::OrganizationalUnitName, role.unit());
    n.push(DnType::CommonName, cn);
    p.distinguished_name = n;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if role == CertRole::Manager {
        p.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        p.subject_alt_names.push(SanType::DnsName(SERVER_NAME.try_into().map_err(rc)?));
        p.subject_alt_names.push(SanType::DnsName("localhost".try_into().map_err(rc)?));
        p.subject_alt_names.push(SanType::IpAddress(IpAddr::from([127, 0, 0, 1])));
        for h in hosts {
            let san = match h.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    h.as_str().try_into().map_err(|_| PkiError::Invalid(format!("{h:?} is not a host name or IP")))?,
                ),
            };
            if !p.subject_alt_names.contains(&san) {
                p.subject_alt_names.push(san);
            }
        }
    }
    p.not_before = to_offset(now - BACKDATE);
    p.not_after = to_offset(now + validity);
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// The public key of a CSR whose self-signature checks out.
fn csr_public_key(csr_der: &[u8]) -> Result<rcgen::PublicKey, PkiError> {
    if csr_der.len() > MAX_CSR_BYTES {
        return Err(PkiError::Invalid(format!(
            "certificate request of {} bytes is larger than {MAX_CSR_BYTES}",
            csr_der.len()
        )));
    }
    let der = CertificateSigningRequestDer::from(csr_der);
    CertificateSigningRequestParams::from_der(&der)
        .map(|p| p.public_key)
        .map_err(|e| PkiError::Invalid(format!("bad certificate request: {e}")))
}

/// Checks that `csr_der` is a well-formed, self-signed request of acceptable size.
pub fn check_csr(csr_der: &[u8]) -> Result<(), PkiError> {
    csr_public_key(csr_der).map(|_| ())
}

/// A new node key and a CSR for it: the key never leaves the node.
pub fn new_key_and_csr() -> Result<(PrivateKeyDer<'static>, Vec<u8>), PkiError> {
    let key = KeyPair::generate().map_err(rc)?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "cluster node");
    let csr = p.serialize_request(&key).map_err(rc)?;
    Ok((PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())), csr.der().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn node_and_client_certificates_carry_cluster_role_and_id() {
        let now = SystemTime::now();
        let ca = Ca::generate("c1", now).unwrap();
        let (_key, csr) = new_key_and_csr().unwrap();
        let hosts = ["10.0.0.5".to_string()];
        let spec = NodeCert { role: CertRole::Manager, hosts: &hosts, now, ..worker(7) };
        let cert = ca.sign_node(&csr, &spec).unwrap();
        let id = PeerIdentity::from_der(&cert).unwrap();
        assert_eq!((id.cluster_id.as_str(), id.role, id.node_id), ("c1", CertRole::Manager, Some(7)));
        let (c, _) = ca.issue_client("c1", CertRole::Reader, "app", DEFAULT_CERT_VALIDITY, now).unwrap();
        let id = PeerIdentity::from_der(&c).unwrap();
        assert_eq!((id.role, id.node_id, id.name.as_str()), (CertRole::Reader, None, "app"));
        // The CA's own key round-trips, and a key that is not the CA's is refused.
        let again = Ca::from_der(ca.cert.to_vec(), &ca.key_der()).unwrap();
        assert_eq!(again.digest(), ca.digest());
        let other = Ca::generate("c1", now).unwrap();
        assert!(Ca::from_der(ca.cert.to_vec(), &other.key_der()).is_err());
    }

    fn worker(id: u64) -> NodeCert<'static> {
        NodeCert {
            cluster_id: "c1",
            node_id: id,
            role: CertRole::Worker,
            hosts: &[],
            validity: DEFAULT_CERT_VALIDITY,
            now: SystemTime::now(),
        }
    }

    #[test]
    fn two_cas_made_in_the_same_second_have_different_names() {
        // Trust after a rotation goes by the CA's name: an `init` and a rotation in the
        // same second must not produce one name for two CAs.
        let now = SystemTime::now();
        let (a, b) = (Ca::generate("c1", now).unwrap(), Ca::generate("c1", now).unwrap());
        assert_ne!(a.name(), b.name());
    }

    #[test]
    fn garbage_csrs_and_certificates_are_errors() {
        let ca = Ca::generate("c1", SystemTime::now()).unwrap();
        for bad in [&b""[..], b"\x30\x82\xff\xff", &[0u8; 100], &vec![0x30; MAX_CSR_BYTES + 1]] {
            assert!(ca.sign_node(bad, &worker(2)).is_err());
            assert!(PeerIdentity::from_der(bad).is_err());
        }
        let (_k, csr) = new_key_and_csr().unwrap();
        assert!(ca.sign_node(&csr, &NodeCert { role: CertRole::Admin, ..worker(2) }).is_err());
    }
}
