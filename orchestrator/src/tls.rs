//! The controller's own certificate authority: TLS for the API off loopback without anyone
//! copying certificates around.
//!
//! At first start a controller makes a CA (ECDSA P-256, `tls/ca.pem` and `tls/ca.key` in its
//! data directory, the key 0600); on etcd the controllers share one CA as they share the API
//! token. Each start issues a fresh serving certificate from it for the names and addresses
//! the controller is reached at. Clients trust the CA: the CLI reads `tls/ca.pem` from the data
//! directory (or `--ca-file`), OpenStack clients take it as `cacert`, and anyone can check it
//! by its fingerprint (`sha256:` and the hex SHA-256 of its DER), which a join token carries.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::Digest;

/// The CA's certificate, in the data directory.
pub const CA_FILE: &str = "tls/ca.pem";
const CA_KEY_FILE: &str = "tls/ca.key";

/// A controller's certificate authority.
pub struct Authority {
    /// The CA certificate (PEM), what clients trust.
    pub ca_pem: String,
    ca_der: Vec<u8>,
    key: KeyPair,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// Where the CA certificate of the controller with `data_dir` is.
pub fn ca_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CA_FILE)
}

impl Authority {
    /// A new CA: its certificate and key as one PEM text (certificate first), what
    /// [`Authority::from_pem`] reads and what controllers on etcd share.
    ///
    /// # Errors
    /// If the key or certificate cannot be made.
    pub fn generate_pem() -> anyhow::Result<String> {
        let key = KeyPair::generate().context("making the CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Kangaroo controller CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let (from, to) = validity(3650);
        params.not_before = from;
        params.not_after = to;
        let cert = params.self_signed(&key).context("signing the CA")?;
        Ok(format!("{}{}", cert.pem(), key.serialize_pem()))
    }

    /// The CA in `pem` (its certificate, then its private key).
    ///
    /// # Errors
    /// If either is missing or does not parse, or they do not belong together.
    pub fn from_pem(pem: &str) -> anyhow::Result<Authority> {
        let split = pem
            .find("-----BEGIN PRIVATE KEY-----")
            .context("no private key after the CA certificate")?;
        let (ca_pem, key_pem) = pem.split_at(split);
        let key = KeyPair::from_pem(key_pem).context("the CA's private key")?;
        let ca_der = rustls_pki_der(ca_pem)?;
        Issuer::from_ca_cert_pem(ca_pem, &key).context("the CA certificate")?;
        // The certificate's public key is the key's (its raw point is in the certificate).
        let public = rcgen::PublicKeyData::der_bytes(&key).to_vec();
        let raw = &public[public.len().saturating_sub(65)..];
        if raw.is_empty() || !ca_der.windows(raw.len()).any(|w| w == raw) {
            anyhow::bail!("the CA's private key does not belong to its certificate");
        }
        Ok(Authority {
            ca_pem: ca_pem.to_owned(),
            ca_der,
            key,
        })
    }

    /// The CA of the controller with `data_dir`, made at its first start.
    ///
    /// # Errors
    /// If the files cannot be read or written, or do not parse.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Authority> {
        let (cert, key) = (data_dir.join(CA_FILE), data_dir.join(CA_KEY_FILE));
        if cert.exists() || key.exists() {
            let text = format!(
                "{}{}",
                std::fs::read_to_string(&cert)
                    .with_context(|| format!("reading {}", cert.display()))?,
                std::fs::read_to_string(&key)
                    .with_context(|| format!("reading {}", key.display()))?
            );
            return Authority::from_pem(&text)
                .with_context(|| format!("the CA in {}", cert.display()));
        }
        let pem = Authority::generate_pem()?;
        let a = Authority::from_pem(&pem)?;
        a.save(data_dir)?;
        Ok(a)
    }

