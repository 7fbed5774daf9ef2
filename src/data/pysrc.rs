//! A small, conservative splitter of *trusted* Python source (dataset prompts and test code)
//! into top-level statements, without a Python interpreter.
//!
//! It tracks only what decides where a logical line starts: strings (single, triple, with
//! escapes), comments, bracket depth and backslash continuations, plus indentation. It does
//! not validate Python; on anything it cannot follow (unterminated string, unbalanced
//! brackets, an unexpected indent) it returns an error and the caller falls back to a
//! safe, unsplit form. Never used on model output.

use std::collections::BTreeSet;

/// One statement of a block: the physical lines `[start, end)` of the source, and the
/// identifiers/keywords that occur in it outside strings and comments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Statement {
    pub start: usize,
    pub end: usize,
    pub words: BTreeSet<String>,
}

/// A logical line (a statement header or a simple statement), before grouping into blocks.
#[derive(Debug, Clone)]
struct LogicalLine {
    start: usize,
    end: usize,
    indent: usize,
    words: BTreeSet<String>,
}

/// Physical lines of `src`, each without its line terminator (`\n`, `\r\n` or a lone `\r`
/// is not treated as a terminator: the data sets use `\n` and `\r\n`).
pub(crate) fn physical_lines(src: &str) -> Vec<&str> {
    src.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect()
}

/// Indentation width of a line, expanding tabs to the next multiple of 8 as CPython does.
fn indent_width(line: &str) -> usize {
    let mut col = 0;
    for c in line.chars() {
        match c {
            ' ' => col += 1,
            '\t' => col = (col / 8 + 1) * 8,
            '\x0c' => col = 0,
            _ => break,
        }
    }
    col
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim_start_matches([' ', '\t', '\x0c']);
    t.is_empty() || t.starts_with('#')
}

fn logical_lines(lines: &[&str]) -> Result<Vec<LogicalLine>, String> {
    let mut out: Vec<LogicalLine> = Vec::new();
    // (quote char, triple-quoted) while inside a string that spans lines.
    let mut string: Option<(char, bool)> = None;
    let mut depth: i64 = 0;
    let mut continued = false;

    for (i, line) in lines.iter().enumerate() {
        let open = string.is_some() || depth > 0 || continued;
        if !open {
            if is_blank_or_comment(line) {
                continue;
            }
            out.push(LogicalLine {
                start: i,
                end: i + 1,
                indent: indent_width(line),
                words: BTreeSet::new(),
            });
        } else if let Some(last) = out.last_mut() {
            last.end = i + 1;
        } else {
            return Err(format!("line {}: continuation without a statement", i + 1));
        }
        continued = false;
        let words = &mut out.last_mut().expect("pushed above").words;

        let chars: Vec<char> = line.chars().collect();
        let mut j = 0;
        while j < chars.len() {
            let c = chars[j];
            if let Some((q, triple)) = string {
                if c == '\\' {
                    j += 2;
                    continue;
                }
                if c == q {
                    if !triple {
                        string = None;
                    } else if chars.get(j + 1) == Some(&q) && chars.get(j + 2) == Some(&q) {
                        string = None;
                        j += 3;
                        continue;
                    }
                }
                j += 1;
                continue;
            }
            match c {
                '#' => break,
                '\'' | '"' => {
                    let triple = chars.get(j + 1) == Some(&c) && chars.get(j + 2) == Some(&c);
                    string = Some((c, triple));
                    j += if triple { 3 } else { 1 };
                    continue;
                }
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => {
                    depth -= 1;
                    if depth < 0 {
                        return Err(format!("line {}: unbalanced `{c}`", i + 1));
                    }
                }
                '\\' if j + 1 == chars.len() => continued = true,
                c if c.is_alphabetic() || c == '_' => {
                    let start = j;
                    while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                        j += 1;
                    }
                    words.insert(chars[start..j].iter().collect());
                    continue;
                }
                _ => {}
            }
            j += 1;
        }
        if let Some((_, false)) = string {
            // A single-quoted string only continues past the line end after a backslash.
            if line.ends_with('\\') {
                continued = true;
            } else {
                return Err(format!("line {}: unterminated string", i + 1));
            }
        }
    }
    if string.is_some() {
        return Err("unterminated string at end of source".into());
    }
    if depth != 0 {
        return Err("unbalanced brackets at end of source".into());
    }
    if continued {
        return Err("backslash continuation at end of source".into());
    }
    Ok(out)
}

/// Group logical lines into the statements of one block: a statement is a logical line at
/// the block's indentation plus every following, more indented logical line (its suite).
fn group(lines: &[LogicalLine]) -> Result<Vec<Statement>, String> {
    let Some(first) = lines.first() else {
        return Ok(Vec::new());
    };
    let indent = first.indent;
    let mut out: Vec<Statement> = Vec::new();
    for l in lines {
        if l.indent < indent {
            return Err(format!("line {}: dedent below the block", l.start + 1));
        }
        if l.indent > indent {
            let last = out
                .last_mut()
                .ok_or_else(|| format!("line {}: unexpected indent", l.start + 1))?;
            last.end = l.end;
            last.words.extend(l.words.iter().cloned());
            continue;
        }
        out.push(Statement {
            start: l.start,
            end: l.end,
            words: l.words.clone(),
        });
    }
    Ok(out)
}

