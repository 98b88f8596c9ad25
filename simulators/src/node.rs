//! A simulator node: the registry's service (with the faults applied) and `Scenario`, on
//! the runtime's [`NodeBuilder`].

use std::sync::Arc;

use shep_proto::bmg::mobile_registry_server::MobileRegistryServer;
use shep_proto::elicense::permit_registry_server::PermitRegistryServer;
use shep_proto::gbdfl::person_registry_server::PersonRegistryServer;
use shep_proto::gbdul::organization_registry_server::OrganizationRegistryServer;
use shep_proto::kdp::consent_service_server::ConsentServiceServer;
use shep_proto::pep::portal_server::PortalServer;
use shep_proto::sim::scenario_server::ScenarioServer;
use shep_proto::zags::civil_act_registry_server::CivilActRegistryServer;
use shep_runtime::{NodeBuilder, NodeConfig};

use crate::faults::Faulty;
use crate::registry::Registry;
use crate::services::{bmg, elicense, gbdfl, gbdul, kdp, pep, scenario, zags};
use crate::sim::Simulation;

pub use crate::services::pep::PepLinks;

/// The node of a registry: its contract's service behind the fault layer, and
/// `kz.shep.sim.v1.Scenario`. Every server takes messages up to
/// `cfg.limits.max_message_bytes`. `pep` are PEP's links to BMG and KDP; without them PEP
/// answers `Notify` with UNAVAILABLE. The caller starts the builder.
pub fn node(registry: Registry, sim: Arc<Simulation>, cfg: NodeConfig, pep: Option<PepLinks>) -> NodeBuilder {
    let max = cfg.limits.max_message_bytes;
    let b = NodeBuilder::new(cfg).descriptor_set(shep_proto::FILE_DESCRIPTOR_SET);
    let s = sim.clone();
    let b = match registry {
        Registry::GbdUl => b.add_service(Faulty::new(
            OrganizationRegistryServer::new(gbdul::GbdUl { sim: s })
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            registry,
            sim.clone(),
        )),
        Registry::GbdFl => b.add_service(Faulty::new(
            PersonRegistryServer::new(gbdfl::GbdFl { sim: s })
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            registry,
            sim.clone(),
        )),
        Registry::Zags => b.add_service(Faulty::new(
            CivilActRegistryServer::new(zags::Zags { sim: s })
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            registry,
            sim.clone(),
        )),
        Registry::ELicense => b.add_service(Faulty::new(
            PermitRegistryServer::new(elicense::ELicense { sim: s })
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            registry,
            sim.clone(),
        )),
        Registry::Bmg => b.add_service(Faulty::new(
            MobileRegistryServer::new(bmg::Bmg { sim: s })
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            registry,
            sim.clone(),
        )),
        Registry::Pep => b.add_service(Faulty::new(
            PortalServer::new(pep::Pep { sim: s, links: pep, batches: Default::default() })
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            registry,
            sim.clone(),
        )),
        Registry::Kdp => b.add_service(Faulty::new(
            ConsentServiceServer::new(kdp::Kdp { sim: s })
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            registry,
            sim.clone(),
        )),
    };
    b.add_service(
        ScenarioServer::new(scenario::ScenarioService { registry, sim })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    )
}
