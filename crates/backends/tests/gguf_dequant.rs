//! GGUF reader and dequantiser tests.
//!
//! * bit-exact dequantisation against `tests/fixtures/dequant_fixtures.json` (gguf-py);
//! * a reader round trip over small GGUF files built here by hand;
//! * malformed inputs (bad magic, versions, every truncation, corrupt counts, offsets,
//!   types, UTF-8, random byte flips) must give the documented error, never a panic;
//! * `real_model_smoke` (ignored): set `HLM_GGUF=/path/model.gguf` and run with
//!   `--ignored --nocapture` to open a real model and dequantise every tensor.

use std::path::PathBuf;

use hlm_backends::gguf::{
    DequantError, GgmlType, GgufError, GgufFile, MetadataArray, MetadataValue, dequantize,
    dequantize_into,
};

// ----- fixtures -----------------------------------------------------------------------

struct Fixture {
    ty: GgmlType,
    block_size: usize,
    type_size: usize,
    n_elements: usize,
    raw: Vec<u8>,
    expected_bits: Vec<u32>,
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2));
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn fixtures() -> Vec<Fixture> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/dequant_fixtures.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["fixtures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let id = f["ggml_type"].as_u64().unwrap() as u32;
            let ty = GgmlType::from_id(id).unwrap_or_else(|| panic!("unknown id {id}"));
            assert_eq!(ty.name(), f["type"].as_str().unwrap());
            Fixture {
                ty,
                block_size: f["block_size"].as_u64().unwrap() as usize,
                type_size: f["type_size"].as_u64().unwrap() as usize,
                n_elements: f["n_elements"].as_u64().unwrap() as usize,
                raw: hex(f["raw_hex"].as_str().unwrap()),
                expected_bits: f["expected_f32_bits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect(),
            }
        })
        .collect()
}

fn assert_bits(ty: GgmlType, got: &[f32], want: &[u32]) {
    assert_eq!(got.len(), want.len(), "{ty}: length");
    for (i, (g, &w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w,
            "{ty}: element {i}: got {g:e} ({:#010x}), want {:e} ({w:#010x})",
            g.to_bits(),
            f32::from_bits(w)
        );
    }
}

#[test]
fn fixtures_are_bit_exact() {
    let fx = fixtures();
    let types: Vec<_> = fx.iter().map(|f| f.ty).collect();
    use GgmlType::*;
    for t in [F32, F16, Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q5_K, Q6_K] {
        assert!(types.contains(&t), "fixture for {t} missing");
    }
    for f in &fx {
        assert_eq!(f.ty.block_size(), f.block_size, "{}", f.ty);
        assert_eq!(f.ty.type_size(), f.type_size, "{}", f.ty);
        assert_eq!(f.raw.len(), f.n_elements / f.block_size * f.type_size);
        let got = dequantize(f.ty, &f.raw, f.n_elements).unwrap();
        assert_bits(f.ty, &got, &f.expected_bits);
        let mut out = vec![f32::NAN; f.n_elements];
        dequantize_into(f.ty, &f.raw, &mut out).unwrap();
        assert_bits(f.ty, &out, &f.expected_bits);
    }
}

#[test]
fn bf16_and_q5_1_layouts() {
    // BF16 is the top half of an f32.
    let raw = [0x80, 0x3f, 0x00, 0xc0, 0x00, 0x80, 0x80, 0x7f];
    let got = dequantize(GgmlType::BF16, &raw, 4).unwrap();
    assert_eq!(
        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        [0x3f80_0000, 0xc000_0000, 0x8000_0000, 0x7f80_0000]
    );

    // Q5_1 with qh = 0 is Q4_1 with the same d, m, qs.
    let d = [0x00, 0x3c]; // 1.0
    let m = [0x00, 0xbc]; // -1.0
    let qs: Vec<u8> = (0..16u8).map(|i| i.wrapping_mul(37)).collect();
    let q41: Vec<u8> = [&d[..], &m, &qs].concat();
    let q51: Vec<u8> = [&d[..], &m, &[0, 0, 0, 0], &qs].concat();
    assert_eq!(
        dequantize(GgmlType::Q4_1, &q41, 32),
        dequantize(GgmlType::Q5_1, &q51, 32)
    );
    // qh bit j adds 16 to element j: with d = 1, element j is q + 16 - 1.
    let q51: Vec<u8> = [&d[..], &m, &0x8000_0001u32.to_le_bytes(), &qs].concat();
    let y = dequantize(GgmlType::Q5_1, &q51, 32).unwrap();
    assert_eq!(y[0], (qs[0] & 15) as f32 + 16.0 - 1.0);
    assert_eq!(y[1], (qs[1] & 15) as f32 - 1.0);
    assert_eq!(y[31], (qs[15] >> 4) as f32 + 16.0 - 1.0);
}

