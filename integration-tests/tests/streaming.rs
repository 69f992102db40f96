//! EncryptStream/DecryptStream, client-side envelopes and the unary size limit, through the real services:
//! streams round-trip at segment boundaries; a stream made by the service opens in the client with its data
//! key, in an independent implementation (`scripts/byok.py`) and back, and a client's envelope opens in the
//! service; truncated, reordered, duplicated, spliced and flipped streams are refused; the CLI streams files;
//! and a 1 GiB stream passes through crypto-service in constant memory.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use integration_tests::{Mesh, byok, hex};
use keymesh_client::{
    KeymeshClient,
    envelope::{Associated, read_header},
    streaming::{StreamOptions, Via},
};
use keymesh_mesh::ServiceName;
use keymesh_proto::v1 as pb;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const SEGMENT: usize = 4096;

fn associated() -> Associated {
    Associated { aad: b"object-42".to_vec(), encryption_context: [("bucket".to_owned(), "invoices".to_owned())].into() }
}

fn options(via: Via) -> StreamOptions {
    StreamOptions { key: "streams".into(), associated: associated(), segment_size: SEGMENT as u32, via }
}

fn sample(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 % 251) as u8).collect()
}

async fn encrypt(client: &KeymeshClient, options: &StreamOptions, plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    client.encrypt_stream(options, std::io::Cursor::new(plaintext.to_vec()), &mut out, &mut |_| {}).await.unwrap();
    out
}

async fn decrypt(client: &KeymeshClient, options: &StreamOptions, stream: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    client
        .decrypt_stream(options, std::io::Cursor::new(stream.to_vec()), &mut out, &mut |_| {})
        .await
        .map(|_| out)
        .map_err(|e| e.to_string())
}

/// The stream cut into its header and sealed segments.
fn split(stream: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let (header, used) = read_header(stream).unwrap();
    let sealed = header.segment_size() + 16;
    (stream[..used].to_vec(), stream[used..].chunks(sealed).map(<[u8]>::to_vec).collect())
}

