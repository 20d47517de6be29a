//! DICOM upper-layer helpers shared by the services that speak DIMSE.
//!
//! - [`accept`]: negotiates an association through Meridian's principal
//!   resolution (called AE → tenant, calling AE + source network →
//!   facility), refusing with the PS3.8 A-ASSOCIATE-RJ reason, then serves
//!   the association until release or abort.
//! - [`command`]: DIMSE command sets (PS3.7 section 9.3), encoded in
//!   implicit VR little endian as PS3.7 section 6.3.1 requires.
//!
//! Today the one service is Verification (C-ECHO, PS3.4 annex A); ingest
//! adds the storage service classes on the same acceptor.

#![forbid(unsafe_code)]

pub mod command;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dicom_ul::pdu::{AssociationRJServiceUserReason, PDataValue, PDataValueType, UserIdentity};
use dicom_ul::{Pdu, ServerAssociationOptions};
use meridian_auth::dimse::{AssociationRejected, resolve_association};
use meridian_auth::{Action, Principal, Resource, authorize};
use meridian_config::Platform;
use tokio::net::TcpStream;

/// The Verification SOP Class (PS3.4 annex A).
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
pub const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

/// Limits of one region's DICOM port.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_pdu_length: u32,
    /// An association silent this long is aborted.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_pdu_length: 64 * 1024, idle_timeout: Duration::from_secs(60) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("association from {peer} refused: {reason}")]
    Refused { peer: SocketAddr, reason: AssociationRejected },
    #[error("association from {peer}: {reason}")]
    Protocol { peer: SocketAddr, reason: String },
}

/// How an association ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub principal: Principal,
    pub echoes: u32,
    /// False when the peer aborted or went silent instead of releasing.
    pub released: bool,
}

/// Access control that asks Meridian who is calling, and remembers the answer.
struct Gate {
    platform: Arc<Platform>,
    region: String,
    peer: SocketAddr,
    outcome: Mutex<Option<Result<Principal, AssociationRejected>>>,
}

// On a reference: the options borrow the gate, and the caller reads its outcome after.
impl dicom_ul::association::server::AccessControl for &Gate {
    fn check_access(
        &self,
        _this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let outcome =
            resolve_association(&self.platform, &self.region, called_ae_title, calling_ae_title, self.peer.ip());
        let reason = match &outcome {
            Ok(_) => None,
            Err(e @ AssociationRejected::CalledAeNotRecognized { .. }) => {
                debug_assert_eq!(e.reason_code(), 7);
                Some(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
            }
            Err(_) => Some(AssociationRJServiceUserReason::CallingAETitleNotRecognized),
        };
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
        reason.map_or(Ok(()), Err)
    }
}

/// Negotiates and serves one association on `socket`.
pub async fn accept(
    socket: TcpStream,
    peer: SocketAddr,
    region: &str,
    platform: Arc<Platform>,
    limits: &Limits,
) -> Result<Served, Error> {
    let protocol = |reason: String| Error::Protocol { peer, reason };
    socket.set_nodelay(true).map_err(|e| protocol(e.to_string()))?;
    let gate = Gate { platform, region: region.to_owned(), peer, outcome: Mutex::new(None) };
    let outcome = {
        let options = ServerAssociationOptions::new()
            .ae_access_control(&gate)
            .ae_title("MERIDIAN")
            .with_abstract_syntax(VERIFICATION)
            .with_transfer_syntax(IMPLICIT_VR_LITTLE_ENDIAN)
            .with_transfer_syntax(EXPLICIT_VR_LITTLE_ENDIAN)
            .max_pdu_length(limits.max_pdu_length)
            .read_timeout(limits.idle_timeout);
        options.establish_async(socket).await
    };
    let resolved = gate.outcome.lock().unwrap_or_else(|p| p.into_inner()).take();
    let (mut association, principal) = match (outcome, resolved) {
        (Ok(a), Some(Ok(p))) => (a, p),
        (_, Some(Err(reason))) => return Err(Error::Refused { peer, reason }),
        (Err(e), _) => return Err(protocol(format!("negotiation failed: {e}"))),
        (Ok(_), None) => return Err(protocol("accepted without access control".into())),
    };
    let tenant = principal.tenant.clone().unwrap_or_default();
    if let Err(denied) = authorize(&principal, Action::Echo, &Resource::Tenant { tenant: &tenant }) {
        let _ = association.abort().await;
        return Err(protocol(denied.to_string()));
    }
    tracing::info!(%peer, region, subject = %principal.subject, "association accepted");

    let mut echoes = 0;
    let mut command = Vec::new();
    loop {
        let pdu = match tokio::time::timeout(limits.idle_timeout, association.receive()).await {
            Err(_) => {
                let _ = association.abort().await;
                return Ok(Served { principal, echoes, released: false });
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "association ended without release");
                return Ok(Served { principal, echoes, released: false });
            }
            Ok(Ok(pdu)) => pdu,
        };
        match pdu {
            Pdu::PData { data } => {
                for value in data {
                    if value.value_type != PDataValueType::Command {
                        // Verification has no data set; nothing else is negotiated.
                        continue;
                    }
                    command.extend_from_slice(&value.data);
                    if !value.is_last {
                        continue;
                    }
                    let request = command::Command::decode(&command).map_err(protocol)?;
                    command.clear();
                    let response = match request.field {
                        command::C_ECHO_RQ => {
                            echoes += 1;
                            command::Command::echo_response(request.message_id, command::STATUS_SUCCESS)
                        }
                        other => {
                            // PS3.7 C.4.2: refused, an operation this SCP does not offer.
                            tracing::info!(%peer, command = other, "unsupported DIMSE command");
                            command::Command::echo_response(request.message_id, command::STATUS_UNRECOGNIZED_OPERATION)
                        }
                    };
                    let pdu = Pdu::PData {
                        data: vec![PDataValue {
                            presentation_context_id: value.presentation_context_id,
                            value_type: PDataValueType::Command,
                            is_last: true,
                            data: response.encode().map_err(protocol)?,
                        }],
                    };
                    association.send(&pdu).await.map_err(|e| protocol(e.to_string()))?;
                }
            }
            Pdu::ReleaseRQ => {
                association.send(&Pdu::ReleaseRP).await.map_err(|e| protocol(e.to_string()))?;
                return Ok(Served { principal, echoes, released: true });
            }
            Pdu::AbortRQ { .. } => {
                return Ok(Served { principal, echoes, released: false });
            }
            other => {
                let _ = association.abort().await;
                return Err(protocol(format!("unexpected PDU {other:?}")));
            }
        }
    }
}
