//! The catalog of public services and pilots: service codes and names, which holders each
//! service has, the pilots that cover them, and the SMS texts of the pilots (the
//! appendices of the seed orders).
//!
//! This is the one place where service codes and pilot ids are spelled.

/// SEZ on an object of high epidemic significance (seed 000).
pub const SEZ_OBJ: &str = "SEZ-OBJ";
/// SEZ on draft normative documentation (seed 000).
pub const SEZ_PROJ: &str = "SEZ-PROJ";
/// SEZ on the conformity of products (seed 000).
pub const SEZ_PRODUCT: &str = "SEZ-PRODUCT";
/// Permit for the start of an activity (seed 000).
pub const SEZ_ACTIVITY: &str = "SEZ-ACTIVITY";
/// Ecological permit, category I objects (seed 001).
pub const ECO_I: &str = "ECO-I";
/// Ecological permit, category II objects (seed 001).
pub const ECO_II: &str = "ECO-II";
/// Inclusion in the register of trusted software (seed 004).
pub const TRUSTED_SW: &str = "TRUSTED-SW";
/// License for medical activity (no pilot).
pub const MED_LIC: &str = "MED-LIC";
/// License for pharmaceutical activity (no pilot).
pub const PHARM_LIC: &str = "PHARM-LIC";

/// The consumers of personal data known to the simulation (KDP consents are generated for
/// them).
pub const CONSUMERS: [&str; 4] = ["sdu", "pep", "expertiza", "sur"];

/// Every KDP scope of the contracts.
pub const SCOPES: [&str; 6] = [
    "gbdfl.person.read",
    "zags.acts.read",
    "elicense.permits.read",
    "elicense.permits.reissue",
    "bmg.phone.read",
    "pep.notify",
];

/// The scopes that only read (what "expertiza" and "sur" may be granted).
pub const READ_SCOPES: [&str; 3] = ["gbdfl.person.read", "zags.acts.read", "elicense.permits.read"];

/// Who may hold a service's permits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holders {
    /// Organizations only.
    Organizations,
    /// Organizations and individuals.
    Both,
}

/// The language of a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Ru,
    Kk,
}

/// A public service under which permits are issued.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// The code ("SEZ-OBJ").
    pub code: &'static str,
    /// The name in Russian.
    pub ru: &'static str,
    /// The name in Kazakh.
    pub kk: &'static str,
    /// Who may hold it.
    pub holders: Holders,
    /// Three letters of the permit number.
    pub letters: &'static str,
    /// Years of validity; 0 for a permit without a term.
    pub valid_years: i32,
    /// The language of the holder's cabinet notifications.
    pub lang: Lang,
}

/// Every service, in a fixed order: a permit stores the index of its service here.
pub const SERVICES: [Service; 9] = [
    Service {
        code: SEZ_OBJ,
        ru: "Санитарно-эпидемиологическое заключение о соответствии объекта высокой эпидемической значимости нормативным правовым актам в сфере санитарно-эпидемиологического благополучия населения",
        kk: "Жоғары эпидемиялық маңызы бар объектінің халықтың санитариялық-эпидемиологиялық саламаттылығы саласындағы нормативтік құқықтық актілерге сәйкестігі туралы санитариялық-эпидемиологиялық қорытынды",
        holders: Holders::Both,
        letters: "SEO",
        valid_years: 0,
        lang: Lang::Ru,
    },
    Service {
        code: SEZ_PROJ,
        ru: "Санитарно-эпидемиологическое заключение о соответствии проектов нормативной документации по предельно допустимым выбросам и сбросам вредных веществ и физических факторов",
        kk: "Зиянды заттар мен физикалық факторлардың шекті рұқсат етілген шығарындылары мен төгінділері бойынша нормативтік құжаттама жобаларының сәйкестігі туралы санитариялық-эпидемиологиялық қорытынды",
        holders: Holders::Both,
        letters: "SEP",
        valid_years: 5,
        lang: Lang::Ru,
    },
    Service {
        code: SEZ_PRODUCT,
        ru: "Санитарно-эпидемиологическое заключение о соответствии продукции",
        kk: "Өнімнің сәйкестігі туралы санитариялық-эпидемиологиялық қорытынды",
        holders: Holders::Both,
        letters: "SER",
        valid_years: 5,
        lang: Lang::Ru,
    },
    Service {
        code: SEZ_ACTIVITY,
        ru: "Разрешение на начало осуществления деятельности в сфере санитарно-эпидемиологического благополучия населения",
        kk: "Халықтың санитариялық-эпидемиологиялық саламаттылығы саласындағы қызметті бастауға рұқсат",
        holders: Holders::Both,
        letters: "SEA",
        valid_years: 0,
        lang: Lang::Ru,
    },
    Service {
        code: ECO_I,
        ru: "Экологическое разрешение на воздействие для объектов I категории",
        kk: "I санаттағы объектілер үшін әсер етуге арналған экологиялық рұқсат",
        holders: Holders::Organizations,
        letters: "ECA",
        valid_years: 10,
        lang: Lang::Ru,
    },
    Service {
        code: ECO_II,
        ru: "Экологическое разрешение на воздействие для объектов II категории",
        kk: "II санаттағы объектілер үшін әсер етуге арналған экологиялық рұқсат",
        holders: Holders::Organizations,
        letters: "ECB",
        valid_years: 10,
        lang: Lang::Ru,
    },
    Service {
        code: TRUSTED_SW,
        ru: "Включение в реестр доверенного программного обеспечения и продукции электронной промышленности",
        kk: "Сенімді бағдарламалық қамтамасыз ету және электрондық өнеркәсіп өнімдерінің тізіліміне енгізу",
        holders: Holders::Organizations,
        letters: "TSW",
        valid_years: 3,
        lang: Lang::Kk,
    },
    Service {
        code: MED_LIC,
        ru: "Лицензия на медицинскую деятельность",
        kk: "Медициналық қызметке лицензия",
        holders: Holders::Both,
        letters: "MED",
        valid_years: 0,
        lang: Lang::Ru,
    },
    Service {
        code: PHARM_LIC,
        ru: "Лицензия на фармацевтическую деятельность",
        kk: "Фармацевтикалық қызметке лицензия",
        holders: Holders::Organizations,
        letters: "PHA",
        valid_years: 0,
        lang: Lang::Ru,
    },
];

