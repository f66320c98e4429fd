//! Charts of `kangaroo-bench run` (SVG, `plotters`).

use std::path::Path;

use plotters::prelude::*;

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {e}")
}

/// A bar chart of `(label, median, min, max)` with min-max whiskers, written to `path`.
/// Kangaroo's contenders are blue, the others grey.
///
/// # Errors
/// The file cannot be written.
pub fn bars(path: &Path, title: &str, rows: &[(String, f64, f64, f64)]) -> anyhow::Result<()> {
    let rows: Vec<&(String, f64, f64, f64)> = rows.iter().filter(|r| r.1.is_finite()).collect();
    let n = u32::try_from(rows.len().max(1)).unwrap_or(1);
    let top = rows
        .iter()
        .map(|r| r.3.max(r.1))
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.15;
    let root = SVGBackend::new(path, (160 + 120 * n, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n).into_segmented(), 0f64..top)
        .map_err(err)?;
    let labels: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(labels.len().max(1))
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_style(("sans-serif", 11))
        .draw()
        .map_err(err)?;
    let colour = |label: &str| {
        if label.starts_with("kangaroo") {
            RGBColor(31, 119, 180)
        } else {
            RGBColor(150, 150, 150)
        }
    };
    chart
        .draw_series(rows.iter().zip(0u32..).map(|(r, i)| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), r.1),
                ],
                colour(&r.0).filled(),
            );
            bar.set_margin(0, 0, 14, 14);
            bar
        }))
        .map_err(err)?;
    chart
        .draw_series(rows.iter().zip(0u32..).map(|(r, i)| {
            PathElement::new(
                vec![
                    (SegmentValue::CenterOf(i), r.2),
                    (SegmentValue::CenterOf(i), r.3),
                ],
                BLACK.stroke_width(2),
            )
        }))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One line of a sweep chart: its label and `(x, median, min, max)` points.
pub type Line = (String, Vec<(f64, f64, f64, f64)>);

/// A line chart over a logarithmic x axis (sweeps: 1k → 1M MACs, 2 → 32 ports), one line per
/// series with min-max whiskers at each point, written to `path`.
///
/// # Errors
/// The file cannot be written.
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Line],
) -> anyhow::Result<()> {
    let pts = || {
        series
            .iter()
            .flat_map(|(_, p)| p.iter())
            .filter(|p| p.1.is_finite() && p.0 > 0.0)
    };
    let x_min = pts().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = pts().map(|p| p.0).fold(0.0_f64, f64::max);
    let (x_min, x_max) = if x_min.is_finite() && x_max > x_min {
        (x_min / 1.3, x_max * 1.3)
    } else {
        (0.5, 2.0)
    };
    let top = pts()
        .map(|p| p.3.max(p.1))
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.15;
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|x| {
            if *x >= 1e6 {
                format!("{:.0}M", x / 1e6)
            } else if *x >= 1e3 {
                format!("{:.0}k", x / 1e3)
            } else {
                format!("{x:.0}")
            }
        })
        .draw()
        .map_err(err)?;
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(150, 150, 150),
    ];
    for ((label, points), colour) in series.iter().zip(palette.iter().cycle()) {
        let good: Vec<(f64, f64, f64, f64)> = points
            .iter()
            .copied()
            .filter(|p| p.1.is_finite() && p.0 > 0.0)
            .collect();
        let c = *colour;
        chart
            .draw_series(LineSeries::new(
                good.iter().map(|p| (p.0, p.1)),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(good.iter().map(|p| Circle::new((p.0, p.1), 3, c.filled())))
            .map_err(err)?;
        chart
            .draw_series(
                good.iter()
                    .map(|p| PathElement::new(vec![(p.0, p.2), (p.0, p.3)], c.stroke_width(1))),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_line_chart_is_written() {
        let dir = std::env::temp_dir().join(format!("kb-lines-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("l.svg");
        super::lines(
            &p,
            "fdb-size",
            "learned MACs",
            "Mpps",
            &[(
                "kangaroo-xdp".into(),
                vec![
                    (1e3, 0.3, 0.29, 0.31),
                    (1e6, 0.27, 0.26, 0.28),
                    (1e4, f64::NAN, 0.0, 0.0),
                ],
            )],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("kangaroo-xdp") && svg.contains("learned MACs"));
        assert!(svg.contains("1M") && svg.contains("1k"), "log axis labels");
    }

    #[test]
    fn a_chart_is_written() {
        let dir = std::env::temp_dir().join(format!("kb-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.svg");
        super::bars(
            &p,
            "tcp-1",
            &[
                ("bridge".into(), 10.0, 9.0, 11.0),
                ("kangaroo-xdp".into(), 3.0, 2.5, 3.5),
                ("kangaroo-packet".into(), f64::NAN, f64::NAN, f64::NAN),
            ],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("kangaroo-xdp") && svg.contains("bridge"));
        assert!(
            !svg.contains("kangaroo-packet"),
            "failed rows are not drawn"
        );
    }
}
