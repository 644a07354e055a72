//! Credit-based flow control per stream: a sender may have at most the
//! receiver's window of unacknowledged bytes in flight, so a fast producer
//! cannot make either side buffer without bound.

/// Bytes a stream's sender may send before hearing any credit.
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// The sending side of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendWindow {
    available: u64,
}

impl Default for SendWindow {
    fn default() -> Self {
        Self {
            available: u64::from(INITIAL_WINDOW),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("peer sent {sent} bytes on a stream with only {allowed} bytes of credit")]
    Overrun { sent: usize, allowed: u64 },
    #[error("peer granted credit beyond any window it could owe ({0} bytes)")]
    CreditOverflow(u64),
}

impl SendWindow {
    /// How many bytes may be sent now.
    pub fn available(&self) -> usize {
        usize::try_from(self.available).unwrap_or(usize::MAX)
    }

    /// Records `n` bytes sent (callers send at most [`Self::available`]).
    pub fn consume(&mut self, n: usize) {
        self.available = self.available.saturating_sub(n as u64);
    }

    /// The receiver granted `n` more bytes. A receiver can only return
    /// what it was sent, so a window above twice the initial one is a
    /// hostile or broken peer.
    pub fn grant(&mut self, n: u32) -> Result<(), FlowError> {
        let next = self.available + u64::from(n);
        if next > 2 * u64::from(INITIAL_WINDOW) {
            return Err(FlowError::CreditOverflow(next));
        }
        self.available = next;
        Ok(())
    }
}

/// The receiving side of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvWindow {
    /// Bytes the sender may still send.
    remaining: u64,
    /// Bytes delivered to the consumer but not yet granted back.
    consumed: u64,
}

impl Default for RecvWindow {
    fn default() -> Self {
        Self {
            remaining: u64::from(INITIAL_WINDOW),
            consumed: 0,
        }
    }
}

impl RecvWindow {
    /// `n` bytes arrived from the sender.
    pub fn on_data(&mut self, n: usize) -> Result<(), FlowError> {
        if n as u64 > self.remaining {
            return Err(FlowError::Overrun {
                sent: n,
                allowed: self.remaining,
            });
        }
        self.remaining -= n as u64;
        Ok(())
    }

    /// The consumer took `n` bytes; returns the credit to send back once
    /// enough has accumulated (a quarter window), batching small reads.
    pub fn on_consumed(&mut self, n: usize) -> Option<u32> {
        self.consumed += n as u64;
        if self.consumed >= u64::from(INITIAL_WINDOW / 4) {
            let grant = u32::try_from(self.consumed).unwrap_or(u32::MAX);
            self.consumed -= u64::from(grant);
            self.remaining += u64::from(grant);
            return Some(grant);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_that_ignores_its_window_is_caught() {
        let mut r = RecvWindow::default();
        r.on_data(INITIAL_WINDOW as usize).unwrap();
        assert_eq!(
            r.on_data(1),
            Err(FlowError::Overrun {
                sent: 1,
                allowed: 0
            })
        );
    }

    #[test]
    fn credit_comes_back_in_batches_and_reopens_the_window() {
        let mut s = SendWindow::default();
        let mut r = RecvWindow::default();
        let mut sent = 0usize;
        let mut grants = 0;
        // Push 4 windows' worth through, the consumer reading 1000 bytes at a time.
        while sent < 4 * INITIAL_WINDOW as usize {
            let n = s.available().min(1000);
            assert!(n > 0, "stalled after {sent} bytes");
            s.consume(n);
            r.on_data(n).unwrap();
            sent += n;
            if let Some(g) = r.on_consumed(n) {
                grants += 1;
                s.grant(g).unwrap();
            }
        }
        assert!((12..=20).contains(&grants), "{grants} grants");
    }

    #[test]
    fn a_peer_granting_credit_it_does_not_owe_is_an_error() {
        let mut s = SendWindow::default();
        s.grant(INITIAL_WINDOW).unwrap();
        assert!(matches!(s.grant(1), Err(FlowError::CreditOverflow(_))));
    }
}
