//! Where orders come in: an MLLP listener for HL7 v2 ORM^O01 / OMI^O23
//! (the sending facility, MSH-4, names the tenant and facility; each
//! message is answered with its ACK once the order is on the log, and a
//! bad one does not close the connection; over TLS when the region has a
//! certificate, where a client certificate presented must be the MSH-4
//! facility's, and a facility may require one), and `POST
//! /fhir/ServiceRequest` on the region's HTTP port (a facility's token;
//! 400 with an OperationOutcome naming the element at fault).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use meridian_auth::{Action, AuthError, Authenticator, Principal, Resource, authorize};
use meridian_config::Platform;
use meridian_events::UnixMicros;
use meridian_region::tls::ServerTls;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::adapters::hl7;
use crate::adapters::hl7_order::{self, Header, Message, Refusal};
use crate::app::{Error, Reporting};
use crate::domain::order::{self, OrderIn};

/// The most one message may be.
const MAX_MESSAGE: usize = 1 << 20;
/// A connection with nothing to say for this long is closed.
const IDLE: Duration = Duration::from_secs(600);

pub struct OrderDesk {
    reporting: Arc<Reporting>,
    platform: Arc<Platform>,
    region: String,
    /// Maps a client certificate to its facility; records refusals.
    authenticator: Arc<Authenticator>,
}

/// Who is on an MLLP connection: where from, and the principal of the
/// client certificate its TLS handshake presented (or why it is none).
#[derive(Clone, Debug, Default)]
pub struct Sender {
    pub peer: Option<std::net::SocketAddr>,
    pub certificate: Option<Result<Principal, AuthError>>,
}

impl OrderDesk {
    pub fn new(
        reporting: Arc<Reporting>,
        platform: Arc<Platform>,
        region: &str,
        authenticator: Arc<Authenticator>,
    ) -> Arc<OrderDesk> {
        Arc::new(OrderDesk { reporting, platform, region: region.to_owned(), authenticator })
    }

    /// The tenant and facility an HL7 sending facility names, among the
    /// tenants homed in this region, and whether the facility must
    /// present its client certificate.
    fn sender(&self, sending_facility: &str) -> Option<(String, String, bool)> {
        self.platform.tenants.values().filter(|t| t.home_regions.contains(&self.region)).find_map(|t| {
            let facility = t.facilities.iter().find(|f| {
                f.name == sending_facility || f.hl7_sending_facilities.iter().any(|s| s == sending_facility)
            })?;
            Some((t.name.clone(), facility.name.clone(), facility.client_certificate_required))
        })
    }

    /// Whether the connection's certificate lets it speak for `facility`
    /// of `tenant`: one presented must be the facility's, and a facility
    /// that requires one gets nothing without it. A refusal is audited.
    fn certificate_speaks_for(
        &self,
        sender: &Sender,
        (tenant, facility, required): (&str, &str, bool),
    ) -> Result<(), String> {
        let (code, reason) = match &sender.certificate {
            Some(Ok(p)) if p.tenant.as_deref() == Some(tenant) && p.facility.as_deref() == Some(facility) => {
                return Ok(());
            }
            Some(Ok(p)) => (
                "CERTIFICATE_NOT_OF_FACILITY",
                format!("the client certificate ({}) does not speak for facility {facility}", p.subject),
            ),
            Some(Err(e)) => ("CERTIFICATE_NOT_OF_FACILITY", e.to_string()),
            None if required => {
                ("CERTIFICATE_REQUIRED", format!("facility {facility} must present its client certificate over TLS"))
            }
            None => return Ok(()),
        };
        self.authenticator.trail().record(meridian_auth::Refusal {
            subject: String::new(),
            principal_kind: "anonymous".into(),
            tenant: Some(tenant.to_owned()),
            group: None,
            action: "submit_order".into(),
            resource_kind: "facility".into(),
            resource: format!("facility {facility}"),
            resource_tenant: Some(tenant.to_owned()),
            reason: reason.clone(),
            code: code.into(),
            network_access_point: sender.peer.map(|p| p.to_string()),
        });
        Err(reason)
    }

