//! TLS for the gateway: a rustls server configuration offering ALPN `postgresql` (so PostgreSQL 17
//! direct TLS works), and the `tls-server-end-point` channel binding data of its certificate.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::proto::ALPN_POSTGRESQL;
use crate::scram::ChannelBinding;
use crate::GatewayError;

/// TLS settings of a gateway.
#[derive(Clone)]
pub struct GatewayTls {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    pub(crate) channel_binding: Option<ChannelBinding>,
}

impl std::fmt::Debug for GatewayTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayTls")
            .field("channel_binding", &self.channel_binding)
            .finish_non_exhaustive()
    }
}

impl GatewayTls {
    /// TLS with `cert_chain` (leaf first) and its private key.
    pub fn new(
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, GatewayError> {
        let leaf = cert_chain
            .first()
            .ok_or_else(|| GatewayError::Tls("empty certificate chain".into()))?;
        let channel_binding = tls_server_end_point(leaf.as_ref());
        if channel_binding.is_none() {
            tracing::warn!(
                "certificate signature algorithm has no tls-server-end-point hash; \
                 SCRAM channel binding is not offered"
            );
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| GatewayError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(cert_chain, key)
            .map_err(|e| GatewayError::Tls(e.to_string()))?;
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(GatewayTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            channel_binding,
        })
    }

    /// The channel binding data, when the certificate allows it.
    pub fn channel_binding(&self) -> Option<&ChannelBinding> {
        self.channel_binding.as_ref()
    }
}

/// Hash algorithms `tls-server-end-point` may use (RFC 5929 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndPointHash {
    /// SHA-256 (also for certificates signed with MD5 or SHA-1).
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

/// `tls-server-end-point` data of a DER certificate: its hash with the hash function of its
/// signature algorithm. `None` for algorithms without one (Ed25519, RSASSA-PSS) or bad DER.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<ChannelBinding> {
    let bytes = match signature_hash(cert_der)? {
        EndPointHash::Sha256 => Sha256::digest(cert_der).to_vec(),
        EndPointHash::Sha384 => Sha384::digest(cert_der).to_vec(),
        EndPointHash::Sha512 => Sha512::digest(cert_der).to_vec(),
    };
    Some(ChannelBinding(bytes))
}

/// One DER TLV: tag, contents, rest.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &d| (acc << 8) | d as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The hash for `tls-server-end-point` of a DER certificate, from its `signatureAlgorithm`.
pub fn signature_hash(cert_der: &[u8]) -> Option<EndPointHash> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (t, cert, _) = tlv(cert_der)?;
    if t != SEQUENCE {
        return None;
    }
    let (t, _tbs, rest) = tlv(cert)?;
    if t != SEQUENCE {
        return None;
    }
    let (t, alg, _) = tlv(rest)?;
    if t != SEQUENCE {
        return None;
    }
    let (t, oid, _) = tlv(alg)?;
    if t != OID {
        return None;
    }
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    if let Some(last) = oid.strip_prefix(RSA) {
        return match last {
            [0x04] | [0x05] | [0x0b] | [0x0e] => Some(EndPointHash::Sha256), // md5, sha1, sha256, sha224
            [0x0c] => Some(EndPointHash::Sha384),
            [0x0d] => Some(EndPointHash::Sha512),
            _ => None, // RSASSA-PSS and others
        };
    }
    if let Some(last) = oid.strip_prefix(ECDSA_SHA2) {
        return match last {
            [0x01] | [0x02] => Some(EndPointHash::Sha256), // sha224, sha256
            [0x03] => Some(EndPointHash::Sha384),
            [0x04] => Some(EndPointHash::Sha512),
            _ => None,
        };
    }
    if oid == ECDSA_SHA1 {
        return Some(EndPointHash::Sha256);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_hash_of_generated_certificates() {
        let p256 = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        assert_eq!(signature_hash(p256.cert.der()), Some(EndPointHash::Sha256));
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        let p384 = params.self_signed(&key).unwrap();
        assert_eq!(signature_hash(p384.der()), Some(EndPointHash::Sha384));
        assert_eq!(tls_server_end_point(p384.der()).unwrap().0.len(), 48);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        let ed = params.self_signed(&key).unwrap();
        assert_eq!(signature_hash(ed.der()), None);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(signature_hash(&[]), None);
        assert_eq!(signature_hash(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(signature_hash(&[0x30, 0x03, 0x30, 0x01, 0x00]), None);
    }
}