#[test]
fn dequantize_argument_errors() {
    let e = dequantize(GgmlType::Q4_K, &[0; 100], 256).unwrap_err();
    assert_eq!(
        e,
        DequantError::ByteLength {
            ty: GgmlType::Q4_K,
            n_elements: 256,
            expected: 144,
            got: 100
        }
    );
    assert_eq!(
        e.to_string(),
        "256 elements of Q4_K take 144 bytes, but 100 bytes were given"
    );
    let e = dequantize(GgmlType::Q8_0, &[], 33).unwrap_err();
    assert_eq!(
        e.to_string(),
        "element count 33 is not a multiple of the block size 32 of Q8_0"
    );
    let e = dequantize(GgmlType::Q3_K, &[0; 110], 256).unwrap_err();
    assert_eq!(
        e.to_string(),
        "dequantisation of ggml type Q3_K is not supported"
    );
    let e = dequantize_into(GgmlType::Q8_0, &[0; 34], &mut [0.0; 31]).unwrap_err();
    assert!(matches!(e, DequantError::NotBlockMultiple { .. }), "{e}");
    assert_eq!(
        dequantize(GgmlType::Q6_K, &[], 0).unwrap(),
        Vec::<f32>::new()
    );
}

#[test]
fn ggml_type_table() {
    use GgmlType::*;
    let ids = [
        (F32, 0, 1, 4),
        (F16, 1, 1, 2),
        (Q4_0, 2, 32, 18),
        (Q4_1, 3, 32, 20),
        (Q5_0, 6, 32, 22),
        (Q5_1, 7, 32, 24),
        (Q8_0, 8, 32, 34),
        (Q8_1, 9, 32, 36),
        (Q2_K, 10, 256, 84),
        (Q3_K, 11, 256, 110),
        (Q4_K, 12, 256, 144),
        (Q5_K, 13, 256, 176),
        (Q6_K, 14, 256, 210),
        (Q8_K, 15, 256, 292),
        (BF16, 30, 1, 2),
    ];
    for (t, id, bs, ts) in ids {
        assert_eq!((t.id(), t.block_size(), t.type_size()), (id, bs, ts), "{t}");
        assert_eq!(GgmlType::from_id(id), Some(t));
    }
    for removed in [4, 5, 31, 32, 33, 36, 37, 38, 1000] {
        assert_eq!(GgmlType::from_id(removed), None);
    }
    for t in GgmlType::ALL {
        assert_eq!(GgmlType::from_id(t.id()), Some(t));
    }
}

// ----- a small GGUF writer ------------------------------------------------------------

const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STR: u32 = 8;
const T_ARR: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

fn gstr(s: &[u8]) -> Vec<u8> {
    [&(s.len() as u64).to_le_bytes()[..], s].concat()
}

#[derive(Clone)]
struct Tensor {
    name: Vec<u8>,
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
    offset: Option<u64>,
}

#[derive(Clone)]
struct Gguf {
    magic: [u8; 4],
    version: u32,
    kv: Vec<u8>,
    n_kv: u64,
    n_kv_override: Option<u64>,
    n_tensors_override: Option<u64>,
    tensors: Vec<Tensor>,
    alignment: u64,
}

impl Gguf {
    fn new() -> Self {
        Gguf {
            magic: *b"GGUF",
            version: 3,
            kv: Vec::new(),
            n_kv: 0,
            n_kv_override: None,
            n_tensors_override: None,
            tensors: Vec::new(),
            alignment: 32,
        }
    }

