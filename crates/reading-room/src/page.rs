//! The reading room's HTML, rendered on the server from what routing and
//! reporting answer (no rule is decided here). Every value is escaped;
//! worklist entries carry no PHI (opaque ids, modality, body part,
//! priority, deadline, delivery model, regions), so a page shows nothing a
//! reader may not see.

use std::fmt::Write;

use meridian_proto::routing::v1::WorklistEntry;

/// Text safe inside HTML elements and double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Who is signed in, as the page shows it.
pub struct Signed<'a> {
    pub principal: &'a str,
    pub reader: &'a str,
    pub csrf: &'a str,
}

/// A whole page: `body` inside the room's frame.
pub fn layout(title: &str, signed: Option<&Signed<'_>>, body: &str) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Meridian reading room</title>\
         <link rel=\"stylesheet\" href=\"/room/assets/room.css\">\
         <script src=\"/room/assets/room.js\" defer></script></head><body>\
         <header><a class=\"brand\" href=\"/room/worklist\">Meridian reading room</a>",
        escape(title)
    );
    if let Some(s) = signed {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/room/sign-out\" class=\"who\">\
             <span>Signed in as <strong>{}</strong> (reader {})</span>\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form>",
            escape(s.principal),
            escape(s.reader),
            escape(s.csrf)
        );
    }
    let _ = writeln!(out, "</header><main id=\"main\">{body}</main></body></html>");
    out
}

/// A principal the development sign-in offers.
#[derive(Clone, Debug)]
pub struct DevPrincipal {
    pub name: String,
    pub reader: String,
    pub group: String,
}

pub fn sign_in(providers: &[&str], principals: &[DevPrincipal], error: Option<&str>) -> String {
    let mut body = String::from("<h1>Sign in</h1>");
    if let Some(e) = error {
        let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", escape(e));
    }
    if providers.is_empty() && principals.is_empty() {
        body.push_str(
            "<p>No sign-in is configured for this room: an identity provider of <code>auth.toml</code> \
             (<code>[oidc_issuers.room]</code>) offers one; in <code>meridian dev</code>, the example readers \
             sign in here.</p>",
        );
        return layout("Sign in", None, &body);
    }
    if !providers.is_empty() {
        body.push_str("<ul class=\"principals\">");
        for (i, label) in providers.iter().enumerate() {
            // A link, not a form: the provider's page is a navigation away.
            let _ = write!(
                body,
                "<li><a class=\"button\" href=\"/room/oidc/{i}/start\">Sign in with {}</a></li>",
                escape(label)
            );
        }
        body.push_str("</ul>");
    }
    if principals.is_empty() {
        return layout("Sign in", None, &body);
    }
    body.push_str(
        "<p class=\"notice\"><strong>Development sign-in.</strong> <code>meridian dev</code> lists the example \
         readers of its <code>auth.toml</code> (their tokens are in <code>tokens.json</code>); a deployment signs \
         readers in with its identity provider.</p><ul class=\"principals\">",
    );
    for p in principals {
        let _ = write!(
            body,
            "<li><form method=\"post\" action=\"/room/sign-in\">\
             <input type=\"hidden\" name=\"principal\" value=\"{name}\">\
             <button type=\"submit\">Sign in as {name}</button> <span>{reader}, {group}</span></form></li>",
            name = escape(&p.name),
            reader = escape(&p.reader),
            group = escape(&p.group)
        );
    }
    body.push_str("</ul>");
    layout("Sign in", None, &body)
}

/// Signed out of the room; on to the identity provider to end the
/// session there too (a refresh, so no script is needed).
pub fn signing_out(provider: &str, to: &str) -> String {
    let body = format!(
        "<h1>Signed out of the reading room</h1><p role=\"status\">Signing you out of {provider} too…</p>\
         <p><a class=\"button\" href=\"{to}\">Continue to {provider}</a></p>",
        provider = escape(provider),
        to = escape(to),
    );
    layout("Signed out", None, &body).replacen(
        "<title>",
        &format!("<meta http-equiv=\"refresh\" content=\"0;url={}\"><title>", escape(to)),
        1,
    )
}

