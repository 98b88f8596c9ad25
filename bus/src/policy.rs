//! The policy of each method, read from the contracts' descriptors at start-up.
//!
//! Nothing here is hard-coded per registry: a method's `kz.shep.v1.personal_data` option
//! says which request field holds the data subject and which KDP scope a token must cover;
//! a field's `kz.shep.v1.identifier` option says it holds an IIN or a BIN to check before
//! anything is forwarded. [`PolicyBook`] indexes both once; the checks are pure functions
//! over a decoded [`DynamicMessage`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
};

/// The full name of the method option.
pub const PERSONAL_DATA_OPTION: &str = "kz.shep.v1.personal_data";
/// The full name of the field option.
pub const IDENTIFIER_OPTION: &str = "kz.shep.v1.identifier";

/// What the `personal_data` option of a method declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonalData {
    /// Dotted path of the request field holding the subject ("iin", "holder.iin").
    pub subject_field: String,
    /// The KDP scope a token must cover.
    pub kdp_scope: String,
    /// The field is a list of subjects, each needing its own token.
    pub repeated_subjects: bool,
}

/// The kind of identifier a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Iin,
    Bin,
}

/// One identifier that failed its check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field in the request (`holder.bin`, `iins[2]`).
    pub field: String,
    /// What is wrong, for the person who sent it.
    pub description: String,
    /// The broken rule (`LENGTH`, `DIGITS`, `CHECK_DIGIT`, ...).
    pub rule: &'static str,
}

/// The policy of one method.
#[derive(Debug, Clone)]
pub struct MethodPolicy {
    /// `/package.Service/Method`.
    pub path: String,
    /// The request type.
    pub input: MessageDescriptor,
    /// The response type.
    pub output: MessageDescriptor,
    pub client_streaming: bool,
    pub server_streaming: bool,
    /// Present when the method touches a person's data.
    pub personal_data: Option<PersonalData>,
    /// True when the request must be decoded: it has a subject or identifier fields.
    pub inspect: bool,
}

/// Every method of the routed services, with its policy, and the identifier fields of every
/// message type.
#[derive(Debug, Clone)]
pub struct PolicyBook {
    pool: DescriptorPool,
    methods: HashMap<String, Arc<MethodPolicy>>,
    ids: Arc<IdIndex>,
}

/// Identifier fields by full field name, and which message types can reach one.
#[derive(Debug, Default)]
pub struct IdIndex {
    fields: HashMap<String, IdKind>,
    reaches: HashSet<String>,
}