fn join(header: &[u8], segments: &[&Vec<u8>]) -> Vec<u8> {
    let mut out = header.to_vec();
    for segment in segments {
        out.extend_from_slice(segment);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_envelopes_round_trip_across_service_client_and_an_independent_implementation() {
    let mesh =
        Mesh::start(&[], &[(ServiceName::CryptoService, "KEYMESH_CRYPTO_SERVICE__UNARY_LIMIT_BYTES", "65536")]).await;
    let admin = mesh.admin_client();
    admin.create_key("streams").await.unwrap();

    for len in [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT, 70_001] {
        let plaintext = sample(len);
        let by_service = encrypt(&admin, &options(Via::Service), &plaintext).await;
        let by_client = encrypt(&admin, &options(Via::Local), &plaintext).await;
        for (made, stream) in [("service", &by_service), ("client", &by_client)] {
            for via in [Via::Service, Via::Local] {
                let opened = decrypt(&admin, &options(via), stream).await;
                assert_eq!(opened.as_deref(), Ok(&plaintext[..]), "{len} bytes made by the {made}, opened {via:?}");
            }
        }
    }

    // The independent implementation opens a service stream with the data key from its header (which
    // Decrypt gives to whoever may decrypt under the key).
    let plaintext = sample(5 * SEGMENT + 77);
    let stream = encrypt(&admin, &options(Via::Service), &plaintext).await;
    let (header, _) = read_header(&stream).unwrap();
    let data_key = admin.unwrap_data_key(header.wrapped_data_key(), &associated(), "streams").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (stream_file, plain_file) = (dir.path().join("s.kms"), dir.path().join("s.out"));
    std::fs::write(&stream_file, &stream).unwrap();
    let line = byok(&[
        "open-stream",
        "--key-hex",
        &hex(data_key.expose_secret()),
        "--stream-file",
        stream_file.to_str().unwrap(),
        "--aad-hex",
        &hex(b"object-42"),
        "--context-json",
        r#"{"bucket":"invoices"}"#,
        "--out-file",
        plain_file.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&plain_file).unwrap(), plaintext);
    assert!(line.ends_with(&format!(" {}", plaintext.len())), "{line}");

    // A data key used by the client's envelope helper: its envelope opens in the service, and its wrapped
    // form is a ciphertext that Decrypt opens to the same key.
    let data_key = admin.generate_data_key("streams", &associated()).await.unwrap();
    let envelope = data_key.seal(&associated(), b"sealed by the client").unwrap();
    assert_eq!(decrypt(&admin, &options(Via::Service), &envelope).await.as_deref(), Ok(&b"sealed by the client"[..]));
    let unwrapped = admin.unwrap_data_key(data_key.wrapped(), &associated(), "").await.unwrap();
    assert_eq!(unwrapped.expose_secret(), data_key.expose_secret().expose_secret());
    assert_eq!(
        admin
            .open_envelope(&by_service_of(&admin, b"made by the service").await, &associated(), "")
            .await
            .unwrap()
            .to_vec(),
        b"made by the service"
    );

    // Tampering: every form of reassembly and any flipped bit fails, in the service and in the client.
    let (head, segments) = split(&stream);
    assert_eq!(segments.len(), 6);
    let other = encrypt(&admin, &options(Via::Service), &plaintext).await;
    let (other_head, other_segments) = split(&other);
    let s = &segments;
    let mut cases = vec![
        ("the last segment dropped", join(&head, &[&s[0], &s[1], &s[2], &s[3], &s[4]])),
        ("a middle segment dropped", join(&head, &[&s[0], &s[2], &s[3], &s[4], &s[5]])),
        ("two segments swapped", join(&head, &[&s[1], &s[0], &s[2], &s[3], &s[4], &s[5]])),
        ("a segment duplicated", join(&head, &[&s[0], &s[1], &s[1], &s[2], &s[3], &s[4], &s[5]])),
        ("a segment from another stream", join(&head, &[&s[0], &other_segments[1], &s[2], &s[3], &s[4], &s[5]])),
        ("another stream's header", join(&other_head, &s.iter().collect::<Vec<_>>())),
        ("the final segment repeated", join(&head, &[&s[0], &s[1], &s[2], &s[3], &s[4], &s[5], &s[5]])),
        ("cut inside a segment", stream[..stream.len() - 100].to_vec()),
        ("the header alone", head.clone()),
        ("nothing", Vec::new()),
    ];
    for i in (0..stream.len()).step_by(499).chain([0, 1, 2, head.len() - 1, head.len(), stream.len() - 1]) {
        let mut flipped = stream.clone();
        flipped[i] ^= 0x10;
        cases.push(("a flipped bit", flipped));
    }
    for (what, bad) in &cases {
        for via in [Via::Service, Via::Local] {
            let refused = decrypt(&admin, &options(via), bad).await;
            assert!(refused.is_err(), "{what} was accepted ({via:?})");
        }
        let refused = decrypt(&admin, &options(Via::Service), bad).await.unwrap_err();
        assert!(refused.contains("decryption failed") || refused.contains("not a keymesh stream"), "{what}: {refused}");
    }
    // A stream under another key than the caller expects gets the one non-opaque error, both ways.
    for via in [Via::Service, Via::Local] {
        let mut other_key = options(via);
        other_key.key = "payments".into();
        let refused = decrypt(&admin, &other_key, &stream).await.unwrap_err();
        assert!(refused.contains("context mismatch") && refused.contains("payments"), "{via:?}: {refused}");
    }
    let mut wrong_aad = options(Via::Service);
    wrong_aad.associated.aad = b"object-43".to_vec();
    assert!(decrypt(&admin, &wrong_aad, &stream).await.is_err(), "another AAD opened the stream");

    // Bad requests: each a clear INVALID_ARGUMENT.
    let mut tiny = options(Via::Service);
    tiny.segment_size = 100;
    let mut out = Vec::new();
    let refused =
        admin.encrypt_stream(&tiny, std::io::Cursor::new(vec![1u8; 10]), &mut out, &mut |_| {}).await.unwrap_err();
    assert!(refused.to_string().contains("segment_size") && refused.to_string().contains("4096"), "{refused}");
    let chunk_first = tokio_stream::iter([pb::EncryptStreamRequest {
        message: Some(pb::encrypt_stream_request::Message::Chunk(b"no init".to_vec())),
    }]);
    let refused = admin.crypto_service().encrypt_stream(admin.authorized(chunk_first).await.unwrap()).await.err();
    let refused = refused.expect("a stream without init was accepted");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("init must be the first message"), "{refused:?}");
    let mut unknown = options(Via::Service);
    unknown.key = "no-such-key".into();
    let refused = admin.encrypt_stream(&unknown, std::io::Cursor::new(vec![1u8; 10]), &mut out, &mut |_| {}).await;
    assert!(refused.unwrap_err().to_string().contains("not found"));

    // The unary limit (configured to 64 KiB here) refuses more, pointing to streaming.
    let unary = |plaintext: Vec<u8>| {
        let admin = &admin;
        async move {
            let request = pb::EncryptRequest { key: "streams".into(), plaintext, ..Default::default() };
            admin.crypto_service().encrypt(admin.authorized(request).await.unwrap()).await
        }
    };
    assert!(unary(vec![0; 65_536]).await.is_ok());
    let refused = unary(vec![0; 65_537]).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("65536") && refused.message().contains("EncryptStream"), "{refused:?}");
}

