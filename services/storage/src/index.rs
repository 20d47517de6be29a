//! The study index: study, series and instance attributes and each
//! instance's metadata (DICOM JSON without pixel data), in the region's
//! `index.redb`, so QIDO-RS and WADO-RS metadata never open objects one by
//! one.
//!
//! It is a projection of the home region's InstanceReceived events and the
//! objects they name. Ingest records each instance in its acknowledgement
//! path (after the append, before the success status), so an acknowledged
//! instance is visible at once; each record carries its log position. Those
//! commits are not synced (the log is the durable copy): after a crash the
//! index reopens at its last synced position and [`StudyIndex::catch_up`]
//! reads the rest of the log, opening the objects it names.
//!
//! Keys are `tenant NUL study-uid [NUL series-uid [NUL sop-uid]]`: a
//! study's series and a series' instances are one range. The index holds
//! PHI and stays in the home region.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use dicom_object::InMemDicomObject;
use meridian_events::KeyStore;
use meridian_events::payload::Payload;
use meridian_log::{EventLog, Position, TopicName};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::blobs::Blobs;

const STUDIES: TableDefinition<&str, &[u8]> = TableDefinition::new("studies");
const SERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("series");
/// One row per instance: its ids, object and DICOM JSON (see [`InstanceRow`]).
const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
/// `tenant \0 opaque study id` → Study Instance UID: events name studies
/// by opaque id only.
const STUDY_IDS: TableDefinition<&str, &str> = TableDefinition::new("study_ids");
/// `topic#partition` → the next offset to read.
const POSITIONS: TableDefinition<&str, u64> = TableDefinition::new("positions");
/// Every object an indexed InstanceReceived names (every version), by
/// [`object_id`]: what the orphan sweep looks keys up in, one lookup per
/// listed object.
const OBJECTS: TableDefinition<u128, ()> = TableDefinition::new("objects");
/// `tenant \0 tag \0 value \0 Study Instance UID` → (): studies by the
/// study-level attributes searches name most (and each modality), so a
/// search naming one visits its candidates only, not every study of the
/// tenant.
const STUDY_BY: TableDefinition<&str, ()> = TableDefinition::new("study_by");
/// `schema` → the version of the tables above this file was built to.
const SCHEMA: TableDefinition<&str, u32> = TableDefinition::new("schema");
/// 4: one compact row per instance (metadata deflated inside it) and
/// objects by a 128-bit digest of their key. A file built to an older
/// version is emptied on open and caught up again from the start of the
/// log, which is the index's source.
const SCHEMA_VERSION: u32 = 4;
/// Tables of schemas before 4 that no longer exist.
const RETIRED: &[&str] = &["metadata"];

/// The index file's page cache: searches and the latest studies stay hot;
/// redb's default (1 GiB) would let memory grow with the archive.
pub const INDEX_CACHE_BYTES: usize = 128 << 20;

/// The study attributes [`STUDY_BY`] keys studies by: Patient ID,
/// Accession Number, Study Date (from the first instance), and each
/// modality in the study (Modalities in Study, as instances bring them).
pub const SEEKABLE: &[&str] = &["00100020", "00080050", "00080020"];

/// Modalities in Study: computed from the study's instances.
pub const MODALITIES_IN_STUDY: &str = "00080061";

/// Which of a tenant's studies a search visits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seek {
    /// Every one, in Study Instance UID order.
    All,
    /// These Study Instance UIDs, in that order.
    Uids(Vec<String>),
    /// Those whose `tag` (one of [`SEEKABLE`]) has exactly `value`.
    Value { tag: String, value: String },
    /// Those whose `tag` has a value from `from` (empty: no lower bound) to
    /// `to` (empty: no upper bound), where a bound compares on as many
    /// characters as it has, as DICOM range matching does (DA values
    /// compare as dates; `2026` to `2026` is the whole year).
    Range { tag: String, from: String, to: String },
}

/// DICOM JSON attributes (PS3.18 F.2): tag as 8 hex digits → `{vr, Value}`.
pub type Attributes = Map<String, Value>;

/// Study-level attributes kept for queries (patient and study modules).
pub const STUDY_TAGS: &[&str] = &[
    "00080020", "00080030", "00080050", "00080080", "00080090", "00080201", "00081030", "00100010", "00100020",
    "00100021", "00100030", "00100040", "0020000D", "00200010",
];
/// Series-level attributes kept for queries.
pub const SERIES_TAGS: &[&str] = &[
    "00080021", "00080031", "00080060", "0008103E", "00180015", "0020000E", "00200011", "00200060", "00400244",
    "00400245",
];
/// Instance-level attributes kept for queries.
pub const INSTANCE_TAGS: &[&str] = &[
    "00080008", "00080016", "00080018", "00080023", "00080033", "00200012", "00200013", "00280008", "00280010",
    "00280011", "00280100",
];

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("study index {path}: {reason}")]
    Store { path: String, reason: String },
    #[error("study index: a stored record does not decode: {0}")]
    Corrupt(String),
    #[error("study index catch-up: {0}")]
    Log(#[from] meridian_log::Error),
    #[error("study index catch-up: {0}")]
    Envelope(#[from] meridian_events::envelope::Error),
    #[error("study index catch-up: {0}")]
    Blob(#[from] crate::blobs::BlobError),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyEntry {
    pub study_id: Uuid,
    pub attrs: Attributes,
    pub modalities: BTreeSet<String>,
    pub series: u32,
    pub instances: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesEntry {
    pub series_id: Uuid,
    pub attrs: Attributes,
    pub instances: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceEntry {
    pub instance_id: Uuid,
    pub attrs: Attributes,
    pub object_key: String,
    pub sha256: String,
    pub size: u64,
    pub transfer_syntax: String,
}

/// Where in the log a recorded instance was read: topic, partition, offset.
pub type At<'a> = Option<(&'a TopicName, u32, u64)>;

/// How far [`StudyIndex::index_from`] reads.
#[derive(Clone, Copy, Debug)]
pub enum Read {
    /// To the log's end as it was when the read began (a catch-up).
    ToEnd(Duration),
    /// Until a read waits this long with nothing new (a follower's pass).
    Until(Duration),
}

/// One received instance, as ingest (or the catch-up) hands it over.
#[derive(Clone, Debug)]
pub struct Received {
    pub tenant: String,
    pub study_id: Uuid,
    pub series_id: Uuid,
    pub instance_id: Uuid,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_uid: String,
    pub object_key: String,
    pub sha256: String,
    pub size: u64,
    pub transfer_syntax: String,
    /// Every attribute of the data set but the pixel data (see [`metadata`]).
    pub metadata: Attributes,
}

/// The DICOM JSON of a data set read up to its pixel data, with the
/// transfer syntax it is stored in as Available Transfer Syntax UID.
pub fn metadata(header: &InMemDicomObject, transfer_syntax: &str) -> Attributes {
    let mut attrs = match dicom_json::to_value(header) {
        Ok(Value::Object(map)) => map,
        // Searches then see only what the index keeps of the instance
        // (its ids and object): nothing beyond is invented.
        other => {
            tracing::warn!(error = ?other.err(), "a data set's attributes do not convert to DICOM JSON");
            Map::new()
        }
    };
    for bulk in ["7FE00008", "7FE00009", "7FE00010"] {
        attrs.remove(bulk);
    }
    attrs.insert("00083002".into(), json!({"vr": "UI", "Value": [transfer_syntax]}));
    attrs.sort_keys();
    attrs
}

fn pick(attrs: &Attributes, tags: &[&str]) -> Attributes {
    tags.iter().filter_map(|t| attrs.get(*t).map(|v| ((*t).to_owned(), v.clone()))).collect()
}

/// The first text value of an attribute.
/// The string values of `tag` (empty ones left out).
fn values<'a>(attrs: &'a Attributes, tag: &str) -> impl Iterator<Item = &'a str> {
    let values = attrs.get(tag).and_then(|v| v.get("Value")).and_then(Value::as_array);
    values.into_iter().flatten().filter_map(Value::as_str).filter(|v| !v.is_empty())
}

pub fn text<'a>(attrs: &'a Attributes, tag: &str) -> Option<&'a str> {
    attrs.get(tag)?.get("Value")?.get(0)?.as_str()
}

