//! Organization names in Russian and Kazakh with their legal forms (ТОО/ЖШС, АО/АҚ...),
//! as a compact [`OrgName`] rendered on demand.

use shep_proto::gbdul::LegalForm;

/// Brand words (ru, kk).
const BRANDS: &[(&str, &str)] = &[
    ("Алтын", "Алтын"),
    ("Самрук", "Самұрық"),
    ("Береке", "Береке"),
    ("Кайнар", "Қайнар"),
    ("Нур", "Нұр"),
    ("Сункар", "Сұңқар"),
    ("Тулпар", "Тұлпар"),
    ("Арман", "Арман"),
    ("Дала", "Дала"),
    ("Асыл", "Асыл"),
    ("Бастау", "Бастау"),
    ("Жулдыз", "Жұлдыз"),
    ("Казына", "Қазына"),
    ("Ак Жол", "Ақ Жол"),
    ("Максат", "Мақсат"),
    ("Шуак", "Шуақ"),
    ("Айдын", "Айдын"),
    ("Байтерек", "Бәйтерек"),
    ("Евразия", "Еуразия"),
    ("Алатау", "Алатау"),
    ("Сарыарка", "Сарыарқа"),
    ("Жетысу", "Жетісу"),
    ("Каспий", "Каспий"),
    ("Иртыш", "Ертіс"),
    ("Кокше", "Көкше"),
    ("Есиль", "Есіл"),
    ("Орда", "Орда"),
    ("Атамекен", "Атамекен"),
    ("Болашак", "Болашақ"),
    ("Достар", "Достар"),
    ("Жаркын", "Жарқын"),
    ("Кемел", "Кемел"),
    ("Мерей", "Мерей"),
    ("KazTech", "KazTech"),
    ("Nomad", "Nomad"),
    ("Silk Way", "Silk Way"),
    ("Green Line", "Green Line"),
    ("Steppe", "Steppe"),
    ("Astana Digital", "Astana Digital"),
    ("Умай", "Ұмай"),
    ("Тениз", "Теңіз"),
    ("Хан Тенгри", "Хан Тәңірі"),
    ("Улан", "Ұлан"),
    ("Кыран", "Қыран"),
];

/// Activity words (ru, kk).
const ACTIVITIES: &[(&str, &str)] = &[
    ("Строй", "Құрылыс"),
    ("Транс", "Транс"),
    ("Агро", "Агро"),
    ("Мед", "Мед"),
    ("Фарм", "Фарм"),
    ("Сервис", "Сервис"),
    ("Трейд", "Трейд"),
    ("Инвест", "Инвест"),
    ("Энерго", "Энерго"),
    ("Логистик", "Логистик"),
    ("Софт", "Софт"),
    ("Медицинский центр", "Медициналық орталығы"),
    ("Клиник", "Клиник"),
    ("Пищепром", "Тағам өнеркәсібі"),
    ("Молоко", "Сүт"),
    ("Нан", "Нан"),
    ("Экология", "Экология"),
    ("Технологии", "Технологиялары"),
    ("Ойл", "Ойл"),
    ("Майнинг", "Майнинг"),
    ("Продукт", "Өнім"),
    ("Систем", "Систем"),
    ("Инжиниринг", "Инжиниринг"),
    ("Консалтинг", "Консалтинг"),
    ("Лаб", "Лаб"),
];

/// Optional last words (ru, kk).
const SUFFIXES: &[(&str, &str)] = &[
    ("Групп", "Групп"),
    ("KZ", "KZ"),
    ("Плюс", "Плюс"),
    ("Азия", "Азия"),
    ("Казахстан", "Қазақстан"),
    ("2000", "2000"),
    ("Холдинг", "Холдинг"),
    ("Центр", "Орталығы"),
];

/// The legal forms generated, with their weights (per mille) and abbreviations (ru, kk).
pub const FORMS: &[(LegalForm, u32, &str, &str)] = &[
    (LegalForm::Too, 700, "ТОО", "ЖШС"),
    (LegalForm::Ip, 80, "ИП", "ЖК"),
    (LegalForm::Kh, 60, "КХ", "ШҚ"),
    (LegalForm::Ao, 40, "АО", "АҚ"),
    (LegalForm::Gu, 30, "ГУ", "ММ"),
    (LegalForm::Gp, 20, "РГП на ПХВ", "ШЖҚ РМК"),
    (LegalForm::Pk, 20, "ПК", "ӨК"),
    (LegalForm::Oo, 20, "ОО", "ҚБ"),
    (LegalForm::Fund, 15, "Фонд", "қоры"),
    (LegalForm::Nao, 15, "НАО", "КеАҚ"),
];

/// Picks a legal form (index into [`FORMS`]) from a number in `0..1000`.
pub fn form_by_weight(x: u32) -> u8 {
    let mut t = x % 1000;
    for (i, f) in FORMS.iter().enumerate() {
        if t < f.1 {
            return i as u8;
        }
        t -= f.1;
    }
    0
}

/// The sizes of the word tables: (brands, activities, suffixes).
pub fn table_sizes() -> (u16, u16, u16) {
    (BRANDS.len() as u16, ACTIVITIES.len() as u16, SUFFIXES.len() as u16)
}

/// An organization's name as indexes: 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrgName {
    /// Index into [`FORMS`].
    pub form: u8,
    pub brand: u16,
    pub activity: u16,
    /// Index into the suffixes; `u16::MAX` for none.
    pub suffix: u16,
}

impl OrgName {
    /// The legal form.
    pub fn legal_form(&self) -> LegalForm {
        FORMS.get(self.form as usize).map(|f| f.0).unwrap_or(LegalForm::Other)
    }

    /// The name as (ru, kk).
    pub fn render(&self) -> (String, String) {
        let (_, _, form_ru, form_kk) = FORMS.get(self.form as usize).copied().unwrap_or(FORMS[0]);
        let (b_ru, b_kk) = BRANDS.get(self.brand as usize).copied().unwrap_or(BRANDS[0]);
        let (a_ru, a_kk) = ACTIVITIES.get(self.activity as usize).copied().unwrap_or(ACTIVITIES[0]);
        let (s_ru, s_kk) =
            SUFFIXES.get(self.suffix as usize).map(|(r, k)| (format!(" {r}"), format!(" {k}"))).unwrap_or_default();
        (format!("{form_ru} \"{b_ru} {a_ru}{s_ru}\""), format!("\"{b_kk} {a_kk}{s_kk}\" {form_kk}"))
    }

    /// The name as the contracts' message.
    pub fn to_proto(&self) -> shep_proto::shep::LocalizedText {
        let (ru, kk) = self.render();
        shep_proto::shep::LocalizedText { ru, kk }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_both_languages_with_the_form() {
        let n = OrgName { form: 0, brand: 0, activity: 0, suffix: 0 };
        assert_eq!(n.render(), ("ТОО \"Алтын Строй Групп\"".into(), "\"Алтын Құрылыс Групп\" ЖШС".into()));
        let n = OrgName { form: 3, brand: 1, activity: 4, suffix: u16::MAX };
        assert_eq!(n.render(), ("АО \"Самрук Фарм\"".into(), "\"Самұрық Фарм\" АҚ".into()));
        assert_eq!(n.legal_form(), LegalForm::Ao);
        assert_eq!(FORMS.iter().map(|f| f.1).sum::<u32>(), 1000);
        assert_eq!(FORMS[form_by_weight(999) as usize].0, LegalForm::Nao);
    }
}
