//! EncryptStream and DecryptStream: data of any size in constant memory, in the stream format of
//! `keymesh_crypto::stream`. Each stream gets a fresh data key, sealed under the named key with the
//! stream's AAD and encryption context (exactly as GenerateDataKey would) and carried in the stream's
//! header; so a client holding the data key can open a stream made here, and a client's envelope opens
//! here.
//!
//! The handler reads the first messages itself (init, and for DecryptStream the whole header) so that
//! authorization and key errors arrive as the call's status; then a task pumps segments through a small
//! channel. The channel, the HTTP/2 flow-control windows and the one segment each codec holds bound the
//! memory of a stream whatever its length.

use keymesh_crypto::{
    CryptoError, SecretKey,
    ciphertext::Binding,
    stream::{self, SEGMENT_TAG_LEN, StreamDecryptor, StreamEncryptor},
};
use keymesh_proto::v1::{self as pb, decrypt_stream_request, encrypt_stream_request};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{CryptoRpc, ResponseStream, context_of, decrypt::Opening, encrypt::Sealing};
use crate::error::CryptoServiceError;

/// Response messages queued ahead of the client: enough to keep the pipe full, few enough to bound memory.
const QUEUED_RESPONSES: usize = 2;

type Outbound<T> = mpsc::Sender<Result<T, Status>>;

fn invalid(field: &'static str, reason: impl Into<String>) -> Status {
    CryptoServiceError::InvalidArgument { field, reason: reason.into() }.into()
}

fn decryption_failed(_: CryptoError) -> Status {
    CryptoServiceError::DecryptionFailed.into()
}

fn internal(e: CryptoError) -> Status {
    CryptoServiceError::Internal(e.to_string()).into()
}

const INIT_FIRST: &str = "init must be the first message of the stream, and only the first; send chunks after it";

