//! Fuzz entry points (agent/fuzz) and their corpus replay (tests): the
//! frame decoder and message decoding on each side of the connection.

use crate::flow::{RecvWindow, SendWindow};
use crate::frame::{Frame, FrameDecoder};
use crate::messages::{FromAgent, ToAgent};

/// Feeds `data` to a decoder in chunks whose sizes come from the input,
/// decoding every frame as `decode` would on the receiving side.
fn frames(data: &[u8], mut on_control: impl FnMut(&[u8]), mut on_window: impl FnMut(&Frame)) {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut d = FrameDecoder::new();
    for piece in rest.chunks(chunk) {
        d.push(piece);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    if let Frame::Control(bytes) = &f {
                        on_control(bytes);
                    }
                    on_window(&f);
                    // Whatever decodes must encode back to the same frame.
                    let again = f.to_bytes().map(|b| {
                        let mut d2 = FrameDecoder::new();
                        d2.push(&b);
                        d2.next_frame()
                    });
                    assert!(
                        matches!(again, Ok(Ok(Some(ref g))) if *g == f),
                        "round trip of {f:?}"
                    );
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = d.finish();
}

/// What the agent receives from the host.
pub fn to_agent(data: &[u8]) {
    let mut recv = RecvWindow::default();
    frames(
        data,
        |b| match ToAgent::decode(b) {
            Ok(ToAgent::Start { spec, .. }) => {
                let _ = spec.process.validate();
            }
            Ok(ToAgent::Exec { spec, .. }) => {
                let _ = spec.validate();
            }
            Ok(ToAgent::Copy { spec, .. }) => {
                let _ = spec.validate();
            }
            _ => {}
        },
        |f| {
            if let Frame::Data { bytes, .. } = f {
                if recv.on_data(bytes.len()).is_ok() {
                    let _ = recv.on_consumed(bytes.len());
                }
            }
        },
    );
}

/// What the host receives from the agent.
pub fn from_agent(data: &[u8]) {
    let mut send = SendWindow::default();
    frames(
        data,
        |b| {
            let _ = FromAgent::decode(b);
            // A copy stream's first line comes from the guest too.
            let _ = crate::messages::CopyHeader::read_from(&mut &b[..]);
        },
        |f| {
            if let Frame::Credit { bytes, .. } = f {
                if send.grant(*bytes).is_ok() {
                    send.consume(send.available().min(4096));
                }
            }
        },
    );
}
