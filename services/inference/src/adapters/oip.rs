//! The remote runtime: a model served over the Open Inference Protocol v2
//! (`inference.GRPCInferenceService/ModelInfer`) by MLServer, Triton or
//! KServe. A study's slices go as one FP32 tensor `[N, 1, rows, columns]`
//! in `raw_input_contents` (row-major, little-endian), split into calls of
//! at most [`CALL_BYTES`] so no server's default 4 MiB message limit is
//! met. Each call is bounded by the model's timeout; an unavailable server
//! or a timeout is called again with backoff, and after the last retry the
//! triage fails `unreachable` (the study is routed at its normal priority).

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_proto::open_inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use meridian_proto::open_inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use meridian_proto::open_inference::model_infer_response::InferOutputTensor;
use meridian_proto::open_inference::{ModelInferRequest, ModelInferResponse, ModelReadyRequest};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::runtime::RuntimeError;

/// The most input bytes one call carries.
pub const CALL_BYTES: usize = 3 << 20;

/// The first backoff; each retry doubles it, up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How to reach a remote model, as `models/<name>.toml` says.
#[derive(Clone, Debug)]
pub struct RemoteSpec {
    /// `http://host:port` or `https://host:port`.
    pub endpoint: String,
    /// Its name and version on the server (version empty: the server's).
    pub model: String,
    pub version: String,
    /// The input tensor's name, and each output wanted.
    pub input: String,
    pub outputs: Vec<String>,
    pub rows: u32,
    pub columns: u32,
    pub timeout: Duration,
    pub retries: u32,
    /// The PEM of the CA that signs the server's certificate (https).
    pub ca_pem: Option<Vec<u8>>,
}

/// A remote model: a channel connected on first use (a server down at
/// start fails triages, not the start).
#[derive(Clone, Debug)]
pub struct Remote {
    client: GrpcInferenceServiceClient<Channel>,
    spec: RemoteSpec,
}

impl Remote {
    /// Prepares the channel; nothing is dialled yet. Must be called inside
    /// a Tokio runtime.
    pub fn connect(spec: RemoteSpec) -> Result<Remote, RuntimeError> {
        let load = |reason: String| RuntimeError::Load { path: spec.endpoint.clone(), reason };
        let mut endpoint = Endpoint::from_shared(spec.endpoint.clone())
            .map_err(|e| load(format!("not an address: {e}")))?
            .connect_timeout(spec.timeout)
            .timeout(spec.timeout);
        if let Some(pem) = &spec.ca_pem {
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            endpoint = endpoint.tls_config(tls).map_err(|e| load(format!("TLS: {e}")))?;
        }
        let client = GrpcInferenceServiceClient::new(endpoint.connect_lazy());
        Ok(Remote { client, spec })
    }

    pub fn endpoint(&self) -> &str {
        &self.spec.endpoint
    }

    /// Whether the server says the model is ready (ModelReady), one call.
    pub async fn ready(&self) -> Result<bool, RuntimeError> {
        let request = ModelReadyRequest { name: self.spec.model.clone(), version: self.spec.version.clone() };
        let mut client = self.client.clone();
        match tokio::time::timeout(self.spec.timeout, client.model_ready(request)).await {
            Ok(Ok(answer)) => Ok(answer.into_inner().ready),
            Ok(Err(status)) => Err(RuntimeError::Unreachable(self.said(&status))),
            Err(_) => {
                Err(RuntimeError::Unreachable(format!("{}: no answer in {:?}", self.spec.endpoint, self.spec.timeout)))
            }
        }
    }

    /// Runs `slices` (each rows × columns): each output's scores, one per
    /// slice, in order. `id` is the request's id (opaque).
    pub async fn run(&self, slices: &[Vec<f32>], id: &str) -> Result<BTreeMap<String, Vec<f32>>, RuntimeError> {
        let pixels = self.spec.rows as usize * self.spec.columns as usize;
        let per_call = (CALL_BYTES / (pixels * 4).max(1)).max(1);
        let mut scores: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        for (part, chunk) in slices.chunks(per_call).enumerate() {
            let request = self.request(chunk, &format!("{id}/{part}"))?;
            let answer = self.infer(request).await?;
            for (name, values) in read_outputs(&answer, &self.spec.outputs, chunk.len())? {
                scores.entry(name).or_default().extend(values);
            }
        }
        Ok(scores)
    }