    /// Takes one HL7 message from `sender` and answers its ACK.
    pub async fn take_hl7(&self, text: &str, sender: &Sender, now: UnixMicros) -> String {
        let no_header = || Header {
            sending_application: String::new(),
            sending_facility: String::new(),
            message_type: String::new(),
            control_id: String::new(),
        };
        let m = match Message::parse(text) {
            Ok(m) => m,
            Err(r) => return self.refuse(&no_header(), r, now),
        };
        let h = hl7_order::header(&m);
        let Some((tenant, facility, required)) = self.sender(&h.sending_facility) else {
            let refusal = Refusal {
                code: "AR",
                error: (204, "Unknown key identifier"),
                segment: "MSH",
                field: 4,
                text: format!(
                    "MSH-4 {:?} names no facility of a tenant homed in {} (a facility's name or hl7_sending_facilities)",
                    h.sending_facility, self.region
                ),
            };
            return self.refuse(&h, refusal, now);
        };
        if let Err(text) = self.certificate_speaks_for(sender, (&tenant, &facility, required)) {
            let refusal =
                Refusal { code: "AR", error: (204, "Unknown key identifier"), segment: "MSH", field: 4, text };
            return self.refuse(&h, refusal, now);
        }
        let order = match hl7_order::order(&m, &tenant, &facility) {
            Ok(o) => o,
            Err(r) => return self.refuse(&h, r, now),
        };
        match self.reporting.receive_order(order, now).await {
            Ok(receipt) => {
                tracing::info!(region = %self.region, %tenant, %facility, order = %receipt.key, repeated = receipt.repeated, "HL7 order taken");
                hl7_order::ack(&h, None, &self.region, now)
            }
            Err(e) => {
                let (code, error) = match e {
                    Error::NotHomed { .. } => ("AR", (204, "Unknown key identifier")),
                    _ => ("AE", (207, "Application internal error")),
                };
                tracing::warn!(region = %self.region, %tenant, error = %e, "HL7 order not taken");
                let refusal = Refusal { code, error, segment: "MSH", field: 10, text: e.to_string() };
                hl7_order::ack(&h, Some(&refusal), &self.region, now)
            }
        }
    }

    fn refuse(&self, h: &Header, refusal: Refusal, now: UnixMicros) -> String {
        tracing::warn!(
            region = %self.region,
            sending_facility = %h.sending_facility,
            control_id = %h.control_id,
            code = refusal.code,
            segment = refusal.segment,
            field = refusal.field,
            reason = %refusal.text,
            "HL7 order refused"
        );
        hl7_order::ack(h, Some(&refusal), &self.region, now)
    }

    /// Serves MLLP on `listener` (over TLS when `tls` is given) until
    /// `stopping` resolves: one task per connection, each message answered
    /// in turn.
    pub async fn listen(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<ServerTls>,
        stopping: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stopping);
        let Some(tls) = tls else {
            loop {
                tokio::select! {
                    () = &mut stopping => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            let _ = stream.set_nodelay(true);
                            self.clone().serve(stream, Sender { peer: Some(peer), certificate: None });
                        }
                        Err(e) => {
                            tracing::warn!(region = %self.region, error = %e, "accepting an MLLP connection");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                }
            }
        };
        // Handshakes run apart; what arrives here is a verified connection.
        let mut incoming = tls.incoming(listener, "MLLP");
        loop {
            tokio::select! {
                () = &mut stopping => return,
                accepted = incoming.recv() => {
                    let Some((stream, peer)) = accepted else { return };
                    let (_, connection) = stream.get_ref();
                    let certificate = connection
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|c| self.authenticator.certificates().principal(c));
                    self.clone().serve(stream, Sender { peer: Some(peer), certificate });
                }
            }
        }
    }

    /// Serves one connection on its own task.
    fn serve<S>(self: Arc<Self>, stream: S, sender: Sender)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        tokio::spawn(async move {
            let peer = sender.peer;
            if let Err(e) = self.connection(stream, &sender).await {
                tracing::info!(region = %self.region, peer = ?peer, reason = %e, "MLLP connection closed");
            }
        });
    }

    async fn connection<S>(&self, mut stream: S, sender: &Sender) -> Result<(), String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut buffer: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            // A whole frame: VT, the message, FS CR. Bytes before a VT are
            // not ours and are dropped.
            while let Some(message) = next_frame(&mut buffer) {
                let text = String::from_utf8_lossy(&message).into_owned();
                let ack = self.take_hl7(&text, sender, meridian_auth::grpc::arrival_time()).await;
                stream.write_all(&hl7::frame(&ack)).await.map_err(|e| e.to_string())?;
            }
            if buffer.len() > MAX_MESSAGE {
                return Err(format!("a message over {MAX_MESSAGE} bytes"));
            }
            let read = tokio::time::timeout(IDLE, stream.read(&mut chunk)).await.map_err(|_| "idle".to_owned())?;
            match read.map_err(|e| e.to_string())? {
                0 => return Ok(()),
                n => buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Takes a FHIR R4 ServiceRequest from `p` (a facility of the tenant).
    async fn take_service_request(&self, p: &Principal, body: &Value, now: UnixMicros) -> Response {
        let tenant = p.tenant.clone().unwrap_or_default();
        if let Err(denied) = authorize(p, Action::SubmitOrder, &Resource::Tenant { tenant: &tenant }) {
            return outcome(StatusCode::FORBIDDEN, "forbidden", &denied.to_string(), None);
        }
        let facility = p.facility.clone().unwrap_or_default();
        let order = match service_request(body, &tenant, &facility) {
            Ok(o) => o,
            Err((element, why)) => return outcome(StatusCode::BAD_REQUEST, "invalid", &why, Some(element)),
        };
        match self.reporting.receive_order(order, now).await {
            Ok(receipt) => {
                let mut created = body.clone();
                created["id"] = json!(receipt.key.to_string());
                let location = format!("ServiceRequest/{}", receipt.key);
                let status = if receipt.repeated { StatusCode::OK } else { StatusCode::CREATED };
                (
                    status,
                    [("location", location), ("content-type", "application/fhir+json".into())],
                    created.to_string(),
                )
                    .into_response()
            }
            Err(e @ Error::NotHomed { .. }) => outcome(StatusCode::FORBIDDEN, "forbidden", &e.to_string(), None),
            Err(e) => outcome(StatusCode::SERVICE_UNAVAILABLE, "transient", &e.to_string(), None),
        }
    }

    /// `/ServiceRequest` (nested under `/fhir` by the region, behind its
    /// token check).
    pub fn fhir_routes(self: Arc<Self>) -> axum::Router {
        axum::Router::new().route("/ServiceRequest", post(service_request_post)).with_state(self)
    }
}

