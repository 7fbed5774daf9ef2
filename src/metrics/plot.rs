//! Dependency-free SVG line charts for training curves (reward, pass@1, loss over steps).
//!
//! Examples must leave a figure that opens in any browser without Python or a plotting crate,
//! so this module renders [`Chart`]s of [`Series`] (optionally with a spread band over seeds)
//! into one standalone SVG document. Rendering never panics: non-finite points are skipped,
//! empty charts get axes and a "no data" note, and degenerate ranges are padded.

use std::fmt::Write as _;
use std::path::Path;

/// Okabe–Ito palette: distinguishable under the common colour-vision deficiencies.
/// Yellow comes last because it is faint on white; series past the eighth reuse colours.
pub const PALETTE: [&str; 8] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
];

/// Width of one chart cell in the figure, in px.
pub const CELL_WIDTH: f64 = 480.0;
/// Height of one chart cell in the figure, in px.
pub const CELL_HEIGHT: f64 = 320.0;

const MARGIN_LEFT: f64 = 64.0;
const MARGIN_RIGHT: f64 = 16.0;
const MARGIN_TOP: f64 = 36.0;
/// Tick labels plus the x-axis label under the plot area.
const AXIS_BLOCK: f64 = 40.0;
const LEGEND_ROW: f64 = 16.0;
/// The plot area never shrinks below this height to make room for the legend.
const MIN_PLOT_HEIGHT: f64 = 120.0;
/// Dots mark the samples only when they are sparse enough to read individually.
const MAX_DOTS: usize = 30;
/// Values beyond this are clamped before any arithmetic, so spans and paddings stay finite.
const MAX_ABS: f64 = 1e300;
/// Pixel coordinates are clamped so absurd outliers cannot print 300-digit numbers.
const MAX_PX: f64 = 1e6;

/// One curve: points joined by a line, an optional band drawn translucent under it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    pub label: String,
    /// `(x, y)` in drawing order; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
    /// `(x, lo, hi)`; may be empty. Drawn as one filled polygon.
    pub band: Vec<(f64, f64, f64)>,
    pub dashed: bool,
}

impl Series {
    /// A plain solid line without a band.
    pub fn line(label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            label: label.into(),
            points,
            band: Vec::new(),
            dashed: false,
        }
    }

    /// Mean over runs at each x present in all runs (runs may have different x sets: use the
    /// intersection, sorted), band = mean ± one standard deviation (sample std, n−1; zero width
    /// for a single run), or min..max when `minmax` is true.
    ///
    /// Non-finite points are dropped from each run first, so such an x leaves the intersection
    /// rather than poisoning the mean. When a run logs the same x twice (a resumed run), the
    /// later value wins. No runs, or an empty run, give an empty series.
    pub fn mean_band(label: impl Into<String>, runs: &[Vec<(f64, f64)>], minmax: bool) -> Self {
        let runs: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| finite_by_x(r)).collect();
        let mut points = Vec::new();
        let mut band = Vec::new();
        if let Some((first, rest)) = runs.split_first() {
            let mut ys = Vec::with_capacity(runs.len());
            for &(x, y0) in first {
                ys.clear();
                ys.push(y0);
                for run in rest {
                    match run.binary_search_by(|p| p.0.total_cmp(&x)) {
                        Ok(i) => ys.push(run[i].1),
                        Err(_) => break,
                    }
                }
                if ys.len() != runs.len() {
                    continue;
                }
                let n = ys.len() as f64;
                let mean = ys.iter().sum::<f64>() / n;
                let (lo, hi) = if minmax {
                    let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    (lo, hi)
                } else if ys.len() > 1 {
                    let var = ys.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / (n - 1.0);
                    (mean - var.sqrt(), mean + var.sqrt())
                } else {
                    (mean, mean)
                };
                points.push((x, mean));
                band.push((x, lo, hi));
            }
        }
        Series {
            label: label.into(),
            points,
            band,
            dashed: false,
        }
    }

    /// Exponential moving average smoothing of points (alpha in (0,1]) for noisy reward curves.
    ///
    /// `s₀ = y₀`, `sᵢ = α·yᵢ + (1−α)·sᵢ₋₁`, applied in drawing order to the points and to both
    /// band edges (EMA is linear, so a smoothed mean ± std band stays centred on the smoothed
    /// line). Non-finite values pass through untouched and do not update the average.
    /// `alpha > 1` acts as 1 (no smoothing); `alpha ≤ 0` or NaN leaves the series unchanged.
    pub fn smoothed(mut self, alpha: f64) -> Self {
        if alpha.is_nan() || alpha <= 0.0 {
            return self;
        }
        let alpha = alpha.min(1.0);
        ema(self.points.iter_mut().map(|p| &mut p.1), alpha);
        ema(self.band.iter_mut().map(|b| &mut b.1), alpha);
        ema(self.band.iter_mut().map(|b| &mut b.2), alpha);
        self
    }

    /// The same series drawn dashed (e.g. a baseline next to the trained run).
    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }

    /// The same series with `band` as its `(x, lo, hi)` band.
    pub fn with_band(mut self, band: Vec<(f64, f64, f64)>) -> Self {
        self.band = band;
        self
    }
}

