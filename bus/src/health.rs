//! Health of routed services: the bus's `grpc.health.v1.Health` reports, for each routed
//! service, what the upstream's own health check said at the last poll.

use std::sync::Arc;
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::pb::health_check_response::ServingStatus as Wire;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_health::server::HealthReporter;

use crate::gate::Core;

/// The bus's status for a service given the upstream's answer (or failure to answer).
pub fn status_of(answer: Result<i32, ()>) -> ServingStatus {
    match answer {
        Ok(s) if s == Wire::Serving as i32 => ServingStatus::Serving,
        Ok(_) | Err(()) => ServingStatus::NotServing,
    }
}

/// Polls every routed service's upstream every `interval` until `shutdown`.
pub fn spawn_poller(
    core: Arc<Core>,
    health: HealthReporter,
    interval: Duration,
    shutdown: shep_runtime::Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let timeout = interval.clamp(Duration::from_millis(100), Duration::from_secs(2));
        let mut last: std::collections::HashMap<String, ServingStatus> = Default::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => return,
            }
            let checks = core.routes.iter().map(|(svc, up)| {
                let ch = core.channel(&up.system);
                let svc = svc.to_owned();
                let system = up.system.clone();
                async move {
                    let answer = match ch {
                        Some(ch) => {
                            let mut c = HealthClient::new(ch);
                            let req = HealthCheckRequest {
                                service: svc.clone(),
                            };
                            match tokio::time::timeout(timeout, c.check(req)).await {
                                Ok(Ok(r)) => Ok(r.into_inner().status),
                                _ => Err(()),
                            }
                        }
                        None => Err(()),
                    };
                    (svc, system, status_of(answer))
                }
            });
            for (svc, system, st) in futures::future::join_all(checks).await {
                if shutdown.is_triggered() {
                    return;
                }
                core.metrics
                    .upstream(&svc, &system, st == ServingStatus::Serving);
                if last.get(&svc) != Some(&st) {
                    tracing::info!(service = %svc, upstream = %system, status = ?st, "upstream health");
                    last.insert(svc.clone(), st);
                }
                health.set_service_status(&svc, st).await;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_serving_is_serving() {
        assert_eq!(status_of(Ok(Wire::Serving as i32)), ServingStatus::Serving);
        assert_eq!(
            status_of(Ok(Wire::NotServing as i32)),
            ServingStatus::NotServing
        );
        assert_eq!(
            status_of(Ok(Wire::ServiceUnknown as i32)),
            ServingStatus::NotServing
        );
        assert_eq!(status_of(Err(())), ServingStatus::NotServing);
    }
}
