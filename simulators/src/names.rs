//! Name tables and the rules of their gender forms.
//!
//! A person's name is a [`NameRef`]: indexes into the tables below (8 bytes), rendered to
//! text only when served. Surnames are stored in their male form; the female form follows
//! the Russian rules (-ов/-ова, -ев/-ева, -ин/-ина, -ский/-ская, invariable otherwise).
//! Patronymics are formed from the father's given name, Russian style (-ович/-овна,
//! -евич/-евна) or Kazakh style (-ұлы/-қызы).

use shep_domain::Sex;

/// Kazakh surnames (male form). Indexes `0..KAZAKH_SURNAMES` of [`SURNAMES`].
const KZ_SURNAMES: &[&str] = &[
    "Ахметов",
    "Жұмабаев",
    "Қасымов",
    "Омаров",
    "Серікбаев",
    "Бекмұханбетов",
    "Төлеуов",
    "Әбдірахманов",
    "Исабеков",
    "Мұхамеджанов",
    "Есенов",
    "Тұрсынов",
    "Байжанов",
    "Сәрсенбаев",
    "Оспанов",
    "Ибраимов",
    "Қуанышев",
    "Ержанов",
    "Нұрланов",
    "Сейтқалиев",
    "Абдуллаев",
    "Әлиев",
    "Байтұрсынов",
    "Жақыпов",
    "Ермеков",
    "Құдайбергенов",
    "Мамыров",
    "Нұрпейісов",
    "Рахимов",
    "Сұлтанов",
    "Тоқтаров",
    "Шәкенов",
    "Ысқақов",
    "Әуезов",
    "Бөкейханов",
    "Дүйсенов",
    "Жанұзақов",
    "Кенжебаев",
    "Мұратов",
    "Оразов",
    "Сағынтаев",
    "Темірханов",
    "Уәлиханов",
    "Хамитов",
    "Шаймерденов",
    "Айтбаев",
    "Бақытов",
    "Дәулетов",
    "Есімов",
    "Жолдасбеков",
    "Ізбасаров",
    "Қалиев",
    "Маханов",
    "Нұрмағамбетов",
    "Рысқұлов",
    "Сәтбаев",
    "Тәжібаев",
    "Үсенов",
    "Шынтемиров",
    "Абишев",
    "Болатов",
    "Ғабитов",
    "Ерғалиев",
    "Жетпісбаев",
    "Кемелов",
    "Мақсұтов",
    "Молдабеков",
    "Нұрғалиев",
    "Сапаров",
    "Тілеубердиев",
    "Шалабаев",
    "Бисенов",
];

/// Russian (and other) surnames (male form).
const RU_SURNAMES: &[&str] = &[
    "Иванов",
    "Смирнов",
    "Кузнецов",
    "Попов",
    "Васильев",
    "Петров",
    "Соколов",
    "Михайлов",
    "Новиков",
    "Фёдоров",
    "Морозов",
    "Волков",
    "Алексеев",
    "Лебедев",
    "Семёнов",
    "Егоров",
    "Павлов",
    "Козлов",
    "Степанов",
    "Николаев",
    "Орлов",
    "Андреев",
    "Макаров",
    "Никитин",
    "Захаров",
    "Зайцев",
    "Соловьёв",
    "Борисов",
    "Яковлев",
    "Григорьев",
    "Романов",
    "Воробьёв",
    "Сергеев",
    "Кузьмин",
    "Фролов",
    "Дмитриев",
    "Королёв",
    "Гусев",
    "Киселёв",
    "Ильин",
    "Максимов",
    "Поляков",
    "Сорокин",
    "Виноградов",
    "Ковалёв",
    "Белов",
    "Медведев",
    "Антонов",
    "Тарасов",
    "Жуков",
    "Баранов",
    "Филиппов",
    "Комаров",
    "Давыдов",
    "Беляев",
    "Герасимов",
    "Богданов",
    "Осипов",
    "Сидоров",
    "Матвеев",
    "Титов",
    "Марков",
    "Миронов",
    "Крылов",
    "Куликов",
    "Карпов",
    "Власов",
    "Мельников",
    "Денисов",
    "Гаврилов",
    "Тихонов",
    "Казаков",
    "Островский",
    "Вишневский",
    "Покровский",
    "Шевченко",
    "Бондаренко",
    "Ким",
    "Цой",
    "Пак",
    "Гребенюк",
];