    fn request(&self, slices: &[Vec<f32>], id: &str) -> Result<ModelInferRequest, RuntimeError> {
        let pixels = self.spec.rows as usize * self.spec.columns as usize;
        let mut raw = Vec::with_capacity(slices.len() * pixels * 4);
        for (i, s) in slices.iter().enumerate() {
            if s.len() != pixels {
                return Err(RuntimeError::Run(format!("slice {i}: {} values, the input takes {pixels}", s.len())));
            }
            raw.extend(s.iter().flat_map(|v| v.to_le_bytes()));
        }
        let n = i64::try_from(slices.len()).unwrap_or(i64::MAX);
        Ok(ModelInferRequest {
            model_name: self.spec.model.clone(),
            model_version: self.spec.version.clone(),
            id: id.to_owned(),
            parameters: Default::default(),
            inputs: vec![InferInputTensor {
                name: self.spec.input.clone(),
                datatype: "FP32".into(),
                shape: vec![n, 1, i64::from(self.spec.rows), i64::from(self.spec.columns)],
                parameters: Default::default(),
                contents: None,
            }],
            outputs: self
                .spec
                .outputs
                .iter()
                .map(|name| InferRequestedOutputTensor { name: name.clone(), parameters: Default::default() })
                .collect(),
            raw_input_contents: vec![raw],
        })
    }

    /// One ModelInfer, called again with backoff while the server is
    /// unavailable or slow.
    async fn infer(&self, request: ModelInferRequest) -> Result<ModelInferResponse, RuntimeError> {
        let mut backoff = BACKOFF_FIRST;
        let mut attempt = 0;
        loop {
            let mut client = self.client.clone();
            let failure = match tokio::time::timeout(self.spec.timeout, client.model_infer(request.clone())).await {
                Ok(Ok(answer)) => return Ok(answer.into_inner()),
                Ok(Err(status)) if !transient(&status) => return Err(RuntimeError::Run(self.said(&status))),
                Ok(Err(status)) => self.said(&status),
                Err(_) => format!("{}: no answer in {:?}", self.spec.endpoint, self.spec.timeout),
            };
            if attempt >= self.spec.retries {
                let tries = attempt + 1;
                return Err(RuntimeError::Unreachable(format!("{failure} (after {tries} calls)")));
            }
            tracing::debug!(endpoint = %self.spec.endpoint, attempt, %failure, "model server: calling again");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            attempt += 1;
        }
    }

