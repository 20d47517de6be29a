//! The `meridian` command. Parses arguments and hands over; the work is in
//! the library crates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// `println!` for a command's output: when stdout is a pipe whose reader
/// has gone (`meridian log tail | head`), the command ends quietly instead
/// of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*)
            && e.kind() == std::io::ErrorKind::BrokenPipe
        {
            std::process::exit(0);
        }
    }};
}

mod client;
mod compose;
mod dev;
mod room;
mod serve;

#[derive(Parser)]
#[command(name = "meridian", version, about = "Meridian teleradiology platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct SimulateArgs {
    /// The scenario: regions, contracts, arrivals, readers (TOML).
    scenario: PathBuf,
    /// More readers (`[[readers]]` TOML), e.g. a hiring plan to try.
    #[arg(long = "add")]
    add: Vec<PathBuf>,
    /// Which policies to run.
    #[arg(long, value_enum, default_value = "both")]
    policy: SimulatedPolicy,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the plot of queue depth and SLA at risk here (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SimulatedPolicy {
    Both,
    Meridian,
    Fifo,
}

#[derive(Subcommand)]
enum Command {
    /// Run every region of a configuration in one process, on embedded defaults.
    Dev(dev::DevArgs),
    /// Run one service of one region as its own process, on the region's Kafka log.
    Serve(serve::ServeArgs),
    /// Run the reading room as its own process: readers sign in through an
    /// identity provider; it calls the regions' routing, reporting and DICOMweb.
    Room(room::RoomArgs),
    /// Configuration as code.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// A region's event log, through the running process.
    #[command(subcommand)]
    Log(LogCommand),
    /// A region's projections, through the running process.
    #[command(subcommand)]
    Projection(ProjectionCommand),
    /// A stopped region's study index, offline.
    #[command(subcommand)]
    Index(IndexCommand),
    /// The event catalogue: writer, aggregate, data class, stream, schema version.
    Events,
    /// Asks a running process's gRPC health service whether it serves
    /// (exit 0) or not (exit 1): for probes and `helm test`, where no shell is.
    Health {
        /// The process's gRPC address, e.g. `http://meridian-us-east-routing:50051`.
        #[arg(long)]
        endpoint: String,
        /// The service asked about (`meridian.routing.v1.RoutingService`);
        /// the whole process when absent.
        #[arg(long, default_value = "")]
        service: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
        /// The CA (PEM) that signs the process's certificate, for an https:// endpoint.
        #[arg(long, env = "MERIDIAN_CA")]
        ca: Option<PathBuf>,
    },
    /// Run the routing engine over a simulated day and report SLA compliance,
    /// utilisation and escalations, side by side with a FIFO worklist.
    Simulate(SimulateArgs),
    /// A reader's worklist from the region they sit in (every region's studies that reach them; no PHI).
    Worklist {
        /// `meridian dev`'s data directory.
        #[arg(long, default_value = ".meridian-dev")]
        data_dir: PathBuf,
        /// Act as this principal of tokens.json (a reader).
        #[arg(long = "as", required_unless_present = "token", conflicts_with = "token")]
        as_principal: Option<String>,
        /// A bearer token to use instead of `--as` (then `--reader` names the reader).
        #[arg(long)]
        token: Option<String>,
        /// The gRPC address of the region the reader sits in (a deployment),
        /// instead of finding it through endpoints.json.
        #[arg(long)]
        endpoint: Option<String>,
        /// The CA (PEM) that signs the region's certificate, when it speaks TLS.
        #[arg(long, env = "MERIDIAN_CA")]
        ca: Option<PathBuf>,
        /// The reader id, when the principal is a group admin.
        #[arg(long)]
        reader: Option<String>,
        /// The most entries to show, first in the total order across regions.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Claim a study (in its home region).
    Claim {
        study: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        reader: Option<String>,
    },
    /// Upload DICOM Part-10 files to a region over gRPC (the facility's
    /// principal, e.g. `--as acme-pacs`); directories are walked.
    Send {
        /// Files or directories of .dcm files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Claim the first eligible study in the region's order.
    ClaimNext {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        reader: Option<String>,
    },
    /// The tenant's studies no contract takes, with why (a facility's or
    /// tenant admin's principal, e.g. `--as acme-pacs`).
    Unroutable {
        #[command(flatten)]
        target: Target,
        /// At most this many, newest first.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// A tenant's charges, credits and unpriced reads of a month (a tenant
    /// administrator's principal, e.g. `--as acme-admin`).
    Ledger {
        #[command(flatten)]
        month: TenantMonth,
    },
    /// What a reading group earned in a month, gathered from every region
    /// (its group admin's principal, e.g. `--as atlantic-admin`).
    Payouts {
        /// `meridian dev`'s data directory.
        #[arg(long, default_value = ".meridian-dev")]
        data_dir: PathBuf,
        #[arg(long = "as")]
        as_principal: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        period: String,
    },
    /// A tenant's invoices for a month.
    Invoice {
        #[command(subcommand)]
        command: InvoiceCommand,
    },
    /// A tenant's reporting figures for a month: turnaround percentiles,
    /// SLA compliance, critical results (its administrator).
    Kpi {
        #[command(flatten)]
        month: TenantMonth,
    },
    /// A study's report: the reader who holds its read drafts and signs it
    /// (e.g. `--as dr-ana-ortiz`), in the study's home region.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// AI triage: the models a region runs (`--as sre` turns them on and
    /// off), and what they said of a study (`--as acme-admin`).
    Ai {
        #[command(subcommand)]
        command: AiCommand,
    },
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Where patient data is: proof of residency.
    #[command(subcommand)]
    Residency(ResidencyCommand),
    /// A reader as a region knows them, or their availability changed (in
    /// the region they sit in: only it writes their events).
    #[command(subcommand)]
    Reader(ReaderCommand),
    /// Give a claimed study back to the worklist.
    Release {
        study: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        reader: Option<String>,
        /// Why, for the record.
        #[arg(long, default_value = "released by the reader")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum AiCommand {
    /// The models loaded, and whether each is on.
    Models {
        #[command(flatten)]
        target: Target,
    },
    /// Turn a model on again.
    Enable {
        name: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        reason: String,
    },
    /// Turn a model off: studies are no longer read by it.
    Disable {
        name: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        reason: String,
    },
    /// What the models said of a study (codes only).
    Triage {
        study: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum ReportCommand {
    /// Save a new version of the draft for the read you hold.
    Draft {
        /// The opaque study id, as `meridian worklist` shows it.
        study: String,
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value = "")]
        findings: String,
        #[arg(long, default_value = "")]
        impression: String,
        /// A coded field of the study's template, `name=value` (repeat for more).
        #[arg(long = "field", value_parser = field_value)]
        fields: Vec<(String, String)>,
        /// The version you edited (refused if another was saved since); 0: the latest.
        #[arg(long, default_value_t = 0)]
        base_version: u32,
    },
    /// Sign the read you hold with a saved version (the latest by default).
    Sign {
        study: String,
        #[command(flatten)]
        target: Target,
        /// The read: preliminary, final, … (the one you hold).
        #[arg(long)]
        read_type: String,
        #[arg(long, default_value_t = 0)]
        version: u32,
        /// A final after another reader's preliminary: none, minor or major.
        #[arg(long, default_value = "")]
        discrepancy: String,
    },
    /// Append an addendum to a report you signed (the signed text stays).
    Addendum {
        study: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        read_type: String,
        #[arg(long)]
        text: String,
    },
    /// Correct a report you signed: new text, current from now on.
    Correct {
        study: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        read_type: String,
        #[arg(long, default_value = "")]
        findings: String,
        #[arg(long)]
        impression: String,
        #[arg(long)]
        reason: String,
    },
    /// Mark a report you signed as entered in error.
    EnteredInError {
        study: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        read_type: String,
        #[arg(long)]
        reason: String,
    },
    /// Where a viewer opens a study you read: its DICOMweb URL in its home
    /// region (the UID is PHI: the request is audited).
    Open {
        study: String,
        #[command(flatten)]
        target: Target,
    },
    /// Flag a critical result of a study you read (ACR category 1, 2, 3):
    /// it must reach a responsible person within the contract's window.
    Critical {
        study: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        category: u32,
    },
    /// Score the report your blinded peer review read reviewed, by
    /// RADPEER 2016 (1, 2a, 2b, 3a, 3b), once your review read is signed.
    Score {
        study: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        score: String,
    },
    /// Settle a peer review score of 2b, 3a or 3b (an admin of the reviewed
    /// reader's group): the score that stands.
    Arbitrate {
        study: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        score: String,
    },
    /// Record who was reached about a study's critical result, and how.
    Communicated {
        study: String,
        #[command(flatten)]
        target: Target,
        /// The person reached, e.g. "Dr Lee, ED attending".
        #[arg(long)]
        recipient: String,
        /// phone, in_person or secure_message.
        #[arg(long)]
        method: String,
    },
    /// The tenant's report deliveries not yet taken: still trying, or
    /// dead letters (its administrator, e.g. `--as acme-admin`).
    Deliveries {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        tenant: String,
    },
    /// Send a delivery again (a dead letter once its receiver is fixed).
    Redeliver {
        delivery: String,
        #[command(flatten)]
        target: Target,
    },
    /// A study's reports, with the text of each read's current version and
    /// of each amendment (audited).
    Show {
        study: String,
        #[command(flatten)]
        target: Target,
    },
    /// Reports by status, without text: a tenant's (`--tenant`, its
    /// administrator or facility systems), or your own as a reader.
    List {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value = "")]
        tenant: String,
        /// draft, preliminary, final, appended, corrected, entered-in-error.
        #[arg(long, default_value = "")]
        status: String,
    },
}

#[derive(Subcommand)]
enum InvoiceCommand {
    /// What the month's invoice would say now, one per contract: lines
    /// with the events behind them, capped credits, what blocks issuing.
    Preview {
        #[command(flatten)]
        month: TenantMonth,
        /// One CSV row per line instead of text.
        #[arg(long)]
        csv: bool,
    },
    /// Issue the month's invoices once it has ended (a platform principal
    /// with the billing role, e.g. `--as billing-clerk`); again, the same.
    Issue {
        #[command(flatten)]
        month: TenantMonth,
    },
    /// The month's issued invoices.
    List {
        #[command(flatten)]
        month: TenantMonth,
    },
    /// An issued invoice as it was issued, every line with the events
    /// behind it, and the credit notes that correct it.
    Show {
        #[command(flatten)]
        target: Target,
        /// The invoice's number, e.g. US-000001.
        #[arg(long)]
        number: String,
        /// Export: one CSV row per line.
        #[arg(long, conflicts_with = "json")]
        csv: bool,
        /// Export: the whole invoice as JSON (amounts in minor units).
        #[arg(long)]
        json: bool,
    },
    /// What is behind a charge, credit or unpriced read (an event id from
    /// `meridian ledger` or an invoice line): the read, each part of its
    /// price with the contract field that set it, and its cause.
    Explain {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        tenant: String,
        /// The ChargePosted, CreditPosted or ChargeUnpriced event id.
        #[arg(long)]
        event: String,
    },
    /// Correct an issued invoice with a credit note (a platform principal
    /// with the billing role): some units of some of its lines, credited at
    /// their unit price.
    Credit {
        #[command(flatten)]
        target: Target,
        /// The invoice's number, e.g. US-000001.
        #[arg(long)]
        number: String,
        /// A line to credit, counted from 1 as `invoice show` lists them,
        /// with how many of its units (`2:1`); all that are left without.
        #[arg(long = "line", required = true, value_parser = client::credit_line)]
        lines: Vec<(u32, u64)>,
        /// Why: printed on the credit note.
        #[arg(long)]
        reason: String,
        /// Names the request: the same key again returns the same credit
        /// note. By default, derived from the number, lines and reason, so
        /// running the same command twice credits once.
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration directory; report every problem.
    Check {
        /// The configuration directory.
        dir: PathBuf,
    },
}

/// A tenant's month in a region: what the ledger, invoice and figure
/// commands are about.
#[derive(Args)]
struct TenantMonth {
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    tenant: String,
    /// The month, "2026-11" (in the contract's billing time zone for money).
    #[arg(long)]
    period: String,
}

/// How to reach a running region.
#[derive(Args, Clone)]
pub struct Target {
    /// The region.
    #[arg(long)]
    pub region: String,
    /// `meridian dev`'s data directory (endpoints.json, tokens.json).
    #[arg(long, default_value = ".meridian-dev")]
    pub data_dir: PathBuf,
    /// Act as this principal of `<data-dir>/tokens.json`.
    #[arg(long = "as", default_value = "sre", conflicts_with = "token")]
    pub as_principal: String,
    /// A bearer token to use instead of `--as`.
    #[arg(long)]
    pub token: Option<String>,
    /// The region's gRPC address (`http://host:port`) instead of
    /// `<data-dir>/endpoints.json`: a deployed region, or one service's
    /// process.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// The CA (PEM) that signs the region's certificate, when it speaks TLS.
    #[arg(long, env = "MERIDIAN_CA")]
    pub ca: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ReaderCommand {
    /// The reader: where they sit, status, shifts, licences, open assignments.
    Show {
        #[command(flatten)]
        target: Target,
        /// The reader id, when the principal is a group admin.
        #[arg(long)]
        reader: Option<String>,
    },
    /// Available, busy or away (the reader, or their group's admin).
    Availability {
        /// "available", "busy" or "away".
        status: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        reader: Option<String>,
    },
}

#[derive(Subcommand)]
enum ResidencyCommand {
    /// Every region's objects checked against the configuration (PHI only
    /// in its tenant's home regions and named by its event, derivatives only
    /// in their contract's destinations, nothing outside the key scheme, no
    /// purged object left), every access to patient data and every refused
    /// write (platform SRE). Exits 1 naming region, key and rule when any
    /// object may not be where it is; every region is asked, whatever one
    /// answers.
    Report {
        /// `meridian dev`'s data directory: every region of endpoints.json.
        #[arg(long, default_value = ".meridian-dev")]
        data_dir: PathBuf,
        /// A deployed region's gRPC address, `REGION=URL` (repeat for each
        /// region), instead of endpoints.json.
        #[arg(long = "endpoint", value_name = "REGION=URL")]
        endpoints: Vec<String>,
        /// Act as this principal of `<data-dir>/tokens.json`.
        #[arg(long = "as", default_value = "sre", conflicts_with = "token")]
        as_principal: String,
        /// A bearer token to use instead of `--as`.
        #[arg(long)]
        token: Option<String>,
        /// The CA (PEM) that signs the regions' certificates, when they speak TLS.
        #[arg(long, env = "MERIDIAN_CA")]
        ca: Option<PathBuf>,
        /// Only this tenant's objects and records.
        #[arg(long)]
        tenant: Option<String>,
        /// Accesses and refusals from this instant (RFC 3339) or day, inclusive.
        #[arg(long)]
        from: Option<String>,
        /// Up to this instant or day, exclusive.
        #[arg(long)]
        to: Option<String>,
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
        /// Every object of every store besides (the inventory), not only
        /// counts and violations.
        #[arg(long)]
        objects: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// A tenant's audit trail in a region, as JSON lines in the shape of
    /// IHE ATNA audit messages (opaque ids; its administrator, or SRE).
    Export {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        tenant: String,
        /// From this instant (RFC 3339) or day (YYYY-MM-DD, UTC), inclusive.
        #[arg(long)]
        from: Option<String>,
        /// Up to this instant or day, exclusive.
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Show the region's events (PHI payloads stay sealed).
    Tail {
        #[command(flatten)]
        target: Target,
        /// Only this study (opaque study id).
        #[arg(long)]
        study: Option<String>,
        /// Only these streams (ingest, storage, audit, routing…).
        #[arg(long = "stream")]
        streams: Vec<String>,
        /// The copies of this other region's operational events that the
        /// replicator brought into the region, instead of its own.
        #[arg(long, value_name = "REGION")]
        copies_of: Option<String>,
        /// Keep following new events.
        #[arg(long, short)]
        follow: bool,
        /// One JSON object per line (envelope fields and the payload in
        /// protobuf's canonical JSON mapping), for jq.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ProjectionCommand {
    /// Throw a projection away and rebuild it by replaying the log.
    Rebuild {
        /// The projection, e.g. events.summary.
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum IndexCommand {
    /// Give the study index's free pages back to the file system (the
    /// file never shrinks while a region runs). Stop `meridian dev` first.
    Compact {
        /// `meridian dev`'s data directory.
        #[arg(long, default_value = ".meridian-dev")]
        data_dir: PathBuf,
        /// Only this region (default: every region in the data directory).
        #[arg(long)]
        region: Vec<String>,
    },
}

/// Compacts each region's `index.redb` under `data_dir`.
fn index_compact(data_dir: &std::path::Path, regions: Vec<String>) -> anyhow::Result<ExitCode> {
    let regions = if regions.is_empty() {
        let mut found: Vec<String> = std::fs::read_dir(data_dir)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", data_dir.display()))?
            .filter_map(Result::ok)
            .filter(|e| e.path().join("index.redb").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        found.sort();
        found
    } else {
        regions
    };
    anyhow::ensure!(!regions.is_empty(), "no region with a study index under {}", data_dir.display());
    for region in regions {
        let path = data_dir.join(&region).join("index.redb");
        let started = std::time::Instant::now();
        let (before, after) = meridian_storage::index::StudyIndex::compact(&path)?;
        say!(
            "{region}: study index {:.1} MB -> {:.1} MB in {:.1} s",
            before as f64 / 1e6,
            after as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_events() {
    say!("{:<22} {:<8} {:<17} {:<6} {:<8} version", "event", "writer", "aggregate", "class", "stream");
    for info in meridian_events::payload::CATALOGUE {
        let name = info.type_name.rsplit('.').next().unwrap_or(info.type_name);
        say!(
            "{:<22} {:<8} {:<17} {:<6} {:<8} {}",
            name,
            info.writer,
            info.aggregate_type,
            info.data_class.as_str(),
            info.stream,
            info.schema_version
        );
    }
}

fn config_check(dir: &std::path::Path) -> ExitCode {
    match meridian_config::Platform::load(dir) {
        Ok(p) => {
            say!(
                "{}: ok ({} regions, {} tenants, {} contracts, {} reading groups, {} principals)",
                dir.display(),
                p.regions.len(),
                p.tenants.len(),
                p.contracts.len(),
                p.groups.len(),
                p.auth.principals.len()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            eprintln!("{problems}");
            eprintln!("{} problem(s) in {}", problems.0.len(), dir.display());
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Only the processes that serve export spans; a client command's
    // would be a trace of one call nobody asked for.
    let serves = matches!(cli.command, Command::Dev(_) | Command::Serve(_) | Command::Room(_));
    let exporting = match observe(serves) {
        Ok(exporting) => exporting,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(64);
        }
    };
    let result = match cli.command {
        Command::Events => {
            print_events();
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { endpoint, ca, service, timeout } => {
            client::health(&endpoint, ca.as_deref(), &service, timeout).await
        }
        Command::Simulate(args) => simulate(args),
        Command::Config(ConfigCommand::Check { dir }) => Ok(config_check(&dir)),
        Command::Dev(args) => dev::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Room(args) => room::run(args).await,
        Command::Log(LogCommand::Tail { target, study, streams, copies_of, follow, json }) => {
            let request = meridian_proto::admin::v1::TailLogRequest {
                study_id: study.unwrap_or_default(),
                follow,
                streams,
                copies_of: copies_of.unwrap_or_default(),
            };
            client::tail(&target, request, json).await
        }
        Command::Projection(ProjectionCommand::Rebuild { name, target }) => client::rebuild(&target, name).await,
        Command::Index(IndexCommand::Compact { data_dir, region }) => index_compact(&data_dir, region),
        Command::Worklist { data_dir, as_principal, token, endpoint, ca, reader, limit } => {
            let as_principal = as_principal.unwrap_or_default();
            let target = Target { region: String::new(), data_dir, as_principal, token, endpoint, ca };
            client::worklist(&target, reader, limit).await
        }
        Command::Report {
            command: ReportCommand::Draft { study, target, findings, impression, fields, base_version },
        } => client::report_draft(&target, &study, &findings, &impression, fields, base_version).await,
        Command::Report { command: ReportCommand::Sign { study, target, read_type, version, discrepancy } } => {
            client::report_sign(&target, &study, &read_type, version, &discrepancy).await
        }
        Command::Ai { command: AiCommand::Models { target } } => client::ai(&target, client::AiStep::Models).await,
        Command::Ai { command: AiCommand::Enable { name, target, reason } } => {
            client::ai(&target, client::AiStep::Switch { name, enabled: true, reason }).await
        }
        Command::Ai { command: AiCommand::Disable { name, target, reason } } => {
            client::ai(&target, client::AiStep::Switch { name, enabled: false, reason }).await
        }
        Command::Ai { command: AiCommand::Triage { study, target } } => {
            client::ai(&target, client::AiStep::Triage(study)).await
        }
        Command::Report { command: ReportCommand::List { target, tenant, status } } => {
            client::report_list(&target, &tenant, &status).await
        }
        Command::Report { command: ReportCommand::Show { study, target } } => {
            client::report_show(&target, &study).await
        }
        Command::Report { command: ReportCommand::Open { study, target } } => client::open_study(&target, &study).await,
        Command::Residency(ResidencyCommand::Report {
            data_dir,
            endpoints,
            as_principal,
            token,
            ca,
            tenant,
            from,
            to,
            json,
            objects,
        }) => {
            let target = Target { region: String::new(), data_dir, as_principal, token, endpoint: None, ca };
            let scope = client::ResidencyScope { tenant, from, to, objects };
            client::residency_report(&target, &endpoints, &scope, json).await
        }
        Command::Audit(AuditCommand::Export { target, tenant, from, to }) => {
            client::export_audit(&target, &tenant, from.as_deref(), to.as_deref()).await
        }
        Command::Kpi { month: m } => client::kpis(&m.target, &m.tenant, &m.period).await,
        Command::Report { command: ReportCommand::Critical { study, target, category } } => {
            client::critical(&target, &study, client::CriticalStep::Flag { category }).await
        }
        Command::Report { command: ReportCommand::Communicated { study, target, recipient, method } } => {
            client::critical(&target, &study, client::CriticalStep::Communicated { recipient, method }).await
        }
        Command::Report { command: ReportCommand::Score { study, target, score } } => {
            client::peer_review(&target, &study, &score, false).await
        }
        Command::Report { command: ReportCommand::Arbitrate { study, target, score } } => {
            client::peer_review(&target, &study, &score, true).await
        }
        Command::Report { command: ReportCommand::Deliveries { target, tenant } } => {
            client::deliveries(&target, Some(&tenant), None).await
        }
        Command::Report { command: ReportCommand::Redeliver { delivery, target } } => {
            client::deliveries(&target, None, Some(&delivery)).await
        }
        Command::Report { command: ReportCommand::Addendum { study, target, read_type, text } } => {
            client::report_amend(&target, &study, client::Amend::Addendum { read_type, text }).await
        }
        Command::Report {
            command: ReportCommand::Correct { study, target, read_type, findings, impression, reason },
        } => {
            client::report_amend(&target, &study, client::Amend::Correct { read_type, findings, impression, reason })
                .await
        }
        Command::Report { command: ReportCommand::EnteredInError { study, target, read_type, reason } } => {
            client::report_amend(&target, &study, client::Amend::EnteredInError { read_type, reason }).await
        }
        Command::Claim { study, target, reader } => {
            client::routing(&target, reader, client::RoutingCommand::Claim(study)).await
        }
        Command::Send { paths, target } => client::send(&target, paths).await,
        Command::Unroutable { target, limit } => client::unroutable(&target, limit).await,
        Command::Ledger { month: m } => client::ledger(&m.target, &m.tenant, &m.period).await,
        Command::Payouts { data_dir, as_principal, group, period } => {
            let target =
                Target { region: String::new(), data_dir, as_principal, token: None, endpoint: None, ca: None };
            client::payouts(&target, &group, &period).await
        }
        Command::Invoice { command: InvoiceCommand::Preview { month: m, csv } } => {
            client::invoice_preview(&m.target, &m.tenant, &m.period, csv).await
        }
        Command::Invoice { command: InvoiceCommand::Issue { month: m } } => {
            client::invoices(&m.target, &m.tenant, &m.period, true).await
        }
        Command::Invoice { command: InvoiceCommand::Show { target, number, csv, json } } => {
            client::invoice_show(&target, &number, csv, json).await
        }
        Command::Invoice { command: InvoiceCommand::Explain { target, tenant, event } } => {
            client::explain_charge(&target, &tenant, &event).await
        }
        Command::Invoice { command: InvoiceCommand::Credit { target, number, lines, reason, key } } => {
            client::credit_note(&target, &number, &lines, &reason, key).await
        }
        Command::Invoice { command: InvoiceCommand::List { month: m } } => {
            client::invoices(&m.target, &m.tenant, &m.period, false).await
        }
        Command::ClaimNext { target, reader } => {
            client::routing(&target, reader, client::RoutingCommand::ClaimNext).await
        }
        Command::Release { study, target, reader, reason } => {
            client::routing(&target, reader, client::RoutingCommand::Release { study, reason }).await
        }
        Command::Reader(ReaderCommand::Show { target, reader }) => {
            client::routing(&target, reader, client::RoutingCommand::ShowReader).await
        }
        Command::Reader(ReaderCommand::Availability { status, target, reader }) => {
            client::routing(&target, reader, client::RoutingCommand::SetAvailability(status)).await
        }
    };
    if let Some(exporting) = exporting {
        // The SDK's thread sends the last spans on this runtime: wait off it.
        let _ = tokio::task::spawn_blocking(move || exporting.shutdown()).await;
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr as `RUST_LOG` says (info by default; a span's fields,
/// its trace id among them, prefix each line in it), and, for a process
/// that serves with an OTLP collector named by the standard `OTEL_`
/// variables, Meridian's spans to that collector.
fn observe(serves: bool) -> Result<Option<meridian_telemetry::Exporting>, meridian_telemetry::Error> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()));
    let exporting = if serves { meridian_telemetry::Exporting::from_env("meridian")? } else { None };
    let spans = exporting.as_ref().map(|e| e.layer());
    tracing_subscriber::registry().with(logs).with(spans).init();
    if let Some(e) = &exporting {
        tracing::info!(endpoint = e.endpoint(), "spans exported over OTLP");
    }
    Ok(exporting)
}

fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    use meridian_routing::simulate::{self, Scenario, Strategy, report};
    let added: Vec<&std::path::Path> = args.add.iter().map(PathBuf::as_path).collect();
    let scenario = Scenario::load(&args.scenario, &added)?;
    let strategies = match args.policy {
        SimulatedPolicy::Both => vec![Strategy::Meridian, Strategy::Fifo],
        SimulatedPolicy::Meridian => vec![Strategy::Meridian],
        SimulatedPolicy::Fifo => vec![Strategy::Fifo],
    };
    let started = std::time::Instant::now();
    let result = simulate::simulate(&scenario, &strategies);
    say!(
        "{} from {}, {} h, {} readers, {} arrivals ({:.1} s)\n",
        args.scenario.display(),
        result.start,
        result.hours,
        result.readers,
        result.arrivals,
        started.elapsed().as_secs_f64()
    );
    say!("{}", report::table(&result.policies));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&result)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        say!("results: {}", path.display());
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report::svg(&result.policies)).with_context(|| format!("writing {}", path.display()))?;
        say!("plot: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `--field name=value`.
fn field_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => Ok((name.trim().to_owned(), value.trim().to_owned())),
        _ => Err(format!("{text:?}: a field is name=value, e.g. laterality=left")),
    }
}
