//! BMG: `MobileRegistry` — the phone a person registered for e-government SMS.

use std::sync::Arc;

use shep_proto::bmg::mobile_registry_server::MobileRegistry;
use shep_proto::bmg::{GetMobileNumberRequest, GetMobileNumberResponse};
use shep_runtime::status::parse_iin;
use tonic::{Request, Response, Status};

use crate::sim::Simulation;
use crate::time::ts;

/// The BMG simulator.
pub struct Bmg {
    pub sim: Arc<Simulation>,
}

#[tonic::async_trait]
impl MobileRegistry for Bmg {
    async fn get_mobile_number(
        &self,
        req: Request<GetMobileNumberRequest>,
    ) -> Result<Response<GetMobileNumberResponse>, Status> {
        let iin = parse_iin("iin", &req.get_ref().iin)?;
        let c = self.sim.country();
        let phone = c.person_index(&iin).and_then(|p| self.sim.state().people.phone(c, p));
        Ok(Response::new(match phone {
            Some(ph) => GetMobileNumberResponse {
                registered: true,
                phone: ph.number,
                registered_at: Some(ts(ph.registered_at)),
            },
            None => GetMobileNumberResponse { registered: false, phone: String::new(), registered_at: None },
        }))
    }
}
