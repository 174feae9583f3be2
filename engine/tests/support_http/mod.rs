//! A scripted HTTP/1.1 server on 127.0.0.1 for the provider transport tests.
//!
//! Each accepted connection serves one request with the next `Reply` of the script
//! (`connection: close`, so the client never reuses a connection and replies map 1:1 to
//! attempts). Requests are recorded for assertions.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};

/// How a reply ends after its pieces were written.
#[derive(Clone)]
pub enum End {
    /// Finish the body properly (chunked terminator, or close for close-delimited).
    Complete,
    /// Send a TCP reset (SO_LINGER 0) instead of finishing the body.
    Reset,
    /// Keep the connection open and silent for this long.
    Stall(Duration),
}

#[derive(Clone)]
pub enum Reply {
    /// 200 text/event-stream; `pieces` are written (and flushed) one by one.
    Sse {
        pieces: Vec<Vec<u8>>,
        chunked: bool,
        /// Awaited before `end`, so a test can let the client see the pieces first.
        gate: Option<Arc<Notify>>,
        end: End,
    },
    /// Any status with a fixed body.
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Read the request, then reset without answering.
    ResetBeforeResponse,
    /// Read the request, then say nothing for this long.
    Silent(Duration),
}

impl Reply {
    /// A complete chunked SSE body, one piece per SSE event.
    pub fn sse(body: &[u8]) -> Reply {
        Reply::Sse {
            pieces: split_events(body),
            chunked: true,
            gate: None,
            end: End::Complete,
        }
    }

    pub fn status(status: u16, body: &str) -> Reply {
        Reply::Status {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }

    pub fn with_header(self, name: &str, value: &str) -> Reply {
        match self {
            Reply::Status {
                status,
                mut headers,
                body,
            } => {
                headers.push((name.to_string(), value.to_string()));
                Reply::Status {
                    status,
                    headers,
                    body,
                }
            }
            other => other,
        }
    }
}

/// Splits an SSE body after each blank line (keeping the bytes intact).
pub fn split_events(body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < body.len() {
        if body[i] == b'\n' && body[i + 1] == b'\n' {
            out.push(body[start..i + 2].to_vec());
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    if start < body.len() {
        out.push(body[start..].to_vec());
    }
    out
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

pub struct TestServer {
    pub port: u16,
    requests: Arc<Mutex<Vec<Recorded>>>,
    /// Fires when a client closes a connection the server was stalling on.
    closed: Arc<Mutex<Option<oneshot::Sender<()>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub async fn start(script: Vec<Reply>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let closed: Arc<Mutex<Option<oneshot::Sender<()>>>> = Arc::new(Mutex::new(None));
        let reqs = requests.clone();
        let closed2 = closed.clone();
        let task = tokio::spawn(async move {
            let mut script = script.into_iter();
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                // Past the script's end every connection gets a 599 so a runaway retry
                // loop shows up as an assertion failure rather than a hang.
                let reply = script
                    .next()
                    .unwrap_or_else(|| Reply::status(599, "{\"error\":\"script exhausted\"}"));
                let reqs = reqs.clone();
                let closed = closed2.clone();
                tokio::spawn(async move {
                    serve(sock, reply, reqs, closed).await;
                });
            }
        });
        TestServer {
            port,
            requests,
            closed,
            task,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("lock").clone()
    }

    /// A receiver that completes when the client drops a stalled connection.
    pub fn on_client_close(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        *self.closed.lock().expect("lock") = Some(tx);
        rx
    }
}

async fn read_request(sock: &mut TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?;
    let mut parts = request_line.split(' ');
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some(Recorded {
        method,
        path,
        headers,
        body,
    })
}

async fn serve(
    mut sock: TcpStream,
    reply: Reply,
    requests: Arc<Mutex<Vec<Recorded>>>,
    closed: Arc<Mutex<Option<oneshot::Sender<()>>>>,
) {
    let Some(req) = read_request(&mut sock).await else {
        return;
    };
    requests.lock().expect("lock").push(req);
    match reply {
        Reply::Status {
            status,
            headers,
            body,
        } => {
            let mut head = format!(
                "HTTP/1.1 {status} Status\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (n, v) in headers {
                head.push_str(&format!("{n}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        }
        Reply::ResetBeforeResponse => {
            let _ = sock.set_zero_linger();
            drop(sock);
        }
        Reply::Silent(d) => {
            stall(sock, d, closed).await;
        }
        Reply::Sse {
            pieces,
            chunked,
            gate,
            end,
        } => {
            let framing = if chunked {
                "transfer-encoding: chunked\r\n"
            } else {
                ""
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n{framing}connection: close\r\n\r\n"
            );
            if sock.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for piece in &pieces {
                let ok = if chunked {
                    let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
                    framed.extend_from_slice(piece);
                    framed.extend_from_slice(b"\r\n");
                    sock.write_all(&framed).await
                } else {
                    sock.write_all(piece).await
                };
                if ok.is_err() || sock.flush().await.is_err() {
                    return;
                }
                // Separate TCP segments, so the client sees several body frames.
                tokio::task::yield_now().await;
            }
            if let Some(gate) = gate {
                gate.notified().await;
            }
            match end {
                End::Complete => {
                    if chunked {
                        let _ = sock.write_all(b"0\r\n\r\n").await;
                    }
                    let _ = sock.shutdown().await;
                }
                End::Reset => {
                    let _ = sock.set_zero_linger();
                    drop(sock);
                }
                End::Stall(d) => stall(sock, d, closed).await,
            }
        }
    }
}

/// Holds the connection silent; reports when the client goes away first.
async fn stall(mut sock: TcpStream, d: Duration, closed: Arc<Mutex<Option<oneshot::Sender<()>>>>) {
    let mut tmp = [0u8; 64];
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        // The client sends nothing more, so a read returning means EOF or reset.
        _ = sock.read(&mut tmp) => {
            if let Some(tx) = closed.lock().expect("lock").take() {
                let _ = tx.send(());
            }
        }
    }
}
