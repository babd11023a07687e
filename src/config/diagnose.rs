//! Turning TOML and serde errors into the admin's words: every error found in one pass (the
//! offending line set aside and parsing retried), each with its line and column.

use super::raw::RawConfig;
use super::ConfigIssue;

/// Line and column (1-based) of a byte offset.
pub(super) fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

/// Deserializes the raw config, collecting every error: after each error the offending line
/// (or a whole unknown table) is commented out and parsing is retried. Returns what finally
/// parsed (None after a syntax error), the text it parsed, and the errors.
pub(super) fn parse_all(text: &str) -> (Option<RawConfig>, String, Vec<ConfigIssue>) {
    let mut issues = Vec::new();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..100 {
        let current = lines.join("\n");
        match toml::from_str::<RawConfig>(&current) {
            Ok(raw) => return (Some(raw), current, issues),
            Err(e) => {
                let span = e.span();
                let (line, column) = span.as_ref().map(|s| position(&current, s.start)).unwrap_or((0, 0));
                let text = current.lines().nth(line.wrapping_sub(1)).unwrap_or("");
                issues.push(ConfigIssue { line, column, reason: plain_words(e.message(), text) });
                if span.is_none() || line == 0 || line > lines.len() || is_syntax_error(e.message()) {
                    break;
                }
                let idx = line - 1;
                if lines[idx].trim_start().starts_with('[') {
                    // An unknown or bad table: drop its header and its keys.
                    lines[idx] = format!("# {}", lines[idx]);
                    for l in lines.iter_mut().skip(idx + 1) {
                        if l.trim_start().starts_with('[') {
                            break;
                        }
                        *l = format!("# {l}");
                    }
                } else {
                    lines[idx] = format!("# {}", lines[idx]);
                }
            }
        }
    }
    issues.sort_by_key(|i| (i.line, i.column));
    (None, String::new(), issues)
}

/// The TOML parser's message, with the common mistakes said in plain words: an unquoted word,
/// a quoted number, a decimal comma, a word where a number or a yes/no belongs. `line` is the
/// offending line of the file.
pub(super) fn plain_words(msg: &str, line: &str) -> String {
    let (key, value) = match line.split_once('=') {
        Some((k, v)) => (k.trim(), v.split('#').next().unwrap_or("").trim()),
        None => ("", ""),
    };
    let unquoted = value.trim_matches('"');
    let kind = |expected: &str| match expected {
        "i64" | "u64" | "usize" | "u32" => Some(("a whole number", "2")),
        "f64" | "f32" => Some(("a number", "0.5")),
        "a boolean" => Some(("true or false", "true")),
        "a string" => Some(("text in double quotes", "\"text\"")),
        _ => None,
    };
    if msg.starts_with("invalid string") && !key.is_empty() {
        return format!("{key} = {value}: text must be in double quotes, e.g. {key} = \"{value}\" (numbers are plain digits, e.g. 2 or 0.5; yes/no is true or false)");
    }
    if msg.starts_with("expected newline") && !key.is_empty() && value.contains(',') && value.replace(',', "").chars().all(|c| c.is_ascii_digit() || c == '-') {
        return format!("{key} = {value}: a decimal number takes a point, not a comma: {key} = {}", value.replacen(',', ".", 1));
    }
    if let Some(rest) = msg.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.rsplit_once(", expected ") {
            if let Some((what, example)) = kind(expected) {
                let hint = if found.starts_with("string") && unquoted.parse::<f64>().is_ok() {
                    format!("remove the quotes: {key} = {unquoted}")
                } else {
                    format!("e.g. {key} = {example}")
                };
                return format!("{key} = {value}: expected {what}; {hint}");
            }
        }
    }
    msg.replace('\n', "; ")
}

pub(super) fn is_syntax_error(msg: &str) -> bool {
    // Errors from the TOML grammar itself make the rest of the file unreliable: stop there.
    ["invalid", "expected", "unclosed", "duplicate key"].iter().any(|w| msg.starts_with(w))
        && !msg.starts_with("invalid type")
        && !msg.starts_with("invalid value")
        && !msg.starts_with("expected a")
}
