//! Plots of benchmark results, as SVG (plotters) and PNG (the same SVG rendered by resvg with
//! the system's sans-serif font).
//!
//! - `saving_vs_quality`: energy saving vs standard HLM against BERTScore F1 (or exact token
//!   agreement when BERTScore was not computed), one point per method and sweep point: the
//!   trade-off, with each method's Pareto front drawn as a line and each point's 95 %
//!   intervals (quality and saving) as error bars; `throughput_vs_quality` likewise;
//! - for sweeps, `upload_rate`, `tokens_per_s`, `energy_saving` and `quality` against the first
//!   swept key, one line per method (upload rate vs threshold, throughput vs link quality).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::bench::MethodSummary;
use crate::metrics::Metric;

/// Why a plot could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot draw {path}: {message}")]
    Draw { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One line or point set of a plot.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Join the points (in x order) with a line; else points only.
    pub joined: bool,
    /// Draw the points as markers (a fitted line may want none).
    pub markers: bool,
    /// 95 % intervals of each point, drawn as error bars (empty: none; else one a point).
    pub intervals: Vec<Intervals>,
}

/// A point's intervals along each axis.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Intervals {
    pub x: Option<(f64, f64)>,
    pub y: Option<(f64, f64)>,
}

impl Series {
    /// Markers, joined or not.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, joined: bool) -> Self {
        Series {
            name: name.into(),
            points,
            joined,
            markers: true,
            intervals: Vec::new(),
        }
    }

    /// Every value the plot must show: the points and their intervals' ends.
    fn extent(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        let ends = self
            .intervals
            .iter()
            .zip(&self.points)
            .flat_map(|(i, &(x, y))| {
                let (x0, x1) = i.x.unwrap_or((x, x));
                let (y0, y1) = i.y.unwrap_or((y, y));
                [(x0, y0), (x1, y1)]
            });
        self.points.iter().copied().chain(ends)
    }
}

/// One benchmark outcome: the swept values (empty without a sweep) and the method summaries.
pub struct Point<'a> {
    pub values: &'a [(String, f64)],
    pub summary: &'a [MethodSummary],
}

/// Tableau's ten categorical colours: one per method of `hlm bench`'s default list.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.08).max(1e-3);
    (lo - pad)..(hi + pad)
}

