//! Framing of protocol messages on a byte stream, and the bit-exact packing of upload payloads.
//!
//! Every message is one frame:
//!
//! ```text
//! offset  size  field
//! 0       3     magic "HLM"
//! 3       1     protocol version (PROTOCOL_VERSION)
//! 4       4     body length in bytes, u32 little-endian
//! 8       n     body: the message, postcard-encoded (https://postcard.jamesmunns.com/wire-format)
//! ```
//!
//! A payload's probabilities travel bit-packed ([`PackedPayload`]) so that the bytes on the
//! wire are exactly ⌈[`UploadPayload::bits`] / 8⌉: what the link model charges is what the
//! network carries.

use std::io::{Read, Write};

use hlm_core::{ProbQuantization, TokenId, UploadPayload, sampling::token_index_bits};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The first three bytes of every frame.
pub const MAGIC: &[u8; 3] = b"HLM";
/// Version of the protocol this build speaks (the fourth byte of every frame).
pub const PROTOCOL_VERSION: u8 = 2;
/// Bytes of the frame header.
pub const HEADER_BYTES: usize = 8;

/// What can go wrong reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the connection closed")]
    Closed,
    #[error("not an hlm protocol frame (the stream starts with {0:02x?}, expected \"HLM\")")]
    BadMagic([u8; 3]),
    #[error(
        "protocol version {got} is not supported (this side speaks version {PROTOCOL_VERSION})"
    )]
    Version { got: u8 },
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Write one message as a frame; returns the bytes written (header included).
pub fn write_frame<W: Write, M: Serialize>(w: &mut W, msg: &M) -> Result<usize, WireError> {
    let body = postcard::to_stdvec(msg).map_err(|e| WireError::Malformed(e.to_string()))?;
    let len = u32::try_from(body.len()).map_err(|_| WireError::TooLarge {
        len: body.len(),
        max: u32::MAX as usize,
    })?;
    let mut frame = Vec::with_capacity(HEADER_BYTES + body.len());
    frame.extend_from_slice(MAGIC);
    frame.push(PROTOCOL_VERSION);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    w.flush()?;
    Ok(frame.len())
}

/// Read the header of the next frame: the body length. A frame longer than `max_body` is
/// refused before its body is read.
pub fn read_header<R: Read>(r: &mut R, max_body: usize) -> Result<usize, WireError> {
    let mut header = [0u8; HEADER_BYTES];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(e.into()),
    }
    let magic = [header[0], header[1], header[2]];
    if &magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    if header[3] != PROTOCOL_VERSION {
        return Err(WireError::Version { got: header[3] });
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > max_body {
        return Err(WireError::TooLarge { len, max: max_body });
    }
    Ok(len)
}

/// A frame body's first allocation; it grows from there as bytes arrive.
const BODY_CHUNK: usize = 64 << 10;

/// Read one frame; returns the message and the bytes read (header included).
pub fn read_frame<R: Read, M: DeserializeOwned>(
    r: &mut R,
    max_body: usize,
) -> Result<(M, usize), WireError> {
    let len = read_header(r, max_body)?;
    // The body grows as its bytes arrive: announcing a large frame and sending nothing
    // claims no memory.
    let mut body = Vec::with_capacity(len.min(BODY_CHUNK));
    let got = r
        .by_ref()
        .take(len as u64)
        .read_to_end(&mut body)
        .map_err(WireError::Io)?;
    if got < len {
        return Err(WireError::Malformed(format!(
            "the frame announced {len} bytes, the stream ended after {got}"
        )));
    }
    let msg = postcard::from_bytes(&body).map_err(|e| WireError::Malformed(e.to_string()))?;
    Ok((msg, HEADER_BYTES + len))
}

/// An [`UploadPayload`] as it travels: the kind and quantisation, then the values bit-packed
/// (most significant bit first) exactly as [`UploadPayload::bits`] counts them.
///
/// - dense: |V| values of b bits (8-bit levels `round(p·255)`, IEEE half, or IEEE single);
/// - top-k: k in ⌈log2(|V|+1)⌉ bits, then k × (index in ⌈log2 |V|⌉ bits, value in b bits);
/// - token-only: nothing;
/// - draft probability (split verification): x_d as an IEEE single, 4 bytes big-endian.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackedPayload {
    /// 0 = dense, 1 = top-k, 2 = token-only, 3 = draft probability.
    pub kind: u8,
    /// Bits per probability: 8, 16 or 32 (0 for token-only, 32 for a draft probability).
    pub bits: u8,
    /// The packed values: ⌈payload bits / 8⌉ bytes (serialised as one byte string, not a
    /// sequence of separately encoded bytes: the same postcard bytes, much faster).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

