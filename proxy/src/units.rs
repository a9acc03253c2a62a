//! Units as weir.yaml writes them (durations, byte sizes): serde helpers
//! every config type uses, so they sit below all of them.

pub mod bytes {
    //! Sizes in config files: `64KiB`, `32MiB`, `1GiB`, or a number of bytes.
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn parse(text: &str) -> Result<usize, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let n: usize = number.parse().map_err(|_| format!("{text:?} is not a size (try 64KiB, 32MiB)"))?;
        let scale = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "KB" => 1 << 10,
            "MiB" | "M" | "MB" => 1 << 20,
            "GiB" | "G" | "GB" => 1 << 30,
            other => return Err(format!("unknown size unit {other:?} (use B, KiB, MiB, GiB)")),
        };
        n.checked_mul(scale).ok_or_else(|| format!("{text:?} is too large"))
    }

    pub fn serialize<S: Serializer>(n: &usize, s: S) -> Result<S::Ok, S::Error> {
        if n.is_multiple_of(1 << 20) {
            s.serialize_str(&format!("{}MiB", n >> 20))
        } else {
            s.serialize_str(&format!("{}KiB", n >> 10))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(usize),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(n),
            Raw::Text(t) => parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

pub mod duration {
    //! Durations in config files: `250ms`, `10s`, `1m`, or a number of seconds.
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration (try 250ms, 10s, 1m)"))?;
        let seconds = match unit.trim() {
            "" | "s" => value,
            "ms" => value / 1e3,
            "us" | "µs" => value / 1e6,
            "ns" => value / 1e9,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            other => return Err(format!("unknown duration unit {other:?} in {text:?} (use ns, us, ms, s, m, h)")),
        };
        if !seconds.is_finite() || seconds < 0.0 {
            return Err(format!("{text:?} is not a duration"));
        }
        Ok(Duration::from_secs_f64(seconds))
    }

    pub fn format(d: Duration) -> String {
        if d.subsec_nanos() == 0 {
            format!("{}s", d.as_secs())
        } else if d.as_nanos().is_multiple_of(1_000_000) {
            format!("{}ms", d.as_millis())
        } else {
            format!("{}us", d.as_micros())
        }
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(s) if s >= 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
            Raw::Seconds(s) => Err(serde::de::Error::custom(format!("{s} is not a duration"))),
            Raw::Text(t) => parse(&t).map_err(serde::de::Error::custom),
        }
    }
}
