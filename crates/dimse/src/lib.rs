//! DICOM upper-layer helpers shared by the services that speak DIMSE.
//!
//! - [`accept`]: negotiates an association through Meridian's principal
//!   resolution (called AE → tenant, calling AE + source network →
//!   facility), refusing with the PS3.8 A-ASSOCIATE-RJ reason, then serves
//!   the association until release or abort.
//! - [`command`]: DIMSE command sets (PS3.7 section 9.3), encoded in
//!   implicit VR little endian as PS3.7 section 6.3.1 requires.
//!
//! Services: Verification (C-ECHO, PS3.4 annex A) and, when a
//! [`StoreService`] is given, Storage (C-STORE, PS3.4 annex B) for every
//! storage SOP class ([`storage_classes`]) in the transfer syntaxes a
//! study is stored in as received ([`STORED_TRANSFER_SYNTAXES`]); any other
//! transfer syntax is refused at negotiation, not per instance.

#![forbid(unsafe_code)]

pub mod command;
pub mod storage_classes;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dicom_ul::association::AsyncServerAssociation;
use dicom_ul::pdu::{AssociationRJServiceUserReason, PDataValue, PDataValueType, UserIdentity};
use dicom_ul::{Pdu, ServerAssociationOptions};
use meridian_auth::dimse::{AssociationRejected, Caller, resolve_association};
use meridian_auth::{Action, Authenticator, PresentedCertificate, Principal, Resource, authorize};
use meridian_config::Platform;
use tokio::net::TcpStream;

/// The Verification SOP Class (PS3.4 annex A).
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
pub const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

/// The transfer syntaxes instances are stored in as received (PS3.5
/// annex A): implicit and explicit VR little endian, explicit big endian,
/// deflated, JPEG baseline and lossless, JPEG-LS, JPEG 2000, RLE.
pub const STORED_TRANSFER_SYNTAXES: &[&str] = &[
    IMPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    "1.2.840.10008.1.2.1.99", // deflated explicit VR little endian
    "1.2.840.10008.1.2.2",    // explicit VR big endian (retired, still sent)
    "1.2.840.10008.1.2.4.50", // JPEG baseline
    "1.2.840.10008.1.2.4.51", // JPEG extended
    "1.2.840.10008.1.2.4.57", // JPEG lossless
    "1.2.840.10008.1.2.4.70", // JPEG lossless, first-order prediction
    "1.2.840.10008.1.2.4.80", // JPEG-LS lossless
    "1.2.840.10008.1.2.4.81", // JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90", // JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91", // JPEG 2000
    "1.2.840.10008.1.2.5",    // RLE lossless
];

/// One instance a peer sent with C-STORE.
#[derive(Clone, Debug)]
pub struct Instance {
    /// Affected SOP Class UID of the command.
    pub sop_class: String,
    /// Affected SOP Instance UID of the command.
    pub sop_instance: String,
    /// The presentation context's transfer syntax: the data set's encoding.
    pub transfer_syntax: String,
    /// The data set as received.
    pub data_set: Vec<u8>,
}

/// Who sent an association's instances.
#[derive(Clone, Debug)]
pub struct Sender {
    pub principal: Principal,
    pub calling_ae_title: String,
    pub called_ae_title: String,
    pub peer: SocketAddr,
}

/// Stores what C-STORE brings. Returns the DIMSE status to answer with;
/// success only once the instance is durable.
#[async_trait::async_trait]
pub trait StoreService: Send + Sync {
    async fn store(&self, sender: &Sender, instance: Instance) -> u16;

    /// A data set over [`Limits::max_instance_bytes`] was discarded; says
    /// so (e.g. records the refusal) and returns the status to answer.
    async fn too_large(&self, _sender: &Sender, _sop_class: &str, _size: usize) -> u16 {
        command::STATUS_OUT_OF_RESOURCES
    }
}

/// Limits of one region's DICOM port.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_pdu_length: u32,
    /// An association silent this long is aborted.
    pub idle_timeout: Duration,
    /// The largest data set one C-STORE may bring; a larger one is read to
    /// its end, discarded and answered out of resources (0xA700). It bounds
    /// an association's memory, which the peer otherwise decides.
    pub max_instance_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_pdu_length: 64 * 1024, idle_timeout: Duration::from_secs(60), max_instance_bytes: 1 << 30 }
    }
}

/// A command set is a few hundred bytes; more is not a command.
const MAX_COMMAND_BYTES: usize = 64 * 1024;

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
    /// C-STORE requests answered, and how many of them with success.
    pub stores: u32,
    pub stored: u32,
    /// False when the peer aborted or went silent instead of releasing.
    pub released: bool,
}

