//! BMG: `MobileRegistry` — the phone a person registered for e-government SMS.

use std::sync::Arc;

use shep_proto::bmg::mobile_registry_server::MobileRegistry;
use shep_proto::bmg::{
    GetMobileNumberRequest, GetMobileNumberResponse, GetMobileNumbersRequest, GetMobileNumbersResponse,
    MobileNumberError, MobileNumberResult, mobile_number_result,
};
use shep_runtime::status::parse_iin;
use tonic::{Request, Response, Status};

use super::common::each;
use crate::sim::Simulation;
use crate::time::ts;

/// The BMG simulator.
pub struct Bmg {
    pub sim: Arc<Simulation>,
}

impl Bmg {
    /// The number of the person `iin` (the request field `field`).
    fn number(&self, field: &str, iin: &str) -> Result<GetMobileNumberResponse, Status> {
        let iin = parse_iin(field, iin)?;
        let c = self.sim.country();
        let phone = c.person_index(&iin).and_then(|p| self.sim.state().people.phone(c, p));
        Ok(match phone {
            Some(ph) => GetMobileNumberResponse {
                registered: true,
                phone: ph.number,
                registered_at: Some(ts(ph.registered_at)),
            },
            None => GetMobileNumberResponse { registered: false, phone: String::new(), registered_at: None },
        })
    }
}

#[tonic::async_trait]
impl MobileRegistry for Bmg {
    async fn get_mobile_number(
        &self,
        req: Request<GetMobileNumberRequest>,
    ) -> Result<Response<GetMobileNumberResponse>, Status> {
        self.number("iin", &req.get_ref().iin).map(Response::new)
    }

    async fn get_mobile_numbers(
        &self,
        req: Request<GetMobileNumbersRequest>,
    ) -> Result<Response<GetMobileNumbersResponse>, Status> {
        let results = each("iins", req.into_inner().iins, |f, iin| self.number(f, iin))?
            .into_iter()
            .map(|(iin, r)| {
                let result = match r {
                    Ok(n) => mobile_number_result::Result::Number(n),
                    Err(s) => mobile_number_result::Result::Error(MobileNumberError {
                        code: s.code() as i32,
                        message: s.message().into(),
                    }),
                };
                MobileNumberResult { iin, result: Some(result) }
            })
            .collect();
        Ok(Response::new(GetMobileNumbersResponse { results }))
    }
}
