//! The sidecar bench's picture: one PNG with throughput of each configuration against the raw
//! ceiling of the same run (left) and the produce → confirmation latency CDFs (right).
//!
//! plotters draws it; its text needs a TrueType font, taken from the first of [`FONTS`] that
//! exists (Debian's fonts-dejavu-core). Without one the picture is skipped with a note: the
//! numbers are printed anyway.

use plotters::coord::CoordTranslate;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

const FONTS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// One bar: a configuration's items/s.
pub struct Bar {
    pub label: String,
    pub rate: f64,
}

/// One CDF: a configuration's sorted latencies (ms).
pub struct Cdf<'a> {
    pub label: String,
    pub sorted_ms: &'a [f64],
}

/// Registers the font once; false when none is installed.
fn font() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        let Some(bytes) = FONTS.iter().find_map(|path| std::fs::read(path).ok()) else {
            return false;
        };
        // plotters keeps the font for the process's lifetime
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    })
}

/// Writes the PNG to `path`. `ceiling`: the raw MariaDB + Redis rate of the same run.
pub fn render(
    path: &std::path::Path,
    title: &str,
    bars: &[Bar],
    ceiling: f64,
    cdfs: &[Cdf],
) -> Result<(), String> {
    if !font() {
        return Err(format!("no TrueType font at {FONTS:?}"));
    }
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(|x| e(&x))?;
    let (left, right) = root.split_horizontally(720);

    // throughput: one bar per configuration, the ceiling and 0.8 × it as lines
    let top = bars.iter().map(|b| b.rate).fold(ceiling, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&left)
        .caption("throughput (items/s)", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(260)
        .build_cartesian_2d(0.0..top, (0..bars.len() - 1).into_segmented())
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => bars.get(*i).map_or(String::new(), |b| b.label.clone()),
            _ => String::new(),
        })
        .x_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .draw()
        .map_err(|x| e(&x))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (b.rate, SegmentValue::Exact(i + 1)),
                ],
                BLUE.mix(0.6).filled(),
            );
            bar.set_margin(6, 6, 0, 0);
            bar
        }))
        .map_err(|x| e(&x))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            Text::new(
                format!("{:.0}", b.rate),
                (b.rate, SegmentValue::CenterOf(i)),
                ("sans-serif", 14),
            )
        }))
        .map_err(|x| e(&x))?;
    for (x, label, color) in [
        (ceiling, "raw ceiling", RED),
        (0.8 * ceiling, "0.8 × ceiling", MAGENTA),
    ] {
        chart
            .draw_series(LineSeries::new(
                [(x, SegmentValue::Exact(0)), (x, SegmentValue::Last)],
                color.stroke_width(2),
            ))
            .map_err(|x| e(&x))?
            .label(format!("{label} {x:.0}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    legend(&mut chart)?;

    // latency: CDF per configuration
    let max_ms = cdfs
        .iter()
        .filter_map(|c| c.sorted_ms.last())
        .fold(1.0_f64, |a, b| a.max(*b))
        * 1.05;
    let mut chart = ChartBuilder::on(&right)
        .caption(
            "produce → confirmation latency (CDF; feed rate per line)",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_ms, 0.0..1.0)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("ms")
        .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
        .draw()
        .map_err(|x| e(&x))?;
    let colors = [BLUE, GREEN, RED, MAGENTA, CYAN, BLACK];
    for (c, color) in cdfs.iter().zip(colors.iter().cycle()) {
        let n = c.sorted_ms.len().max(1) as f64;
        // at most ~500 points per line
        let step = (c.sorted_ms.len() / 500).max(1);
        let points = c
            .sorted_ms
            .iter()
            .enumerate()
            .step_by(step)
            .map(|(i, ms)| (*ms, (i + 1) as f64 / n));
        let color = *color;
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(c.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .draw_series(LineSeries::new(
            [(0.0, 0.99), (max_ms, 0.99)],
            BLACK.mix(0.3).stroke_width(1),
        ))
        .map_err(|x| e(&x))?;
    legend(&mut chart)?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// The series labels, boxed in the lower right corner.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| e.to_string())
}