pub fn study_key(tenant: &str, study_uid: &str) -> String {
    format!("{tenant}\0{study_uid}")
}

pub fn series_key(tenant: &str, study_uid: &str, series_uid: &str) -> String {
    format!("{tenant}\0{study_uid}\0{series_uid}")
}

fn instance_key(tenant: &str, study_uid: &str, series_uid: &str, sop_uid: &str) -> String {
    format!("{tenant}\0{study_uid}\0{series_uid}\0{sop_uid}")
}

/// Keys under `prefix` followed by NUL: the children of a study or series.
fn children(prefix: &str) -> (String, String) {
    (format!("{prefix}\0"), format!("{prefix}\u{1}"))
}

fn position_key(topic: &TopicName, partition: u32) -> String {
    format!("{}#{partition}", topic.as_str())
}

/// An instance's row in [`INSTANCES`], protobuf-encoded: opaque id, object,
/// digest and syntax, and the DICOM JSON deflated (about a third of its
/// size: tag names and VRs repeat). The instance-level attributes
/// searches match are read from that JSON, so nothing is kept twice.
#[derive(Clone, PartialEq, prost::Message)]
struct InstanceRow {
    #[prost(bytes = "vec", tag = "1")]
    instance_id: Vec<u8>,
    #[prost(string, tag = "2")]
    object_key: String,
    /// The SHA-256 as 32 bytes; `sha256_text` instead if it is not hex.
    #[prost(bytes = "vec", tag = "3")]
    sha256: Vec<u8>,
    #[prost(string, tag = "4")]
    sha256_text: String,
    #[prost(uint64, tag = "5")]
    size: u64,
    #[prost(string, tag = "6")]
    transfer_syntax: String,
    /// The DICOM JSON object, raw deflate.
    #[prost(bytes = "vec", tag = "7")]
    metadata: Vec<u8>,
}

impl InstanceRow {
    fn of(r: &Received) -> Result<Vec<u8>, IndexError> {
        use std::io::Write;
        let json = encode(&r.metadata)?;
        let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        deflate.write_all(&json).map_err(|e| IndexError::Corrupt(e.to_string()))?;
        let metadata = deflate.finish().map_err(|e| IndexError::Corrupt(e.to_string()))?;
        let (sha256, sha256_text) = match hex::decode(&r.sha256) {
            Ok(bytes) => (bytes, String::new()),
            Err(_) => (Vec::new(), r.sha256.clone()),
        };
        let row = InstanceRow {
            instance_id: r.instance_id.as_bytes().to_vec(),
            object_key: r.object_key.clone(),
            sha256,
            sha256_text,
            size: r.size,
            transfer_syntax: r.transfer_syntax.clone(),
            metadata,
        };
        Ok(prost::Message::encode_to_vec(&row))
    }

    fn decode(bytes: &[u8]) -> Result<InstanceRow, IndexError> {
        <InstanceRow as prost::Message>::decode(bytes).map_err(|e| IndexError::Corrupt(e.to_string()))
    }

    /// Appends the row's DICOM JSON object to `out`.
    fn metadata_into(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), IndexError> {
        InstanceRow::decode(bytes)?.inflate(out)
    }

    fn inflate(&self, out: &mut Vec<u8>) -> Result<(), IndexError> {
        use std::io::Read;
        flate2::read::DeflateDecoder::new(self.metadata.as_slice())
            .read_to_end(out)
            .map(drop)
            .map_err(|e| IndexError::Corrupt(format!("an instance's metadata does not inflate: {e}")))
    }

    fn entry(bytes: &[u8]) -> Result<InstanceEntry, IndexError> {
        let row = InstanceRow::decode(bytes)?;
        let mut json = Vec::new();
        row.inflate(&mut json)?;
        let instance_id = Uuid::from_slice(&row.instance_id).map_err(|e| IndexError::Corrupt(e.to_string()))?;
        let sha256 = if row.sha256_text.is_empty() { hex::encode(&row.sha256) } else { row.sha256_text };
        Ok(InstanceEntry {
            instance_id,
            attrs: pick(&decode(&json)?, INSTANCE_TAGS),
            object_key: row.object_key,
            sha256,
            size: row.size,
            transfer_syntax: row.transfer_syntax,
        })
    }
}

/// An object key's entry in [`OBJECTS`]: the first 128 bits of its
/// SHA-256. Two keys sharing one would only keep an orphan, never delete
/// a named object.
fn object_id(key: &str) -> u128 {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest.as_ref()[..16]);
    u128::from_be_bytes(first)
}

