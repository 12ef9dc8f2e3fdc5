//! Output: aligned tables (the default) or JSON (`--format json`).

use serde_json::Value;

/// A cell's text: strings as they are, everything else as compact JSON, absent as empty.
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn pick<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// An aligned table of `columns` (dotted paths) over a JSON list.
pub fn render(items: &[Value], columns: &[&str]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| columns.iter().map(|c| cell(pick(i, c))).collect())
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = *w));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(columns.iter().map(|c| c.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// A single object as `key  value` lines.
pub fn render_object(v: &Value) -> String {
    let Some(m) = v.as_object() else {
        return format!("{v}\n");
    };
    let w = m.keys().map(|k| k.len()).max().unwrap_or(0);
    m.iter()
        .map(|(k, v)| format!("{k:<w$}  {}\n", cell(Some(v))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn aligns_columns() {
        let items = vec![
            json!({"name": "a", "messages": 10}),
            json!({"name": "longer", "messages": 2}),
        ];
        assert_eq!(
            render(&items, &["name", "messages"]),
            "name    messages\na       10\nlonger  2\n"
        );
    }
}
