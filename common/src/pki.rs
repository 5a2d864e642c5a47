//! The node's small PKI: a CA per controller, a server certificate, agent certificates
//! issued from CSRs at enrolment, and the rustls configurations both ends use.
//!
//! TLS 1.3 only, ring as the crypto provider, no insecure mode. The controller's server
//! certificate is verified against the pinned CA under the fixed name [`SERVER_NAME`], so an
//! agent behind NAT or a proxy can reach the node by any address.

use std::fmt;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// The name every controller certificate carries and every agent checks.
pub const SERVER_NAME: &str = "p2c-controller";

/// Validity of agent certificates.
pub const AGENT_CERT_DAYS: i64 = 825;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{what} is not valid PEM: {reason}")]
    Pem { what: String, reason: String },
    #[error("certificate is not valid X.509: {0}")]
    Parse(String),
    #[error("certificate has no common name")]
    NoCommonName,
    #[error("the certificate signing request is invalid: {0}")]
    BadCsr(rcgen::Error),
    #[error(
        "agent name {0:?} is not allowed: use 1-63 characters from a-z, A-Z, 0-9, '.', '_', '-', starting with a letter or digit"
    )]
    BadAgentName(String),
}

/// The ring provider with TLS 1.3 only; every config here is built from it.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertKey").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// Checks an agent name: it appears in certificates, file names and the CLI.
pub fn validate_agent_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok { Ok(()) } else { Err(PkiError::BadAgentName(name.to_string())) }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // ring's SystemRandom cannot fail on Linux short of a missing getrandom(2).
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(days);
}

/// Creates a self-signed CA for a controller.
pub fn create_ca(common_name: &str) -> Result<CertKey, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.distinguished_name.push(DnType::OrganizationName, "p2c");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial());
    validity(&mut params, 3650);
    let cert = params.self_signed(&key)?;
    Ok(CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

fn issuer(ca: &CertKey) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key = KeyPair::from_pem(&ca.key_pem)?;
    Ok(Issuer::from_ca_cert_pem(&ca.cert_pem, key)?)
}

/// Issues the controller's server certificate (name [`SERVER_NAME`] plus `extra_names`).
pub fn issue_server_cert(ca: &CertKey, extra_names: &[String]) -> Result<CertKey, PkiError> {
    let key = KeyPair::generate()?;
    let mut names = vec![SERVER_NAME.to_string()];
    names.extend(extra_names.iter().cloned());
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, SERVER_NAME);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(random_serial());
    validity(&mut params, 3650);
    let cert = params.signed_by(&key, &issuer(ca)?)?;
    Ok(CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// The agent's side of enrolment: a fresh key and a CSR naming the agent.
pub fn make_csr(agent_name: &str) -> Result<(Vec<u8>, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, agent_name);
    let csr = params.serialize_request(&key)?;
    Ok((csr.der().to_vec(), key.serialize_pem()))
}

/// Signs an agent's CSR. Only the CSR's public key is used: the name comes from the
/// controller's token record, never from the request.
pub fn sign_agent_csr(ca: &CertKey, csr_der: &[u8], agent_name: &str) -> Result<Vec<u8>, PkiError> {
    validate_agent_name(agent_name)?;
    let csr = CertificateSigningRequestParams::from_der(&csr_der.into()).map_err(PkiError::BadCsr)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, agent_name);
    params.distinguished_name.push(DnType::OrganizationName, "p2c agent");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(random_serial());
    validity(&mut params, AGENT_CERT_DAYS);
    let cert = params.signed_by(&csr.public_key, &issuer(ca)?)?;
    Ok(cert.der().to_vec())
}

/// SHA-256 of a certificate's DER, lower-case hex: what tokens pin and the store keys on.
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The subject common name of a certificate.
pub fn common_name(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let cn = cert.subject().iter_common_name().next().ok_or(PkiError::NoCommonName)?;
    cn.as_str().map(str::to_string).map_err(|e| PkiError::Parse(e.to_string()))
}

pub fn cert_der_from_pem(pem: &str, what: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::Pem { what: what.to_string(), reason: e.to_string() })
}

pub fn key_der_from_pem(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::Pem { what: what.to_string(), reason: e.to_string() })
}

pub fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn roots(ca_der: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca_der.clone())?;
    Ok(Arc::new(roots))
}

