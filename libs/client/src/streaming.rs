//! Streaming helpers: encrypt and decrypt readers, writers and files of any size in constant memory,
//! either through crypto-service's EncryptStream/DecryptStream or here with a data key (one
//! GenerateDataKey or Decrypt call per stream). Both produce and read the same stream format.
//!
//! A stream is whole only when the helper returns `Ok`: a decryption that fails part-way has written
//! plaintext that must be discarded. The file helpers do that for you: they write to a temporary file
//! beside the target and move it into place only on success.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use keymesh_crypto::stream::{self, StreamEncryptor};
use keymesh_proto::v1::{self as pb, decrypt_stream_request, encrypt_stream_request};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use zeroize::Zeroizing;

use crate::{ClientError, KeymeshClient, envelope::Associated};

/// Bytes read from the input per request message or local step.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// Where a stream is encrypted or decrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Via {
    /// In crypto-service (EncryptStream/DecryptStream): the data key never leaves the mesh.
    #[default]
    Service,
    /// Here, with a data key (GenerateDataKey to encrypt, Decrypt of the wrapped data key to decrypt): the
    /// data never leaves this process.
    Local,
}

/// How to encrypt or decrypt one stream.
#[derive(Debug, Clone, Default)]
pub struct StreamOptions {
    /// Encrypting: the key's name or id. Decrypting: if set, the key the stream must be under.
    pub key: String,
    /// AAD and encryption context.
    pub associated: Associated,
    /// Plaintext bytes per segment when encrypting; 0 means 1 MiB.
    pub segment_size: u32,
    /// Where the cipher runs.
    pub via: Via,
}

impl StreamOptions {
    fn segment_size(&self) -> usize {
        if self.segment_size == 0 { stream::DEFAULT_SEGMENT_SIZE } else { self.segment_size as usize }
    }
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
async fn read_full<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// A task that sends `first`, then the input in chunks, as a request stream. A read error is reported on
/// the error channel and the request is left open, so the service never sees a clean end and never seals
/// a final segment over a partial input.
fn spawn_reader<R, T>(
    mut reader: R,
    first: T,
    wrap: fn(Vec<u8>) -> T,
) -> (mpsc::Receiver<T>, mpsc::Receiver<std::io::Error>, Arc<AtomicU64>)
where
    R: AsyncRead + Unpin + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = mpsc::channel(2);
    let (error_tx, error_rx) = mpsc::channel(1);
    let bytes_read = Arc::new(AtomicU64::new(0));
    let counter = bytes_read.clone();
    tokio::spawn(async move {
        if tx.send(first).await.is_err() {
            return;
        }
        loop {
            let mut chunk = vec![0u8; CHUNK_SIZE];
            match read_full(&mut reader, &mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    chunk.truncate(n);
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    if tx.send(wrap(chunk)).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = error_tx.send(e).await;
                    tx.closed().await;
                    break;
                }
            }
        }
    });
    (rx, error_rx, bytes_read)
}