async fn service_request_post(
    State(desk): State<Arc<OrderDesk>>,
    principal: Principal,
    body: axum::body::Bytes,
) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return outcome(StatusCode::BAD_REQUEST, "structure", &format!("not JSON: {e}"), None),
    };
    desk.take_service_request(&principal, &body, meridian_auth::grpc::arrival_time()).await
}

/// The first whole MLLP frame's content in `buffer`, taken out of it.
pub fn next_frame(buffer: &mut Vec<u8>) -> Option<Vec<u8>> {
    let start = buffer.iter().position(|b| *b == 0x0b)?;
    let end = buffer[start..].windows(2).position(|w| w == [0x1c, 0x0d])? + start;
    let message = buffer[start + 1..end].to_vec();
    buffer.drain(..end + 2);
    Some(message)
}

/// A FHIR R4 OperationOutcome with one error: its issue type (`code`),
/// what was wrong, and the element at fault (FHIRPath), if one.
pub fn operation_outcome(code: &str, diagnostics: &str, element: Option<&str>) -> Value {
    let mut issue = json!({"severity": "error", "code": code, "diagnostics": diagnostics});
    if let Some(element) = element {
        issue["expression"] = json!([element]);
    }
    json!({"resourceType": "OperationOutcome", "issue": [issue]})
}

fn outcome(status: StatusCode, code: &str, diagnostics: &str, element: Option<&str>) -> Response {
    let body = operation_outcome(code, diagnostics, element);
    (status, [("content-type", "application/fhir+json")], body.to_string()).into_response()
}

/// The identifier of `body` whose type is coded `code` (v2-0203: ACSN
/// accession, PLAC placer), and where it is.
fn identifier<'a>(body: &'a Value, code: &str) -> Option<&'a str> {
    body["identifier"].as_array()?.iter().find_map(|i| {
        let coded = i["type"]["coding"].as_array()?.iter().any(|c| c["code"] == code);
        coded.then(|| i["value"].as_str()).flatten()
    })
}

