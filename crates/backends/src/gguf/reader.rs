//! GGUF file reader: header, metadata, tensor infos, bounds checks, zero-copy tensor data.
//!
//! Format (little-endian, versions 2 and 3):
//! `"GGUF"` · `u32 version` · `u64 n_tensors` · `u64 n_kv` · `n_kv × (string key, u32 type,
//! value)` · `n_tensors × (string name, u32 n_dims, n_dims × u64 ne, u32 ggml_type,
//! u64 offset)` · padding to `general.alignment` (default 32) · tensor data, where each
//! tensor's `offset` is relative to the start of the data section. Strings are a `u64`
//! byte length followed by UTF-8 bytes without terminator.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::dequant::{dequantize_into, validate};
use super::error::{DequantError, GgufError};
use super::metadata::{MetadataArray, MetadataValue, type_id};
use super::types::GgmlType;

/// Alignment used when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`; tensor infos with more dimensions are rejected.
pub const MAX_DIMS: u32 = 4;
const MAGIC: [u8; 4] = *b"GGUF";

/// Description of one tensor, as stored in the GGUF header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    offset: u64,
    n_elements: u64,
    n_bytes: u64,
    data_start: u64,
}

impl TensorInfo {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dimensions in ggml order: `dims()[0]` (`ne[0]`) is the innermost, contiguous one.
    /// A `[out, in]` PyTorch weight is stored as `dims() == [in, out]`.
    pub fn dims(&self) -> &[u64] {
        &self.dims
    }

    /// Dimensions in row-major (PyTorch / burn) order, outermost first: `dims()` reversed.
    pub fn shape(&self) -> Vec<usize> {
        // Saturates only on 32-bit targets, for zero-element tensors with a huge dim.
        self.dims
            .iter()
            .rev()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect()
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Offset of the data relative to the start of the data section.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Absolute byte range of the data in the file.
    pub fn file_range(&self) -> Range<u64> {
        self.data_start..self.data_start + self.n_bytes
    }

    pub fn n_elements(&self) -> u64 {
        self.n_elements
    }

    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }
}

enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A tensor's raw bytes that keep the file's mapping alive: quantised weights are used in
/// place, so a model in memory costs about its file size, and the bytes outlive the
/// [`GgufFile`] that handed them out.
#[derive(Clone)]
pub struct SharedBytes {
    storage: Arc<Storage>,
    range: Range<usize>,
}

impl std::ops::Deref for SharedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // In bounds: the range was checked against this buffer when the header was parsed.
        &self.storage.bytes()[self.range.clone()]
    }
}

