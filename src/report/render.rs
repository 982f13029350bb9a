//! The document rendered as Markdown and as self-contained HTML.

use super::document::{Block, Span};
use super::svg;
use std::fmt::Write as _;

pub(super) fn md_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        if "\\`*|<>[]".contains(ch) {
            o.push('\\');
        }
        if ch == '\n' {
            o.push(' ');
        } else {
            o.push(ch);
        }
    }
    o
}

pub(super) fn md_spans(spans: &[Span]) -> String {
    spans
        .iter()
        .map(|s| match s {
            Span::T(x) => md_escape(x),
            Span::B(x) => format!(
                "**{}**{}",
                md_escape(x.trim_end()),
                &x[x.trim_end().len()..]
            ),
            Span::C(x) => {
                // A code span needs a fence longer than any backtick run inside it.
                let run = x.split(|c| c != '`').map(str::len).max().unwrap_or(0);
                let fence = "`".repeat(run + 1);
                let pad = if x.starts_with('`') || x.ends_with('`') {
                    " "
                } else {
                    ""
                };
                format!("{fence}{pad}{x}{pad}{fence}")
            }
        })
        .collect()
}

pub(super) fn render_markdown(doc: &[Block]) -> String {
    let mut o = String::new();
    for block in doc {
        match block {
            Block::H(level, text) => {
                let _ = writeln!(o, "{} {}\n", "#".repeat(*level as usize), md_escape(text));
            }
            Block::P(spans) => {
                let _ = writeln!(o, "{}\n", md_spans(spans));
            }
            Block::Note(text) => {
                let _ = writeln!(o, "*{}*\n", md_escape(text));
            }
            Block::List(items) => {
                for it in items {
                    let _ = writeln!(o, "- {}", md_spans(it));
                }
                o.push('\n');
            }
            Block::Table(tb) => {
                let line = |cells: &[String]| {
                    format!(
                        "| {} |",
                        cells
                            .iter()
                            .map(|c| md_escape(c))
                            .collect::<Vec<_>>()
                            .join(" | ")
                    )
                };
                let _ = writeln!(o, "{}", line(&tb.head));
                let sep: Vec<&str> = tb
                    .num
                    .iter()
                    .map(|&n| if n { "---:" } else { "---" })
                    .collect();
                let _ = writeln!(o, "|{}|", sep.join("|"));
                for r in &tb.rows {
                    let _ = writeln!(o, "{}", line(r));
                }
                o.push('\n');
            }
            Block::Figure { caption, file, .. } => {
                let _ = writeln!(o, "![{0}]({file})\n\n*{0}*\n", md_escape(caption));
            }
            Block::Code(text) => {
                let fence = if text.contains("```") { "~~~~" } else { "```" };
                let _ = writeln!(o, "{fence}sh\n{}\n{fence}\n", text.trim_end());
            }
        }
    }
    o
}

pub(super) fn html_spans(spans: &[Span]) -> String {
    spans
        .iter()
        .map(|s| match s {
            Span::T(x) => svg::escape(x),
            Span::B(x) => format!("<strong>{}</strong>", svg::escape(x)),
            Span::C(x) => format!("<code>{}</code>", svg::escape(x)),
        })
        .collect()
}

pub(super) const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:1600px;padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.3rem .55rem;vertical-align:top}th{background:#f2f2f2;text-align:left}
td.num,th.num{text-align:right;white-space:nowrap}tbody tr:nth-child(even){background:#fafafa}
p.note{font-size:.85rem;color:#555;margin:.3rem 0}
pre{background:#f6f6f6;border:1px solid #ddd;padding:.7rem;overflow-x:auto;font-size:.85rem}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.9em}
figure{margin:1rem 0}figure svg{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.85rem;color:#555}
td.unfinished{color:#b00020;font-weight:600}
table.results td:first-child,table.recovery td:first-child,table.stages td:first-child{white-space:nowrap}";

pub(super) fn render_html(doc: &[Block], title: &str) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>\n{CSS}\n</style>\n</head>\n<body>\n<main>\n",
        svg::escape(title)
    );
    for block in doc {
        match block {
            Block::H(level, text) => {
                let _ = writeln!(o, "<h{level}>{}</h{level}>", svg::escape(text));
            }
            Block::P(spans) => {
                let _ = writeln!(o, "<p>{}</p>", html_spans(spans));
            }
            Block::Note(text) => {
                let _ = writeln!(o, "<p class=\"note\">{}</p>", svg::escape(text));
            }
            Block::List(items) => {
                o.push_str("<ul>\n");
                for it in items {
                    let _ = writeln!(o, "<li>{}</li>", html_spans(it));
                }
                o.push_str("</ul>\n");
            }
            Block::Table(tb) => {
                let cls = |i: usize| {
                    if tb.num.get(i) == Some(&true) {
                        " class=\"num\""
                    } else {
                        ""
                    }
                };
                let _ = write!(o, "<table class=\"{}\">\n<thead><tr>", tb.class);
                for (i, h) in tb.head.iter().enumerate() {
                    let _ = write!(o, "<th{}>{}</th>", cls(i), svg::escape(h));
                }
                o.push_str("</tr></thead>\n<tbody>\n");
                for r in &tb.rows {
                    o.push_str("<tr>");
                    for (i, cell) in r.iter().enumerate() {
                        let class = if cell.starts_with("unfinished") || cell == "not started" {
                            " class=\"unfinished\""
                        } else {
                            cls(i)
                        };
                        let _ = write!(o, "<td{class}>{}</td>", svg::escape(cell));
                    }
                    o.push_str("</tr>\n");
                }
                o.push_str("</tbody>\n</table>\n");
            }
            Block::Figure { caption, svg, .. } => {
                let _ = writeln!(
                    o,
                    "<figure>\n{}\n<figcaption>{}</figcaption>\n</figure>",
                    svg.trim_end(),
                    svg::escape(caption)
                );
            }
            Block::Code(text) => {
                let _ = writeln!(
                    o,
                    "<pre><code>{}</code></pre>",
                    svg::escape(text.trim_end())
                );
            }
        }
    }
    o.push_str("</main>\n</body>\n</html>\n");
    o
}