    /// Adds a key with a raw, already-encoded value.
    fn kv_raw(&mut self, key: &str, ty: u32, value: &[u8]) -> &mut Self {
        self.kv.extend(gstr(key.as_bytes()));
        self.kv.extend(ty.to_le_bytes());
        self.kv.extend(value);
        self.n_kv += 1;
        self
    }

    fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
        self.kv_raw(key, T_STR, &gstr(v.as_bytes()))
    }

    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.kv_raw(key, T_U32, &v.to_le_bytes())
    }

    fn kv_array(&mut self, key: &str, ety: u32, count: u64, payload: &[u8]) -> &mut Self {
        let v = [&ety.to_le_bytes()[..], &count.to_le_bytes(), payload].concat();
        self.kv_raw(key, T_ARR, &v)
    }

    fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> &mut Self {
        self.tensor_raw(name.as_bytes(), dims, ty.id(), data)
    }

    fn tensor_raw(&mut self, name: &[u8], dims: &[u64], ty: u32, data: Vec<u8>) -> &mut Self {
        self.tensors.push(Tensor {
            name: name.to_vec(),
            dims: dims.to_vec(),
            ty,
            data,
            offset: None,
        });
        self
    }

    fn build(&self) -> Vec<u8> {
        let a = self.alignment as usize;
        let mut out = Vec::new();
        out.extend(self.magic);
        out.extend(self.version.to_le_bytes());
        out.extend(
            self.n_tensors_override
                .unwrap_or(self.tensors.len() as u64)
                .to_le_bytes(),
        );
        out.extend(self.n_kv_override.unwrap_or(self.n_kv).to_le_bytes());
        out.extend(&self.kv);
        let mut offsets = Vec::new();
        let mut cur = 0usize;
        for t in &self.tensors {
            let off = cur.div_ceil(a) * a;
            offsets.push(off);
            cur = off + t.data.len();
        }
        for (t, &off) in self.tensors.iter().zip(&offsets) {
            out.extend(gstr(&t.name));
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ty.to_le_bytes());
            out.extend(t.offset.unwrap_or(off as u64).to_le_bytes());
        }
        if !self.tensors.is_empty() {
            out.resize(out.len().div_ceil(a) * a, 0);
        }
        let data_start = out.len();
        for (t, &off) in self.tensors.iter().zip(&offsets) {
            out.resize(data_start + off, 0);
            out.extend(&t.data);
        }
        out
    }
}

fn open_mem(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes("mem.gguf", bytes)
}

fn err_mem(bytes: Vec<u8>) -> String {
    match open_mem(bytes) {
        Ok(f) => panic!("expected an error, got {f:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with("mem.gguf: "),
                "message lacks the path: {msg}"
            );
            msg
        }
    }
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "{msg:?} does not contain {p:?}");
    }
}

struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, bytes: &[u8]) -> Self {
        let p = std::env::temp_dir().join(format!("hlm-gguf-{}-{tag}.gguf", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A file with one tensor per fixture and one key of every metadata type.
fn full_model() -> (Gguf, Vec<Fixture>) {
    let fx = fixtures();
    let mut g = Gguf::new();
    g.alignment = 64;
    g.kv_str("general.architecture", "llama")
        .kv_u32("general.alignment", 64)
        .kv_raw("t.u8", T_U8, &[200])
        .kv_raw("t.i8", T_I8, &[0xff])
        .kv_raw("t.u16", T_U16, &60000u16.to_le_bytes())
        .kv_raw("t.i16", T_I16, &(-3i16).to_le_bytes())
        .kv_raw("t.i32", T_I32, &(-5i32).to_le_bytes())
        .kv_raw("t.u64", T_U64, &(1u64 << 40).to_le_bytes())
        .kv_raw("t.i64", T_I64, &7i64.to_le_bytes())
        .kv_raw("t.f32", T_F32, &1.5f32.to_le_bytes())
        .kv_raw("t.f64", T_F64, &0.1f64.to_le_bytes())
        .kv_raw("t.bool", T_BOOL, &[1])
        .kv_str("t.empty_str", "")
        .kv_str("tokenizer.ggml.model", "gpt2");
    let toks: Vec<&str> = vec!["<|endoftext|>", "Ġthe", "é", ""];
    let payload: Vec<u8> = toks.iter().flat_map(|t| gstr(t.as_bytes())).collect();
    g.kv_array("tokenizer.ggml.tokens", T_STR, toks.len() as u64, &payload);
    let tt: Vec<u8> = [1i32, 1, 3, -2]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    g.kv_array("tokenizer.ggml.token_type", T_I32, 4, &tt);
    g.kv_array("t.u8_array", T_U8, 3, &[1, 2, 255]);
    let sc: Vec<u8> = [0.5f32, -1.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    g.kv_array("tokenizer.ggml.scores", T_F32, 2, &sc);
    g.kv_array("t.empty_array", T_I64, 0, &[]);
    g.kv_array("t.bool_array", T_BOOL, 2, &[0, 1]);
    for f in &fx {
        // 2-D where possible: [block_size, rest] in ggml order.
        let dims = if f.n_elements > f.block_size {
            vec![f.block_size as u64, (f.n_elements / f.block_size) as u64]
        } else {
            vec![f.n_elements as u64]
        };
        g.tensor(&format!("blk.{}.weight", f.ty), &dims, f.ty, f.raw.clone());
    }
    // A type we parse but do not dequantise.
    g.tensor("q3k.weight", &[256], GgmlType::Q3_K, vec![7; 110]);
    (g, fx)
}

#[test]
fn reader_round_trip_on_disk() {
    let (g, fx) = full_model();
    let bytes = g.build();
    let tmp = TempFile::new("roundtrip", &bytes);
    let f = GgufFile::open(&tmp.0).unwrap();

    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.file_size(), bytes.len() as u64);
    assert_eq!(f.path(), tmp.0.as_path());
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.metadata().len() as u64, g.n_kv);
    assert_eq!(f.metadata().next().unwrap().0, "general.architecture");

    assert_eq!(f.tensor_count(), fx.len() + 1);
    let names: Vec<_> = f.tensors().map(|t| t.name().to_owned()).collect();
    assert_eq!(names.last().unwrap(), "q3k.weight");
    for fx in &fx {
        let name = format!("blk.{}.weight", fx.ty);
        let info = f.tensor_info(&name).unwrap();
        assert_eq!(info.ggml_type(), fx.ty);
        assert_eq!(info.n_elements(), fx.n_elements as u64);
        assert_eq!(info.n_bytes(), fx.raw.len() as u64);
        assert_eq!(info.offset() % 64, 0);
        assert_eq!(info.file_range().start, f.data_offset() + info.offset());
        let shape = info.shape();
        assert_eq!(shape.iter().product::<usize>(), fx.n_elements);
        assert_eq!(*shape.last().unwrap() as u64, info.dims()[0]);
        assert_eq!(f.tensor_bytes(&name).unwrap(), fx.raw.as_slice());
        assert_bits(
            fx.ty,
            &f.dequantize_tensor(&name).unwrap(),
            &fx.expected_bits,
        );
        let mut buf = vec![0.0; fx.n_elements];
        f.dequantize_tensor_into(&name, &mut buf).unwrap();
        assert_bits(fx.ty, &buf, &fx.expected_bits);
        let e = f
            .dequantize_tensor_into(&name, &mut buf[1..])
            .unwrap_err()
            .to_string();
        assert_contains(&e, &[&name, "output buffer holds"]);
    }

    // Parsed but not dequantisable.
    assert_eq!(f.tensor_bytes("q3k.weight").unwrap(), &[7u8; 110][..]);
    let e = f.dequantize_tensor("q3k.weight").unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}: tensor 'q3k.weight': dequantisation of ggml type Q3_K is not supported",
            tmp.0.display()
        )
    );
    let e = f.tensor_info("nope").unwrap_err().to_string();
    assert_eq!(e, format!("{}: no tensor named 'nope'", tmp.0.display()));
    assert!(!f.has_tensor("nope"));
}

