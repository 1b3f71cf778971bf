//! A minimal HTTP/1.1 client over raw TCP for the long-poll scenario: a
//! request per connection, the response head, a `Content-Length` body, and
//! a chunked body read chunk by chunk as it streams (etcd's watch), so that
//! thousands of held requests cost the load generator one socket and one
//! small buffer each, and the times taken are those of the bytes arriving.

use std::net::SocketAddr;

use anyhow::{Context as _, Result, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// A response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// Header names in lowercase, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn content_length(&self) -> Result<Option<usize>> {
        self.header("content-length")
            .map(|v| v.parse().with_context(|| format!("Content-Length {v:?}")))
            .transpose()
    }
}

/// One connection: requests written, the response read as it comes.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    addr: SocketAddr,
    /// Bytes read and not consumed yet.
    buf: Vec<u8>,
}

impl Conn {
    /// Connects to `addr`.
    pub async fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            addr,
            buf: Vec::new(),
        })
    }

    /// Sends `method path` with a JSON `body` when given; `close` asks the
    /// server to close the connection after its answer.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
        close: bool,
    ) -> Result<()> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if close {
            request.push_str("Connection: close\r\n");
        }
        if let Some(body) = body {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        } else {
            request.push_str("\r\n");
        }
        self.stream
            .write_all(request.as_bytes())
            .await
            .with_context(|| format!("sending {method} {path}"))
    }

    /// Reads more bytes; `false` at the end of the stream.
    async fn fill(&mut self) -> Result<bool> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await.context("reading")?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Reads until `n` bytes are buffered; fails when the stream ends first.
    async fn fill_to(&mut self, n: usize) -> Result<()> {
        while self.buf.len() < n {
            if !self.fill().await? {
                bail!("connection closed by the server");
            }
        }
        Ok(())
    }

    /// The position of `\r\n` in the buffer, reading until there is one.
    async fn line_end(&mut self, from: usize) -> Result<usize> {
        loop {
            if let Some(i) = find(&self.buf[from..], b"\r\n") {
                return Ok(from + i);
            }
            if self.buf.len() > MAX_HEAD {
                bail!("a line over {MAX_HEAD} bytes");
            }
            if !self.fill().await? {
                bail!("connection closed by the server");
            }
        }
    }

    /// The response head.
    pub async fn head(&mut self) -> Result<Head> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if self.buf.len() > MAX_HEAD {
                bail!("a response head over {MAX_HEAD} bytes");
            }
            if !self.fill().await? {
                bail!("connection closed before a response");
            }
        };
        let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        parse_head(&text)
    }

    /// The next chunk of a chunked body; `None` after the last.
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>> {
        let end = self.line_end(0).await?;
        let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let size = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size, 16).with_context(|| format!("chunk size {line:?}"))?;
        if size == 0 {
            self.buf.drain(..end + 2);
            return Ok(None);
        }
        self.fill_to(end + 2 + size + 2).await?;
        let data = self.buf[end + 2..end + 2 + size].to_vec();
        self.buf.drain(..end + 2 + size + 2);
        Ok(Some(data))
    }

    /// The whole body of a response with `head`: by its length, its
    /// chunks, or (neither) up to the end of the stream.
    pub async fn body(&mut self, head: &Head) -> Result<Vec<u8>> {
        if head.chunked() {
            let mut body = Vec::new();
            while let Some(chunk) = self.chunk().await? {
                body.extend(chunk);
            }
            Ok(body)
        } else if let Some(length) = head.content_length()? {
            self.fill_to(length).await?;
            Ok(self.buf.drain(..length).collect())
        } else {
            while self.fill().await? {}
            Ok(std::mem::take(&mut self.buf))
        }
    }
}

/// `method path` (with a JSON `body`) on a connection of its own: the
/// status and the body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, Vec<u8>)> {
    let mut conn = Conn::open(addr).await?;
    conn.send(method, path, body, true).await?;
    let head = conn.head().await?;
    let body = conn.body(&head).await?;
    Ok((head.status, body))
}

fn parse_head(text: &str) -> Result<Head> {
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP status line: {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Head { status, headers })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Standard base64 with padding (etcd's JSON gateway wants keys and values
/// so).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn base64_as_rfc_4648_says() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn heads_parse() {
        let h = parse_head("HTTP/1.1 200 OK\r\nVane-Version: 7\r\nContent-Length: 3").unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.header("vane-version"), Some("7"));
        assert_eq!(h.content_length().unwrap(), Some(3));
        assert!(parse_head("garbage").is_err());
    }

    /// A server that writes `answer` in pieces of 5 bytes.
    async fn serve(answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = s.read(&mut request).await.unwrap();
            for piece in answer.chunks(5) {
                s.write_all(piece).await.unwrap();
                s.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn chunked_and_sized_bodies_arrive_whole() {
        let addr = serve(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n{\"a\":1\r\n3;x=y\r\n}\n\n\r\n0\r\n\r\n",
        )
        .await;
        let mut conn = Conn::open(addr).await.unwrap();
        conn.send("POST", "/v3/watch", Some("{}"), false)
            .await
            .unwrap();
        let head = conn.head().await.unwrap();
        assert_eq!(conn.chunk().await.unwrap().unwrap(), b"{\"a\":1");
        assert_eq!(conn.chunk().await.unwrap().unwrap(), b"}\n\n");
        assert_eq!(conn.chunk().await.unwrap(), None);
        assert_eq!(head.status, 200);

        let addr = serve(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 4\r\n\r\nbody").await;
        let (status, body) = request(addr, "GET", "/", None).await.unwrap();
        assert_eq!((status, body.as_slice()), (304, &b"body"[..]));

        let addr = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").await;
        let e = request(addr, "GET", "/", None).await.unwrap_err();
        assert!(format!("{e:#}").contains("closed"), "{e:#}");
    }
}
