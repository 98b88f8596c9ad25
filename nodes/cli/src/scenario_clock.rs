//! The simulation's clock, read from another process: an SDU node started alone
//! (`shep node sdu`, `clock = "scenario"`) next to a topology on a manual clock follows the
//! simulation's time by polling `kz.shep.sim.v1.Scenario/GetClock` through the bus.
//!
//! - The first reading is taken before the SDU starts; when the simulation cannot be read
//!   within `start_timeout_ms` (or the bus refuses the call) the start fails and says why.
//! - Then a background task reads it every `poll_ms`. The clock never goes back: a reading
//!   earlier than the last one (the simulation was reset) is ignored, with a warning. While
//!   the simulation is unreachable the clock stands still (deadlines wait), with warnings.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use shep_proto::sim::GetClockRequest;
use shep_proto::sim::scenario_client::ScenarioClient;
use tonic::transport::Channel;

/// The `[scenario_clock]` section of the SDU node's file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScenarioClockSettings {
    /// How often the simulation's clock is read, in milliseconds (a jump of a manual clock
    /// reaches the SDU within this).
    pub poll_ms: u64,
    /// How long the first reading may take, in milliseconds, before the node gives up.
    pub start_timeout_ms: u64,
    /// Deadline of one reading, in milliseconds.
    pub call_timeout_ms: u64,
}

impl Default for ScenarioClockSettings {
    fn default() -> Self {
        ScenarioClockSettings { poll_ms: 100, start_timeout_ms: 10_000, call_timeout_ms: 2_000 }
    }
}

impl ScenarioClockSettings {
    /// Checks the ranges.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.poll_ms == 0 || self.poll_ms > 60_000 {
            bail!("scenario_clock.poll_ms {} is not between 1 and 60000", self.poll_ms);
        }
        if self.call_timeout_ms == 0 {
            bail!("scenario_clock.call_timeout_ms must be at least 1");
        }
        Ok(())
    }
}

/// The simulation's time as last read, in nanoseconds since the Unix epoch.
pub struct ScenarioClock {
    nanos: Arc<AtomicI64>,
    poller: tokio::task::JoinHandle<()>,
}

impl Drop for ScenarioClock {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl shep_sdu::Clock for ScenarioClock {
    fn now(&self) -> jiff::Timestamp {
        instant(self.nanos.load(Ordering::Acquire))
    }
}

async fn read(client: &mut ScenarioClient<Channel>, timeout: Duration) -> Result<i64, tonic::Status> {
    let mut req = tonic::Request::new(GetClockRequest {});
    req.set_timeout(timeout);
    let call = client.get_clock(req);
    let resp = match tokio::time::timeout(timeout, call).await {
        Ok(r) => r?.into_inner(),
        Err(_) => return Err(tonic::Status::deadline_exceeded(format!("no answer within {} ms", timeout.as_millis()))),
    };
    let t = resp.now.ok_or_else(|| tonic::Status::internal("GetClock answered without a time"))?;
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    i64::try_from(nanos).map_err(|_| tonic::Status::out_of_range(format!("simulated time {}s is out of range", t.seconds)))
}

/// Refusals that no retry can cure: wrong routes, access or contracts.
fn permanent(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
            | tonic::Code::Unimplemented
            | tonic::Code::InvalidArgument
            | tonic::Code::NotFound
            | tonic::Code::OutOfRange
    )
}

impl ScenarioClock {
    /// Reads the simulation's clock through `channel` (to the bus, or to a simulator) until
    /// the first reading succeeds, then keeps it current in the background.
    pub async fn start(channel: Channel, url: &str, settings: &ScenarioClockSettings) -> anyhow::Result<Arc<ScenarioClock>> {
        settings.validate()?;
        let mut client = ScenarioClient::new(channel);
        let timeout = Duration::from_millis(settings.call_timeout_ms);
        let started = Instant::now();
        let give_up = Duration::from_millis(settings.start_timeout_ms);
        let first = loop {
            match read(&mut client, timeout).await {
                Ok(n) => break n,
                Err(s) if permanent(s.code()) || started.elapsed() >= give_up => {
                    return Err(anyhow::anyhow!("{:?}: {}", s.code(), s.message())).with_context(|| {
                        format!(
                            "cannot read the simulation's clock (kz.shep.sim.v1.Scenario/GetClock) at {url}: \
                             is the topology up (`shep up --without-sdu --clock manual`), and does the bus route \
                             kz.shep.sim.v1.Scenario and let this system call GetClock? Or use clock = \"system\""
                        )
                    });
                }
                Err(s) => {
                    tracing::debug!(code = ?s.code(), error = s.message(), "the simulation's clock is not readable yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let nanos = Arc::new(AtomicI64::new(first));
        let poll = Duration::from_millis(settings.poll_ms);
        let shared = nanos.clone();
        tracing::info!(%url, now = %instant(first), "following the simulation's clock");
        let url = url.to_owned();
        let poller = tokio::spawn(async move {
            let mut failures = 0u64;
            let mut went_back = false;
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match read(&mut client, timeout).await {
                    Ok(n) => {
                        if failures > 0 {
                            tracing::info!(%url, "the simulation's clock is readable again");
                        }
                        failures = 0;
                        let before = shared.fetch_max(n, Ordering::AcqRel);
                        if n < before && !went_back {
                            went_back = true;
                            tracing::warn!(%url, "the simulation's clock went back (reset?); this node's clock stays where it was until the simulation catches up");
                        } else if n >= before {
                            went_back = false;
                        }
                    }
                    Err(s) => {
                        failures += 1;
                        if failures == 1 || failures.is_multiple_of(100) {
                            tracing::warn!(%url, code = ?s.code(), error = s.message(), failures, "cannot read the simulation's clock; the clock stands still");
                        }
                    }
                }
            }
        });
        Ok(Arc::new(ScenarioClock { nanos, poller }))
    }
}

fn instant(nanos: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_nanosecond(i128::from(nanos)).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}