#[test]
fn metadata_getters() {
    let (g, _) = full_model();
    let f = open_mem(g.build()).unwrap();
    assert_eq!(f.get_u32("t.u8").unwrap(), 200);
    assert_eq!(f.get_u64("t.u16").unwrap(), 60000);
    assert_eq!(f.get_i32("t.i8").unwrap(), -1);
    assert_eq!(f.get_i64("t.i16").unwrap(), -3);
    assert_eq!(f.get_u64("t.u64").unwrap(), 1 << 40);
    assert_eq!(f.get_usize("t.i64").unwrap(), 7);
    assert_eq!(f.get_u32("general.alignment").unwrap(), 64);
    assert_eq!(f.get_f32("t.f32").unwrap(), 1.5);
    assert_eq!(f.get_f32("t.f64").unwrap(), 0.1f64 as f32);
    assert_eq!(f.get_f64("t.f64").unwrap(), 0.1);
    assert_eq!(f.get_f32("t.i32").unwrap(), -5.0);
    assert!(f.get_bool("t.bool").unwrap());
    assert_eq!(f.get_str("t.empty_str").unwrap(), "");
    assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(
        f.get_str_array("tokenizer.ggml.tokens").unwrap(),
        ["<|endoftext|>", "Ġthe", "é", ""]
    );
    assert_eq!(
        f.get_i32_array("tokenizer.ggml.token_type").unwrap(),
        [1, 1, 3, -2]
    );
    assert_eq!(f.get_i32_array("t.u8_array").unwrap(), [1, 2, 255]);
    assert_eq!(f.get_u32_array("t.u8_array").unwrap(), [1, 2, 255]);
    assert_eq!(f.get_i64_array("t.empty_array").unwrap(), Vec::<i64>::new());
    assert_eq!(
        f.get_f32_array("tokenizer.ggml.scores").unwrap(),
        [0.5, -1.0]
    );
    assert_eq!(f.get_f32_array("t.u8_array").unwrap(), [1.0, 2.0, 255.0]);
    assert_eq!(
        f.get_array("t.bool_array").unwrap(),
        &MetadataArray::Bool(vec![false, true])
    );
    assert_eq!(f.get("t.i16"), Some(&MetadataValue::I16(-3)));
    assert!(f.has_key("t.u8") && !f.has_key("t.nope"));

    let msg = |r: Result<(), GgufError>| r.unwrap_err().to_string();
    assert_eq!(
        msg(f.get_u32("t.nope").map(drop)),
        "mem.gguf: metadata key 't.nope' is missing"
    );
    assert_eq!(
        msg(f.get_u32("t.i32").map(drop)),
        "mem.gguf: metadata key 't.i32': value -5 does not fit in u32"
    );
    assert_eq!(
        msg(f.get_u32("t.u64").map(drop)),
        "mem.gguf: metadata key 't.u64': value 1099511627776 does not fit in u32"
    );
    assert_eq!(
        msg(f.get_str("t.u8").map(drop)),
        "mem.gguf: metadata key 't.u8' has type u8, expected string"
    );
    assert_eq!(
        msg(f.get_u32("tokenizer.ggml.model").map(drop)),
        "mem.gguf: metadata key 'tokenizer.ggml.model' has type string, expected u32"
    );
    assert_eq!(
        msg(f.get_str_array("tokenizer.ggml.token_type").map(drop)),
        "mem.gguf: metadata key 'tokenizer.ggml.token_type' has type array[i32] of 4 elements, expected array[string]"
    );
    assert_eq!(
        msg(f.get_i32_array("tokenizer.ggml.tokens").map(drop)),
        "mem.gguf: metadata key 'tokenizer.ggml.tokens' has type array[string] of 4 elements, expected array of integers"
    );
    assert_contains(
        &msg(f.get_bool("t.u8").map(drop)),
        &["'t.u8'", "expected bool"],
    );
    assert_contains(
        &msg(f.get_f32("t.bool").map(drop)),
        &["'t.bool'", "expected float"],
    );
}

#[test]
fn version_2_and_empty_files_open() {
    let (mut g, _) = full_model();
    g.version = 2;
    let f = open_mem(g.build()).unwrap();
    assert_eq!(f.version(), 2);
    // Header only: no metadata, no tensors, no padding.
    let f = open_mem(Gguf::new().build()).unwrap();
    assert_eq!(
        (f.tensor_count(), f.metadata().len(), f.alignment()),
        (0, 0, 32)
    );
    assert!(f.architecture().is_err());
}