impl SharedBytes {
    /// Drop the pages of these bytes from this process's resident memory, if they are part of
    /// a file mapping (a no-op for bytes held in memory): for a tensor that was copied
    /// elsewhere (repacked) and is only read again rarely, if ever. Reading the bytes later is
    /// fine: the pages come back from the file. The range is trimmed to whole 4 KiB pages;
    /// on a kernel with larger pages the neighbouring tensors' pages may go too, which costs
    /// only a re-read.
    pub fn release_resident(&self) {
        #[cfg(unix)]
        if let Storage::Mmap(map) = &*self.storage {
            const PAGE: usize = 4096;
            let start = self.range.start.next_multiple_of(PAGE);
            let end = self.range.end / PAGE * PAGE;
            if end > start {
                // SAFETY: the mapping is a read-only (shared) mapping of a file that is treated
                // as immutable while loaded and never written through; MADV_DONTNEED only
                // drops the pages from this process, and a later read faults the same file
                // contents back in. The range is inside the mapping (part of one tensor).
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
    }
}

impl From<Vec<u8>> for SharedBytes {
    /// Bytes held in memory (tests, benchmarks, tensors built on the fly).
    fn from(bytes: Vec<u8>) -> Self {
        let range = 0..bytes.len();
        SharedBytes {
            storage: Arc::new(Storage::Owned(bytes)),
            range,
        }
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBytes({:?})", self.range)
    }
}

/// An opened GGUF file. Metadata and tensor infos are parsed eagerly; tensor data stays
/// in the memory-mapped file and is borrowed by [`GgufFile::tensor_bytes`].
pub struct GgufFile {
    path: PathBuf,
    header: Header,
    storage: Arc<Storage>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .field("alignment", &self.header.alignment)
            .field("data_offset", &self.header.data_offset)
            .field("n_metadata", &self.header.metadata.len())
            .field("n_tensors", &self.header.tensors.len())
            .field("file_size", &self.storage.bytes().len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and validates a GGUF file. The file is memory-mapped (read-only), so the
    /// tensor data of a 1 GB model is neither copied nor read until used.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let storage = if len == 0 {
            Storage::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and private to this process. It is only
            // undefined behaviour if another process truncates or rewrites the file while
            // it is mapped; model files are treated as immutable while loaded.
            Storage::Mmap(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
        };
        Self::parse(path, storage)
    }

    /// Parses a GGUF image held in memory; `name` stands in for the path in messages.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::parse(name.into(), Storage::Owned(bytes))
    }

    fn parse(path: PathBuf, storage: Storage) -> Result<Self, GgufError> {
        let header = Header::parse(&path, storage.bytes())?;
        Ok(Self {
            path,
            header,
            storage: Arc::new(storage),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// Data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    /// Absolute file offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }

    pub fn file_size(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    // ----- metadata -------------------------------------------------------------------

    /// All metadata key/value pairs in file order.
    pub fn metadata(&self) -> impl ExactSizeIterator<Item = (&str, &MetadataValue)> {
        self.header.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The raw value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.header
            .meta_index
            .get(key)
            .map(|&i| &self.header.metadata[i].1)
    }

    pub fn has_key(&self, key: &str) -> bool {
        self.header.meta_index.contains_key(key)
    }

    fn require(&self, key: &str) -> Result<&MetadataValue, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_owned(),
        })
    }

    fn wrong_type(&self, key: &str, expected: &'static str, v: &MetadataValue) -> GgufError {
        GgufError::WrongType {
            path: self.path.clone(),
            key: key.to_owned(),
            expected,
            found: v.type_name(),
        }
    }

    fn integer<T: TryFrom<i128>>(&self, key: &str, target: &'static str) -> Result<T, GgufError> {
        let v = self.require(key)?;
        let i = v
            .as_integer()
            .ok_or_else(|| self.wrong_type(key, target, v))?;
        T::try_from(i).map_err(|_| GgufError::OutOfRange {
            path: self.path.clone(),
            key: key.to_owned(),
            value: i.to_string(),
            target,
        })
    }

    /// `general.architecture` (`"llama"`, `"qwen2"`, …).
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong_type(key, "string", v))
    }

