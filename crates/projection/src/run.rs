//! Reading a log into a projector.

use std::time::Duration;

use meridian_events::KeyStore;
use meridian_log::EventLog;

use crate::{Error, Projection, Projector};

/// Reads from the projector's positions until a read waits `idle` with
/// nothing new: a full catch-up, as a rebuild or a test wants it.
pub async fn catch_up<P: Projection>(
    log: &dyn EventLog,
    keys: &dyn KeyStore,
    projector: &mut Projector<P>,
    idle: Duration,
) -> Result<(), Error> {
    let mut reader =
        log.reader(projector.positions()).await.map_err(|source| Error::Log { projection: P::NAME, source })?;
    loop {
        let batch = reader.next_batch(1024, idle).await.map_err(|source| Error::Log { projection: P::NAME, source })?;
        if batch.is_empty() {
            return Ok(());
        }
        for record in &batch {
            projector.feed(record, keys)?;
        }
    }
}
