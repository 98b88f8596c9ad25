//! gRPC statuses with rich details, built in one place so every node answers alike.
//!
//! Every error carries an `ErrorInfo` (reason, domain [`DOMAIN`], metadata); errors about
//! a request field also carry a `BadRequest` field violation. grpcurl decodes both: reflection
//! serves `proto/google/rpc/error_details.proto`.

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// The ErrorInfo domain of every error shep produces.
pub const DOMAIN: &str = "shep.kz";

/// A status with an ErrorInfo.
pub fn error<'a>(
    code: Code,
    message: impl Into<String>,
    reason: &str,
    metadata: impl IntoIterator<Item = (&'a str, String)>,
) -> tonic::Status {
    let meta: std::collections::HashMap<String, String> =
        metadata.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    let details = ErrorDetails::with_error_info(reason, DOMAIN, meta);
    tonic::Status::with_error_details(code, message, details)
}

/// The ErrorInfo reason of a status ("PERMIT_NOT_ACTIVE"); empty when it has none.
pub fn reason(status: &tonic::Status) -> String {
    status.get_details_error_info().map(|e| e.reason).unwrap_or_default()
}

/// INVALID_ARGUMENT with a BadRequest field violation and an ErrorInfo.
pub fn invalid_field(field: &str, description: impl Into<String>, reason: &str) -> tonic::Status {
    let description = description.into();
    let mut details = ErrorDetails::with_bad_request_violation(field, description.clone());
    details.set_error_info(reason, DOMAIN, std::collections::HashMap::from([("field".to_owned(), field.to_owned())]));
    tonic::Status::with_error_details(Code::InvalidArgument, format!("{field}: {description}"), details)
}

/// Validates an IIN field, or answers INVALID_ARGUMENT naming the field and the rule.
pub fn parse_iin(field: &str, value: &str) -> Result<shep_domain::Iin, tonic::Status> {
    shep_domain::Iin::parse(value)
        .map_err(|e| invalid_field(field, format!("not a valid IIN: {e}"), &format!("INVALID_IIN_{}", e.violation())))
}

/// Validates a BIN field, or answers INVALID_ARGUMENT naming the field and the rule.
pub fn parse_bin(field: &str, value: &str) -> Result<shep_domain::Bin, tonic::Status> {
    shep_domain::Bin::parse(value)
        .map_err(|e| invalid_field(field, format!("not a valid BIN: {e}"), &format!("INVALID_BIN_{}", e.violation())))
}

/// NOT_FOUND for a record that a registry does not hold.
pub fn not_found(what: &str, key: &str) -> tonic::Status {
    error(Code::NotFound, format!("no {what} {key}"), "NOT_FOUND", [("key", key.to_owned())])
}