    /// Any integer type whose value fits in `u32`.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.integer(key, "u32")
    }

    /// Any integer type whose value fits in `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.integer(key, "u64")
    }

    /// Any integer type whose value fits in `i32`.
    pub fn get_i32(&self, key: &str) -> Result<i32, GgufError> {
        self.integer(key, "i32")
    }

    /// Any integer type whose value fits in `i64`.
    pub fn get_i64(&self, key: &str) -> Result<i64, GgufError> {
        self.integer(key, "i64")
    }

    /// `usize` convenience for sizes and token ids (any integer type that fits).
    pub fn get_usize(&self, key: &str) -> Result<usize, GgufError> {
        self.integer(key, "usize")
    }

    /// An `f32` or `f64` (narrowed), or any integer (converted).
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.get_f64(key).map(|v| v as f32)
    }

    /// An `f32`, `f64` or any integer.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| self.wrong_type(key, "float", v))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| self.wrong_type(key, "bool", v))
    }

    /// The raw array value of `key`.
    pub fn get_array(&self, key: &str) -> Result<&MetadataArray, GgufError> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| self.wrong_type(key, "array", v))
    }

    /// An array of strings (e.g. `tokenizer.ggml.tokens`), borrowed.
    pub fn get_str_array(&self, key: &str) -> Result<&[String], GgufError> {
        let v = self.require(key)?;
        v.as_array()
            .and_then(MetadataArray::as_strings)
            .ok_or_else(|| self.wrong_type(key, "array[string]", v))
    }

    fn int_array<T: TryFrom<i128>>(
        &self,
        key: &str,
        target: &'static str,
        expected: &'static str,
    ) -> Result<Vec<T>, GgufError> {
        fn conv<S: Copy + Into<i128>, T: TryFrom<i128>>(v: &[S]) -> Result<Vec<T>, i128> {
            v.iter()
                .map(|&x| {
                    let x: i128 = x.into();
                    T::try_from(x).map_err(|_| x)
                })
                .collect()
        }
        let v = self.require(key)?;
        let converted = match v.as_array() {
            Some(MetadataArray::U8(a)) => conv(a),
            Some(MetadataArray::I8(a)) => conv(a),
            Some(MetadataArray::U16(a)) => conv(a),
            Some(MetadataArray::I16(a)) => conv(a),
            Some(MetadataArray::U32(a)) => conv(a),
            Some(MetadataArray::I32(a)) => conv(a),
            Some(MetadataArray::U64(a)) => conv(a),
            Some(MetadataArray::I64(a)) => conv(a),
            _ => return Err(self.wrong_type(key, expected, v)),
        };
        converted.map_err(|bad| GgufError::OutOfRange {
            path: self.path.clone(),
            key: key.to_owned(),
            value: bad.to_string(),
            target,
        })
    }

    /// An array of any integer type whose elements all fit in `i32`
    /// (e.g. `tokenizer.ggml.token_type`).
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        self.int_array(key, "i32", "array of integers")
    }

    /// An array of any integer type whose elements all fit in `u32`.
    pub fn get_u32_array(&self, key: &str) -> Result<Vec<u32>, GgufError> {
        self.int_array(key, "u32", "array of integers")
    }

    /// An array of any integer type whose elements all fit in `i64`.
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>, GgufError> {
        self.int_array(key, "i64", "array of integers")
    }

    /// An array of `f32`, `f64` (narrowed) or integers (e.g. `tokenizer.ggml.scores`).
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        let v = self.require(key)?;
        match v.as_array() {
            Some(MetadataArray::F32(a)) => Ok(a.clone()),
            Some(MetadataArray::F64(a)) => Ok(a.iter().map(|&x| x as f32).collect()),
            Some(_) => self
                .int_array::<i64>(key, "i64", "array of numbers")
                .map(|a| a.into_iter().map(|x| x as f32).collect()),
            None => Err(self.wrong_type(key, "array of numbers", v)),
        }
    }

    // ----- tensors --------------------------------------------------------------------

    pub fn tensor_count(&self) -> usize {
        self.header.tensors.len()
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = &TensorInfo> {
        self.header.tensors.iter()
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.header.tensor_index.contains_key(name)
    }

    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.header
            .tensor_index
            .get(name)
            .map(|&i| &self.header.tensors[i])
            .ok_or_else(|| GgufError::TensorNotFound {
                path: self.path.clone(),
                tensor: name.to_owned(),
            })
    }

    /// The raw (possibly quantised) bytes of a tensor, borrowed from the mapping.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], GgufError> {
        let info = self.tensor_info(name)?;
        Ok(self.slice_of(info))
    }

    /// The raw bytes of a tensor as a handle that keeps the file mapped (see
    /// [`SharedBytes`]).
    pub fn tensor_shared(&self, name: &str) -> Result<SharedBytes, GgufError> {
        let r = self.tensor_info(name)?.file_range();
        Ok(SharedBytes {
            storage: Arc::clone(&self.storage),
            range: r.start as usize..r.end as usize,
        })
    }

    fn slice_of(&self, info: &TensorInfo) -> &[u8] {
        // In bounds: checked in `Header::parse` against this very buffer.
        let r = info.file_range();
        &self.storage.bytes()[r.start as usize..r.end as usize]
    }

    /// Dequantises a tensor to `f32` (row-major in ggml order, `n_elements` values).
    pub fn dequantize_tensor(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor_info(name)?;
        let n = self.check_dequant(info)?;
        let mut out = vec![0.0f32; n];
        self.dequantize_checked(info, &mut out)?;
        Ok(out)
    }

    /// Like [`Self::dequantize_tensor`], writing into `out` (length `n_elements`), e.g.
    /// straight into a tensor buffer being built.
    pub fn dequantize_tensor_into(&self, name: &str, out: &mut [f32]) -> Result<(), GgufError> {
        let info = self.tensor_info(name)?;
        let n = self.check_dequant(info)?;
        if out.len() != n {
            return Err(self.dequant_err(
                info,
                DequantError::OutputLength {
                    expected: info.n_elements,
                    got: out.len(),
                },
            ));
        }
        self.dequantize_checked(info, out)
    }

    fn dequant_err(&self, info: &TensorInfo, source: DequantError) -> GgufError {
        GgufError::Dequant {
            path: self.path.clone(),
            tensor: info.name.clone(),
            source,
        }
    }

    fn check_dequant(&self, info: &TensorInfo) -> Result<usize, GgufError> {
        validate(info.ggml_type, self.slice_of(info).len(), info.n_elements)
            .map_err(|e| self.dequant_err(info, e))
    }

    fn dequantize_checked(&self, info: &TensorInfo, out: &mut [f32]) -> Result<(), GgufError> {
        dequantize_into(info.ggml_type, self.slice_of(info), out)
            .map_err(|e| self.dequant_err(info, e))
    }
}

