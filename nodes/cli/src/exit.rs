//! Errors of the command, with the exit code scripts can rely on.

/// A failure and its exit code.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

/// Run-time failure (exit 1).
pub const RUNTIME: u8 = 1;
/// Bad configuration or missing files (exit 3).
pub const CONFIG: u8 = 3;
/// A check found a problem (exit 4).
pub const CHECK_FAILED: u8 = 4;

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure { code: RUNTIME, error: e.into() }
    }
}

/// Attaches an exit code to an error.
pub trait WithCode<T> {
    fn code(self, code: u8) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> WithCode<T> for Result<T, E> {
    fn code(self, code: u8) -> Result<T, Failure> {
        self.map_err(|e| Failure { code, error: e.into() })
    }
}
