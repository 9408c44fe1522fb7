//! Reading the bit syntax of H.264 and H.265 parameter sets: emulation prevention, an
//! MSB-first reader with Exp-Golomb codes, and the error both SPS parsers give.

/// Why an H.264 or H.265 SPS could not be read or a decoder configuration record
/// (`avcC`, `hvcC`) not built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpsError {
    /// The NAL unit is not an SPS.
    #[error("NAL unit type {0} is not an SPS")]
    NotSps(u8),
    /// The SPS ends before the named field.
    #[error("SPS truncated before {0}")]
    Truncated(&'static str),
    /// A field holds a value the specification does not allow.
    #[error("invalid SPS: {0}")]
    Invalid(&'static str),
    /// A parameter set is longer than the record's 16-bit length field.
    #[error("parameter set of {0} bytes does not fit the record's 16-bit length")]
    TooLarge(usize),
}

/// The RBSP of a NAL unit: the bytes with every emulation-prevention byte (the `03` of
/// `00 00 03`) removed, because the bit syntax is defined on the unescaped bytes.
pub fn remove_emulation_prevention(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Reads bits MSB first from an RBSP.
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    /// A reader starting `skip_bits` into `data` (past a NAL unit header).
    pub(crate) fn new(data: &'a [u8], skip_bits: usize) -> Self {
        BitReader {
            data,
            pos: skip_bits,
        }
    }

    /// The position in bits from the start of the data.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn bit(&mut self, field: &'static str) -> Result<u32, SpsError> {
        let byte = self
            .data
            .get(self.pos / 8)
            .ok_or(SpsError::Truncated(field))?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(u32::from(b))
    }

    pub(crate) fn flag(&mut self, field: &'static str) -> Result<bool, SpsError> {
        Ok(self.bit(field)? == 1)
    }

    /// `n` bits (at most 32) as an unsigned number.
    pub(crate) fn bits(&mut self, n: u32, field: &'static str) -> Result<u32, SpsError> {
        let mut v = 0;
        for _ in 0..n {
            v = (v << 1) | self.bit(field)?;
        }
        Ok(v)
    }

    pub(crate) fn skip(&mut self, n: usize, field: &'static str) -> Result<(), SpsError> {
        if self.pos + n > self.data.len() * 8 {
            return Err(SpsError::Truncated(field));
        }
        self.pos += n;
        Ok(())
    }

    /// Exp-Golomb ue(v); values needing more than 32 bits are invalid in a parameter set.
    pub(crate) fn ue(&mut self, field: &'static str) -> Result<u32, SpsError> {
        let mut zeros = 0;
        while self.bit(field)? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err(SpsError::Invalid(field));
            }
        }
        let rest = self.bits(zeros, field)?;
        Ok(((1u64 << zeros) - 1 + u64::from(rest)) as u32)
    }

    /// Exp-Golomb se(v): 1, -1, 2, -2, ... for codes 1, 2, 3, 4, ...
    pub(crate) fn se(&mut self, field: &'static str) -> Result<i64, SpsError> {
        let k = i64::from(self.ue(field)?);
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulation_prevention_bytes_are_removed() {
        assert_eq!(
            remove_emulation_prevention(&[1, 0, 0, 3, 0, 0, 0, 3, 1, 0, 0, 3]),
            vec![1, 0, 0, 0, 0, 0, 1, 0, 0]
        );
        assert_eq!(
            remove_emulation_prevention(&[0, 3, 0, 0, 3, 3]),
            vec![0, 3, 0, 0, 3]
        );
    }

    #[test]
    fn exp_golomb_codes() {
        // 1 | 010 | 011 | 00100 | 00101 -> ue 0, 1, 2; se +2, -2
        let data = [0b1010_0110, 0b0100_0010, 0b1000_0000];
        let mut r = BitReader::new(&data, 0);
        assert_eq!(r.ue("a"), Ok(0));
        assert_eq!(r.ue("b"), Ok(1));
        assert_eq!(r.ue("c"), Ok(2));
        assert_eq!(r.se("d"), Ok(2));
        assert_eq!(r.se("e"), Ok(-2));
        assert_eq!(r.position(), 17);
        assert_eq!(r.bits(8, "f"), Err(SpsError::Truncated("f")));
        let zeros = [0u8; 5];
        assert_eq!(
            BitReader::new(&zeros, 0).ue("g"),
            Err(SpsError::Invalid("g"))
        );
    }
}