/// The index in [`SERVICES`] of a code.
pub fn service_index(code: &str) -> Option<u8> {
    SERVICES.iter().position(|s| s.code == code).map(|i| i as u8)
}

/// The index in [`SERVICES`] of the three letters of a permit number.
pub fn service_by_letters(letters: &str) -> Option<u8> {
    SERVICES.iter().position(|s| s.letters == letters).map(|i| i as u8)
}

/// A pilot of proactive re-issue.
#[derive(Debug, Clone, Copy)]
pub struct Pilot {
    /// The id PEP knows it by ("sez-000").
    pub id: &'static str,
    /// The services it covers.
    pub services: &'static [&'static str],
    /// Whether individuals are covered (000) or organizations only.
    pub individuals: bool,
    /// The language of its SMS.
    pub lang: Lang,
    /// The SMS text of the order's appendix.
    pub sms: &'static str,
}

/// The SMS of the appendix to the algorithm of order 000 (sanitary-epidemiological).
pub const SMS_000: &str = "Уважаемый услугополучатель!\nВы являетесь потенциальным услугополучателем по оказанию процесса переоформления разрешительных документов по государственной услуге в сфере санитарно-эпидемиологического благополучия населения Министерства здравоохранения Республики Казахстан в связи с изменением у организаций, наименования или физических лиц, фамилии, имени, отчества.\nВ случае согласия на изменение у организаций, наименования или физических лиц, фамилии, имени, отчества отправьте цифру 1, в случае отказа цифру 2.\nПо всем вопросам можете обратиться в Единый контакт-центр по бесплатному номеру 1414.";

/// The SMS of appendix 1 to the algorithm of order 001 (ecological permit).
pub const SMS_001: &str = "Уважаемый (ая) гражданин (ка)! В случае изменений наименования услугополучателя в рамках данной государственной услуги для подтверждения Вам необходимо отправить SMS с текстом: 1 согласен(на), 2-не согласен(на). В случае возникновения вопросов можете обратиться в Единый контакт-центр по номеру 1414. Звонок бесплатный.";

/// The SMS of appendix 1 to the algorithm of order 004 (trusted software), in Kazakh.
pub const SMS_004: &str = "Құрметті көрсетілетін қызметті алушы!\nСіз көрсетілетін қызметті алушының атауының өзгеруіне байланысты Қазақстан Республикасы Цифрлық даму, инновациялар және аэроғарыш өнеркәсібі министрлігінің \"Сенімді бағдарламалық қамтамасыз ету тізіліміне (тізілімінен) бағдарламалық қамтамасыз етуді және электронды өнеркәсіп өнімін енгізу (алып тастау)\" мемлекеттік көрсетілетін қызмет бойынша рұқсат беру құжаттарын қайта ресімдеу процесін көрсету жөніндегі әлеуетті көрсетілетін қызметті алушы болып табыласыз.\nКөрсетілетін қызметті алушының атауын өзгертуге келіскен жағдайда 1 санын, келіспеген жағдайда 2 санын жіберіңіз.\nБарлық сұрақтар бойынша 1414 тегін нөмірі бойынша Бірыңғай байланыс орталығына хабарласа аласыз.";

