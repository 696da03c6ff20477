//! TLS material: a configured certificate, or a CA and server certificate generated on first
//! start and kept under `<data-dir>/tls`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A server certificate chain and its key, plus the CA clients should trust.
pub struct TlsMaterial {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key of the leaf.
    pub key: PrivateKeyDer<'static>,
    /// PEM file of the CA clients should trust (`sslrootcert`, `SPG_API_CA`).
    pub ca_file: PathBuf,
}

impl TlsMaterial {
    /// Load `cert`/`key` (PEM) when given; else load or create the self-signed set in `dir`.
    /// With a configured certificate, `ca` names the CA file to hand to clients (default: the
    /// certificate file itself).
    pub fn load_or_generate(
        dir: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
    ) -> Result<TlsMaterial> {
        Self::load_or_generate_for(dir, cert, key, ca, &[])
    }

    /// [`TlsMaterial::load_or_generate`], where a generated certificate also names `names`
    /// (host names or IP addresses this daemon is reached at besides the loopback ones). A
    /// generated certificate lacking one of them is issued again by the same CA, so clients
    /// that trust the CA keep trusting it.
    pub fn load_or_generate_for(
        dir: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
        names: &[String],
    ) -> Result<TlsMaterial> {
        match (cert, key) {
            (Some(cert), Some(key)) => load(cert, key, ca.unwrap_or(cert)),
            (None, None) => {
                let (cert, key, ca) = (
                    dir.join("server.pem"),
                    dir.join("server.key"),
                    dir.join("ca.pem"),
                );
                let mut wanted = default_names();
                for n in names {
                    if !n.is_empty() && !wanted.contains(n) {
                        wanted.push(n.clone());
                    }
                }
                if !cert.exists() || !key.exists() || !ca.exists() {
                    generate(dir, &wanted)?;
                } else {
                    let issued = std::fs::read_to_string(dir.join("names")).unwrap_or_default();
                    let issued: Vec<&str> = issued.lines().collect();
                    if !wanted.iter().all(|n| issued.contains(&n.as_str())) {
                        reissue(dir, &wanted)?;
                    }
                }
                load(&cert, &key, &ca)
            }
            _ => Err(anyhow!("give both --tls-cert and --tls-key, or neither")),
        }
    }

    /// The gateway's TLS settings.
    pub fn gateway(&self) -> Result<spg_gateway_lib::GatewayTls> {
        Ok(spg_gateway_lib::GatewayTls::new(
            self.chain.clone(),
            self.key.clone_key(),
        )?)
    }

    /// A rustls server configuration for HTTPS (ALPN h2 and http/1.1).
    pub fn https(&self) -> Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(c))
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> Result<Vec<u8>> {
        std::fs::read(&self.ca_file).with_context(|| format!("reading {}", self.ca_file.display()))
    }
}

fn load(cert: &Path, key: &Path, ca: &Path) -> Result<TlsMaterial> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    if chain.is_empty() {
        return Err(anyhow!("{} holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading private key {}", key.display()))?;
    Ok(TlsMaterial {
        chain,
        key,
        ca_file: ca.to_path_buf(),
    })
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    spg_core::fsmode::write_private(path, contents)
        .with_context(|| format!("writing {}", path.display()))
}

/// localhost, 127.0.0.1, ::1 and this host's name.
fn default_names() -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() && !names.iter().any(|n| n == h) {
            names.push(h.to_string());
        }
    }
    names
}

/// The generated CA's parameters (the same every time: a re-issued leaf names the issuer the
/// CA certificate has as its subject).
fn ca_params() -> Result<rcgen::CertificateParams> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "SPG local CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(ca_params)
}

/// Create a CA (its key kept as `ca.key`) and a server certificate for `names`.
fn generate(dir: &Path, names: &[String]) -> Result<()> {
    use rcgen::KeyPair;
    spg_core::fsmode::private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params()?.self_signed(&ca_key)?;
    write_private(&dir.join("ca.key"), &ca_key.serialize_pem())?;
    write_private(&dir.join("ca.pem"), &ca_cert.pem())?;
    issue(dir, ca_key, &ca_cert.pem(), names)?;
    tracing::info!(dir = %dir.display(), "generated a self-signed CA and server certificate");
    Ok(())
}

/// Issue the server certificate again for `names` with the kept CA key (a set generated
/// before the key was kept is generated anew).
fn reissue(dir: &Path, names: &[String]) -> Result<()> {
    let ca_key = match std::fs::read_to_string(dir.join("ca.key")) {
        Ok(pem) => rcgen::KeyPair::from_pem(&pem)
            .with_context(|| format!("parsing {}", dir.join("ca.key").display()))?,
        Err(_) => return generate(dir, names),
    };
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem"))
        .with_context(|| format!("reading {}", dir.join("ca.pem").display()))?;
    issue(dir, ca_key, &ca_pem, names)?;
    tracing::info!(dir = %dir.display(), ?names, "issued the server certificate for more names");
    Ok(())
}

/// Write `server.key`, `server.pem` (leaf and CA) and `names` for a leaf signed by `ca_key`.
fn issue(dir: &Path, ca_key: rcgen::KeyPair, ca_pem: &str, names: &[String]) -> Result<()> {
    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
    };
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "SPG gateway");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    write_private(&dir.join("server.key"), &key.serialize_pem())?;
    write_private(&dir.join("server.pem"), &format!("{}{ca_pem}", cert.pem()))?;
    write_private(&dir.join("names"), &names.join("\n"))?;
    Ok(())
}
