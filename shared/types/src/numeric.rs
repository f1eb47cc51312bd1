//! Numeric text read exactly: SQL number literals (`-12`, `3.5`, `1e3`) and numeric strings
//! (`'42'`) before they meet an INT, BIGINT, DOUBLE, TIMESTAMP or TEXT column (sql.md §2.2). The
//! value is kept as decimal digits, so `2.5` is known to be non-integral and `9223372036854775808`
//! to be out of range without any floating-point rounding.

/// A decimal number `±digits × 10^exponent`, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decimal {
    negative: bool,
    /// Significant digits, no leading or trailing zeros; empty for zero.
    digits: String,
    exponent: i64,
}

/// What an integer column makes of a [`Decimal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Integral {
    Value(i64),
    /// An integer outside the signed 64-bit range.
    OutOfRange,
    /// Not a whole number (`1.5`).
    Fraction,
}

/// Exponents are clamped here: far beyond any range check, far from overflowing `i64` arithmetic.
const EXPONENT_LIMIT: i64 = 1 << 40;

impl Decimal {
    /// Parses `[+-]digits[.digits][e[+-]digits]` (or `.digits`), surrounding whitespace allowed.
    pub(crate) fn parse(text: &str) -> Option<Decimal> {
        let text = text.trim();
        let (negative, unsigned) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
            Some(at) => (&unsigned[..at], parse_exponent(&unsigned[at + 1..])?),
            None => (unsigned, 0),
        };
        let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.len() + fraction.len() == 0 || !all_digits(whole) || !all_digits(fraction) {
            return None;
        }
        let fraction_len = i64::try_from(fraction.len()).ok()?;
        let mut digits = format!("{whole}{fraction}");
        let mut exponent = exponent - fraction_len;
        let trailing = digits.len() - digits.trim_end_matches('0').len();
        digits.truncate(digits.len() - trailing);
        exponent += i64::try_from(trailing).ok()?;
        let digits = digits.trim_start_matches('0').to_string();
        if digits.is_empty() {
            exponent = 0;
        }
        Some(Decimal { negative, digits, exponent })
    }

    /// The number as a signed 64-bit integer, if it is a whole number in range.
    pub(crate) fn integral(&self) -> Integral {
        if self.digits.is_empty() {
            return Integral::Value(0);
        }
        if self.exponent < 0 {
            return Integral::Fraction;
        }
        // i64 has 19 digits; anything longer is out of range without computing it.
        if self.digits.len() as i64 + self.exponent > 19 {
            return Integral::OutOfRange;
        }
        let Ok(magnitude) = self.digits.parse::<i128>() else { return Integral::OutOfRange };
        let magnitude = magnitude * 10i128.pow(self.exponent as u32);
        let signed = if self.negative { -magnitude } else { magnitude };
        i64::try_from(signed).map_or(Integral::OutOfRange, Integral::Value)
    }
}

fn parse_exponent(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude = digits.parse::<i64>().unwrap_or(EXPONENT_LIMIT).min(EXPONENT_LIMIT);
    Some(if negative { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn integral(text: &str) -> Option<Integral> {
        Decimal::parse(text).map(|d| d.integral())
    }

    #[test]
    fn whole_numbers_are_read_exactly() {
        assert_eq!(integral("42"), Some(Integral::Value(42)));
        assert_eq!(integral(" -7 "), Some(Integral::Value(-7)));
        assert_eq!(integral("+007"), Some(Integral::Value(7)));
        assert_eq!(integral("-0"), Some(Integral::Value(0)));
        assert_eq!(integral("0.000"), Some(Integral::Value(0)));
        assert_eq!(integral("2.0"), Some(Integral::Value(2)));
        assert_eq!(integral("1e3"), Some(Integral::Value(1000)));
        assert_eq!(integral("3000E-3"), Some(Integral::Value(3)));
        assert_eq!(integral("9223372036854775807"), Some(Integral::Value(i64::MAX)));
        assert_eq!(integral("-9223372036854775808"), Some(Integral::Value(i64::MIN)));
        assert_eq!(integral("9007199254740993"), Some(Integral::Value(9_007_199_254_740_993)));
    }

    #[test]
    fn range_and_fractions_are_told_apart() {
        assert_eq!(integral("9223372036854775808"), Some(Integral::OutOfRange));
        assert_eq!(integral("-9223372036854775809"), Some(Integral::OutOfRange));
        assert_eq!(integral("1e19"), Some(Integral::OutOfRange));
        assert_eq!(integral("1e999999999999999999999"), Some(Integral::OutOfRange));
        assert_eq!(integral("1.5"), Some(Integral::Fraction));
        assert_eq!(integral("-2.5"), Some(Integral::Fraction));
        assert_eq!(integral("1500E-3"), Some(Integral::Fraction));
        assert_eq!(integral("1e-999999999999999999999"), Some(Integral::Fraction));
        assert_eq!(integral("0e999999999999999999999"), Some(Integral::Value(0)));
    }

    #[test]
    fn only_decimal_numbers_parse() {
        for bad in ["", " ", "abc", "1.5.2", "-", "+", ".", "1e", "e5", "1e+", "0x10", "1_000", "NaN", "inf", "--1"] {
            assert_eq!(Decimal::parse(bad), None, "{bad:?}");
        }
        assert!(Decimal::parse(".5").is_some());
        assert!(Decimal::parse("5.").is_some());
    }
}