fn quantization_code(q: ProbQuantization) -> u8 {
    q.bits() as u8
}

fn encode_prob(q: ProbQuantization, p: f32) -> u64 {
    match q {
        ProbQuantization::Linear8 => (p.clamp(0.0, 1.0) * 255.0).round() as u64,
        ProbQuantization::Float16 => u64::from(half::f16::from_f32(p).to_bits()),
        ProbQuantization::Float32 => u64::from(p.to_bits()),
    }
}

fn decode_prob(q: ProbQuantization, v: u64) -> f32 {
    match q {
        ProbQuantization::Linear8 => v as f32 / 255.0,
        ProbQuantization::Float16 => half::f16::from_bits(v as u16).to_f32(),
        ProbQuantization::Float32 => f32::from_bits(v as u32),
    }
}

impl PackedPayload {
    /// Pack a payload for a vocabulary of `vocab` entries.
    pub fn pack(payload: &UploadPayload, vocab: usize) -> PackedPayload {
        match payload {
            UploadPayload::Dense {
                quantization,
                probs,
            } => {
                // Whole bytes per value: MSB-first packing is the values' big-endian bytes in
                // order, written directly (the hot path for dense uploads).
                let q = *quantization;
                let mut data = Vec::with_capacity(probs.len() * q.bits() as usize / 8);
                match q {
                    ProbQuantization::Linear8 => {
                        data.extend(probs.iter().map(|&p| encode_prob(q, p) as u8));
                    }
                    ProbQuantization::Float16 => {
                        for &p in probs {
                            data.extend_from_slice(&(encode_prob(q, p) as u16).to_be_bytes());
                        }
                    }
                    ProbQuantization::Float32 => {
                        for &p in probs {
                            data.extend_from_slice(&p.to_bits().to_be_bytes());
                        }
                    }
                }
                PackedPayload {
                    kind: 0,
                    bits: quantization_code(q),
                    data,
                }
            }
            UploadPayload::TopK {
                quantization,
                indices,
                probs,
            } => {
                let b = quantization.bits() as u32;
                let idx = token_index_bits(vocab) as u32;
                let mut w = BitWriter::with_bits(payload.bits(vocab));
                w.put(indices.len() as u64, token_index_bits(vocab + 1) as u32);
                for (&i, &p) in indices.iter().zip(probs) {
                    w.put(u64::from(i), idx);
                    w.put(encode_prob(*quantization, p), b);
                }
                PackedPayload {
                    kind: 1,
                    bits: quantization_code(*quantization),
                    data: w.finish(),
                }
            }
            UploadPayload::TokenOnly => PackedPayload {
                kind: 2,
                bits: 0,
                data: Vec::new(),
            },
            UploadPayload::DraftProbability { prob } => PackedPayload {
                kind: 3,
                bits: 32,
                data: prob.to_bits().to_be_bytes().to_vec(),
            },
        }
    }

    /// Unpack for a vocabulary of `vocab` entries; malformed input is an error, never a panic.
    pub fn unpack(&self, vocab: usize) -> Result<UploadPayload, String> {
        let quantization = || {
            ProbQuantization::from_bits(u32::from(self.bits))
                .map_err(|_| format!("{} bits per probability is not 8, 16 or 32", self.bits))
        };
        let mut r = BitReader::new(&self.data);
        let payload = match self.kind {
            0 => {
                let q = quantization()?;
                let need = (vocab as u64 * q.bits()).div_ceil(8) as usize;
                if self.data.len() != need {
                    return Err(format!(
                        "dense payload of {} bytes, a vocabulary of {vocab} at {} bits needs {need}",
                        self.data.len(),
                        q.bits()
                    ));
                }
                // Whole bytes per value (length checked above).
                let probs: Vec<f32> = match q {
                    ProbQuantization::Linear8 => self
                        .data
                        .iter()
                        .map(|&v| decode_prob(q, u64::from(v)))
                        .collect(),
                    ProbQuantization::Float16 => self
                        .data
                        .chunks_exact(2)
                        .map(|c| decode_prob(q, u64::from(u16::from_be_bytes([c[0], c[1]]))))
                        .collect(),
                    ProbQuantization::Float32 => self
                        .data
                        .chunks_exact(4)
                        .map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                };
                UploadPayload::Dense {
                    quantization: q,
                    probs,
                }
            }
            1 => {
                let q = quantization()?;
                let b = q.bits() as u32;
                let idx = token_index_bits(vocab) as u32;
                let k = r
                    .get(token_index_bits(vocab + 1) as u32)
                    .ok_or("top-k payload ends before its k")? as usize;
                if k > vocab {
                    return Err(format!("top-k payload with k = {k} > |V| = {vocab}"));
                }
                let mut indices = Vec::with_capacity(k);
                let mut probs = Vec::with_capacity(k);
                for _ in 0..k {
                    let i = r.get(idx).ok_or("top-k payload ends early")?;
                    let p = r.get(b).ok_or("top-k payload ends early")?;
                    if i as usize >= vocab {
                        return Err(format!("top-k index {i} outside the vocabulary of {vocab}"));
                    }
                    indices.push(i as TokenId);
                    probs.push(decode_prob(q, p));
                }
                let payload = UploadPayload::TopK {
                    quantization: q,
                    indices,
                    probs,
                };
                let need = payload.bits(vocab).div_ceil(8) as usize;
                if self.data.len() != need {
                    return Err(format!(
                        "top-k payload of {} bytes, k = {k} needs {need}",
                        self.data.len()
                    ));
                }
                payload
            }
            2 if self.data.is_empty() => UploadPayload::TokenOnly,
            2 => return Err("token-only payload carries data".into()),
            3 => match <[u8; 4]>::try_from(self.data.as_slice()) {
                Ok(b) if self.bits == 32 => UploadPayload::DraftProbability {
                    prob: f32::from_be_bytes(b),
                },
                _ => {
                    return Err(format!(
                        "a draft-probability payload is 4 bytes at 32 bits, not {} bytes at {}",
                        self.data.len(),
                        self.bits
                    ));
                }
            },
            other => return Err(format!("unknown payload kind {other}")),
        };
        Ok(payload)
    }
}

