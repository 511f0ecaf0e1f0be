//! The weight audit's plots, as SVG: where the change is (layer x module heatmap, per-layer
//! bars) and what shape it has (normalised singular-value spectra of the most changed tensors).
use std::collections::BTreeMap;

use neurodiff_protocol::WeightsReport;
use plotters::prelude::*;

use crate::charts::{plot_err, ChartError};

/// White to dark red, for a value in [0, 1].
fn heat(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(lerp(255.0, 140.0), lerp(250.0, 10.0), lerp(235.0, 20.0))
}

/// rel_fro by layer (columns) and module (rows), coloured on a log scale.
pub fn heatmap(report: &WeightsReport) -> Result<String, ChartError> {
    let err = plot_err("heatmap.svg");
    let mut svg = String::new();
    let mut cells: BTreeMap<(String, usize), f64> = BTreeMap::new();
    for t in &report.tensors {
        if let Some(layer) = t.layer {
            let v = cells.entry((t.module.clone(), layer)).or_insert(0.0);
            *v = v.max(t.rel_fro.unwrap_or(0.0));
        }
    }
    let modules: Vec<String> = {
        let mut m: Vec<String> = cells.keys().map(|(m, _)| m.clone()).collect();
        m.dedup();
        m
    };
    let n_layers = cells.keys().map(|(_, l)| l + 1).max().unwrap_or(1);
    let positive: Vec<f64> = cells.values().copied().filter(|v| *v > 0.0).collect();
    let hi = positive.iter().copied().fold(f64::MIN, f64::max).log10();
    let lo = positive
        .iter()
        .copied()
        .fold(f64::MAX, f64::min)
        .log10()
        .max(hi - 6.0);
    let scale = |v: f64| {
        if v <= 0.0 {
            0.0
        } else if hi > lo {
            (v.log10() - lo) / (hi - lo)
        } else {
            1.0
        }
    };

    let height = 120 + 28 * modules.len().max(1) as u32;
    {
        let root = SVGBackend::with_string(&mut svg, (960, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Relative change ||dW||/||W|| by layer and module (log colour, white {:.1e} to red {:.1e})",
                10f64.powf(lo),
                10f64.powf(hi)
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(170)
        .build_cartesian_2d(
            // Segmented ranges include their end: 0..n-1 gives n cells.
            (0..n_layers - 1).into_segmented(),
            (0..modules.len().max(1) - 1).into_segmented(),
        )
        .map_err(|e| err(e.to_string()))?;
        let centre = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) => Some(*i),
            _ => None,
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("layer")
            .x_labels(n_layers.min(32))
            .y_labels(modules.len().max(1))
            .x_label_formatter(&|v| centre(v).map(|i| i.to_string()).unwrap_or_default())
            .y_label_formatter(&|v| {
                centre(v)
                    .and_then(|i| modules.get(i).cloned())
                    .unwrap_or_default()
            })
            .draw()
            .map_err(|e| err(e.to_string()))?;
        let index: BTreeMap<&str, usize> = modules
            .iter()
            .enumerate()
            .map(|(i, m)| (m.as_str(), i))
            .collect();
        chart
            .draw_series(cells.iter().map(|((module, layer), v)| {
                let row = index[module.as_str()];
                let corner = |l, r| (SegmentValue::Exact(l), SegmentValue::Exact(r));
                Rectangle::new(
                    [corner(*layer, row), corner(*layer + 1, row + 1)],
                    heat(scale(*v)).filled(),
                )
            }))
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

/// One bar per layer: the layer's aggregate rel_fro.
pub fn layer_bars(report: &WeightsReport) -> Result<String, ChartError> {
    let err = plot_err("layers.svg");
    let mut svg = String::new();
    let layers: Vec<(usize, f64)> = report
        .layers
        .iter()
        .filter_map(|l| l.layer.map(|i| (i, l.rel_fro)))
        .collect();
    let n = layers.iter().map(|(i, _)| i + 1).max().unwrap_or(1);
    let top = layers
        .iter()
        .map(|(_, v)| *v)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.1;
    {
        let root = SVGBackend::with_string(&mut svg, (960, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Per-layer relative change", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..top)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("layer")
            .y_desc("||dW||/||W||")
            .x_labels(n.min(32))
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => i.to_string(),
                _ => String::new(),
            })
            .draw()
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(layers.iter().map(|(i, v)| {
                let (left, right) = (SegmentValue::Exact(*i), SegmentValue::Exact(*i + 1));
                Rectangle::new(
                    [(left, 0.0), (right, *v)],
                    RGBColor(180, 40, 40).mix(0.9).filled(),
                )
            }))
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

/// sigma_i / sigma_1 of the most changed 2-D tensors (log scale): low rank shows as a cliff.
pub fn spectra(report: &WeightsReport, how_many: usize) -> Result<String, ChartError> {
    let err = plot_err("spectra.svg");
    let mut svg = String::new();
    let chosen: Vec<_> = report
        .tensors
        .iter()
        .filter(|t| t.top_singular_values.first().is_some_and(|s| *s > 0.0))
        .take(how_many)
        .collect();
    let k = chosen
        .iter()
        .map(|t| t.top_singular_values.len())
        .max()
        .unwrap_or(1)
        .max(2);
    let floor = 1e-8;
    {
        let root = SVGBackend::with_string(&mut svg, (960, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Singular-value spectra of the most changed tensors (sigma_i / sigma_1)",
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(1..k, (floor..1.5).log_scale())
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("i")
            .y_desc("sigma_i / sigma_1")
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (n, t) in chosen.iter().enumerate() {
            let color = Palette99::pick(n).to_rgba();
            let s1 = t.top_singular_values[0];
            let points: Vec<(usize, f64)> = t
                .top_singular_values
                .iter()
                .enumerate()
                .map(|(i, s)| (i + 1, (s / s1).max(floor)))
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| err(e.to_string()))?
                .label(t.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
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