/// Writes every response chunk until the service ends the stream, failing on a read error of the input.
async fn drain_responses<M, W>(
    mut responses: Streaming<M>,
    chunk_of: fn(M) -> Vec<u8>,
    mut read_errors: mpsc::Receiver<std::io::Error>,
    bytes_read: &AtomicU64,
    writer: &mut W,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, ClientError>
where
    W: AsyncWrite + Unpin,
{
    loop {
        tokio::select! {
            biased;
            Some(e) = read_errors.recv() => return Err(ClientError::Io(format!("reading the input: {e}"))),
            message = responses.message() => match message? {
                Some(message) => {
                    writer.write_all(&chunk_of(message)).await?;
                    progress(bytes_read.load(Ordering::Relaxed));
                }
                None => break,
            },
        }
    }
    writer.flush().await?;
    Ok(bytes_read.load(Ordering::Relaxed))
}

impl KeymeshClient {
    /// Encrypts everything `reader` yields into `writer` in the stream format; returns the plaintext length.
    /// `progress` gets the plaintext bytes read so far.
    pub async fn encrypt_stream<R, W>(
        &self,
        options: &StreamOptions,
        reader: R,
        writer: &mut W,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, ClientError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin,
    {
        if options.via == Via::Local {
            return self.encrypt_locally(options, reader, writer, progress).await;
        }
        let init = pb::EncryptStreamRequest {
            message: Some(encrypt_stream_request::Message::Init(pb::EncryptStreamInit {
                key: options.key.clone(),
                aad: options.associated.aad.clone(),
                encryption_context: options.associated.encryption_context.clone(),
                segment_size: options.segment_size,
            })),
        };
        let chunk = |chunk| pb::EncryptStreamRequest { message: Some(encrypt_stream_request::Message::Chunk(chunk)) };
        let (requests, read_errors, bytes_read) = spawn_reader(reader, init, chunk);
        let request = self.authorized(ReceiverStream::new(requests)).await?;
        let responses = self.crypto_service().encrypt_stream(request).await?.into_inner();
        drain_responses(responses, |m| m.chunk, read_errors, &bytes_read, writer, progress).await
    }

    /// Decrypts a stream (or envelope) from `reader` into `writer`; returns the stream's length. `progress`
    /// gets the stream bytes read so far. On `Err`, discard what was written.
    pub async fn decrypt_stream<R, W>(
        &self,
        options: &StreamOptions,
        reader: R,
        writer: &mut W,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, ClientError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin,
    {
        if options.via == Via::Local {
            return self.decrypt_locally(options, reader, writer, progress).await;
        }
        let init = pb::DecryptStreamRequest {
            message: Some(decrypt_stream_request::Message::Init(pb::DecryptStreamInit {
                key: options.key.clone(),
                aad: options.associated.aad.clone(),
                encryption_context: options.associated.encryption_context.clone(),
            })),
        };
        let chunk = |chunk| pb::DecryptStreamRequest { message: Some(decrypt_stream_request::Message::Chunk(chunk)) };
        let (requests, read_errors, bytes_read) = spawn_reader(reader, init, chunk);
        let request = self.authorized(ReceiverStream::new(requests)).await?;
        let responses = self.crypto_service().decrypt_stream(request).await?.into_inner();
        drain_responses(responses, |m| m.chunk, read_errors, &bytes_read, writer, progress).await
    }

    async fn encrypt_locally<R, W>(
        &self,
        options: &StreamOptions,
        mut reader: R,
        writer: &mut W,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, ClientError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let data_key = self.generate_data_key(&options.key, &options.associated).await?;
        let mut encryptor = options.associated.with_binding(|binding| {
            StreamEncryptor::new(data_key.expose_secret(), data_key.wrapped(), binding, options.segment_size())
        })?;
        writer.write_all(encryptor.header()).await?;
        let mut chunk = Zeroizing::new(vec![0u8; CHUNK_SIZE]);
        let mut out = Vec::new();
        let mut total = 0u64;
        loop {
            let n = read_full(&mut reader, &mut chunk).await?;
            if n == 0 {
                break;
            }
            encryptor.update(&chunk[..n], &mut out)?;
            writer.write_all(&out).await?;
            out.clear();
            total += n as u64;
            progress(total);
        }
        encryptor.finish(&mut out)?;
        writer.write_all(&out).await?;
        writer.flush().await?;
        Ok(total)
    }

    async fn decrypt_locally<R, W>(
        &self,
        options: &StreamOptions,
        mut reader: R,
        writer: &mut W,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, ClientError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut chunk = vec![0u8; CHUNK_SIZE];
        let mut buffer = Vec::new();
        let mut total = 0u64;
        let not_a_stream = || ClientError::Setup("input is not a keymesh stream or envelope".into());
        let (header, used) = loop {
            let n = read_full(&mut reader, &mut chunk).await?;
            if n == 0 {
                return Err(not_a_stream());
            }
            total += n as u64;
            buffer.extend_from_slice(&chunk[..n]);
            if let Some(parsed) = stream::parse_header(&buffer).map_err(|_| not_a_stream())? {
                break parsed;
            }
        };
        let data_key = self.unwrap_data_key(header.wrapped_data_key(), &options.associated, &options.key).await?;
        let mut decryptor = options.associated.with_binding(|binding| header.decryptor(&data_key, binding))?;
        let mut out = Zeroizing::new(Vec::new());
        decryptor.update(&buffer[used..], &mut out)?;
        loop {
            writer.write_all(&out).await?;
            out.clear();
            progress(total);
            let n = read_full(&mut reader, &mut chunk).await?;
            if n == 0 {
                break;
            }
            total += n as u64;
            decryptor.update(&chunk[..n], &mut out)?;
        }
        decryptor.finish(&mut out)?;
        writer.write_all(&out).await?;
        writer.flush().await?;
        Ok(total)
    }

    /// Encrypts the file `input` into `output`, which appears only when the whole stream is written.
    pub async fn encrypt_file(
        &self,
        options: &StreamOptions,
        input: &Path,
        output: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, ClientError> {
        let reader = open_input(input).await?;
        let (temporary, mut writer) = create_output(output).await?;
        let total = self.encrypt_stream(options, reader, &mut writer, progress).await?;
        commit_output(temporary, writer, output).await?;
        Ok(total)
    }

    /// Decrypts the file `input` into `output`, which appears only when the stream verified to its end.
    pub async fn decrypt_file(
        &self,
        options: &StreamOptions,
        input: &Path,
        output: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, ClientError> {
        let reader = open_input(input).await?;
        let (temporary, mut writer) = create_output(output).await?;
        let total = self.decrypt_stream(options, reader, &mut writer, progress).await?;
        commit_output(temporary, writer, output).await?;
        Ok(total)
    }
}

async fn open_input(path: &Path) -> Result<tokio::fs::File, ClientError> {
    tokio::fs::File::open(path).await.map_err(|e| ClientError::Io(format!("{}: {e}", path.display())))
}

/// A temporary file beside `output` (so the final rename stays on one file system).
async fn create_output(output: &Path) -> Result<(tempfile::TempPath, tokio::fs::File), ClientError> {
    let dir = match output.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let temporary = tempfile::Builder::new()
        .prefix(".keymesh-partial-")
        .tempfile_in(dir)
        .map_err(|e| ClientError::Io(format!("{}: {e}", dir.display())))?;
    let (file, path) = temporary.into_parts();
    Ok((path, tokio::fs::File::from_std(file)))
}

async fn commit_output(
    temporary: tempfile::TempPath,
    mut writer: tokio::fs::File,
    output: &Path,
) -> Result<(), ClientError> {
    writer.flush().await?;
    writer.sync_all().await?;
    drop(writer);
    temporary.persist(output).map_err(|e| ClientError::Io(format!("{}: {}", output.display(), e.error)))?;
    Ok(())
}
