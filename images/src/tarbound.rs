//! A bound on what the tar reader holds in memory for one entry's metadata.
//!
//! The `tar` crate reads a GNU long name, long link or PAX extension entry
//! whole into memory before handing out the entry it describes, however
//! large the archive says it is: a compressed layer could declare a
//! gigabyte of PAX zeros. Bytes read while the iterator advances (headers,
//! those metadata entries, padding) are counted against
//! [`MAX_METADATA`]; entry data the caller reads is not.

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;

/// Most bytes of headers and metadata entries in front of one entry.
pub const MAX_METADATA: u64 = 4 << 20;

#[derive(Debug, Default)]
pub struct Budget {
    used: Cell<u64>,
    armed: Cell<bool>,
}

impl Budget {
    /// Counts from now (call before advancing the entry iterator).
    pub fn arm(&self) {
        self.used.set(0);
        self.armed.set(true);
    }

    /// Stops counting (the caller reads entry data now).
    pub fn disarm(&self) {
        self.armed.set(false);
    }
}

/// The archive's input, counted while the budget is armed.
#[derive(Debug)]
pub struct BoundedReader<R> {
    inner: R,
    budget: Rc<Budget>,
}

impl<R: Read> BoundedReader<R> {
    pub fn new(inner: R) -> (Self, Rc<Budget>) {
        let budget = Rc::new(Budget::default());
        (
            Self {
                inner,
                budget: Rc::clone(&budget),
            },
            budget,
        )
    }
}

impl<R: Read> Read for BoundedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.budget.armed.get() {
            let used = self.budget.used.get() + n as u64;
            self.budget.used.set(used);
            if used > MAX_METADATA {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("over {MAX_METADATA} bytes of tar headers and metadata in front of one entry")));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_armed_reads_count() {
        let data = vec![0u8; 3 * usize::try_from(MAX_METADATA).unwrap()];
        let (mut r, budget) = BoundedReader::new(&data[..]);
        let mut sink = Vec::new();
        r.by_ref()
            .take(MAX_METADATA + 10)
            .read_to_end(&mut sink)
            .unwrap_or_else(|e| panic!("{e}"));
        budget.arm();
        let mut small = vec![0u8; 1024];
        r.read_exact(&mut small).unwrap_or_else(|e| panic!("{e}"));
        let err = r
            .by_ref()
            .take(MAX_METADATA)
            .read_to_end(&mut sink)
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}
