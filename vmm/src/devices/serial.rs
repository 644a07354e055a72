//! COM1: a 16550A (vm-superio) whose output goes to stdout, a file or
//! nowhere, through a fixed-size buffer: a guest flooding the port costs the
//! VMM no memory beyond the buffer, and writes are batched per line.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::ioapic::IrqLine;
use super::BusDevice;

/// Bytes held before a flush.
pub const OUTPUT_BUFFER: usize = 4096;

/// Buffered serial output with a hard cap.
pub struct SerialOutput {
    sink: Option<Box<dyn Write + Send>>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for SerialOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialOutput")
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl SerialOutput {
    /// `None`: output is discarded.
    pub fn new(sink: Option<Box<dyn Write + Send>>) -> Self {
        Self {
            sink,
            buf: Vec::new(),
        }
    }

    /// Writes out what is buffered. A sink that fails (closed pipe, full
    /// disk) is dropped: the guest keeps running without a console.
    pub fn flush_out(&mut self) {
        if let Some(sink) = &mut self.sink {
            if sink
                .write_all(&self.buf)
                .and_then(|_| sink.flush())
                .is_err()
            {
                self.sink = None;
            }
        }
        self.buf.clear();
    }
}

impl Write for SerialOutput {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.sink.is_none() {
            return Ok(data.len());
        }
        for b in data {
            self.buf.push(*b);
            if *b == b'\n' || self.buf.len() >= OUTPUT_BUFFER {
                self.flush_out();
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // vm-superio flushes after every byte; we flush on newlines, when
        // full, and at exit instead.
        Ok(())
    }
}

pub struct SerialDevice {
    uart: Serial<IrqLine, NoEvents, SerialOutput>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerialDevice")
    }
}

impl SerialDevice {
    pub fn new(irq: IrqLine, out: SerialOutput) -> Self {
        Self {
            uart: Serial::new(irq, out),
        }
    }

    /// Flushes buffered output (at VM exit).
    pub fn flush_output(&mut self) {
        self.uart.writer_mut().flush_out();
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data.len(), u8::try_from(offset)) {
            (1, Ok(off)) => data[0] = self.uart.read(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (1, Ok(off)) = (data.len(), u8::try_from(offset)) {
            // The only error is the interrupt trigger's, which cannot fail.
            let _ = self.uart.write(off, data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>, Arc<Mutex<usize>>);

    impl Write for Shared {
        fn write(&mut self, d: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(d);
            *self.1.lock().unwrap() += 1;
            Ok(d.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn batches_lines_and_caps_the_buffer() {
        let s = Shared::default();
        let mut out = SerialOutput::new(Some(Box::new(s.clone())));
        out.write_all(b"abc").unwrap();
        assert!(s.0.lock().unwrap().is_empty(), "no newline yet");
        out.write_all(b"\n").unwrap();
        assert_eq!(&*s.0.lock().unwrap(), b"abc\n");
        // A flood without newlines never holds more than the cap.
        out.write_all(&vec![b'x'; OUTPUT_BUFFER * 3 + 5]).unwrap();
        assert!(out.buf.len() < OUTPUT_BUFFER);
        assert_eq!(s.0.lock().unwrap().len(), 4 + OUTPUT_BUFFER * 3);
        out.flush_out();
        assert_eq!(s.0.lock().unwrap().len(), 4 + OUTPUT_BUFFER * 3 + 5);
    }

    #[test]
    fn a_failing_sink_is_dropped() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut out = SerialOutput::new(Some(Box::new(Broken)));
        out.write_all(b"line\n").unwrap();
        assert!(out.sink.is_none());
        out.write_all(&vec![b'y'; 10 * OUTPUT_BUFFER]).unwrap();
        assert!(out.buf.is_empty());
    }
}
