//! The host's async client for one agent connection.
//!
//! ```no_run
//! # async fn demo(listener: tokio::net::UnixListener) -> Result<(), bulkhead_agent_proto::client::ClientError> {
//! use bulkhead_agent_proto::{client::AgentClient, ProcessSpec, StartRequest};
//! let client = AgentClient::accept(&listener).await?;
//! let spec = StartRequest { process: ProcessSpec { args: vec!["echo".into(), "hello".into()], ..Default::default() }, ..Default::default() };
//! let out = client.start(spec).await?.collect().await?;
//! assert_eq!(out.stdout, b"hello\n");
//! # Ok(()) }
//! ```
//!
//! Everything the agent sends is checked: an unknown reply id, data on a
//! stream it does not own or beyond its credit, a second exit report — any
//! of these closes the connection and fails every waiter with
//! [`ClientError::Protocol`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::flow::{RecvWindow, SendWindow};
use crate::frame::{Fd, Frame, FrameDecoder, StreamId, DATA_CHUNK};
use crate::messages::{
    encode, AgentError, CopyDirection, CopySpec, ExitStatus, FromAgent, Hello, ProcessSpec,
    StartRequest, ToAgent,
};
use crate::PROTOCOL_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    // These two print their cause inline and do not chain it: they end up
    // in exit reports shown with `{e}` (docs/DESIGN.md, errors).
    #[error("agent connection: {0}")]
    Io(std::io::Error),
    #[error("the agent broke the protocol: {0}")]
    Protocol(String),
    #[error("the agent connection closed: {0}")]
    Closed(String),
    #[error("the agent refused: {0}")]
    Agent(AgentError),
    #[error("process {0} has no stdin (start it with `stdin: true`)")]
    NoStdin(u32),
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl From<AgentError> for ClientError {
    fn from(e: AgentError) -> Self {
        ClientError::Agent(e)
    }
}

/// A chunk of a process's output, or the end of one of its streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Data(Fd, Vec<u8>),
    Eof(Fd),
}

/// Everything a process wrote, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
}

/// One agent connection. Cheap to share: requests from several tasks
/// interleave on the one connection.
#[derive(Debug, Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
    hello: Hello,
}

#[derive(Debug)]
struct Inner {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    state: Mutex<State>,
    next_id: AtomicU64,
    next_process: AtomicU32,
}

#[derive(Debug, Default)]
struct State {
    replies: HashMap<u64, oneshot::Sender<Result<(), AgentError>>>,
    processes: HashMap<u32, ProcessEntry>,
    closed: Option<String>,
}

#[derive(Debug)]
struct ProcessEntry {
    output: mpsc::UnboundedSender<Output>,
    recv: HashMap<Fd, RecvWindow>,
    stdin: Option<(SendWindow, Arc<Notify>)>,
    exit: Option<oneshot::Sender<ExitStatus>>,
    exited: bool,
}

impl AgentClient {
    /// Waits for the agent to dial `listener` (the VMM forwards the agent's
    /// vsock connection to `<uds>_<port>`), then reads its hello.
    pub async fn accept(listener: &UnixListener) -> Result<Self, ClientError> {
        let (stream, _) = listener.accept().await?;
        Self::handshake(stream).await
    }

    /// Connects to an agent listening on vsock `port` through the VMM's
    /// host socket (`CONNECT <port>`).
    pub async fn connect_vsock(uds: &Path, port: u32) -> Result<Self, ClientError> {
        let mut stream = UnixStream::connect(uds).await?;
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .await?;
        // Read the "OK <port>\n" line byte by byte so no frame bytes are lost.
        let mut line = Vec::new();
        let mut reader = BufReader::with_capacity(1, &mut stream);
        reader.read_until(b'\n', &mut line).await?;
        if !line.starts_with(b"OK ") {
            return Err(ClientError::Closed(format!(
                "vsock CONNECT {port}: {:?}",
                String::from_utf8_lossy(&line)
            )));
        }
        Self::handshake(stream).await
    }