/// Finite points of one run sorted by x, one per x (the last logged), `-0.0` folded into `0.0`.
fn finite_by_x(run: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = run
        .iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|&(x, y)| (x + 0.0, y))
        .collect();
    // Stable sort: among equal x the later-logged point stays later and overwrites below.
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(pts.len());
    for p in pts {
        match out.last_mut() {
            Some(last) if last.0 == p.0 => *last = p,
            _ => out.push(p),
        }
    }
    out
}

/// In-place EMA over the finite values of `values`.
fn ema<'a>(values: impl Iterator<Item = &'a mut f64>, alpha: f64) {
    let mut state: Option<f64> = None;
    for v in values {
        if !v.is_finite() {
            continue;
        }
        let s = match state {
            None => *v,
            Some(s) => alpha * *v + (1.0 - alpha) * s,
        };
        *v = s;
        state = Some(s);
    }
}

/// One panel of a figure: axes, grid, title, legend and its series.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Fixed y range (e.g. `(0, 1)` for pass@1); data outside it is clipped. `None`, or an
    /// invalid range, fits the data.
    pub y_range: Option<(f64, f64)>,
}

impl Chart {
    /// A chart without series that fits its y range to the data.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Chart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            y_range: None,
        }
    }

    /// The same chart with `series` appended.
    pub fn with_series(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    /// The same chart with a fixed y range.
    pub fn with_y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y_range = Some((lo, hi));
        self
    }
}

/// Axis ticks: values and their labels, formatted without float noise.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticks {
    pub values: Vec<f64>,
    pub labels: Vec<String>,
}

/// "Nice" ticks covering `[lo, hi]`: a step of 1, 2 or 5 × 10^k and 4–8 ticks (closest to 6,
/// ties to the larger step), the first at or below `lo` and the last at or above `hi`.
///
/// A degenerate range (`lo == hi`) is padded by 10% of the value (±1 around zero); NaN and
/// infinities fall back to `[0, 1]`; `lo > hi` is swapped.
pub fn nice_ticks(lo: f64, hi: f64) -> Ticks {
    let (lo, hi) = padded_range(lo, hi);
    let span = hi - lo;
    let k0 = span.log10().floor() as i32;
    // (score, step, k, m, first index, last index)
    let mut best: Option<(f64, f64, i32, f64, f64, f64)> = None;
    for k in (k0 - 2)..=(k0 + 1) {
        for m in [1.0, 2.0, 5.0] {
            let step = m * 10f64.powi(k);
            let first = (lo / step + 1e-9).floor();
            let last = (hi / step - 1e-9).ceil();
            let n = last - first + 1.0;
            // In range the 4–8 rule holds for some candidate; the distance term is only a
            // fallback for ranges so far from zero that float precision blurs the indices.
            let score = if (4.0..=8.0).contains(&n) {
                (n - 6.0).abs()
            } else {
                10.0 + (n - 6.0).abs()
            };
            let better = match best {
                None => true,
                Some((s, st, ..)) => score < s || (score == s && step > st),
            };
            if better {
                best = Some((score, step, k, m, first, last));
            }
        }
    }
    let Some((_, _, k, m, first, last)) = best else {
        // Unreachable for finite padded ranges; kept so no input can panic.
        return Ticks {
            values: vec![lo, hi],
            labels: vec![format_plain(lo), format_plain(hi)],
        };
    };
    let count = (last - first + 1.0).clamp(1.0, 64.0) as usize;
    let mantissas: Vec<f64> = (0..count).map(|j| (first + j as f64) * m).collect();
    // Dividing by an exact power of ten gives the double nearest the decimal value.
    let values: Vec<f64> = mantissas
        .iter()
        .map(|&mant| {
            if k < 0 {
                mant / 10f64.powi(-k) + 0.0
            } else {
                mant * 10f64.powi(k) + 0.0
            }
        })
        .collect();
    // One notation per axis: plain decimals unless values are huge or tiny.
    let mag = values.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    let plain = (-8..=5).contains(&k) && (1e-4..1e6).contains(&mag);
    let labels = values
        .iter()
        .zip(&mantissas)
        .map(|(&v, &mant)| format_tick(v, mant, k, plain))
        .collect();
    Ticks { values, labels }
}

