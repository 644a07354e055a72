//! The virtio-mmio register interface (virtio 1.2, section 4.2.2).
//!
//! Every register write is guest input. Rules enforced here: features are
//! fixed once FEATURES_OK is set, a queue's size and addresses are fixed once
//! it is ready, nothing about queues changes after DRIVER_OK, and a driver
//! that does not accept VIRTIO_F_VERSION_1 or sets up an invalid queue gets
//! DEVICE_NEEDS_RESET instead of a device. Writing 0 to status resets.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{
    Activation, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::devices::BusDevice;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4b48_4c42; // "BLHK"

pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    status: u32,
    activated: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish()
    }
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Self {
        let queues = Self::fresh_queues(device.as_ref());
        Self {
            device,
            mem,
            interrupt,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            status: 0,
            activated: false,
        }
    }

    fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
        // A max size of 0 or above 32768 is a bug in our device, not guest input;
        // fall back to a small valid size rather than panic.
        device
            .queue_max_sizes()
            .iter()
            .map(|&max| {
                Queue::new(max)
                    .unwrap_or_else(|_| Queue::new(256).expect("256 is a valid queue size"))
            })
            .collect()
    }

    pub fn device(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    pub fn is_activated(&self) -> bool {
        self.activated
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queue configuration is frozen once the device runs.
        if self.activated || self.status & status::DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A queue's size and addresses can change only while it is not ready.
    fn configurable_queue(&mut self) -> Option<&mut Queue> {
        self.selected_queue().filter(|q| !q.ready())
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.queues = Self::fresh_queues(self.device.as_ref());
        self.interrupt.ack(u32::MAX);
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // Status bits only accumulate; clearing one needs a reset.
        if value & self.status != self.status {
            return;
        }
        let new = value & !self.status;
        let mut value = value;
        if new & status::FEATURES_OK != 0 {
            let offered = self.device.features();
            // A legacy driver (no VERSION_1) or one acking features we did
            // not offer is not accepted: FEATURES_OK does not stick.
            if self.driver_features & VIRTIO_F_VERSION_1 == 0
                || self.driver_features & !offered != 0
            {
                value &= !status::FEATURES_OK;
            }
        }
        self.status = value;
        if new & status::DRIVER_OK != 0 && !self.activated {
            if self.status & status::FEATURES_OK == 0 {
                self.fail();
                return;
            }
            self.activate();
        }
    }

    fn activate(&mut self) {
        let mem = self.mem.clone();
        if !self.queues.iter().all(|q| q.ready() && q.is_valid(&mem)) {
            self.fail();
            return;
        }
        let mut queues =
            std::mem::replace(&mut self.queues, Self::fresh_queues(self.device.as_ref()));
        // Whatever the device, the rings follow the acked EVENT_IDX.
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        let activation = Activation {
            mem,
            queues,
            interrupt: self.interrupt.clone(),
            features: self.driver_features,
        };
        match self.device.activate(activation) {
            Ok(()) => self.activated = true,
            Err(_) => self.fail(),
        }
    }

    /// The device cannot go on: tell the driver to reset it.
    fn fail(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
        self.interrupt.signal_config();
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => crate::convert::lo32(self.device.features()),
                1 => crate::convert::hi32(self.device.features()),
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            // Only between DRIVER and FEATURES_OK.
            reg::DRIVER_FEATURES
                if self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0 =>
            {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => {
                if let Some(q) = self.configurable_queue() {
                    // Size must be a power of two within max; the queue
                    // refuses others and keeps its size.
                    let _ = q.try_set_size(u16::try_from(value).unwrap_or(u16::MAX));
                }
            }
            reg::QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            reg::QUEUE_DESC_LOW => {
                self.set_queue_address(|q, v| q.set_desc_table_address(Some(v), None), value)
            }
            reg::QUEUE_DESC_HIGH => {
                self.set_queue_address(|q, v| q.set_desc_table_address(None, Some(v)), value)
            }
            reg::QUEUE_AVAIL_LOW => {
                self.set_queue_address(|q, v| q.set_avail_ring_address(Some(v), None), value)
            }
            reg::QUEUE_AVAIL_HIGH => {
                self.set_queue_address(|q, v| q.set_avail_ring_address(None, Some(v)), value)
            }
            reg::QUEUE_USED_LOW => {
                self.set_queue_address(|q, v| q.set_used_ring_address(Some(v), None), value)
            }
            reg::QUEUE_USED_HIGH => {
                self.set_queue_address(|q, v| q.set_used_ring_address(None, Some(v)), value)
            }
            reg::QUEUE_NOTIFY => {
                let index = value as usize;
                if self.activated && index < self.device.queue_max_sizes().len() {
                    self.device.queue_notify(index);
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.set_status(value),
            _ => {}
        }
    }

    fn set_queue_address(&mut self, set: fn(&mut Queue, u32), value: u32) {
        if let Some(q) = self.configurable_queue() {
            set(q, value);
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        // Registers are 32-bit, naturally aligned; anything else reads 0.
        let value = if data.len() == 4 && offset.is_multiple_of(4) {
            self.read_register(offset)
        } else {
            0
        };
        let bytes = value.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            if self.status & status::DRIVER != 0 {
                self.device.write_config(offset - reg::CONFIG, data);
            }
            return;
        }
        if let (Ok(bytes), true) = (<[u8; 4]>::try_from(data), offset.is_multiple_of(4)) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::devices::ioapic::{Ioapic, IrqLine, Msi, MsiSink};
    use crate::devices::virtio::ActivateError;
    use std::sync::Mutex;
    use vm_memory::GuestAddress;

    #[derive(Debug, Default)]
    pub struct Counter(pub Mutex<usize>);
    impl MsiSink for Counter {
        fn send(&self, _: Msi) -> std::io::Result<()> {
            *self.0.lock().unwrap() += 1;
            Ok(())
        }
    }

    /// An interrupt wired to a counting IOAPIC pin (pin 5, unmasked).
    pub fn interrupt() -> (Arc<VirtioInterrupt>, Arc<Counter>) {
        let counter = Arc::new(Counter::default());
        let mut io = Ioapic::new(0, counter.clone());
        io.write(0x00, &[0x10 + 10]);
        io.write(0x10, &0x30u32.to_le_bytes());
        (
            Arc::new(VirtioInterrupt::new(IrqLine::new(
                Arc::new(Mutex::new(io)),
                5,
            ))),
            counter,
        )
    }

    #[derive(Default)]
    struct Probe {
        activations: Arc<Mutex<Vec<u64>>>,
        notifies: Arc<Mutex<Vec<usize>>>,
        resets: Arc<Mutex<usize>>,
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[0xaa, 0xbb], offset, data)
        }
        fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
            self.activations.lock().unwrap().push(a.features);
            Ok(())
        }
        fn queue_notify(&mut self, index: usize) {
            self.notifies.lock().unwrap().push(index);
        }
        fn reset(&mut self) {
            *self.resets.lock().unwrap() += 1;
        }
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    /// The transport, and what its device saw: activations, notifies, resets.
    type Seen = (
        Arc<Mutex<Vec<u64>>>,
        Arc<Mutex<Vec<usize>>>,
        Arc<Mutex<usize>>,
    );

    fn transport() -> (MmioTransport, Seen) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let p = Probe::default();
        let (a, n, rs) = (p.activations.clone(), p.notifies.clone(), p.resets.clone());
        (
            MmioTransport::new(Box::new(p), mem, interrupt().0),
            (a, n, rs),
        )
    }

    /// Sets up both queues at valid addresses and drives status to DRIVER_OK.
    pub fn bring_up(t: &mut MmioTransport, features_hi: u32, features_lo: u32) {
        w(t, reg::STATUS, status::ACKNOWLEDGE);
        w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, features_hi);
        w(t, reg::DRIVER_FEATURES_SEL, 0);
        w(t, reg::DRIVER_FEATURES, features_lo);
        w(
            t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        for q in 0..2u32 {
            w(t, reg::QUEUE_SEL, q);
            w(t, reg::QUEUE_NUM, 16);
            let base = 0x1_0000 * (q + 1);
            w(t, reg::QUEUE_DESC_LOW, base);
            w(t, reg::QUEUE_AVAIL_LOW, base + 0x1000);
            w(t, reg::QUEUE_USED_LOW, base + 0x2000);
            w(t, reg::QUEUE_READY, 1);
        }
        w(
            t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
    }

    #[test]
    fn identifies_itself_and_its_config() {
        let (mut t, _) = transport();
        assert_eq!(r(&mut t, reg::MAGIC), MAGIC);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), 42);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1);
        w(&mut t, reg::QUEUE_SEL, 7);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0, "no such queue");
        let mut d = [0u8; 4];
        t.read(reg::CONFIG, &mut d);
        assert_eq!(d, [0xaa, 0xbb, 0, 0]);
    }

    #[test]
    fn a_proper_bring_up_activates_with_the_acked_features() {
        let (mut t, (act, notes, _)) = transport();
        bring_up(&mut t, 1, 1);
        assert!(t.is_activated());
        assert_eq!(*act.lock().unwrap(), vec![VIRTIO_F_VERSION_1 | 1]);
        w(&mut t, reg::QUEUE_NOTIFY, 1);
        w(&mut t, reg::QUEUE_NOTIFY, 99);
        assert_eq!(*notes.lock().unwrap(), vec![1]);
    }

    #[test]
    fn legacy_or_unoffered_features_do_not_get_features_ok() {
        for (hi, lo) in [(0u32, 1u32), (1, 1 << 7)] {
            let (mut t, (act, ..)) = transport();
            bring_up(&mut t, hi, lo);
            assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
            assert!(!t.is_activated());
            assert!(act.lock().unwrap().is_empty());
            assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        }
    }

    #[test]
    fn queue_and_feature_changes_after_driver_ok_are_ignored() {
        let (mut t, _) = transport();
        bring_up(&mut t, 1, 1);
        w(&mut t, reg::QUEUE_SEL, 0);
        w(&mut t, reg::QUEUE_NUM, 2);
        w(&mut t, reg::QUEUE_DESC_LOW, 0xdead_0000);
        w(&mut t, reg::QUEUE_READY, 0);
        w(&mut t, reg::DRIVER_FEATURES, 0);
        assert_eq!(
            r(&mut t, reg::QUEUE_READY),
            0,
            "queues were handed to the device"
        );
        assert!(t.is_activated());
        // Clearing a status bit without a reset is ignored.
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        assert_ne!(r(&mut t, reg::STATUS) & status::DRIVER_OK, 0);
    }

    #[test]
    fn invalid_queues_fail_activation_and_reset_recovers() {
        let (mut t, (act, _, resets)) = transport();
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        w(&mut t, reg::DRIVER_FEATURES, 1);
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        // Queue 0 ready at an address outside guest memory, queue 1 never ready.
        w(&mut t, reg::QUEUE_SEL, 0);
        w(&mut t, reg::QUEUE_DESC_LOW, 0xffff_0000);
        w(&mut t, reg::QUEUE_READY, 1);
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        assert!(!t.is_activated());
        assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert!(act.lock().unwrap().is_empty());
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        bring_up(&mut t, 1, 0);
        assert!(t.is_activated());
        w(&mut t, reg::STATUS, 0);
        assert_eq!(*resets.lock().unwrap(), 1);
    }

    #[test]
    fn odd_sizes_and_offsets_do_nothing() {
        let (mut t, _) = transport();
        t.write(reg::STATUS, &[1]);
        t.write(reg::STATUS + 1, &1u32.to_le_bytes());
        t.write(reg::STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        let mut d = [0u8; 2];
        t.read(reg::MAGIC, &mut d);
        assert_eq!(d, [0, 0]);
        t.read(u64::MAX, &mut d);
        t.write(u64::MAX - 1, &[1, 2]);
    }

    #[test]
    fn bad_queue_sizes_are_refused() {
        let (mut t, _) = transport();
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, reg::QUEUE_SEL, 0);
        for bad in [0u32, 3, 32, 1 << 16, u32::MAX] {
            w(&mut t, reg::QUEUE_NUM, bad);
        }
        assert_eq!(t.queues[0].size(), 16, "keeps the max size");
    }
}
