//! GBD FL: `PersonRegistry` — persons by IIN, one or a batch.

use std::sync::Arc;

use shep_proto::gbdfl::person_registry_server::PersonRegistry;
use shep_proto::gbdfl::{GetPersonRequest, GetPersonsRequest, Person, PersonError, PersonResult, person_result};
use shep_runtime::status::{not_found, parse_iin};
use tonic::{Request, Response, Status};

use super::common::{Feed, each, feed};
use crate::sim::Simulation;
use crate::views;

/// The GBD FL simulator.
pub struct GbdFl {
    pub sim: Arc<Simulation>,
}

impl GbdFl {
    fn lookup(&self, field: &str, iin: &str) -> Result<Person, Status> {
        let iin = parse_iin(field, iin)?;
        let c = self.sim.country();
        let p = c.person_index(&iin).ok_or_else(|| not_found("person", &iin.to_string()))?;
        let today = self.sim.current_day();
        let st = self.sim.state();
        Ok(views::person(c, &st, p, today))
    }
}

#[tonic::async_trait]
impl PersonRegistry for GbdFl {
    async fn get_person(&self, req: Request<GetPersonRequest>) -> Result<Response<Person>, Status> {
        self.lookup("iin", &req.get_ref().iin).map(Response::new)
    }

    type GetPersonsStream = Feed<PersonResult>;

    async fn get_persons(&self, req: Request<GetPersonsRequest>) -> Result<Response<Self::GetPersonsStream>, Status> {
        let results = each("iins", req.into_inner().iins, |f, iin| self.lookup(f, iin))?
            .into_iter()
            .map(|(iin, r)| {
                let result = match r {
                    Ok(p) => person_result::Result::Person(p),
                    Err(s) => person_result::Result::Error(PersonError { code: s.code() as i32, message: s.message().into() }),
                };
                PersonResult { iin, result: Some(result) }
            })
            .collect();
        Ok(Response::new(feed(results)))
    }
}