    /// Takes an established connection and reads the agent's hello.
    pub async fn handshake(stream: UnixStream) -> Result<Self, ClientError> {
        let (mut read, write) = stream.into_split();
        let mut decoder = FrameDecoder::new();
        let hello = loop {
            if let Some(frame) = decoder
                .next_frame()
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                match frame {
                    Frame::Control(bytes) => match FromAgent::decode(&bytes) {
                        Ok(FromAgent::Hello(h)) if h.protocol == PROTOCOL_VERSION => break h,
                        Ok(FromAgent::Hello(h)) => {
                            return Err(ClientError::Protocol(format!(
                                "agent speaks protocol {}, not {PROTOCOL_VERSION}",
                                h.protocol
                            )))
                        }
                        Ok(other) => {
                            return Err(ClientError::Protocol(format!(
                                "first message is not a hello: {other:?}"
                            )))
                        }
                        Err(e) => return Err(ClientError::Protocol(format!("bad hello: {e}"))),
                    },
                    other => {
                        return Err(ClientError::Protocol(format!(
                            "first frame is not a hello: {other:?}"
                        )))
                    }
                }
            }
            let mut buf = [0u8; 4096];
            let n = read.read(&mut buf).await?;
            if n == 0 {
                return Err(ClientError::Closed("before the agent's hello".into()));
            }
            decoder.push(&buf[..n]);
        };
        let inner = Arc::new(Inner {
            writer: tokio::sync::Mutex::new(write),
            state: Mutex::default(),
            next_id: AtomicU64::new(1),
            next_process: AtomicU32::new(1),
        });
        tokio::spawn(read_loop(Arc::clone(&inner), read, decoder));
        Ok(Self { inner, hello })
    }

    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Sets up the container and starts its main process.
    pub async fn start(&self, spec: StartRequest) -> Result<Process, ClientError> {
        let stdin = spec.process.stdin;
        self.spawn(stdin, |id, process| ToAgent::Start {
            id,
            process,
            spec: Box::new(spec),
        })
        .await
    }

    /// Starts another process in the running container.
    pub async fn exec(&self, spec: ProcessSpec) -> Result<Process, ClientError> {
        let stdin = spec.stdin;
        self.spawn(stdin, |id, process| ToAgent::Exec { id, process, spec })
            .await
    }

    /// Copies out of (its stdout carries the stream) or into (its stdin
    /// does) the running container.
    pub async fn copy(&self, spec: CopySpec) -> Result<Process, ClientError> {
        let stdin = spec.direction == CopyDirection::In;
        self.spawn(stdin, |id, process| ToAgent::Copy { id, process, spec })
            .await
    }

    /// Asks the agent to stop everything and power off.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner.request(id, ToAgent::Shutdown { id }).await
    }

    async fn spawn(
        &self,
        stdin: bool,
        make: impl FnOnce(u64, u32) -> ToAgent,
    ) -> Result<Process, ClientError> {
        let process = self.inner.next_process.fetch_add(1, Ordering::Relaxed);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (exit_tx, exit_rx) = oneshot::channel();
        let notify = Arc::new(Notify::new());
        {
            let mut st = self.inner.lock();
            let recv = [
                (Fd::Stdout, RecvWindow::default()),
                (Fd::Stderr, RecvWindow::default()),
            ]
            .into_iter()
            .collect();
            let stdin = stdin.then(|| (SendWindow::default(), Arc::clone(&notify)));
            st.processes.insert(
                process,
                ProcessEntry {
                    output: out_tx,
                    recv,
                    stdin,
                    exit: Some(exit_tx),
                    exited: false,
                },
            );
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.inner.request(id, make(id, process)).await {
            self.inner.lock().processes.remove(&process);
            return Err(e);
        }
        Ok(Process {
            id: process,
            inner: Arc::clone(&self.inner),
            output: out_rx,
            exit: Some(exit_rx),
            stdin_notify: notify,
            open_streams: 2,
            status: None,
        })
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn send(&self, frame: Frame) -> Result<(), ClientError> {
        let bytes = frame
            .to_bytes()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.writer.lock().await.write_all(&bytes).await?;
        Ok(())
    }

    async fn request(&self, id: u64, msg: ToAgent) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.lock();
            if let Some(why) = &st.closed {
                return Err(ClientError::Closed(why.clone()));
            }
            st.replies.insert(id, tx);
        }
        self.send(Frame::Control(encode(&msg))).await?;
        match rx.await {
            Ok(result) => Ok(result?),
            Err(_) => Err(ClientError::Closed(
                self.lock().closed.clone().unwrap_or_default(),
            )),
        }
    }

    /// Ends the connection: every waiter fails, every output stream ends.
    fn close(&self, why: String) {
        let mut st = self.lock();
        st.closed.get_or_insert(why);
        st.replies.clear();
        for p in st.processes.values() {
            if let Some((_, notify)) = &p.stdin {
                notify.notify_one(); // a writer waiting for credit sees `closed`
            }
        }
        st.processes.clear();
    }
}

