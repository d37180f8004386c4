//! What one source file says about the module tree and its dependencies: the child modules it
//! declares, its inline modules, and every path starting at `crate`, `super` or `self`, made
//! absolute. Items under `#[cfg(test)]` are skipped whole.

use crate::lex::{lex, Tok};
use crate::ModPath;

/// What one file says: the child modules it declares from files, and its dependencies.
#[derive(Default)]
pub struct FileFacts {
    /// Name and `#[path]` of each `mod NAME;` not under `#[cfg(test)]`.
    pub children: Vec<(String, Option<String>)>,
    /// Inline modules (`mod NAME { … }`) not under `#[cfg(test)]`, as full paths.
    pub inline: Vec<ModPath>,
    /// The module the code is in, and the absolute path it names, with its line.
    pub uses: Vec<(ModPath, ModPath, usize)>,
}

/// Reads one file of module `module`.
pub fn scan(module: &ModPath, source: &str) -> FileFacts {
    let tokens = lex(source);
    let tok = |i: usize| tokens.get(i).map(|(t, _)| t);
    let ident = |i: usize, name: &str| matches!(tok(i), Some(Tok::Ident(n)) if n == name);
    let mut facts = FileFacts::default();
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let (mut test, mut path_attr) = (false, None);
    let mut i = 0;
    let current = |inline: &[(String, usize)]| -> ModPath {
        module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect()
    };
    while i < tokens.len() {
        match &tokens[i].0 {
            Tok::Punct('#') if tok(i + 1) == Some(&Tok::Punct('[')) => {
                let end = matching(&tokens, i + 1);
                let attr: Vec<&Tok> = tokens[i + 2..end].iter().map(|(t, _)| t).collect();
                match attr.as_slice() {
                    [Tok::Ident(cfg), Tok::Punct('('), Tok::Ident(t), Tok::Punct(')')]
                        if cfg == "cfg" && t == "test" =>
                    {
                        test = true;
                    }
                    [Tok::Ident(p), Tok::Punct('='), Tok::Str(value)] if p == "path" => {
                        path_attr = Some(value.clone());
                    }
                    _ => {}
                }
                i = end + 1;
                continue;
            }
            Tok::Punct('#') if tok(i + 1) == Some(&Tok::Punct('!')) => {
                i = matching(&tokens, i + 2) + 1;
                continue;
            }
            _ => {}
        }
        // The item the attributes above belong to starts here.
        let mut item = i;
        if ident(item, "pub") {
            item += 1;
            if tok(item) == Some(&Tok::Punct('(')) {
                item = matching(&tokens, item) + 1;
            }
        }
        let declared = ident(item, "mod")
            .then(|| match tok(item + 1) {
                Some(Tok::Ident(name)) => Some((name.clone(), tok(item + 2).cloned())),
                _ => None,
            })
            .flatten();
        let (was_test, was_path) = (test, path_attr.take());
        test = false;
        if was_test {
            i = skip_item(&tokens, i);
            continue;
        }
        match declared {
            Some((name, Some(Tok::Punct(';')))) => {
                facts.children.push((name, was_path));
                i = item + 3;
                continue;
            }
            Some((name, Some(Tok::Punct('{')))) => {
                depth += 1;
                inline.push((name, depth));
                facts.inline.push(current(&inline));
                i = item + 3;
                continue;
            }
            _ => {}
        }
        match &tokens[i].0 {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                if inline.last().is_some_and(|&(_, d)| d == depth) {
                    inline.pop();
                }
                depth -= 1;
            }
            Tok::Ident(kw) if kw == "use" => {
                let end = (i..tokens.len())
                    .find(|&j| tokens[j].0 == Tok::Punct(';'))
                    .unwrap_or(tokens.len());
                let here = current(&inline);
                let mut paths = Vec::new();
                use_tree(&tokens[i + 1..end], Vec::new(), &mut paths);
                for path in paths {
                    if let Some(target) = resolve(&here, &path) {
                        facts.uses.push((here.clone(), target, tokens[i].1));
                    }
                }
                i = end + 1;
                continue;
            }
            Tok::Ident(first) if matches!(first.as_str(), "crate" | "super" | "self") => {
                let mut path = vec![first.clone()];
                let mut j = i + 1;
                while tok(j) == Some(&Tok::PathSep) {
                    let Some(Tok::Ident(segment)) = tok(j + 1) else {
                        break;
                    };
                    path.push(segment.clone());
                    j += 2;
                }
                if path.len() > 1 {
                    let here = current(&inline);
                    if let Some(target) = resolve(&here, &path) {
                        facts.uses.push((here, target, tokens[i].1));
                    }
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    facts
}

/// The index of the bracket closing the one at `open`.
fn matching(tokens: &[(Tok, usize)], open: usize) -> usize {
    let mut depth = 0;
    for (j, (t, _)) in tokens.iter().enumerate().skip(open) {
        match t {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return j;
                }
            }
            _ => {}
        }
    }
    tokens.len()
}

/// The index after the item starting at `start`: its `;`, or its body's closing brace.
fn skip_item(tokens: &[(Tok, usize)], start: usize) -> usize {
    let mut j = start;
    while j < tokens.len() {
        match tokens[j].0 {
            Tok::Punct(';') => return j + 1,
            Tok::Punct('{') => return matching(tokens, j) + 1,
            Tok::Punct('(' | '[') => j = matching(tokens, j) + 1,
            _ => j += 1,
        }
    }
    j
}

/// Every path a `use` tree names (`a::{b, c::{d, e as f}, *}`), each as its segments.
fn use_tree(tokens: &[(Tok, usize)], prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    if tokens.is_empty() {
        return;
    }
    let mut path = prefix;
    let mut j = 0;
    while j < tokens.len() {
        match &tokens[j].0 {
            Tok::Ident(name) if name == "as" => break,
            Tok::Ident(name) => path.push(name.clone()),
            Tok::Punct('{') => {
                let end = matching(tokens, j);
                let mut k = j + 1;
                let mut depth = 0;
                let mut begin = k;
                while k <= end {
                    match tokens.get(k).map(|(t, _)| t) {
                        Some(Tok::Punct('{')) => depth += 1,
                        Some(Tok::Punct('}')) if depth > 0 => depth -= 1,
                        Some(Tok::Punct(',')) if depth == 0 => {
                            use_tree(&tokens[begin..k], path.clone(), out);
                            begin = k + 1;
                        }
                        _ if k == end => use_tree(&tokens[begin..k], path.clone(), out),
                        _ => {}
                    }
                    k += 1;
                }
                return;
            }
            _ => {}
        }
        j += 1;
    }
    out.push(path);
}

/// The absolute path `path` names when written in `here`, if it starts at `crate`, `super` or
/// `self`.
fn resolve(here: &ModPath, path: &[String]) -> Option<ModPath> {
    let mut target = match path.first()?.as_str() {
        "crate" => Vec::new(),
        "self" | "super" => here.clone(),
        _ => return None,
    };
    let mut rest = &path[usize::from(path[0] == "crate")..];
    while let Some(first) = rest.first() {
        match first.as_str() {
            "self" => {}
            "super" => {
                target.pop()?;
            }
            _ => break,
        }
        rest = &rest[1..];
    }
    target.extend(rest.iter().cloned());
    Some(target)
}
