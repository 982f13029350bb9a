//! The loss curve as a self-contained SVG: training loss per step (a line) and validation loss
//! (dots), on shared axes.

use super::Metric;
use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 400.0;
const PAD: f64 = 56.0;

pub fn loss_svg(metrics: &[Metric]) -> String {
    let train: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|m| m.loss.map(|l| (m.step as f64, l)))
        .collect();
    let val: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|m| m.val_loss.map(|l| (m.step as f64, l)))
        .collect();
    let all = train.iter().chain(&val);
    let (mut x1, mut y0, mut y1) = (1f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all {
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    if y1 - y0 < 1e-9 {
        y1 = y0 + 1.0;
    }
    let sx = |x: f64| PAD + x / x1 * (W - 2.0 * PAD);
    let sy = |y: f64| H - PAD - (y - y0) / (y1 - y0) * (H - 2.0 * PAD);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<line x1="{PAD}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{b}" stroke="black"/>
<text x="{cx}" y="{ty}" text-anchor="middle">optimizer step</text>
<text x="14" y="{cy}" text-anchor="middle" transform="rotate(-90 14 {cy})">loss</text>
"#,
        b = H - PAD,
        r = W - PAD,
        cx = W / 2.0,
        ty = H - 14.0,
        cy = H / 2.0
    );
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{y:.3}</text>"#,
            PAD - 6.0,
            sy(y) + 4.0
        );
        let x = x1 * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{x:.0}</text>"#,
            sx(x),
            H - PAD + 16.0
        );
    }
    if !train.is_empty() {
        let pts: Vec<String> = train
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{}"/>"##,
            pts.join(" ")
        );
    }
    for &(x, y) in &val {
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#d62728"/>"##,
            sx(x),
            sy(y)
        );
    }
    let _ = write!(
        s,
        r##"<rect x="{lx}" y="{PAD}" width="12" height="3" fill="#1f77b4"/><text x="{tx}" y="{ly}">train loss</text>
<circle cx="{cx}" cy="{cy}" r="4" fill="#d62728"/><text x="{tx}" y="{ly2}">validation loss</text>
</svg>
"##,
        lx = W - PAD - 130.0,
        tx = W - PAD - 112.0,
        ly = PAD + 5.0,
        cx = W - PAD - 124.0,
        cy = PAD + 18.0,
        ly2 = PAD + 22.0
    );
    s
}
