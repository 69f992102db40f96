//! WatchKeyChanges (internal): crypto-service learns which keys changed so it drops their cached material
//! at once instead of waiting for its TTL. The first message says "reset" (drop everything: changes made
//! while the stream was down were missed), and so does any message after this side fell behind.

use std::pin::Pin;

use keymesh_mesh::{PeerIdentity, ServiceName};
use keymesh_proto::v1 as pb;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::KeyRpc;

/// The response stream.
pub type ChangeStream = Pin<Box<dyn Stream<Item = Result<pb::WatchKeyChangesResponse, Status>> + Send + 'static>>;

impl KeyRpc {
    pub(super) fn handle_watch_key_changes(
        &self,
        request: Request<pb::WatchKeyChangesRequest>,
    ) -> Result<Response<ChangeStream>, Status> {
        PeerIdentity::from_request(&request)?.require(ServiceName::CryptoService, "KeyService.WatchKeyChanges")?;
        let mut changes = self.store.feed().subscribe();
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        // The task ends when the client goes away (the send fails) or the feed closes.
        tokio::spawn(async move {
            if sender.send(Ok(pb::WatchKeyChangesResponse { reset: true, key_ids: Vec::new() })).await.is_err() {
                return;
            }
            loop {
                let message = match changes.recv().await {
                    Ok(change) => {
                        let mut key_ids = vec![change.key_id.clone()];
                        // Batch whatever else is already queued.
                        while let Ok(more) = changes.try_recv() {
                            key_ids.push(more.key_id.clone());
                        }
                        pb::WatchKeyChangesResponse { reset: false, key_ids }
                    }
                    Err(RecvError::Lagged(_)) => pb::WatchKeyChangesResponse { reset: true, key_ids: Vec::new() },
                    Err(RecvError::Closed) => return,
                };
                if sender.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}
