//! The layers point down only: `http` and `jobs` call `service`; `service` calls `stores` and `db`;
//! `stores` and `db` know nothing above them; everything may use `gateway_core` and the leaf modules
//! (`config`, `model`, `telemetry`, `backoff`). SQL is written in `db` alone.
//!
//! This reads the source, so a new upward reference fails here with the file and line that makes it.
//! `ALLOWED` lists the references still waiting to be moved; it only ever shrinks.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// The layers a module may not reference, by the folder it lives in.
const FORBIDDEN: &[(&str, &[&str])] = &[
    ("db", &["service", "stores", "jobs", "http"]),
    ("stores", &["service", "db", "jobs", "http"]),
    ("service", &["jobs", "http"]),
    ("jobs", &["http"]),
];

/// Upward references not moved yet: `(file under src/, layer it names)`.
const ALLOWED: &[(&str, &str)] = &[];

/// Files outside `db/` that still hold SQL.
const SQL_ALLOWED: &[&str] = &[];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a line, without its comment (doc links name modules without depending on them).
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// The top-level modules `code` names through `crate::` (including `crate::{a::x, b}` groups, over
/// several lines), each with the byte offset where it is named.
fn named(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find("crate::") {
        let at = from + i + "crate::".len();
        from = at;
        let rest = &code[at..];
        let Some(group) = rest.strip_prefix('{') else {
            let word: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push((at, word));
            continue;
        };
        let mut depth = 0;
        let mut word = String::new();
        let mut at_start = true;
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => at_start = true,
                c if depth == 0 && at_start && (c.is_alphanumeric() || c == '_') => word.push(c),
                c => {
                    if !word.is_empty() {
                        out.push((at, std::mem::take(&mut word)));
                    }
                    if !c.is_whitespace() {
                        at_start = false;
                    }
                }
            }
        }
        if !word.is_empty() {
            out.push((at, word));
        }
    }
    out
}

#[test]
fn the_layers_point_down_and_sql_stays_in_db() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    let mut used_allowances = Vec::new();
    for path in &files {
        let rel = path
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        let layer = rel.split('/').next().unwrap_or_default();
        let forbidden = FORBIDDEN
            .iter()
            .find(|(l, _)| *l == layer)
            .map_or(&[][..], |(_, f)| *f);
        let text = fs::read_to_string(path).expect("a source file is readable");
        let code: String = text.lines().map(code).collect::<Vec<_>>().join("\n");
        for (at, module) in named(&code) {
            if !forbidden.contains(&module.as_str()) {
                continue;
            }
            if ALLOWED.contains(&(rel.as_str(), module.as_str())) {
                used_allowances.push((rel.clone(), module));
            } else {
                let line = code[..at].lines().count();
                wrong.push(format!(
                    "src/{rel}:{line}: `{layer}` names `crate::{module}`"
                ));
            }
        }
        if layer != "db" && text.contains("sqlx::query") {
            if SQL_ALLOWED.contains(&rel.as_str()) {
                used_allowances.push((rel.clone(), "sql".into()));
            } else {
                wrong.push(format!("src/{rel}: SQL outside db/"));
            }
        }
    }
    assert!(wrong.is_empty(), "upward references:\n{}", wrong.join("\n"));
    for (file, module) in ALLOWED {
        assert!(
            used_allowances
                .iter()
                .any(|(f, m)| f == file && m == module),
            "src/{file} no longer names `{module}`: take it off ALLOWED"
        );
    }
    for file in SQL_ALLOWED {
        assert!(
            used_allowances.iter().any(|(f, m)| f == file && m == "sql"),
            "src/{file} holds no SQL any more: take it off SQL_ALLOWED"
        );
    }
}

#[test]
fn grouped_imports_are_read() {
    let modules = |code: &str| -> Vec<String> { named(code).into_iter().map(|(_, m)| m).collect() };
    assert_eq!(
        modules("use crate::{\n    db::{self, Db},\n    service::x, model::App,\n};"),
        ["db", "service", "model"]
    );
    assert_eq!(modules("let d = crate::jobs::backoff(1);"), ["jobs"]);
}
