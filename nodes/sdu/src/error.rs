//! The errors of the SDU node, and their one mapping to gRPC statuses.

use jiff::civil::Date;
use shep_runtime::status;
use tonic::Code;

use crate::calendar::CalendarError;
use crate::pilot::PilotError;
use crate::store::StoreError;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum SduError {
    /// A pilot is unknown, out of force, or the catalog is bad.
    #[error(transparent)]
    Pilot(#[from] PilotError),
    /// The calendar is bad or does not cover a year.
    #[error(transparent)]
    Calendar(#[from] CalendarError),
    /// The durable state failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No run has this id.
    #[error("no run {0}")]
    NoRun(String),
    /// No run exists for this pilot and date.
    #[error("no run of pilot {pilot} for {date}; start one with RunDaily")]
    NoRunFor { pilot: String, date: Date },
    /// No case has this id.
    #[error("no case {0}")]
    NoCase(String),
    /// A setting is out of range.
    #[error("SDU settings: {0}")]
    Settings(String),
    /// The channel to the bus cannot be set up (TLS files, URL).
    #[error("SDU cannot set up its channel to the bus {url}: {message}")]
    Bus { url: String, message: String },
    /// The gRPC node did not start.
    #[error(transparent)]
    Node(#[from] shep_runtime::node::NodeError),
    /// The node is stopping.
    #[error("SDU is shutting down")]
    ShuttingDown,
}

impl SduError {
    /// The gRPC status, with an ErrorInfo (and the period in the metadata for a pilot out
    /// of force).
    pub fn to_status(&self) -> tonic::Status {
        let msg = self.to_string();
        match self {
            SduError::Pilot(PilotError::Unknown(id)) => status::error(
                Code::NotFound,
                msg,
                "PILOT_NOT_FOUND",
                [("pilot_id", id.clone())],
            ),
            SduError::Pilot(PilotError::OutOfForce {
                pilot,
                date,
                from,
                to,
            }) => status::error(
                Code::FailedPrecondition,
                msg,
                "PILOT_OUT_OF_FORCE",
                [
                    ("pilot_id", pilot.clone()),
                    ("date", date.to_string()),
                    ("in_force_from", from.to_string()),
                    ("in_force_to", to.to_string()),
                ],
            ),
            SduError::Calendar(CalendarError::YearNotCovered(y)) => status::error(
                Code::FailedPrecondition,
                msg,
                "CALENDAR_NOT_COVERED",
                [("year", y.to_string())],
            ),
            SduError::NoRun(id) => status::error(
                Code::NotFound,
                msg,
                "RUN_NOT_FOUND",
                [("run_id", id.clone())],
            ),
            SduError::NoRunFor { pilot, date } => status::error(
                Code::NotFound,
                msg,
                "RUN_NOT_FOUND",
                [("pilot_id", pilot.clone()), ("date", date.to_string())],
            ),
            SduError::NoCase(id) => status::error(
                Code::NotFound,
                msg,
                "CASE_NOT_FOUND",
                [("case_id", id.clone())],
            ),
            SduError::Store(_) => status::error(Code::Unavailable, msg, "STORE_UNAVAILABLE", []),
            SduError::ShuttingDown => status::error(Code::Unavailable, msg, "SHUTTING_DOWN", []),
            SduError::Pilot(_)
            | SduError::Calendar(_)
            | SduError::Settings(_)
            | SduError::Bus { .. }
            | SduError::Node(_) => status::error(Code::Internal, msg, "SDU_MISCONFIGURED", []),
        }
    }
}

impl From<SduError> for tonic::Status {
    fn from(e: SduError) -> Self {
        e.to_status()
    }
}