/// Kazakh male given names.
const KZ_MALE: &[&str] = &[
    "Айбек",
    "Нұрлан",
    "Ерлан",
    "Серік",
    "Асқар",
    "Бауыржан",
    "Дәурен",
    "Ержан",
    "Қайрат",
    "Марат",
    "Нұрсұлтан",
    "Олжас",
    "Талғат",
    "Темірлан",
    "Жандос",
    "Ербол",
    "Асылбек",
    "Бекзат",
    "Дидар",
    "Мұрат",
    "Ғалым",
    "Әлихан",
    "Ақжол",
    "Берік",
    "Дархан",
    "Жомарт",
    "Қанат",
    "Мейірхан",
    "Нұржан",
    "Самат",
    "Ұлан",
    "Айдос",
    "Арман",
    "Әділет",
    "Бақытжан",
    "Ерасыл",
    "Жасұлан",
    "Санжар",
    "Азамат",
    "Болат",
    "Ғани",
    "Дамир",
    "Ермек",
    "Жанат",
    "Қуаныш",
    "Мақсат",
    "Нұрбол",
    "Рахат",
    "Сағат",
    "Тимур",
];

/// Russian male given names with their patronymics (male, female).
const RU_MALE: &[(&str, &str, &str)] = &[
    ("Александр", "Александрович", "Александровна"),
    ("Алексей", "Алексеевич", "Алексеевна"),
    ("Андрей", "Андреевич", "Андреевна"),
    ("Антон", "Антонович", "Антоновна"),
    ("Артём", "Артёмович", "Артёмовна"),
    ("Борис", "Борисович", "Борисовна"),
    ("Вадим", "Вадимович", "Вадимовна"),
    ("Валерий", "Валерьевич", "Валерьевна"),
    ("Василий", "Васильевич", "Васильевна"),
    ("Виктор", "Викторович", "Викторовна"),
    ("Виталий", "Витальевич", "Витальевна"),
    ("Владимир", "Владимирович", "Владимировна"),
    ("Вячеслав", "Вячеславович", "Вячеславовна"),
    ("Геннадий", "Геннадьевич", "Геннадьевна"),
    ("Георгий", "Георгиевич", "Георгиевна"),
    ("Григорий", "Григорьевич", "Григорьевна"),
    ("Денис", "Денисович", "Денисовна"),
    ("Дмитрий", "Дмитриевич", "Дмитриевна"),
    ("Евгений", "Евгеньевич", "Евгеньевна"),
    ("Егор", "Егорович", "Егоровна"),
    ("Иван", "Иванович", "Ивановна"),
    ("Игорь", "Игоревич", "Игоревна"),
    ("Илья", "Ильич", "Ильинична"),
    ("Кирилл", "Кириллович", "Кирилловна"),
    ("Константин", "Константинович", "Константиновна"),
    ("Максим", "Максимович", "Максимовна"),
    ("Михаил", "Михайлович", "Михайловна"),
    ("Никита", "Никитич", "Никитична"),
    ("Николай", "Николаевич", "Николаевна"),
    ("Олег", "Олегович", "Олеговна"),
    ("Павел", "Павлович", "Павловна"),
    ("Пётр", "Петрович", "Петровна"),
    ("Роман", "Романович", "Романовна"),
    ("Сергей", "Сергеевич", "Сергеевна"),
    ("Станислав", "Станиславович", "Станиславовна"),
    ("Юрий", "Юрьевич", "Юрьевна"),
    ("Фёдор", "Фёдорович", "Фёдоровна"),
    ("Анатолий", "Анатольевич", "Анатольевна"),
];

/// Kazakh female given names.
const KZ_FEMALE: &[&str] = &[
    "Айгүл",
    "Гүлнар",
    "Әсел",
    "Жанар",
    "Динара",
    "Айгерім",
    "Ақмарал",
    "Балжан",
    "Гүлмира",
    "Жібек",
    "Зарина",
    "Қарлығаш",
    "Ләззат",
    "Мәдина",
    "Нұргүл",
    "Перизат",
    "Сәуле",
    "Толқын",
    "Ұлжан",
    "Шынар",
    "Айдана",
    "Аружан",
    "Айжан",
    "Меруерт",
    "Назерке",
    "Салтанат",
    "Анар",
    "Гаухар",
    "Дана",
    "Жансая",
    "Камила",
    "Лаура",
    "Раушан",
    "Самал",
    "Әйгерім",
    "Ботагөз",
    "Інжу",
    "Томирис",
    "Ақбота",
    "Жұлдыз",
];

