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

#[cfg(test)]
mod tests {
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