/// Access control that asks Meridian who is calling, and remembers the answer.
struct Gate {
    platform: Arc<Platform>,
    region: String,
    peer: SocketAddr,
    authenticator: Arc<Authenticator>,
    /// The client certificate the TLS handshake verified (empty on a
    /// plain connection, or when none was presented).
    presented: PresentedCertificate,
    outcome: Mutex<Option<Result<Principal, AssociationRejected>>>,
    titles: Mutex<(String, String)>,
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
        let caller = Caller {
            called_ae: called_ae_title,
            calling_ae: calling_ae_title,
            peer: self.peer.ip(),
            certificate: self.presented.get(),
        };
        let outcome = resolve_association(&self.platform, &self.region, caller, &self.authenticator);
        let reason = match &outcome {
            Ok(_) => None,
            Err(e @ AssociationRejected::CalledAeNotRecognized { .. }) => {
                debug_assert_eq!(e.reason_code(), 7);
                Some(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
            }
            Err(_) => Some(AssociationRJServiceUserReason::CallingAETitleNotRecognized),
        };
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
        *self.titles.lock().unwrap_or_else(|p| p.into_inner()) =
            (calling_ae_title.trim().to_owned(), called_ae_title.trim().to_owned());
        reason.map_or(Ok(()), Err)
    }
}

/// Negotiates and serves one association on `socket`: Verification, and
/// Storage when `store` is given; over TLS (PS3.15 Annex B) when `tls` is
/// given, with the slot its handshake puts the client certificate in.
/// Refusals are recorded in the authenticator's trail (the region's audit).
#[allow(clippy::too_many_arguments)]
pub async fn accept(
    socket: TcpStream,
    peer: SocketAddr,
    region: &str,
    platform: Arc<Platform>,
    authenticator: Arc<Authenticator>,
    limits: &Limits,
    store: Option<&dyn StoreService>,
    tls: Option<(Arc<rustls::ServerConfig>, PresentedCertificate)>,
) -> Result<Served, Error> {
    let protocol = |reason: String| Error::Protocol { peer, reason };
    socket.set_nodelay(true).map_err(|e| protocol(e.to_string()))?;
    let gate = Gate {
        platform,
        region: region.to_owned(),
        peer,
        authenticator,
        presented: tls.as_ref().map(|(_, presented)| presented.clone()).unwrap_or_default(),
        outcome: Mutex::new(None),
        titles: Mutex::new(Default::default()),
    };
    {
        let mut options = ServerAssociationOptions::new()
            .ae_access_control(&gate)
            .ae_title("MERIDIAN")
            .with_abstract_syntax(VERIFICATION)
            .max_pdu_length(limits.max_pdu_length)
            .read_timeout(limits.idle_timeout);
        if store.is_some() {
            for (uid, _) in storage_classes::STORAGE_SOP_CLASSES {
                options = options.with_abstract_syntax(*uid);
            }
            for ts in STORED_TRANSFER_SYNTAXES {
                options = options.with_transfer_syntax(*ts);
            }
        } else {
            options =
                options.with_transfer_syntax(IMPLICIT_VR_LITTLE_ENDIAN).with_transfer_syntax(EXPLICIT_VR_LITTLE_ENDIAN);
        }
        match tls {
            None => {
                let negotiated = options.establish_async(socket).await;
                serve(negotiated, &gate, region, limits, store).await
            }
            Some((config, _)) => {
                let negotiated = options.tls_config(config).establish_tls_async(socket).await;
                serve(negotiated, &gate, region, limits, store).await
            }
        }
    }
}

/// An association as negotiated on a plain or a TLS connection.
type Negotiated<S> = Result<AsyncServerAssociation<S>, dicom_ul::association::Error>;

