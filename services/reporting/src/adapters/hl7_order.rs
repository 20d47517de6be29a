//! Orders in over HL7 v2: an ORM^O01 or OMI^O23 read into an order, and
//! the ACK that answers it (MSA-1 AA, AE or AR, MSA-2 echoing MSH-10; ERR
//! naming the segment and field at fault). The delimiters are the
//! message's own (MSH-1, MSH-2); escape sequences are decoded.

use meridian_events::UnixMicros;

use crate::domain::order::OrderIn;

/// Why an order was not taken: the ACK code, HL7 table 0357's error, where
/// (segment, its occurrence, field) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// "AE" (the message is wrong: fix and send again) or "AR" (not for
    /// this receiver: do not send again as it is).
    pub code: &'static str,
    /// HL7 table 0357: 100 segment sequence, 101 required field missing,
    /// 102 data type, 103 table value not found, 200 unsupported message
    /// type, 204 unknown key identifier, 207 application internal error.
    pub error: (u16, &'static str),
    pub segment: &'static str,
    pub field: usize,
    pub text: String,
}

impl Refusal {
    fn missing(segment: &'static str, field: usize, what: &str) -> Refusal {
        Refusal {
            code: "AE",
            error: (101, "Required field missing"),
            segment,
            field,
            text: format!("{segment}-{field} ({what}) is required"),
        }
    }
}

struct Delimiters {
    field: char,
    component: char,
    repetition: char,
    escape: char,
    subcomponent: char,
}

/// A message split into segments and fields, delimiters known.
pub struct Message {
    segments: Vec<Vec<String>>,
    d: Delimiters,
}