/// `[lo, hi]` made finite, ordered and of non-zero width.
fn padded_range(lo: f64, hi: f64) -> (f64, f64) {
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let (lo, hi) = (
        lo.min(hi).clamp(-MAX_ABS, MAX_ABS),
        lo.max(hi).clamp(-MAX_ABS, MAX_ABS),
    );
    let scale = lo.abs().max(hi.abs()).max(1.0);
    if hi - lo > 1e-12 * scale {
        return (lo, hi);
    }
    let mid = 0.5 * (lo + hi);
    let pad = if mid == 0.0 { 1.0 } else { 0.1 * mid.abs() };
    (mid - pad, mid + pad)
}

/// Label of tick `v = mantissa × 10^k`: plain decimals with exactly the step's precision, or
/// scientific (`2.5e-6`) when the axis is `!plain`.
fn format_tick(v: f64, mantissa: f64, k: i32, plain: bool) -> String {
    if plain {
        return format!("{:.*}", (-k).max(0) as usize, v);
    }
    if mantissa == 0.0 {
        return "0".to_string();
    }
    let sign = if mantissa < 0.0 { "-" } else { "" };
    let digits = format!("{:.0}", mantissa.abs());
    let exp = k + digits.len() as i32 - 1;
    let (head, tail) = digits.split_at(1);
    let tail = tail.trim_end_matches('0');
    if tail.is_empty() {
        format!("{sign}{head}e{exp}")
    } else {
        format!("{sign}{head}.{tail}e{exp}")
    }
}

/// A short label for an arbitrary value (fallback only).
fn format_plain(v: f64) -> String {
    format!("{v:.4}")
}

/// XML-escape text and attribute values; characters XML 1.0 forbids become U+FFFD.
pub fn escape_xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A figure of `charts` laid out in `columns` columns; each chart ~480×320 px; returns a
/// complete standalone SVG document.
///
/// `columns` is clamped to `1..=charts.len()`; no charts at all render one empty panel.
pub fn figure_svg(charts: &[Chart], columns: usize) -> String {
    let fallback = [Chart::default()];
    let charts = if charts.is_empty() {
        &fallback[..]
    } else {
        charts
    };
    let cols = columns.clamp(1, charts.len());
    let rows = charts.len().div_ceil(cols);
    let (w, h) = (cols as f64 * CELL_WIDTH, rows as f64 * CELL_HEIGHT);
    let mut out = String::new();
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"11\">"
    );
    let _ = writeln!(
        out,
        "<rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"#ffffff\"/>"
    );
    for (i, chart) in charts.iter().enumerate() {
        let ox = (i % cols) as f64 * CELL_WIDTH;
        let oy = (i / cols) as f64 * CELL_HEIGHT;
        render_chart(&mut out, chart, i, ox, oy);
    }
    out.push_str("</svg>\n");
    out
}

/// Render [`figure_svg`] to `path` atomically (temp file + rename, parent directories
/// created), so a crash mid-write never leaves a torn SVG behind.
pub fn write_svg(path: &Path, charts: &[Chart], columns: usize) -> crate::Result<()> {
    crate::util::write_atomic(path, figure_svg(charts, columns).as_bytes())
}

/// Finite data of one series, ready to draw.
struct Finite {
    points: Vec<(f64, f64)>,
    band: Vec<(f64, f64, f64)>,
}

impl Finite {
    fn of(s: &Series) -> Self {
        let clamp = |v: f64| v.clamp(-MAX_ABS, MAX_ABS);
        Finite {
            points: s
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|&(x, y)| (clamp(x), clamp(y)))
                .collect(),
            band: s
                .band
                .iter()
                .filter(|(x, lo, hi)| x.is_finite() && lo.is_finite() && hi.is_finite())
                .map(|&(x, lo, hi)| (clamp(x), clamp(lo), clamp(hi)))
                .collect(),
        }
    }

    fn xs(&self) -> impl Iterator<Item = f64> + '_ {
        self.points
            .iter()
            .map(|p| p.0)
            .chain(self.band.iter().map(|b| b.0))
    }

    fn ys(&self) -> impl Iterator<Item = f64> + '_ {
        self.points
            .iter()
            .map(|p| p.1)
            .chain(self.band.iter().flat_map(|b| [b.1, b.2]))
    }
}

