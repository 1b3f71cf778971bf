//! HTTP/1.1 Upgrade on both ends of the proxy, written by hand over raw
//! sockets so the tests see exactly what crosses the wire: an
//! [`UpgradeBackend`] that switches to WebSocket (RFC 6455 handshake, then
//! echoing every message frame by frame) or to any other protocol (then
//! echoing raw bytes), and an [`UpgradeClient`] that asks for either.
//!
//! SHA-1 and base64, which the WebSocket handshake needs, are written here
//! too (no crate of the workspace has them); the RFC's own example checks
//! both.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The GUID RFC 6455 appends to the client's key.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A backend that accepts every upgrade: `websocket` gets the RFC 6455
/// handshake and its messages echoed, any other protocol its bytes echoed.
/// The 101 carries `x-backend: <id>`.
pub struct UpgradeBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    switched: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
}

impl UpgradeBackend {
    /// Starts on a free loopback port.
    pub async fn start(id: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let (stop, mut stop_rx) = watch::channel(false);
        let switched = Arc::new(AtomicU64::new(0));
        let (id, count) = (id.to_owned(), switched.clone());
        tokio::spawn(async move {
            loop {
                let (s, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = stop_rx.wait_for(|s| *s) => break,
                };
                let (id, count) = (id.clone(), count.clone());
                let mut conn_stop = stop_rx.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(s, &id, &count) => {}
                        _ = conn_stop.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        Self {
            addr,
            switched,
            stop,
        }
    }

    /// Upgrades switched so far (one per tunnel opened through it).
    pub fn switched(&self) -> u64 {
        self.switched.load(Ordering::SeqCst)
    }
}

impl Drop for UpgradeBackend {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Reads a head up to its blank line: the start line and the headers
/// (names lowercased).
async fn read_head(
    r: &mut BufReader<TcpStream>,
) -> std::io::Result<(String, Vec<(String, String)>)> {
    let mut start = String::new();
    if r.read_line(&mut start).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Ok((start.trim_end().to_owned(), headers));
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn serve(s: TcpStream, id: &str, count: &AtomicU64) -> std::io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut r = BufReader::new(s);
    let (_, headers) = read_head(&mut r).await?;
    let protocol = header(&headers, "upgrade").unwrap_or("").to_owned();
    let websocket = protocol.eq_ignore_ascii_case("websocket");
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: {protocol}\r\nconnection: upgrade\r\nx-backend: {id}\r\n"
    );
    if websocket {
        let key = header(&headers, "sec-websocket-key").unwrap_or("");
        resp.push_str(&format!("sec-websocket-accept: {}\r\n", accept_key(key)));
    }
    resp.push_str("\r\n");
    r.get_mut().write_all(resp.as_bytes()).await?;
    count.fetch_add(1, Ordering::SeqCst);
    if !websocket {
        let mut buf = [0u8; 4096];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            r.get_mut().write_all(&buf[..n]).await?;
        }
    }
    loop {
        let (op, payload) = read_frame(&mut r).await?;
        let answer = match op {
            OP_CLOSE => {
                r.get_mut()
                    .write_all(&frame(OP_CLOSE, &payload, None))
                    .await?;
                return Ok(());
            }
            OP_PING => frame(OP_PONG, &payload, None),
            OP_PONG => continue,
            op => frame(op, &payload, None),
        };
        r.get_mut().write_all(&answer).await?;
    }
}

/// The `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    base64(&sha1(format!("{key}{WS_GUID}").as_bytes()))
}

/// One frame (never fragmented), masked when `mask` is given.
fn frame(op: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | op];
    let bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(bit | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Reads one frame: its opcode and its payload, unmasked.
async fn read_frame(r: &mut BufReader<TcpStream>) -> std::io::Result<(u8, Vec<u8>)> {
    let mut two = [0u8; 2];
    r.read_exact(&mut two).await?;
    let op = two[0] & 0x0f;
    let masked = two[1] & 0x80 != 0;
    let len = match two[1] & 0x7f {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
    r.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok((op, payload))
}

/// A client connection that asked the proxy for an upgrade.
pub struct UpgradeClient {
    r: BufReader<TcpStream>,
    /// The answer's status.
    pub status: u16,
    /// The answer's headers (names lowercased).
    pub headers: Vec<(String, String)>,
    sent: u32,
}

impl UpgradeClient {
    /// Connects to `addr` and asks for `GET path` with `Upgrade: protocol`
    /// (a WebSocket handshake when `protocol` is `websocket`).
    pub async fn open(addr: SocketAddr, path: &str, protocol: &str) -> Result<Self, String> {
        let s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = s.set_nodelay(true);
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nhost: test\r\nconnection: Upgrade\r\nupgrade: {protocol}\r\n"
        );
        if protocol == "websocket" {
            req.push_str(&format!(
                "sec-websocket-key: {key}\r\nsec-websocket-version: 13\r\n"
            ));
        }
        req.push_str("\r\n");
        let mut r = BufReader::new(s);
        r.get_mut()
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let (start, headers) = read_head(&mut r)
            .await
            .map_err(|e| format!("answer: {e}"))?;
        let status = start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {start:?}"))?;
        if status == 101
            && protocol == "websocket"
            && header(&headers, "sec-websocket-accept") != Some(accept_key(key).as_str())
        {
            return Err(format!("wrong accept key in {headers:?}"));
        }
        Ok(Self {
            r,
            status,
            headers,
            sent: 0,
        })
    }

    /// A header of the answer.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Sends a text message (masked, as a client must).
    pub async fn send_text(&mut self, text: &str) -> std::io::Result<()> {
        self.sent = self.sent.wrapping_add(0x9e37_79b9);
        let f = frame(OP_TEXT, text.as_bytes(), Some(self.sent.to_be_bytes()));
        self.r.get_mut().write_all(&f).await
    }

    /// The next text message; `None` when the peer closed.
    pub async fn recv_text(&mut self) -> std::io::Result<Option<String>> {
        loop {
            match read_frame(&mut self.r).await {
                Ok((OP_TEXT, p)) => return Ok(Some(String::from_utf8_lossy(&p).into_owned())),
                Ok((OP_CLOSE, _)) => return Ok(None),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes raw bytes (after a switch to a non-WebSocket protocol).
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.r.get_mut().write_all(bytes).await
    }

    /// Reads exactly `n` raw bytes.
    pub async fn read(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; n];
        self.r.read_exact(&mut buf).await?;
        Ok(buf)
    }

    /// Reads until the peer closes; the bytes that came first.
    pub async fn read_to_close(&mut self) -> std::io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.r.read_to_end(&mut buf).await?;
        Ok(buf)
    }

    /// Sends a plain request on the same connection (after a declined
    /// upgrade) and reads its answer's status line and body, which must
    /// have a `content-length`.
    pub async fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>), String> {
        let req = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
        self.write(req.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let (start, headers) = read_head(&mut self.r)
            .await
            .map_err(|e| format!("answer: {e}"))?;
        let status = start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {start:?}"))?;
        let len = header(&headers, "content-length")
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| format!("no content-length in {headers:?}"))?;
        let body = self.read(len).await.map_err(|e| format!("body: {e}"))?;
        Ok((status, body))
    }

    /// Reads the body of the answer to [`Self::open`] (when it was not a
    /// 101), by its `content-length`.
    pub async fn body(&mut self) -> Result<Vec<u8>, String> {
        let len = self
            .header("content-length")
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| format!("no content-length in {:?}", self.headers))?;
        self.read(len).await.map_err(|e| format!("body: {e}"))
    }
}

/// SHA-1 (FIPS 180-4), for the handshake only.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, c) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, t);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (o, x) in out.chunks_mut(4).zip(h) {
        o.copy_from_slice(&x.to_be_bytes());
    }
    out
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_matches_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
    }
}
