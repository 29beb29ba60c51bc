//! STUB
#[derive(Debug, thiserror::Error)]
#[error("bad path")]
pub struct PathError;
pub fn object_key(_target: &str) -> Result<String, PathError> { todo!() }