/// The worklist page: the table's rows come from [`worklist_rows`] and are
/// replaced in place when the worklist changes (the page's script follows
/// `/room/worklist/events`).
/// A region as the worklist page shows it: whether it answers.
pub struct RegionState {
    pub name: String,
    pub answers: bool,
}

/// A peer review the reader read blind and signed, not scored yet.
pub struct ToScore {
    pub study: String,
    pub region: String,
}

pub fn worklist(
    signed: &Signed<'_>,
    rows: &str,
    message: Option<&str>,
    saved: Option<&str>,
    regions: &[RegionState],
    to_score: &[ToScore],
) -> String {
    let mut body = String::new();
    if let Some(m) = message {
        let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", escape(m));
    }
    if let Some(s) = saved {
        let _ = write!(body, "<p class=\"saved\" role=\"status\">{}</p>", escape(s));
    }
    let csrf = escape(signed.csrf);
    let _ = write!(
        body,
        "<h1>Worklist</h1><p id=\"live\" role=\"status\" aria-live=\"polite\">Live: changes appear without a \
         reload.</p><form method=\"post\" action=\"/room/claim-next\"><input type=\"hidden\" name=\"csrf\" \
         value=\"{csrf}\"><button type=\"submit\" accesskey=\"n\">Claim the next study</button></form><table id=\"worklist\" data-rows=\"/room/worklist/rows\"><caption>Studies assigned to you, then \
         studies you may claim, in Meridian's order</caption><thead><tr><th scope=\"col\">Priority</th>\
         <th scope=\"col\">Due</th><th scope=\"col\">Modality</th><th scope=\"col\">Body part</th>\
         <th scope=\"col\">Read</th><th scope=\"col\">Delivery</th><th scope=\"col\">Home region</th>\
         <th scope=\"col\">Language</th><th scope=\"col\">Tenant</th><th scope=\"col\">Study</th><th scope=\"col\">Action</th></tr></thead>\
         <tbody>{rows}</tbody></table>"
    );
    if !to_score.is_empty() {
        body.push_str(
            "<section aria-labelledby=\"to-score-title\"><h2 id=\"to-score-title\">Peer reviews to score</h2>\
             <p>Your blinded reads are signed: score the reads you reviewed (RADPEER).</p><ul id=\"to-score\">",
        );
        for t in to_score {
            let _ = write!(
                body,
                "<li><a href=\"/room/studies/{id}?region={region}#review\">Study <code>{short}</code></a> \
                 ({region_text})</li>",
                id = escape(&query_part(&t.study)),
                region = escape(&query_part(&t.region)),
                short = escape(short(&t.study)),
                region_text = escape(&t.region),
            );
        }
        body.push_str("</ul></section>");
    }
    // Which regions answer: studies homed in one that does not still show
    // (their worklist entries are copied here) but cannot be claimed or
    // reported until it is back.
    let down: Vec<&str> = regions.iter().filter(|r| !r.answers).map(|r| r.name.as_str()).collect();
    body.push_str(
        "<section aria-labelledby=\"regions-title\"><h2 id=\"regions-title\">Regions</h2><ul id=\"regions\">",
    );
    for r in regions {
        let state = if r.answers { "answers" } else { "does not answer" };
        let _ = write!(body, "<li data-region=\"{0}\">{0}: {1}</li>", escape(&r.name), state);
    }
    body.push_str("</ul>");
    if !down.is_empty() {
        let _ = write!(
            body,
            "<p class=\"error\" role=\"alert\">{} does not answer: its studies stay listed, but claims, releases, \
             drafts and signatures for them wait until it is back; every other region's work goes on.</p>",
            escape(&down.join(", "))
        );
    }
    body.push_str(
        "</section><section aria-labelledby=\"why-title\"><h2 id=\"why-title\">Why can I not take a study?</h2>\
         <form method=\"get\" action=\"/room/why\"><label>Study id <input name=\"study\" required size=\"40\"></label> \
         <button type=\"submit\">Explain</button></form></section>",
    );
    layout("Worklist", Some(signed), &body)
}