pub struct StudyIndex {
    db: Database,
    path: String,
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, IndexError> {
    serde_json::from_slice(bytes).map_err(|e| IndexError::Corrupt(e.to_string()))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, IndexError> {
    serde_json::to_vec(value).map_err(|e| IndexError::Corrupt(e.to_string()))
}

impl StudyIndex {
    pub fn open(path: &Path) -> Result<StudyIndex, IndexError> {
        let shown = path.display().to_string();
        let db = Database::builder()
            .set_cache_size(INDEX_CACHE_BYTES)
            .create(path)
            .map_err(|e| IndexError::Store { path: shown.clone(), reason: e.to_string() })?;
        let index = StudyIndex { db, path: shown };
        let txn = index.write(Durability::Immediate)?;
        {
            let mut schema = txn.open_table(SCHEMA).map_err(|e| index.err(e))?;
            let version = schema.get("schema").map_err(|e| index.err(e))?.map(|v| v.value());
            if version.is_some_and(|v| v < SCHEMA_VERSION) {
                // Rows of an older shape do not decode: start again from the
                // log (positions go with the tables).
                tracing::info!(path = %index.path, from = ?version, to = SCHEMA_VERSION, "study index rebuilt from the log for a new schema");
                let tables = [STUDIES.name(), SERIES.name(), INSTANCES.name(), STUDY_IDS.name(), POSITIONS.name()];
                let names = tables.into_iter().chain([OBJECTS.name(), STUDY_BY.name()]).chain(RETIRED.iter().copied());
                for name in names {
                    txn.delete_table(TableDefinition::<&str, ()>::new(name)).map_err(|e| index.err(e))?;
                }
            }
            if version != Some(SCHEMA_VERSION) {
                schema.insert("schema", SCHEMA_VERSION).map_err(|e| index.err(e))?;
            }
        }
        for table in [STUDIES, SERIES, INSTANCES] {
            txn.open_table(table).map_err(|e| index.err(e))?;
        }
        txn.open_table(POSITIONS).map_err(|e| index.err(e))?;
        txn.open_table(STUDY_IDS).map_err(|e| index.err(e))?;
        txn.open_table(OBJECTS).map_err(|e| index.err(e))?;
        txn.open_table(STUDY_BY).map_err(|e| index.err(e))?;
        txn.commit().map_err(|e| index.err(e))?;
        Ok(index)
    }

    /// Gives the index file's free pages back to the file system, offline
    /// (the region must be stopped: the file is opened exclusively).
    /// Returns the file's size before and after. redb reuses freed pages
    /// but never shrinks the file, which stays at its high-water mark.
    pub fn compact(path: &Path) -> Result<(u64, u64), IndexError> {
        let shown = path.display().to_string();
        let store = |reason: String| IndexError::Store { path: shown.clone(), reason };
        let size = || std::fs::metadata(path).map(|m| m.len()).map_err(|e| store(e.to_string()));
        let before = size()?;
        let mut db = Database::builder()
            .set_cache_size(INDEX_CACHE_BYTES)
            .open(path)
            .map_err(|e| store(format!("{e} (is the region still running? compact a stopped region)")))?;
        while db.compact().map_err(|e| store(e.to_string()))? {}
        drop(db);
        Ok((before, size()?))
    }

    fn err(&self, e: impl std::fmt::Display) -> IndexError {
        IndexError::Store { path: self.path.clone(), reason: e.to_string() }
    }

    fn write(&self, durability: Durability) -> Result<redb::WriteTransaction, IndexError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(durability).map_err(|e| self.err(e))?;
        Ok(txn)
    }

    /// Records `received`, read from the log at `at` (the record's topic,
    /// partition and offset). A newer version of an instance replaces the
    /// older one here (both objects stay in the store). The commit is not
    /// synced: see the module comment.
    pub fn record(&self, received: &Received, at: At<'_>) -> Result<(), IndexError> {
        let txn = self.write(Durability::None)?;
        self.record_in(&txn, received)?;
        if let Some((topic, partition, offset)) = at {
            let mut positions = txn.open_table(POSITIONS).map_err(|e| self.err(e))?;
            positions.insert(position_key(topic, partition).as_str(), offset + 1).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Records several instances in one transaction (a group commit's).
    pub fn record_all(&self, received: &[(&Received, At<'_>)]) -> Result<(), IndexError> {
        if received.is_empty() {
            return Ok(());
        }
        let txn = self.write(Durability::None)?;
        {
            let mut positions = txn.open_table(POSITIONS).map_err(|e| self.err(e))?;
            for (r, at) in received {
                self.record_in(&txn, r)?;
                if let Some((topic, partition, offset)) = at {
                    positions.insert(position_key(topic, *partition).as_str(), offset + 1).map_err(|e| self.err(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    fn record_in(&self, txn: &redb::WriteTransaction, r: &Received) -> Result<(), IndexError> {
        let err = |e: redb::Error| self.err(e);
        let mut studies = txn.open_table(STUDIES).map_err(|e| err(e.into()))?;
        let mut series = txn.open_table(SERIES).map_err(|e| err(e.into()))?;
        let mut instances = txn.open_table(INSTANCES).map_err(|e| err(e.into()))?;

        let ikey = instance_key(&r.tenant, &r.study_uid, &r.series_uid, &r.sop_uid);
        let new_instance = instances.get(ikey.as_str()).map_err(|e| err(e.into()))?.is_none();
        instances.insert(ikey.as_str(), InstanceRow::of(r)?.as_slice()).map_err(|e| err(e.into()))?;
        let mut objects = txn.open_table(OBJECTS).map_err(|e| err(e.into()))?;
        objects.insert(object_id(&r.object_key), ()).map_err(|e| err(e.into()))?;

        let skey = series_key(&r.tenant, &r.study_uid, &r.series_uid);
        let known_series = match series.get(skey.as_str()).map_err(|e| err(e.into()))? {
            Some(v) => Some(decode::<SeriesEntry>(v.value())?),
            None => None,
        };
        let new_series = known_series.is_none();
        let mut s = known_series.unwrap_or(SeriesEntry {
            series_id: r.series_id,
            attrs: pick(&r.metadata, SERIES_TAGS),
            instances: 0,
        });
        s.instances += u32::from(new_instance);
        series.insert(skey.as_str(), encode(&s)?.as_slice()).map_err(|e| err(e.into()))?;

        let stkey = study_key(&r.tenant, &r.study_uid);
        let known_study = match studies.get(stkey.as_str()).map_err(|e| err(e.into()))? {
            Some(v) => Some(decode::<StudyEntry>(v.value())?),
            None => None,
        };
        let new_study = known_study.is_none();
        let mut st = known_study.unwrap_or(StudyEntry {
            study_id: r.study_id,
            attrs: pick(&r.metadata, STUDY_TAGS),
            modalities: BTreeSet::new(),
            series: 0,
            instances: 0,
        });
        // A modality new to the study: keyed for ModalitiesInStudy searches.
        let new_modality = text(&r.metadata, "00080060").filter(|m| !m.is_empty() && !st.modalities.contains(*m));
        if let Some(m) = new_modality {
            st.modalities.insert(m.to_owned());
            let mut by = txn.open_table(STUDY_BY).map_err(|e| err(e.into()))?;
            let key = format!("{}\0{MODALITIES_IN_STUDY}\0{m}\0{}", r.tenant, r.study_uid);
            by.insert(key.as_str(), ()).map_err(|e| err(e.into()))?;
        }
        st.series += u32::from(new_series);
        st.instances += u32::from(new_instance);
        studies.insert(stkey.as_str(), encode(&st)?.as_slice()).map_err(|e| err(e.into()))?;
        if new_study {
            let mut ids = txn.open_table(STUDY_IDS).map_err(|e| err(e.into()))?;
            let id = format!("{}\0{}", r.tenant, r.study_id);
            ids.insert(id.as_str(), r.study_uid.as_str()).map_err(|e| err(e.into()))?;
            let mut by = txn.open_table(STUDY_BY).map_err(|e| err(e.into()))?;
            for tag in SEEKABLE {
                for value in values(&st.attrs, tag) {
                    let key = format!("{}\0{tag}\0{value}\0{}", r.tenant, r.study_uid);
                    by.insert(key.as_str(), ()).map_err(|e| err(e.into()))?;
                }
            }
        }
        Ok(())
    }

    /// The Study Instance UID of the tenant's study with opaque id `study_id`.
    pub fn study_uid(&self, tenant: &str, study_id: Uuid) -> Result<Option<String>, IndexError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(STUDY_IDS).map_err(|e| self.err(e))?;
        let id = format!("{tenant}\0{study_id}");
        Ok(table.get(id.as_str()).map_err(|e| self.err(e))?.map(|v| v.value().to_owned()))
    }

    /// Syncs what [`record`](Self::record) committed (the region calls it
    /// from a timer and at shutdown).
    pub fn sync(&self) -> Result<(), IndexError> {
        self.write(Durability::Immediate)?.commit().map_err(|e| self.err(e))
    }

    /// Where the index has read `topic` to.
    pub fn positions(&self, topic: &TopicName, partitions: u32) -> Result<Vec<Position>, IndexError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(POSITIONS).map_err(|e| self.err(e))?;
        (0..partitions)
            .map(|p| {
                let offset = table.get(position_key(topic, p).as_str()).map_err(|e| self.err(e))?.map(|v| v.value());
                Ok(Position { topic: topic.clone(), partition: p, offset: offset.unwrap_or(0) })
            })
            .collect()
    }

    /// Reads the PHI ingest topic from the index's positions to its end,
    /// indexing each InstanceReceived from the object it names. Returns how
    /// many instances it indexed.
    ///
    /// A record that can never be indexed here (shredded, under a data key
    /// this region lacks, naming a missing or unparseable object) is counted
    /// in `skips` by reason and passed. A failing key store or object store
    /// is an error, returned before the position passes that record.
    pub async fn catch_up(
        &self,
        log: &dyn EventLog,
        keys: &dyn KeyStore,
        blobs: &dyn Blobs,
        topic: &TopicName,
        idle: Duration,
        skips: &meridian_log::skips::Skips,
    ) -> Result<usize, IndexError> {
        let mut reader = self.reader(log, topic).await?;
        self.index_from(reader.as_mut(), keys, blobs, Read::ToEnd(idle), skips).await
    }

    /// A reader of `topic` from the index's positions.
    pub async fn reader(
        &self,
        log: &dyn EventLog,
        topic: &TopicName,
    ) -> Result<Box<dyn meridian_log::LogReader>, IndexError> {
        let partitions = log.partitions(topic).await?;
        Ok(log.reader(self.positions(topic, partitions)?).await?)
    }

    /// Indexes what `reader` reads until `read` says stop (see
    /// [`Self::catch_up`]). After an error the reader is past records the
    /// index does not hold: read again with a new [`Self::reader`].
    pub async fn index_from(
        &self,
        reader: &mut dyn meridian_log::LogReader,
        keys: &dyn KeyStore,
        blobs: &dyn Blobs,
        read: Read,
        skips: &meridian_log::skips::Skips,
    ) -> Result<usize, IndexError> {
        let mut indexed = 0;
        loop {
            let batch = match read {
                Read::ToEnd(idle) => reader.catch_up_batch(256, idle).await?,
                Read::Until(wait) => reader.next_batch(256, wait).await?,
            };
            if batch.is_empty() {
                return Ok(indexed);
            }
            for record in batch {
                let at = Some((&record.topic, record.partition, record.offset));
                let envelope = match meridian_events::Envelope::decode(&record.value) {
                    Ok(envelope) => envelope,
                    Err(e) => {
                        skips.skip(&record, "corrupt_envelope", &e);
                        self.skip(at)?;
                        continue;
                    }
                };
                let received = match envelope.open(keys) {
                    Ok(Payload::InstanceReceived(r)) => r,
                    // Nothing else on this topic is indexed.
                    Ok(_) => {
                        self.skip(at)?;
                        continue;
                    }
                    // The key store failed: stop here and read this record
                    // again next time, never leave a hole behind.
                    Err(e) if !e.is_unreadable() => return Err(e.into()),
                    Err(e) => {
                        skips.skip(&record, meridian_log::skips::reason(&e), &e);
                        self.skip(at)?;
                        continue;
                    }
                };
                // A store error returns here too (without advancing).
                let Some(bytes) = blobs.get(&received.object_key).await? else {
                    skips.skip(&record, "missing_object", &format!("instance {}", received.instance_id));
                    self.skip(at)?;
                    continue;
                };
                let header = dicom_object::OpenFileOptions::new()
                    .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
                    .from_reader(bytes.get(128..).unwrap_or_default());
                let attrs = match header {
                    Ok(obj) => metadata(&obj, &received.transfer_syntax_uid),
                    Err(e) => {
                        skips.skip(&record, "unparseable_object", &format!("instance {}: {e}", received.instance_id));
                        self.skip(at)?;
                        continue;
                    }
                };
                let ids = [&received.study_id, &received.series_id, &received.instance_id].map(|s| Uuid::parse_str(s));
                let [Ok(study_id), Ok(series_id), Ok(instance_id)] = ids else {
                    skips.skip(&record, "malformed_ids", &"an InstanceReceived names malformed opaque ids");
                    self.skip(at)?;
                    continue;
                };
                let r = Received {
                    tenant: envelope.meta.tenant.clone(),
                    study_id,
                    series_id,
                    instance_id,
                    study_uid: received.study_instance_uid,
                    series_uid: received.series_instance_uid,
                    sop_uid: received.sop_instance_uid,
                    object_key: received.object_key,
                    sha256: received.sha256,
                    size: received.size_bytes,
                    transfer_syntax: received.transfer_syntax_uid,
                    metadata: attrs,
                };
                self.record(&r, at)?;
                indexed += 1;
            }
        }
    }

    /// Indexes the objects of a de-identified derivative that landed in
    /// this region's store (`deid/<tenant>/<contract>/<study>/…`): ids from
    /// each key (this region holds no tenant id secret), attributes from the
    /// object; then moves the position past `record` (the DerivativeCreated
    /// that named it). Returns how many instances it indexed. An object that
    /// does not read is counted in `skips` and passed; a failing store is an
    /// error, before the position moves.
    pub async fn index_derivative(
        &self,
        blobs: &dyn Blobs,
        (tenant, contract, study): (&str, &str, Uuid),
        record: &meridian_log::Record,
        skips: &meridian_log::skips::Skips,
    ) -> Result<usize, IndexError> {
        let at = Some((&record.topic, record.partition, record.offset));
        let prefix = format!("deid/{tenant}/{contract}/{}/", study.hyphenated());
        let mut received = Vec::new();
        for key in blobs.list(&prefix).await? {
            let Some(bytes) = blobs.get(&key).await? else { continue };
            match derivative(tenant, study, &prefix, &key, &bytes) {
                Ok(r) => received.push(r),
                Err(why) => skips.skip(record, "unparseable_derivative", &format!("{key}: {why}")),
            }
        }
        if received.is_empty() {
            self.skip(at)?;
            return Ok(0);
        }
        let last = received.len() - 1;
        let batch: Vec<(&Received, At<'_>)> =
            received.iter().enumerate().map(|(i, r)| (r, if i == last { at } else { None })).collect();
        self.record_all(&batch)?;
        Ok(received.len())
    }

    /// Forgets the tenant's study with opaque id `study_id` (its purge):
    /// its study, series and instance entries, what searches key it by,
    /// and the objects its instances name; then moves the position past
    /// `at`, in the same transaction. Returns how many instances it held
    /// (0 for a study it does not hold: forgetting twice is once).
    pub fn forget_study(&self, tenant: &str, study_id: Uuid, at: At<'_>) -> Result<usize, IndexError> {
        let err = |e: redb::Error| self.err(e);
        let txn = self.write(Durability::None)?;
        let mut forgotten = 0;
        {
            let mut ids = txn.open_table(STUDY_IDS).map_err(|e| err(e.into()))?;
            let id = format!("{tenant}\0{study_id}");
            let uid = ids.remove(id.as_str()).map_err(|e| err(e.into()))?.map(|v| v.value().to_owned());
            if let Some(uid) = uid {
                let stkey = study_key(tenant, &uid);
                let mut studies = txn.open_table(STUDIES).map_err(|e| err(e.into()))?;
                let entry = match studies.remove(stkey.as_str()).map_err(|e| err(e.into()))? {
                    Some(v) => Some(decode::<StudyEntry>(v.value())?),
                    None => None,
                };
                if let Some(entry) = entry {
                    let mut by = txn.open_table(STUDY_BY).map_err(|e| err(e.into()))?;
                    let mut keyed: Vec<String> = SEEKABLE
                        .iter()
                        .flat_map(|tag| values(&entry.attrs, tag).map(move |v| (tag, v)))
                        .map(|(tag, value)| format!("{tenant}\0{tag}\0{value}\0{uid}"))
                        .collect();
                    keyed.extend(
                        entry.modalities.iter().map(|m| format!("{tenant}\0{MODALITIES_IN_STUDY}\0{m}\0{uid}")),
                    );
                    for key in keyed {
                        by.remove(key.as_str()).map_err(|e| err(e.into()))?;
                    }
                }
                let (from, to) = children(&stkey);
                let mut series = txn.open_table(SERIES).map_err(|e| err(e.into()))?;
                series.retain_in(from.as_str()..to.as_str(), |_, _| false).map_err(|e| err(e.into()))?;
                let mut instances = txn.open_table(INSTANCES).map_err(|e| err(e.into()))?;
                let mut objects = Vec::new();
                for row in instances.range(from.as_str()..to.as_str()).map_err(|e| err(e.into()))? {
                    let (_, v) = row.map_err(|e| err(e.into()))?;
                    objects.push(object_id(&InstanceRow::decode(v.value())?.object_key));
                }
                instances.retain_in(from.as_str()..to.as_str(), |_, _| false).map_err(|e| err(e.into()))?;
                let mut named = txn.open_table(OBJECTS).map_err(|e| err(e.into()))?;
                for object in &objects {
                    named.remove(*object).map_err(|e| err(e.into()))?;
                }
                forgotten = objects.len();
            }
            if let Some((topic, partition, offset)) = at {
                let mut positions = txn.open_table(POSITIONS).map_err(|e| err(e.into()))?;
                positions.insert(position_key(topic, partition).as_str(), offset + 1).map_err(|e| err(e.into()))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))?;
        Ok(forgotten)
    }

    pub(crate) fn skip(&self, at: At<'_>) -> Result<(), IndexError> {
        let Some((topic, partition, offset)) = at else { return Ok(()) };
        let txn = self.write(Durability::None)?;
        {
            let mut positions = txn.open_table(POSITIONS).map_err(|e| self.err(e))?;
            positions.insert(position_key(topic, partition).as_str(), offset + 1).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// The keys among `keys` that no indexed instance names (one read
    /// transaction, one lookup each).
    pub fn unnamed(&self, keys: &[String]) -> Result<Vec<String>, IndexError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(OBJECTS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for key in keys {
            if table.get(object_id(key)).map_err(|e| self.err(e))?.is_none() {
                out.push(key.clone());
            }
        }
        Ok(out)
    }

    /// The instance's entry, if indexed.
    pub fn instance(
        &self,
        tenant: &str,
        study_uid: &str,
        series_uid: &str,
        sop_uid: &str,
    ) -> Result<Option<InstanceEntry>, IndexError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(INSTANCES).map_err(|e| self.err(e))?;
        let key = instance_key(tenant, study_uid, series_uid, sop_uid);
        table.get(key.as_str()).map_err(|e| self.err(e))?.map(|v| InstanceRow::entry(v.value())).transpose()
    }

    pub fn study(&self, tenant: &str, study_uid: &str) -> Result<Option<StudyEntry>, IndexError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(STUDIES).map_err(|e| self.err(e))?;
        table
            .get(study_key(tenant, study_uid).as_str())
            .map_err(|e| self.err(e))?
            .map(|v| decode(v.value()))
            .transpose()
    }

    /// Visits the tenant's studies that `seek` names, in its order, until
    /// `visit` returns false. One read transaction; nothing is collected,
    /// so a search costs what it visits, not what the tenant holds.
    pub fn visit_studies(
        &self,
        tenant: &str,
        seek: &Seek,
        mut visit: impl FnMut(&str, StudyEntry) -> bool,
    ) -> Result<(), IndexError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let studies = txn.open_table(STUDIES).map_err(|e| self.err(e))?;
        let entry = |uid: &str| -> Result<Option<StudyEntry>, IndexError> {
            studies
                .get(study_key(tenant, uid).as_str())
                .map_err(|e| self.err(e))?
                .map(|v| decode(v.value()))
                .transpose()
        };
        match seek {
            Seek::All => {
                let (from, to) = children(tenant);
                for row in studies.range(from.as_str()..to.as_str()).map_err(|e| self.err(e))? {
                    let (k, v) = row.map_err(|e| self.err(e))?;
                    if !visit(&k.value()[from.len()..], decode(v.value())?) {
                        break;
                    }
                }
            }
            Seek::Uids(uids) => {
                for uid in uids {
                    if let Some(e) = entry(uid)?
                        && !visit(uid, e)
                    {
                        break;
                    }
                }
            }
            Seek::Value { tag, value } => {
                let by = txn.open_table(STUDY_BY).map_err(|e| self.err(e))?;
                let (from, to) = children(&format!("{tenant}\0{tag}\0{value}"));
                for row in by.range(from.as_str()..to.as_str()).map_err(|e| self.err(e))? {
                    let (k, _) = row.map_err(|e| self.err(e))?;
                    if let Some(e) = entry(&k.value()[from.len()..])?
                        && !visit(&k.value()[from.len()..], e)
                    {
                        break;
                    }
                }
            }
            Seek::Range { tag, from, to } => {
                let by = txn.open_table(STUDY_BY).map_err(|e| self.err(e))?;
                let prefix = format!("{tenant}\0{tag}\0");
                // Values and UIDs are printable: \x7f sorts after all of them.
                let low = format!("{prefix}{from}");
                let high = if to.is_empty() { format!("{prefix}\x7f") } else { format!("{prefix}{to}\x7f") };
                for row in by.range(low.as_str()..=high.as_str()).map_err(|e| self.err(e))? {
                    let (k, _) = row.map_err(|e| self.err(e))?;
                    let Some((_, uid)) = k.value()[prefix.len()..].rsplit_once('\0') else { continue };
                    if let Some(e) = entry(uid)?
                        && !visit(uid, e)
                    {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// The tenant's studies, in key order: (Study Instance UID, entry).
    pub fn studies(&self, tenant: &str) -> Result<Vec<(String, StudyEntry)>, IndexError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(STUDIES).map_err(|e| self.err(e))?;
        let (from, to) = children(tenant);
        let mut out = Vec::new();
        for row in table.range(from.as_str()..to.as_str()).map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let uid = k.value()[from.len()..].to_owned();
            out.push((uid, decode(v.value())?));
        }
        Ok(out)
    }

    /// The series of a study: (Series Instance UID, entry).
    pub fn series(&self, tenant: &str, study_uid: &str) -> Result<Vec<(String, SeriesEntry)>, IndexError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(SERIES).map_err(|e| self.err(e))?;
        let (from, to) = children(&study_key(tenant, study_uid));
        let mut out = Vec::new();
        for row in table.range(from.as_str()..to.as_str()).map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push((k.value()[from.len()..].to_owned(), decode(v.value())?));
        }
        Ok(out)
    }

    /// The instances under a study (every series) or one series:
    /// (Series Instance UID, SOP Instance UID, entry).
    pub fn instances(
        &self,
        tenant: &str,
        study_uid: &str,
        series_uid: Option<&str>,
    ) -> Result<Vec<(String, String, InstanceEntry)>, IndexError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(INSTANCES).map_err(|e| self.err(e))?;
        let study = study_key(tenant, study_uid);
        let prefix = match series_uid {
            Some(s) => series_key(tenant, study_uid, s),
            None => study.clone(),
        };
        let (from, to) = children(&prefix);
        let mut out = Vec::new();
        for row in table.range(from.as_str()..to.as_str()).map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let rest = &k.value()[study.len() + 1..];
            let (series, sop) = rest.split_once('\0').unwrap_or((rest, ""));
            out.push((series.to_owned(), sop.to_owned(), InstanceRow::entry(v.value())?));
        }
        Ok(out)
    }

    /// The stored DICOM JSON of each instance under a study, series or
    /// instance, written into `out` as one JSON array. Returns how many.
    pub fn metadata_into(
        &self,
        tenant: &str,
        study_uid: &str,
        series_uid: Option<&str>,
        sop_uid: Option<&str>,
        out: &mut Vec<u8>,
    ) -> Result<usize, IndexError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(INSTANCES).map_err(|e| self.err(e))?;
        out.push(b'[');
        let mut n = 0;
        let mut push = |row: &[u8]| -> Result<(), IndexError> {
            if n > 0 {
                out.push(b',');
            }
            InstanceRow::metadata_into(row, out)?;
            n += 1;
            Ok(())
        };
        match (series_uid, sop_uid) {
            (Some(series), Some(sop)) => {
                let key = instance_key(tenant, study_uid, series, sop);
                if let Some(v) = table.get(key.as_str()).map_err(|e| self.err(e))? {
                    push(v.value())?;
                }
            }
            _ => {
                let prefix = match series_uid {
                    Some(s) => series_key(tenant, study_uid, s),
                    None => study_key(tenant, study_uid),
                };
                let (from, to) = children(&prefix);
                for row in table.range(from.as_str()..to.as_str()).map_err(|e| self.err(e))? {
                    let (_, v) = row.map_err(|e| self.err(e))?;
                    push(v.value())?;
                }
            }
        }
        out.push(b']');
        Ok(n)
    }

    /// The stored attributes of the first instance under a study or
    /// series: what `includefield` asks for beyond the kept attributes.
    pub fn first_metadata(&self, prefix_key: &str) -> Result<Option<Attributes>, IndexError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(INSTANCES).map_err(|e| self.err(e))?;
        let (from, to) = children(prefix_key);
        let mut rows = table.range(from.as_str()..to.as_str()).map_err(|e| self.err(e))?;
        match rows.next() {
            Some(row) => {
                let (_, v) = row.map_err(|e| self.err(e))?;
                let mut json = Vec::new();
                InstanceRow::metadata_into(v.value(), &mut json)?;
                Ok(Some(decode(&json)?))
            }
            None => Ok(None),
        }
    }
}

/// One landed derivative object as the index records it: `key` is
/// `<prefix><series>/<instance>.<sha256>.dcm`.
fn derivative(tenant: &str, study: Uuid, prefix: &str, key: &str, bytes: &[u8]) -> Result<Received, String> {
    let rest = key.strip_prefix(prefix).ok_or("not under its study")?;
    let (series, file) = rest.split_once('/').ok_or("no series in the key")?;
    let mut parts = file.split('.');
    let (Some(instance), Some(sha256), Some("dcm"), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not <instance>.<sha256>.dcm".into());
    };
    let uuid = |s: &str| Uuid::parse_str(s).map_err(|e| format!("{s:?}: {e}"));
    let header = dicom_object::OpenFileOptions::new()
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .from_reader(bytes.get(128..).unwrap_or_default())
        .map_err(|e| e.to_string())?;
    let transfer_syntax = header.meta().transfer_syntax().trim_end_matches('\0').to_owned();
    let uid = |tag| {
        header
            .get(tag)
            .and_then(|e| e.to_str().ok())
            .map(|v| v.trim_end_matches(['\0', ' ']).to_owned())
            .ok_or_else(|| format!("no {tag}"))
    };
    use dicom_dictionary_std::tags;
    Ok(Received {
        tenant: tenant.to_owned(),
        study_id: study,
        series_id: uuid(series)?,
        instance_id: uuid(instance)?,
        study_uid: uid(tags::STUDY_INSTANCE_UID)?,
        series_uid: uid(tags::SERIES_INSTANCE_UID)?,
        sop_uid: uid(tags::SOP_INSTANCE_UID)?,
        object_key: key.to_owned(),
        sha256: sha256.to_owned(),
        size: bytes.len() as u64,
        metadata: metadata(&header, &transfer_syntax),
        transfer_syntax,
    })
}

/// Follows the region's InstanceReceived into an index with one reader
/// kept between passes (a Kafka reader is a client with its connections),
/// for a storage process whose ingest is another process.
pub struct IndexFollower {
    index: std::sync::Arc<StudyIndex>,
    log: std::sync::Arc<dyn EventLog>,
    keys: std::sync::Arc<dyn KeyStore>,
    blobs: std::sync::Arc<dyn Blobs>,
    topic: TopicName,
    skips: meridian_log::skips::Skips,
    reader: tokio::sync::Mutex<Option<Box<dyn meridian_log::LogReader>>>,
}

impl IndexFollower {
    pub fn new(
        index: std::sync::Arc<StudyIndex>,
        log: std::sync::Arc<dyn EventLog>,
        keys: std::sync::Arc<dyn KeyStore>,
        blobs: std::sync::Arc<dyn Blobs>,
        topic: TopicName,
    ) -> IndexFollower {
        IndexFollower {
            index,
            log,
            keys,
            blobs,
            topic,
            skips: meridian_log::skips::Skips::new("storage.index"),
            reader: tokio::sync::Mutex::new(None),
        }
    }

    /// Indexes what the log holds past the index's positions, as far as
    /// `read` says. After an error the kept reader is dropped:
    /// the next pass reads again from what the index holds.
    pub async fn follow(&self, read: Read) -> Result<usize, IndexError> {
        let mut slot = self.reader.lock().await;
        let reader = match slot.as_mut() {
            Some(reader) => reader,
            None => slot.insert(self.index.reader(self.log.as_ref(), &self.topic).await?),
        };
        let indexed =
            self.index.index_from(reader.as_mut(), self.keys.as_ref(), self.blobs.as_ref(), read, &self.skips).await;
        if indexed.is_err() {
            *slot = None;
        }
        indexed
    }

    /// What it could not index, by reason.
    pub fn skips(&self) -> &meridian_log::skips::Skips {
        &self.skips
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(study: &str, series: &str, sop: &str, modality: &str, sha: &str) -> Received {
        let mut metadata = Map::new();
        metadata.insert("0020000D".into(), json!({"vr": "UI", "Value": [study]}));
        metadata.insert("0020000E".into(), json!({"vr": "UI", "Value": [series]}));
        metadata.insert("00080018".into(), json!({"vr": "UI", "Value": [sop]}));
        metadata.insert("00080060".into(), json!({"vr": "CS", "Value": [modality]}));
        metadata.insert("00100010".into(), json!({"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}));
        Received {
            tenant: "acme".into(),
            study_id: Uuid::from_u128(1),
            series_id: Uuid::from_u128(2),
            instance_id: Uuid::from_u128(3),
            study_uid: study.into(),
            series_uid: series.into(),
            sop_uid: sop.into(),
            object_key: format!("phi/acme/{sop}.{sha}.dcm"),
            sha256: sha.into(),
            size: 10,
            transfer_syntax: "1.2.840.10008.1.2".into(),
            metadata,
        }
    }

    #[test]
    fn a_seek_visits_only_its_candidates_and_stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let index = StudyIndex::open(&dir.path().join("index.redb")).unwrap();
        for i in 0..50u32 {
            let mut r =
                received(&format!("1.2.{i:02}"), &format!("1.2.{i:02}.1"), &format!("1.2.{i:02}.1.1"), "CT", "aa");
            r.metadata.insert("00100020".into(), json!({"vr": "LO", "Value": [format!("P{}", i % 7)]}));
            r.metadata.insert("00080020".into(), json!({"vr": "DA", "Value": [format!("202601{:02}", 1 + i % 28)]}));
            index.record(&r, None).unwrap();
        }
        let visited = |seek: Seek, stop_after: usize| {
            let mut seen = Vec::new();
            index
                .visit_studies("acme", &seek, |uid, _| {
                    seen.push(uid.to_owned());
                    seen.len() < stop_after
                })
                .unwrap();
            seen
        };
        let p3 = visited(Seek::Value { tag: "00100020".into(), value: "P3".into() }, usize::MAX);
        assert_eq!(p3, ["1.2.03", "1.2.10", "1.2.17", "1.2.24", "1.2.31", "1.2.38", "1.2.45"]);
        let range = Seek::Range { tag: "00080020".into(), from: "20260105".into(), to: "20260106".into() };
        assert_eq!(visited(range, usize::MAX).len(), 4, "days 5 and 6, twice each");
        let open = Seek::Range { tag: "00080020".into(), from: String::new(), to: "2026010".into() };
        assert_eq!(visited(open, usize::MAX).len(), 18, "a bound compares on its own length: days 1 to 9");
        assert_eq!(visited(Seek::Uids(vec!["1.2.07".into(), "9.9".into()]), usize::MAX), ["1.2.07"]);
        assert_eq!(visited(Seek::All, 5).len(), 5, "the visit stops when told");
        assert!(visited(Seek::Value { tag: "00100020".into(), value: "P".into() }, usize::MAX).is_empty());
        // Each modality a study holds is a key, added as instances bring it.
        let mut mr = received("1.2.07", "1.2.07.2", "1.2.07.2.1", "MR", "bb");
        mr.metadata.insert("00100020".into(), json!({"vr": "LO", "Value": ["P0"]}));
        index.record(&mr, None).unwrap();
        let modality = |m: &str| Seek::Value { tag: MODALITIES_IN_STUDY.into(), value: m.into() };
        assert_eq!(visited(modality("MR"), usize::MAX), ["1.2.07"]);
        assert_eq!(visited(modality("CT"), usize::MAX).len(), 50);
        index.record(&mr, None).unwrap();
        assert_eq!(visited(modality("MR"), usize::MAX), ["1.2.07"], "recorded again, keyed once");
    }

    #[test]
    fn counts_series_and_instances_and_a_new_version_replaces_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let index = StudyIndex::open(&dir.path().join("index.redb")).unwrap();
        index.record(&received("1.2", "1.2.1", "1.2.1.1", "CT", "aa"), None).unwrap();
        index.record(&received("1.2", "1.2.1", "1.2.1.2", "CT", "bb"), None).unwrap();
        index.record(&received("1.2", "1.2.2", "1.2.2.1", "SR", "cc"), None).unwrap();
        index.record(&received("1.2", "1.2.1", "1.2.1.1", "CT", "dd"), None).unwrap();
        // Another study whose UID extends this one's must not leak into it.
        index.record(&received("1.23", "1.23.1", "1.23.1.1", "MR", "ee"), None).unwrap();

        let study = index.study("acme", "1.2").unwrap().unwrap();
        assert_eq!((study.series, study.instances), (2, 3));
        assert_eq!(study.modalities.iter().map(String::as_str).collect::<Vec<_>>(), ["CT", "SR"]);
        assert_eq!(index.series("acme", "1.2").unwrap().len(), 2);
        let all = index.instances("acme", "1.2", None).unwrap();
        assert_eq!(all.len(), 3);
        let one = index.instance("acme", "1.2", "1.2.1", "1.2.1.1").unwrap().unwrap();
        assert_eq!(one.sha256, "dd");
        let mut out = Vec::new();
        assert_eq!(index.metadata_into("acme", "1.2", Some("1.2.1"), None, &mut out).unwrap(), 2);
        let parsed: Vec<Value> = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(index.studies("acme").unwrap().len(), 2);
        assert!(index.studies("acm").unwrap().is_empty(), "tenants are whole key segments");
        assert!(index.study("northwind", "1.2").unwrap().is_none());
    }

    #[test]
    fn a_forgotten_study_leaves_no_entry_and_its_neighbour_keeps_every_one() {
        let dir = tempfile::tempdir().unwrap();
        let index = StudyIndex::open(&dir.path().join("index.redb")).unwrap();
        let (purged, kept) = (Uuid::from_u128(10), Uuid::from_u128(11));
        let mut rows = [
            received("1.2", "1.2.1", "1.2.1.1", "CT", "aa"),
            received("1.2", "1.2.2", "1.2.2.1", "SR", "bb"),
            // A UID that extends the purged one's: a neighbour in key order.
            received("1.23", "1.23.1", "1.23.1.1", "CT", "cc"),
        ];
        for (i, r) in rows.iter_mut().enumerate() {
            r.study_id = if i < 2 { purged } else { kept };
            r.metadata.insert("00100020".into(), json!({"vr": "LO", "Value": ["P1"]}));
            index.record(r, None).unwrap();
        }
        let topic = TopicName::new("us-east", meridian_events::DataClass::Operational, "storage").unwrap();
        assert_eq!(index.forget_study("acme", purged, Some((&topic, 0, 41))).unwrap(), 2);
        assert!(index.study("acme", "1.2").unwrap().is_none());
        assert!(index.series("acme", "1.2").unwrap().is_empty());
        assert!(index.instances("acme", "1.2", None).unwrap().is_empty());
        assert!(index.study_uid("acme", purged).unwrap().is_none());
        let found = |seek: Seek| {
            let mut seen = Vec::new();
            index
                .visit_studies("acme", &seek, |uid, _| {
                    seen.push(uid.to_owned());
                    true
                })
                .unwrap();
            seen
        };
        assert_eq!(found(Seek::Value { tag: "00100020".into(), value: "P1".into() }), ["1.23"]);
        assert!(found(Seek::Value { tag: MODALITIES_IN_STUDY.into(), value: "SR".into() }).is_empty());
        let gone = rows[0].object_key.clone();
        assert_eq!(index.unnamed(&[gone.clone(), rows[2].object_key.clone()]).unwrap(), [gone]);
        assert_eq!(index.positions(&topic, 1).unwrap()[0].offset, 42, "the position moves with it");
        // The neighbour is whole; forgetting again is a no-op.
        assert_eq!(index.study("acme", "1.23").unwrap().unwrap().instances, 1);
        assert_eq!(index.forget_study("acme", purged, None).unwrap(), 0);
        assert_eq!(index.studies("acme").unwrap().len(), 1);
    }

    #[test]
    fn compaction_gives_freed_pages_back_and_keeps_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        let index = StudyIndex::open(&path).unwrap();
        let big = |i: u32, sha: &str| {
            let mut r = received(&format!("1.2.{i}"), &format!("1.2.{i}.1"), &format!("1.2.{i}.1.1"), "CT", sha);
            r.metadata.insert("00081030".into(), json!({"vr": "LO", "Value": [format!("{i:0>4000}")]}));
            r
        };
        for i in 0..300 {
            index.record(&big(i, "aa"), None).unwrap();
        }
        // A new version of each: the old rows' pages are freed.
        for i in 0..300 {
            index.record(&big(i, "bb"), None).unwrap();
        }
        index.sync().unwrap();
        let before = index.studies("acme").unwrap().len();
        drop(index);
        let (was, now) = StudyIndex::compact(&path).unwrap();
        assert!(now < was, "{was} -> {now}");
        let index = StudyIndex::open(&path).unwrap();
        assert_eq!(index.studies("acme").unwrap().len(), before);
        assert_eq!(index.instance("acme", "1.2.7", "1.2.7.1", "1.2.7.1.1").unwrap().unwrap().sha256, "bb");
        let err = StudyIndex::compact(&path).unwrap_err().to_string();
        assert!(err.contains("is the region still running"), "{err}");
    }

    #[test]
    fn rows_give_back_the_recorded_metadata_and_an_older_schema_is_read_again_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        {
            // A file as schema 3 left it: its own tables and a position.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(SCHEMA).unwrap().insert("schema", 3).unwrap();
            txn.open_table(POSITIONS).unwrap().insert("meridian.us-east.phi.ingest#0", 42).unwrap();
            txn.open_table(TableDefinition::<&str, &[u8]>::new("metadata"))
                .unwrap()
                .insert("k", b"{}".as_slice())
                .unwrap();
            txn.open_table(TableDefinition::<&str, &[u8]>::new("objects"))
                .unwrap()
                .insert("phi/x", b"".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let index = StudyIndex::open(&path).unwrap();
        let topic: TopicName = "meridian.us-east.phi.ingest".parse().unwrap();
        assert_eq!(index.positions(&topic, 1).unwrap()[0].offset, 0, "caught up again from the start");
        let txn = index.db.begin_read().unwrap();
        assert!(txn.list_tables().unwrap().all(|t| t.name() != "metadata"), "the retired table is gone");
        drop(txn);

        let mut r = received("1.2", "1.2.1", "1.2.1.1", "CT", &"ab".repeat(32));
        r.metadata.insert("00200013".into(), json!({"vr": "IS", "Value": [7]}));
        r.metadata.sort_keys();
        index.record(&r, None).unwrap();
        let mut out = Vec::new();
        index.metadata_into("acme", "1.2", None, Some("1.2.1.1"), &mut out).unwrap();
        let all: Vec<Attributes> = serde_json::from_slice(&out).unwrap();
        assert_eq!(all, [r.metadata.clone()]);
        let entry = index.instance("acme", "1.2", "1.2.1", "1.2.1.1").unwrap().unwrap();
        assert_eq!(entry.sha256, "ab".repeat(32));
        assert_eq!(entry.attrs, pick(&r.metadata, INSTANCE_TAGS));
        assert_eq!(entry.attrs.len(), 2, "SOP Instance UID, Instance Number, and nothing of other levels");
        assert!(index.unnamed(&[r.object_key.clone(), "phi/x".into()]).unwrap() == ["phi/x"]);
    }
}
