//! What the registry services share: date and range validation, streams from lists.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use shep_runtime::status::invalid_field;
use tonic::Status;

use crate::sim::Simulation;
use crate::time::Day;

/// A server stream of a service.
pub type Feed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A stream of the items of a list.
pub fn feed<T: Send + 'static>(items: Vec<T>) -> Feed<T> {
    Box::pin(futures::stream::iter(items.into_iter().map(Ok)))
}

/// A date field, validated.
pub fn date(field: &str, d: &shep_proto::shep::Date) -> Result<Day, Status> {
    Day::from_proto(d)
        .ok_or_else(|| invalid_field(field, format!("{}-{}-{} is not a date", d.year, d.month, d.day), "INVALID_DATE"))
}

/// An optional date field, `default` when empty.
pub fn date_or(field: &str, d: Option<&shep_proto::shep::Date>, default: Day) -> Result<Day, Status> {
    d.map(|d| date(field, d)).transpose().map(|d| d.unwrap_or(default))
}

/// A required range field: both ends set and valid, `from` not after `to`.
pub fn range(field: &str, r: Option<&shep_proto::shep::DateRange>) -> Result<(Day, Day), Status> {
    let r = r.ok_or_else(|| invalid_field(field, "required", "MISSING_FIELD"))?;
    let from = date(
        &format!("{field}.from"),
        r.from.as_ref().ok_or_else(|| invalid_field(&format!("{field}.from"), "required", "MISSING_FIELD"))?,
    )?;
    let to = date(
        &format!("{field}.to"),
        r.to.as_ref().ok_or_else(|| invalid_field(&format!("{field}.to"), "required", "MISSING_FIELD"))?,
    )?;
    if from > to {
        return Err(invalid_field(field, format!("from {from} is after to {to}"), "INVALID_RANGE"));
    }
    Ok((from, to))
}

/// At most `limit` items (0: all).
pub fn limited<T>(mut v: Vec<T>, limit: u32) -> Vec<T> {
    if limit > 0 {
        v.truncate(limit as usize);
    }
    v
}

/// A required non-empty string field.
pub fn required(field: &str, value: &str) -> Result<(), Status> {
    if value.trim().is_empty() { Err(invalid_field(field, "required", "MISSING_FIELD")) } else { Ok(()) }
}

/// How often a following stream looks again when the clock is the system's (answers fall
/// due as real time passes); a manual clock announces its moves instead.
const SYSTEM_CLOCK_TICK: Duration = Duration::from_millis(500);

/// A stream that sends what `fetch` returns (each call returns the items after the last
/// ones it returned), and with `follow` keeps calling it whenever the simulation changes,
/// until the caller goes away.
pub fn tail<T, F>(sim: Arc<Simulation>, follow: bool, mut fetch: F) -> Feed<T>
where
    T: Send + 'static,
    F: FnMut(&Simulation) -> Vec<T> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut changes = sim.subscribe();
        loop {
            changes.borrow_and_update();
            for item in fetch(&sim) {
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            let tick = async {
                if sim.clock().is_manual() {
                    std::future::pending::<()>().await
                } else {
                    tokio::time::sleep(SYSTEM_CLOCK_TICK).await
                }
            };
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
                _ = sim.closed() => return,
                _ = tick => {}
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Most items in one call of a batch method.
pub const MAX_BATCH: usize = 1000;

/// INVALID_ARGUMENT `INVALID_BATCH_SIZE` unless the list `field` holds 1 to [`MAX_BATCH`]
/// items.
pub fn batch_size(field: &str, len: usize) -> Result<(), Status> {
    if len == 0 || len > MAX_BATCH {
        return Err(invalid_field(field, format!("give 1 to {MAX_BATCH} items, got {len}"), "INVALID_BATCH_SIZE"));
    }
    Ok(())
}

/// Each item of a batch request with its own answer.
pub type Answered<I, T> = Vec<(I, Result<T, Status>)>;

/// The items of a batch request, each with what `one` answers for it as the single method
/// would (`one` gets the item's field name, "iins[3]", for its errors). The list, the
/// request field `field`, must hold 1 to [`MAX_BATCH`] items (INVALID_ARGUMENT otherwise).
pub fn each<I, T>(
    field: &str,
    items: Vec<I>,
    mut one: impl FnMut(&str, &I) -> Result<T, Status>,
) -> Result<Answered<I, T>, Status> {
    batch_size(field, items.len())?;
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let r = one(&format!("{field}[{i}]"), &item);
            (item, r)
        })
        .collect())
}