/// Serves an association negotiated through `gate` until it ends.
async fn serve<S>(
    outcome: Negotiated<S>,
    gate: &Gate,
    region: &str,
    limits: &Limits,
    store: Option<&dyn StoreService>,
) -> Result<Served, Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let peer = gate.peer;
    let protocol = |reason: String| Error::Protocol { peer, reason };
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
    let (calling_ae_title, called_ae_title) = gate.titles.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let sender = Sender { principal: principal.clone(), calling_ae_title, called_ae_title, peer };
    let syntaxes: std::collections::HashMap<u8, String> =
        association.presentation_contexts().iter().map(|pc| (pc.id, pc.transfer_syntax.clone())).collect();

    let (mut echoes, mut stores, mut stored) = (0, 0, 0);
    let mut command = Vec::new();
    // A C-STORE-RQ waiting for its data set, and the data set so far.
    let mut pending: Option<(u8, command::Command)> = None;
    let mut data_set = Vec::new();
    // Bytes of the pending data set; past the limit they are not kept.
    let mut data_set_size = 0usize;
    loop {
        let pdu = match tokio::time::timeout(limits.idle_timeout, association.receive()).await {
            Err(_) => {
                let _ = association.abort().await;
                return Ok(Served { principal, echoes, stores, stored, released: false });
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "association ended without release");
                return Ok(Served { principal, echoes, stores, stored, released: false });
            }
            Ok(Ok(pdu)) => pdu,
        };
        match pdu {
            Pdu::PData { data } => {
                for value in data {
                    let context = value.presentation_context_id;
                    if value.value_type == PDataValueType::Data {
                        match &pending {
                            Some((id, _)) if *id == context => {
                                data_set_size += value.data.len();
                                if data_set_size <= limits.max_instance_bytes {
                                    data_set.extend_from_slice(&value.data);
                                } else {
                                    data_set = Vec::new();
                                }
                            }
                            _ => {
                                let _ = association.abort().await;
                                return Err(protocol("a data set fragment without its C-STORE command".into()));
                            }
                        }
                        if !value.is_last {
                            continue;
                        }
                        let Some((_, request)) = pending.take() else { continue };
                        let size = std::mem::take(&mut data_set_size);
                        let status = match store {
                            Some(store) if size > limits.max_instance_bytes => {
                                tracing::warn!(%peer, size, limit = limits.max_instance_bytes, "data set over the limit");
                                store.too_large(&sender, &request.affected_sop_class, size).await
                            }
                            Some(store) => {
                                let instance = Instance {
                                    sop_class: request.affected_sop_class.clone(),
                                    sop_instance: request.affected_sop_instance.clone(),
                                    transfer_syntax: syntaxes.get(&context).cloned().unwrap_or_default(),
                                    data_set: std::mem::take(&mut data_set),
                                };
                                // One span per instance: the study's trace starts at
                                // the C-STORE of its first instance.
                                let span = tracing::info_span!(
                                    "C-STORE",
                                    otel.kind = "server",
                                    dicom.sop_class = %request.affected_sop_class,
                                    dicom.status = tracing::field::Empty,
                                );
                                let status =
                                    tracing::Instrument::instrument(store.store(&sender, instance), span.clone()).await;
                                span.record("dicom.status", format_args!("{status:#06x}"));
                                status
                            }
                            None => command::STATUS_SOP_CLASS_NOT_SUPPORTED,
                        };
                        stores += 1;
                        if status == command::STATUS_SUCCESS {
                            stored += 1;
                        }
                        respond(&mut association, context, request.store_response(status)).await.map_err(protocol)?;
                        continue;
                    }
                    command.extend_from_slice(&value.data);
                    if command.len() > MAX_COMMAND_BYTES {
                        let _ = association.abort().await;
                        return Err(protocol(format!("a command set over {MAX_COMMAND_BYTES} bytes")));
                    }
                    if !value.is_last {
                        continue;
                    }
                    let request = command::Command::decode(&command).map_err(protocol)?;
                    command.clear();
                    match request.field {
                        command::C_ECHO_RQ => {
                            echoes += 1;
                            let response = command::Command::echo_response(request.message_id, command::STATUS_SUCCESS);
                            respond(&mut association, context, response).await.map_err(protocol)?;
                        }
                        command::C_STORE_RQ if request.has_data_set => {
                            data_set.clear();
                            data_set_size = 0;
                            pending = Some((context, request));
                        }
                        other => {
                            // PS3.7 C.4.2: refused, an operation this SCP does not offer.
                            tracing::info!(%peer, command = other, "unsupported DIMSE command");
                            let response = command::Response {
                                field: other | 0x8000,
                                sop_class: request.affected_sop_class.clone(),
                                sop_instance: None,
                                message_id: request.message_id,
                                status: command::STATUS_UNRECOGNIZED_OPERATION,
                            };
                            respond(&mut association, context, response).await.map_err(protocol)?;
                        }
                    }
                }
            }
            Pdu::ReleaseRQ => {
                association.send(&Pdu::ReleaseRP).await.map_err(|e| protocol(e.to_string()))?;
                return Ok(Served { principal, echoes, stores, stored, released: true });
            }
            Pdu::AbortRQ { .. } => {
                return Ok(Served { principal, echoes, stores, stored, released: false });
            }
            other => {
                let _ = association.abort().await;
                return Err(protocol(format!("unexpected PDU {other:?}")));
            }
        }
    }
}

/// Refuses an association because the port is at its limit: reads the
/// A-ASSOCIATE-RQ and answers A-ASSOCIATE-RJ, transient, service provider
/// (presentation), local limit exceeded (PS3.8 9.3.4), so the sender tries
/// again later instead of waiting in a queue it cannot see.
pub async fn refuse_busy(mut socket: TcpStream, peer: SocketAddr) -> Result<(), Error> {
    use dicom_ul::pdu::{
        AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason, AssociationRJSource,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let protocol = |reason: String| Error::Protocol { peer, reason };
    let mut header = [0u8; 6];
    socket.read_exact(&mut header).await.map_err(|e| protocol(e.to_string()))?;
    let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    if header[0] == 0x01 && length <= 64 * 1024 {
        let mut body = vec![0u8; length];
        socket.read_exact(&mut body).await.map_err(|e| protocol(e.to_string()))?;
    }
    let rj = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    });
    let mut out = Vec::new();
    dicom_ul::pdu::write_pdu(&mut out, &rj).map_err(|e| protocol(e.to_string()))?;
    socket.write_all(&out).await.map_err(|e| protocol(e.to_string()))?;
    let _ = socket.shutdown().await;
    Ok(())
}

/// Sends one response command set on `context`.
async fn respond<S>(
    association: &mut AsyncServerAssociation<S>,
    context: u8,
    response: command::Response,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let pdu = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: context,
            value_type: PDataValueType::Command,
            is_last: true,
            data: response.encode()?,
        }],
    };
    association.send(&pdu).await.map_err(|e| e.to_string())
}
