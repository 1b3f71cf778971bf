//! The gRPC codec of every Vane service: prost, with smaller per-call
//! buffers than tonic's default.
//!
//! tonic allocates an encode and a decode buffer of 8 KiB for every call
//! when it starts, and keeps them for the call's life. A control server
//! holds one watch call per agent for days, and its messages are a few
//! hundred bytes (ACKs) or a snapshot written once per version; at ten
//! thousand agents the default buffers alone were 160 MiB (measured with
//! heaptrack, docs/benchmarks.md). Buffers still grow to fit any message.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of a call's encode and decode buffers, and the step they
/// grow by: enough for any ACK in one allocation.
pub const CALL_BUFFER_BYTES: usize = 1024;

/// Encoded messages batched into one write before yielding (tonic's
/// default).
pub const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// [`ProstCodec`] with [`CALL_BUFFER_BYTES`] buffers.
#[derive(Debug, Clone)]
pub struct VaneCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for VaneCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(CALL_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

impl<T, U> Codec for VaneCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