impl CryptoRpc {
    pub(super) async fn handle_encrypt_stream(
        &self,
        request: Request<Streaming<pb::EncryptStreamRequest>>,
    ) -> Result<Response<ResponseStream<pb::EncryptStreamResponse>>, Status> {
        let (claims, mut audit) = self.admit(&request, "EncryptStream").await?;
        let mut inbound = request.into_inner();
        let started = async {
            let init = match inbound.message().await? {
                Some(pb::EncryptStreamRequest { message: Some(encrypt_stream_request::Message::Init(init)) }) => init,
                _ => return Err(invalid("init", INIT_FIRST)),
            };
            let segment_size =
                if init.segment_size == 0 { stream::DEFAULT_SEGMENT_SIZE } else { init.segment_size as usize };
            stream::check_segment_size(segment_size).map_err(|e| invalid("segment_size", e.to_string()))?;
            let data_key = SecretKey::generate(32).map_err(internal)?;
            let sealing = Sealing {
                permission: pb::Operation::Encrypt,
                key: &init.key,
                field: "init.key",
                plaintext: data_key.expose_secret(),
                aad: &init.aad,
                context: &init.encryption_context,
                to_public_key: false,
            };
            let sealed = self.seal_one(&claims, &mut audit, sealing).await?;
            let context = context_of(&init.encryption_context);
            let binding = Binding { aad: &init.aad, context: Some(&context) };
            StreamEncryptor::new(&data_key, &sealed.ciphertext, binding, segment_size).map_err(internal)
        }
        .await;
        let encryptor = match started {
            Ok(encryptor) => encryptor,
            Err(status) => return audit.finish(&self.audit, Err(status)).await,
        };
        let (tx, rx) = mpsc::channel(QUEUED_RESPONSES);
        let sink = self.audit.clone();
        tokio::spawn(async move {
            let result = pump_encryption(inbound, encryptor, &tx).await;
            if let Err(status) = &result {
                // The client may be gone already; then there is nobody to tell.
                let _ = tx.send(Err(status.clone())).await;
            }
            // Strict mode: a stream whose event cannot be spooled ends in an error even after its last chunk,
            // and clients discard a stream that does not end cleanly.
            let answered = result.is_ok();
            if let (true, Err(status)) = (answered, audit.finish(&sink, result).await) {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    pub(super) async fn handle_decrypt_stream(
        &self,
        request: Request<Streaming<pb::DecryptStreamRequest>>,
    ) -> Result<Response<ResponseStream<pb::DecryptStreamResponse>>, Status> {
        let (claims, mut audit) = self.admit(&request, "DecryptStream").await?;
        let mut inbound = request.into_inner();
        let started = async {
            let init = match inbound.message().await? {
                Some(pb::DecryptStreamRequest { message: Some(decrypt_stream_request::Message::Init(init)) }) => init,
                _ => return Err(invalid("init", INIT_FIRST)),
            };
            // Gather the header; parse_header refuses a malformed one as soon as its length is known, so
            // the buffer stays within one message and the header bound.
            let mut buffer = Vec::new();
            let (header, used) = loop {
                match inbound.message().await? {
                    Some(pb::DecryptStreamRequest { message: Some(decrypt_stream_request::Message::Chunk(c)) }) => {
                        buffer.extend_from_slice(&c);
                        if let Some(parsed) = stream::parse_header(&buffer).map_err(decryption_failed)? {
                            break parsed;
                        }
                    }
                    Some(_) => return Err(invalid("init", INIT_FIRST)),
                    None => return Err(CryptoServiceError::DecryptionFailed.into()),
                }
            };
            let opening = Opening {
                permission: pb::Operation::Decrypt,
                ciphertext: header.wrapped_data_key(),
                key: &init.key,
                aad: &init.aad,
                context: &init.encryption_context,
                public_key_version: None,
            };
            let opened = self.open_one(&claims, &mut audit, opening).await?;
            let data_key = SecretKey::copy_from_slice(&opened.plaintext);
            let context = context_of(&init.encryption_context);
            let decryptor = header
                .decryptor(&data_key, Binding { aad: &init.aad, context: Some(&context) })
                .map_err(decryption_failed)?;
            buffer.drain(..used);
            Ok((decryptor, buffer))
        }
        .await;
        let (decryptor, rest) = match started {
            Ok(started) => started,
            Err(status) => return audit.finish(&self.audit, Err(status)).await,
        };
        let (tx, rx) = mpsc::channel(QUEUED_RESPONSES);
        let sink = self.audit.clone();
        tokio::spawn(async move {
            let result = pump_decryption(inbound, decryptor, rest, &tx).await;
            if let Err(status) = &result {
                // Tells the client to discard what it received: the stream is not whole.
                let _ = tx.send(Err(status.clone())).await;
            }
            // Strict mode: a stream whose event cannot be spooled ends in an error even after its last chunk,
            // and clients discard a stream that does not end cleanly.
            let answered = result.is_ok();
            if let (true, Err(status)) = (answered, audit.finish(&sink, result).await) {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn send<T>(tx: &Outbound<T>, message: T) -> Result<(), Status> {
    tx.send(Ok(message)).await.map_err(|_| Status::cancelled("the client closed the stream"))
}

async fn pump_encryption(
    mut inbound: Streaming<pb::EncryptStreamRequest>,
    mut encryptor: StreamEncryptor,
    tx: &Outbound<pb::EncryptStreamResponse>,
) -> Result<(), Status> {
    send(tx, pb::EncryptStreamResponse { chunk: encryptor.header().to_vec() }).await?;
    let segment = encryptor.segment_size();
    let mut out = Vec::new();
    while let Some(message) = inbound.message().await? {
        let Some(encrypt_stream_request::Message::Chunk(chunk)) = message.message else {
            return Err(invalid("init", INIT_FIRST));
        };
        // One segment's worth at a time completes at most one segment, so no response outgrows a segment.
        for piece in chunk.chunks(segment) {
            encryptor.update(piece, &mut out).map_err(internal)?;
            if !out.is_empty() {
                send(tx, pb::EncryptStreamResponse { chunk: std::mem::take(&mut out) }).await?;
            }
        }
    }
    encryptor.finish(&mut out).map_err(internal)?;
    send(tx, pb::EncryptStreamResponse { chunk: out }).await
}

async fn pump_decryption(
    mut inbound: Streaming<pb::DecryptStreamRequest>,
    mut decryptor: StreamDecryptor,
    rest: Vec<u8>,
    tx: &Outbound<pb::DecryptStreamResponse>,
) -> Result<(), Status> {
    let sealed_segment = decryptor.segment_size() + SEGMENT_TAG_LEN;
    let mut out = Vec::new();
    let mut feed = async |decryptor: &mut StreamDecryptor, bytes: &[u8]| {
        for piece in bytes.chunks(sealed_segment) {
            decryptor.update(piece, &mut out).map_err(decryption_failed)?;
            if !out.is_empty() {
                send(tx, pb::DecryptStreamResponse { chunk: std::mem::take(&mut out) }).await?;
            }
        }
        Ok::<_, Status>(())
    };
    feed(&mut decryptor, &rest).await?;
    drop(rest);
    while let Some(message) = inbound.message().await? {
        let Some(decrypt_stream_request::Message::Chunk(chunk)) = message.message else {
            return Err(invalid("init", INIT_FIRST));
        };
        feed(&mut decryptor, &chunk).await?;
    }
    let mut last = Vec::new();
    decryptor.finish(&mut last).map_err(decryption_failed)?;
    send(tx, pb::DecryptStreamResponse { chunk: last }).await
}