#[test]
fn bad_magic_and_versions() {
    let mut g = Gguf::new();
    g.magic = *b"GGML";
    assert_contains(&err_mem(g.build()), &["bad magic", "not a GGUF file"]);
    assert_contains(
        &err_mem(b"PK\x03\x04 zip, not gguf".to_vec()),
        &["bad magic [50, 4b, 03, 04]"],
    );
    for (v, extra) in [
        (1, " (GGUF v1 is obsolete)"),
        (4, ""),
        (
            0x0300_0000,
            " (this looks like a big-endian GGUF, which is not supported)",
        ),
    ] {
        let mut g = Gguf::new();
        g.version = v;
        assert_eq!(
            err_mem(g.build()),
            format!("mem.gguf: unsupported GGUF version {v} (supported: 2 and 3){extra}")
        );
    }
}

#[test]
fn empty_and_missing_files() {
    let tmp = TempFile::new("empty", &[]);
    let e = GgufFile::open(&tmp.0).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}: truncated at offset 0: the magic \"GGUF\" needs 4 bytes but the file is 0 bytes long",
            tmp.0.display()
        )
    );
    let missing = std::env::temp_dir().join("hlm-gguf-definitely-missing.gguf");
    let e = GgufFile::open(&missing).unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }));
    assert!(
        e.to_string()
            .starts_with(&format!("{}: I/O error", missing.display()))
    );
}

#[test]
fn every_truncation_is_an_error() {
    let (g, _) = full_model();
    let bytes = g.build();
    let f = open_mem(bytes.clone()).unwrap();
    let header_end = f.tensors().map(|t| t.file_range().start).min().unwrap() as usize;
    let mut n_truncated = 0;
    for cut in 0..bytes.len() {
        let msg = err_mem(bytes[..cut].to_vec());
        if msg.contains("truncated at offset") {
            n_truncated += 1;
            assert!(cut < f.data_offset() as usize, "cut {cut}: {msg}");
        } else {
            assert_contains(&msg, &["tensor '", "lie outside the file", "truncated"]);
            assert!(cut >= header_end - 64, "cut {cut}: {msg}");
        }
    }
    assert!(n_truncated > 100);
    // A few through the mmap path.
    for cut in [3, 10, 23, header_end + 1, bytes.len() - 1] {
        let tmp = TempFile::new(&format!("cut{cut}"), &bytes[..cut]);
        assert!(GgufFile::open(&tmp.0).is_err());
    }
    // Specific messages.
    assert_eq!(
        err_mem(bytes[..10].to_vec()),
        "mem.gguf: truncated at offset 8: the tensor count needs 8 bytes but the file is 10 bytes long"
    );
    let last = f.tensors().last().unwrap().clone();
    assert_eq!(
        err_mem(bytes[..bytes.len() - 1].to_vec()),
        format!(
            "mem.gguf: tensor 'q3k.weight': data bytes {}..{} lie outside the file ({} bytes): file truncated or offset corrupt",
            last.file_range().start,
            last.file_range().end,
            bytes.len() - 1
        )
    );
}

