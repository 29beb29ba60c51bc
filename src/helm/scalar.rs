//! Plain YAML scalars typed the way Helm reads them, and numbers formatted the
//! way Go formats them — what the JSON form needs to decode, in Helm, to exactly
//! what the YAML form decodes to.
//!
//! Helm reads a YAML index with `sigs.k8s.io/yaml`, which decodes it with its fork
//! of go-yaml **v2** (YAML 1.1 typing: `yes`/`on`/`y` are booleans, `010` is octal,
//! `1.10` is the float 1.1, `~` is null) into untyped values, converts them to JSON
//! (coercing numbers and booleans to strings where the target field is a string,
//! with Go's `strconv` formatting), and decodes that JSON into its structs.
//! [`resolve`] is go-yaml v2's `resolve()` for untagged plain scalars; the
//! `go_*` functions are the `strconv` calls of that conversion. Quoted and block
//! scalars are always strings and never come here.

/// A plain scalar's value as go-yaml v2 resolves it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resolved {
    Null,
    Bool(bool),
    Int(i64),
    /// Only for integers above `i64::MAX` (go-yaml tries `int64`, then `uint64`).
    Uint(u64),
    Float(f64),
    /// A string: the scalar's own text.
    Str,
}

/// go-yaml v2's typing of an untagged plain scalar.
pub fn resolve(s: &str) -> Resolved {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Resolved::Bool(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Resolved::Bool(false)
        }
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        _ => {}
    }
    match s.as_bytes()[0] {
        // Not in the table above: maybe a float such as `.5`.
        b'.' => go_parse_float(s).map_or(Resolved::Str, Resolved::Float),
        b'0'..=b'9' | b'+' | b'-' => {
            // Timestamps (`2024-01-02...`) resolve to a time that go-yaml hands to
            // an untyped target as its text; they fail every test below anyway.
            let plain: String = s.chars().filter(|&c| c != '_').collect();
            if let Some(i) = go_parse_int(&plain) {
                return Resolved::Int(i);
            }
            if let Some(u) = go_parse_uint(&plain) {
                return Resolved::Uint(u);
            }
            if yaml_style_float(&plain) {
                if let Some(f) = go_parse_float(&plain) {
                    return Resolved::Float(f);
                }
            }
            Resolved::Str
        }
        _ => Resolved::Str,
    }
}

/// Go's `strconv.ParseFloat(s, 64)` for the decimal forms that reach it: an
/// overflow (±Inf) is an error there, so it is `None` here.
fn go_parse_float(s: &str) -> Option<f64> {
    let digits_ok = s
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if !digits_ok {
        return None;
    }
    s.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$` (go-yaml's `yamlStyleFloat`).
fn yaml_style_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// The base of a Go integer literal (base 0 parsing) and its digits.
fn go_int_base(s: &str) -> (u32, &str) {
    let b = s.as_bytes();
    if b.len() >= 2 && b[0] == b'0' {
        match b[1] {
            b'x' | b'X' => return (16, &s[2..]),
            b'o' | b'O' => return (8, &s[2..]),
            b'b' | b'B' => return (2, &s[2..]),
            _ => return (8, &s[1..]),
        }
    }
    (10, s)
}

fn go_parse_magnitude(digits: &str, base: u32) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| (b as char).is_digit(base)) {
        return None;
    }
    u64::from_str_radix(digits, base).ok()
}

/// Go's `strconv.ParseInt(s, 0, 64)` (underscores already removed).
fn go_parse_int(s: &str) -> Option<i64> {
    let (neg, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (base, digits) = go_int_base(rest);
    let m = go_parse_magnitude(digits, base)?;
    if neg {
        if m == 1 << 63 {
            Some(i64::MIN)
        } else {
            i64::try_from(m).ok().map(|v| -v)
        }
    } else {
        i64::try_from(m).ok()
    }
}

/// Go's `strconv.ParseUint(s, 0, 64)` (no sign allowed).
fn go_parse_uint(s: &str) -> Option<u64> {
    let (base, digits) = go_int_base(s);
    go_parse_magnitude(digits, base)
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 32)`: the shortest decimal that reads
/// back as the same `float32`, in `%e` form when the exponent is < -4 or >= 6
/// (two-digit exponent at least), else in `%f` form.
pub fn go_format_float32_g(f: f64) -> String {
    let f = f as f32;
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    // Rust's `{:e}` is the shortest round-trip form too: `d[.ddd]e<exp>`.
    let e = format!("{f:e}");
    let (neg, e) = match e.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, e.as_str()),
    };
    let (mantissa, exp) = e.split_once('e').unwrap_or((e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::with_capacity(digits.len() + 8);
    if neg {
        out.push('-');
    }
    if !(-4..6).contains(&exp) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let a = exp.unsigned_abs();
        if a < 10 {
            out.push('0');
        }
        out.push_str(&a.to_string());
    } else if exp < 0 {
        out.push_str("0.");
        for _ in 0..(-exp - 1) {
            out.push('0');
        }
        out.push_str(&digits);
    } else {
        let dp = exp as usize + 1;
        if digits.len() <= dp {
            out.push_str(&digits);
            for _ in digits.len()..dp {
                out.push('0');
            }
        } else {
            out.push_str(&digits[..dp]);
            out.push('.');
            out.push_str(&digits[dp..]);
        }
    }
    out
}