/// Rows for the studies `held` by the reader (open, release) and those
/// `offered` to them (claim), each naming its home region (where commands
/// about it go).
pub fn worklist_rows(held: &[WorklistEntry], offered: &[WorklistEntry], csrf: &str) -> String {
    let mut out = String::new();
    for e in held {
        let action = format!(
            "<a class=\"button\" href=\"/room/studies/{id}?region={home}\">Open</a> \
             <form method=\"post\" action=\"/room/release\" class=\"inline\">{hidden}\
             <label>Reason <input name=\"reason\" required></label> \
             <button type=\"submit\">Release</button></form>",
            id = escape(&e.study_id),
            home = escape(&e.home_region),
            hidden = hidden_study(e, csrf)
        );
        row(&mut out, e, "held", &action);
    }
    for e in offered {
        let action = format!(
            "<form method=\"post\" action=\"/room/claim\" class=\"inline\">{}\
             <button type=\"submit\" aria-label=\"Claim {} study {}\">Claim</button></form>",
            hidden_study(e, csrf),
            escape(&e.modality),
            escape(short(&e.study_id))
        );
        row(&mut out, e, "offered", &action);
    }
    if held.is_empty() && offered.is_empty() {
        out.push_str("<tr><td colspan=\"11\">Nothing to read now.</td></tr>");
    }
    out
}

fn hidden_study(e: &WorklistEntry, csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"study\" value=\"{}\">\
         <input type=\"hidden\" name=\"region\" value=\"{}\">",
        escape(csrf),
        escape(&e.study_id),
        escape(&e.home_region)
    )
}

