//! Counts that turn a defence off only when the config says `off`: a threshold of 0
//! used to switch a defence off silently, which an operator could do by mistake (or
//! believe to be the strictest value). Now such a setting is either a positive number
//! or the word `"off"`, and `0` is refused with a sentence that says so; in memory
//! `off` is 0, which the rules read as "off" as before.

use serde::{Deserialize, Deserializer, Serializer};

/// The value in the config file: a number, or a word.
#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Number(i64),
    Word(String),
}

fn parse<'de, D: Deserializer<'de>>(d: D, max: u64) -> Result<u64, D::Error> {
    use serde::de::Error;
    match Raw::deserialize(d)? {
        Raw::Word(w) if w == "off" => Ok(0),
        Raw::Word(w) => Err(D::Error::custom(format!(
            "{w:?} is neither a number nor \"off\""
        ))),
        Raw::Number(0) => Err(D::Error::custom(
            "0 would turn this defence off without saying so: write \"off\" to turn it off, or a number from 1",
        )),
        Raw::Number(n) => u64::try_from(n)
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| D::Error::custom(format!("must be between 1 and {max}, or \"off\""))),
    }
}

/// A `u32` count or `"off"` (0 in memory).
pub mod count_or_off {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        parse(d, u64::from(u32::MAX)).map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    }

    pub fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        match v {
            0 => s.serialize_str("off"),
            n => s.serialize_u32(*n),
        }
    }
}

/// A `u8` level or `"off"` (0 in memory).
pub mod level_or_off {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
        parse(d, u64::from(u8::MAX)).map(|n| u8::try_from(n).unwrap_or(u8::MAX))
    }

    pub fn serialize<S: Serializer>(v: &u8, s: S) -> Result<S::Ok, S::Error> {
        match v {
            0 => s.serialize_str("off"),
            n => s.serialize_u8(*n),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct T {
        #[serde(with = "super::count_or_off")]
        limit: u32,
        #[serde(with = "super::level_or_off", default)]
        level: u8,
    }

    fn parse(text: &str) -> Result<T, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn off_must_be_said_and_zero_is_refused() {
        assert_eq!(parse("limit = 50\nlevel = 3").expect("number").limit, 50);
        assert_eq!(parse("limit = \"off\"").expect("off").limit, 0);
        let zero = parse("limit = 0").expect_err("zero");
        assert!(zero.contains("write \"off\""), "{zero}");
        assert!(parse("limit = \"none\"").is_err());
        assert!(parse("limit = -1").is_err());
        assert!(parse("limit = 9223372036854775807").is_err(), "above u32");
        assert!(parse("limit = 1\nlevel = 0").is_err());
        assert!(parse("limit = 1\nlevel = 256").is_err());
        let back = toml::to_string(&T { limit: 0, level: 2 }).expect("print");
        assert!(back.contains("limit = \"off\""), "{back}");
    }
}
