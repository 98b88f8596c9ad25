//! `shep sdu`: drive a running SDU node over gRPC with the `operator` certificate, as an
//! operator would from any host.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use shep_proto::sdu::proactive_service_client::ProactiveServiceClient;
use shep_proto::sdu::{GetReportRequest, ListCasesRequest, RunDailyRequest};
use shep_runtime::TlsConfig;

use crate::exit::{CONFIG, Failure, WithCode};

#[derive(Subcommand)]
pub enum SduCommand {
    /// Start the daily run of a pilot for a date (returns at once; the run goes on in the node)
    Run {
        #[command(flatten)]
        target: Target,
        /// Wait until every case has an outcome or waits for an answer, printing progress
        #[arg(long)]
        wait: bool,
    },
    /// The funnel of a pilot's run for a date; with --json one record per case with its steps
    Report {
        #[command(flatten)]
        target: Target,
        /// One JSON object per case (outcome, permits, steps with times) instead of the table
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct Target {
    /// The pilot: sez-000, eco-001 or trusted-sw-004
    #[arg(long)]
    pilot: String,
    /// The day of the diff (YYYY-MM-DD)
    #[arg(long)]
    date: jiff::civil::Date,
    /// The SDU node
    #[arg(long, default_value = "https://127.0.0.1:7010")]
    addr: String,
    /// The dev PKI (the `operator` certificate is used)
    #[arg(long, default_value = "var/pki")]
    pki: PathBuf,
    /// The identity to call as (a certificate NAME.pem / NAME.key in the PKI directory)
    #[arg(long, default_value = "operator")]
    identity: String,
}

impl Target {
    async fn client(&self) -> Result<ProactiveServiceClient<tonic::transport::Channel>, Failure> {
        let tls = TlsConfig::from_pki_dir(&self.pki, &self.identity);
        let ch = shep_runtime::tls::channel(&tls, &self.addr).code(CONFIG)?;
        Ok(ProactiveServiceClient::new(ch))
    }

    fn date(&self) -> shep_proto::shep::Date {
        shep_proto::shep::Date {
            year: self.date.year() as i32,
            month: self.date.month() as i32,
            day: self.date.day() as i32,
        }
    }
}

fn status_err(s: tonic::Status) -> Failure {
    let code = match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition | tonic::Code::NotFound => CONFIG,
        _ => crate::exit::RUNTIME,
    };
    Failure { code, error: anyhow::anyhow!("{}: {}", s.code(), s.message()) }
}

pub async fn run(cmd: SduCommand) -> Result<(), Failure> {
    match cmd {
        SduCommand::Run { target, wait } => {
            let mut c = target.client().await?;
            let r = c
                .run_daily(RunDailyRequest { pilot_id: target.pilot.clone(), date: Some(target.date()) })
                .await
                .map_err(status_err)?
                .into_inner();
            println!("run {} {}", r.run_id, if r.existing { "(already started)" } else { "started" });
            if wait {
                loop {
                    let rep = report(&mut c, &target).await?;
                    println!("{}", rep.progress_line());
                    if rep.complete && rep.counts.open == 0 {
                        break;
                    }
                    if rep.complete {
                        println!("the diff is read; {} case(s) wait for answers or timers", rep.counts.open);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        SduCommand::Report { target, json } => {
            let mut c = target.client().await?;
            if json {
                let mut stream = c
                    .list_cases(ListCasesRequest {
                        pilot_id: target.pilot.clone(),
                        date: Some(target.date()),
                        ..Default::default()
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                let desc = pool()?
                    .get_message_by_name("kz.gov.sdu.v1.Case")
                    .context("kz.gov.sdu.v1.Case is not in the descriptor set")?;
                while let Some(case) = stream.message().await.map_err(status_err)? {
                    // Canonical proto3 JSON, the same as grpcurl prints, one case a line.
                    let msg = prost_reflect::DynamicMessage::decode(desc.clone(), prost::Message::encode_to_vec(&case).as_slice())
                        .context("decoding a case")?;
                    println!("{}", serde_json::to_string(&msg).context("encoding a case")?);
                }
            } else {
                let rep = report(&mut c, &target).await?;
                println!("{}", rep.render_text());
            }
        }
    }
    Ok(())
}

async fn report(
    c: &mut ProactiveServiceClient<tonic::transport::Channel>,
    target: &Target,
) -> Result<shep_sdu::FunnelReport, Failure> {
    let r = c
        .get_report(GetReportRequest { pilot_id: target.pilot.clone(), date: Some(target.date()) })
        .await
        .map_err(status_err)?
        .into_inner();
    shep_sdu::FunnelReport::from_proto(&r).map_err(|e| anyhow::anyhow!(e)).code(crate::exit::RUNTIME)
}

fn pool() -> Result<prost_reflect::DescriptorPool, Failure> {
    Ok(prost_reflect::DescriptorPool::decode(shep_proto::FILE_DESCRIPTOR_SET).context("decoding the contracts")?)
}
