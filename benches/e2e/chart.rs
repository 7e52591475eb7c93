//! The bench's two charts, drawn with plotters' SVG backend: server CPU per message relative to
//! the best baseline of each scenario (grouped horizontal bars on one shared, ticked axis), and
//! latency percentiles over the seconds of one run (lines).

use plotters::prelude::*;

/// upecho, tokio, epoll floor: the colours every chart and legend uses.
pub const COLORS: [RGBColor; 3] = [
    RGBColor(0x2b, 0x6c, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0x55, 0x55),
];

/// One scenario's bars: its label and, per server (in the order of `servers`), its server CPU
/// per message divided by the best baseline's (`None`: no result).
pub struct Group {
    pub label: String,
    pub ratios: Vec<Option<f64>>,
}

/// Grouped horizontal bars, one group per scenario (first at the top), one bar per server, each
/// labelled with its ratio; a dashed line marks 1.0, the best baseline.
pub fn ratios(path: &str, title: &str, servers: &[&str], groups: &[Group]) -> Result<(), String> {
    let n = groups.len();
    let k = servers.len().max(1);
    let most = groups
        .iter()
        .flat_map(|g| g.ratios.iter().flatten())
        .fold(1.0f64, |a, &b| a.max(b));
    // Past 3x a bar is cut at the axis end; its label still says the real value.
    let x_max = (most.min(3.0) * 1.12).max(1.25);
    let h = 120 + (22 * k as u32 + 16) * n as u32;
    let root = SVGBackend::new(path, (900, h)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| format!("{path}: {e}");
    root.fill(&WHITE).map_err(e)?;
    // y is in hundredths of a group: group i (from the top) occupies [100(n-1-i), 100(n-i)),
    // its label at the middle. (Integers: plotters' float axes cannot take custom ticks.)
    const U: i32 = 100;
    let n_i = n as i32;
    let centers: Vec<i32> = (0..n_i).map(|i| i * U + U / 2).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(250)
        .build_cartesian_2d(0.0..x_max, (0..n_i * U).with_key_points(centers))
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(
            "server CPU time per message ÷ the best baseline's (1.0 = the floor; lower is better)",
        )
        .y_label_formatter(&|y| {
            let i = (*y / U) as usize;
            if *y >= 0 && i < n {
                groups[n - 1 - i].label.clone()
            } else {
                String::new()
            }
        })
        .x_labels(14)
        .max_light_lines(1)
        .x_label_formatter(&|x| format!("{x:.1}"))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    let band = 80 / k as i32;
    for (s, name) in servers.iter().enumerate() {
        let color = COLORS[s % COLORS.len()];
        // (ratio, bar top, bar bottom) in chart coordinates; server 0 is the top bar of a group.
        let bars: Vec<(f64, i32, i32)> = groups
            .iter()
            .enumerate()
            .filter_map(|(g, grp)| {
                let v = grp.ratios.get(s).copied().flatten()?;
                let top = (n - g) as i32 * U - 10 - band * s as i32;
                Some((v, top, top - band * 85 / 100))
            })
            .collect();
        chart
            .draw_series(bars.iter().map(|&(v, top, bot)| {
                Rectangle::new([(0.0, top), (v.min(x_max), bot)], color.filled())
            }))
            .map_err(e)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        chart
            .draw_series(bars.iter().map(|&(v, top, bot)| {
                let x = v.min(x_max * 0.93);
                Text::new(
                    format!("{v:.2}"),
                    (x + x_max * 0.006, (top + bot) / 2 + band * 3 / 10),
                    ("sans-serif", 12).into_font().color(&BLACK),
                )
            }))
            .map_err(e)?;
    }
    chart
        .draw_series(DashedLineSeries::new(
            [(1.0, 0), (1.0, n_i * U)],
            6,
            4,
            BLACK.stroke_width(1),
        ))
        .map_err(e)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// Latency percentiles over time: one point per second of one run, `(second, p50 µs, p99 µs)`.
pub fn latency(path: &str, title: &str, series: &[(f64, f64, f64)]) -> Result<(), String> {
    if series.is_empty() {
        return Err(format!("{path}: no latency series to draw"));
    }
    let t_max = series.iter().map(|p| p.0).fold(1.0f64, f64::max).ceil();
    let t_min = series
        .iter()
        .map(|p| p.0)
        .fold(t_max, f64::min)
        .floor()
        .max(1.0)
        - 1.0;
    // Logarithmic: p99 is often ten times p50, and both should be readable.
    let lo = series
        .iter()
        .map(|p| p.1.min(p.2))
        .fold(f64::INFINITY, f64::min);
    let hi = series.iter().map(|p| p.1.max(p.2)).fold(0.0f64, f64::max);
    // Whole decades, so the axis has labelled ticks at both ends (1, 2, 5 × 10^k).
    let decade = |v: f64, up: bool| {
        let e = v.max(0.1).log10();
        10f64.powf(if up { e.ceil() } else { e.floor() })
    };
    let (lo, hi) = (
        decade(lo / 1.5, false),
        decade((hi * 1.5).max(lo * 4.0), true),
    );
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| format!("{path}: {e}");
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(t_min..t_max, (lo..hi).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("second of the run")
        .y_desc("latency (µs, log scale)")
        .y_labels(15)
        .x_labels((t_max - t_min) as usize + 1)
        .max_light_lines(1)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if *y >= 10.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.1}")
            }
        })
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    for (name, color, pick) in [("p50", COLORS[0], 1usize), ("p99", COLORS[1], 2usize)] {
        let pts: Vec<(f64, f64)> = series
            .iter()
            .map(|p| (p.0, if pick == 1 { p.1 } else { p.2 }))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(e)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
