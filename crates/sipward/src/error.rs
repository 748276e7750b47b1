//! How a failed command ends: one sentence on stderr and an exit code, 2 when the
//! cause is the operator's input or environment, 1 for findings and failures.

/// An error caused by the operator's input or environment: exit code 2.
#[derive(Debug)]
pub struct OperatorError(pub String);

impl std::fmt::Display for OperatorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OperatorError {}

/// The exit code for a failed command: the first cause in the chain that knows.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<OperatorError>() {
            return 2;
        }
        if let Some(e) = cause.downcast_ref::<pbx::Error>() {
            return if e.is_operator_error() { 2 } else { 1 };
        }
        if let Some(e) = cause.downcast_ref::<accounts::Error>() {
            return if e.is_operator_error() { 2 } else { 1 };
        }
        if let Some(e) = cause.downcast_ref::<store::Error>() {
            return if e.is_operator_error() { 2 } else { 1 };
        }
    }
    1
}
