//! Single calls made at the same time by many case workers, coalesced into batch calls.
//!
//! A [`Batcher`] takes single requests and hands them to one task, which sends whatever has
//! queued (up to `max`) as one batch call, with at most `in_flight` batch calls out at a
//! time: while they are out, new requests queue and go together in the next one, so the
//! busier the workers, the larger the batches (the group-commit principle). A lone request
//! goes out at once, alone: nothing waits for a batch to fill.
//!
//! Each request gets the result of its own item. The batch function answers one result `R`
//! per request, in order (a batch call that fails as a whole gives its error to each); a
//! request left without one (a short answer, the task gone) gets `lost(why)`.
//!
//! Used by the SDU for its look-ups and by the PEP simulator for its own.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

type Item<Q, R> = (Q, oneshot::Sender<R>);

/// Coalesces single requests `Q` into batch calls answering `R` for each.
pub struct Batcher<Q, R> {
    tx: mpsc::UnboundedSender<Item<Q, R>>,
    what: &'static str,
    lost: fn(String) -> R,
}

impl<Q, R> std::fmt::Debug for Batcher<Q, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("what", &self.what).finish()
    }
}

impl<Q: Send + 'static, R: Send + 'static> Batcher<Q, R> {
    /// Starts the batching task (on the current Tokio runtime). `call` makes one batch call
    /// of up to `max` requests and returns one result per request, in order; at most
    /// `in_flight` of them are out at a time. The task ends when the batcher is dropped.
    pub fn new<F, Fut>(what: &'static str, max: usize, in_flight: usize, lost: fn(String) -> R, call: F) -> Self
    where
        F: Fn(Vec<Q>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Item<Q, R>>();
        let call = Arc::new(call);
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        let max = max.max(1);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(max);
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                if rx.recv_many(&mut buf, max).await == 0 {
                    return;
                }
                let (qs, answer_to): (Vec<Q>, Vec<_>) = buf.drain(..).unzip();
                let call = call.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let n = answer_to.len();
                    let mut results = call(qs).await.into_iter();
                    for tx in answer_to {
                        let r = results
                            .next()
                            .unwrap_or_else(|| lost(format!("{what}: the batch answered fewer than {n} results")));
                        let _ = tx.send(r);
                    }
                });
            }
        });
        Batcher { tx, what, lost }
    }

    /// One request, answered when its batch is.
    pub async fn call(&self, q: Q) -> R {
        let stopped = || (self.lost)(format!("{}: the batching task has stopped", self.what));
        let (tx, rx) = oneshot::channel();
        if self.tx.send((q, tx)).is_err() {
            return stopped();
        }
        rx.await.unwrap_or_else(|_| stopped())
    }
}

/// The results of a batch call that failed as a whole: its error for each of `n` requests.
pub fn all_failed<A, E: Clone>(n: usize, e: E) -> Vec<Result<A, E>> {
    (0..n).map(|_| Err(e.clone())).collect()
}

/// The results of a batch answer for its `n` items, in order and consumed; `None` for an
/// item the answer left out.
pub fn each_of<T>(results: Vec<T>, n: usize) -> impl Iterator<Item = Option<T>> {
    let mut it = results.into_iter();
    (0..n).map(move |_| it.next())
}

/// Appends each distinct value under `key` (the consent tokens of a batch's subjects, one
/// metadata value each); a value that is no valid metadata is left out.
pub fn append_distinct<'a>(
    md: &mut tonic::metadata::MetadataMap,
    key: &'static str,
    values: impl Iterator<Item = &'a str>,
) {
    let mut seen = std::collections::HashSet::new();
    for v in values {
        if seen.insert(v)
            && let Ok(v) = v.parse()
        {
            md.append(key, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    #[tokio::test]
    async fn requests_made_together_share_batches_and_get_their_own_results() {
        let sizes = Arc::new(Mutex::new(vec![]));
        let s2 = sizes.clone();
        let b = Arc::new(Batcher::new("test", 8, 1, Err, move |qs: Vec<u32>| {
            s2.lock().unwrap().push(qs.len());
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                qs.into_iter()
                    .map(|q| {
                        if q == 13 {
                            Err("thirteen".to_string())
                        } else {
                            Ok(q * 10)
                        }
                    })
                    .collect()
            }
        }));
        let calls: Vec<_> = (0..20u32)
            .map(|q| {
                let b = b.clone();
                tokio::spawn(async move { (q, b.call(q).await) })
            })
            .collect();
        for c in calls {
            let (q, r) = c.await.unwrap();
            if q == 13 {
                assert_eq!(r.unwrap_err(), "thirteen");
            } else {
                assert_eq!(r.unwrap(), q * 10);
            }
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 20, "{sizes:?}");
        assert!(sizes.iter().all(|&n| n <= 8), "{sizes:?}");
        assert!(sizes.len() < 20, "requests waiting together went together: {sizes:?}");
    }

    #[test]
    fn answers_are_taken_in_order_and_tokens_once_each() {
        let got: Vec<_> = each_of(vec!["a", "b"], 3).collect();
        assert_eq!(got, [Some("a"), Some("b"), None]);
        let mut md = tonic::metadata::MetadataMap::new();
        append_distinct(&mut md, "x-kdp-token", ["t1", "t2", "t1", "bad\n"].into_iter());
        let values: Vec<_> = md.get_all("x-kdp-token").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(values, ["t1", "t2"]);
    }

    #[tokio::test]
    async fn a_short_answer_fails_the_requests_it_leaves_out() {
        let b = Batcher::new("short", 4, 1, Err, |qs: Vec<u32>| async move {
            qs.into_iter().skip(1).map(Ok).collect::<Vec<Result<u32, String>>>()
        });
        let r = b.call(1).await;
        assert!(r.unwrap_err().contains("fewer than 1"));
    }
}