/// Draw `series` to `stem.svg` and `stem.png`.
pub fn draw(
    stem: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> Result<Vec<PathBuf>, PlotError> {
    let svg_path = stem.with_extension("svg");
    let fail = |e: &dyn std::fmt::Display| PlotError::Draw {
        path: svg_path.clone(),
        message: e.to_string(),
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let xs = range(series.iter().flat_map(|s| s.extent().map(|p| p.0)));
        let ys = range(series.iter().flat_map(|s| s.extent().map(|p| p.1)));
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(xs, ys)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(|e| fail(&e))?;
        for (i, s) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let mut pts = s.points.clone();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            if s.joined && pts.len() > 1 {
                let line = chart
                    .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
                    .map_err(|e| fail(&e))?;
                if !s.markers {
                    line.label(s.name.clone()).legend(move |(x, y)| {
                        PathElement::new(vec![(x - 6, y), (x + 6, y)], colour.stroke_width(2))
                    });
                }
            }
            for (&(x, y), i) in s.points.iter().zip(&s.intervals) {
                let style = colour.mix(0.6).stroke_width(1);
                if let Some((lo, hi)) = i.x {
                    chart
                        .draw_series(std::iter::once(ErrorBar::new_horizontal(
                            y, lo, x, hi, style, 6,
                        )))
                        .map_err(|e| fail(&e))?;
                }
                if let Some((lo, hi)) = i.y {
                    chart
                        .draw_series(std::iter::once(ErrorBar::new_vertical(
                            x, lo, y, hi, style, 6,
                        )))
                        .map_err(|e| fail(&e))?;
                }
            }
            if s.markers {
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                    .map_err(|e| fail(&e))?
                    .label(s.name.clone())
                    .legend(move |(x, y)| Circle::new((x, y), 4, colour.filled()));
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PlotError::Io { path, source }
    };
    std::fs::write(&svg_path, &svg).map_err(io(&svg_path))?;
    let png_path = stem.with_extension("png");
    write_png(&svg, &png_path)?;
    Ok(vec![svg_path, png_path])
}

fn write_png(svg: &str, path: &Path) -> Result<(), PlotError> {
    let fail = |m: String| PlotError::Draw {
        path: path.to_path_buf(),
        message: m,
    };
    let mut opt = resvg::usvg::Options::default();
    opt.fontdb_mut().load_system_fonts();
    // plotters asks for the generic "sans-serif"; name a family most systems have.
    if opt
        .fontdb
        .faces()
        .any(|f| f.families.iter().any(|(n, _)| n == "DejaVu Sans"))
    {
        opt.fontdb_mut().set_sans_serif_family("DejaVu Sans");
    }
    let tree = resvg::usvg::Tree::from_str(svg, &opt).map_err(|e| fail(e.to_string()))?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| fail("empty image".into()))?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    pixmap.save_png(path).map_err(|e| fail(e.to_string()))
}

/// A method's (x, y) at one benchmark point, if it has both.
type PointOf<'f> = dyn Fn(&MethodSummary, &Point) -> Option<((f64, f64), Intervals)> + 'f;
/// One metric of a method summary.
type MetricOf<'f> = dyn Fn(&MethodSummary) -> Option<f64> + 'f;

/// Every plot of a benchmark into `dir`; returns the files written.
pub fn bench_plots(dir: &Path, points: &[Point<'_>]) -> Result<Vec<PathBuf>, PlotError> {
    let mut written = Vec::new();
    let Some(first) = points.first() else {
        return Ok(written);
    };
    let use_bertscore = first.summary.iter().any(|m| m.bertscore_f1.is_some());
    let quality = |m: &MethodSummary| {
        if use_bertscore {
            m.bertscore_f1
        } else {
            m.token_agreement
        }
    };
    let quality_metric = if use_bertscore {
        Metric::BertscoreF1
    } else {
        Metric::TokenAgreement
    };
    let quality_name = if use_bertscore {
        "BERTScore F1 (against LLM-only samples or dataset references)"
    } else {
        "token agreement with the same-seed LLM-only output"
    };
    let interval =
        |m: &MethodSummary, metric: Metric| m.intervals.get(&metric).map(|i| (i.low, i.high));
    let methods: Vec<&str> = first.summary.iter().map(|m| m.method.as_str()).collect();
    let per_method = |f: &PointOf| -> Vec<Series> {
        methods
            .iter()
            .map(|name| {
                let (pts, intervals): (Vec<_>, Vec<_>) = points
                    .iter()
                    .filter_map(|p| {
                        p.summary
                            .iter()
                            .find(|m| m.method == *name)
                            .and_then(|m| f(m, p))
                    })
                    .unzip();
                Series {
                    intervals,
                    ..Series::new(*name, pts, points.len() > 1)
                }
            })
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    // Quality against the papers' two headlines: energy saving, and token throughput
    // (modelled: device, link and server time).
    type WithInterval<'f> = dyn Fn(&MethodSummary) -> Option<(f64, Option<(f64, f64)>)> + 'f;
    let tradeoffs: [(&str, &str, &str, &WithInterval); 2] = [
        (
            "saving_vs_quality",
            "Energy saving vs quality",
            "energy saving vs standard HLM",
            &|m| {
                let i = m.energy_saving_interval.map(|i| (i.low, i.high));
                Some((m.energy_saving_vs_hlm?, i))
            },
        ),
        (
            "throughput_vs_quality",
            "Token throughput vs quality",
            "generated tokens per modelled second",
            &|m| {
                let i = interval(m, Metric::ModelledTokensPerS);
                Some((m.modelled_tokens_per_s, i))
            },
        ),
    ];
    for (file, title, y_label, metric) in tradeoffs {
        let series = per_method(&|m, _| {
            let (y, y_interval) = metric(m)?;
            let intervals = Intervals {
                x: interval(m, quality_metric),
                y: y_interval,
            };
            Some(((quality(m)?, y), intervals))
        });
        if !series.is_empty() {
            written.extend(draw(
                &dir.join(file),
                title,
                quality_name,
                y_label,
                &pareto_fronts(&series),
            )?);
        }
    }
    if let Some((key, _)) = first.values.first() {
        let x = |p: &Point| p.values.first().map(|(_, v)| *v);
        let curves: [(&str, &str, &MetricOf); 4] = [
            ("upload_rate", "upload rate", &|m| Some(m.upload_rate)),
            (
                "tokens_per_s",
                "generated tokens per modelled second",
                &|m| Some(m.modelled_tokens_per_s),
            ),
            ("energy_saving", "energy saving vs standard HLM", &|m| {
                m.energy_saving_vs_hlm
            }),
            ("quality", quality_name, &|m| quality(m)),
        ];
        for (file, y_desc, f) in curves {
            let series = per_method(&|m, p| Some(((x(p)?, f(m)?), Intervals::default())));
            if !series.is_empty() {
                written.extend(draw(
                    &dir.join(file),
                    &format!("{y_desc} vs {key}"),
                    key,
                    y_desc,
                    &series,
                )?);
            }
        }
    }
    Ok(written)
}

/// Each method's points reduced to its Pareto front (higher quality and higher saving are
/// both better); a method with one point keeps it.
pub fn pareto_fronts(series: &[Series]) -> Vec<Series> {
    series
        .iter()
        .map(|s| {
            let kept: Vec<usize> = (0..s.points.len())
                .filter(|&i| {
                    let (q, e) = s.points[i];
                    !s.points
                        .iter()
                        .any(|&(q2, e2)| q2 >= q && e2 >= e && (q2 > q || e2 > e))
                })
                .collect();
            Series {
                points: kept.iter().map(|&i| s.points[i]).collect(),
                intervals: kept
                    .iter()
                    .filter_map(|&i| s.intervals.get(i).copied())
                    .collect(),
                ..s.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_front_keeps_only_undominated_points() {
        let s = Series::new(
            "m",
            vec![(0.9, 0.1), (0.8, 0.3), (0.7, 0.2), (0.5, 0.5), (0.5, 0.4)],
            true,
        );
        let f = pareto_fronts(&[s]);
        assert_eq!(f[0].points, vec![(0.9, 0.1), (0.8, 0.3), (0.5, 0.5)]);
    }

    #[test]
    fn plots_are_written_as_svg_and_png() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let files = draw(
            &dir.join("t"),
            "title",
            "x",
            "y",
            &[Series::new("a", vec![(0.0, 1.0), (1.0, 2.0)], true)],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("title"));
        let png = std::fs::read(&files[1]).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}