/// A read type as the worklist says it: a peer review is read blind.
fn read_label(read_type: &str) -> String {
    match read_type {
        "peer_review" => "peer review (blinded)".into(),
        other => other.replace('_', " "),
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn row(out: &mut String, e: &WorklistEntry, kind: &str, action: &str) {
    let deadline = e.deadline.as_ref().and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok());
    let due = deadline.map(|t| t.to_string()).unwrap_or_default();
    let flagged = if e.ai_flagged { " <span class=\"flag\">AI flagged</span>" } else { "" };
    let _ = write!(
        out,
        "<tr class=\"{kind} {priority}\" data-study=\"{id}\"><td>{priority}{flagged}</td>\
         <td><time datetime=\"{due}\" data-deadline=\"{due}\">{due}</time></td><td>{modality}</td><td>{body}</td>\
         <td>{read}</td><td>{delivery}</td><td>{home}</td><td lang=\"{language}\">{language}</td><td>{tenant}</td><td><code title=\"{id}\">{short}</code></td>\
         <td>{action}</td></tr>",
        priority = escape(&e.priority),
        id = escape(&e.study_id),
        due = escape(&due),
        modality = escape(&e.modality),
        body = escape(&e.body_part),
        read = escape(&read_label(&e.read_type)),
        delivery = escape(&e.delivery_model),
        home = escape(&e.home_region),
        language = escape(&e.language),
        tenant = escape(&e.tenant),
        short = escape(short(&e.study_id)),
    );
}

/// Each eligibility rule routing checked for the reader and the study.
pub fn why(signed: &Signed<'_>, study: &str, eligible: bool, checks: &[(String, bool, String)]) -> String {
    let mut body = format!(
        "<p><a href=\"/room/worklist\">Back to the worklist</a></p><h1>Study <code>{}</code></h1><p>{}</p>\
         <table><caption>Each rule routing checks</caption><thead><tr><th scope=\"col\">Rule</th>\
         <th scope=\"col\">Holds</th><th scope=\"col\">Why</th></tr></thead><tbody>",
        escape(study),
        if eligible { "You may take this study." } else { "You may not take this study now:" }
    );
    for (rule, passed, reason) in checks {
        let _ = write!(
            body,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td></tr>",
            if *passed { "holds" } else { "fails" },
            escape(rule),
            if *passed { "yes" } else { "<strong>no</strong>" },
            escape(reason)
        );
    }
    body.push_str("</tbody></table>");
    layout("Why", Some(signed), &body)
}

/// Percent-encodes what goes into a URL's path segment or query value.
pub fn query_part(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// What the report editor shows of a study.
pub struct Editor<'a> {
    pub study: &'a str,
    pub region: &'a str,
    /// The open read's type, when the reader holds one.
    pub read_type: Option<&'a str>,
    pub findings: &'a str,
    pub impression: &'a str,
    /// The draft version shown (0: none saved).
    pub version: u32,
    /// Where the images are: the region and its DICOMweb path.
    pub images: Option<(&'a str, &'a str)>,
    pub message: Option<&'a str>,
    pub saved: Option<&'a str>,
    /// The study's template in the contract's language, if it has one.
    pub template: Option<&'a meridian_proto::reporting::v1::StudyTemplate>,
    /// The contract's report language (BCP 47).
    pub language: &'a str,
    /// The coded fields' values as last saved.
    pub fields: &'a std::collections::BTreeMap<String, String>,
    /// The reader's signed reads of the study: (read type, status,
    /// amendments so far), each open to an addendum.
    pub signed: Vec<(String, String, usize)>,
    /// The order it was made for, if one was matched.
    pub order: Option<&'a meridian_proto::reporting::v1::StudyOrder>,
    /// The study's peer review, when the reader reviews it and signed
    /// their blinded read, with the reviewed read (its type and text).
    pub review: Option<Reviewed<'a>>,
    /// The study's critical result as it stands, said as a reader reads it.
    pub critical: Option<String>,
    /// The patient's other studies with their signed reads, newest first.
    pub priors: &'a [meridian_proto::reporting::v1::Prior],
}

/// The patient's priors: when, what, and each signed read's impression
/// (its findings a click away).
fn priors(e: &Editor<'_>) -> String {
    if e.priors.is_empty() {
        return String::new();
    }
    let mut out =
        String::from("<section aria-labelledby=\"priors-title\"><h2 id=\"priors-title\">Priors</h2><ol id=\"priors\">");
    for p in e.priors {
        let when = p
            .completed_at
            .as_ref()
            .and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
            .map(|t| t.strftime("%Y-%m-%d").to_string())
            .unwrap_or_default();
        let _ = write!(
            out,
            "<li><p><strong>{when}</strong> {modality} {body} <code title=\"{id}\">{short}</code></p>",
            when = escape(&when),
            modality = escape(&p.modality),
            body = escape(&p.body_part),
            id = escape(&p.study_id),
            short = escape(short(&p.study_id)),
        );
        for r in &p.reports {
            let sections = r.text.as_ref().and_then(|t| t.sections.as_ref());
            let _ = write!(
                out,
                "<details><summary>{read} ({status}): {impression}</summary><p>{findings}</p></details>",
                read = escape(&r.read_type.replace('_', " ")),
                status = escape(&r.status),
                impression = escape(sections.map_or("", |s| s.impression.as_str())),
                findings = escape(sections.map_or("", |s| s.findings.as_str())),
            );
        }
        out.push_str("</li>");
    }
    out.push_str("</ol></section>");
    out
}

/// What a reviewer scores, once their blinded read is signed.
pub struct Reviewed<'a> {
    pub review: &'a meridian_proto::reporting::v1::PeerReview,
    pub read_type: &'a str,
    pub findings: &'a str,
    pub impression: &'a str,
}

/// RADPEER 2016's scores, as a reviewer chooses one.
pub const RADPEER: [(&str, &str); 5] = [
    ("1", "1: concur with interpretation"),
    (
        "2a",
        "2a: discrepancy, not ordinarily expected to be made (understandable miss), unlikely clinically significant",
    ),
    ("2b", "2b: discrepancy, not ordinarily expected to be made (understandable miss), likely clinically significant"),
    ("3a", "3a: discrepancy, should be made most of the time, unlikely clinically significant"),
    ("3b", "3b: discrepancy, should be made most of the time, likely clinically significant"),
];