// ----- parsing ------------------------------------------------------------------------

struct Header {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, MetadataValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

/// Bounds-checked little-endian reader over the file image.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn truncated(&self, needed: u64, what: String) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_path_buf(),
            offset: self.pos as u64,
            needed,
            len: self.buf.len() as u64,
            what,
        }
    }

    fn malformed_at(&self, offset: usize, reason: String) -> GgufError {
        GgufError::Malformed {
            path: self.path.to_path_buf(),
            offset: offset as u64,
            reason,
        }
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() as u64 {
            return Err(self.truncated(n, what()));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let start = self.pos;
        let len = self.u64(&|| format!("length of {}", what()))?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.malformed_at(start, format!("{} is not valid UTF-8: {e}", what())))
    }

    /// Reads `count` fixed-size elements, refusing counts the rest of the file cannot hold
    /// before allocating anything.
    fn fixed_vec<T, const N: usize>(
        &mut self,
        count: u64,
        what: &dyn Fn() -> String,
        conv: fn([u8; N]) -> T,
    ) -> Result<Vec<T>, GgufError> {
        let bytes = self.take(count.saturating_mul(N as u64), what)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                conv(a)
            })
            .collect())
    }

    fn value(&mut self, ty: u32, key: &str) -> Result<MetadataValue, GgufError> {
        use type_id::*;
        let what = || format!("value of metadata key '{key}'");
        let what: &dyn Fn() -> String = &what;
        Ok(match ty {
            UINT8 => MetadataValue::U8(u8::from_le_bytes(self.array(what)?)),
            INT8 => MetadataValue::I8(i8::from_le_bytes(self.array(what)?)),
            UINT16 => MetadataValue::U16(u16::from_le_bytes(self.array(what)?)),
            INT16 => MetadataValue::I16(i16::from_le_bytes(self.array(what)?)),
            UINT32 => MetadataValue::U32(u32::from_le_bytes(self.array(what)?)),
            INT32 => MetadataValue::I32(i32::from_le_bytes(self.array(what)?)),
            UINT64 => MetadataValue::U64(u64::from_le_bytes(self.array(what)?)),
            INT64 => MetadataValue::I64(i64::from_le_bytes(self.array(what)?)),
            FLOAT32 => MetadataValue::F32(f32::from_le_bytes(self.array(what)?)),
            FLOAT64 => MetadataValue::F64(f64::from_le_bytes(self.array(what)?)),
            BOOL => MetadataValue::Bool(self.array::<1>(what)?[0] != 0),
            STRING => MetadataValue::String(self.string(what)?),
            ARRAY => MetadataValue::Array(self.array_value(key)?),
            other => {
                return Err(self.malformed_at(
                    self.pos - 4,
                    format!("metadata key '{key}' has unknown value type {other}"),
                ));
            }
        })
    }

    fn array_value(&mut self, key: &str) -> Result<MetadataArray, GgufError> {
        use type_id::*;
        let type_pos = self.pos;
        let ety = self.u32(&|| format!("element type of array '{key}'"))?;
        let count = self.u64(&|| format!("length of array '{key}'"))?;
        let what = || format!("{count} elements of array '{key}'");
        let what: &dyn Fn() -> String = &what;
        Ok(match ety {
            UINT8 => MetadataArray::U8(self.fixed_vec(count, what, u8::from_le_bytes)?),
            INT8 => MetadataArray::I8(self.fixed_vec(count, what, i8::from_le_bytes)?),
            UINT16 => MetadataArray::U16(self.fixed_vec(count, what, u16::from_le_bytes)?),
            INT16 => MetadataArray::I16(self.fixed_vec(count, what, i16::from_le_bytes)?),
            UINT32 => MetadataArray::U32(self.fixed_vec(count, what, u32::from_le_bytes)?),
            INT32 => MetadataArray::I32(self.fixed_vec(count, what, i32::from_le_bytes)?),
            UINT64 => MetadataArray::U64(self.fixed_vec(count, what, u64::from_le_bytes)?),
            INT64 => MetadataArray::I64(self.fixed_vec(count, what, i64::from_le_bytes)?),
            FLOAT32 => MetadataArray::F32(self.fixed_vec(count, what, f32::from_le_bytes)?),
            FLOAT64 => MetadataArray::F64(self.fixed_vec(count, what, f64::from_le_bytes)?),
            BOOL => MetadataArray::Bool(self.fixed_vec(count, what, |[b]: [u8; 1]| b != 0)?),
            STRING => {
                // Each string takes at least its 8-byte length prefix.
                if count > (self.remaining() / 8) as u64 {
                    return Err(self.truncated(count.saturating_mul(8), what()));
                }
                let mut v = Vec::with_capacity(count as usize);
                for i in 0..count {
                    v.push(self.string(&|| format!("element {i} of array '{key}'"))?);
                }
                MetadataArray::String(v)
            }
            ARRAY => {
                return Err(self.malformed_at(
                    type_pos,
                    format!("metadata key '{key}' is a nested array, which is not supported"),
                ));
            }
            other => {
                return Err(self.malformed_at(
                    type_pos,
                    format!("array '{key}' has unknown element type {other}"),
                ));
            }
        })
    }
}

