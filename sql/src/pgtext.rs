//! PostgreSQL's text output for the types where Rust's and PostgreSQL's formatting differ.
//!
//! psql users and text-protocol drivers see these strings; they must match PostgreSQL's byte
//! for byte (`1e+20`, `2026-01-01 10:00:00` without trailing zero microseconds).

use chrono::{DateTime, Timelike};

/// Formats a float as PostgreSQL does with `extra_float_digits = 1` (the default): the shortest
/// text that reads back exactly, in fixed notation when the decimal exponent is in
/// `-4 ..= max_fixed_exponent`, else scientific with a signed, at least two-digit exponent.
/// `max_fixed_exponent` is 14 for `float8` and 5 for `float4`.
pub fn float(value: f64, shortest: &str, max_fixed_exponent: i32) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    // `shortest` is Rust's `{:e}` form: "-1.2345e-7" (shortest round-trip digits).
    let (mantissa, exponent) = match shortest.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (shortest, 0),
    };
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if negative { "-" } else { "" };
    if (-4..=max_fixed_exponent).contains(&exponent) {
        // `exponent + 1` digits stand before the decimal point.
        format!("{sign}{}", crate::naming::digits_with_point(&digits, i64::from(exponent) + 1))
    } else {
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{first}{fraction}e{exp_sign}{:02}", exponent.abs())
    }
}

/// `float8` text.
pub fn float8(value: f64) -> String {
    float(value, &format!("{value:e}"), 14)
}

/// `float4` text.
pub fn float4(value: f32) -> String {
    float(f64::from(value), &format!("{value:e}"), 5)
}

/// Fractional seconds as PostgreSQL prints them: omitted when zero, else without trailing
/// zeros.
fn fraction(micros: u32) -> String {
    if micros == 0 {
        String::new()
    } else {
        format!(".{:06}", micros).trim_end_matches('0').to_string()
    }
}

/// `timestamp` text for microseconds since the epoch.
pub fn timestamp(micros: i64) -> Option<String> {
    let t = DateTime::from_timestamp_micros(micros)?.naive_utc();
    Some(format!("{}{}", t.format("%Y-%m-%d %H:%M:%S"), fraction(t.nanosecond() / 1000)))
}

/// `timestamptz` text (always shown in UTC).
pub fn timestamptz(micros: i64) -> Option<String> {
    timestamp(micros).map(|t| format!("{t}+00"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_like_postgres() {
        let cases: [(f64, &str); 12] = [
            (1e20, "1e+20"),
            (1.5, "1.5"),
            (0.1 + 0.2, "0.30000000000000004"),
            (100.0, "100"),
            (-0.00001234, "-1.234e-05"),
            (0.0001, "0.0001"),
            (123456789012345.0, "123456789012345"),
            (1234567890123456.0, "1.234567890123456e+15"),
            (0.0, "0"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
            (-2.5, "-2.5"),
        ];
        for (v, want) in cases {
            assert_eq!(float8(v), want, "{v}");
        }
        assert_eq!(float4(1234567.0), "1.234567e+06");
        assert_eq!(float4(2.5), "2.5");
        assert_eq!(float4(0.1), "0.1");
    }

    #[test]
    fn timestamps_like_postgres() {
        assert_eq!(timestamp(0).as_deref(), Some("1970-01-01 00:00:00"));
        assert_eq!(timestamp(1_500_000).as_deref(), Some("1970-01-01 00:00:01.5"));
        assert_eq!(timestamptz(123).as_deref(), Some("1970-01-01 00:00:00.000123+00"));
    }
}
