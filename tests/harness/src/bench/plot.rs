//! Small SVG line charts for the benchmark report: log or linear axes, one polyline with point
//! markers per series, optional horizontal reference lines, a legend. No dependencies: the
//! output is plain SVG 1.1 text that browsers and GitHub render.

use std::fmt::Write as _;

/// How an axis maps values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    Linear,
    /// Base 10; values must be > 0 (others are left out of the plot).
    Log,
}

/// One line of the chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

/// A line chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_scale: Scale,
    pub y_scale: Scale,
    pub series: Vec<Series>,
    /// Horizontal reference lines (label, y).
    pub references: Vec<(String, f64)>,
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 240.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// SVG is XML: the JUnit writer's escaping serves for text and attribute values.
pub use crate::junit::escape;

/// An axis: the data range after scaling, and its ticks.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    pub scale: Scale,
    /// Bounds in scaled units (log10 for [`Scale::Log`]).
    pub lo: f64,
    pub hi: f64,
}

impl Axis {
    /// An axis covering `values` (those a log axis can show), with round bounds.
    pub fn fit(scale: Scale, values: impl IntoIterator<Item = f64>) -> Self {
        let scaled: Vec<f64> = values
            .into_iter()
            .filter_map(|v| transform(scale, v))
            .collect();
        let (mut lo, mut hi) = scaled
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
                (l.min(*v), h.max(*v))
            });
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        match scale {
            Scale::Log => {
                lo = lo.floor();
                hi = hi.ceil();
                if hi <= lo {
                    hi = lo + 1.0;
                }
            }
            Scale::Linear => {
                lo = lo.min(0.0);
                if hi <= lo {
                    hi = lo + 1.0;
                }
                let step = nice_step((hi - lo) / 5.0);
                hi = (hi / step).ceil() * step;
            }
        }
        Self { scale, lo, hi }
    }

    /// Where `v` lands between 0 (lo) and 1 (hi), if the axis can show it.
    pub fn position(&self, v: f64) -> Option<f64> {
        transform(self.scale, v).map(|t| (t - self.lo) / (self.hi - self.lo))
    }

    /// Tick values (unscaled) and their labels.
    pub fn ticks(&self) -> Vec<(f64, String)> {
        match self.scale {
            Scale::Log => (self.lo as i32..=self.hi as i32)
                .map(|e| (10f64.powi(e), power_label(e)))
                .collect(),
            Scale::Linear => {
                let step = nice_step((self.hi - self.lo) / 5.0);
                let mut out = Vec::new();
                let mut v = self.lo;
                while v <= self.hi + step / 2.0 {
                    out.push((v, short_number(v)));
                    v += step;
                }
                out
            }
        }
    }
}

fn transform(scale: Scale, v: f64) -> Option<f64> {
    match scale {
        Scale::Linear if v.is_finite() => Some(v),
        Scale::Log if v.is_finite() && v > 0.0 => Some(v.log10()),
        _ => None,
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

fn power_label(e: i32) -> String {
    match e {
        0 => "1".into(),
        1 => "10".into(),
        2 => "100".into(),
        3 => "1k".into(),
        4 => "10k".into(),
        5 => "100k".into(),
        6 => "1M".into(),
        7 => "10M".into(),
        8 => "100M".into(),
        9 => "1G".into(),
        e => format!("1e{e}"),
    }
}

/// A compact number for tick labels and point values.
pub fn short_number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.3}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
    .replace(".000", "")
}