/// Says whether a presented client certificate has been revoked.
pub trait RevocationCheck: Send + Sync + fmt::Debug {
    fn is_revoked(&self, fingerprint: &str) -> bool;
}

/// Chain verification by webpki against the node CA, then the controller's revocation list.
/// Client certificates are optional at the TLS layer so that enrolment (which has none) can
/// share the port; every session call requires one.
#[derive(Debug)]
struct AgentCertVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<dyn RevocationCheck>,
}

impl ClientCertVerifier for AgentCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if self.revoked.is_revoked(&fingerprint(end_entity)) {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked));
        }
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

const ALPN_H2: &[u8] = b"h2";

/// The controller's TLS config: its server certificate with the CA in the chain (agents pin
/// the CA), client certificates verified against the CA and the revocation list.
pub fn server_config(
    ca: &CertKey,
    server: &CertKey,
    revoked: Arc<dyn RevocationCheck>,
) -> Result<rustls::ServerConfig, PkiError> {
    let provider = provider();
    let ca_der = cert_der_from_pem(&ca.cert_pem, "CA certificate")?;
    let inner =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&ca_der)?, provider.clone())
            .allow_unauthenticated()
            .build()?;
    let verifier = Arc::new(AgentCertVerifier { inner, revoked });
    let chain = vec![cert_der_from_pem(&server.cert_pem, "server certificate")?, ca_der];
    let key = key_der_from_pem(&server.key_pem, "server key")?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

/// An enrolled agent's TLS config: the node CA as the only root, its own certificate.
pub fn agent_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<rustls::ClientConfig, PkiError> {
    let ca_der = cert_der_from_pem(ca_pem, "CA certificate")?;
    let chain = vec![cert_der_from_pem(cert_pem, "agent certificate")?];
    let key = key_der_from_pem(key_pem, "agent key")?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&ca_der)?)
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

/// An operator-side TLS config without a client certificate, trusting the node CA (used by
/// tests and tools that probe the enrolment endpoint).
pub fn anonymous_config(ca_pem: &str) -> Result<rustls::ClientConfig, PkiError> {
    let ca_der = cert_der_from_pem(ca_pem, "CA certificate")?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&ca_der)?)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

/// The TLS config an agent enrols with: no client certificate, and the server accepted only
/// if its chain contains a CA whose SHA-256 fingerprint is `pin` (from the token) and the
/// server certificate chains to that CA under [`SERVER_NAME`].
pub fn enroll_config(pin: &str) -> Result<rustls::ClientConfig, PkiError> {
    let verifier = Arc::new(PinnedCaVerifier { pin: pin.to_ascii_lowercase(), provider: provider() });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

#[derive(Debug)]
struct PinnedCaVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates.iter().find(|c| fingerprint(c) == self.pin).ok_or_else(|| {
            rustls::Error::General("the controller's CA does not match the fingerprint in the token".into())
        })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let others: Vec<CertificateDer<'_>> =
            intermediates.iter().filter(|c| fingerprint(c) != self.pin).cloned().collect();
        inner.verify_server_cert(end_entity, &others, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The server name agents verify the controller under.
pub fn server_name() -> ServerName<'static> {
    ServerName::DnsName(rustls::pki_types::DnsName::try_from(SERVER_NAME).unwrap_or_else(|_| {
        // SERVER_NAME is a constant, valid DNS name; this branch cannot run.
        unreachable!()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_certificate_names_come_from_the_controller() {
        let ca = create_ca("test CA").unwrap();
        let (csr, _key) = make_csr("evil-name-in-csr").unwrap();
        let der = sign_agent_csr(&ca, &csr, "web01").unwrap();
        assert_eq!(common_name(&der).unwrap(), "web01");
        assert_eq!(fingerprint(&der).len(), 64);
    }

    #[test]
    fn garbage_csr_is_refused() {
        let ca = create_ca("test CA").unwrap();
        assert!(matches!(sign_agent_csr(&ca, b"not a csr", "web01"), Err(PkiError::BadCsr(_))));
    }

    #[test]
    fn agent_names_are_checked() {
        for ok in ["web01", "db-2.example", "A_b"] {
            validate_agent_name(ok).unwrap();
        }
        for bad in ["", "-x", "a/b", "a b", "ä", &"x".repeat(64)] {
            assert!(validate_agent_name(bad).is_err(), "{bad:?}");
        }
    }
}