/// Min and max of `values`, or `None` when empty.
fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Axis range spanned by ticks computed for the data extent (or `[0, 1]` without data).
fn axis(extent: Option<(f64, f64)>) -> (Ticks, f64, f64) {
    let (lo, hi) = extent.unwrap_or((0.0, 1.0));
    let ticks = nice_ticks(lo, hi);
    let (plo, phi) = padded_range(lo, hi);
    let first = ticks.values.first().copied().unwrap_or(plo);
    let last = ticks.values.last().copied().unwrap_or(phi);
    let (a, b) = (first.min(plo), last.max(phi));
    if b > a {
        (ticks, a, b)
    } else {
        (ticks, plo, phi)
    }
}

/// A linear map from `[d0, d1]` to `[p0, p1]`, clamped to a sane pixel range.
fn scale(v: f64, d0: f64, d1: f64, p0: f64, p1: f64) -> f64 {
    let span = d1 - d0;
    let t = if span > 0.0 { (v - d0) / span } else { 0.5 };
    (p0 + t * (p1 - p0)).clamp(-MAX_PX, MAX_PX)
}

/// Legend entry width estimate: swatch, gap, ~6.5 px per character, spacing.
fn legend_item_width(label: &str) -> f64 {
    24.0 + 6.5 * label.chars().count() as f64 + 14.0
}

