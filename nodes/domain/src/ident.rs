use std::fmt;
use std::str::FromStr;

/// Why a string is not a valid IIN or BIN. The `Display` text is written for the person
/// who sent it, and [`IdError::violation`] names the rule for machine consumers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must be exactly 12 digits, got {0} characters")]
    Length(usize),
    #[error("must contain only digits 0-9")]
    NotDigits,
    #[error("check digit is {found}, expected {expected}")]
    CheckDigit { expected: u8, found: u8 },
    #[error("the first 11 digits admit no valid check digit")]
    NoCheckDigit,
    #[error("digits 1-6 are not a valid birth date (YYMMDD)")]
    BirthDate,
    #[error("digit 7 (century and sex) must be 1-6, got {0}")]
    CenturySex(u8),
    #[error("digits 3-4 are not a valid registration month, got {0:02}")]
    RegistrationMonth(u8),
    #[error("digit 5 (entity type) must be 4, 5 or 6, got {0}")]
    EntityType(u8),
    #[error("digit 6 (attribute) must be 0-3, got {0}")]
    Attribute(u8),
}

impl IdError {
    /// A short stable name of the broken rule, for error details.
    pub fn violation(&self) -> &'static str {
        match self {
            IdError::Length(_) => "LENGTH",
            IdError::NotDigits => "DIGITS",
            IdError::CheckDigit { .. } | IdError::NoCheckDigit => "CHECK_DIGIT",
            IdError::BirthDate => "BIRTH_DATE",
            IdError::CenturySex(_) => "CENTURY_SEX",
            IdError::RegistrationMonth(_) => "REGISTRATION_MONTH",
            IdError::EntityType(_) => "ENTITY_TYPE",
            IdError::Attribute(_) => "ATTRIBUTE",
        }
    }
}

const W1: [u32; 11] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
const W2: [u32; 11] = [3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2];

/// The check digit of 11 digits, or `None` when both weightings give 10.
pub fn check_digit(d: &[u8; 11]) -> Option<u8> {
    let sum = |w: &[u32; 11]| d.iter().zip(w).map(|(&x, &w)| x as u32 * w).sum::<u32>() % 11;
    match sum(&W1) {
        10 => match sum(&W2) {
            10 => None,
            c => Some(c as u8),
        },
        c => Some(c as u8),
    }
}

fn digits(s: &str) -> Result<[u8; 12], IdError> {
    let b = s.as_bytes();
    if b.len() != 12 {
        return Err(IdError::Length(s.chars().count()));
    }
    let mut out = [0u8; 12];
    for (o, &c) in out.iter_mut().zip(b) {
        if !c.is_ascii_digit() {
            return Err(IdError::NotDigits);
        }
        *o = c - b'0';
    }
    Ok(out)
}

fn verify_check_digit(d: &[u8; 12]) -> Result<(), IdError> {
    let first: [u8; 11] = d[..11].try_into().expect("11 digits");
    match check_digit(&first) {
        None => Err(IdError::NoCheckDigit),
        Some(c) if c != d[11] => Err(IdError::CheckDigit { expected: c, found: d[11] }),
        Some(_) => Ok(()),
    }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Sex as encoded in digit 7 of an IIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sex {
    Male,
    Female,
}

/// An individual identification number (ИИН), valid by construction.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Iin([u8; 12]);

impl Iin {
    /// Parses and validates: 12 digits, a real birth date, century/sex 1-6, check digit.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let d = digits(s)?;
        let cs = d[6];
        if !(1..=6).contains(&cs) {
            return Err(IdError::CenturySex(cs));
        }
        let (y, m, day) = (
            (d[0] * 10 + d[1]) as u32,
            (d[2] * 10 + d[3]) as u32,
            (d[4] * 10 + d[5]) as u32,
        );
        let year = 1800 + 100 * ((cs as u32 - 1) / 2) + y;
        if !(1..=12).contains(&m) || day == 0 || day > days_in_month(year, m) {
            return Err(IdError::BirthDate);
        }
        verify_check_digit(&d)?;
        Ok(Iin(d))
    }

    /// Builds an IIN from a birth date, sex and a 4-digit serial; `None` when that serial
    /// admits no check digit (about one serial in eleven), so the caller picks another.
    pub fn from_parts(year: u32, month: u32, day: u32, sex: Sex, serial: u16) -> Option<Self> {
        if !(1800..2100).contains(&year) || serial > 9999 {
            return None;
        }
        let century = (year - 1800) / 100;
        let cs = 1 + 2 * century as u8 + if sex == Sex::Female { 1 } else { 0 };
        let yy = year % 100;
        let s = format!("{yy:02}{month:02}{day:02}{cs}{serial:04}");
        let first = ascii11(&s)?;
        let c = check_digit(&first)?;
        Iin::parse(&format!("{s}{c}")).ok()
    }

    /// The birth date as (year, month, day).
    pub fn birth_date(&self) -> (u32, u32, u32) {
        let d = &self.0;
        let century = (d[6] as u32 - 1) / 2;
        (
            1800 + 100 * century + (d[0] * 10 + d[1]) as u32,
            (d[2] * 10 + d[3]) as u32,
            (d[4] * 10 + d[5]) as u32,
        )
    }

    /// The sex encoded in digit 7 (odd male, even female).
    pub fn sex(&self) -> Sex {
        if self.0[6] % 2 == 1 { Sex::Male } else { Sex::Female }
    }
}

/// A business identification number (БИН), valid by construction.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bin([u8; 12]);