impl IdIndex {
    fn build(pool: &DescriptorPool) -> IdIndex {
        let mut idx = IdIndex::default();
        let Some(ext) = pool.get_extension_by_name(IDENTIFIER_OPTION) else {
            return idx;
        };
        for m in pool.all_messages() {
            for f in m.fields() {
                let opts = f.options();
                if opts.has_extension(&ext)
                    && let Value::EnumNumber(n) = opts.get_extension(&ext).as_ref()
                {
                    let kind = match n {
                        1 => IdKind::Iin,
                        2 => IdKind::Bin,
                        _ => continue,
                    };
                    idx.fields.insert(f.full_name().to_owned(), kind);
                }
            }
        }
        // A message type reaches an identifier when one of its fields is one, or is a message
        // (or map value) that reaches one. Iterate to a fixed point (recursive types).
        loop {
            let mut changed = false;
            for m in pool.all_messages() {
                if idx.reaches.contains(m.full_name()) {
                    continue;
                }
                let hit = m.fields().any(|f| {
                    idx.fields.contains_key(f.full_name())
                        || match f.kind() {
                            Kind::Message(sub) => idx.reaches.contains(sub.full_name()),
                            _ => false,
                        }
                });
                if hit {
                    idx.reaches.insert(m.full_name().to_owned());
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        idx
    }

    /// The identifier kind of a field, if marked.
    pub fn kind(&self, field: &FieldDescriptor) -> Option<IdKind> {
        self.fields.get(field.full_name()).copied()
    }

    /// Whether a message of this type can hold an identifier.
    pub fn reaches(&self, message: &MessageDescriptor) -> bool {
        self.reaches.contains(message.full_name())
    }
}

impl PolicyBook {
    /// Indexes the methods of `services` in `pool`. Fails when a service is not in the pool,
    /// or a `personal_data` option names a subject field that is not a string (a list of
    /// strings with `repeated_subjects`).
    pub fn new(pool: DescriptorPool, services: &[String]) -> Result<PolicyBook, String> {
        let ids = IdIndex::build(&pool);
        let pd_ext = pool.get_extension_by_name(PERSONAL_DATA_OPTION);
        let mut methods = HashMap::new();
        for name in services {
            let svc = pool.get_service_by_name(name).ok_or_else(|| {
                format!("service {name} is routed but no descriptor set describes it")
            })?;
            for m in svc.methods() {
                let path = format!("/{}/{}", svc.full_name(), m.name());
                let personal_data = match &pd_ext {
                    Some(ext) if m.options().has_extension(ext) => {
                        let opts = m.options();
                        let v = opts.get_extension(ext);
                        let Value::Message(pd) = v.as_ref() else {
                            continue;
                        };
                        let get_s = |n: &str| {
                            pd.get_field_by_name(n)
                                .and_then(|v| v.as_str().map(str::to_owned))
                                .unwrap_or_default()
                        };
                        let pd = PersonalData {
                            subject_field: get_s("subject_field"),
                            kdp_scope: get_s("kdp_scope"),
                            repeated_subjects: pd
                                .get_field_by_name("repeated_subjects")
                                .and_then(|v| v.as_bool())
                                .unwrap_or(false),
                        };
                        check_subject_path(&m.input(), &pd).map_err(|e| format!("{path}: {e}"))?;
                        Some(pd)
                    }
                    _ => None,
                };
                let inspect = personal_data.is_some() || ids.reaches(&m.input());
                methods.insert(
                    path.clone(),
                    Arc::new(MethodPolicy {
                        path,
                        input: m.input(),
                        output: m.output(),
                        client_streaming: m.is_client_streaming(),
                        server_streaming: m.is_server_streaming(),
                        personal_data,
                        inspect,
                    }),
                );
            }
        }
        Ok(PolicyBook {
            pool,
            methods,
            ids: Arc::new(ids),
        })
    }

    /// The policy of `/service/method`, if the method exists on a routed service.
    pub fn method(&self, path: &str) -> Option<Arc<MethodPolicy>> {
        self.methods.get(path).cloned()
    }

    /// The identifier index.
    pub fn ids(&self) -> &Arc<IdIndex> {
        &self.ids
    }

    /// The descriptor pool.
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }
}

fn check_subject_path(input: &MessageDescriptor, pd: &PersonalData) -> Result<(), String> {
    let mut msg = input.clone();
    let parts: Vec<&str> = pd.subject_field.split('.').collect();
    // Whether the path crosses a list (a repeated message on the way, or a repeated string
    // at its end): then it names several subjects.
    let mut many = false;
    for (i, part) in parts.iter().enumerate() {
        let f = msg.get_field_by_name(part).ok_or_else(|| {
            format!(
                "subject_field {:?}: {} has no field {part}",
                pd.subject_field,
                msg.full_name()
            )
        })?;
        let last = i + 1 == parts.len();
        many |= f.is_list();
        match (last, f.kind()) {
            (false, Kind::Message(sub)) if !f.is_map() => msg = sub,
            (true, Kind::String) if many == pd.repeated_subjects => return Ok(()),
            _ => {
                return Err(format!(
                    "subject_field {:?} must lead through messages to a string field, and \
                     cross a repeated field exactly when repeated_subjects is set (it is {})",
                    pd.subject_field, pd.repeated_subjects
                ));
            }
        }
    }
    Err(format!("subject_field {:?} is empty", pd.subject_field))
}

/// The subjects a request names: the value(s) of the subject field, empty ones left out.
/// An unset message on the way (a holder given by BIN, not IIN) gives none: the call then
/// touches no person and needs no consent.
pub fn subjects(msg: &DynamicMessage, pd: &PersonalData) -> Vec<String> {
    let parts: Vec<&str> = pd.subject_field.split('.').collect();
    let mut out = Vec::new();
    collect_subjects(msg, &parts, &mut out);
    out
}

/// The non-empty strings at `path` under `msg`, through repeated messages (each item in
/// order) as through singular ones.
fn collect_subjects(msg: &DynamicMessage, path: &[&str], out: &mut Vec<String>) {
    let Some((part, rest)) = path.split_first() else {
        return;
    };
    let Some(f) = msg.descriptor().get_field_by_name(part) else {
        return;
    };
    if !msg.has_field(&f) {
        return;
    }
    let v = msg.get_field(&f);
    let one = |v: &Value, out: &mut Vec<String>| match v {
        Value::String(s) if rest.is_empty() && !s.is_empty() => out.push(s.clone()),
        Value::Message(m) if !rest.is_empty() => collect_subjects(m, rest, out),
        _ => {}
    };
    match v.as_ref() {
        Value::List(items) => items.iter().for_each(|it| one(it, out)),
        other => one(other, out),
    }
}

/// Checks every identifier field set in the message (recursively): 12 digits, and the
/// check digit and structure of an IIN or a BIN. Empty strings are not checked (whether a
/// field is required is the registry's business). Returns the first violation.
pub fn check_identifiers(msg: &DynamicMessage, ids: &IdIndex) -> Result<(), FieldViolation> {
    if !ids.reaches(&msg.descriptor()) {
        return Ok(());
    }
    walk(msg, ids, "")
}

fn walk(msg: &DynamicMessage, ids: &IdIndex, prefix: &str) -> Result<(), FieldViolation> {
    for (f, v) in msg.fields() {
        let name = if prefix.is_empty() {
            f.name().to_owned()
        } else {
            format!("{prefix}.{}", f.name())
        };
        if let Some(kind) = ids.kind(&f) {
            match v {
                Value::String(s) => check_one(kind, &name, s)?,
                Value::List(items) => {
                    for (i, it) in items.iter().enumerate() {
                        if let Some(s) = it.as_str() {
                            check_one(kind, &format!("{name}[{i}]"), s)?;
                        }
                    }
                }
                _ => {}
            }
            continue;
        }
        match v {
            Value::Message(m) => walk(m, ids, &name)?,
            Value::List(items) => {
                for (i, it) in items.iter().enumerate() {
                    if let Value::Message(m) = it {
                        walk(m, ids, &format!("{name}[{i}]"))?;
                    }
                }
            }
            Value::Map(entries) => {
                for (k, it) in entries {
                    if let Value::Message(m) = it {
                        walk(m, ids, &format!("{name}[{k:?}]"))?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_one(kind: IdKind, field: &str, value: &str) -> Result<(), FieldViolation> {
    if value.is_empty() {
        return Ok(());
    }
    let r = match kind {
        IdKind::Iin => shep_domain::Iin::parse(value)
            .map(|_| ())
            .map_err(|e| ("IIN", e)),
        IdKind::Bin => shep_domain::Bin::parse(value)
            .map(|_| ())
            .map_err(|e| ("BIN", e)),
    };
    r.map_err(|(what, e)| FieldViolation {
        field: field.to_owned(),
        description: format!("not a valid {what}: {e}"),
        rule: e.violation(),
    })
}

/// True when some method of the pool carries the `personal_data` option.
pub fn has_policy_options(pool: &DescriptorPool) -> bool {
    let Some(ext) = pool.get_extension_by_name(PERSONAL_DATA_OPTION) else {
        return false;
    };
    pool.services()
        .any(|s| s.methods().any(|m| m.options().has_extension(&ext)))
}

/// The descriptor pool of the built-in contracts plus extra encoded descriptor sets.
pub fn pool(extra: &[Vec<u8>]) -> Result<DescriptorPool, String> {
    let mut pool = DescriptorPool::decode(shep_proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| format!("built-in descriptor set: {e}"))?;
    for (i, bytes) in extra.iter().enumerate() {
        pool.decode_file_descriptor_set(bytes.as_slice())
            .map_err(|e| format!("descriptor set #{}: {e}", i + 1))?;
    }
    if !has_policy_options(&pool) {
        return Err("the descriptor sets carry no kz.shep.v1.personal_data option: the bus cannot enforce consent".into());
    }
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn book() -> PolicyBook {
        let s = crate::config::BusSettings::default_topology("127.0.0.1", &Default::default());
        let routes = crate::routing::RouteTable::from_settings(&s);
        PolicyBook::new(pool(&[]).unwrap(), &routes.services()).unwrap()
    }

    fn decode<M: Message>(book: &PolicyBook, path: &str, m: &M) -> DynamicMessage {
        let p = book.method(path).unwrap();
        DynamicMessage::decode(p.input.clone(), m.encode_to_vec().as_slice()).unwrap()
    }

    const IIN: &str = "900515300018"; // 15 May 1990, male, serial 1

    #[test]
    fn valid_sample_iin() {
        shep_domain::Iin::parse(IIN).unwrap();
    }

    #[test]
    fn reads_the_options_of_the_contracts() {
        let b = book();
        let p = b
            .method("/kz.gov.gbdfl.v1.PersonRegistry/GetPerson")
            .unwrap();
        let pd = p.personal_data.as_ref().unwrap();
        assert_eq!(
            (
                pd.subject_field.as_str(),
                pd.kdp_scope.as_str(),
                pd.repeated_subjects
            ),
            ("iin", "gbdfl.person.read", false)
        );
        assert!(p.inspect && !p.server_streaming && !p.client_streaming);
        let p = b
            .method("/kz.gov.gbdfl.v1.PersonRegistry/GetPersons")
            .unwrap();
        assert!(p.personal_data.as_ref().unwrap().repeated_subjects && p.server_streaming);
        let p = b
            .method("/kz.gov.elicense.v1.PermitRegistry/ListPermits")
            .unwrap();
        assert_eq!(
            p.personal_data.as_ref().unwrap().subject_field,
            "holder.iin"
        );
        // No personal data, but a BIN to check.
        let p = b
            .method("/kz.gov.gbdul.v1.OrganizationRegistry/GetOrganization")
            .unwrap();
        assert!(p.personal_data.is_none() && p.inspect);
        // Neither: forwarded without decoding.
        let p = b
            .method("/kz.gov.kdp.v1.ConsentService/GetPublicKey")
            .unwrap();
        assert!(!p.inspect);
        assert!(b.method("/kz.gov.gbdfl.v1.PersonRegistry/Nope").is_none());
    }

    #[test]
    fn subjects_follow_the_dotted_path() {
        use shep_proto::elicense::{Holder, ListPermitsRequest, holder};
        let b = book();
        let path = "/kz.gov.elicense.v1.PermitRegistry/ListPermits";
        let pd = b.method(path).unwrap().personal_data.clone().unwrap();
        let by_iin = ListPermitsRequest {
            holder: Some(Holder {
                id: Some(holder::Id::Iin(IIN.into())),
            }),
            ..Default::default()
        };
        assert_eq!(
            subjects(&decode(&b, path, &by_iin), &pd),
            vec![IIN.to_owned()]
        );
        let by_bin = ListPermitsRequest {
            holder: Some(Holder {
                id: Some(holder::Id::Bin("x".into())),
            }),
            ..Default::default()
        };
        assert!(subjects(&decode(&b, path, &by_bin), &pd).is_empty());
        assert!(subjects(&decode(&b, path, &ListPermitsRequest::default()), &pd).is_empty());

        let path = "/kz.gov.gbdfl.v1.PersonRegistry/GetPersons";
        let pd = b.method(path).unwrap().personal_data.clone().unwrap();
        let req = shep_proto::gbdfl::GetPersonsRequest {
            iins: vec![IIN.into(), "".into(), "x".into()],
        };
        assert_eq!(
            subjects(&decode(&b, path, &req), &pd),
            vec![IIN.to_owned(), "x".to_owned()]
        );
    }

    #[test]
    fn subjects_are_read_through_repeated_messages() {
        use shep_proto::pep::{NotifyManyRequest, NotifyRequest};
        let b = book();
        let path = "/kz.gov.pep.v1.Portal/NotifyMany";
        let pd = b.method(path).unwrap().personal_data.clone().unwrap();
        assert!(pd.repeated_subjects);
        let item = |iin: &str| NotifyRequest {
            case_id: "c".into(),
            attempt: 1,
            iin: iin.into(),
            ..Default::default()
        };
        let req = NotifyManyRequest {
            items: vec![item(IIN), item(""), item("x"), item(IIN)],
        };
        assert_eq!(
            subjects(&decode(&b, path, &req), &pd),
            vec![IIN.to_owned(), "x".to_owned(), IIN.to_owned()]
        );
        let bad = NotifyManyRequest {
            items: vec![item(IIN), item("900515300019")],
        };
        let v = check_identifiers(&decode(&b, path, &bad), b.ids()).unwrap_err();
        assert_eq!((v.field.as_str(), v.rule), ("items[1].iin", "CHECK_DIGIT"));
    }

    #[test]
    fn a_subject_path_must_say_whether_it_names_several() {
        let pool = pool(&[]).unwrap();
        let input = pool.get_message_by_name("kz.gov.pep.v1.NotifyManyRequest").unwrap();
        let pd = |field: &str, repeated: bool| PersonalData {
            subject_field: field.into(),
            kdp_scope: "pep.notify".into(),
            repeated_subjects: repeated,
        };
        check_subject_path(&input, &pd("items.iin", true)).unwrap();
        assert!(check_subject_path(&input, &pd("items.iin", false)).is_err());
        assert!(check_subject_path(&input, &pd("items.attempt", true)).is_err());
        assert!(check_subject_path(&input, &pd("items.nope", true)).is_err());
        let single = pool.get_message_by_name("kz.gov.pep.v1.NotifyRequest").unwrap();
        check_subject_path(&single, &pd("iin", false)).unwrap();
        assert!(check_subject_path(&single, &pd("iin", true)).is_err());
    }

    #[test]
    fn identifiers_are_checked_with_their_path() {
        let b = book();
        let path = "/kz.gov.gbdfl.v1.PersonRegistry/GetPersons";
        let ok = shep_proto::gbdfl::GetPersonsRequest {
            iins: vec![IIN.into()],
        };
        check_identifiers(&decode(&b, path, &ok), b.ids()).unwrap();
        let bad = shep_proto::gbdfl::GetPersonsRequest {
            iins: vec![IIN.into(), "900515300019".into()],
        };
        let v = check_identifiers(&decode(&b, path, &bad), b.ids()).unwrap_err();
        assert_eq!(v.field, "iins[1]");
        assert_eq!(v.rule, "CHECK_DIGIT");
        let short = shep_proto::gbdfl::GetPersonRequest { iin: "123".into() };
        let v = check_identifiers(
            &decode(&b, "/kz.gov.gbdfl.v1.PersonRegistry/GetPerson", &short),
            b.ids(),
        )
        .unwrap_err();
        assert_eq!((v.field.as_str(), v.rule), ("iin", "LENGTH"));

        use shep_proto::elicense::{Holder, ListPermitsRequest, holder};
        let path = "/kz.gov.elicense.v1.PermitRegistry/ListPermits";
        let bad_bin = ListPermitsRequest {
            holder: Some(Holder {
                id: Some(holder::Id::Bin("12345678901a".into())),
            }),
            ..Default::default()
        };
        let v = check_identifiers(&decode(&b, path, &bad_bin), b.ids()).unwrap_err();
        assert_eq!((v.field.as_str(), v.rule), ("holder.bin", "DIGITS"));
        // Empty identifiers are the registry's business.
        check_identifiers(&decode(&b, path, &ListPermitsRequest::default()), b.ids()).unwrap();
    }

    #[test]
    fn every_bin_of_the_batched_permit_look_up_is_checked() {
        use shep_proto::elicense::ListPermitsByBinsRequest;
        let b = book();
        let path = "/kz.gov.elicense.v1.PermitRegistry/ListPermitsByBins";
        let p = b.method(path).unwrap();
        // Organizations are no personal data: no consent, but the BINs are inspected.
        assert!(p.personal_data.is_none() && p.inspect && !p.server_streaming);
        let bin = (1..100)
            .find_map(|serial| shep_domain::Bin::from_parts(2005, 3, 4, 0, serial))
            .unwrap()
            .to_string();
        let last = bin.as_bytes()[11] - b'0';
        let wrong_check = format!("{}{}", &bin[..11], (last + 1) % 10);
        let ok = ListPermitsByBinsRequest {
            bins: vec![bin.clone(); 3],
            service_codes: vec!["SEZ-OBJ".into()],
        };
        check_identifiers(&decode(&b, path, &ok), b.ids()).unwrap();
        for (i, bad, rule) in [
            (0, bin[..11].to_owned(), "LENGTH"),
            (2, format!("{}x", &bin[..11]), "DIGITS"),
            (1, wrong_check, "CHECK_DIGIT"),
        ] {
            let mut req = ok.clone();
            req.bins[i] = bad;
            let v = check_identifiers(&decode(&b, path, &req), b.ids()).unwrap_err();
            assert_eq!((v.field.as_str(), v.rule), (format!("bins[{i}]").as_str(), rule));
        }
        // An IIN is no BIN.
        let req = ListPermitsByBinsRequest {
            bins: vec![bin, IIN.into()],
            ..Default::default()
        };
        let v = check_identifiers(&decode(&b, path, &req), b.ids()).unwrap_err();
        assert_eq!(v.field, "bins[1]");
    }

    #[test]
    fn a_bad_subject_path_is_refused_at_start() {
        let b = book();
        let input = b
            .method("/kz.gov.gbdfl.v1.PersonRegistry/GetPerson")
            .unwrap()
            .input
            .clone();
        let pd = |f: &str, rep: bool| PersonalData {
            subject_field: f.into(),
            kdp_scope: "s".into(),
            repeated_subjects: rep,
        };
        assert!(check_subject_path(&input, &pd("iin", false)).is_ok());
        assert!(check_subject_path(&input, &pd("iin", true)).is_err());
        assert!(check_subject_path(&input, &pd("nope", false)).is_err());
        assert!(check_subject_path(&input, &pd("iin.x", false)).is_err());
    }
}
