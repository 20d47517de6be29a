//! The receivers a report is sent to: an HL7 v2 listener over MLLP (the
//! ORU^R01, then its ACK), a FHIR R4 server (a conditional update of the
//! DiagnosticReport). What comes back decides: accepted; refused for
//! good (AR, an HTTP 4xx but 408 and 429) to the dead-letter view; or
//! anything else, tried again after a backoff.

use std::time::Duration;

use meridian_config::{DeliveryEndpoint, DeliveryKind};
use meridian_events::UnixMicros;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::adapters::{fhir, hl7};
use crate::domain::delivery::Outcome;
use crate::domain::message::ReportMessage;

/// How long a receiver has to connect and answer.
const TIMEOUT: Duration = Duration::from_secs(15);
/// The most an ACK may be.
const MAX_ACK: usize = 64 * 1024;

pub struct Receivers {
    http: reqwest::Client,
    /// (tenant, endpoint) → bearer token of a FHIR receiver.
    tokens: meridian_region::DeliveryTokens,
}

impl Receivers {
    pub fn new(tokens: meridian_region::DeliveryTokens) -> Result<Receivers, String> {
        let http = reqwest::Client::builder().timeout(TIMEOUT).build().map_err(|e| e.to_string())?;
        Ok(Receivers { http, tokens })
    }

    /// Sends `message` to `endpoint`; `control_id` and `at` make the
    /// message the same on every attempt.
    pub async fn send(
        &self,
        endpoint: &DeliveryEndpoint,
        message: &ReportMessage,
        control_id: &str,
        at: UnixMicros,
        sending: (&str, &str),
    ) -> Outcome {
        match endpoint.kind {
            DeliveryKind::Hl7Mllp => {
                let receiving = (
                    endpoint.receiving_application.as_deref().unwrap_or(""),
                    endpoint.receiving_facility.as_deref().unwrap_or(""),
                );
                let oru = hl7::oru_r01(message, control_id, &hl7::Parties { sending, receiving }, at);
                mllp(&endpoint.address, &oru, control_id).await
            }
            DeliveryKind::Fhir => {
                let token = self.tokens.get(&(message.tenant.clone(), endpoint.name.clone()));
                self.fhir(&endpoint.address, message, token.map(String::as_str)).await
            }
        }
    }

    async fn fhir(&self, base: &str, message: &ReportMessage, token: Option<&str>) -> Outcome {
        let url = fhir::conditional_update_url(base, message);
        let body = fhir::diagnostic_report(message).to_string();
        let mut put = self
            .http
            .put(&url)
            .header("content-type", "application/fhir+json")
            .header("accept", "application/fhir+json");
        if let Some(token) = token {
            put = put.bearer_auth(token);
        }
        let sent = put.body(body).send().await;
        match sent {
            Ok(r) if r.status().is_success() => Outcome::Delivered(r.status().as_u16().to_string()),
            Ok(r) => {
                let status = r.status();
                let said: String = r.text().await.unwrap_or_default().chars().take(300).collect();
                let retry = status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
                Outcome::Failed { error: format!("HTTP {status}: {said}"), permanent: !retry }
            }
            Err(e) => Outcome::Failed { error: format!("{url}: {e}"), permanent: false },
        }
    }
}

/// One message over MLLP and its ACK.
async fn mllp(address: &str, message: &str, control_id: &str) -> Outcome {
    let retry = |error: String| Outcome::Failed { error, permanent: false };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.map_err(|e| format!("connecting: {e}"))?;
        stream.write_all(&hl7::frame(message)).await.map_err(|e| format!("sending: {e}"))?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.map_err(|e| format!("reading the ACK: {e}"))?;
            if n == 0 {
                return Err("the listener closed before its ACK".to_owned());
            }
            answer.extend_from_slice(&chunk[..n]);
            if let Some(end) = answer.iter().position(|b| *b == 0x1c) {
                let start = usize::from(answer.first() == Some(&0x0b));
                return Ok(String::from_utf8_lossy(&answer[start..end]).into_owned());
            }
            if answer.len() > MAX_ACK {
                return Err("an ACK over 64 KiB".to_owned());
            }
        }
    };
    let answer = match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return retry(format!("{address}: {e}")),
        Err(_) => return retry(format!("{address}: no ACK within {} s", TIMEOUT.as_secs())),
    };
    match hl7::ack(&answer) {
        Ok(ack) if ack.control_id != control_id => {
            retry(format!("the ACK answers {:?}, not {control_id:?}", ack.control_id))
        }
        Ok(ack) => match ack.code.as_str() {
            "AA" | "CA" => Outcome::Delivered(ack.code),
            "AR" | "CR" => Outcome::Failed { error: format!("{}: {}", ack.code, ack.text), permanent: true },
            _ => retry(format!("{}: {}", ack.code, ack.text)),
        },
        Err(e) => retry(format!("{address}: {e}")),
    }
}