/// Russian female given names.
const RU_FEMALE: &[&str] = &[
    "Анна",
    "Елена",
    "Ольга",
    "Наталья",
    "Ирина",
    "Татьяна",
    "Светлана",
    "Марина",
    "Екатерина",
    "Юлия",
    "Мария",
    "Анастасия",
    "Людмила",
    "Галина",
    "Валентина",
    "Надежда",
    "Оксана",
    "Виктория",
    "Дарья",
    "Ксения",
    "Алина",
    "Вера",
    "Любовь",
    "Лариса",
    "Евгения",
    "Полина",
    "Софья",
    "Кристина",
    "Алёна",
    "Нина",
];

/// Which name tables a person's names come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Kazakh,
    Russian,
}

/// How a patronymic is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PatronymicStyle {
    /// No patronymic.
    None = 0,
    /// Russian style: -ович/-овна, -евич/-евна.
    Russian = 1,
    /// Kazakh style: -ұлы/-қызы.
    Kazakh = 2,
}

/// A full name as indexes into the tables: compact and `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NameRef {
    /// Index into the surnames (male form).
    pub surname: u16,
    /// Index into the male or female given names, by the person's sex.
    pub given: u16,
    /// Index into the male given names: the father's name.
    pub father: u16,
    /// How the patronymic is formed.
    pub style: PatronymicStyle,
}

/// Number of surnames of each origin, and their offsets in the combined index.
pub fn surname_range(origin: Origin) -> (u16, u16) {
    match origin {
        Origin::Kazakh => (0, KZ_SURNAMES.len() as u16),
        Origin::Russian => (KZ_SURNAMES.len() as u16, (KZ_SURNAMES.len() + RU_SURNAMES.len()) as u16),
    }
}

/// Range of given names of an origin and sex in the combined index.
pub fn given_range(origin: Origin, sex: Sex) -> (u16, u16) {
    let (kz, ru) = match sex {
        Sex::Male => (KZ_MALE.len(), RU_MALE.len()),
        Sex::Female => (KZ_FEMALE.len(), RU_FEMALE.len()),
    };
    match origin {
        Origin::Kazakh => (0, kz as u16),
        Origin::Russian => (kz as u16, (kz + ru) as u16),
    }
}

/// The origin of a given-name index for a person of `sex`.
pub fn given_origin(given: u16, sex: Sex) -> Origin {
    let kz = match sex {
        Sex::Male => KZ_MALE.len(),
        Sex::Female => KZ_FEMALE.len(),
    };
    if (given as usize) < kz { Origin::Kazakh } else { Origin::Russian }
}

/// The origin of a surname index.
pub fn surname_origin(surname: u16) -> Origin {
    if (surname as usize) < KZ_SURNAMES.len() { Origin::Kazakh } else { Origin::Russian }
}

fn surname_male(i: u16) -> &'static str {
    let i = i as usize;
    if i < KZ_SURNAMES.len() {
        KZ_SURNAMES[i]
    } else {
        RU_SURNAMES.get(i - KZ_SURNAMES.len()).copied().unwrap_or("Иванов")
    }
}

fn male_given(i: u16) -> &'static str {
    let i = i as usize;
    if i < KZ_MALE.len() { KZ_MALE[i] } else { RU_MALE.get(i - KZ_MALE.len()).map(|r| r.0).unwrap_or("Иван") }
}

fn female_given(i: u16) -> &'static str {
    let i = i as usize;
    if i < KZ_FEMALE.len() { KZ_FEMALE[i] } else { RU_FEMALE.get(i - KZ_FEMALE.len()).copied().unwrap_or("Анна") }
}

/// The surname in the form for `sex`.
pub fn surname_form(male: &str, sex: Sex) -> String {
    if sex == Sex::Male {
        return male.to_owned();
    }
    for (m, f) in [("ский", "ская"), ("цкий", "цкая")] {
        if let Some(stem) = male.strip_suffix(m) {
            return format!("{stem}{f}");
        }
    }
    if ["ов", "ев", "ёв", "ин", "ын"].iter().any(|s| male.ends_with(s)) {
        return format!("{male}а");
    }
    male.to_owned()
}

/// The Russian-style patronymic of a (Kazakh) given name by rule: -ович/-овна after a
/// consonant, -евич/-евна after -й or -и.
pub fn russian_patronymic(father: &str, sex: Sex) -> String {
    let (m, f) = ("ович", "овна");
    let (me, fe) = ("евич", "евна");
    if let Some(stem) = father.strip_suffix('й') {
        return format!("{stem}{}", if sex == Sex::Male { me } else { fe });
    }
    if father.ends_with('и') {
        return format!("{father}{}", if sex == Sex::Male { me } else { fe });
    }
    format!("{father}{}", if sex == Sex::Male { m } else { f })
}

