//! ZAGS: `CivilActRegistry` — the feed of acts by date, the acts of one person.

use std::sync::Arc;

use shep_proto::zags::civil_act_registry_server::CivilActRegistry;
use shep_proto::zags::{
    ActKind, ActsError, CivilAct, GetActsOfPersonsRequest, GetPersonActsRequest, GetPersonActsResponse, PersonActsResult,
    StreamActsRequest, person_acts_result,
};
use shep_runtime::status::{invalid_field, parse_iin};
use tonic::{Request, Response, Status};

use super::common::{Feed, each, feed, limited, range};
use crate::cursor;
use crate::sim::Simulation;
use crate::views;

const FEED: &str = "zags.acts";

/// The ZAGS simulator.
pub struct Zags {
    pub sim: Arc<Simulation>,
}

#[tonic::async_trait]
impl CivilActRegistry for Zags {
    type StreamActsStream = Feed<CivilAct>;

    async fn stream_acts(&self, req: Request<StreamActsRequest>) -> Result<Response<Self::StreamActsStream>, Status> {
        let r = req.into_inner();
        let (from, to) = range("range", r.range.as_ref())?;
        let mut kinds = Vec::with_capacity(r.kinds.len());
        for (i, k) in r.kinds.iter().enumerate() {
            match ActKind::try_from(*k) {
                Ok(k) if k != ActKind::Unspecified => kinds.push(k),
                _ => {
                    return Err(invalid_field(
                        &format!("kinds[{i}]"),
                        format!("{k} is not an act kind"),
                        "INVALID_ACT_KIND",
                    ));
                }
            }
        }
        let after = cursor::decode_field(FEED, &r.cursor, 2, "cursor")?.map(|v| (v[0], v[1]));
        let c = self.sim.country();
        let items: Vec<CivilAct> = {
            let st = self.sim.state();
            let acts: Vec<(crate::time::Day, usize)> = views::acts_in(c, &st, from, to)
                .into_iter()
                .filter(|&(d, i)| after.is_none_or(|a| (d.0 as i64, i as i64) > a))
                .filter(|&(_, i)| kinds.is_empty() || views::act_kind(c, &st, i).is_some_and(|k| kinds.contains(&k)))
                .collect();
            limited(acts, r.limit)
                .into_iter()
                .filter_map(|(d, i)| {
                    let mut a = views::act(c, &st, i)?;
                    a.cursor = cursor::encode(FEED, &[d.0 as i64, i as i64]);
                    Some(a)
                })
                .collect()
        };
        Ok(Response::new(feed(items)))
    }

    async fn get_person_acts(
        &self,
        req: Request<GetPersonActsRequest>,
    ) -> Result<Response<GetPersonActsResponse>, Status> {
        self.acts_of("iin", &req.get_ref().iin).map(Response::new)
    }

    type GetActsOfPersonsStream = Feed<PersonActsResult>;

    async fn get_acts_of_persons(
        &self,
        req: Request<GetActsOfPersonsRequest>,
    ) -> Result<Response<Self::GetActsOfPersonsStream>, Status> {
        let results = each("iins", req.into_inner().iins, |f, iin| self.acts_of(f, iin))?
            .into_iter()
            .map(|(iin, r)| {
                let result = match r {
                    Ok(a) => person_acts_result::Result::Acts(a),
                    Err(s) => person_acts_result::Result::Error(ActsError { code: s.code() as i32, message: s.message().into() }),
                };
                PersonActsResult { iin, result: Some(result) }
            })
            .collect();
        Ok(Response::new(feed(results)))
    }
}

impl Zags {
    /// The acts of the person `iin` (the request field `field`); none for an unknown one.
    fn acts_of(&self, field: &str, iin: &str) -> Result<GetPersonActsResponse, Status> {
        let iin = parse_iin(field, iin)?;
        let c = self.sim.country();
        let Some(p) = c.person_index(&iin) else {
            return Ok(GetPersonActsResponse { acts: vec![] });
        };
        let st = self.sim.state();
        let acts = views::acts_of(c, &st, p).into_iter().filter_map(|i| views::act(c, &st, i)).collect();
        Ok(GetPersonActsResponse { acts })
    }
}