impl Message {
    /// Splits `text` (segments ended by CR; LF tolerated).
    pub fn parse(text: &str) -> Result<Message, Refusal> {
        let text = text.trim_start_matches(['\r', '\n', ' ']);
        let bad_msh = |text: &str| Refusal {
            code: "AR",
            error: (100, "Segment sequence error"),
            segment: "MSH",
            field: 1,
            text: text.to_owned(),
        };
        if !text.starts_with("MSH") {
            return Err(bad_msh("a message starts with its MSH segment"));
        }
        let mut chars = text[3..].chars();
        let field = chars.next().ok_or_else(|| bad_msh("MSH-1 (the field separator) is missing"))?;
        let encoding: Vec<char> = chars.take_while(|c| *c != field).collect();
        if encoding.len() < 4 {
            return Err(bad_msh("MSH-2 needs the component, repetition, escape and subcomponent characters"));
        }
        let d = Delimiters {
            field,
            component: encoding[0],
            repetition: encoding[1],
            escape: encoding[2],
            subcomponent: encoding[3],
        };
        let segments = text
            .split(['\r', '\n'])
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.split(d.field).map(str::to_owned).collect::<Vec<String>>())
            .collect();
        Ok(Message { segments, d })
    }

    /// Field `n` of the `occurrence`-th (from 1) `segment`, raw. MSH counts
    /// its field separator as MSH-1.
    fn raw(&self, segment: &str, occurrence: usize, n: usize) -> Option<&str> {
        let s = self.segments.iter().filter(|s| s.first().map(String::as_str) == Some(segment)).nth(occurrence - 1)?;
        let index = if segment == "MSH" { n.checked_sub(1)? } else { n };
        s.get(index).map(String::as_str)
    }

    pub fn has(&self, segment: &str) -> bool {
        self.segments.iter().any(|s| s.first().map(String::as_str) == Some(segment))
    }

    /// Component `c` (from 1) of the first repetition of field `n` of the
    /// first `segment`, escapes decoded; empty when absent.
    pub fn get(&self, segment: &str, n: usize, c: usize) -> String {
        let raw = self.raw(segment, 1, n).unwrap_or_default();
        let first = raw.split(self.d.repetition).next().unwrap_or_default();
        let component = first.split(self.d.component).nth(c - 1).unwrap_or_default();
        let component = component.split(self.d.subcomponent).next().unwrap_or_default();
        self.unescape(component)
    }

    /// Field `n` whole (components joined by the component separator as
    /// sent), escapes decoded within each component.
    pub fn whole(&self, segment: &str, n: usize) -> String {
        let raw = self.raw(segment, 1, n).unwrap_or_default();
        let first = raw.split(self.d.repetition).next().unwrap_or_default();
        let parts: Vec<String> = first.split(self.d.component).map(|c| self.unescape(c)).collect();
        parts.join("^").trim_end_matches('^').to_owned()
    }

    fn unescape(&self, text: &str) -> String {
        let e = self.d.escape;
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find(e) {
            out.push_str(&rest[..start]);
            let after = &rest[start + e.len_utf8()..];
            match after.find(e) {
                Some(end) => {
                    match &after[..end] {
                        "F" => out.push(self.d.field),
                        "S" => out.push(self.d.component),
                        "T" => out.push(self.d.subcomponent),
                        "R" => out.push(self.d.repetition),
                        "E" => out.push(e),
                        ".br" => out.push('\n'),
                        // Character-set and hex escapes are not text of ours.
                        _ => {}
                    }
                    rest = &after[end + e.len_utf8()..];
                }
                None => {
                    out.push_str(&rest[start..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out.trim().to_owned()
    }
}

/// What the header says: who sent it and which message it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub sending_application: String,
    pub sending_facility: String,
    /// "ORM^O01", "OMI^O23".
    pub message_type: String,
    pub control_id: String,
}

pub fn header(m: &Message) -> Header {
    Header {
        sending_application: m.get("MSH", 3, 1),
        sending_facility: m.get("MSH", 4, 1),
        message_type: format!("{}^{}", m.get("MSH", 9, 1), m.get("MSH", 9, 2)),
        control_id: m.get("MSH", 10, 1),
    }
}

/// HL7's priority codes (ORC-7.6, TQ1-9, OBR-27.6, OBR-5) as routing's.
fn priority(code: &str) -> Option<&'static str> {
    match code.to_ascii_uppercase().as_str() {
        "S" | "STAT" => Some("stat"),
        "A" | "ASAP" | "T" | "C" => Some("urgent"),
        "R" | "ROUTINE" | "P" | "PRN" | "" => Some("routine"),
        _ => None,
    }
}

/// The order an ORM^O01 or OMI^O23 carries, for `tenant`'s `facility`
/// (from its MSH-4). Accession: IPC-1 (OMI), else OBR-18; priority: TQ1-9,
/// else ORC-7.6, else OBR-27.6, else OBR-5 (routine when none says).
pub fn order(m: &Message, tenant: &str, facility: &str) -> Result<OrderIn, Refusal> {
    let h = header(m);
    if h.control_id.is_empty() {
        return Err(Refusal::missing("MSH", 10, "message control id"));
    }
    let omi = match h.message_type.as_str() {
        "ORM^O01" => false,
        "OMI^O23" => true,
        other => {
            return Err(Refusal {
                code: "AR",
                error: (200, "Unsupported message type"),
                segment: "MSH",
                field: 9,
                text: format!("MSH-9 {other:?}: orders are ORM^O01 or OMI^O23"),
            });
        }
    };
    for segment in ["PID", "ORC", "OBR"] {
        if !m.has(segment) {
            return Err(Refusal {
                code: "AE",
                error: (100, "Segment sequence error"),
                segment: match segment {
                    "PID" => "PID",
                    "ORC" => "ORC",
                    _ => "OBR",
                },
                field: 0,
                text: format!("{} has no {segment} segment", h.message_type),
            });
        }
    }
    let control = m.get("ORC", 1, 1);
    if !["NW", "XO", "SC"].contains(&control.as_str()) {
        return Err(Refusal {
            code: "AE",
            error: (103, "Table value not found"),
            segment: "ORC",
            field: 1,
            text: format!("ORC-1 {control:?}: a new order (NW), a change (XO) or a status (SC)"),
        });
    }
    let patient_id = m.get("PID", 3, 1);
    if patient_id.is_empty() {
        return Err(Refusal::missing("PID", 3, "patient identifier"));
    }
    let (accession, at) = if omi && !m.get("IPC", 1, 1).is_empty() {
        (m.get("IPC", 1, 1), ("IPC", 1))
    } else {
        (m.get("OBR", 18, 1), ("OBR", 18))
    };
    if accession.is_empty() {
        let (segment, field) = if omi { ("IPC", 1) } else { at };
        return Err(Refusal::missing(segment, field, "accession number"));
    }
    let (code, segment, field) = [("TQ1", 9, 1), ("ORC", 7, 6), ("OBR", 27, 6), ("OBR", 5, 1)]
        .iter()
        .map(|(s, f, c)| (m.get(s, *f, *c), *s, *f))
        .find(|(code, ..)| !code.is_empty())
        .unwrap_or_default();
    let priority = priority(&code).ok_or_else(|| Refusal {
        code: "AE",
        error: (103, "Table value not found"),
        segment: match segment {
            "TQ1" => "TQ1",
            "ORC" => "ORC",
            _ => "OBR",
        },
        field,
        text: format!("{segment}-{field} priority {code:?}: S (stat), A (asap) or R (routine)"),
    })?;
    let clinician = Some(m.whole("ORC", 12)).filter(|c| !c.is_empty()).unwrap_or_else(|| m.whole("OBR", 16));
    let procedure = Some(m.get("OBR", 4, 2)).filter(|p| !p.is_empty()).unwrap_or_else(|| m.get("OBR", 4, 1));
    let reason = Some(m.get("OBR", 31, 2)).filter(|r| !r.is_empty()).unwrap_or_else(|| m.get("OBR", 31, 1));
    Ok(OrderIn {
        tenant: tenant.to_owned(),
        facility: facility.to_owned(),
        accession,
        placer_order: m.get("ORC", 2, 1),
        patient_id,
        issuer: m.get("PID", 3, 4),
        ordering_clinician: clinician,
        priority: priority.to_owned(),
        reason,
        procedure,
        source: "hl7v2",
        message_id: h.control_id,
    })
}

/// The ACK to a message with header `h`: AA, or the refusal's code with an
/// ERR naming where. Its own control id derives from the one it answers.
pub fn ack(h: &Header, refused: Option<&Refusal>, region: &str, at: UnixMicros) -> String {
    use crate::adapters::hl7::{dtm, escape as esc};
    let trigger = h.message_type.split('^').nth(1).unwrap_or("O01");
    let own: String = format!("A{}", h.control_id).chars().take(20).collect();
    let msh = format!(
        "MSH|^~\\&|MERIDIAN|{}|{}|{}|{}||ACK^{}^ACK|{}|P|2.5.1",
        esc(region),
        esc(&h.sending_application),
        esc(&h.sending_facility),
        dtm(at),
        esc(trigger),
        esc(&own),
    );
    let mut out = match refused {
        None => format!("{msh}\rMSA|AA|{}\r", esc(&h.control_id)),
        Some(r) => {
            let location =
                if r.field == 0 { format!("{}^1", r.segment) } else { format!("{}^1^{}", r.segment, r.field) };
            format!(
                "{msh}\rMSA|{}|{}|{}\rERR||{location}|{}^{}^HL70357|E||||{}\r",
                r.code,
                esc(&h.control_id),
                esc(&r.text),
                r.error.0,
                r.error.1,
                esc(&r.text)
            )
        }
    };
    out.shrink_to_fit();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const ORM: &str = "MSH|^~\\&|EPIC|ACME_GEN|MERIDIAN|us-east|20261203101500||ORM^O01^ORM_O01|MSG-001|P|2.5.1\r\
PID|1||MRN-0042^^^ACME GENERAL^MR||Doe^Jane||19800214|F\r\
ORC|NW|PO-77|||||^^^^^S||20261203101400|||1234^Lee^Sam^^^Dr\r\
OBR|1|PO-77||70450^CT head without contrast^CPT||||||||||||||ACC\\F\\9001|||||||||||||^Fall, rule out bleed\r";

    #[test]
    fn an_orm_gives_its_accession_priority_clinician_and_reason() {
        let m = Message::parse(ORM).unwrap();
        let h = header(&m);
        assert_eq!(
            (h.message_type.as_str(), h.control_id.as_str(), h.sending_facility.as_str()),
            ("ORM^O01", "MSG-001", "ACME_GEN")
        );
        let o = order(&m, "acme", "acme-general").unwrap();
        assert_eq!(o.accession, "ACC|9001", "the escaped field separator decoded");
        assert_eq!((o.priority.as_str(), o.placer_order.as_str()), ("stat", "PO-77"));
        assert_eq!((o.patient_id.as_str(), o.issuer.as_str()), ("MRN-0042", "ACME GENERAL"));
        assert_eq!(o.ordering_clinician, "1234^Lee^Sam^^^Dr");
        assert_eq!((o.procedure.as_str(), o.reason.as_str()), ("CT head without contrast", "Fall, rule out bleed"));
    }

    #[test]
    fn an_omi_takes_its_accession_from_ipc_and_priority_from_tq1() {
        let omi = "MSH|^~\\&|RIS|ACME_GEN|||20261203||OMI^O23^OMI_O23|M2|P|2.5.1\rPID|1||MRN-1\r\
ORC|NW|PO-1\rTQ1|1||||||||A\rOBR|1|PO-1||71250^CT chest\rIPC|ACC-55|RP-1|1.2.3|SPS-1\r";
        let o = order(&Message::parse(omi).unwrap(), "acme", "acme-general").unwrap();
        assert_eq!((o.accession.as_str(), o.priority.as_str()), ("ACC-55", "urgent"));
        // Other delimiters are the message's own.
        let odd = ORM.replace('|', "#");
        let o = order(&Message::parse(&odd).unwrap(), "acme", "f").unwrap();
        assert_eq!(o.placer_order, "PO-77");
    }

    #[test]
    fn what_is_wrong_is_named_by_segment_and_field() {
        let no_accession = ORM.replace("ACC\\F\\9001", "");
        let e = order(&Message::parse(&no_accession).unwrap(), "acme", "f").unwrap_err();
        assert_eq!((e.code, e.error.0, e.segment, e.field), ("AE", 101, "OBR", 18));
        let odd_priority = ORM.replace("^^^^^S", "^^^^^Q");
        let e = order(&Message::parse(&odd_priority).unwrap(), "acme", "f").unwrap_err();
        assert_eq!((e.code, e.error.0, e.segment, e.field), ("AE", 103, "ORC", 7));
        let adt = ORM.replace("ORM^O01^ORM_O01", "ADT^A01^ADT_A01");
        let e = order(&Message::parse(&adt).unwrap(), "acme", "f").unwrap_err();
        assert_eq!((e.code, e.error.0, e.segment, e.field), ("AR", 200, "MSH", 9));
        assert_eq!(Message::parse("PID|1").err().map(|e| e.code), Some("AR"));
        let ack = ack(&header(&Message::parse(&no_accession).unwrap()), Some(&e), "us-east", UnixMicros(0));
        let segments: Vec<&str> = ack.trim_end().split('\r').collect();
        assert!(segments[0].starts_with("MSH|^~\\&|MERIDIAN|us-east|EPIC|ACME_GEN|"), "{ack}");
        assert!(segments[0].contains("|ACK^O01^ACK|AMSG-001|P|2.5.1"), "{ack}");
        assert!(segments[1].starts_with("MSA|AR|MSG-001|"), "{ack}");
        assert!(segments[2].starts_with("ERR||MSH^1^9|200^Unsupported message type^HL70357|E"), "{ack}");
    }
}