/// The Kazakh-style patronymic: the father's name and -ұлы (son) or -қызы (daughter).
pub fn kazakh_patronymic(father: &str, sex: Sex) -> String {
    format!("{father}{}", if sex == Sex::Male { "ұлы" } else { "қызы" })
}

impl NameRef {
    /// The name as (surname, given name, patronymic) for a person of `sex`.
    pub fn render(&self, sex: Sex) -> (String, String, String) {
        let surname = surname_form(surname_male(self.surname), sex);
        let given = match sex {
            Sex::Male => male_given(self.given),
            Sex::Female => female_given(self.given),
        }
        .to_owned();
        let father_idx = self.father as usize;
        let patronymic = match self.style {
            PatronymicStyle::None => String::new(),
            PatronymicStyle::Kazakh => kazakh_patronymic(male_given(self.father), sex),
            PatronymicStyle::Russian => match father_idx.checked_sub(KZ_MALE.len()).and_then(|i| RU_MALE.get(i)) {
                Some((_, m, f)) => (if sex == Sex::Male { *m } else { *f }).to_owned(),
                None => russian_patronymic(male_given(self.father), sex),
            },
        };
        (surname, given, patronymic)
    }

    /// The name as the contracts' message.
    pub fn to_proto(&self, sex: Sex) -> shep_proto::shep::FullName {
        let (surname, name, patronymic) = self.render(sex);
        shep_proto::shep::FullName { surname, name, patronymic }
    }
}

/// The combined number of male given names (the range of `NameRef::father`).
pub fn male_given_count() -> u16 {
    (KZ_MALE.len() + RU_MALE.len()) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gender_forms() {
        assert_eq!(surname_form("Ахметов", Sex::Female), "Ахметова");
        assert_eq!(surname_form("Соловьёв", Sex::Female), "Соловьёва");
        assert_eq!(surname_form("Ильин", Sex::Female), "Ильина");
        assert_eq!(surname_form("Островский", Sex::Female), "Островская");
        assert_eq!(surname_form("Ким", Sex::Female), "Ким");
        assert_eq!(surname_form("Шевченко", Sex::Female), "Шевченко");
        assert_eq!(russian_patronymic("Серік", Sex::Male), "Серікович");
        assert_eq!(russian_patronymic("Серік", Sex::Female), "Серіковна");
        assert_eq!(russian_patronymic("Ғани", Sex::Female), "Ғаниевна");
        assert_eq!(kazakh_patronymic("Нұрлан", Sex::Male), "Нұрланұлы");
        assert_eq!(kazakh_patronymic("Нұрлан", Sex::Female), "Нұрланқызы");
    }

    #[test]
    fn renders_from_indexes() {
        let (s, _) = surname_range(Origin::Russian);
        let (g, _) = given_range(Origin::Russian, Sex::Male);
        let n = NameRef { surname: s, given: g, father: g + 1, style: PatronymicStyle::Russian };
        assert_eq!(n.render(Sex::Male), ("Иванов".into(), "Александр".into(), "Алексеевич".into()));
        let (gf, _) = given_range(Origin::Russian, Sex::Female);
        let n = NameRef { given: gf, ..n };
        assert_eq!(n.render(Sex::Female), ("Иванова".into(), "Анна".into(), "Алексеевна".into()));
        let n = NameRef { surname: 0, given: 0, father: 0, style: PatronymicStyle::Kazakh };
        assert_eq!(n.render(Sex::Female), ("Ахметова".into(), "Айгүл".into(), "Айбекқызы".into()));
        let n = NameRef { style: PatronymicStyle::None, ..n };
        assert_eq!(n.render(Sex::Male).2, "");
        // Out-of-range indexes render something rather than panic.
        let n = NameRef { surname: u16::MAX, given: u16::MAX, father: u16::MAX, style: PatronymicStyle::Russian };
        assert!(!n.render(Sex::Male).0.is_empty());
    }

    #[test]
    fn every_surname_has_a_female_form_of_the_right_shape() {
        for i in 0..surname_range(Origin::Russian).1 {
            let m = surname_male(i);
            let f = surname_form(m, Sex::Female);
            assert!(f == m || f.ends_with('а') || f.ends_with("ая"), "{m} -> {f}");
        }
    }
}