async fn read_loop(inner: Arc<Inner>, mut read: OwnedReadHalf, mut decoder: FrameDecoder) {
    let mut buf = vec![0u8; 64 * 1024];
    let why = loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => {
                if let Err(e) = handle_frame(&inner, frame) {
                    break format!("protocol error: {e}");
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => break format!("protocol error: {e}"),
        }
        match read.read(&mut buf).await {
            Ok(0) => {
                break decoder
                    .finish()
                    .map(|_| "the agent closed the connection".to_string())
                    .unwrap_or_else(|e| format!("protocol error: {e}"))
            }
            Ok(n) => decoder.push(&buf[..n]),
            Err(e) => break format!("read: {e}"),
        }
    };
    inner.close(why);
    // Closing our write side tells the agent we are gone too.
    let _ = inner.writer.lock().await.shutdown().await;
}

fn handle_frame(inner: &Inner, frame: Frame) -> Result<(), String> {
    let mut st = inner.lock();
    match frame {
        Frame::Control(bytes) => {
            match FromAgent::decode(&bytes).map_err(|e| format!("bad message: {e}"))? {
                FromAgent::Hello(_) => Err("a second hello".into()),
                FromAgent::Reply { id, result } => {
                    let tx = st
                        .replies
                        .remove(&id)
                        .ok_or_else(|| format!("reply to unknown request {id}"))?;
                    let _ = tx.send(result);
                    Ok(())
                }
                FromAgent::Exited { process, status } => {
                    let p = st
                        .processes
                        .get_mut(&process)
                        .ok_or_else(|| format!("exit of unknown process {process}"))?;
                    if p.exited {
                        return Err(format!("second exit report for process {process}"));
                    }
                    p.exited = true;
                    if let Some(tx) = p.exit.take() {
                        let _ = tx.send(status);
                    }
                    Ok(())
                }
                FromAgent::Fatal { message } => Err(format!("agent gave up: {message}")),
            }
        }
        Frame::Data { stream, bytes } => {
            let p = st
                .processes
                .get_mut(&stream.process())
                .ok_or_else(|| format!("data for unknown process {}", stream.process()))?;
            let w = p.recv.get_mut(&stream.fd()).ok_or_else(|| {
                format!(
                    "data on closed or input stream {:?} of process {}",
                    stream.fd(),
                    stream.process()
                )
            })?;
            w.on_data(bytes.len()).map_err(|e| e.to_string())?;
            let out = if bytes.is_empty() {
                p.recv.remove(&stream.fd());
                Output::Eof(stream.fd())
            } else {
                Output::Data(stream.fd(), bytes)
            };
            // The receiver may be gone (the caller dropped the Process): fine.
            let _ = p.output.send(out);
            Ok(())
        }
        Frame::Credit { stream, bytes } => {
            let p = st
                .processes
                .get_mut(&stream.process())
                .ok_or_else(|| format!("credit for unknown process {}", stream.process()))?;
            match (&mut p.stdin, stream.fd()) {
                (Some((w, notify)), Fd::Stdin) => {
                    w.grant(bytes).map_err(|e| e.to_string())?;
                    notify.notify_one();
                    Ok(())
                }
                _ => Err(format!(
                    "credit for a stream the host does not send: {stream:?}"
                )),
            }
        }
    }
}

/// A process in the container.
#[derive(Debug)]
pub struct Process {
    id: u32,
    inner: Arc<Inner>,
    output: mpsc::UnboundedReceiver<Output>,
    exit: Option<oneshot::Receiver<ExitStatus>>,
    stdin_notify: Arc<Notify>,
    open_streams: u8,
    status: Option<ExitStatus>,
}

impl Process {
    /// The host-chosen id of this process.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// A handle on the process's stdin that can move to another task
    /// (write while this one reads output).
    pub fn stdin(&self) -> Stdin {
        Stdin {
            id: self.id,
            inner: Arc::clone(&self.inner),
            notify: Arc::clone(&self.stdin_notify),
        }
    }

