//! Integer conversions the compiler cannot prove lossless but that are, on
//! the one target the VMM builds for (x86_64, where `usize` is 64 bits),
//! or that take part of a value on purpose. Everything else converts with
//! `From`/`TryFrom`; the cast lints (`cast_possible_truncation`,
//! `cast_possible_wrap`, `cast_sign_loss`) are on for the whole crate.

const _: () = assert!(usize::BITS == u64::BITS, "the VMM assumes a 64-bit usize");

/// A guest address, offset or length as a host index: lossless here.
#[allow(clippy::cast_possible_truncation)] // usize is 64 bits (asserted above)
pub const fn u64_to_usize(n: u64) -> usize {
    n as usize
}

/// The low 32 bits of a 64-bit register or feature word.
#[allow(clippy::cast_possible_truncation)] // taking the low half is the point
pub const fn lo32(v: u64) -> u32 {
    v as u32
}

/// The high 32 bits of a 64-bit register or feature word.
pub const fn hi32(v: u64) -> u32 {
    lo32(v >> 32)
}

/// A length the guest sees in a 32-bit field (a used-ring entry, a vsock
/// header): the buffers it counts came from 32-bit descriptors, so it
/// fits; a larger one saturates rather than wraps.
pub fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_and_lengths() {
        assert_eq!(
            (lo32(0x1234_5678_9abc_def0), hi32(0x1234_5678_9abc_def0)),
            (0x9abc_def0, 0x1234_5678)
        );
        assert_eq!(u64_to_usize(u64::MAX), usize::MAX);
        assert_eq!((len_u32(7), len_u32(usize::MAX)), (7, u32::MAX));
    }
}
