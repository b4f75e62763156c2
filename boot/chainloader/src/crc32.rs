//! CRC-32 as used by Ethernet, zlib and gzip (RFC 1952 section 8; "CRC-32/ISO-HDLC" in the
//! usual catalogues): reflected polynomial 0xEDB88320, initial value and final XOR 0xFFFFFFFF.
//! Check value: CRC-32 of the ASCII bytes `123456789` is 0xCBF43926.
//!
//! Table driven (one 1 KiB table built at compile time), one byte at a time: the loader feeds
//! bytes as they arrive from the UART, and the host side checks the same function.

/// The reflected generator polynomial (x^32 + x^26 + ... + 1, bit-reversed).
const POLY: u32 = 0xedb8_8320;

const fn make_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { POLY ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static TABLE: [u32; 256] = make_table();

/// A running CRC-32.
#[derive(Clone, Copy, Debug)]
pub struct Crc32 {
    state: u32,
}

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32 {
    /// A CRC over nothing yet.
    pub const fn new() -> Self {
        Self { state: 0xffff_ffff }
    }

    /// Adds one byte.
    #[inline]
    pub fn push(&mut self, byte: u8) {
        self.state = TABLE[((self.state ^ u32::from(byte)) & 0xff) as usize] ^ (self.state >> 8);
    }

    /// Adds a slice.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.push(b);
        }
    }

    /// The CRC of everything pushed so far.
    pub const fn value(&self) -> u32 {
        self.state ^ 0xffff_ffff
    }
}

/// The CRC-32 of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(bytes);
    c.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn known_vectors() {
        // RFC 1952's gzip trailer of "a" is 0xe8b7be43; zlib's crc32 of the pangram below is
        // 0x414fa339.
        assert_eq!(crc32(b"a"), 0xe8b7_be43);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414f_a339
        );
    }

    #[test]
    fn incremental_equals_one_shot_and_detects_single_bit_flips() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let mut c = Crc32::new();
        for chunk in data.chunks(37) {
            c.update(chunk);
        }
        let whole = crc32(&data);
        assert_eq!(c.value(), whole);
        for bit in [0usize, 1, 8 * 1000 + 3, 8 * 4095 + 7] {
            let mut flipped = data.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_ne!(crc32(&flipped), whole, "bit {bit}");
        }
    }
}
