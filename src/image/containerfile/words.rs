//! Docker's processing of instruction arguments into words: splitting at unquoted
//! whitespace, removing quotes and escapes, substituting variables.

use super::quoted;

/// How deeply `${A:-${B:-...}}` may nest: enough for any real file, bounded for hostile ones.
const MAX_NESTING: usize = 8;

/// Splits at whitespace outside quotes and not escaped; quotes and escapes stay for [`expand`].
pub(super) fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quote = None;
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            escaped = false;
        } else if let Some(q) = quote {
            if c == q {
                quote = None;
            } else if c == '\\' && q == '"' {
                escaped = true;
            }
        } else if c.is_whitespace() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            continue;
        } else if c == '\'' || c == '"' {
            quote = Some(c);
        } else if c == '\\' {
            escaped = true;
        }
        current.push(c);
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// Docker's word processing: quotes removed, backslash escapes (in double quotes only of
/// `"`, `$` and `\`), and `$NAME`, `${NAME}`, `${NAME:-DEFAULT}`, `${NAME:+VALUE}` replaced,
/// except in single quotes. Unset variables are empty; their names go to `missing`.
pub(super) fn expand(
    word: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    missing: &mut Vec<String>,
) -> Result<String, String> {
    expand_nested(word, lookup, missing, 0)
}

fn expand_nested(
    word: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    missing: &mut Vec<String>,
    depth: usize,
) -> Result<String, String> {
    if depth > MAX_NESTING {
        return Err(format!(
            "variable substitutions nest too deeply in {}",
            quoted(word)
        ));
    }
    let chars: Vec<char> = word.chars().collect();
    let mut out = String::new();
    let mut quote = None;
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        i += 1;
        match (quote, c) {
            (Some('\''), '\'') | (Some('"'), '"') => quote = None,
            (Some('\''), _) => out.push(c),
            (None, '\'' | '"') => quote = Some(c),
            (Some(_), '\\') => match chars.get(i) {
                Some(&next @ ('"' | '$' | '\\')) => {
                    out.push(next);
                    i += 1;
                }
                _ => out.push('\\'),
            },
            (None, '\\') => {
                out.push(chars.get(i).copied().unwrap_or('\\'));
                i += 1;
            }
            (_, '$') => {
                let (value, end) = substitute(word, &chars, i, lookup, missing, depth)?;
                out.push_str(&value);
                i = end;
            }
            _ => out.push(c),
        }
    }
    if let Some(q) = quote {
        return Err(format!("{} has no closing {q}", quoted(word)));
    }
    Ok(out)
}

/// The value of the variable reference after a `$` at `start`, and where it ends.
fn substitute(
    word: &str,
    chars: &[char],
    start: usize,
    lookup: &dyn Fn(&str) -> Option<String>,
    missing: &mut Vec<String>,
    depth: usize,
) -> Result<(String, usize), String> {
    let is_name_char = |c: &char| c.is_ascii_alphanumeric() || *c == '_';
    let name_end = |from: usize| {
        from + chars[from.min(chars.len())..]
            .iter()
            .take_while(|c| is_name_char(c))
            .count()
    };
    let mut value_of = |name: &str| {
        lookup(name).unwrap_or_else(|| {
            missing.push(name.to_owned());
            String::new()
        })
    };
    match chars.get(start) {
        Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
            let end = name_end(start);
            let name: String = chars[start..end].iter().collect();
            Ok((value_of(&name), end))
        }
        Some('{') => {
            let end = name_end(start + 1);
            let name: String = chars[start + 1..end].iter().collect();
            let bad = || {
                format!(
                    "bad substitution in {}: use $NAME, ${{NAME}}, ${{NAME:-DEFAULT}} or \
                     ${{NAME:+VALUE}}",
                    quoted(word)
                )
            };
            if name.is_empty() {
                return Err(bad());
            }
            match (chars.get(end), chars.get(end + 1)) {
                (Some('}'), _) => Ok((value_of(&name), end + 1)),
                (Some(':'), Some(&operator @ ('-' | '+'))) => {
                    let close = closing_brace(chars, end + 2).ok_or_else(bad)?;
                    let inner: String = chars[end + 2..close].iter().collect();
                    let value = value_of(&name);
                    let result = match (operator, value.is_empty()) {
                        ('-', true) | ('+', false) => {
                            expand_nested(&inner, lookup, missing, depth + 1)?
                        }
                        ('-', false) => value,
                        _ => String::new(),
                    };
                    Ok((result, close + 1))
                }
                _ => Err(bad()),
            }
        }
        _ => Ok(("$".into(), start)),
    }
}

/// The `}` closing a `${` whose contents start at `from`, skipping nested `${...}`.
fn closing_brace(chars: &[char], from: usize) -> Option<usize> {
    let mut open = 0usize;
    let mut i = from;
    while let Some(&c) = chars.get(i) {
        match c {
            '\\' => i += 1,
            '$' if chars.get(i + 1) == Some(&'{') => {
                open += 1;
                i += 1;
            }
            '}' if open == 0 => return Some(i),
            '}' => open -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}
