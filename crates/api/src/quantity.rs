//! Kubernetes resource quantities (`100m`, `1.5`, `128Mi`, `1G`, `2e3`): parsed into whole
//! thousandths (cpu) or whole units (bytes, pods), rounding up as kube-apiserver does.

/// Parses a quantity into its value as a float, or `None` when it is not a quantity.
pub fn parse(quantity: &str) -> Option<f64> {
    let quantity = quantity.trim();
    if quantity.is_empty() {
        return None;
    }
    let split = quantity
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || ((*c == '+' || *c == '-') && *i == 0)))
        .map(|(i, _)| i)
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let number: f64 = number.parse().ok()?;
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => 10f64.powi(exponent[1..].parse().ok()?),
        _ => return None,
    };
    let value = number * multiplier;
    value.is_finite().then_some(value)
}

/// A quantity in thousandths (millicores for cpu), rounded up.
pub fn parse_milli(quantity: &str) -> Option<i64> {
    parse(quantity).map(|v| (v * 1000.0 - 1e-9).ceil() as i64)
}

/// A quantity in whole units (bytes of memory, pods), rounded up.
pub fn parse_units(quantity: &str) -> Option<i64> {
    parse(quantity).map(|v| (v - 1e-9).ceil() as i64)
}

/// A JSON quantity, which may be a string or a bare number.
pub fn of_json(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse_milli("100m"), Some(100));
        assert_eq!(parse_milli("1"), Some(1000));
        assert_eq!(parse_milli("0.5"), Some(500));
        assert_eq!(parse_milli("2.0001"), Some(2001));
        assert_eq!(parse_units("128Mi"), Some(128 * 1024 * 1024));
        assert_eq!(parse_units("1G"), Some(1_000_000_000));
        assert_eq!(parse_units("1.5Gi"), Some(1024 * 1024 * 1024 * 3 / 2));
        assert_eq!(parse_units("2e3"), Some(2000));
        assert_eq!(parse_units("110"), Some(110));
        assert_eq!(parse_units("12Q"), None);
        assert_eq!(parse_units(""), None);
    }
}