    /// Writes to the process's stdin, waiting for credit as needed.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), ClientError> {
        self.stdin().write(data).await
    }

    /// Closes the process's stdin (it reads EOF).
    pub async fn close_stdin(&self) -> Result<(), ClientError> {
        self.stdin().close().await
    }

    /// A handle for signals and resizes that can move to another task
    /// (while this one reads output or waits for the exit).
    pub fn control(&self) -> Control {
        Control {
            id: self.id,
            inner: Arc::clone(&self.inner),
        }
    }

    pub async fn signal(&self, signal: i32) -> Result<(), ClientError> {
        self.control().signal(signal).await
    }

    /// Resizes the terminal of a TTY-mode process.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.control().resize(rows, cols).await
    }

    /// The next output chunk or end of a stream; `None` once both output
    /// streams have ended (or the connection is gone).
    pub async fn next_output(&mut self) -> Option<Output> {
        if self.open_streams == 0 {
            return None;
        }
        let out = self.output.recv().await?;
        match &out {
            Output::Data(fd, bytes) => {
                let grant = {
                    let mut st = self.inner.lock();
                    st.processes
                        .get_mut(&self.id)
                        .and_then(|p| p.recv.get_mut(fd))
                        .and_then(|w| w.on_consumed(bytes.len()))
                };
                if let (Some(bytes), Some(stream)) = (grant, StreamId::new(self.id, *fd)) {
                    // A failed send shows up as a closed connection on the next call.
                    let _ = self.inner.send(Frame::Credit { stream, bytes }).await;
                }
            }
            Output::Eof(_) => self.open_streams -= 1,
        }
        Some(out)
    }

    /// Waits for the process to end and acknowledges the report (the agent
    /// powers off only after the main process's exit is acknowledged).
    pub async fn wait(&mut self) -> Result<ExitStatus, ClientError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let rx = self
            .exit
            .take()
            .ok_or_else(|| ClientError::Closed("exit already awaited".into()))?;
        let status = rx.await.map_err(|_| {
            ClientError::Closed(
                self.inner
                    .lock()
                    .closed
                    .clone()
                    .unwrap_or_else(|| "no exit report".into()),
            )
        })?;
        self.status = Some(status);
        self.inner.lock().processes.remove(&self.id);
        // The agent may already be gone (stopping everything does not wait
        // for acks): the status is known either way.
        let _ = self
            .inner
            .send(Frame::Control(encode(&ToAgent::AckExit {
                process: self.id,
            })))
            .await;
        Ok(status)
    }

    /// Reads all output (stdout and stderr apart) and waits for the exit.
    pub async fn collect(mut self) -> Result<Collected, ClientError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(out) = self.next_output().await {
            match out {
                Output::Data(Fd::Stderr, b) => stderr.extend_from_slice(&b),
                Output::Data(_, b) => stdout.extend_from_slice(&b),
                Output::Eof(_) => {}
            }
        }
        let status = self.wait().await?;
        Ok(Collected {
            stdout,
            stderr,
            status,
        })
    }
}

/// Signals and terminal size of a [`Process`], usable from another task.
#[derive(Debug, Clone)]
pub struct Control {
    id: u32,
    inner: Arc<Inner>,
}

impl Control {
    pub async fn signal(&self, signal: i32) -> Result<(), ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner
            .request(
                id,
                ToAgent::Signal {
                    id,
                    process: self.id,
                    signal,
                },
            )
            .await
    }

    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner
            .request(
                id,
                ToAgent::Resize {
                    id,
                    process: self.id,
                    rows,
                    cols,
                },
            )
            .await
    }
}

/// The stdin of a [`Process`], usable from another task.
#[derive(Debug, Clone)]
pub struct Stdin {
    id: u32,
    inner: Arc<Inner>,
    notify: Arc<Notify>,
}

impl Stdin {
    /// Writes `data`, waiting for the agent's credit as needed.
    pub async fn write(&self, mut data: &[u8]) -> Result<(), ClientError> {
        let stream = StreamId::new(self.id, Fd::Stdin).ok_or(ClientError::NoStdin(self.id))?;
        while !data.is_empty() {
            let n = loop {
                let notified = self.notify.notified();
                {
                    let mut st = self.inner.lock();
                    if let Some(why) = &st.closed {
                        return Err(ClientError::Closed(why.clone()));
                    }
                    let entry = st
                        .processes
                        .get_mut(&self.id)
                        .ok_or_else(|| ClientError::Closed("the process is gone".into()))?;
                    let (w, _) = entry.stdin.as_mut().ok_or(ClientError::NoStdin(self.id))?;
                    let n = w.available().min(DATA_CHUNK).min(data.len());
                    if n > 0 {
                        w.consume(n);
                        break n;
                    }
                }
                notified.await;
            };
            self.inner
                .send(Frame::Data {
                    stream,
                    bytes: data[..n].to_vec(),
                })
                .await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Closes stdin: the process reads EOF.
    pub async fn close(&self) -> Result<(), ClientError> {
        let stream = StreamId::new(self.id, Fd::Stdin).ok_or(ClientError::NoStdin(self.id))?;
        self.inner
            .send(Frame::Data {
                stream,
                bytes: Vec::new(),
            })
            .await
    }
}

#[cfg(test)]
mod tests;
