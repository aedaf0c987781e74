//! Error types of the GGUF reader and the dequantisers.

use std::path::PathBuf;

use super::types::GgmlType;

/// Why a block of raw tensor bytes could not be dequantised (no file context; see
/// [`GgufError::Dequant`] for the variant that adds the file and the tensor).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantError {
    /// The type is known but no dequantiser is implemented for it.
    #[error("dequantisation of ggml type {0} is not supported")]
    UnsupportedType(GgmlType),
    /// `n_elements` is not a whole number of blocks.
    #[error("element count {n_elements} is not a multiple of the block size {block_size} of {ty}")]
    NotBlockMultiple {
        ty: GgmlType,
        n_elements: u64,
        block_size: usize,
    },
    /// The byte slice does not hold exactly `n_elements` elements of `ty`.
    #[error("{n_elements} elements of {ty} take {expected} bytes, but {got} bytes were given")]
    ByteLength {
        ty: GgmlType,
        n_elements: u64,
        expected: u64,
        got: usize,
    },
    /// The output slice given to `dequantize_into` has the wrong length.
    #[error("output buffer holds {got} elements, but the tensor has {expected}")]
    OutputLength { expected: u64, got: usize },
}

/// Any failure of the GGUF reader. Every message starts with the file path and names
/// the tensor or metadata key involved, if any.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: I/O error: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "{}: bad magic {found:02x?} at offset 0 (expected \"GGUF\" = [47, 47, 55, 46]); not a GGUF file",
        .path.display()
    )]
    BadMagic { path: PathBuf, found: [u8; 4] },

    #[error("{}: unsupported GGUF version {version} (supported: 2 and 3){hint}", .path.display())]
    UnsupportedVersion {
        path: PathBuf,
        version: u32,
        hint: &'static str,
    },

    #[error(
        "{}: truncated at offset {offset}: {what} needs {needed} bytes but the file is {len} bytes long",
        .path.display()
    )]
    Truncated {
        path: PathBuf,
        offset: u64,
        needed: u64,
        len: u64,
        what: String,
    },

    #[error("{}: malformed GGUF at offset {offset}: {reason}", .path.display())]
    Malformed {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    #[error("{}: tensor '{tensor}': unknown ggml type id {id}", .path.display())]
    UnknownType {
        path: PathBuf,
        tensor: String,
        id: u32,
    },

    #[error(
        "{}: tensor '{tensor}' ({ty}, dims {dims:?}): row length {} is not a multiple of the block size {}",
        .path.display(), .dims.first().copied().unwrap_or(1), .ty.block_size()
    )]
    NotBlockMultiple {
        path: PathBuf,
        tensor: String,
        ty: GgmlType,
        dims: Vec<u64>,
    },

    #[error(
        "{}: tensor '{tensor}': data bytes {start}..{end} lie outside the file ({len} bytes): file truncated or offset corrupt",
        .path.display()
    )]
    TensorOutOfBounds {
        path: PathBuf,
        tensor: String,
        start: u64,
        end: u64,
        len: u64,
    },

    #[error("{}: no tensor named '{tensor}'", .path.display())]
    TensorNotFound { path: PathBuf, tensor: String },

    #[error("{}: tensor '{tensor}': {source}", .path.display())]
    Dequant {
        path: PathBuf,
        tensor: String,
        source: DequantError,
    },

    #[error("{}: metadata key '{key}' is missing", .path.display())]
    MissingKey { path: PathBuf, key: String },

    #[error("{}: metadata key '{key}' has type {found}, expected {expected}", .path.display())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },

    #[error("{}: metadata key '{key}': value {value} does not fit in {target}", .path.display())]
    OutOfRange {
        path: PathBuf,
        key: String,
        value: String,
        target: &'static str,
    },
}

impl From<GgufError> for hlm_core::HlmError {
    /// The message already names the file and the tensor or key.
    fn from(e: GgufError) -> Self {
        hlm_core::HlmError::Model(e.to_string())
    }
}
