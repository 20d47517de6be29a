//! Derivatives where they land. A home region writes a contract's
//! de-identified derivatives into each destination's store and records
//! DerivativeCreated on its own log; the replicator copies that record
//! here. This region indexes the derivative from its own objects, so its
//! DICOMweb serves it to the contract's readers (their claim on the
//! original study, folded from the home's copied routing events, is their
//! right to it), audited here.
//!
//! When the home purges the study (its retention ended), the copied
//! ObjectPurged naming a derivative here deletes the derivative's objects
//! and forgets it in the index.
//!
//! Positions live in the study index, with the entries they produced: a
//! crash indexes (or deletes) the same objects again (an instance recorded
//! twice is one entry; a deletion twice is one).

use std::sync::Arc;
use std::time::Duration;

use meridian_events::payload::Payload;
use meridian_log::{EventLog, LogReader, TopicName};
use meridian_objects::blobs::Blobs;
use uuid::Uuid;

use crate::index::{IndexError, StudyIndex};

/// The consumer's name, as its skips are counted.
pub const CONSUMER: &str = "storage.landed";

pub struct LandedDerivatives {
    region: String,
    index: Arc<StudyIndex>,
    log: Arc<dyn EventLog>,
    blobs: Arc<dyn Blobs>,
    /// Other regions' storage topics copied here.
    topics: Vec<TopicName>,
    skips: meridian_log::skips::Skips,
    reader: tokio::sync::Mutex<Option<Box<dyn LogReader>>>,
}

impl LandedDerivatives {
    pub fn new(
        region: &str,
        index: Arc<StudyIndex>,
        log: Arc<dyn EventLog>,
        blobs: Arc<dyn Blobs>,
        topics: Vec<TopicName>,
    ) -> LandedDerivatives {
        LandedDerivatives {
            region: region.to_owned(),
            index,
            log,
            blobs,
            topics,
            skips: meridian_log::skips::Skips::new(CONSUMER),
            reader: tokio::sync::Mutex::new(None),
        }
    }

    /// What it passed, by reason.
    pub fn skips(&self) -> &meridian_log::skips::Skips {
        &self.skips
    }

    /// Indexes the derivatives the copied DerivativeCreated records name for
    /// this region, until a read waits `wait` with nothing. Returns how
    /// many instances it indexed. After an error the kept reader is
    /// dropped: the next pass reads again from the index's positions.
    pub async fn follow(&self, wait: Duration) -> Result<usize, IndexError> {
        if self.topics.is_empty() {
            tokio::time::sleep(wait).await;
            return Ok(0);
        }
        let mut slot = self.reader.lock().await;
        let mut reader = match slot.take() {
            Some(reader) => reader,
            None => {
                let mut from = Vec::new();
                for topic in &self.topics {
                    let partitions = self.log.partitions(topic).await?;
                    from.extend(self.index.positions(topic, partitions)?);
                }
                self.log.reader(from).await?
            }
        };
        let mut indexed = 0;
        loop {
            let batch = reader.next_batch(64, wait).await?;
            if batch.is_empty() {
                *slot = Some(reader);
                return Ok(indexed);
            }
            for record in &batch {
                let at = Some((&record.topic, record.partition, record.offset));
                let landed = record.envelope().ok().and_then(|envelope| match envelope.open_plain() {
                    Ok(Payload::DerivativeCreated(d)) if d.destination_region == self.region => {
                        Some((envelope.meta.tenant.clone(), Landing::Created(d)))
                    }
                    Ok(Payload::ObjectPurged(p)) if !p.derivative_study_id.is_empty() && p.region == self.region => {
                        Some((envelope.meta.tenant.clone(), Landing::Purged(p)))
                    }
                    _ => None,
                });
                let (tenant, d) = match landed {
                    Some((tenant, Landing::Created(d))) => (tenant, d),
                    Some((tenant, Landing::Purged(p))) => {
                        self.purge(&tenant, &p, record).await?;
                        continue;
                    }
                    None => {
                        self.index.skip(at)?;
                        continue;
                    }
                };
                let Ok(study) = Uuid::parse_str(&d.derivative_study_id) else {
                    self.skips.skip(record, "malformed_ids", &format!("derivative {:?}", d.derivative_study_id));
                    self.index.skip(at)?;
                    continue;
                };
                let n = self
                    .index
                    .index_derivative(self.blobs.as_ref(), (&tenant, &d.contract, study), record, &self.skips)
                    .await?;
                if n > 0 {
                    tracing::info!(region = %self.region, derivative = %study, instances = n, "derivative indexed where it landed");
                } else if d.instance_count > 0 {
                    // Its home says it wrote objects here; none is here.
                    let why =
                        format!("derivative {study}: {} instances recorded, none in this store", d.instance_count);
                    self.skips.skip(record, "missing_derivative_objects", &why);
                }
                indexed += n;
            }
        }
    }

    /// A derivative's home purged the study it was made from: deletes the
    /// derivative's objects from this region's store and forgets it in the
    /// index, then moves the position. Only the key the record names, and
    /// only when it is that derivative's place (`deid/<tenant>/<contract>/
    /// <derivative>/`, the tenant the record's): a record never deletes
    /// anything else here.
    async fn purge(
        &self,
        tenant: &str,
        p: &meridian_proto::events::v1::ObjectPurged,
        record: &meridian_log::Record,
    ) -> Result<(), IndexError> {
        let at = Some((&record.topic, record.partition, record.offset));
        let derivative = Uuid::parse_str(&p.derivative_study_id).ok();
        let place = match p.object_key.split('/').collect::<Vec<_>>()[..] {
            ["deid", t, contract, d, ""] if t == tenant && !contract.is_empty() => {
                derivative.filter(|derivative| derivative.hyphenated().to_string() == d)
            }
            _ => None,
        };
        let Some(derivative) = place else {
            let why = format!("derivative {:?}: {:?} is not its place", p.derivative_study_id, p.object_key);
            self.skips.skip(record, "malformed_purge", &why);
            return self.index.skip(at);
        };
        let mut deleted = 0;
        for key in self.blobs.list(&p.object_key).await? {
            self.blobs.delete(&key).await?;
            deleted += 1;
        }
        let instances = self.index.forget_study(tenant, derivative, at)?;
        tracing::info!(region = %self.region, %derivative, objects = deleted, instances, "derivative purged where it landed");
        Ok(())
    }
}

/// What a copied storage record asks of this region.
enum Landing {
    Created(meridian_proto::events::v1::DerivativeCreated),
    Purged(meridian_proto::events::v1::ObjectPurged),
}
