//! Addresses: regions, their towns, streets; a compact [`AddressRef`] rendered on demand.

/// A region (область or city of republican significance), its towns and its postal prefix.
struct Region {
    name: &'static str,
    towns: &'static [&'static str],
    postal: u32,
}

const REGIONS: &[Region] = &[
    Region { name: "г. Астана", towns: &["Астана"], postal: 10_000 },
    Region { name: "г. Алматы", towns: &["Алматы"], postal: 50_000 },
    Region { name: "г. Шымкент", towns: &["Шымкент"], postal: 160_000 },
    Region {
        name: "Абайская область", towns: &["Семей", "Аягоз", "Курчатов"], postal: 70_000
    },
    Region {
        name: "Акмолинская область", towns: &["Кокшетау", "Степногорск", "Щучинск"], postal: 20_000
    },
    Region {
        name: "Актюбинская область", towns: &["Актобе", "Кандыагаш", "Хромтау"], postal: 30_000
    },
    Region {
        name: "Алматинская область", towns: &["Конаев", "Есик", "Талгар"], postal: 40_000
    },
    Region {
        name: "Атырауская область", towns: &["Атырау", "Кульсары"], postal: 60_000
    },
    Region {
        name: "Восточно-Казахстанская область", towns: &["Усть-Каменогорск", "Риддер", "Алтай"], postal: 70_000
    },
    Region {
        name: "Жамбылская область", towns: &["Тараз", "Шу", "Каратау"], postal: 80_000
    },
    Region {
        name: "Жетысуская область", towns: &["Талдыкорган", "Текели", "Жаркент"], postal: 40_000
    },
    Region {
        name: "Западно-Казахстанская область", towns: &["Уральск", "Аксай"], postal: 90_000
    },
    Region {
        name: "Карагандинская область", towns: &["Караганда", "Темиртау", "Балхаш"], postal: 100_000
    },
    Region {
        name: "Костанайская область", towns: &["Костанай", "Рудный", "Лисаковск"], postal: 110_000
    },
    Region {
        name: "Кызылординская область", towns: &["Кызылорда", "Аральск"], postal: 120_000
    },
    Region {
        name: "Мангистауская область", towns: &["Актау", "Жанаозен"], postal: 130_000
    },
    Region {
        name: "Павлодарская область", towns: &["Павлодар", "Экибастуз", "Аксу"], postal: 140_000
    },
    Region {
        name: "Северо-Казахстанская область", towns: &["Петропавловск", "Булаево"], postal: 150_000
    },
    Region {
        name: "Туркестанская область", towns: &["Туркестан", "Кентау", "Сарыагаш"], postal: 160_000
    },
    Region {
        name: "Улытауская область", towns: &["Жезказган", "Сатпаев"], postal: 100_000
    },
];

/// Relative population of the regions, same order as `REGIONS` (Almaty and Astana large).
const REGION_WEIGHTS: &[u32] = &[14, 22, 12, 6, 6, 6, 10, 5, 6, 6, 4, 4, 9, 6, 5, 5, 6, 3, 12, 2];

const STREETS: &[&str] = &[
    "ул. Абая",
    "пр. Достык",
    "ул. Сатпаева",
    "ул. Толе би",
    "ул. Гагарина",
    "ул. Пушкина",
    "ул. Жамбыла",
    "ул. Кунаева",
    "ул. Байтурсынова",
    "ул. Ауэзова",
    "ул. Жибек Жолы",
    "ул. Шевченко",
    "пр. Республики",
    "ул. Кенесары",
    "ул. Момышулы",
    "ул. Сейфуллина",
    "ул. Валиханова",
    "ул. Казыбек би",
    "пр. Абылай хана",
    "мкр. Самал",
    "мкр. Аксай",
    "ул. Мира",
    "ул. Байзакова",
    "ул. Манаса",
    "ул. Торайгырова",
    "ул. Есенберлина",
    "ул. Жансугурова",
    "ул. Желтоксан",
    "ул. Курмангазы",
    "ул. Богенбай батыра",
    "ул. Бокейханова",
    "ул. Иманова",
    "ул. Кабанбай батыра",
    "ул. Наурызбай батыра",
    "пр. Тауелсиздик",
    "ул. Центральная",
    "ул. Школьная",
    "ул. Садовая",
    "ул. Строителей",
    "ул. Молодёжная",
];

/// Number of regions.
pub fn region_count() -> u8 {
    REGIONS.len() as u8
}

/// Picks a region by population weight from a number in `0..1000`.
pub fn region_by_weight(x: u32) -> u8 {
    let total: u32 = REGION_WEIGHTS.iter().sum();
    let mut target = x % total;
    for (i, w) in REGION_WEIGHTS.iter().enumerate() {
        if target < *w {
            return i as u8;
        }
        target -= w;
    }
    0
}

/// Number of towns of a region.
pub fn town_count(region: u8) -> u8 {
    REGIONS.get(region as usize).map(|r| r.towns.len() as u8).unwrap_or(1)
}

/// Number of streets.
pub fn street_count() -> u16 {
    STREETS.len() as u16
}

/// An address as indexes: 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddressRef {
    pub region: u8,
    pub town: u8,
    pub street: u16,
    pub house: u16,
    /// Flat or office number; 0 for none (a house).
    pub flat: u16,
}

impl AddressRef {
    /// The region's name.
    pub fn region_name(&self) -> &'static str {
        REGIONS.get(self.region as usize).map(|r| r.name).unwrap_or("г. Астана")
    }

    /// The town's name.
    pub fn town_name(&self) -> &'static str {
        REGIONS.get(self.region as usize).and_then(|r| r.towns.get(self.town as usize)).copied().unwrap_or("Астана")
    }

    /// The address as the contracts' message (Kazakhstan).
    pub fn to_proto(&self) -> shep_proto::shep::Address {
        let street = STREETS.get(self.street as usize).copied().unwrap_or("ул. Абая");
        let line = if self.flat == 0 {
            format!("{street}, д. {}", self.house)
        } else {
            format!("{street}, д. {}, кв. {}", self.house, self.flat)
        };
        let postal = REGIONS.get(self.region as usize).map(|r| r.postal).unwrap_or(10_000)
            + self.town as u32 * 1000
            + (self.street as u32 % 10) * 10;
        shep_proto::shep::Address {
            country: "KZ".into(),
            region: self.region_name().into(),
            locality: self.town_name().into(),
            street: line,
            postal_code: format!("{postal:06}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_match_regions_and_render() {
        assert_eq!(REGION_WEIGHTS.len(), REGIONS.len());
        let mut seen = vec![false; REGIONS.len()];
        for x in 0..1000 {
            seen[region_by_weight(x) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        let a = AddressRef { region: 1, town: 0, street: 1, house: 5, flat: 12 }.to_proto();
        assert_eq!(a.locality, "Алматы");
        assert_eq!(a.street, "пр. Достык, д. 5, кв. 12");
        assert_eq!(a.postal_code.len(), 6);
    }
}
