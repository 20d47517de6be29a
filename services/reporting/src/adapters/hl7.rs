//! A report as an HL7 v2.5.1 ORU^R01, framed for MLLP, and the receiver's
//! ACK read back. The message control id (MSH-10) is the caller's (derived
//! from the delivery), never the clock's, so a message sent again after a
//! crash is the same message.

use meridian_events::UnixMicros;

use crate::domain::message::ReportMessage;

/// MLLP's frame: start block, end block, carriage return.
const START: u8 = 0x0b;
const END: [u8; 2] = [0x1c, 0x0d];

/// Escapes HL7's delimiters in text (`|^~\&`), and drops line breaks
/// (each line of a report is an OBX of its own).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\E\\"),
            '|' => out.push_str("\\F\\"),
            '^' => out.push_str("\\S\\"),
            '&' => out.push_str("\\T\\"),
            '~' => out.push_str("\\R\\"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// HL7's DTM, to the second, in UTC.
pub(crate) fn dtm(t: UnixMicros) -> String {
    jiff::Timestamp::from_microsecond(t.0).map(|t| t.strftime("%Y%m%d%H%M%S+0000").to_string()).unwrap_or_default()
}

/// DICOM's "Family^Given^Middle^Prefix^Suffix" as an XPN
/// ("Family^Given^Middle^Suffix^Prefix"), each part escaped.
fn xpn(dicom: &str) -> String {
    let parts: Vec<String> = dicom.split('^').map(|p| escape(p.trim())).collect();
    let part = |i: usize| parts.get(i).cloned().unwrap_or_default();
    let xpn = [part(0), part(1), part(2), part(4), part(3)].join("^");
    xpn.trim_end_matches('^').to_owned()
}

/// OBR-25 and OBX-11: preliminary, final, corrected (appended and
/// corrected both correct what was sent), or posted in error (W, OBX only).
fn result_status(status: &str) -> (&'static str, &'static str) {
    match status {
        "preliminary" => ("P", "P"),
        "final" => ("F", "F"),
        "entered-in-error" => ("C", "W"),
        _ => ("C", "C"),
    }
}

/// Who sends and who receives: application and facility each.
pub struct Parties<'a> {
    pub sending: (&'a str, &'a str),
    pub receiving: (&'a str, &'a str),
}

/// The ORU^R01 of `m`, segments ended by carriage returns.
pub fn oru_r01(m: &ReportMessage, control_id: &str, parties: &Parties<'_>, at: UnixMicros) -> String {
    let (obr25, obx11) = result_status(&m.status);
    let msh = [
        "MSH",
        "^~\\&",
        &escape(parties.sending.0),
        &escape(parties.sending.1),
        &escape(parties.receiving.0),
        &escape(parties.receiving.1),
        &dtm(at),
        "",
        "ORU^R01^ORU_R01",
        control_id,
        "P",
        "2.5.1",
    ]
    .join("|");
    let issuer = escape(&m.patient.issuer);
    let pid = [
        "PID".to_owned(),
        "1".into(),
        String::new(),
        format!("{}^^^{issuer}^MR", escape(&m.patient.id)),
        String::new(),
        xpn(&m.patient.name),
        String::new(),
        escape(&m.patient.birth_date),
        escape(&m.patient.sex),
    ]
    .join("|");
    let observed = format!("{}{}", m.study_date.trim(), m.study_time.trim().split('.').next().unwrap_or(""));
    let observed =
        if observed.bytes().all(|b| b.is_ascii_digit()) && observed.len() >= 8 { observed } else { dtm(m.signed_at) };
    let mut obr = vec![String::new(); 33];
    obr[0] = "OBR".into();
    obr[1] = "1".into();
    // The clinician as the order named them (XCN), each component escaped.
    obr[16] = m.ordering_clinician.split('^').map(escape).collect::<Vec<_>>().join("^");
    // OBR-2: the order's placer number when an order was matched, else
    // the accession (as RIS without orders key it); OBR-18: the accession.
    obr[2] = escape(if m.placer_order.is_empty() { &m.accession } else { &m.placer_order });
    obr[18] = escape(&m.accession);
    obr[3] = m.report.simple().to_string();
    obr[4] = format!(
        "18748-4^{}^LN",
        escape(if m.study_description.is_empty() { "Diagnostic imaging study" } else { &m.study_description })
    );
    obr[7] = observed;
    obr[22] = dtm(m.signed_at);
    obr[24] = "RAD".into();
    obr[25] = obr25.into();
    obr[32] = escape(&m.reader);
    let mut segments = vec![msh, pid, obr.join("|")];
    for (n, line) in m.text().lines().enumerate() {
        let obx = ["OBX", &(n + 1).to_string(), "TX", "18782-3^Radiology Study observation^LN", "", &escape(line)];
        let mut obx: Vec<String> = obx.iter().map(|s| (*s).to_owned()).collect();
        obx.resize(11, String::new());
        obx.push(obx11.into());
        segments.push(obx.join("|"));
    }
    let mut out = segments.join("\r");
    out.push('\r');
    out
}