/// The peer review: the reviewed read, and the RADPEER score given or
/// the form to give it.
fn peer_review(signed: &Signed<'_>, e: &Editor<'_>, r: &Reviewed<'_>) -> String {
    let mut out = format!(
        "<section aria-labelledby=\"review-title\" id=\"review\"><h2 id=\"review-title\">Peer review of the {read} \
         read</h2><p>Your blinded read is signed; the read you review:</p><dl><dt>Findings</dt><dd>{findings}</dd>\
         <dt>Impression</dt><dd>{impression}</dd></dl>",
        read = escape(r.read_type),
        findings = escape(r.findings),
        impression = escape(r.impression),
    );
    if r.review.score.is_empty() {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/room/studies/{study}/score?region={region}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><fieldset><legend>RADPEER score</legend>",
            study = escape(&query_part(e.study)),
            region = escape(&query_part(e.region)),
            csrf = escape(signed.csrf),
        );
        for (value, label) in RADPEER {
            let _ = write!(
                out,
                "<p><input type=\"radio\" name=\"score\" id=\"score-{value}\" value=\"{value}\" required> \
                 <label for=\"score-{value}\">{label}</label></p>",
                label = escape(label)
            );
        }
        out.push_str("</fieldset><p><button type=\"submit\">Score the read</button></p></form>");
    } else {
        let standing = if r.review.standing_score.is_empty() {
            "awaits arbitration".to_owned()
        } else {
            format!("stands at {}", r.review.standing_score)
        };
        let _ = write!(
            out,
            "<p id=\"scored\">You scored {}; the score {}.</p>",
            escape(&r.review.score),
            escape(&standing)
        );
    }
    out.push_str("</section>");
    out
}

/// The template's coded fields as labelled choices (`field.<name>`), each
/// with the value last saved chosen; a required one is marked.
fn coded_fields(e: &Editor<'_>) -> String {
    let Some(t) = e.template else { return String::new() };
    let mut out = String::new();
    for f in &t.fields {
        let id = format!("field-{}", f.name);
        let title = if f.title.is_empty() { &f.name } else { &f.title };
        let required = if f.required { " required" } else { "" };
        let _ = write!(
            out,
            "<p><label for=\"{id}\">{title}{mark}</label> <select id=\"{id}\" name=\"field.{name}\"{required}>\
             <option value=\"\">(not given)</option>",
            id = escape(&id),
            title = escape(title),
            mark = if f.required { " (required to sign)" } else { "" },
            name = escape(&f.name),
        );
        let chosen = e.fields.get(&f.name);
        for v in &f.values {
            let selected = if chosen == Some(v) { " selected" } else { "" };
            let _ = write!(out, "<option value=\"{0}\"{selected}>{0}</option>", escape(v));
        }
        out.push_str("</select></p>");
    }
    out
}

