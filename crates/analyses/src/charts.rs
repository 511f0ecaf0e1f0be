//! Plot helpers shared by the analyses: errors that name the plot, and a line chart.
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

#[derive(Debug, thiserror::Error)]
#[error("{plot}: cannot draw the plot: {message}")]
pub struct ChartError {
    pub plot: String,
    pub message: String,
}

pub(crate) fn plot_err(plot: &str) -> impl Fn(String) -> ChartError + '_ {
    move |message| ChartError {
        plot: plot.to_string(),
        message,
    }
}

/// One line of a line chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// A line chart of `series` as SVG; `log_y` plots y on a log scale (values at or below zero
/// are drawn at the lowest positive value shown).
pub fn lines(
    name: &str,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    series: &[Series],
    log_y: bool,
) -> Result<String, ChartError> {
    let err = plot_err(name);
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (x_lo, x_hi) = xs.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let (x_lo, x_hi) = if x_lo > x_hi {
        (0.0, 1.0)
    } else if x_lo == x_hi {
        (x_lo - 0.5, x_hi + 0.5)
    } else {
        (x_lo, x_hi)
    };
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|y| y.is_finite())
        .collect();
    let y_hi = ys.iter().copied().fold(f64::MIN, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(80);
        if log_y {
            let positive = ys.iter().copied().filter(|y| *y > 0.0);
            let lo = positive.fold(f64::MAX, f64::min);
            let (lo, hi) = if lo > y_hi || lo == f64::MAX {
                (1e-6, 1.0)
            } else {
                ((lo / 2.0).max(y_hi * 1e-9), y_hi * 2.0)
            };
            let mut chart = builder
                .build_cartesian_2d(x_lo..x_hi, (lo..hi).log_scale())
                .map_err(|e| err(e.to_string()))?;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .x_label_formatter(&integral)
                .y_label_formatter(&|v| format!("{v:.0e}"))
                .draw()
                .map_err(|e| err(e.to_string()))?;
            draw(&mut chart, series, lo, &err)?;
        } else {
            let hi = if y_hi > 0.0 { y_hi * 1.1 } else { 1.0 };
            let lo = ys.iter().copied().fold(0.0, f64::min);
            let mut chart = builder
                .build_cartesian_2d(x_lo..x_hi, lo..hi)
                .map_err(|e| err(e.to_string()))?;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .x_label_formatter(&integral)
                .draw()
                .map_err(|e| err(e.to_string()))?;
            draw(&mut chart, series, f64::MIN, &err)?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

/// Blocks and positions are whole numbers: ticks between them are left blank.
fn integral(v: &f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        String::new()
    }
}

fn draw<'a, 'b: 'a, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, Y>>,
    series: &[Series],
    floor: f64,
    err: &impl Fn(String) -> ChartError,
) -> Result<(), ChartError> {
    for (n, s) in series.iter().enumerate() {
        let color = Palette99::pick(n).to_rgba();
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|&(x, y)| (x, if y.is_finite() { y.max(floor) } else { floor }))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(|e| err(e.to_string()))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(e.to_string()))
}

/// A grid of values (`values[row][col]`, NaN for an empty cell) coloured white to dark red
/// linearly over `lo..=hi`, each cell labelled with its value.
pub fn grid(
    name: &str,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    (cols, rows): (&[String], &[String]),
    values: &[Vec<f64>],
    (lo, hi): (f64, f64),
) -> Result<String, ChartError> {
    let err = plot_err(name);
    let (nc, nr) = (cols.len().max(1), rows.len().max(1));
    let heat = |v: f64| {
        let t = if hi > lo { (v - lo) / (hi - lo) } else { 1.0 };
        let t = t.clamp(0.0, 1.0);
        let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
        RGBColor(lerp(255.0, 140.0), lerp(250.0, 10.0), lerp(235.0, 20.0))
    };
    let mut svg = String::new();
    {
        let height = 110 + 30 * nr as u32;
        let root = SVGBackend::with_string(&mut svg, (960, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(90)
            .build_cartesian_2d((0..nc - 1).into_segmented(), (0..nr - 1).into_segmented())
            .map_err(|e| err(e.to_string()))?;
        let centre = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) => Some(*i),
            _ => None,
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_labels(nc)
            .y_labels(nr)
            .x_label_formatter(&|v| {
                centre(v)
                    .and_then(|i| cols.get(i).cloned())
                    .unwrap_or_default()
            })
            .y_label_formatter(&|v| {
                centre(v)
                    .and_then(|i| rows.get(i).cloned())
                    .unwrap_or_default()
            })
            .draw()
            .map_err(|e| err(e.to_string()))?;
        let corner = |c: usize, r: usize| (SegmentValue::Exact(c), SegmentValue::Exact(r));
        let cells: Vec<(usize, usize, f64)> = values
            .iter()
            .enumerate()
            .flat_map(|(r, row)| row.iter().enumerate().map(move |(c, v)| (c, r, *v)))
            .filter(|(_, _, v)| v.is_finite())
            .collect();
        chart
            .draw_series(cells.iter().map(|&(c, r, v)| {
                Rectangle::new([corner(c, r), corner(c + 1, r + 1)], heat(v).filled())
            }))
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(cells.iter().map(|&(c, r, v)| {
                Text::new(
                    format!("{v:.2}"),
                    (SegmentValue::CenterOf(c), SegmentValue::CenterOf(r)),
                    ("sans-serif", 12),
                )
            }))
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

/// Points of `series` as SVG (no lines), both axes linear over the points' range; points
/// outside `clip` (when given) are drawn at its edge.
pub fn scatter(
    name: &str,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    series: &[Series],
    clip: Option<(f64, f64)>,
) -> Result<String, ChartError> {
    let err = plot_err(name);
    let clamp = |v: f64| match clip {
        Some((lo, hi)) => v.clamp(lo, hi),
        None => v,
    };
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|(x, y)| (clamp(x), clamp(y)))
        .collect();
    let range = |vals: &mut dyn Iterator<Item = f64>| {
        let (lo, hi) = vals.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if lo > hi {
            (0.0, 1.0)
        } else if lo == hi {
            (lo - 0.5, hi + 0.5)
        } else {
            let pad = (hi - lo) * 0.05;
            (lo - pad, hi + pad)
        }
    };
    let (x_lo, x_hi) = range(&mut pts.iter().map(|p| p.0));
    let (y_lo, y_hi) = range(&mut pts.iter().map(|p| p.1));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(80)
            .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (n, s) in series.iter().enumerate() {
            let color = Palette99::pick(n).to_rgba();
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|&(x, y)| (clamp(x), clamp(y)))
                .collect();
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 4, color.filled())),
                )
                .map_err(|e| err(e.to_string()))?
                .label(s.label.clone())
                .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

/// A histogram of `counts` over equal bins of `lo..hi`, as SVG.
pub fn histogram(
    name: &str,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    counts: &[u64],
    (lo, hi): (f64, f64),
) -> Result<String, ChartError> {
    let err = plot_err(name);
    let top = counts.iter().copied().max().unwrap_or(0).max(1) as f64 * 1.1;
    let width = (hi - lo) / counts.len().max(1) as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(80)
            .build_cartesian_2d(lo..hi, 0.0..top)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        let color = Palette99::pick(0).to_rgba();
        chart
            .draw_series(counts.iter().enumerate().map(|(i, &c)| {
                let x0 = lo + i as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.95, c as f64)], color.filled())
            }))
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}