#[test]
fn corrupt_tensor_infos() {
    let base = || {
        let mut g = Gguf::new();
        g.tensor("a", &[32], GgmlType::Q8_0, vec![0; 34]);
        g.tensor("b", &[4, 2], GgmlType::F32, vec![0; 32]);
        g
    };
    assert!(open_mem(base().build()).is_ok());

    let mut g = base();
    g.tensors[1].offset = Some(1 << 20);
    assert_contains(
        &err_mem(g.build()),
        &["tensor 'b': data bytes", "lie outside the file"],
    );

    let mut g = base();
    g.tensors[1].offset = Some(u64::MAX - 31);
    assert_contains(&err_mem(g.build()), &["tensor 'b'", "lie outside the file"]);

    let mut g = base();
    g.tensors[1].offset = Some(40);
    assert_contains(
        &err_mem(g.build()),
        &["tensor 'b': data offset 40 is not a multiple of the alignment 32"],
    );

    let mut g = base();
    g.tensors[0].ty = 99;
    assert_eq!(
        err_mem(g.build()),
        "mem.gguf: tensor 'a': unknown ggml type id 99"
    );
    let mut g = base();
    g.tensors[0].ty = 4; // removed Q4_2
    assert_eq!(
        err_mem(g.build()),
        "mem.gguf: tensor 'a': unknown ggml type id 4"
    );

    let mut g = Gguf::new();
    g.tensor(
        "blk.0.attn_q.weight",
        &[100, 2],
        GgmlType::Q4_K,
        vec![0; 144],
    );
    assert_eq!(
        err_mem(g.build()),
        "mem.gguf: tensor 'blk.0.attn_q.weight' (Q4_K, dims [100, 2]): row length 100 is not a multiple of the block size 256"
    );

    let mut g = base();
    g.tensors[1].dims = vec![1 << 40, 1 << 40];
    assert_contains(
        &err_mem(g.build()),
        &["tensor 'b': dims [1099511627776, 1099511627776] overflow u64"],
    );
    let mut g = base();
    g.tensors[1].dims = vec![1 << 62, 1];
    assert_contains(
        &err_mem(g.build()),
        &["tensor 'b': byte size overflows u64"],
    );
    let mut g = base();
    g.tensors[1].dims = vec![1 << 40, 1];
    assert_contains(&err_mem(g.build()), &["tensor 'b'", "lie outside the file"]);

    let mut g = base();
    g.tensors[1].dims = vec![1, 1, 1, 1, 8];
    assert_contains(
        &err_mem(g.build()),
        &["tensor 'b' has 5 dimensions (at most 4 supported)"],
    );

    let mut g = base();
    g.tensors[1].name = b"a".to_vec();
    assert_contains(&err_mem(g.build()), &["duplicate tensor name 'a'"]);

    let mut g = base();
    g.tensors[1].name = vec![b'x', 0xff, 0xfe];
    assert_contains(
        &err_mem(g.build()),
        &["name of tensor info 1 is not valid UTF-8"],
    );

    let mut g = Gguf::new();
    g.n_tensors_override = Some(u64::MAX);
    assert_eq!(
        err_mem(g.build()),
        "mem.gguf: truncated at offset 24: length of name of tensor info 0 needs 8 bytes but the file is 24 bytes long"
    );
}

#[test]
fn corrupt_metadata() {
    let mut g = Gguf::new();
    g.kv_raw(
        "k",
        T_ARR,
        &[&T_ARR.to_le_bytes()[..], &1u64.to_le_bytes()].concat(),
    );
    assert_contains(
        &err_mem(g.build()),
        &["metadata key 'k' is a nested array, which is not supported"],
    );

    let mut g = Gguf::new();
    g.kv_raw("k", 13, &[0; 8]);
    assert_contains(
        &err_mem(g.build()),
        &["metadata key 'k' has unknown value type 13"],
    );

    let mut g = Gguf::new();
    g.kv_array("k", 77, 1, &[0; 8]);
    assert_contains(
        &err_mem(g.build()),
        &["array 'k' has unknown element type 77"],
    );

    for ety in [T_I32, T_STR, T_U8, T_F64] {
        let mut g = Gguf::new();
        g.kv_array("big", ety, u64::MAX, &[0; 16]);
        assert_contains(
            &err_mem(g.build()),
            &["truncated at offset", "elements of array 'big'"],
        );
    }

    let mut g = Gguf::new();
    g.kv_raw("s", T_STR, &u64::MAX.to_le_bytes());
    assert_contains(
        &err_mem(g.build()),
        &["truncated at offset 45: value of metadata key 's' needs 18446744073709551615 bytes"],
    );

    let mut g = Gguf::new();
    g.kv_raw("s", T_STR, &gstr(&[0xc3, 0x28]));
    assert_contains(
        &err_mem(g.build()),
        &["value of metadata key 's' is not valid UTF-8"],
    );
    let mut g = Gguf::new();
    g.kv_str("ok", "x");
    g.kv.extend(gstr(&[0xff]));
    g.kv.extend(T_U8.to_le_bytes());
    g.kv.push(0);
    g.n_kv += 1;
    assert_contains(
        &err_mem(g.build()),
        &["key of metadata entry 1 is not valid UTF-8"],
    );

    let mut g = Gguf::new();
    g.kv_u32("k", 1).kv_u32("k", 2);
    assert_contains(&err_mem(g.build()), &["duplicate metadata key 'k'"]);

    for bad in [0u32, 3, 1 << 31] {
        let mut g = Gguf::new();
        g.kv_u32("general.alignment", bad);
        assert_contains(
            &err_mem(g.build()),
            &["general.alignment", "must be a power-of-two"],
        );
    }
    let mut g = Gguf::new();
    g.kv_str("general.alignment", "32");
    assert_contains(&err_mem(g.build()), &["general.alignment = String(\"32\")"]);

    let mut g = Gguf::new();
    g.n_kv_override = Some(u64::MAX);
    assert_contains(
        &err_mem(g.build()),
        &["truncated at offset 24: length of key of metadata entry 0"],
    );
}

