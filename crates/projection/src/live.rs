//! A projection a service serves from memory: the projector behind one
//! lock, opened from its snapshot and tail, snapshotted on a schedule and
//! rebuilt on request. Ingest's studies and routing's worklist are each
//! one; the service decides and appends under [`Live::lock`].

use std::time::Duration;

use meridian_events::KeyStore;
use meridian_log::{EventLog, Position};
use tokio::sync::{Mutex, MutexGuard};

use crate::run::{Rebuilt, Resumed, Snapshotter, rebuild, resume};
use crate::{Error, Projection, Projector, Stats};

pub struct Live<P: Projection> {
    projector: Mutex<Projector<P>>,
    snapshots: Snapshotter,
    opened: Resumed,
    /// Where a replay starts: every partition of the projection's topics.
    starts: Vec<Position>,
}

impl<P: Projection> Live<P> {
    /// Opens from the snapshot and the tail (see [`resume`]) of `region`'s
    /// log.
    pub async fn open(
        region: &str,
        snapshots: Snapshotter,
        starts: Vec<Position>,
        log: &dyn EventLog,
        keys: &dyn KeyStore,
        idle: Duration,
    ) -> Result<Live<P>, Error> {
        let (projector, opened) = resume::<P>(Some(region), snapshots.files(), starts.clone(), log, keys, idle).await?;
        Ok(Live { projector: Mutex::new(projector), snapshots, opened, starts })
    }

    /// The projector, for a decision and its append, or a read.
    /// The projector when no one holds it: for readers that must not wait
    /// (a metrics gauge read on the exporter's task).
    pub fn try_lock(&self) -> Option<MutexGuard<'_, Projector<P>>> {
        self.projector.try_lock().ok()
    }

    pub async fn lock(&self) -> MutexGuard<'_, Projector<P>> {
        self.projector.lock().await
    }

    /// How it was opened (snapshot, tail, time).
    pub fn opened(&self) -> &Resumed {
        &self.opened
    }

    /// What it did with its input, by reason.
    pub async fn stats(&self) -> Stats {
        self.projector.lock().await.stats().clone()
    }

    /// Writes the snapshot when one is due (`force`: whenever anything
    /// changed since the last, as at shutdown). The lock is held only while
    /// the snapshot is encoded, not while it is written.
    pub async fn snapshot(&self, force: bool) -> Result<(), Error> {
        let encoded = self.snapshots.encode_if_due(&*self.projector.lock().await, force)?;
        if let Some((fed, bytes)) = encoded {
            self.snapshots.write::<P>(fed, bytes).await?;
        }
        Ok(())
    }

    /// Rebuilds from the log (see [`rebuild`]) under the lock, so writers
    /// wait meanwhile, then snapshots.
    pub async fn rebuild(&self, log: &dyn EventLog, keys: &dyn KeyStore, idle: Duration) -> Result<Rebuilt, Error> {
        let rebuilt = {
            let mut projector = self.projector.lock().await;
            rebuild(&mut projector, self.starts.clone(), log, keys, idle).await?
        };
        self.snapshot(true).await?;
        Ok(rebuilt)
    }

    /// Follows the log into the projection until `stop` resolves: one
    /// reader from the projector's positions (a Kafka reader is a client
    /// with its connections), snapshots when due and once more at the end.
    /// A failed read is tried again a second later from where it was.
    pub async fn follow(&self, log: &dyn EventLog, keys: &dyn KeyStore, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut reader = None;
        loop {
            if reader.is_none() {
                let positions = self.projector.lock().await.positions();
                match log.reader(positions).await {
                    Ok(r) => reader = Some(r),
                    Err(e) => tracing::warn!(projection = P::NAME, error = %e, "opening a reader"),
                }
            }
            let Some(r) = reader.as_mut() else {
                tokio::select! {
                    () = &mut stop => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            };
            tokio::select! {
                () = &mut stop => break,
                batch = r.next_batch(1024, Duration::from_millis(500)) => match batch {
                    Ok(batch) => {
                        let mut projector = self.projector.lock().await;
                        for record in &batch {
                            if let Err(e) = projector.feed(record, keys) {
                                tracing::warn!(projection = P::NAME, error = %e, "following the log");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(projection = P::NAME, error = %e, "reading the log");
                        reader = None;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
            }
            if let Err(e) = self.snapshot(false).await {
                tracing::warn!(projection = P::NAME, error = %e, "saving the snapshot");
            }
        }
        if let Err(e) = self.snapshot(true).await {
            tracing::warn!(projection = P::NAME, error = %e, "saving the snapshot");
        }
    }
}
