//! Hand-written, self-contained SVG charts for the report: grouped bars (per-layer sparsity,
//! per-task accuracy) here, and the training-loss curve from `crate::train::plot`, which
//! `spp train` already writes next to every adapter.

use crate::train::Metric;
use std::fmt::Write;

/// Training loss (line) and validation loss (dots) per optimizer step — the same chart as the
/// adapter directory's `loss.svg`.
pub fn loss(metrics: &[Metric]) -> String {
    crate::train::plot::loss_svg(metrics)
}

/// One bar per category of a grouped bar chart; `None` values leave a gap.
pub struct Series {
    pub name: String,
    pub values: Vec<Option<f64>>,
    /// Half-length of an error bar (e.g. a standard error), per category.
    pub errors: Vec<Option<f64>>,
}

/// tab10, the matplotlib default cycle.
const COLORS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

pub fn color(i: usize) -> &'static str {
    COLORS[i % COLORS.len()]
}

/// Escape text for XML/HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// The smallest of 1, 2, 2.5, 5 × 10^k that is ≥ `x` (axis maxima).
fn nice_ceil(x: f64) -> f64 {
    if !x.is_finite() || x <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    for f in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if f * p >= x * (1.0 - 1e-12) {
            return f * p;
        }
    }
    10.0 * p
}

/// Grouped vertical bars: `categories` along x, one bar per series in each group, y from 0.
/// `percent` formats the y axis as percentages of 1 (and caps it at 100%).
pub fn grouped_bars(
    categories: &[String],
    series: &[Series],
    x_label: &str,
    y_label: &str,
    percent: bool,
) -> String {
    const PAD: f64 = 56.0;
    const H: f64 = 400.0;
    let ncat = categories.len().max(1);
    let nser = series.len().max(1);
    let w = (PAD * 2.0 + ncat as f64 * (nser as f64 * 5.0 + 8.0)).max(720.0);
    // Legend rows above the plot, wrapped by an estimate of the text width.
    let mut legend = Vec::new();
    let (mut lx, mut row) = (PAD, 0usize);
    for (i, s) in series.iter().enumerate() {
        let item = 22.0 + 6.5 * s.name.chars().count() as f64 + 16.0;
        if lx + item > w - PAD && lx > PAD {
            lx = PAD;
            row += 1;
        }
        legend.push((i, lx, row));
        lx += item;
    }
    let top = 24.0 + 18.0 * (row + 1) as f64;
    let bottom = H - PAD;
    let (left, right) = (PAD, w - PAD / 2.0);
    let mut ymax: f64 = 0.0;
    for s in series {
        for (i, v) in s.values.iter().enumerate() {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                let e = s.errors.get(i).copied().flatten().filter(|e| e.is_finite());
                ymax = ymax.max(v + e.unwrap_or(0.0));
            }
        }
    }
    let mut ymax = nice_ceil(ymax);
    if percent {
        ymax = ymax.min(1.0);
    }
    let sy = |y: f64| bottom - (y.clamp(0.0, ymax) / ymax) * (bottom - top);
    let group = (right - left) / ncat as f64;
    let bar = group * 0.8 / nser as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{H}" viewBox="0 0 {w} {H}" font-family="sans-serif" font-size="12">
