#![allow(clippy::unwrap_used)] // tests fail loudly by design

use super::*;
use crate::messages::Hello;

fn control(msg: &FromAgent) -> Vec<u8> {
    Frame::Control(encode(msg)).to_bytes().unwrap()
}

fn hello() -> Vec<u8> {
    control(&FromAgent::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: "fake".into(),
        boot_to_connected_us: None,
    }))
}

/// A fake agent: says hello, answers the first request (a start) with
/// success, then sends `then` and keeps the connection open.
async fn fake_agent(mut stream: UnixStream, then: Vec<u8>) {
    stream.write_all(&hello()).await.unwrap();
    let mut d = FrameDecoder::new();
    let mut buf = [0u8; 4096];
    let id = loop {
        if let Some(Frame::Control(b)) = d.next_frame().unwrap() {
            match ToAgent::decode(&b).unwrap() {
                ToAgent::Start { id, .. } => break id,
                other => panic!("{other:?}"),
            }
        }
        let n = stream.read(&mut buf).await.unwrap();
        d.push(&buf[..n]);
    };
    stream
        .write_all(&control(&FromAgent::Reply { id, result: Ok(()) }))
        .await
        .unwrap();
    stream.write_all(&then).await.unwrap();
    // Hold the connection until the client gives up on it.
    let _ = stream.read(&mut buf).await;
}

async fn run_against(then: Vec<u8>) -> Result<Collected, ClientError> {
    let (ours, theirs) = UnixStream::pair().unwrap();
    tokio::spawn(fake_agent(theirs, then));
    let client = AgentClient::handshake(ours).await?;
    client.start(StartRequest::default()).await?.collect().await
}

fn stdout(bytes: Vec<u8>) -> Vec<u8> {
    Frame::Data {
        stream: StreamId::new(1, Fd::Stdout).unwrap(),
        bytes,
    }
    .to_bytes()
    .unwrap()
}

fn eofs() -> Vec<u8> {
    [
        stdout(vec![]),
        Frame::Data {
            stream: StreamId::new(1, Fd::Stderr).unwrap(),
            bytes: vec![],
        }
        .to_bytes()
        .unwrap(),
    ]
    .concat()
}

#[tokio::test]
async fn an_honest_agent_is_heard() {
    let then = [
        stdout(b"hi\n".to_vec()),
        eofs(),
        control(&FromAgent::Exited {
            process: 1,
            status: ExitStatus::Code(4),
        }),
    ]
    .concat();
    let out = run_against(then).await.unwrap();
    assert_eq!(
        (out.stdout, out.status),
        (b"hi\n".to_vec(), ExitStatus::Code(4))
    );
}

fn assert_protocol_error(r: Result<Collected, ClientError>, want: &str) {
    match r {
        Err(ClientError::Closed(why)) | Err(ClientError::Protocol(why)) => {
            assert!(why.contains(want), "{why:?} lacks {want:?}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn output_beyond_the_granted_window_closes_the_connection() {
    // More than the window, and the client reads none of it (reading
    // would grant credit): the excess is a violation.
    let flood: Vec<u8> = (0..(crate::flow::INITIAL_WINDOW as usize / DATA_CHUNK + 1))
        .flat_map(|_| stdout(vec![b'x'; DATA_CHUNK]))
        .collect();
    let (ours, theirs) = UnixStream::pair().unwrap();
    tokio::spawn(fake_agent(theirs, flood));
    let client = AgentClient::handshake(ours).await.unwrap();
    let mut p = client.start(StartRequest::default()).await.unwrap();
    assert_protocol_error(
        p.wait().await.map(|status| Collected {
            stdout: vec![],
            stderr: vec![],
            status,
        }),
        "bytes of credit",
    );
}

#[tokio::test]
async fn a_second_exit_report_is_a_protocol_error() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    tokio::spawn(fake_agent(
        theirs,
        [
            eofs(),
            control(&FromAgent::Exited {
                process: 1,
                status: ExitStatus::Code(0),
            }),
            control(&FromAgent::Exited {
                process: 1,
                status: ExitStatus::Code(1),
            }),
        ]
        .concat(),
    ));
    let client = AgentClient::handshake(ours).await.unwrap();
    let _ = client.start(StartRequest::default()).await.unwrap();
    // Any later request fails: the connection was closed for cause.
    let e = client.shutdown().await.unwrap_err();
    assert!(e.to_string().contains("second exit report"), "{e}");
}

#[tokio::test]
async fn replies_exits_and_data_for_unknown_ids_are_protocol_errors() {
    for (then, want) in [
        (
            control(&FromAgent::Reply {
                id: 999,
                result: Ok(()),
            }),
            "unknown request 999",
        ),
        (
            control(&FromAgent::Exited {
                process: 42,
                status: ExitStatus::Code(0),
            }),
            "unknown process 42",
        ),
        (
            Frame::Data {
                stream: StreamId::new(42, Fd::Stdout).unwrap(),
                bytes: b"x".to_vec(),
            }
            .to_bytes()
            .unwrap(),
            "unknown process 42",
        ),
        (
            Frame::Data {
                stream: StreamId::new(1, Fd::Stdin).unwrap(),
                bytes: b"x".to_vec(),
            }
            .to_bytes()
            .unwrap(),
            "input stream",
        ),
        (
            control(&FromAgent::Fatal {
                message: "boom".into(),
            }),
            "agent gave up: boom",
        ),
        (
            b"\x01\x09\0\0\0\0\0\0\0\0\0\0".to_vec(),
            "unknown frame kind 9",
        ),
        (
            Frame::Control(b"{\"type\":\"reply\",\"id\":1,\"surprise\":1}".to_vec())
                .to_bytes()
                .unwrap(),
            "bad message",
        ),
    ] {
        assert_protocol_error(run_against(then).await, want);
    }
}

#[tokio::test]
async fn a_bad_hello_fails_the_handshake() {
    for (first, want) in [
        (
            control(&FromAgent::Hello(Hello {
                protocol: 99,
                agent_version: "x".into(),
                boot_to_connected_us: None,
            })),
            "protocol 99",
        ),
        (
            control(&FromAgent::Reply {
                id: 1,
                result: Ok(()),
            }),
            "not a hello",
        ),
        (b"SSH-2.0-OpenSSH\r\n".to_vec(), "protocol version"),
        (Vec::new(), "before the agent's hello"),
    ] {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(&first).await.unwrap();
        drop(theirs);
        let e = AgentClient::handshake(ours).await.unwrap_err();
        assert!(e.to_string().contains(want), "{e} lacks {want:?}");
    }
}
