//! `${VAR}` expansion in every string of the configuration, before it is deserialised.
//!
//! `${VAR}` is replaced by the variable's value (an unset variable is a problem at that key
//! path); `${VAR:-default}` falls back to `default`; `$${` is a literal `${`.

/// Expand every string inside `value` in place; `report(path, message)` receives each problem.
/// Returns `false` when a string in it could not be expanded: tables drop such entries, so that
/// validation never checks a placeholder such as the literal `${WXGATE_JWT_SECRET}`.
pub fn expand_value(
    value: &mut toml::Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    report: &mut dyn FnMut(&str, String),
) -> bool {
    match value {
        toml::Value::String(s) if s.contains('$') => match expand(s, lookup) {
            Ok(expanded) => {
                *s = expanded;
                true
            }
            Err(message) => {
                report(path, message);
                false
            }
        },
        toml::Value::Array(items) => {
            let mut ok = true;
            for (i, item) in items.iter_mut().enumerate() {
                ok &= expand_value(item, &format!("{path}[{i}]"), lookup, report);
            }
            ok
        }
        toml::Value::Table(table) => {
            expand_table(table, path, lookup, report);
            true
        }
        _ => true,
    }
}

/// [`expand_value`] for each entry of a table (`path` empty at the root), dropping the entries
/// that could not be expanded.
pub fn expand_table(
    table: &mut toml::Table,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    report: &mut dyn FnMut(&str, String),
) {
    table.retain(|key, item| {
        let at = if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        };
        expand_value(item, &at, lookup, report)
    });
}

/// Expand one string. The error names every unset variable (never a value).
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut missing: Vec<&str> = Vec::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let Some(end) = tail.find('}') else {
                return Err("unterminated ${ (write $${ for a literal)".into());
            };
            let inner = &tail[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if !valid_name(name) {
                return Err(format!("${{{inner}}}: {name:?} is not a variable name"));
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => missing.push(name),
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    match missing.as_slice() {
        [] => Ok(out),
        [one] => Err(format!("environment variable {one} is not set")),
        many => Err(format!(
            "environment variables {} are not set",
            many.join(", ")
        )),
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_known_variables() {
        assert_eq!(expand("x-${A}-y", &env).as_deref(), Ok("x-alpha-y"));
        assert_eq!(expand("${A}${A}", &env).as_deref(), Ok("alphaalpha"));
        assert_eq!(expand("${EMPTY}", &env).as_deref(), Ok(""));
    }

    #[test]
    fn defaults_and_escapes() {
        assert_eq!(expand("${NOPE:-d}", &env).as_deref(), Ok("d"));
        assert_eq!(expand("${A:-d}", &env).as_deref(), Ok("alpha"));
        assert_eq!(expand("$${A}", &env).as_deref(), Ok("${A}"));
        assert_eq!(expand("cost $5", &env).as_deref(), Ok("cost $5"));
        assert_eq!(expand("end$", &env).as_deref(), Ok("end$"));
    }

    #[test]
    fn entries_that_cannot_be_expanded_are_dropped_and_reported() {
        let mut table: toml::Table = toml::from_str(
            "a = \"${A}\"\nb = \"${NOPE}\"\n[s]\nc = [\"x\", \"${NADA}\"]\nd = \"${A}\"",
        )
        .unwrap();
        let mut reported = Vec::new();
        expand_table(&mut table, "", &env, &mut |path, message| {
            reported.push(format!("{path}: {message}"))
        });
        assert_eq!(
            reported,
            [
                "b: environment variable NOPE is not set",
                "s.c[1]: environment variable NADA is not set"
            ]
        );
        assert_eq!(table["a"].as_str(), Some("alpha"));
        assert!(!table.contains_key("b"));
        assert!(!table["s"].as_table().unwrap().contains_key("c"));
        assert_eq!(table["s"]["d"].as_str(), Some("alpha"));
    }

    #[test]
    fn unset_and_malformed_are_errors() {
        assert_eq!(
            expand("${NOPE}", &env),
            Err("environment variable NOPE is not set".into())
        );
        assert!(expand("${NOPE}${NADA}", &env)
            .unwrap_err()
            .contains("NOPE, NADA"));
        assert!(expand("${A", &env).is_err());
        assert!(expand("${1A}", &env).is_err());
        assert!(expand("${}", &env).is_err());
    }
}
