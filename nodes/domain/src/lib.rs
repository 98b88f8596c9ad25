//! Domain types that cannot hold an invalid value.
//!
//! An [`Iin`] or a [`Bin`] is 12 digits whose last digit is the check digit of the first
//! eleven (see `shared/DOMAIN.md`). Parsing is the only way to get one, so code that holds
//! one never checks it again. [`SystemId`] names a system on the bus.

mod ident;
mod system;

pub use ident::{check_digit, Bin, IdError, Iin, Sex};
pub use system::{SystemId, SystemIdError, SYSTEM_URI_PREFIX};
