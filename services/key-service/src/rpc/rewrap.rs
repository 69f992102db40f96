//! RewrapKeys: the caller's tenant's share of a KEK re-wrap, with progress streamed back. The run belongs
//! to key-service, not to the stream: a client that goes away does not stop it. Calling again takes over an
//! unfinished job from its cursor (the old runner stops at its next save) or starts a finished one afresh.

use std::pin::Pin;

use keymesh_proto::v1 as pb;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{KeyRpc, MANAGERS};
use crate::rewrap::{self, Progress};

/// The response stream.
pub type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::RewrapKeysResponse, Status>> + Send + 'static>>;

impl KeyRpc {
    pub(super) async fn handle_rewrap_keys(
        &self,
        request: Request<pb::RewrapKeysRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        let (claims, audit) = self.authorize(&request, "RewrapKeys", MANAGERS).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        let store = self.store.clone();
        let sink = self.audit.clone();
        tokio::spawn(async move {
            let progress_sender = sender.clone();
            let result = rewrap::run(&store, Some(&claims.tenant), move |progress| {
                // A slow or departed reader misses intermediate reports, never the run; the final report
                // is sent below, with the run's outcome.
                if !progress.done {
                    let _ = progress_sender.try_send(Ok(to_proto(progress)));
                }
            })
            .await
            .map(|progress| to_proto(&progress));
            let _ = sender.send(audit.finish(&sink, result).await.map(Response::into_inner)).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}

fn to_proto(progress: &Progress) -> pb::RewrapKeysResponse {
    pb::RewrapKeysResponse {
        keys_total: progress.keys_total,
        keys_done: progress.keys_done,
        versions_rewrapped: progress.versions_rewrapped,
        versions_current: progress.versions_current,
        versions_failed: progress.versions_failed,
        resumed: progress.resumed,
        done: progress.done,
        target: progress.target.clone(),
        last_error: progress.last_error.clone().unwrap_or_default(),
    }
}
