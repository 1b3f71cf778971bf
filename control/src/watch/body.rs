//! The response body of one watch stream, framed by hand: each response is
//! a few bytes of gRPC frame header and fields followed by the hub's shared
//! snapshot or delta `Bytes`, never copied into a per-stream buffer; then
//! the trailers with the stream's final status.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use vane_proto as pb;

/// The response body of one watch stream: each response as gRPC frames,
/// then the trailers (`grpc-status`).
#[derive(Debug)]
pub struct WatchBody {
    pub(crate) responses: mpsc::Receiver<Box<pb::WatchResponse>>,
    /// The shared snapshot or delta bytes of the response whose head was
    /// just yielded.
    pub(crate) body: Option<bytes::Bytes>,
    /// The status the stream task ends with (dropped: OK).
    pub(crate) end: Option<oneshot::Receiver<Status>>,
}

/// Bodies up to this size are copied behind their response's fields (one
/// frame); larger ones go as their own frame, shared, not copied.
pub(crate) const COPY_BODY_BELOW: usize = 1024;

impl http_body::Body for WatchBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Some(body) = self.body.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(body))));
        }
        match self.responses.poll_recv(cx) {
            Poll::Ready(Some(response)) => {
                let (head, body) = encode_response(*response)?;
                self.body = body;
                return Poll::Ready(Some(Ok(http_body::Frame::data(head))));
            }
            Poll::Ready(None) => {}
            Poll::Pending => return Poll::Pending,
        }
        // The stream task ended: its status, if it set one, goes in the
        // trailers.
        let Some(end) = self.end.as_mut() else {
            return Poll::Ready(None);
        };
        let status = match Pin::new(end).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(status)) => status,
            Poll::Ready(Err(_)) => Status::ok(""),
        };
        self.end = None;
        let mut trailers = http::HeaderMap::new();
        if let Err(e) = status.add_header(&mut trailers) {
            tracing::warn!(error = %e, "cannot encode the final status of a watch stream");
            trailers.insert("grpc-status", http::HeaderValue::from_static("13"));
        }
        Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.end.is_none() && self.body.is_none()
    }
}

/// One response as a gRPC message: the frame header (no compression, the
/// length) and every field but the body, encoded here, then the body's key
/// and length; the body itself is returned apart (shared, not copied)
/// unless it is small. Protobuf fields may come in any order, so this is
/// exactly a `WatchResponse` to any decoder.
pub(crate) fn encode_response(
    mut response: pb::WatchResponse,
) -> Result<(bytes::Bytes, Option<bytes::Bytes>), Status> {
    use bytes::BufMut as _;
    use prost::Message as _;
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

    let (tag, body) = match response.body.take() {
        Some(pb::watch_response::Body::Snapshot(b)) => (5, Some(b)),
        Some(pb::watch_response::Body::Delta(b)) => (6, Some(b)),
        None => (0, None),
    };
    let fields = response.encoded_len();
    let body_len = body.as_ref().map_or(0, |b| {
        key_len(tag) + encoded_len_varint(b.len() as u64) + b.len()
    });
    let message_len = u32::try_from(fields + body_len)
        .map_err(|_| Status::internal("response: larger than a gRPC message can be"))?;
    let copy = body.as_ref().is_some_and(|b| b.len() < COPY_BODY_BELOW);
    let mut head =
        bytes::BytesMut::with_capacity(5 + fields + 16 + if copy { body_len } else { 0 });
    head.put_u8(0);
    head.put_u32(message_len);
    response
        .encode(&mut head)
        .map_err(|e| Status::internal(format!("response: {e}")))?;
    let body = match body {
        Some(b) => {
            encode_key(tag, WireType::LengthDelimited, &mut head);
            encode_varint(b.len() as u64, &mut head);
            if copy {
                head.put_slice(&b);
                None
            } else {
                Some(b)
            }
        }
        None => None,
    };
    Ok((head.freeze(), body))
}