impl Header {
    fn parse(path: &Path, buf: &[u8]) -> Result<Self, GgufError> {
        let mut c = Cursor { buf, pos: 0, path };

        let magic: [u8; 4] = c.array(&|| "the magic \"GGUF\"".into())?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic {
                path: path.into(),
                found: magic,
            });
        }
        let version = c.u32(&|| "the version".into())?;
        if version != 2 && version != 3 {
            let hint = if matches!(version.swap_bytes(), 1..=3) {
                " (this looks like a big-endian GGUF, which is not supported)"
            } else if version == 1 {
                " (GGUF v1 is obsolete)"
            } else {
                ""
            };
            return Err(GgufError::UnsupportedVersion {
                path: path.into(),
                version,
                hint,
            });
        }
        let n_tensors = c.u64(&|| "the tensor count".into())?;
        let n_kv = c.u64(&|| "the metadata count".into())?;

        // Each KV takes ≥ 8 (key length) + 4 (type) + 1 bytes; each tensor info ≥ 8 + 4
        // + 4 + 8. Cap the pre-allocation by what the file could hold.
        let mut metadata = Vec::with_capacity(n_kv.min((c.remaining() / 13) as u64) as usize);
        let mut meta_index = HashMap::with_capacity(metadata.capacity());
        for i in 0..n_kv {
            let key_pos = c.pos;
            let key = c.string(&|| format!("key of metadata entry {i}"))?;
            let ty = c.u32(&|| format!("type of metadata key '{key}'"))?;
            let value = c.value(ty, &key)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(c.malformed_at(key_pos, format!("duplicate metadata key '{key}'")));
            }
            metadata.push((key, value));
        }

        let alignment = match meta_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_integer() {
                Some(a) if a > 0 && a <= 1 << 30 && (a & (a - 1)) == 0 => a as u64,
                _ => {
                    return Err(c.malformed_at(
                        c.pos,
                        format!(
                            "general.alignment = {v:?} must be a power-of-two integer (≤ 2^30)"
                        ),
                    ));
                }
            },
        };

        let mut tensors: Vec<TensorInfo> =
            Vec::with_capacity(n_tensors.min((c.remaining() / 24) as u64) as usize);
        let mut tensor_index = HashMap::with_capacity(tensors.capacity());
        for i in 0..n_tensors {
            let info_pos = c.pos;
            let name = c.string(&|| format!("name of tensor info {i}"))?;
            let n_dims_pos = c.pos;
            let n_dims = c.u32(&|| format!("dimension count of tensor '{name}'"))?;
            if n_dims > MAX_DIMS {
                return Err(c.malformed_at(
                    n_dims_pos,
                    format!(
                        "tensor '{name}' has {n_dims} dimensions (at most {MAX_DIMS} supported)"
                    ),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                dims.push(c.u64(&|| format!("dimension {d} of tensor '{name}'"))?);
            }
            let type_pos = c.pos;
            let type_id = c.u32(&|| format!("ggml type of tensor '{name}'"))?;
            let offset = c.u64(&|| format!("data offset of tensor '{name}'"))?;

            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownType {
                path: path.into(),
                tensor: name.clone(),
                id: type_id,
            })?;
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| {
                    c.malformed_at(
                        n_dims_pos,
                        format!("tensor '{name}': dims {dims:?} overflow u64"),
                    )
                })?;
            if dims.first().copied().unwrap_or(1) % ggml_type.block_size() as u64 != 0 {
                return Err(GgufError::NotBlockMultiple {
                    path: path.into(),
                    tensor: name,
                    ty: ggml_type,
                    dims,
                });
            }
            let n_bytes = ggml_type.n_bytes(n_elements).ok_or_else(|| {
                c.malformed_at(
                    type_pos,
                    format!("tensor '{name}': byte size overflows u64"),
                )
            })?;
            if offset % alignment != 0 {
                return Err(c.malformed_at(
                    type_pos + 4,
                    format!(
                        "tensor '{name}': data offset {offset} is not a multiple of the alignment {alignment}"
                    ),
                ));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(c.malformed_at(info_pos, format!("duplicate tensor name '{name}'")));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                n_elements,
                n_bytes,
                data_start: 0, // set below, once the data section is known
            });
        }

        let header_end = c.pos as u64;
        let data_offset = header_end.div_ceil(alignment) * alignment;
        let len = buf.len() as u64;
        for t in &mut tensors {
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.n_bytes));
            match (start, end) {
                (Some(s), Some(e)) if e <= len => t.data_start = s,
                _ => {
                    return Err(GgufError::TensorOutOfBounds {
                        path: path.into(),
                        tensor: t.name.clone(),
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        len,
                    });
                }
            }
        }

        Ok(Header {
            version,
            alignment,
            data_offset,
            metadata,
            meta_index,
            tensors,
            tensor_index,
        })
    }
}