/// The three pilots.
pub const PILOTS: [Pilot; 3] = [
    Pilot {
        id: "sez-000",
        services: &[SEZ_OBJ, SEZ_PROJ, SEZ_PRODUCT, SEZ_ACTIVITY],
        individuals: true,
        lang: Lang::Ru,
        sms: SMS_000,
    },
    Pilot {
        id: "eco-001",
        services: &[ECO_I, ECO_II],
        individuals: false,
        lang: Lang::Ru,
        sms: SMS_001,
    },
    Pilot {
        id: "trusted-sw-004",
        services: &[TRUSTED_SW],
        individuals: false,
        lang: Lang::Kk,
        sms: SMS_004,
    },
];

/// The pilot of an id or alias.
pub fn pilot(id: &str) -> Option<&'static Pilot> {
    PILOTS.iter().find(|p| p.id == id)
}

/// Whether a service (by index) is covered by some pilot.
pub fn is_pilot_service(service: u8) -> bool {
    let code = SERVICES.get(service as usize).map(|s| s.code).unwrap_or("");
    PILOTS.iter().any(|p| p.services.contains(&code))
}

/// Whether a service (by index) is covered by the pilot that covers individuals.
pub fn is_individual_pilot_service(service: u8) -> bool {
    let code = SERVICES.get(service as usize).map(|s| s.code).unwrap_or("");
    PILOTS.iter().any(|p| p.individuals && p.services.contains(&code))
}

/// The SMS of a pilot with its details filled in: the appendix text, then the holder's
/// new name and the permit numbers (the appendices name no placeholders; the details are
/// added after the text, in its language).
pub fn sms_text(pilot: &Pilot, holder_name: &str, permits: &[String]) -> String {
    let mut text = pilot.sms.to_owned();
    let (who, docs) = match pilot.lang {
        Lang::Ru => ("Наименование (ФИО)", "Разрешительные документы"),
        Lang::Kk => ("Атауы", "Рұқсат құжаттары"),
    };
    if !holder_name.is_empty() {
        text.push_str(&format!("\n{who}: {holder_name}."));
    }
    if !permits.is_empty() {
        text.push_str(&format!("\n{docs}: {}.", permits.join(", ")));
    }
    text
}

/// Title and text of the cabinet notification of a re-issue, in `lang`.
pub fn reissue_notification(lang: Lang, old: &str, new: &str, service_name: &str) -> (String, String) {
    match lang {
        Lang::Ru => (
            "Переоформление разрешительного документа".to_owned(),
            format!(
                "Разрешительный документ № {old} ({service_name}) переоформлен в проактивном порядке в связи с изменением наименования (ФИО) владельца. Новый документ № {new}."
            ),
        ),
        Lang::Kk => (
            "Рұқсат құжатын қайта ресімдеу".to_owned(),
            format!(
                "№ {old} рұқсат құжаты ({service_name}) иесінің атауы (ТАӘ) өзгеруіне байланысты проактивті түрде қайта ресімделді. Жаңа құжат № {new}."
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_letters_are_unique_and_pilots_resolve() {
        for (i, s) in SERVICES.iter().enumerate() {
            assert_eq!(service_index(s.code), Some(i as u8));
            assert_eq!(service_by_letters(s.letters), Some(i as u8));
            assert_eq!(s.letters.len(), 3);
        }
        for p in PILOTS {
            assert_eq!(pilot(p.id).map(|x| x.id), Some(p.id));
            for code in p.services {
                let i = service_index(code).unwrap();
                assert!(is_pilot_service(i));
                assert_eq!(is_individual_pilot_service(i), p.individuals);
            }
        }
        assert!(!is_pilot_service(service_index(MED_LIC).unwrap()));
        assert!(pilot("nope").is_none());
    }

    #[test]
    fn sms_texts_ask_for_1_or_2_and_carry_the_details() {
        let t = sms_text(pilot("sez-000").unwrap(), "ТОО \"Нұр\"", &["KZ01SEO00000001".into()]);
        assert!(t.contains("цифру 1") && t.contains("цифру 2") && t.contains("1414"));
        assert!(t.ends_with("Разрешительные документы: KZ01SEO00000001."));
        let t = sms_text(pilot("trusted-sw-004").unwrap(), "", &[]);
        assert!(t.contains("1 санын") && t.contains("2 санын"));
        assert_eq!(t, SMS_004);
    }
}