/// Render one chart as a `<g>` translated to `(ox, oy)`.
fn render_chart(out: &mut String, chart: &Chart, idx: usize, ox: f64, oy: f64) {
    let data: Vec<Finite> = chart.series.iter().map(Finite::of).collect();
    let has_data = data
        .iter()
        .any(|d| !d.points.is_empty() || !d.band.is_empty());

    let (xt, x0, x1) = axis(extent(data.iter().flat_map(Finite::xs)));
    let fixed_y = chart
        .y_range
        .filter(|(lo, hi)| lo.is_finite() && hi.is_finite() && lo < hi);
    let (yt, y0, y1) = axis(fixed_y.or_else(|| extent(data.iter().flat_map(Finite::ys))));

    let left = MARGIN_LEFT;
    let right = CELL_WIDTH - MARGIN_RIGHT;
    let top = MARGIN_TOP;
    let plot_w = right - left;

    // Legend layout below the axis labels: wrap entries into rows across the plot width.
    let max_rows =
        ((CELL_HEIGHT - MARGIN_TOP - AXIS_BLOCK - 6.0 - MIN_PLOT_HEIGHT) / LEGEND_ROW) as usize;
    let mut entries: Vec<(usize, f64, usize)> = Vec::new(); // (series, x offset, row)
    let mut hidden = 0usize;
    let (mut cx, mut row) = (0.0, 0usize);
    for (i, s) in chart.series.iter().enumerate() {
        if s.label.is_empty() {
            continue;
        }
        let w = legend_item_width(&s.label);
        if cx > 0.0 && cx + w > plot_w {
            cx = 0.0;
            row += 1;
        }
        if row >= max_rows {
            hidden += 1;
            continue;
        }
        entries.push((i, cx, row));
        cx += w;
    }
    let rows = entries.iter().map(|e| e.2 + 1).max().unwrap_or(0);
    let legend_h = if rows > 0 {
        rows as f64 * LEGEND_ROW + 6.0
    } else {
        0.0
    };
    let bottom = CELL_HEIGHT - AXIS_BLOCK - legend_h;
    let plot_h = bottom - top;
    let sx = |x: f64| scale(x, x0, x1, left, right);
    let sy = |y: f64| scale(y, y0, y1, bottom, top);

    let _ = writeln!(out, "<g transform=\"translate({ox},{oy})\">");
    let _ = writeln!(
        out,
        "<defs><clipPath id=\"plot-clip-{idx}\"><rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" \
         height=\"{:.2}\"/></clipPath></defs>",
        left - 3.0,
        top - 3.0,
        plot_w + 6.0,
        plot_h + 6.0
    );
    let _ = writeln!(
        out,
        "<text x=\"{:.2}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\" \
         font-weight=\"bold\">{}</text>",
        CELL_WIDTH / 2.0,
        escape_xml(&chart.title)
    );

    // Grid lines and tick labels.
    for (v, label) in xt.values.iter().zip(&xt.labels) {
        let px = sx(*v);
        let _ = writeln!(
            out,
            "<line x1=\"{px:.2}\" y1=\"{top:.2}\" x2=\"{px:.2}\" y2=\"{bottom:.2}\" \
             stroke=\"#e5e5e5\" stroke-width=\"1\"/>"
        );
        let _ = writeln!(
            out,
            "<text x=\"{px:.2}\" y=\"{:.2}\" text-anchor=\"middle\" fill=\"#333333\">{}</text>",
            bottom + 15.0,
            escape_xml(label)
        );
    }
    for (v, label) in yt.values.iter().zip(&yt.labels) {
        let py = sy(*v);
        let _ = writeln!(
            out,
            "<line x1=\"{left:.2}\" y1=\"{py:.2}\" x2=\"{right:.2}\" y2=\"{py:.2}\" \
             stroke=\"#e5e5e5\" stroke-width=\"1\"/>"
        );
        let _ = writeln!(
            out,
            "<text x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"end\" fill=\"#333333\">{}</text>",
            left - 6.0,
            py + 4.0,
            escape_xml(label)
        );
    }
    let _ = writeln!(
        out,
        "<rect x=\"{left:.2}\" y=\"{top:.2}\" width=\"{plot_w:.2}\" height=\"{plot_h:.2}\" \
         fill=\"none\" stroke=\"#444444\" stroke-width=\"1\"/>"
    );

    // Data: all bands first so every line sits on top of every band.
    let _ = writeln!(out, "<g clip-path=\"url(#plot-clip-{idx})\">");
    for (i, d) in data.iter().enumerate() {
        if d.band.is_empty() {
            continue;
        }
        let colour = PALETTE[i % PALETTE.len()];
        let mut pts = String::new();
        for &(x, _, hi) in &d.band {
            let _ = write!(pts, "{:.2},{:.2} ", sx(x), sy(hi));
        }
        for &(x, lo, _) in d.band.iter().rev() {
            let _ = write!(pts, "{:.2},{:.2} ", sx(x), sy(lo));
        }
        let _ = writeln!(
            out,
            "<polygon points=\"{}\" fill=\"{colour}\" fill-opacity=\"0.2\" stroke=\"none\"/>",
            pts.trim_end()
        );
    }
    for (i, (s, d)) in chart.series.iter().zip(&data).enumerate() {
        if d.points.is_empty() {
            continue;
        }
        let colour = PALETTE[i % PALETTE.len()];
        let mut pts = String::new();
        for &(x, y) in &d.points {
            let _ = write!(pts, "{:.2},{:.2} ", sx(x), sy(y));
        }
        let dash = if s.dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.8\" \
             stroke-linejoin=\"round\" stroke-linecap=\"round\"{dash}/>",
            pts.trim_end()
        );
        if d.points.len() <= MAX_DOTS {
            for &(x, y) in &d.points {
                let _ = writeln!(
                    out,
                    "<circle cx=\"{:.2}\" cy=\"{:.2}\" r=\"2.5\" fill=\"{colour}\"/>",
                    sx(x),
                    sy(y)
                );
            }
        }
    }
    out.push_str("</g>\n");

    if !has_data {
        let _ = writeln!(
            out,
            "<text x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"middle\" fill=\"#888888\" \
             font-size=\"13\">no data</text>",
            left + plot_w / 2.0,
            top + plot_h / 2.0
        );
    }

    // Axis labels.
    let _ = writeln!(
        out,
        "<text x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"middle\">{}</text>",
        left + plot_w / 2.0,
        bottom + 32.0,
        escape_xml(&chart.x_label)
    );
    let _ = writeln!(
        out,
        "<text transform=\"translate(14,{:.2}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        top + plot_h / 2.0,
        escape_xml(&chart.y_label)
    );

    // Legend: colour swatch (band swatch behind it when the series has one) and label.
    let legend_top = bottom + AXIS_BLOCK + 2.0;
    for &(i, dx, row) in &entries {
        let s = &chart.series[i];
        let colour = PALETTE[i % PALETTE.len()];
        let x = left + dx;
        let y = legend_top + row as f64 * LEGEND_ROW + LEGEND_ROW / 2.0;
        if !data[i].band.is_empty() {
            let _ = writeln!(
                out,
                "<rect x=\"{x:.2}\" y=\"{:.2}\" width=\"18\" height=\"10\" fill=\"{colour}\" \
                 fill-opacity=\"0.2\"/>",
                y - 5.0
            );
        }
        let dash = if s.dashed {
            " stroke-dasharray=\"4 3\""
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<line x1=\"{x:.2}\" y1=\"{y:.2}\" x2=\"{:.2}\" y2=\"{y:.2}\" stroke=\"{colour}\" \
             stroke-width=\"2\"{dash}/>",
            x + 18.0
        );
        let _ = writeln!(
            out,
            "<text x=\"{:.2}\" y=\"{:.2}\">{}</text>",
            x + 24.0,
            y + 4.0,
            escape_xml(&s.label)
        );
    }
    if hidden > 0 {
        let _ = writeln!(
            out,
            "<text x=\"{right:.2}\" y=\"{:.2}\" text-anchor=\"end\" fill=\"#888888\">+{hidden} more</text>",
            legend_top + rows as f64 * LEGEND_ROW - 2.0
        );
    }
    out.push_str("</g>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Assert every opened element is closed in order (tags only; text is escaped).
    fn assert_well_formed(svg: &str) {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("unterminated tag") + start;
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            if tag.starts_with('?') {
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().unwrap_or_else(|| panic!("stray </{name}>"));
                assert_eq!(open, name.trim(), "mismatched close tag");
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap_or("").to_string();
                stack.push(name);
            }
        }
        assert!(stack.is_empty(), "unclosed elements: {stack:?}");
        assert!(!rest.contains('>'));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(svg.matches("</svg>").count(), 1);
        assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count());
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    }

    fn labels(lo: f64, hi: f64) -> Vec<String> {
        nice_ticks(lo, hi).labels
    }

    #[test]
    fn ticks_unit_range() {
        let t = nice_ticks(0.0, 1.0);
        assert_eq!(t.values, vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(t.labels, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
    }

    #[test]
    fn ticks_several_ranges() {
        assert_eq!(
            labels(0.0, 1000.0),
            ["0", "200", "400", "600", "800", "1000"]
        );
        assert_eq!(labels(0.0, 37.0), ["0", "10", "20", "30", "40"]);
        // 0.2 steps give 8 ticks, 0.5 steps 4: equally far from 6, so the larger step wins.
        assert_eq!(labels(-0.37, 0.81), ["-0.5", "0.0", "0.5", "1.0"]);
        assert_eq!(labels(0.1, 0.3), ["0.10", "0.15", "0.20", "0.25", "0.30"]);
        assert_eq!(labels(1e-7, 5e-7), ["1e-7", "2e-7", "3e-7", "4e-7", "5e-7"]);
        assert_eq!(labels(0.0, 3.2e7), ["0", "1e7", "2e7", "3e7", "4e7"]);
        assert_eq!(labels(1.5e-6, 2.5e-6).first().unwrap(), "1.4e-6");
        // Reversed bounds are ordered.
        assert_eq!(labels(1.0, 0.0), labels(0.0, 1.0));
    }

    #[test]
    fn ticks_degenerate_ranges_are_padded() {
        let t = nice_ticks(5.0, 5.0);
        assert!(t.values.contains(&5.0));
        assert!(t.values[0] <= 4.5 && *t.values.last().unwrap() >= 5.5);
        let t = nice_ticks(0.0, 0.0);
        assert!(t.values[0] <= -1.0 && *t.values.last().unwrap() >= 1.0);
        for (lo, hi) in [
            (f64::NAN, 1.0),
            (0.0, f64::INFINITY),
            (f64::NEG_INFINITY, f64::NAN),
        ] {
            assert_eq!(nice_ticks(lo, hi), nice_ticks(0.0, 1.0));
        }
        let t = nice_ticks(-f64::MAX, f64::MAX);
        assert!(t.values.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn ticks_always_nice_on_random_ranges() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut rand = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..5000 {
            let mag = 10f64.powf(rand() * 16.0 - 8.0);
            let lo = (rand() - 0.5) * mag * 4.0;
            let hi = lo + rand() * mag + mag * 1e-6;
            let t = nice_ticks(lo, hi);
            let n = t.values.len();
            assert!((4..=8).contains(&n), "{n} ticks for [{lo}, {hi}]");
            let tol = 1e-6 * (hi - lo);
            assert!(t.values[0] <= lo + tol && t.values[n - 1] >= hi - tol);
            assert!(t.values.windows(2).all(|w| w[0] < w[1]));
            for l in &t.labels {
                assert!(l.len() <= 16, "noisy label {l} for [{lo}, {hi}]");
            }
            let mut uniq = t.labels.clone();
            uniq.dedup();
            assert_eq!(uniq.len(), n, "duplicate labels {:?}", t.labels);
        }
    }

    #[test]
    fn mean_band_std_over_intersection() {
        let a = vec![(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)];
        let b = vec![(3.0, 6.0), (2.0, 5.0), (1.0, 4.0)];
        let s = Series::mean_band("r", &[a.clone(), b.clone()], false);
        assert_eq!(s.label, "r");
        assert_eq!(s.points, vec![(1.0, 3.0), (2.0, 4.0)]);
        let sd = 2f64.sqrt(); // values (2, 4): sample variance 2
        assert_eq!(s.band.len(), 2);
        for ((x, lo, hi), (px, m)) in s.band.iter().zip(&s.points) {
            assert_eq!(x, px);
            assert!((lo - (m - sd)).abs() < 1e-12 && (hi - (m + sd)).abs() < 1e-12);
        }
        let mm = Series::mean_band("r", &[a, b], true);
        assert_eq!(mm.band, vec![(1.0, 2.0, 4.0), (2.0, 3.0, 5.0)]);
    }

    #[test]
    fn mean_band_edge_cases() {
        let one = Series::mean_band("one", &[vec![(0.0, 1.0), (1.0, 3.0)]], false);
        assert_eq!(one.points, vec![(0.0, 1.0), (1.0, 3.0)]);
        assert_eq!(one.band, vec![(0.0, 1.0, 1.0), (1.0, 3.0, 3.0)]);
        assert!(Series::mean_band("none", &[], false).points.is_empty());
        let with_empty = Series::mean_band("e", &[vec![(0.0, 1.0)], vec![]], false);
        assert!(with_empty.points.is_empty() && with_empty.band.is_empty());
        // A NaN drops that x; a re-logged x keeps the later value.
        let a = vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 1.0)];
        let b = vec![(0.0, 0.0), (1.0, 3.0), (2.0, 9.0), (2.0, 3.0)];
        let s = Series::mean_band("n", &[a, b], true);
        assert_eq!(s.points, vec![(0.0, 0.5), (2.0, 2.0)]);
        assert_eq!(s.band, vec![(0.0, 0.0, 1.0), (2.0, 1.0, 3.0)]);
    }

    #[test]
    fn smoothing_is_an_ema() {
        let s = Series::line(
            "s",
            vec![(0.0, 0.0), (1.0, 2.0), (2.0, f64::NAN), (3.0, 4.0)],
        )
        .with_band(vec![(0.0, -1.0, 1.0), (1.0, 1.0, 3.0)])
        .smoothed(0.5);
        assert_eq!(s.points[0], (0.0, 0.0));
        assert_eq!(s.points[1], (1.0, 1.0));
        assert!(s.points[2].1.is_nan());
        assert_eq!(s.points[3], (3.0, 2.5));
        assert_eq!(s.band, vec![(0.0, -1.0, 1.0), (1.0, 0.0, 2.0)]);
        let raw = Series::line("s", vec![(0.0, 1.0), (1.0, 5.0)]);
        assert_eq!(raw.clone().smoothed(1.0), raw);
        assert_eq!(raw.clone().smoothed(7.0), raw);
        assert_eq!(raw.clone().smoothed(0.0), raw);
        assert_eq!(raw.clone().smoothed(f64::NAN), raw);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape_xml("a<b & c>d \"q\" 'x'"),
            "a&lt;b &amp; c&gt;d &quot;q&quot; &apos;x&apos;"
        );
        assert_eq!(escape_xml("bell\u{7}"), "bell\u{FFFD}");
        let chart = Chart::new("<title> & co", "x<", ">y")
            .with_series(Series::line("a<b & c>d", vec![(0.0, 1.0), (1.0, 2.0)]));
        let svg = figure_svg(&[chart], 1);
        assert!(svg.contains("a&lt;b &amp; c&gt;d"));
        assert!(svg.contains("&lt;title&gt; &amp; co"));
        assert!(svg.contains(">x&lt;</text>") && svg.contains(">&gt;y</text>"));
        assert!(!svg.contains("a<b") && !svg.contains("<title>"));
        assert_well_formed(&svg);
    }

    #[test]
    fn figure_is_well_formed_with_one_line_per_series_and_one_polygon_per_band() {
        let runs = vec![
            (0..50)
                .map(|i| (i as f64, (i as f64).sqrt()))
                .collect::<Vec<_>>(),
            (0..50)
                .map(|i| (i as f64, (i as f64).sqrt() + 1.0))
                .collect(),
        ];
        let reward = Chart::new("reward", "step", "reward")
            .with_series(Series::mean_band("coupled", &runs, false).smoothed(0.3))
            .with_series(Series::line("baseline", vec![(0.0, 1.0), (49.0, 2.0)]).dashed())
            .with_series(Series::line("empty", vec![]));
        let pass = Chart::new("pass@1", "step", "pass@1")
            .with_y_range(0.0, 1.0)
            .with_series(Series::line(
                "pass@1",
                vec![(0.0, 0.1), (10.0, 0.3), (20.0, 1.4)],
            ));
        let empty = Chart::new("nothing", "step", "value");
        let svg = figure_svg(&[reward, pass, empty], 2);
        assert!(svg.starts_with("<?xml"));
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert_eq!(svg.matches("<polygon").count(), 1);
        assert_eq!(svg.matches("stroke-dasharray=\"6 4\"").count(), 1);
        // 50 points get no dots; 2 + 3 points do.
        assert_eq!(svg.matches("<circle").count(), 5);
        assert_eq!(svg.matches(">no data</text>").count(), 1);
        assert_eq!(svg.matches("<clipPath").count(), 3);
        assert!(svg.contains("width=\"960\" height=\"640\""));
        // Palette colours follow series order.
        assert!(svg.contains(PALETTE[0]) && svg.contains(PALETTE[1]));
        // The fixed pass@1 range sets the ticks.
        assert!(svg.contains(">1.0</text>") && !svg.contains(">1.4</text>"));
    }

    #[test]
    fn nan_inf_and_degenerate_inputs_never_leak_or_panic() {
        let chart = Chart::new("t", "x", "y")
            .with_series(Series::line(
                "mixed",
                vec![
                    (0.0, 1.0),
                    (1.0, f64::NAN),
                    (f64::INFINITY, 2.0),
                    (3.0, 2.0),
                ],
            ))
            .with_series(Series::line("all nan", vec![(f64::NAN, f64::NAN)]))
            .with_series(
                Series::line("const", vec![(5.0, 0.5), (5.0, 0.5)])
                    .with_band(vec![(5.0, f64::NEG_INFINITY, 1.0), (5.0, 0.4, 0.6)]),
            );
        let svg = figure_svg(&[chart], 1);
        assert_well_formed(&svg);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<polygon").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 2 + 2);
        assert!(!svg.contains(">no data</text>"));

        // Only NaN: axes and the note, no lines.
        let svg = figure_svg(
            &[Chart::new("t", "x", "y").with_series(Series::line("n", vec![(f64::NAN, 1.0)]))],
            1,
        );
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<polyline").count(), 0);
        assert!(svg.contains(">no data</text>"));

        // Constant series and a single point get padded ranges.
        let svg = figure_svg(
            &[Chart::new("c", "x", "y").with_series(Series::line("one", vec![(3.0, 0.0)]))],
            1,
        );
        assert!(!svg.contains("NaN") && !svg.contains("inf"));

        // No charts, absurd columns, invalid fixed range.
        for svg in [
            figure_svg(&[], 0),
            figure_svg(&[Chart::default()], 99),
            figure_svg(&[Chart::new("r", "x", "y").with_y_range(1.0, 1.0)], 1),
        ] {
            assert_well_formed(&svg);
            assert!(svg.contains(">no data</text>"));
            assert!(!svg.contains("NaN") && !svg.contains("inf"));
        }
    }

    #[test]
    fn legend_wraps_and_many_series_reuse_palette() {
        let mut chart = Chart::new("many", "x", "y");
        for i in 0..40 {
            chart = chart.with_series(Series::line(
                format!("series number {i}"),
                vec![(0.0, i as f64), (1.0, i as f64 + 1.0)],
            ));
        }
        let svg = figure_svg(&[chart], 1);
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<polyline").count(), 40);
        assert!(svg.contains(" more</text>"));
    }

    #[test]
    fn write_svg_writes_the_figure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/plot.svg");
        let charts = [Chart::new("r", "step", "reward")
            .with_series(Series::line("a", vec![(0.0, 0.0), (1.0, 1.0)]))];
        write_svg(&path, &charts, 1).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            figure_svg(&charts, 1)
        );
    }
}