    /// Writes the CA to `data_dir` (the key 0600), as a controller on etcd keeps the shared
    /// one for its CLI.
    ///
    /// # Errors
    /// If the files cannot be written.
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let dir = data_dir.join("tls");
        crate::sys::private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = data_dir.join(CA_KEY_FILE);
        crate::sys::write_private(&key, &self.key.serialize_pem())
            .with_context(|| format!("writing {}", key.display()))?;
        let cert = data_dir.join(CA_FILE);
        std::fs::write(&cert, &self.ca_pem).with_context(|| format!("writing {}", cert.display()))
    }

    /// The CA's fingerprint: `sha256:` and the hex SHA-256 of its certificate (DER).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.ca_der)
    }

    /// A serving certificate for `names` (DNS names) and `ips`, valid a year, with its key
    /// (both PEM).
    ///
    /// # Errors
    /// If it cannot be made.
    pub fn issue_server(
        &self,
        names: &[String],
        ips: &[IpAddr],
    ) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate().context("making the serving key")?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Kangaroo controller");
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let (from, to) = validity(365);
        params.not_before = from;
        params.not_after = to;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, &self.key)?;
        let cert = params
            .signed_by(&key, &issuer)
            .context("signing the serving certificate")?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A TLS server configuration with a fresh serving certificate for `names` and `ips`.
    ///
    /// # Errors
    /// If the certificate cannot be made.
    pub fn server_config(
        &self,
        names: &[String],
        ips: &[IpAddr],
    ) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let (cert_pem, key_pem) = self.issue_server(names, ips)?;
        let chain = vec![
            rustls::pki_types::CertificateDer::from(rustls_pki_der(&cert_pem)?),
            rustls::pki_types::CertificateDer::from(self.ca_der.clone()),
        ];
        let key = {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .context("the serving key")?
        };
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the serving certificate")?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// `sha256:` and the hex SHA-256 of `der`.
pub fn fingerprint(der: &[u8]) -> String {
    let d = sha2::Sha256::digest(der);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The fingerprint ([`fingerprint`]) of the first certificate in `pem`.
///
/// # Errors
/// If `pem` holds no certificate.
pub fn pem_fingerprint(pem: &str) -> anyhow::Result<String> {
    Ok(fingerprint(&rustls_pki_der(pem)?))
}

/// The DER of the first certificate in `pem`.
fn rustls_pki_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .context("no certificate in the PEM text")?;
    Ok(der.to_vec())
}

/// Not before an hour ago (clocks differ), until `days` from now.
fn validity(days: i64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::hours(1),
        now + time::Duration::days(days),
    )
}

/// The names and addresses a controller listening on `listen` and advertising `advertise` is
/// reached at, for its serving certificate: those two, loopback, `localhost`, this machine's
/// host name, and `extra`.
pub fn serving_names(
    listen: std::net::SocketAddr,
    advertise: Option<&str>,
    extra: &[String],
) -> (Vec<String>, Vec<IpAddr>) {
    let mut names: Vec<String> = vec!["localhost".into()];
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    ];
    if !listen.ip().is_unspecified() {
        ips.push(listen.ip());
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_owned());
        }
    }
    let advertised = advertise
        .and_then(|a| a.split_once("://").map(|(_, rest)| rest))
        .map(|rest| rest.split(['/', '?']).next().unwrap_or(""))
        .map(host_of);
    for n in extra.iter().cloned().chain(advertised) {
        match n.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) if !n.is_empty() => names.push(n),
            Err(_) => {}
        }
    }
    names.sort();
    names.dedup();
    ips.sort();
    ips.dedup();
    (names, ips)
}

/// The host of `host[:port]` (IPv6 in brackets).
fn host_of(authority: &str) -> String {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("").to_owned();
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .to_owned()
}

/// A TLS client configuration that trusts only the CA in `ca_pem`.
///
/// # Errors
/// If `ca_pem` holds no certificate.
pub fn client_config(ca_pem: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(rustls_pki_der(
            ca_pem,
        )?))
        .context("the CA certificate")?;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// An HTTP client (ureq) that trusts only the CA in `ca_pem` for `https://` URLs.
///
/// # Errors
/// If `ca_pem` holds no certificate.
pub fn ureq_tls(ca_pem: &str) -> anyhow::Result<ureq::tls::TlsConfig> {
    let cert = ureq::tls::Certificate::from_pem(ca_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("the CA certificate: {e}"))?;
    Ok(ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![cert])))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_kept_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let a = Authority::load_or_create(d.path()).unwrap();
        let b = Authority::load_or_create(d.path()).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert!(a.fingerprint().starts_with("sha256:") && a.fingerprint().len() == 71);
        let mode = std::fs::metadata(d.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A certificate without its key, or a key of another CA, is refused.
        let other = Authority::generate_pem().unwrap();
        let other_key = &other[other.find("-----BEGIN PRIVATE KEY-----").unwrap()..];
        assert!(Authority::from_pem(&a.ca_pem).is_err());
        assert!(Authority::from_pem(&format!("{}{other_key}", a.ca_pem)).is_err());
    }

    #[test]
    fn names_come_from_the_listen_and_advertise_addresses() {
        let (names, ips) = serving_names(
            "10.0.0.1:7878".parse().unwrap(),
            Some("https://ctl.example:7878/"),
            &["192.0.2.7".into(), "api.example".into()],
        );
        assert!(names.contains(&"ctl.example".to_owned()), "{names:?}");
        assert!(names.contains(&"api.example".to_owned()));
        assert!(names.contains(&"localhost".to_owned()));
        for ip in ["10.0.0.1", "192.0.2.7", "127.0.0.1"] {
            assert!(ips.contains(&ip.parse().unwrap()), "{ips:?}");
        }
        let (_, ips) = serving_names(
            "0.0.0.0:7878".parse().unwrap(),
            Some("https://[fd00::1]:7878"),
            &[],
        );
        assert!(ips.contains(&"fd00::1".parse().unwrap()), "{ips:?}");
        assert!(!ips.contains(&"0.0.0.0".parse().unwrap()));
    }
}
