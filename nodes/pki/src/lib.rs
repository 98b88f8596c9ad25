//! The development PKI: one CA, a certificate per system, revocation and the CRL.
//!
//! Layout of a PKI directory (every file written atomically, keys with mode 0600):
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca.key` | the CA certificate and its key |
//! | `NAME.pem`, `NAME.key` | a system's certificate and key, usable as server and client |
//! | `crl.pem` | the certificate revocation list, signed by the CA |
//! | `index.json` | serial numbers issued, revoked ones, the CRL number |
//!
//! A system's certificate names it in the subject CN and in a SAN URI
//! `urn:shep:system:NAME`, and carries SANs for `localhost`, `127.0.0.1` and `::1`.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use shep_domain::SystemId;
use time::{Duration, OffsetDateTime};

/// The systems `init` issues certificates for.
pub const DEFAULT_SYSTEMS: &[&str] = &[
    "bus", "gbd-ul", "gbd-fl", "zags", "e-license", "bmg", "pep", "kdp", "sdu", "operator",
];

/// How long a system certificate issued by default is valid.
pub const DEFAULT_VALIDITY_DAYS: i64 = 365;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("a CA already exists at {0}; pass --force to replace it (every certificate issued by the old one stops working)")]
    CaExists(PathBuf),
    #[error("no CA at {0}; create one with `shep pki init --dir {1}`")]
    NoCa(PathBuf, PathBuf),
    #[error("no certificate named {0:?} in this PKI; issue one with `shep pki issue {0}`")]
    UnknownName(String),
    #[error("a certificate named {0:?} exists already; pass --force to rotate it (new key, new serial)")]
    NameExists(String),
    #[error(transparent)]
    InvalidName(#[from] shep_domain::SystemIdError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: malformed: {why}")]
    Malformed { path: PathBuf, why: String },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

type Result<T, E = PkiError> = std::result::Result<T, E>;

fn io<T>(path: &Path, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|source| PkiError::Io { path: path.to_owned(), source })
}

/// One certificate the CA issued.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IssuedCert {
    pub name: String,
    pub serial: u64,
    /// Unix seconds; `None` while not revoked.
    pub revoked_at: Option<i64>,
    /// True for the certificate currently in `NAME.pem`; false for one replaced by rotation.
    pub current: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct Index {
    next_serial: u64,
    crl_number: u64,
    certs: Vec<IssuedCert>,
}

/// Validity of a certificate to issue.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From now (less a minute for clock skew) for `days`.
    pub fn days(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity { not_before: now - Duration::minutes(1), not_after: now + Duration::days(days) }
    }
}

/// Paths of one system's files.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A PKI directory.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// Creates a CA, a certificate for each of `systems`, and an empty CRL. Refuses to
    /// replace an existing CA unless `force`.
    pub fn init(dir: &Path, systems: &[&str], force: bool) -> Result<Pki> {
        let pki = Pki { dir: dir.to_owned() };
        if pki.ca_cert_path().exists() && !force {
            return Err(PkiError::CaExists(pki.ca_cert_path()));
        }
        io(dir, fs::create_dir_all(dir))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("shep development CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(1);
        params.not_after = now + Duration::days(3650);
        params.serial_number = Some(SerialNumber::from(1u64));
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params.self_signed(&key)?;
        write_atomic(&pki.dir.join("ca.key"), key.serialize_pem().as_bytes(), true)?;
        write_atomic(&pki.ca_cert_path(), cert.pem().as_bytes(), false)?;
        // Remove certificates of an old CA so that no stale file looks valid.
        if let Ok(old) = pki.load_index() {
            for c in old.certs.iter().filter(|c| c.current) {
                let p = pki.paths(&c.name);
                let _ = fs::remove_file(p.cert);
                let _ = fs::remove_file(p.key);
            }
        }
        pki.save_index(&Index { next_serial: 2, crl_number: 0, certs: vec![] })?;
        pki.write_crl()?;
        for name in systems {
            pki.issue(name, Validity::days(DEFAULT_VALIDITY_DAYS), false)?;
        }
        Ok(pki)
    }

    /// Opens an existing PKI directory.
    pub fn open(dir: &Path) -> Result<Pki> {
        let pki = Pki { dir: dir.to_owned() };
        if !pki.ca_cert_path().exists() {
            return Err(PkiError::NoCa(pki.ca_cert_path(), dir.to_owned()));
        }
        Ok(pki)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    pub fn paths(&self, name: &str) -> CertPaths {
        CertPaths { cert: self.dir.join(format!("{name}.pem")), key: self.dir.join(format!("{name}.key")) }
    }

    /// The certificates issued so far, current and replaced.
    pub fn list(&self) -> Result<Vec<IssuedCert>> {
        Ok(self.load_index()?.certs)
    }

    /// Issues a certificate and key for `name`, usable as server and client. With `force`,
    /// an existing one is rotated (new key and serial; the old serial is not revoked).
    pub fn issue(&self, name: &str, validity: Validity, force: bool) -> Result<CertPaths> {
        let id = SystemId::parse(name)?;
        let mut index = self.load_index()?;
        if index.certs.iter().any(|c| c.name == name && c.current) && !force {
            return Err(PkiError::NameExists(name.to_owned()));
        }
        let issuer = self.issuer()?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name);
        params.subject_alt_names = vec![
            SanType::URI(id.uri().try_into()?),
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
            SanType::IpAddress("::1".parse().expect("ipv6 loopback")),
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let serial = index.next_serial;
        params.serial_number = Some(SerialNumber::from(serial));
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer)?;
        let paths = self.paths(name);
        write_atomic(&paths.key, key.serialize_pem().as_bytes(), true)?;
        write_atomic(&paths.cert, cert.pem().as_bytes(), false)?;
        for c in index.certs.iter_mut().filter(|c| c.name == name) {
            c.current = false;
        }
        index.certs.push(IssuedCert { name: name.to_owned(), serial, revoked_at: None, current: true });
        index.next_serial += 1;
        self.save_index(&index)?;
        Ok(paths)
    }

    /// Revokes the current certificate of `name` and rewrites the CRL. Returns the serial.
    pub fn revoke(&self, name: &str) -> Result<u64> {
        let mut index = self.load_index()?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let cert = index
            .certs
            .iter_mut()
            .find(|c| c.name == name && c.current)
            .ok_or_else(|| PkiError::UnknownName(name.to_owned()))?;
        cert.revoked_at.get_or_insert(now);
        let serial = cert.serial;
        self.save_index(&index)?;
        self.write_crl()?;
        Ok(serial)
    }

    /// Writes `crl.pem` from the index, with a new CRL number, valid for 30 days.
    pub fn write_crl(&self) -> Result<()> {
        let mut index = self.load_index()?;
        index.crl_number += 1;
        let now = OffsetDateTime::now_utc();
        let revoked_certs = index
            .certs
            .iter()
            .filter_map(|c| {
                c.revoked_at.map(|at| RevokedCertParams {
                    serial_number: SerialNumber::from(c.serial),
                    revocation_time: OffsetDateTime::from_unix_timestamp(at).unwrap_or(now),
                    reason_code: Some(RevocationReason::Unspecified),
                    invalidity_date: None,
                })
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(1),
            next_update: now + Duration::days(30),
            crl_number: SerialNumber::from(index.crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer()?)?;
        write_atomic(&self.crl_path(), crl.pem()?.as_bytes(), false)?;
        self.save_index(&index)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let key_path = self.dir.join("ca.key");
        let key_pem = io(&key_path, fs::read_to_string(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| PkiError::Malformed { path: key_path.clone(), why: e.to_string() })?;
        let ca_path = self.ca_cert_path();
        let ca_pem = io(&ca_path, fs::read_to_string(&ca_path))?;
        Issuer::from_ca_cert_pem(&ca_pem, key)
            .map_err(|e| PkiError::Malformed { path: ca_path, why: e.to_string() })
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    fn load_index(&self) -> Result<Index> {
        let p = self.index_path();
        let s = io(&p, fs::read_to_string(&p))?;
        serde_json::from_str(&s).map_err(|e| PkiError::Malformed { path: p, why: e.to_string() })
    }

    fn save_index(&self, index: &Index) -> Result<()> {
        let s = serde_json::to_string_pretty(index).expect("index serializes");
        write_atomic(&self.index_path(), s.as_bytes(), false)
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "shep development PKI");
    dn.push(DnType::CommonName, cn);
    dn
}

/// Writes through a temporary file and a rename, so that a reader (a node reloading its
/// certificates) sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, data: &[u8], secret: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = io(&tmp, opts.open(&tmp))?;
    io(&tmp, f.write_all(data).and_then(|_| f.sync_all()))?;
    io(path, fs::rename(&tmp, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{parse_x509_crl, parse_x509_pem};

    #[test]
    fn init_issues_every_system_with_sans_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::init(dir.path(), DEFAULT_SYSTEMS, false).unwrap();
        for name in DEFAULT_SYSTEMS {
            let p = pki.paths(name);
            let pem = fs::read(&p.cert).unwrap();
            let (_, pem) = parse_x509_pem(&pem).unwrap();
            let cert = pem.parse_x509().unwrap();
            let cn = cert.subject().iter_common_name().next().unwrap().as_str().unwrap();
            assert_eq!(cn, *name);
            let san = cert.subject_alternative_name().unwrap().unwrap();
            let names: Vec<String> = san.value.general_names.iter().map(|g| format!("{g:?}")).collect();
            assert!(names.iter().any(|n| n.contains(&format!("urn:shep:system:{name}"))), "{names:?}");
            assert!(names.iter().any(|n| n.contains("localhost")));
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth && eku.client_auth);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(fs::metadata(&p.key).unwrap().permissions().mode() & 0o777, 0o600);
            }
        }
        assert!(matches!(Pki::init(dir.path(), &[], false), Err(PkiError::CaExists(_))));
        Pki::init(dir.path(), &["bus"], true).unwrap();
        assert!(!pki.paths("gbd-fl").cert.exists(), "old CA's certificates are removed");
    }

    #[test]
    fn revoke_lists_serial_in_crl() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::init(dir.path(), &["sdu", "pep"], false).unwrap();
        let serial = pki.revoke("pep").unwrap();
        let pem = fs::read(pki.crl_path()).unwrap();
        let (_, pem) = parse_x509_pem(&pem).unwrap();
        let (_, crl) = parse_x509_crl(&pem.contents).unwrap();
        let revoked: Vec<u64> =
            crl.iter_revoked_certificates().map(|r| r.raw_serial()[r.raw_serial().len() - 1] as u64).collect();
        assert_eq!(revoked, vec![serial]);
        assert!(matches!(pki.revoke("nobody"), Err(PkiError::UnknownName(_))));
        assert!(matches!(pki.issue("sdu", Validity::days(1), false), Err(PkiError::NameExists(_))));
        assert!(matches!(pki.issue("Bad Name", Validity::days(1), false), Err(PkiError::InvalidName(_))));
    }
}