/// Top-level statements of a whole module.
pub(crate) fn module_statements(src: &str) -> Result<Vec<Statement>, String> {
    let lines = physical_lines(src);
    let logical = logical_lines(&lines)?;
    if let Some(l) = logical.first() {
        if l.indent != 0 {
            return Err(format!("line {}: unexpected indent", l.start + 1));
        }
    }
    merge_decorators(group(&logical)?, &lines)
}

/// Statements of the suite (body) of the compound statement `stmt`, whose header is one
/// logical line ending in `:` with nothing after it.
pub(crate) fn suite_statements(src: &str, stmt: &Statement) -> Result<Vec<Statement>, String> {
    let lines = physical_lines(src);
    let logical = logical_lines(&lines[..stmt.end])?;
    let body: Vec<LogicalLine> = logical
        .into_iter()
        .filter(|l| l.start > stmt.start && l.start < stmt.end)
        .collect();
    if body.is_empty() {
        return Err(format!("line {}: empty or one-line suite", stmt.start + 1));
    }
    merge_decorators(group(&body)?, &lines)
}

fn merge_decorators(stmts: Vec<Statement>, lines: &[&str]) -> Result<Vec<Statement>, String> {
    let mut out: Vec<Statement> = Vec::new();
    let mut pending: Option<Statement> = None;
    for s in stmts {
        let is_decorator = lines[s.start].trim_start().starts_with('@');
        let s = match pending.take() {
            Some(mut p) => {
                p.end = s.end;
                p.words.extend(s.words);
                p
            }
            None => s,
        };
        if is_decorator {
            pending = Some(s);
        } else {
            out.push(s);
        }
    }
    if let Some(p) = pending {
        return Err(format!(
            "line {}: decorator without a definition",
            p.start + 1
        ));
    }
    Ok(out)
}

/// Python's `str.strip()`: Rust's Unicode `White_Space` set plus U+001C..U+001F, which
/// `str.isspace()` also counts (bidi class B/S).
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// The source text of physical lines `[start, end)`, joined with `\n`.
pub(crate) fn text(src: &str, start: usize, end: usize) -> String {
    physical_lines(src)[start..end].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_module_with_strings_brackets_and_decorators() {
        let src = "import math\n\n\
                   def f(x):\n    \"\"\"doc with ''' and \"quotes\"\n\n  odd indent\n    \"\"\"\n    return (x +\n  1)\n\
                   # comment\n\
                   @dec\n@dec2(1)\ndef g():\n    s = 'a#b' \\\n        + \"c\"\n    return s\n\
                   X = [1,\n2]\n";
        let st = module_statements(src).unwrap();
        let texts: Vec<String> = st.iter().map(|s| text(src, s.start, s.end)).collect();
        assert_eq!(texts.len(), 4, "{texts:#?}");
        assert_eq!(texts[0], "import math");
        assert!(texts[1].starts_with("def f(x):") && texts[1].ends_with("  1)"));
        assert!(texts[2].starts_with("@dec\n@dec2(1)\ndef g():") && texts[2].ends_with("return s"));
        assert_eq!(texts[3], "X = [1,\n2]");
        assert!(st[1].words.contains("return") && !st[1].words.contains("odd"));
        assert!(!st[2].words.contains("b"), "string contents are not words");
    }

    #[test]
    fn suite_of_a_function() {
        let src = "def check(candidate):\n    import random\n    for i in range(3):\n        assert candidate(i)\n\n    assert candidate(\n1)\nMETA = 1\n";
        let st = module_statements(src).unwrap();
        assert_eq!(st.len(), 2);
        let body = suite_statements(src, &st[0]).unwrap();
        let texts: Vec<String> = body.iter().map(|s| text(src, s.start, s.end)).collect();
        assert_eq!(
            texts,
            vec![
                "    import random",
                "    for i in range(3):\n        assert candidate(i)",
                "    assert candidate(\n1)"
            ]
        );
        assert!(body[1].words.contains("assert") && !body[0].words.contains("assert"));
    }

    #[test]
    fn rejects_what_it_cannot_follow() {
        assert!(module_statements("x = '''open\n").is_err());
        assert!(module_statements("x = (1,\n").is_err());
        assert!(module_statements("  x = 1\n").is_err());
        assert!(module_statements("x = 'a\ny'\n").is_err());
        assert!(module_statements("@dec\n").is_err());
        let src = "def check(candidate): assert candidate(1)\n";
        let st = module_statements(src).unwrap();
        assert!(suite_statements(src, &st[0]).is_err());
    }

    #[test]
    fn strip_matches_python() {
        // Python: [c for c in map(chr, range(0x110000)) if c.isspace()]
        let py: Vec<u32> = [
            0x9, 0xa, 0xb, 0xc, 0xd, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000,
            0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028,
            0x2029, 0x202f, 0x205f, 0x3000,
        ]
        .to_vec();
        let ours: Vec<u32> = (0..0x110000u32)
            .filter_map(char::from_u32)
            .filter(|c| py_strip(&c.to_string()).is_empty())
            .map(|c| c as u32)
            .collect();
        assert_eq!(ours, py);
    }

    #[test]
    fn crlf_and_tabs() {
        let src = "def f():\r\n\treturn 1\r\nY = 2\r\n";
        let st = module_statements(src).unwrap();
        assert_eq!(st.len(), 2);
        assert_eq!(text(src, st[0].start, st[0].end), "def f():\n\treturn 1");
    }
}