async fn by_service_of(client: &KeymeshClient, plaintext: &[u8]) -> Vec<u8> {
    let mut options = options(Via::Service);
    options.segment_size = 0;
    encrypt(client, &options, plaintext).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_streams_files_and_leaves_no_output_when_a_stream_is_bad() {
    let mesh = Mesh::start(&[], &[]).await;
    mesh.admin_client().create_key("files").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let plaintext = sample(3 * 1024 * 1024 + 5);
    std::fs::write(path("plain"), &plaintext).unwrap();
    let run = |args: Vec<String>| {
        let mut command = mesh.cli();
        command.args(&args);
        async move {
            let output = command.output().await.unwrap();
            (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
        }
    };
    let context = ["--aad", "a", "--context", "team=billing"].map(str::to_owned);
    for (flag, name) in [(None, "service"), (Some("--local"), "local")] {
        let mut encrypt = vec!["encrypt", "--key", "files", "--in", &path("plain"), "--out", &path(name)]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        encrypt.extend(context.clone());
        encrypt.extend(flag.map(str::to_owned));
        let (ok, stderr) = run(encrypt).await;
        assert!(ok, "encrypt {name}: {stderr}");
        assert!(stderr.contains("encrypted 3145733 bytes"), "{stderr}");
        // Each way of decrypting opens each way of encrypting.
        for (decrypt_flag, out) in [(None, "via-service"), (Some("--local"), "via-local")] {
            let target = path(&format!("{name}.{out}"));
            let mut decrypt = vec!["decrypt".to_owned(), "--in".into(), path(name), "--out".into(), target.clone()];
            decrypt.extend(context.clone());
            decrypt.extend(decrypt_flag.map(str::to_owned));
            let (ok, stderr) = run(decrypt).await;
            assert!(ok, "decrypt {name} {out}: {stderr}");
            assert_eq!(std::fs::read(&target).unwrap(), plaintext, "{name} {out}");
        }
    }
    // A stream cut short: decryption fails, and no output file appears (nor a leftover temporary file).
    let stream = std::fs::read(path("service")).unwrap();
    std::fs::write(path("cut"), &stream[..stream.len() - (1 << 20)]).unwrap();
    for local in [false, true] {
        let mut decrypt = vec!["decrypt".to_owned(), "--in".into(), path("cut"), "--out".into(), path("cut.out")];
        decrypt.extend(context.clone());
        decrypt.extend(local.then(|| "--local".to_owned()));
        let (ok, stderr) = run(decrypt).await;
        assert!(!ok && stderr.contains("decryption failed"), "local {local}: {stderr}");
        assert!(!dir.path().join("cut.out").exists());
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(".keymesh-partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// An endless-looking input of `remaining` bytes: a prime-length pattern, so no two segments repeat.
struct Pattern {
    block: Vec<u8>,
    offset: usize,
    remaining: u64,
}

impl Pattern {
    fn new(len: u64) -> Self {
        Self { block: sample(1_000_003), offset: 0, remaining: len }
    }
}

impl AsyncRead for Pattern {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let n = buf.remaining().min(this.block.len() - this.offset).min(this.remaining as usize);
        buf.put_slice(&this.block[this.offset..this.offset + n]);
        this.offset = (this.offset + n) % this.block.len();
        this.remaining -= n as u64;
        Poll::Ready(Ok(()))
    }
}

/// A writer that only hashes.
struct Digest(openssl::sha::Sha256, u64);

impl AsyncWrite for Digest {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.0.update(buf);
        self.1 += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_streams_through_crypto_service_in_constant_memory() {
    const LEN: u64 = 1 << 30;
    let mut mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    admin.create_key("streams").await.unwrap();
    let pid = mesh.child(ServiceName::CryptoService).id().unwrap();
    let before = peak_rss_kib(pid);

    // Encrypt and decrypt at once: EncryptStream's output is DecryptStream's input, through a pipe.
    let mut expected = openssl::sha::Sha256::new();
    let mut pattern = Pattern::new(LEN);
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let mut read = ReadBuf::new(&mut buffer);
        let _ = Pin::new(&mut pattern).poll_read(&mut Context::from_waker(std::task::Waker::noop()), &mut read);
        if read.filled().is_empty() {
            break;
        }
        expected.update(read.filled());
    }
    let started = std::time::Instant::now();
    let (mut pipe_in, pipe_out) = tokio::io::duplex(1 << 20);
    let options = StreamOptions { key: "streams".into(), associated: associated(), ..Default::default() };
    let encrypting = async {
        let n = admin.encrypt_stream(&options, Pattern::new(LEN), &mut pipe_in, &mut |_| {}).await;
        drop(pipe_in);
        n
    };
    let mut digest = Digest(openssl::sha::Sha256::new(), 0);
    let mut no_progress = |_| {};
    let decrypting = admin.decrypt_stream(&options, pipe_out, &mut digest, &mut no_progress);
    let (encrypted, decrypted) = tokio::join!(encrypting, decrypting);
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(encrypted.unwrap(), LEN);
    decrypted.unwrap();
    assert_eq!(digest.1, LEN);
    assert_eq!(digest.0.finish(), expected.finish(), "the plaintext came back changed");
    let peak = peak_rss_kib(pid);
    eprintln!(
        "1 GiB encrypted and decrypted at once in {seconds:.1} s ({:.0} MB/s each way); crypto-service peak RSS \
         {} MiB (before the stream: {} MiB)",
        LEN as f64 / seconds / 1e6,
        peak / 1024,
        before / 1024
    );
    assert!(peak < 100 * 1024, "crypto-service peaked at {} MiB of RSS", peak / 1024);
}