/// `message` in an MLLP frame.
pub fn frame(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(START);
    out.extend_from_slice(message.as_bytes());
    out.extend_from_slice(&END);
    out
}

/// A receiver's answer: MSA-1 and MSA-2, and what MSA-3 or ERR said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// AA accepted, AE error (try again), AR rejected (do not).
    pub code: String,
    pub control_id: String,
    pub text: String,
}

/// Reads an ACK out of one MLLP frame's content (without the framing bytes).
pub fn ack(message: &str) -> Result<Ack, String> {
    let segments: Vec<&str> = message.split(['\r', '\n']).filter(|s| !s.is_empty()).collect();
    let msa = segments.iter().find(|s| s.starts_with("MSA|")).ok_or("no MSA segment in the answer")?;
    let fields: Vec<&str> = msa.split('|').collect();
    let code = fields.get(1).copied().unwrap_or_default().to_owned();
    if !["AA", "AE", "AR", "CA", "CE", "CR"].contains(&code.as_str()) {
        return Err(format!("MSA-1 {code:?} is not an acknowledgment code"));
    }
    let mut text = fields.get(3).copied().unwrap_or_default().to_owned();
    if let Some(err) = segments.iter().find(|s| s.starts_with("ERR|")) {
        text = format!("{text} {err}").trim().to_owned();
    }
    Ok(Ack { code, control_id: fields.get(2).copied().unwrap_or_default().to_owned(), text })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::fhir::tests::message;

    #[test]
    fn a_report_is_an_oru_r01_with_one_obx_per_line_and_delimiters_escaped() {
        let m = message();
        let parties = Parties { sending: ("MERIDIAN", "us-east"), receiving: ("RIS", "ACME") };
        let oru = oru_r01(&m, "d41d8cd98f00b204e980", &parties, UnixMicros(1_793_812_600_000_000));
        let segments: Vec<&str> = oru.trim_end_matches('\r').split('\r').collect();
        assert!(segments[0].starts_with("MSH|^~\\&|MERIDIAN|us-east|RIS|ACME|"), "{oru}");
        assert!(segments[0].ends_with("|ORU^R01^ORU_R01|d41d8cd98f00b204e980|P|2.5.1"), "{oru}");
        assert_eq!(segments[1], "PID|1||MRN-0042^^^ACME GENERAL^MR||Doe^Jane^Q||19800214|F");
        let obr: Vec<&str> = segments[2].split('|').collect();
        assert_eq!(obr[2], "ACC-7\\F\\1\\S\\2", "the accession's delimiters escaped");
        assert_eq!((obr[3], obr[25], obr[32]), (m.report.simple().to_string().as_str(), "F", "dr-ana-ortiz"));
        assert_eq!(obr[7], "20261104101500");
        let obx: Vec<&str> = segments[3..].to_vec();
        assert_eq!(obx.len(), m.text().lines().count());
        assert!(obx.iter().all(|s| s.split('|').nth(11) == Some("F")), "{obx:?}");
        assert!(obx.iter().any(|s| s.contains("stable \\T\\ unchanged")), "{obx:?}");
        let corrected = oru_r01(&ReportMessage { status: "corrected".into(), ..m }, "x", &parties, UnixMicros(0));
        assert!(corrected.split('\r').nth(2).unwrap().split('|').nth(25) == Some("C"));
    }

    #[test]
    fn the_order_a_report_answers_is_named_in_obr_2_and_16() {
        let m = ReportMessage { placer_order: "PO|77".into(), ordering_clinician: "1234^Lee^Sam".into(), ..message() };
        let parties = Parties { sending: ("MERIDIAN", "us-east"), receiving: ("RIS", "ACME") };
        let oru = oru_r01(&m, "c", &parties, UnixMicros(0));
        let obr: Vec<&str> = oru.split('\r').nth(2).unwrap().split('|').collect();
        assert_eq!((obr[2], obr[16]), ("PO\\F\\77", "1234^Lee^Sam"));
        let fhir = crate::adapters::fhir::diagnostic_report(&m);
        assert_eq!(fhir["basedOn"][0]["identifier"]["value"], "PO|77");
    }

    #[test]
    fn an_ack_is_read_from_its_msa() {
        let ack_text = "MSH|^~\\&|RIS|ACME|MERIDIAN|us-east|20261104||ACK^R01^ACK|1|P|2.5.1\rMSA|AE|abc|busy\rERR|||207^Application internal error^HL70357\r";
        let a = ack(ack_text).unwrap();
        assert_eq!((a.code.as_str(), a.control_id.as_str()), ("AE", "abc"));
        assert!(a.text.contains("busy") && a.text.contains("207"), "{a:?}");
        assert!(ack("MSH|x\r").unwrap_err().contains("no MSA"));
        assert_eq!(frame("A")[..], [0x0b, b'A', 0x1c, 0x0d]);
    }
}
