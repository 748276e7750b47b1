//! SIP protocol pieces for sipward. For now the sans-IO digest module: HA1 values the
//! store keeps so that authentication never needs a plaintext password, and the response
//! check the registrar uses.

pub mod digest;