/// The text sigs.k8s.io/yaml puts in a string field for a plain scalar that
/// go-yaml typed as something else (`None`: leave it as it is — a string, or null).
pub fn as_go_string(r: Resolved) -> Option<String> {
    match r {
        Resolved::Int(i) => Some(i.to_string()),
        Resolved::Uint(u) => Some(u.to_string()),
        Resolved::Float(f) => Some(go_format_float32_g(f)),
        Resolved::Bool(b) => Some(b.to_string()),
        Resolved::Null | Resolved::Str => None,
    }
}

/// A mapping key as sigs.k8s.io/yaml turns it into a JSON key (`None`: a null key,
/// which it refuses).
pub fn go_key(text: &str, plain: bool) -> Option<String> {
    if !plain {
        return Some(text.to_string());
    }
    match resolve(text) {
        Resolved::Null => None,
        Resolved::Str => Some(text.to_string()),
        Resolved::Float(f) if f.is_nan() => Some(".nan".into()),
        Resolved::Float(f) if f.is_infinite() => {
            Some(if f > 0.0 { ".inf" } else { "-.inf" }.into())
        }
        other => as_go_string(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_1_1_typing_as_go_yaml_v2() {
        use Resolved::*;
        for (s, want) in [
            ("", Null),
            ("~", Null),
            ("NULL", Null),
            ("yes", Bool(true)),
            ("On", Bool(true)),
            ("y", Bool(true)),
            ("N", Bool(false)),
            ("off", Bool(false)),
            ("1", Int(1)),
            ("-12", Int(-12)),
            ("+7", Int(7)),
            ("010", Int(8)),
            ("0x1F", Int(31)),
            ("0b101", Int(5)),
            ("0o17", Int(15)),
            ("1_000", Int(1000)),
            ("08", Float(8.0)),
            ("1.10", Float(1.1)),
            (".5", Float(0.5)),
            ("1e3", Float(1000.0)),
            ("-1.5E-2", Float(-0.015)),
            ("18446744073709551615", Uint(u64::MAX)),
            ("1e400", Str),
            ("1.2.3", Str),
            ("v1", Str),
            ("2024-01-02T03:04:05Z", Str),
            ("0x", Str),
            ("-", Str),
            ("yes please", Str),
            ("True", Bool(true)),
            ("tRUE", Str),
        ] {
            assert_eq!(resolve(s), want, "{s:?}");
        }
        assert!(matches!(resolve(".nan"), Float(f) if f.is_nan()));
        assert_eq!(resolve("-.inf"), Float(f64::NEG_INFINITY));
    }

    #[test]
    fn floats_format_like_go_strconv_g_32() {
        for (f, want) in [
            (1.1, "1.1"),
            (2.0, "2"),
            (0.0, "0"),
            (-0.0, "-0"),
            (1000.0, "1000"),
            (123456.0, "123456"),
            (1234567.0, "1.234567e+06"),
            (1e21, "1e+21"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-0.015, "-0.015"),
            (2.71, "2.71"),
            (0.1, "0.1"),
            (16777217.0, "1.6777216e+07"),
            (f64::INFINITY, "+Inf"),
        ] {
            assert_eq!(go_format_float32_g(f), want, "{f}");
        }
    }

    #[test]
    fn keys_become_strings_as_sigs_yaml_makes_them() {
        assert_eq!(go_key("1.10", true).as_deref(), Some("1.1"));
        assert_eq!(go_key("1.10", false).as_deref(), Some("1.10"));
        assert_eq!(go_key("yes", true).as_deref(), Some("true"));
        assert_eq!(go_key("010", true).as_deref(), Some("8"));
        assert_eq!(go_key(".inf", true).as_deref(), Some(".inf"));
        assert_eq!(go_key("~", true), None);
        assert_eq!(go_key("name", true).as_deref(), Some("name"));
    }
}
