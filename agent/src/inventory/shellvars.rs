//! `KEY=value` files in shell syntax: os-release, ifcfg-*, /etc/selinux/config,
//! /etc/sysconfig/*. Only assignments are understood; anything else is skipped.

/// The assignments of `text` in order (a later one overrides an earlier one for [`get`]).
pub fn parse(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, rest)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim_end();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        out.push((key.to_string(), unquote(rest)));
    }
    out
}

/// The last value of `key`, if assigned.
pub fn get<'a>(vars: &'a [(String, String)], key: &str) -> Option<&'a str> {
    vars.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The value of one assignment's right-hand side: quotes removed, `\` escapes in double
/// quotes and bare words resolved, an unquoted `#` starting a comment.
fn unquote(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    out.push(c);
                }
            }
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(&n) = chars.peek()
                                && matches!(n, '"' | '\\' | '$' | '`')
                            {
                                out.push(n);
                                chars.next();
                                continue;
                            }
                            out.push('\\');
                        }
                        _ => out.push(c),
                    }
                }
            }
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            '#' if out.is_empty() || out.ends_with(char::is_whitespace) => break,
            c if c.is_whitespace() => {
                // Unquoted blanks end the word (`KEY=a b` runs `b`); keep what we have.
                break;
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        let v = parse(
            "# c\nA=plain\nB=\"dq \\\"x\\\" $y\"\nC='sq # not comment'\nexport D=1 # comment\n\
             E=\nnot an assignment\nF-G=bad\n  H = spaced\nI=a\\ b\nA=again\n",
        );
        assert_eq!(get(&v, "A"), Some("again"));
        assert_eq!(get(&v, "B"), Some("dq \"x\" $y"));
        assert_eq!(get(&v, "C"), Some("sq # not comment"));
        assert_eq!(get(&v, "D"), Some("1"));
        assert_eq!(get(&v, "E"), Some(""));
        assert_eq!(get(&v, "F-G"), None);
        assert_eq!(get(&v, "H"), Some(""));
        assert_eq!(get(&v, "I"), Some("a b"));
        assert_eq!(get(&v, "missing"), None);
    }

    #[test]
    fn unterminated_quotes_do_not_panic() {
        let v = parse("A=\"open\nB='open\nC=\\");
        assert_eq!(get(&v, "A"), Some("open"));
        assert_eq!(get(&v, "B"), Some("open"));
        assert_eq!(get(&v, "C"), Some(""));
    }
}
