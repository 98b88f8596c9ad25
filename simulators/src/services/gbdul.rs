//! GBD UL: `OrganizationRegistry` — one organization by BIN, the feed of name changes.

use std::sync::Arc;

use shep_proto::gbdul::organization_registry_server::OrganizationRegistry;
use shep_proto::gbdul::{GetOrganizationRequest, NameChange, Organization, StreamNameChangesRequest};
use shep_runtime::status::{not_found, parse_bin};
use tonic::{Request, Response, Status};

use super::common::{Feed, feed, limited, range};
use crate::cursor;
use crate::sim::Simulation;
use crate::views;

const FEED: &str = "gbdul.renames";

/// The GBD UL simulator.
pub struct GbdUl {
    pub sim: Arc<Simulation>,
}

#[tonic::async_trait]
impl OrganizationRegistry for GbdUl {
    async fn get_organization(&self, req: Request<GetOrganizationRequest>) -> Result<Response<Organization>, Status> {
        let bin = parse_bin("bin", &req.get_ref().bin)?;
        let c = self.sim.country();
        let o = c.org_index(&bin).ok_or_else(|| not_found("organization", &bin.to_string()))?;
        let st = self.sim.state();
        Ok(Response::new(views::organization(c, &st, o)))
    }

    type StreamNameChangesStream = Feed<NameChange>;

    async fn stream_name_changes(
        &self,
        req: Request<StreamNameChangesRequest>,
    ) -> Result<Response<Self::StreamNameChangesStream>, Status> {
        let r = req.into_inner();
        let (from, to) = range("range", r.range.as_ref())?;
        let after = cursor::decode_field(FEED, &r.cursor, 3, "cursor")?.map(|v| (v[0], v[1], v[2]));
        let c = self.sim.country();
        let items: Vec<NameChange> = {
            let st = self.sim.state();
            let entries = views::renames_in(c, &st, from, to);
            let entries: Vec<_> = entries
                .into_iter()
                .filter(|e| after.is_none_or(|a| (e.day.0 as i64, e.org as i64, e.seq as i64) > a))
                .collect();
            limited(entries, r.limit)
                .iter()
                .map(|e| {
                    let mut nc = views::name_change(c, &st, e);
                    nc.cursor = cursor::encode(FEED, &[e.day.0 as i64, e.org as i64, e.seq as i64]);
                    nc
                })
                .collect()
        };
        Ok(Response::new(feed(items)))
    }
}