/// Deterministic byte flips over a valid file: opening must return Ok or Err, never
/// panic or abort, and whatever opens must dequantise (or refuse) without panicking.
#[test]
fn random_corruption_never_panics() {
    let (g, _) = full_model();
    let bytes = g.build();
    let header_len = open_mem(bytes.clone()).unwrap().data_offset() as usize;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut err) = (0, 0);
    for _ in 0..3000 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let pos = (next() as usize) % header_len;
            b[pos] = match next() % 4 {
                0 => 0xff,
                1 => 0,
                _ => next() as u8,
            };
        }
        match open_mem(b) {
            Ok(f) => {
                ok += 1;
                let names: Vec<String> = f.tensors().map(|t| t.name().to_owned()).collect();
                for n in names {
                    let _ = f.dequantize_tensor(&n);
                }
                for (k, _) in f.metadata() {
                    let _ = (
                        f.get_u32(k),
                        f.get_str(k),
                        f.get_i32_array(k),
                        f.get_f32_array(k),
                    );
                }
            }
            Err(e) => {
                err += 1;
                assert!(e.to_string().starts_with("mem.gguf: "));
            }
        }
    }
    assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
}

/// `HLM_GGUF=/path/model.gguf cargo test --test gguf_dequant -- --ignored --nocapture`
#[test]
#[ignore = "needs a real model file in $HLM_GGUF"]
fn real_model_smoke() {
    let Some(path) = std::env::var_os("HLM_GGUF") else {
        eprintln!("HLM_GGUF not set; skipping");
        return;
    };
    let t0 = std::time::Instant::now();
    let f = GgufFile::open(&path).unwrap();
    let arch = f.architecture().unwrap().to_owned();
    println!(
        "{}: GGUF v{}, arch {arch}, {} tensors, {} metadata keys, alignment {}, data at {}, opened in {:?}",
        f.path().display(),
        f.version(),
        f.tensor_count(),
        f.metadata().len(),
        f.alignment(),
        f.data_offset(),
        t0.elapsed()
    );
    for (k, v) in f.metadata() {
        match v {
            MetadataValue::Array(a) => {
                println!("  {k}: array[{}] of {}", a.elem_type_name(), a.len())
            }
            MetadataValue::String(s) if s.len() > 80 => {
                println!("  {k}: string of {} bytes", s.len())
            }
            v => println!("  {k}: {v:?}"),
        }
    }
    let mut counts = std::collections::BTreeMap::new();
    for t in f.tensors() {
        *counts.entry(t.ggml_type().name()).or_insert(0usize) += 1;
    }
    println!("  tensor types: {counts:?}");
    let t0 = std::time::Instant::now();
    let (mut n_total, mut buf) = (0u64, Vec::new());
    for t in f.tensors() {
        buf.resize(t.n_elements() as usize, 0.0);
        f.dequantize_tensor_into(t.name(), &mut buf).unwrap();
        assert!(
            buf.iter().all(|v| v.is_finite()),
            "{}: non-finite values",
            t.name()
        );
        n_total += t.n_elements();
    }
    let dt = t0.elapsed();
    println!(
        "  dequantised {n_total} values in {dt:?} ({:.0} M/s), all finite",
        n_total as f64 / dt.as_secs_f64() / 1e6
    );
}
