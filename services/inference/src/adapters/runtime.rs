//! A model's runtime, embedded ([`Embedded`], tract in process) or remote
//! ([`Remote`], the Open Inference Protocol v2): both take a study's
//! slices and give each named output's score per slice.

use std::collections::BTreeMap;
use std::sync::Arc;

pub use super::oip::Remote;
pub use super::onnx::Embedded;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{path}: the model does not load: {reason}")]
    Load { path: String, reason: String },
    #[error("model_output: {0}")]
    Output(String),
    #[error("run: {0}")]
    Run(String),
    /// The server did not answer through every retry.
    #[error("unreachable: {0}")]
    Unreachable(String),
}

impl RuntimeError {
    /// The reason code an AiTriageFailed carries, and its detail.
    pub fn reason(&self) -> (&'static str, String) {
        match self {
            RuntimeError::Output(d) => ("model_output", d.clone()),
            RuntimeError::Unreachable(d) => ("unreachable", d.clone()),
            other => ("run", other.to_string()),
        }
    }
}

/// Where a model runs.
#[derive(Clone, Debug)]
pub enum Runtime {
    Embedded(Arc<Embedded>),
    Remote(Arc<Remote>),
}

impl Runtime {
    /// Runs `slices` (each rows × columns): each output's scores, one per
    /// slice. `id` names the call to a remote server (an opaque id: no PHI
    /// leaves in a request's metadata). The embedded model runs on a
    /// blocking thread.
    pub async fn run(&self, slices: Vec<Vec<f32>>, id: &str) -> Result<BTreeMap<String, Vec<f32>>, RuntimeError> {
        match self {
            Runtime::Embedded(model) => {
                let model = model.clone();
                tokio::task::spawn_blocking(move || model.run(&slices))
                    .await
                    .map_err(|e| RuntimeError::Run(format!("the model's thread: {e}")))?
            }
            Runtime::Remote(model) => model.run(&slices, id).await,
        }
    }

    /// Where it runs, as ListModels shows it.
    pub fn describe(&self) -> String {
        match self {
            Runtime::Embedded(_) => "embedded".into(),
            Runtime::Remote(m) => format!("remote {}", m.endpoint()),
        }
    }
}