/// Most-significant-bit-first bit packing.
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    used: u32,
}

impl BitWriter {
    fn with_bits(bits: u64) -> Self {
        BitWriter {
            out: Vec::with_capacity(bits.div_ceil(8) as usize),
            acc: 0,
            used: 0,
        }
    }

    /// Append the low `n` bits of `v` (n ≤ 32).
    fn put(&mut self, v: u64, n: u32) {
        debug_assert!(n <= 32);
        self.acc = (self.acc << n) | (v & ((1u64 << n) - 1));
        self.used += n;
        while self.used >= 8 {
            self.used -= 8;
            self.out.push((self.acc >> self.used) as u8);
        }
        self.acc &= (1u64 << self.used) - 1;
    }

    fn finish(mut self) -> Vec<u8> {
        if self.used > 0 {
            self.out.push((self.acc << (8 - self.used)) as u8);
        }
        self.out
    }
}

struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    have: u32,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        BitReader {
            data,
            pos: 0,
            acc: 0,
            have: 0,
        }
    }

    /// The next `n` bits (n ≤ 32), or `None` past the end.
    fn get(&mut self, n: u32) -> Option<u64> {
        while self.have < n {
            let byte = *self.data.get(self.pos)?;
            self.pos += 1;
            self.acc = (self.acc << 8) | u64::from(byte);
            self.have += 8;
        }
        self.have -= n;
        let v = (self.acc >> self.have) & ((1u64 << n) - 1);
        self.acc &= (1u64 << self.have) - 1;
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quantised(q: ProbQuantization, probs: &[f32]) -> Vec<f32> {
        probs.iter().map(|&p| q.roundtrip(p)).collect()
    }

    #[test]
    fn payloads_pack_to_exactly_their_bit_count() {
        let vocab = 151_936;
        let mut probs = vec![0.0f32; vocab];
        probs[17] = 0.61;
        probs[4242] = 0.3;
        probs[151_935] = 0.09;
        for q in [
            ProbQuantization::Linear8,
            ProbQuantization::Float16,
            ProbQuantization::Float32,
        ] {
            let dense = UploadPayload::Dense {
                quantization: q,
                probs: quantised(q, &probs),
            };
            let packed = PackedPayload::pack(&dense, vocab);
            assert_eq!(packed.data.len() as u64 * 8, dense.bits(vocab));
            assert_eq!(packed.unpack(vocab).unwrap(), dense);
            let top = UploadPayload::TopK {
                quantization: q,
                indices: vec![17, 4242, 151_935],
                probs: quantised(q, &[0.61, 0.3, 0.09]),
            };
            let packed = PackedPayload::pack(&top, vocab);
            // 18 bits for k, then 3 x (18 + b) bits.
            let bits = 18 + 3 * (18 + q.bits());
            assert_eq!(top.bits(vocab), bits);
            assert_eq!(packed.data.len() as u64, bits.div_ceil(8));
            assert_eq!(packed.unpack(vocab).unwrap(), top);
        }
        let split = UploadPayload::DraftProbability { prob: 0.123_456_79 };
        let packed = PackedPayload::pack(&split, vocab);
        assert_eq!(packed.data.len() as u64 * 8, split.bits(vocab));
        assert_eq!(packed.unpack(vocab).unwrap(), split);
        let bad = PackedPayload {
            kind: 3,
            bits: 32,
            data: vec![0; 3],
        };
        assert!(
            bad.unpack(vocab)
                .unwrap_err()
                .contains("4 bytes at 32 bits")
        );
        let t = PackedPayload::pack(&UploadPayload::TokenOnly, vocab);
        assert!(t.data.is_empty());
        assert_eq!(t.unpack(vocab).unwrap(), UploadPayload::TokenOnly);
    }

    /// The byte-aligned fast path of dense payloads is the same MSB-first packing.
    #[test]
    fn dense_fast_path_equals_bit_packing() {
        let probs: Vec<f32> = (0..300).map(|i| (i % 17) as f32 / 40.0).collect();
        for q in [
            ProbQuantization::Linear8,
            ProbQuantization::Float16,
            ProbQuantization::Float32,
        ] {
            let probs = quantised(q, &probs);
            let mut w = BitWriter::with_bits(0);
            for &p in &probs {
                w.put(encode_prob(q, p), q.bits() as u32);
            }
            let dense = UploadPayload::Dense {
                quantization: q,
                probs,
            };
            assert_eq!(PackedPayload::pack(&dense, 300).data, w.finish(), "{q:?}");
        }
    }

    #[test]
    fn malformed_payloads_are_errors() {
        let vocab = 64;
        let bad = |kind, bits, data: Vec<u8>| {
            PackedPayload { kind, bits, data }
                .unpack(vocab)
                .unwrap_err()
        };
        assert!(bad(0, 8, vec![0; 63]).contains("needs 64"));
        assert!(bad(0, 12, vec![0; 96]).contains("12 bits"));
        assert!(bad(9, 8, vec![]).contains("unknown payload kind 9"));
        assert!(bad(2, 0, vec![1]).contains("carries data"));
        // k = 65 > |V|: 7 bits of k = 1000001.
        assert!(bad(1, 8, vec![0b1000_0010]).contains("k = 65"));
        // k = 2 but only one entry's worth of bytes.
        let one = PackedPayload::pack(
            &UploadPayload::TopK {
                quantization: ProbQuantization::Linear8,
                indices: vec![3],
                probs: vec![1.0],
            },
            vocab,
        );
        let mut data = one.data.clone();
        data[0] = (data[0] & 0b0000_0001) | (2 << 1);
        assert!(bad(1, 8, data).contains("ends early"));
    }

    #[test]
    fn frames_round_trip_and_refuse_bad_headers() {
        let msg = (42u64, "hello".to_string(), vec![1u32, 2, 3]);
        let mut buf = Vec::new();
        let n = write_frame(&mut buf, &msg).unwrap();
        assert_eq!(n, buf.len());
        assert_eq!(&buf[..4], b"HLM\x02");
        let (back, m): ((u64, String, Vec<u32>), usize) =
            read_frame(&mut buf.as_slice(), 1 << 20).unwrap();
        assert_eq!((back, m), (msg.clone(), n));
        // Too large for the reader's limit: refused from the header alone.
        let e = read_frame::<_, (u64, String, Vec<u32>)>(&mut buf.as_slice(), 4).unwrap_err();
        assert!(matches!(e, WireError::TooLarge { max: 4, .. }), "{e}");
        let mut v1 = buf.clone();
        v1[3] = 1;
        let e = read_frame::<_, (u64, String, Vec<u32>)>(&mut v1.as_slice(), 1 << 20).unwrap_err();
        assert!(
            e.to_string()
                .contains("version 1 is not supported (this side speaks version 2)"),
            "{e}"
        );
        let e = read_frame::<_, u8>(&mut &b"GET / HTTP/1.1\r\n"[..], 1 << 20).unwrap_err();
        assert!(e.to_string().contains("not an hlm protocol frame"), "{e}");
        // Truncated body, and a body that is not the expected message.
        let e = read_frame::<_, (u64, String, Vec<u32>)>(&mut &buf[..buf.len() - 2], 1 << 20)
            .unwrap_err();
        assert!(e.to_string().contains("stream ended"), "{e}");
        let e = read_frame::<_, (u64, String, Vec<u32>, u64)>(&mut buf.as_slice(), 1 << 20)
            .unwrap_err();
        assert!(matches!(e, WireError::Malformed(_)), "{e}");
        let e = read_frame::<_, u8>(&mut &b""[..], 1 << 20).unwrap_err();
        assert!(matches!(e, WireError::Closed), "{e}");
    }
}
