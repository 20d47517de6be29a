//! Reading a log into a projector, and opening one from its snapshot.

use std::time::{Duration, Instant};

use meridian_events::KeyStore;
use meridian_log::{EventLog, Position};

use crate::snapshot::{FileSnapshots, Loaded};
use crate::{Error, Projection, Projector};

/// Reads from the projector's positions to the log's end as it was when
/// the catch-up began (where the log can say; else until a read waits
/// `idle` with nothing new): a full catch-up, as an open or a rebuild
/// wants it.
pub async fn catch_up<P: Projection>(
    log: &dyn EventLog,
    keys: &dyn KeyStore,
    projector: &mut Projector<P>,
    idle: Duration,
) -> Result<(), Error> {
    let mut reader =
        log.reader(projector.positions()).await.map_err(|source| Error::Log { projection: P::NAME, source })?;
    loop {
        let batch =
            reader.catch_up_batch(1024, idle).await.map_err(|source| Error::Log { projection: P::NAME, source })?;
        if batch.is_empty() {
            return Ok(());
        }
        for record in &batch {
            projector.feed(record, keys)?;
        }
    }
}

/// What a rebuild found.
#[derive(Clone, Debug)]
pub struct Rebuilt {
    pub applied: u64,
    pub duplicates: u64,
    /// Skipped for any reason (unreadable, shredded, unknown key, conflict).
    pub skipped: u64,
    pub duration: Duration,
    /// The rebuilt state and positions equal the live ones it replaced.
    pub matches_previous: bool,
}

/// Throws `live` away for a fresh replay from `starts`: both are brought
/// to the same point of the log and compared (a projection that does not
/// rebuild to what it held has a bug), then the fresh one takes `live`'s
/// place. The caller holds `live`'s lock throughout, so nothing is lost or
/// applied twice meanwhile.
pub async fn rebuild<P: Projection>(
    live: &mut Projector<P>,
    starts: Vec<Position>,
    log: &dyn EventLog,
    keys: &dyn KeyStore,
    idle: Duration,
) -> Result<Rebuilt, Error> {
    let started = Instant::now();
    let mut fresh = Projector::<P>::new(starts).in_region(live.region());
    catch_up(log, keys, &mut fresh, idle).await?;
    for _ in 0..3 {
        catch_up(log, keys, live, idle).await?;
        catch_up(log, keys, &mut fresh, idle).await?;
        if live.positions() == fresh.positions() {
            break;
        }
    }
    let matches_previous = live.positions() == fresh.positions() && live.state() == fresh.state();
    let s = fresh.stats().clone();
    *live = fresh;
    Ok(Rebuilt {
        applied: s.applied,
        duplicates: s.duplicates,
        skipped: s.corrupt_envelopes + s.unreadable_payloads + s.shredded + s.unknown_keys + s.conflicts,
        duration: started.elapsed(),
        matches_previous,
    })
}

/// How a projection was opened: from a snapshot or from the start, and how
/// much of the log it read to catch up.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Resumed {
    /// The snapshot it continued from (false: none, or set aside).
    pub from_snapshot: bool,
    /// Records read after the snapshot (or from the start).
    pub tail: u64,
    #[serde(rename = "open_ms", serialize_with = "millis")]
    pub duration: Duration,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// Opens projection `P`: from its snapshot where one reads (an unreadable
/// one is set aside and logged), from `starts` otherwise; a topic-partition
/// the snapshot does not know starts at `starts`' offset. Then reads the
/// tail. Memory and time follow the tail, not the log's length.
pub async fn resume<P: Projection>(
    region: Option<&str>,
    snapshots: &FileSnapshots,
    starts: Vec<Position>,
    log: &dyn EventLog,
    keys: &dyn KeyStore,
    idle: Duration,
) -> Result<(Projector<P>, Resumed), Error> {
    let started = Instant::now();
    let (projector, from_snapshot) = match snapshots.load_or_set_aside::<P>()? {
        Loaded::Found(snapshot) => match Projector::restore(snapshot) {
            Ok(p) => (p, true),
            Err(e) => {
                tracing::warn!(projection = P::NAME, error = %e, "snapshot does not restore: rebuilding from the log");
                (Projector::new(Vec::new()), false)
            }
        },
        Loaded::Missing | Loaded::SetAside { .. } => (Projector::new(Vec::new()), false),
    };
    let mut projector = projector.in_region(region);
    projector.ensure_positions(starts);
    let before = projector.fed() + projector.stats().behind_position;
    catch_up(log, keys, &mut projector, idle).await?;
    let tail = projector.fed() + projector.stats().behind_position - before;
    let resumed = Resumed { from_snapshot, tail, duration: started.elapsed() };
    tracing::info!(
        projection = P::NAME,
        from_snapshot,
        tail,
        ms = resumed.duration.as_millis() as u64,
        "projection opened"
    );
    Ok((projector, resumed))
}

/// Takes a projection's snapshots on a schedule: after `events` records
/// or `interval`, whichever comes first, and only when something was fed.
/// The snapshot is encoded under the caller's lock (no copy of the state)
/// and written after it is released, on a blocking thread.
#[derive(Debug)]
pub struct Snapshotter {
    files: FileSnapshots,
    events: u64,
    interval: Duration,
    /// (records fed at the last snapshot, when it was taken).
    last: std::sync::Mutex<(u64, Instant)>,
}

impl Snapshotter {
    pub fn new(files: FileSnapshots, events: u64, interval: Duration) -> Snapshotter {
        Snapshotter { files, events, interval, last: std::sync::Mutex::new((0, Instant::now())) }
    }

    /// Neither reads nor writes snapshots: every open is a full replay.
    pub fn none() -> Snapshotter {
        Snapshotter::new(FileSnapshots::none(), u64::MAX, Duration::MAX)
    }

    pub fn files(&self) -> &FileSnapshots {
        &self.files
    }

    /// The encoded snapshot when one is due (with `force`: whenever
    /// anything was fed since the last), and the count it was taken at.
    pub fn encode_if_due<P: Projection>(
        &self,
        projector: &Projector<P>,
        force: bool,
    ) -> Result<Option<(u64, Vec<u8>)>, Error> {
        let fed = projector.fed();
        let (at, when) = *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = fed > at && (force || fed - at >= self.events || when.elapsed() >= self.interval);
        if !due {
            return Ok(None);
        }
        Ok(Some((fed, projector.encode_snapshot()?)))
    }

    /// Writes what [`encode_if_due`](Self::encode_if_due) gave, atomically.
    pub async fn write<P: Projection>(&self, fed: u64, bytes: Vec<u8>) -> Result<(), Error> {
        let files = self.files.clone();
        let (size, started) = (bytes.len(), Instant::now());
        tokio::task::spawn_blocking(move || files.write::<P>(&bytes)).await.map_err(|e| Error::Snapshot {
            projection: P::NAME,
            operation: "save",
            reason: e.to_string(),
        })??;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        tracing::debug!(projection = P::NAME, bytes = size, ms, "snapshot written");
        *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = (fed, Instant::now());
        Ok(())
    }
}