<rect width="{w}" height="{H}" fill="white"/>
"#
    );
    for i in 0..=5 {
        let y = ymax * i as f64 / 5.0;
        let label = if percent {
            format!("{:.0}%", y * 100.0)
        } else {
            format!("{y:.3}")
        };
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{py:.1}" x2="{right}" y2="{py:.1}" stroke="#e0e0e0"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{label}</text>"##,
            py = sy(y),
            tx = left - 6.0,
            ty = sy(y) + 4.0,
        );
    }
    // Label every k-th category so that labels do not overlap.
    let longest = categories
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(1);
    let every = ((longest as f64 * 6.5 + 6.0) / group).ceil().max(1.0) as usize;
    for (ci, c) in categories.iter().enumerate() {
        let gx = left + group * ci as f64 + group * 0.1;
        for (si, ser) in series.iter().enumerate() {
            let Some(v) = ser
                .values
                .get(ci)
                .copied()
                .flatten()
                .filter(|v| v.is_finite())
            else {
                continue;
            };
            let x = gx + bar * si as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.2}" y="{y:.2}" width="{bw:.2}" height="{h:.2}" fill="{c}"><title>{t}</title></rect>"#,
                y = sy(v),
                bw = (bar - 0.5).max(0.5),
                h = (bottom - sy(v)).max(0.0),
                c = color(si),
                t = escape(&format!(
                    "{} · {}: {}",
                    ser.name,
                    c,
                    if percent {
                        format!("{:.1}%", v * 100.0)
                    } else {
                        format!("{v:.4}")
                    }
                )),
            );
            if let Some(e) = ser.errors.get(ci).copied().flatten() {
                if e.is_finite() && e > 0.0 {
                    let cx = x + bar / 2.0;
                    let (y0, y1) = (sy(v - e), sy(v + e));
                    let cap = (bar / 4.0).min(4.0);
                    let _ = writeln!(
                        s,
                        r#"<path d="M{cx:.2} {y0:.2}V{y1:.2}M{a:.2} {y0:.2}H{b:.2}M{a:.2} {y1:.2}H{b:.2}" stroke="black" stroke-width="1" fill="none"/>"#,
                        a = cx - cap,
                        b = cx + cap,
                    );
                }
            }
        }
        if ci % every == 0 {
            let _ = writeln!(
                s,
                r#"<text x="{x:.1}" y="{y}" text-anchor="middle">{t}</text>"#,
                x = left + group * (ci as f64 + 0.5),
                y = bottom + 16.0,
                t = escape(c)
            );
        }
    }
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/>
<text x="{cx}" y="{xy}" text-anchor="middle">{xl}</text>
<text x="14" y="{cy}" text-anchor="middle" transform="rotate(-90 14 {cy})">{yl}</text>"#,
        cx = (left + right) / 2.0,
        xy = H - 14.0,
        cy = (top + bottom) / 2.0,
        xl = escape(x_label),
        yl = escape(y_label),
    );
    for (i, x, row) in legend {
        let y = 16.0 + 18.0 * row as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{ry}" width="14" height="10" fill="{c}"/><text x="{tx}" y="{ty}">{t}</text>"#,
            ry = y - 9.0,
            c = color(i),
            tx = x + 20.0,
            ty = y,
            t = escape(&series[i].name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// `x` to four significant digits, written the shortest way (0.0007742636 → 0.0007743).
pub fn significant(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return x.to_string();
    }
    let scale = 10f64.powi(3 - x.abs().log10().floor() as i32);
    ((x * scale).round() / scale).to_string()
}

/// One line of a line chart: its points `(x, y)` in order of x.
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// The x axis of a line chart.
pub enum XAxis {
    /// Numbers on a linear scale.
    Linear,
    /// Positive numbers on a log scale (e.g. learning rates).
    Log,
    /// Named positions: x = 0, 1, … is `names[x]`.
    Names(Vec<String>),
}

/// Lines with dots at their points, one colour per line; the y range spans the data and 0;
/// `percent` formats y as percentages of 1.
pub fn lines(
    series: &[Line],
    x_axis: &XAxis,
    x_label: &str,
    y_label: &str,
    percent: bool,
) -> String {
    const W: f64 = 720.0;
    const H: f64 = 400.0;
    const PAD: f64 = 64.0;
    let log = matches!(x_axis, XAxis::Log);
    let tx = |x: f64| if log { x.log10() } else { x };
    let pts = || {
        series
            .iter()
            .flat_map(|l| l.points.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log || *x > 0.0))
    };
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y0, mut y1) = (0f64, f64::NEG_INFINITY);
    for &(x, y) in pts() {
        (x0, x1) = (x0.min(tx(x)), x1.max(tx(x)));
        (y0, y1) = (y0.min(y), y1.max(y));
    }
    if let XAxis::Names(n) = x_axis {
        (x0, x1) = (0.0, n.len().saturating_sub(1) as f64);
    }
    if !x0.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        (x0, x1) = (x0 - 0.5, x1 + 0.5);
    }
    if !y1.is_finite() || y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let legend_rows = series.len().div_ceil(4).max(1);
    let top = 20.0 + 18.0 * legend_rows as f64;
    let (left, right, bottom) = (PAD, W - PAD / 2.0, H - PAD);
    let sx = |x: f64| left + 12.0 + (tx(x) - x0) / (x1 - x0) * (right - left - 24.0);
    let sy = |y: f64| bottom - (y - y0) / (y1 - y0) * (bottom - top);
    let fmt_y = |y: f64| {
        if percent {
            format!("{:.0}%", y * 100.0)
        } else {
            format!("{y:.3}")
        }
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>"#
    );
    for i in 0..=5 {
        let y = y0 + (y1 - y0) * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{py:.1}" x2="{right}" y2="{py:.1}" stroke="#e0e0e0"/><text x="{lx}" y="{ty:.1}" text-anchor="end">{t}</text>"##,
            py = sy(y),
            lx = left - 6.0,
            ty = sy(y) + 4.0,
            t = fmt_y(y)
        );
    }
    if y0 < 0.0 {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{py:.1}" x2="{right}" y2="{py:.1}" stroke="#808080"/>"##,
            py = sy(0.0)
        );
    }
    // x ticks: the names, or the distinct x values of the data (at most 12).
    let ticks: Vec<(f64, String)> = match x_axis {
        XAxis::Names(n) => n
            .iter()
            .enumerate()
            .map(|(i, t)| (i as f64, t.clone()))
            .collect(),
        _ => {
            let mut xs: Vec<f64> = pts().map(|p| p.0).collect();
            xs.sort_by(f64::total_cmp);
            xs.dedup();
            let every = xs.len().div_ceil(12).max(1);
            xs.iter()
                .step_by(every)
                .map(|&x| (x, significant(x)))
                .collect()
        }
    };
    let px = |x: f64| match x_axis {
        XAxis::Names(_) => left + 12.0 + (x - x0) / (x1 - x0) * (right - left - 24.0),
        _ => sx(x),
    };
    let mut last = f64::NEG_INFINITY;
    for (x, t) in &ticks {
        // A label too close to the one before is left out (its point still has a tooltip).
        if px(*x) - last < 7.0 * t.chars().count() as f64 {
            continue;
        }
        last = px(*x);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            px(*x),
            bottom + 16.0,
            escape(t)
        );
    }
    for (i, l) in series.iter().enumerate() {
        let p: Vec<(f64, f64)> = l
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log || *x > 0.0))
            .map(|&(x, y)| (px(x), sy(y)))
            .collect();
        if p.len() > 1 {
            let d: Vec<String> = p.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
                color(i),
                d.join(" ")
            );
        }
        for ((x, y), (dx, dy)) in p.iter().zip(l.points.iter()) {
            let _ = writeln!(
                s,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{}"><title>{}</title></circle>"#,
                color(i),
                escape(&format!(
                    "{} · {}: {}",
                    l.name,
                    significant(*dx),
                    fmt_y(*dy)
                ))
            );
        }
        let (lx, ly) = (left + 160.0 * (i % 4) as f64, 16.0 + 18.0 * (i / 4) as f64);
        let _ = writeln!(
            s,
            r#"<circle cx="{cx}" cy="{cy}" r="4" fill="{c}"/><text x="{tx}" y="{ly}">{t}</text>"#,
            cx = lx + 5.0,
            cy = ly - 4.0,
            c = color(i),
            tx = lx + 14.0,
            t = escape(&l.name)
        );
    }
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/>
<text x="{cx}" y="{xy}" text-anchor="middle">{xl}</text>
<text x="14" y="{cy}" text-anchor="middle" transform="rotate(-90 14 {cy})">{yl}</text>"#,
        cx = (left + right) / 2.0,
        xy = H - 14.0,
        cy = (top + bottom) / 2.0,
        xl = escape(&format!(
            "{x_label}{}",
            if log { " (log scale)" } else { "" }
        )),
        yl = escape(y_label),
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceil_rounds_up_to_a_round_number() {
        assert_eq!(nice_ceil(0.43), 0.5);
        assert_eq!(nice_ceil(0.5), 0.5);
        assert_eq!(nice_ceil(0.51), 1.0);
        assert_eq!(nice_ceil(17.0), 20.0);
        assert_eq!(nice_ceil(0.0), 1.0);
        assert_eq!(nice_ceil(f64::NAN), 1.0);
    }

    #[test]
    fn bars_escape_names_and_skip_missing_values() {
        let svg = grouped_bars(
            &["a<b".into(), "c".into()],
            &[
                Series {
                    name: "x & y".into(),
                    values: vec![Some(0.5), None],
                    errors: vec![Some(0.1), None],
                },
                Series {
                    name: "z".into(),
                    values: vec![Some(0.25), Some(f64::NAN)],
                    errors: vec![],
                },
            ],
            "task",
            "accuracy",
            true,
        );
        assert!(svg.contains("a&lt;b") && svg.contains("x &amp; y"));
        assert!(!svg.contains("a<b") && !svg.contains("x & y"));
        // Two finite values -> two bars (plus the background and two legend swatches), one error bar.
        assert_eq!(svg.matches("<rect x=").count(), 2 + 2);
        assert_eq!(svg.matches("<path").count(), 1);
        assert!(svg.contains(">100%<") && !svg.contains("NaN"));
        assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count());
    }

    #[test]
    fn lines_place_points_on_a_log_axis_and_skip_bad_ones() {
        let l = [
            Line {
                name: "spp".into(),
                points: vec![(1e-3, 0.2), (1e-2, 0.6), (f64::NAN, 0.1)],
            },
            Line {
                name: "lora & mask".into(),
                points: vec![(1e-4, -0.1), (1e-3, 0.3)],
            },
        ];
        let svg = lines(&l, &XAxis::Log, "lr", "gap closed", true);
        // Four finite points and two legend dots; the NaN point is left out.
        assert_eq!(svg.matches("<circle").count(), 4 + 2);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("lora &amp; mask") && svg.contains("(log scale)"));
        assert!(
            svg.contains("-10%") || svg.contains("-2%"),
            "negative y shown"
        );
        assert!(!svg.contains("NaN"));
        // On the log axis 1e-3 lies halfway between 1e-4 and 1e-2.
        let cx = |t: &str| -> f64 {
            let i = svg.find(&format!("· {t}:")).unwrap();
            let head = &svg[..i];
            let c = head.rfind("cx=\"").unwrap();
            head[c + 4..].split('"').next().unwrap().parse().unwrap()
        };
        let (a, b, c) = (cx("0.0001"), cx("0.001"), cx("0.01"));
        assert!(((b - a) - (c - b)).abs() < 0.2, "{a} {b} {c}");
    }
}