pub fn editor(signed: &Signed<'_>, e: &Editor<'_>) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<p><a href=\"/room/worklist\">Back to the worklist</a></p><h1>Study <code>{}</code></h1>\
         <p>Home region {}</p>",
        escape(e.study),
        escape(e.region)
    );
    if let Some(m) = e.message {
        let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", escape(m));
    }
    if let Some(s) = e.saved {
        let _ = write!(body, "<p class=\"saved\" role=\"status\">{}</p>", escape(s));
    }
    if let Some(c) = &e.critical {
        let _ = write!(body, "<p id=\"critical-state\" class=\"flag\" role=\"status\">{}</p>", escape(c));
    }
    if let Some((region, path)) = e.images {
        // The viewer opens the study where its images are: the home, or
        // the region its de-identified derivative landed in.
        let uid = path.rsplit('/').next().unwrap_or_default();
        let _ = write!(
            body,
            "<p><a class=\"button\" id=\"viewer\" href=\"/room/viewer/viewer/{region}?StudyInstanceUIDs={uid}\" \
             target=\"_blank\" rel=\"noopener\">Open the images</a> <span>from {region_text}'s DICOMweb</span></p>",
            region = escape(&query_part(region)),
            uid = escape(&query_part(uid)),
            region_text = escape(region),
        );
    }
    if let Some(o) = e.order {
        let _ = write!(
            body,
            "<section aria-labelledby=\"order-title\"><h2 id=\"order-title\">The order</h2><dl id=\"order\">\
             <dt>Reason for exam</dt><dd>{}</dd><dt>Procedure</dt><dd>{}</dd><dt>Ordering clinician</dt><dd>{}</dd>\
             <dt>Priority</dt><dd>{}</dd></dl></section>",
            escape(&o.reason),
            escape(&o.procedure),
            escape(&o.ordering_clinician),
            escape(&o.priority)
        );
    }
    for (read, status, amendments) in &e.signed {
        if status == "entered-in-error" {
            let _ = write!(
                body,
                "<section><h2>Your {} read: entered in error</h2><p>It takes no more amendments.</p></section>",
                escape(&read.replace('_', " "))
            );
            continue;
        }
        let _ = write!(
            body,
            "<section aria-labelledby=\"addendum-{read}\"><h2 id=\"addendum-{read}\">Your {read_label} read: {status}\
             {count}</h2><form method=\"post\" action=\"/room/studies/{study}/addendum?region={region}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"read_type\" \
             value=\"{read}\"><p><label for=\"addendum-text-{read}\">Addendum</label><br><textarea \
             id=\"addendum-text-{read}\" name=\"text\" rows=\"3\" cols=\"80\" required></textarea></p>\
             <p><button type=\"submit\">Add the addendum</button></p></form>\
             <details><summary>Correct it, or mark it entered in error</summary>\
             <form method=\"post\" action=\"/room/studies/{study}/correct?region={region}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"read_type\" \
             value=\"{read}\"><p><label for=\"correct-findings-{read}\">Corrected findings</label><br><textarea \
             id=\"correct-findings-{read}\" name=\"findings\" rows=\"4\" cols=\"80\" required></textarea></p>\
             <p><label for=\"correct-impression-{read}\">Corrected impression</label><br><textarea \
             id=\"correct-impression-{read}\" name=\"impression\" rows=\"2\" cols=\"80\" required></textarea></p>\
             <p><label for=\"correct-reason-{read}\">Why</label> <input id=\"correct-reason-{read}\" name=\"reason\" \
             required size=\"60\"></p><p><button type=\"submit\">Issue the correction</button></p></form>\
             <form method=\"post\" action=\"/room/studies/{study}/entered-in-error?region={region}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"read_type\" \
             value=\"{read}\"><p><label for=\"error-reason-{read}\">Why it should never have been issued</label> \
             <input id=\"error-reason-{read}\" name=\"reason\" required size=\"60\"></p>\
             <p><button type=\"submit\">Mark entered in error</button></p></form></details></section>",
            read = escape(read),
            read_label = escape(&read.replace('_', " ")),
            status = escape(status),
            count = if *amendments > 0 { format!(", {amendments} amendment(s)") } else { String::new() },
            study = escape(&query_part(e.study)),
            region = escape(&query_part(e.region)),
            csrf = escape(signed.csrf),
        );
    }
    body.push_str(&priors(e));
    if let Some(r) = &e.review {
        body.push_str(&peer_review(signed, e, r));
    }
    let Some(read_type) = e.read_type else {
        body.push_str("<p>You do not hold a read of this study (released, reassigned or signed).</p>");
        return layout("Study", Some(signed), &body);
    };
    let action = |what: &str| format!("/room/studies/{}/{what}?region={}", escape(e.study), escape(e.region));
    let _ = write!(
        body,
        "<form method=\"post\" action=\"{draft}\" id=\"report\" data-study=\"{study_id}\">\
         <p id=\"held\" class=\"error\" role=\"alert\" hidden></p>\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"version\" value=\"{version}\">\
         <h2>{title}</h2>\
         <p><label for=\"findings\">{findings_title}</label><br><textarea id=\"findings\" name=\"findings\" \
         rows=\"8\" cols=\"80\" lang=\"{lang}\">{findings}</textarea></p>\
         <p><label for=\"impression\">{impression_title}</label><br><textarea id=\"impression\" \
         name=\"impression\" rows=\"4\" cols=\"80\" lang=\"{lang}\">{impression}</textarea></p>{fields}\
         <p id=\"autosave\" role=\"status\" aria-live=\"polite\"></p>\
         <p><button type=\"submit\">Save draft</button> \
         <button type=\"submit\" formaction=\"{sign}\" name=\"read_type\" value=\"{read}\">Sign {read_label}</button></p>\
         </form>",
        draft = action("draft"),
        study_id = escape(e.study),
        sign = action("sign"),
        csrf = escape(signed.csrf),
        version = e.version,
        title = escape(e.template.map_or("Report", |t| t.title.as_str())),
        findings_title =
            escape(e.template.map(|t| t.findings_title.as_str()).filter(|t| !t.is_empty()).unwrap_or("Findings")),
        impression_title =
            escape(e.template.map(|t| t.impression_title.as_str()).filter(|t| !t.is_empty()).unwrap_or("Impression")),
        lang = escape(e.language),
        fields = coded_fields(e),
        findings = escape(e.findings),
        impression = escape(e.impression),
        read = escape(read_type),
        read_label = escape(&read_type.replace('_', " ")),
    );
    // A critical result (ACR: category 1 within minutes, 2 within hours,
    // 3 within days) and the record of telling someone.
    let _ = write!(
        body,
        "<section aria-labelledby=\"critical-title\"><h2 id=\"critical-title\">Critical result</h2>\
         <form method=\"post\" action=\"{flag}\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" \
         value=\"{csrf}\"><label for=\"category\">ACR category</label> <select id=\"category\" name=\"category\">\
         <option value=\"1\">1: within minutes</option><option value=\"2\">2: within hours</option>\
         <option value=\"3\">3: within days</option></select> <button type=\"submit\">Flag</button></form>\
         <form method=\"post\" action=\"{told}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <p><label for=\"recipient\">Told</label> <input id=\"recipient\" name=\"recipient\" required \
         placeholder=\"Dr Lee, ED attending\"> <label for=\"method\">by</label> <select id=\"method\" \
         name=\"method\"><option value=\"phone\">phone</option><option value=\"in_person\">in person</option>\
         <option value=\"secure_message\">secure message</option></select> \
         <button type=\"submit\">Record the communication</button></p></form></section>",
        flag = action("critical"),
        told = action("communication"),
        csrf = escape(signed.csrf),
    );
    layout("Study", Some(signed), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(study: &str, priority: &str) -> WorklistEntry {
        WorklistEntry {
            study_id: study.into(),
            tenant: "acme".into(),
            home_region: "us-east".into(),
            modality: "CT".into(),
            body_part: "HEAD".into(),
            priority: priority.into(),
            read_type: "preliminary".into(),
            delivery_model: "offshore".into(),
            deadline: Some(prost_types_timestamp(1_800_000_000)),
            ..Default::default()
        }
    }

    fn prost_types_timestamp(seconds: i64) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos: 0 }
    }

    #[test]
    fn text_is_escaped_everywhere_it_is_shown() {
        assert_eq!(escape("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        let rows = worklist_rows(&[], &[entry("\"><script>alert(1)</script>", "stat")], "c\"sr");
        assert!(!rows.contains("<script>") && rows.contains("&lt;script&gt;"), "{rows}");
        assert!(rows.contains("value=\"c&quot;sr\""), "{rows}");
    }

    #[test]
    fn held_studies_open_and_release_offered_ones_claim_each_naming_its_home() {
        let rows = worklist_rows(&[entry("held-study-1", "stat")], &[entry("offered-2", "routine")], "token");
        let (held, offered) = rows.split_once("offered-2").unwrap();
        assert!(held.contains("href=\"/room/studies/held-study-1?region=us-east\"") && held.contains("Release"));
        assert!(held.contains("<label>Reason <input name=\"reason\" required></label>"), "a labelled reason");
        assert!(offered.contains("action=\"/room/claim\"") || rows.contains("action=\"/room/claim\""));
        assert!(rows.contains("datetime=\"2027-01-15T08:00:00Z\""), "{rows}");
        assert_eq!(rows.matches("name=\"csrf\" value=\"token\"").count(), 2, "each form carries the CSRF token");
        assert!(worklist_rows(&[], &[], "t").contains("Nothing to read now."));
    }
}