    /// A failed call, named: the endpoint, the model, the status and what
    /// lies under it (a refused connection, an untrusted certificate).
    fn said(&self, status: &tonic::Status) -> String {
        let mut said =
            format!("{} model {}: {:?}: {}", self.spec.endpoint, self.spec.model, status.code(), status.message());
        let mut source = std::error::Error::source(status);
        while let Some(cause) = source {
            said.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        said
    }
}

/// A server busy, restarting or slow, or a connection lost under a call
/// (Unknown with a transport error beneath it, as when the server was
/// restarted between two calls on one connection): worth calling again. An
/// Unknown the server sent has nothing beneath it.
fn transient(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    match status.code() {
        Unavailable | DeadlineExceeded | ResourceExhausted | Aborted | Cancelled => true,
        Unknown => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

/// Each wanted output's `n` scores from an answer: by name, FP32 (or FP64)
/// with `n` elements in a shape `[n]` or `[n, 1, ...]`, from
/// `raw_output_contents` when present, else from `contents`.
pub fn read_outputs(
    answer: &ModelInferResponse,
    wanted: &[String],
    n: usize,
) -> Result<BTreeMap<String, Vec<f32>>, RuntimeError> {
    let mut scores = BTreeMap::new();
    for name in wanted {
        let Some(at) = answer.outputs.iter().position(|o| &o.name == name) else {
            let found: Vec<&str> = answer.outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(RuntimeError::Output(format!("no output {name:?} in the answer (found {})", found.join(", "))));
        };
        let tensor = &answer.outputs[at];
        let elements: i64 = tensor.shape.iter().product();
        let n_i64 = i64::try_from(n).unwrap_or(i64::MAX);
        if tensor.shape.first() != Some(&n_i64) || elements != n_i64 {
            return Err(RuntimeError::Output(format!("{name}: expected shape [{n}], found {:?}", tensor.shape)));
        }
        let values =
            values(tensor, answer.raw_output_contents.get(at).filter(|_| !answer.raw_output_contents.is_empty()))
                .map_err(|e| RuntimeError::Output(format!("{name}: {e}")))?;
        if values.len() != n {
            return Err(RuntimeError::Output(format!("{name}: {} values for shape {:?}", values.len(), tensor.shape)));
        }
        scores.insert(name.clone(), values);
    }
    Ok(scores)
}

fn values(tensor: &InferOutputTensor, raw: Option<&Vec<u8>>) -> Result<Vec<f32>, String> {
    let contents = tensor.contents.as_ref();
    match (tensor.datatype.as_str(), raw) {
        ("FP32", Some(raw)) => {
            if raw.len() % 4 != 0 {
                return Err(format!("{} raw bytes is not a whole number of FP32", raw.len()));
            }
            Ok(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        }
        ("FP64", Some(raw)) => {
            if raw.len() % 8 != 0 {
                return Err(format!("{} raw bytes is not a whole number of FP64", raw.len()));
            }
            Ok(raw
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
                .collect())
        }
        ("FP32", None) => Ok(contents.map(|c| c.fp32_contents.clone()).unwrap_or_default()),
        ("FP64", None) => Ok(contents.map(|c| c.fp64_contents.iter().map(|v| *v as f32).collect()).unwrap_or_default()),
        (other, _) => Err(format!("expected FP32, found {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_proto::open_inference::InferTensorContents;

    fn answer(name: &str, datatype: &str, shape: Vec<i64>, raw: Option<Vec<u8>>, fp32: Vec<f32>) -> ModelInferResponse {
        ModelInferResponse {
            outputs: vec![InferOutputTensor {
                name: name.into(),
                datatype: datatype.into(),
                shape,
                parameters: Default::default(),
                contents: Some(InferTensorContents { fp32_contents: fp32, ..Default::default() }),
            }],
            raw_output_contents: raw.into_iter().collect(),
            ..Default::default()
        }
    }

    #[test]
    fn scores_come_from_raw_bytes_or_typed_contents() {
        let wanted = vec!["ich".to_string()];
        let raw: Vec<u8> = [0.25f32, 0.75].iter().flat_map(|v| v.to_le_bytes()).collect();
        let from_raw = read_outputs(&answer("ich", "FP32", vec![2, 1], Some(raw), vec![]), &wanted, 2).unwrap();
        assert_eq!(from_raw["ich"], vec![0.25, 0.75]);
        let typed = read_outputs(&answer("ich", "FP32", vec![2], None, vec![0.5, 0.125]), &wanted, 2).unwrap();
        assert_eq!(typed["ich"], vec![0.5, 0.125]);
    }

    #[test]
    fn a_wrong_answer_names_the_output_and_what_was_found() {
        let wanted = vec!["ich".to_string()];
        let e = read_outputs(&answer("bleed", "FP32", vec![2], None, vec![0.1, 0.2]), &wanted, 2).unwrap_err();
        assert_eq!(e.to_string(), "model_output: no output \"ich\" in the answer (found bleed)");
        let e = read_outputs(&answer("ich", "FP32", vec![3], None, vec![0.1, 0.2, 0.3]), &wanted, 2).unwrap_err();
        assert_eq!(e.to_string(), "model_output: ich: expected shape [2], found [3]");
        let e = read_outputs(&answer("ich", "INT64", vec![2], None, vec![]), &wanted, 2).unwrap_err();
        assert_eq!(e.to_string(), "model_output: ich: expected FP32, found INT64");
        let e = read_outputs(&answer("ich", "FP32", vec![2], Some(vec![0; 7]), vec![]), &wanted, 2).unwrap_err();
        assert_eq!(e.to_string(), "model_output: ich: 7 raw bytes is not a whole number of FP32");
    }

    #[tokio::test]
    async fn a_server_that_is_not_there_fails_unreachable_after_its_retries() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let remote = Remote::connect(RemoteSpec {
            endpoint: format!("http://127.0.0.1:{port}"),
            model: "ich-demo".into(),
            version: String::new(),
            input: "slices".into(),
            outputs: vec!["ich".into()],
            rows: 2,
            columns: 2,
            timeout: Duration::from_millis(500),
            retries: 2,
            ca_pem: None,
        })
        .unwrap();
        let e = remote.run(&[vec![0.0; 4]], "t").await.unwrap_err();
        let (reason, detail) = e.reason();
        assert_eq!(reason, "unreachable");
        assert!(detail.contains("after 3 calls"), "{detail}");
    }
}
