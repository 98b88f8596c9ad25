//! `shep audit`: the bus's audit log.

use std::path::PathBuf;

use clap::Subcommand;

use crate::exit::{CHECK_FAILED, CONFIG, Failure, WithCode};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of the whole log; names the first altered, removed or reordered record
    Verify {
        /// The audit database of the bus
        #[arg(long, default_value = "var/data/audit.sqlite")]
        db: PathBuf,
    },
    /// Every access to one person's data ("who looked at my data")
    Subject {
        /// The person's IIN
        iin: String,
        #[arg(long, default_value = "var/data/audit.sqlite")]
        db: PathBuf,
    },
}

pub fn run(cmd: AuditCommand) -> Result<(), Failure> {
    match cmd {
        AuditCommand::Verify { db } => {
            if !db.exists() {
                return Err(anyhow::anyhow!("no audit database at {}", db.display())).code(CONFIG);
            }
            let report = shep_bus::audit::verify(&db)?;
            println!("{report}");
            if !report.intact {
                return Err(anyhow::anyhow!("the audit chain is broken")).code(CHECK_FAILED);
            }
        }
        AuditCommand::Subject { iin, db } => {
            if let Err(e) = shep_domain::Iin::parse(&iin) {
                return Err(anyhow::anyhow!("{iin:?} is not a valid IIN: {e}")).code(CONFIG);
            }
            if !db.exists() {
                return Err(anyhow::anyhow!("no audit database at {}", db.display())).code(CONFIG);
            }
            let records = shep_bus::audit::subject_accesses(&db, &iin)?;
            println!("{} access(es) to the data of {iin}:", records.len());
            for r in records {
                println!("{r}");
            }
        }
    }
    Ok(())
}