fn text_of(concept: &Value) -> String {
    concept["text"]
        .as_str()
        .or_else(|| concept["coding"][0]["display"].as_str())
        .or_else(|| concept["coding"][0]["code"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// The order a ServiceRequest carries, or the element at fault and why.
pub fn service_request(body: &Value, tenant: &str, facility: &str) -> Result<OrderIn, (&'static str, String)> {
    if body["resourceType"] != "ServiceRequest" {
        return Err(("ServiceRequest.resourceType", format!("{} is not a ServiceRequest", body["resourceType"])));
    }
    for (element, field) in [("ServiceRequest.status", "status"), ("ServiceRequest.intent", "intent")] {
        if body[field].as_str().is_none_or(str::is_empty) {
            return Err((element, format!("{element} is required (R4: 1..1)")));
        }
    }
    let accession = identifier(body, "ACSN").unwrap_or_default().trim().to_owned();
    if accession.is_empty() {
        return Err((
            "ServiceRequest.identifier",
            "an identifier of type ACSN (http://terminology.hl7.org/CodeSystem/v2-0203) is the accession number, and is required"
                .into(),
        ));
    }
    let priority = match body["priority"].as_str() {
        None | Some("routine") => "routine",
        Some("urgent" | "asap") => "urgent",
        Some("stat") => "stat",
        Some(other) => {
            return Err(("ServiceRequest.priority", format!("{other:?} is not routine, urgent, asap or stat")));
        }
    };
    let patient = body["subject"]["identifier"]["value"].as_str().unwrap_or_default().to_owned();
    if patient.is_empty() && body["subject"]["reference"].as_str().is_none_or(str::is_empty) {
        return Err(("ServiceRequest.subject", "ServiceRequest.subject is required (R4: 1..1)".into()));
    }
    let requester = &body["requester"];
    let clinician =
        requester["display"].as_str().or_else(|| requester["reference"].as_str()).unwrap_or_default().to_owned();
    let reason = body["reasonCode"].as_array().and_then(|r| r.first()).map(text_of).unwrap_or_default();
    Ok(OrderIn {
        tenant: tenant.to_owned(),
        facility: facility.to_owned(),
        accession,
        placer_order: identifier(body, "PLAC").unwrap_or_default().to_owned(),
        patient_id: if patient.is_empty() {
            body["subject"]["reference"].as_str().unwrap_or_default().to_owned()
        } else {
            patient
        },
        issuer: body["subject"]["identifier"]["system"].as_str().unwrap_or_default().to_owned(),
        ordering_clinician: clinician,
        priority: order::priority(priority).unwrap_or("routine").to_owned(),
        reason,
        procedure: text_of(&body["code"]),
        source: "fhir",
        message_id: body["id"].as_str().unwrap_or_default().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn request() -> Value {
        json!({
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "priority": "stat",
            "identifier": [
                {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                 "system": "urn:acme:accession", "value": "ACC-9001"},
                {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC"}]},
                 "value": "PO-77"}
            ],
            "code": {"text": "CT head without contrast"},
            "subject": {"identifier": {"system": "urn:acme:mrn", "value": "MRN-0042"}},
            "requester": {"display": "Dr Sam Lee"},
            "reasonCode": [{"text": "Fall, rule out bleed"}]
        })
    }

    #[test]
    fn a_service_request_gives_its_accession_priority_and_requester() {
        let o = service_request(&request(), "acme", "acme-general").unwrap();
        assert_eq!((o.accession.as_str(), o.priority.as_str(), o.placer_order.as_str()), ("ACC-9001", "stat", "PO-77"));
        assert_eq!((o.patient_id.as_str(), o.ordering_clinician.as_str()), ("MRN-0042", "Dr Sam Lee"));
        assert_eq!((o.reason.as_str(), o.procedure.as_str()), ("Fall, rule out bleed", "CT head without contrast"));
    }

    #[test]
    fn a_bad_service_request_names_the_element() {
        let mut r = request();
        r["identifier"] = json!([]);
        assert_eq!(service_request(&r, "acme", "f").unwrap_err().0, "ServiceRequest.identifier");
        let mut r = request();
        r["priority"] = json!("whenever");
        assert_eq!(service_request(&r, "acme", "f").unwrap_err().0, "ServiceRequest.priority");
        let mut r = request();
        r.as_object_mut().unwrap().remove("intent");
        assert_eq!(service_request(&r, "acme", "f").unwrap_err().0, "ServiceRequest.intent");
    }

    #[test]
    fn frames_are_taken_whole_and_in_order() {
        let mut buffer = b"noise\x0bA|1\x1c\x0d\x0bB|2\x1c".to_vec();
        assert_eq!(next_frame(&mut buffer).as_deref(), Some(&b"A|1"[..]));
        assert_eq!(next_frame(&mut buffer), None, "the second is not whole yet");
        buffer.push(0x0d);
        assert_eq!(next_frame(&mut buffer).as_deref(), Some(&b"B|2"[..]));
        assert!(buffer.is_empty());
    }
}