impl Chart {
    /// The chart as an SVG document.
    pub fn render(&self) -> String {
        let xs = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0));
        let ys = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .chain(self.references.iter().map(|r| r.1));
        let x = Axis::fit(self.x_scale, xs);
        let y = Axis::fit(self.y_scale, ys);
        let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
        let px = |v: f64| x.position(v).map(|t| LEFT + t * pw);
        let py = |v: f64| y.position(v).map(|t| TOP + (1.0 - t) * ph);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            s,
            r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
            LEFT + pw / 2.0,
            escape(&self.title)
        );
        // Grid and ticks.
        for (v, label) in x.ticks() {
            if let Some(xp) = px(v) {
                let _ = writeln!(
                    s,
                    r##"<line x1="{xp:.1}" y1="{TOP}" x2="{xp:.1}" y2="{:.1}" stroke="#ddd"/><text x="{xp:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                    TOP + ph,
                    TOP + ph + 16.0,
                    escape(&label)
                );
            }
        }
        for (v, label) in y.ticks() {
            if let Some(yp) = py(v) {
                let _ = writeln!(
                    s,
                    r##"<line x1="{LEFT}" y1="{yp:.1}" x2="{:.1}" y2="{yp:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                    LEFT + pw,
                    LEFT - 6.0,
                    yp + 4.0,
                    escape(&label)
                );
            }
        }
        let _ = writeln!(
            s,
            r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            HEIGHT - 18.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + ph / 2.0,
            escape(&self.y_label)
        );
        for (label, v) in &self.references {
            if let Some(yp) = py(*v) {
                let _ = writeln!(
                    s,
                    r##"<line x1="{LEFT}" y1="{yp:.1}" x2="{:.1}" y2="{yp:.1}" stroke="#555" stroke-dasharray="2,3"/><text x="{:.1}" y="{:.1}" fill="#555">{}</text>"##,
                    LEFT + pw,
                    LEFT + 4.0,
                    yp - 4.0,
                    escape(label)
                );
            }
        }
        for (i, series) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let dash = if series.dashed {
                r#" stroke-dasharray="6,4""#
            } else {
                ""
            };
            let points: Vec<(f64, f64)> = series
                .points
                .iter()
                .filter_map(|&(vx, vy)| Some((px(vx)?, py(vy)?)))
                .collect();
            let path: Vec<String> = points
                .iter()
                .map(|(a, b)| format!("{a:.1},{b:.1}"))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#,
                path.join(" ")
            );
            for (a, b) in &points {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{a:.1}" cy="{b:.1}" r="3" fill="{colour}"/>"#
                );
            }
            let ly = TOP + 10.0 + 20.0 * i as f64;
            let lx = LEFT + pw + 12.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
                lx + 24.0,
                lx + 30.0,
                ly + 4.0,
                escape(&series.label)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart {
        Chart {
            title: "commands per unmap <by strategy>".into(),
            x_label: "pages".into(),
            y_label: "commands".into(),
            x_scale: Scale::Log,
            y_scale: Scale::Log,
            series: vec![
                Series {
                    label: "per-page".into(),
                    points: vec![(1.0, 2.0), (16.0, 17.0), (512.0, 513.0)],
                    dashed: false,
                },
                Series {
                    label: "range & co".into(),
                    points: vec![(1.0, 2.0), (16.0, 2.0), (512.0, 2.0)],
                    dashed: true,
                },
            ],
            references: vec![("floor".into(), 2.0)],
        }
    }

    #[test]
    fn a_chart_is_well_formed_svg_with_every_series() {
        let svg = chart().render();
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        let lines: Vec<_> = root
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].attribute("points").unwrap().split(' ').count(), 3);
        let texts: Vec<_> = root.descendants().filter_map(|n| n.text()).collect();
        for label in [
            "per-page",
            "range & co",
            "floor",
            "commands per unmap <by strategy>",
            "1k",
        ] {
            assert!(texts.contains(&label), "{label} missing: {texts:?}");
        }
    }

    #[test]
    fn log_axes_drop_values_they_cannot_show() {
        let mut c = chart();
        c.series[0].points.push((0.0, 5.0));
        c.series[0].points.push((4.0, -1.0));
        let svg = c.render();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let first = doc
            .descendants()
            .find(|n| n.has_tag_name("polyline"))
            .unwrap();
        assert_eq!(first.attribute("points").unwrap().split(' ').count(), 3);
    }

    #[test]
    fn points_land_inside_the_plot_area() {
        let svg = chart().render();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        for c in doc.descendants().filter(|n| n.has_tag_name("circle")) {
            let x: f64 = c.attribute("cx").unwrap().parse().unwrap();
            let y: f64 = c.attribute("cy").unwrap().parse().unwrap();
            assert!((LEFT..=WIDTH - RIGHT).contains(&x), "x {x}");
            assert!((TOP..=HEIGHT - BOTTOM).contains(&y), "y {y}");
        }
    }

    #[test]
    fn axes_have_round_bounds_and_ticks() {
        let log = Axis::fit(Scale::Log, [1.0, 262_144.0]);
        assert_eq!((log.lo, log.hi), (0.0, 6.0));
        assert_eq!(log.ticks().len(), 7);
        assert_eq!(log.position(1000.0), Some(0.5));
        let lin = Axis::fit(Scale::Linear, [0.0, 97.0]);
        assert_eq!((lin.lo, lin.hi), (0.0, 100.0));
        assert_eq!(lin.ticks().first().map(|t| t.1.as_str()), Some("0"));
        assert_eq!(lin.ticks().last().map(|t| t.1.as_str()), Some("100"));
        let empty = Axis::fit(Scale::Log, []);
        assert!(empty.hi > empty.lo);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(short_number(262_144.0), "262.1k");
        assert_eq!(short_number(2303.0), "2303");
        assert_eq!(short_number(1.5), "1.50");
    }
}