impl Bin {
    /// Parses and validates: 12 digits, month 01-12, type 4/5/6, attribute 0-3, check digit.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let d = digits(s)?;
        let month = d[2] * 10 + d[3];
        if !(1..=12).contains(&month) {
            return Err(IdError::RegistrationMonth(month));
        }
        if !(4..=6).contains(&d[4]) {
            return Err(IdError::EntityType(d[4]));
        }
        if d[5] > 3 {
            return Err(IdError::Attribute(d[5]));
        }
        verify_check_digit(&d)?;
        Ok(Bin(d))
    }

    /// Builds a BIN from its registration month, type (4, 5, 6), attribute (0-3) and a
    /// 5-digit serial; `None` when the parts are out of range or admit no check digit.
    pub fn from_parts(year: u32, month: u32, kind: u8, attribute: u8, serial: u32) -> Option<Self> {
        if serial > 99_999 {
            return None;
        }
        let s = format!("{:02}{month:02}{kind}{attribute}{serial:05}", year % 100);
        let first = ascii11(&s)?;
        let c = check_digit(&first)?;
        Bin::parse(&format!("{s}{c}")).ok()
    }

    /// The registration (year, month); the century is not encoded, so 2000s are assumed
    /// for years up to the current two digits of `pivot`, 1900s otherwise.
    pub fn registration(&self, pivot: u32) -> (u32, u32) {
        let yy = (self.0[0] * 10 + self.0[1]) as u32;
        let year = if 2000 + yy <= pivot { 2000 + yy } else { 1900 + yy };
        (year, (self.0[2] * 10 + self.0[3]) as u32)
    }
}

fn ascii11(s: &str) -> Option<[u8; 11]> {
    let b = s.as_bytes();
    if b.len() != 11 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut out = [0u8; 11];
    for (o, &c) in out.iter_mut().zip(b) {
        *o = c - b'0';
    }
    Some(out)
}

macro_rules! id_impls {
    ($t:ident) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for d in self.0 {
                    write!(f, "{d}")?;
                }
                Ok(())
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($t))
            }
        }
        impl FromStr for $t {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                $t::parse(s)
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $t::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}
id_impls!(Iin);
id_impls!(Bin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_digit_first_weighting() {
        // 1*9+2*0+3*0+4*5+5*1+6*5+7*3+8*0+9*1+10*2+11*3 = 147; 147 mod 11 = 4
        assert_eq!(check_digit(&[9, 0, 0, 5, 1, 5, 3, 0, 1, 2, 3]), Some(4));
        assert!(Iin::parse("900515301234").is_ok());
        assert_eq!(
            Iin::parse("900515301235"),
            Err(IdError::CheckDigit { expected: 4, found: 5 })
        );
    }

    #[test]
    fn check_digit_second_weighting_and_none() {
        // Search for 11-digit prefixes that need the second weighting or have none,
        // and check the rule against a direct computation.
        let mut second = 0;
        let mut none = 0;
        for serial in 0..2000u32 {
            let s = format!("9005153{serial:04}");
            let d: Vec<u32> = s.bytes().map(|c| (c - b'0') as u32).collect();
            let s1: u32 = d.iter().zip(1..).map(|(x, w)| x * w).sum::<u32>() % 11;
            let s2: u32 = d.iter().zip(W2).map(|(x, w)| x * w).sum::<u32>() % 11;
            let first: [u8; 11] = s.bytes().map(|c| c - b'0').collect::<Vec<_>>().try_into().unwrap();
            match (s1, s2) {
                (10, 10) => {
                    none += 1;
                    assert_eq!(check_digit(&first), None);
                }
                (10, c) => {
                    second += 1;
                    assert_eq!(check_digit(&first), Some(c as u8));
                }
                (c, _) => assert_eq!(check_digit(&first), Some(c as u8)),
            }
        }
        assert!(second > 0 && none > 0);
    }

    #[test]
    fn iin_rejects_with_reasons() {
        assert_eq!(Iin::parse("12345"), Err(IdError::Length(5)));
        assert_eq!(Iin::parse("90051530123a"), Err(IdError::NotDigits));
        assert_eq!(Iin::parse("９００５１５３０１２３４").unwrap_err().violation(), "LENGTH");
        // month 13
        let s = "901315301234";
        assert!(Iin::parse(s).is_err());
    }

    #[test]
    fn iin_from_parts_round_trips() {
        let mut made = 0;
        for serial in 0..100 {
            if let Some(iin) = Iin::from_parts(1988, 2, 29, Sex::Female, serial) {
                made += 1;
                assert_eq!(iin.birth_date(), (1988, 2, 29));
                assert_eq!(iin.sex(), Sex::Female);
                assert_eq!(Iin::parse(&iin.to_string()), Ok(iin));
            }
        }
        assert!(made > 80);
        assert!(Iin::from_parts(1987, 2, 29, Sex::Male, 1).is_none());
        let iin = Iin::from_parts(2003, 12, 31, Sex::Male, 42).or(Iin::from_parts(2003, 12, 31, Sex::Male, 43)).unwrap();
        assert_eq!(iin.to_string().as_bytes()[6], b'5');
    }

    #[test]
    fn bin_parts() {
        let bin = (0..20).find_map(|s| Bin::from_parts(2015, 3, 4, 0, s)).unwrap();
        assert_eq!(bin.registration(2026), (2015, 3));
        assert_eq!(&bin.to_string()[..6], "150340");
        assert_eq!(Bin::parse("151340000001").unwrap_err().violation(), "REGISTRATION_MONTH");
    }
}
