//! The contracts of every shep node, generated from the `.proto` files beside this crate.
//!
//! The `.proto` files are the single source of truth; this crate only compiles them. The
//! short aliases ([`gbdfl`], [`gbdul`], ...) name the versioned packages; other crates
//! convert these prost types to domain types at their edges.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// Generated code, in the package tree of the contracts.
pub mod kz {
    pub mod shep {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/kz.shep.v1.rs"));
        }
        pub mod sim {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/kz.shep.sim.v1.rs"));
            }
        }
    }
    pub mod gov {
        pub mod gbdul {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/kz.gov.gbdul.v1.rs"));
            }
        }
        pub mod gbdfl {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/kz.gov.gbdfl.v1.rs"));
            }
        }
        pub mod zags {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/kz.gov.zags.v1.rs"));
            }
        }
        pub mod elicense {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/kz.gov.elicense.v1.rs"));
            }
        }
        pub mod bmg {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/kz.gov.bmg.v1.rs"));
            }
        }
        pub mod pep {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/kz.gov.pep.v1.rs"));
            }
        }
        pub mod kdp {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/kz.gov.kdp.v1.rs"));
            }
        }
        pub mod sdu {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/kz.gov.sdu.v1.rs"));
            }
        }
    }
}

pub use kz::gov::bmg::v1 as bmg;
pub use kz::gov::elicense::v1 as elicense;
pub use kz::gov::gbdfl::v1 as gbdfl;
pub use kz::gov::gbdul::v1 as gbdul;
pub use kz::gov::kdp::v1 as kdp;
pub use kz::gov::pep::v1 as pep;
pub use kz::gov::sdu::v1 as sdu;
pub use kz::gov::zags::v1 as zags;
pub use kz::shep::sim::v1 as sim;
pub use kz::shep::v1 as shep;

/// The encoded `FileDescriptorSet` of every contract, with source comments, for server
/// reflection and for reading the custom options (`kz.shep.v1.personal_data`, `identifier`).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/shep_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_holds_every_service_with_comments() {
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let services: Vec<String> = fds
            .file
            .iter()
            .flat_map(|f| f.service.iter().map(move |s| format!("{}.{}", f.package(), s.name())))
            .collect();
        for s in [
            "kz.gov.gbdul.v1.OrganizationRegistry",
            "kz.gov.gbdfl.v1.PersonRegistry",
            "kz.gov.zags.v1.CivilActRegistry",
            "kz.gov.elicense.v1.PermitRegistry",
            "kz.gov.bmg.v1.MobileRegistry",
            "kz.gov.pep.v1.Portal",
            "kz.gov.kdp.v1.ConsentService",
            "kz.gov.sdu.v1.ProactiveService",
            "kz.shep.v1.SyncChannel",
            "kz.shep.v1.BusAdmin",
            "kz.shep.sim.v1.Scenario",
        ] {
            assert!(services.contains(&s.to_owned()), "{s} missing from {services:?}");
        }
        // Comments survive into the descriptor set, so `grpcurl describe` shows them.
        let gbdfl = fds.file.iter().find(|f| f.package() == "kz.gov.gbdfl.v1").unwrap();
        let sci = gbdfl.source_code_info.as_ref().expect("source info");
        assert!(sci.location.iter().any(|l| !l.leading_comments().is_empty()));
    }

    #[test]
    fn descriptor_set_keeps_the_custom_options() {
        // prost_types drops unknown extensions; the raw bytes must still carry the
        // `personal_data` option (field 51001) on GetPerson's MethodOptions. Look for the
        // option's key bytes: field 51001, wire type 2 → varint 0xCA 0xF3 0x18.
        let key = [0xCA, 0xF3, 0x18];
        assert!(
            super::FILE_DESCRIPTOR_SET.windows(3).any(|w| w == key),
            "the personal_data option is missing from FILE_DESCRIPTOR_SET"
        );
    }

    #[test]
    fn every_enum_starts_with_unspecified() {
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        fn check(e: &prost_types::EnumDescriptorProto) {
            let first = &e.value[0];
            assert_eq!(first.number(), 0);
            assert!(first.name().ends_with("_UNSPECIFIED"), "{}: {}", e.name(), first.name());
        }
        fn walk(m: &prost_types::DescriptorProto) {
            m.enum_type.iter().for_each(check);
            m.nested_type.iter().for_each(walk);
        }
        for f in fds.file.iter().filter(|f| f.package().starts_with("kz.")) {
            f.enum_type.iter().for_each(check);
            f.message_type.iter().for_each(walk);
        }
    }
}
