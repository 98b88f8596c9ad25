//! `shep pki`: the development PKI.

use std::path::PathBuf;

use clap::Subcommand;
use shep_pki::{DEFAULT_SYSTEMS, DEFAULT_VALIDITY_DAYS, Pki, PkiError, Validity};

use crate::exit::{CONFIG, Failure, WithCode};

#[derive(Subcommand)]
pub enum PkiCommand {
    /// Create a CA and a certificate for every system (bus, gbd-ul, gbd-fl, zags, e-license, bmg, pep, kdp, sdu, operator)
    Init {
        /// Where to write ca.pem, NAME.pem, NAME.key, crl.pem
        #[arg(long, default_value = "var/pki")]
        dir: PathBuf,
        /// Replace an existing CA (every certificate of the old one stops working)
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate and key for one more system (or rotate one with --force)
    Issue {
        /// The system id: lower-case letters, digits and '-'
        name: String,
        #[arg(long, default_value = "var/pki")]
        dir: PathBuf,
        /// Validity in days
        #[arg(long, default_value_t = DEFAULT_VALIDITY_DAYS)]
        days: i64,
        /// Replace the current certificate of NAME (new key, new serial)
        #[arg(long)]
        force: bool,
    },
    /// Revoke a system's certificate and rewrite the CRL (nodes refuse it within their reload interval)
    Revoke {
        name: String,
        #[arg(long, default_value = "var/pki")]
        dir: PathBuf,
    },
    /// List the certificates issued
    List {
        #[arg(long, default_value = "var/pki")]
        dir: PathBuf,
    },
}

fn code_of(e: &PkiError) -> u8 {
    match e {
        PkiError::Io { .. } | PkiError::Rcgen(_) => crate::exit::RUNTIME,
        _ => CONFIG,
    }
}

fn pki_result<T>(r: Result<T, PkiError>) -> Result<T, Failure> {
    r.map_err(|e| Failure { code: code_of(&e), error: e.into() })
}

pub fn run(cmd: PkiCommand) -> Result<(), Failure> {
    match cmd {
        PkiCommand::Init { dir, force } => {
            let pki = pki_result(Pki::init(&dir, DEFAULT_SYSTEMS, force))?;
            println!("created a CA and {} certificates in {}", DEFAULT_SYSTEMS.len(), pki.dir().display());
            println!("  CA:   {}", pki.ca_cert_path().display());
            println!("  CRL:  {}", pki.crl_path().display());
            for name in DEFAULT_SYSTEMS {
                let p = pki.paths(name);
                println!("  {name:<10} {}  {}", p.cert.display(), p.key.display());
            }
        }
        PkiCommand::Issue { name, dir, days, force } => {
            let pki = pki_result(Pki::open(&dir))?;
            if days <= 0 {
                return Err(anyhow::anyhow!("--days must be positive")).code(CONFIG);
            }
            let p = pki_result(pki.issue(&name, Validity::days(days), force))?;
            println!("issued {name}: {} {}", p.cert.display(), p.key.display());
        }
        PkiCommand::Revoke { name, dir } => {
            let pki = pki_result(Pki::open(&dir))?;
            let serial = pki_result(pki.revoke(&name))?;
            println!("revoked {name} (serial {serial:x}); CRL rewritten at {}", pki.crl_path().display());
        }
        PkiCommand::List { dir } => {
            let pki = pki_result(Pki::open(&dir))?;
            println!("{:<14} {:>8}  {:<9} revoked", "name", "serial", "current");
            for c in pki_result(pki.list())? {
                let revoked = c.revoked_at.map(|t| format!("at {t}")).unwrap_or_else(|| "no".into());
                println!("{:<14} {:>8x}  {:<9} {revoked}", c.name, c.serial, c.current);
            }
        }
    }
    Ok(())
}
