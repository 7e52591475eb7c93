//! `--report FILE.html`: one self-contained page to look at a run (or a search) with: throughput
//! over time, p50/p99/p99.9 over time, the percentile spectrum on HdrHistogram's log axis, errors
//! by kind over time, the parameters and the machine, and for a search the knee chart.
//!
//! The charts are drawn by plotters' SVG backend and inlined; the page loads nothing (no script,
//! no font, no network), so it opens the same from a CI artifact store as from a laptop.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::report::{Report, Second};
use super::search::SearchReport;

const W: u32 = 880;
const H: u32 = 320;
const BLUE: RGBColor = RGBColor(0x2b, 0x6c, 0xb0);
const ORANGE: RGBColor = RGBColor(0xdd, 0x84, 0x52);
const RED: RGBColor = RGBColor(0xc0, 0x39, 0x2b);
const GREEN: RGBColor = RGBColor(0x2e, 0x8b, 0x57);
const GREY: RGBColor = RGBColor(0x55, 0x55, 0x55);
const PURPLE: RGBColor = RGBColor(0x7d, 0x3c, 0x98);

/// The chart titles, in page order (the browser test looks for them).
pub const TITLES: [&str; 6] = [
    "Throughput over time",
    "Latency over time",
    "Percentile spectrum",
    "Errors by kind over time",
    "Parameters",
    "Machine",
];
/// The search's chart title.
pub const KNEE_TITLE: &str = "Knee: latency against offered rate";

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Drawn = Result<(), String>;

fn fail<E: std::fmt::Display>(e: E) -> String {
    format!("cannot draw a chart: {e}")
}

/// Draws into a fresh SVG string.
fn svg(draw: impl FnOnce(&Area) -> Drawn) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(fail)?;
        draw(&root)?;
        root.present().map_err(fail)?;
    }
    Ok(out)
}

/// A chart with nothing to show says so, rather than leaving an empty frame.
fn nothing(root: &Area, what: &str) -> Drawn {
    root.draw(&Text::new(
        format!("no {what} in this run"),
        (W as i32 / 2 - 90, H as i32 / 2),
        ("sans-serif", 16).into_font().color(&GREY),
    ))
    .map_err(fail)
}

/// The run's seconds, as (start, value) points.
fn points(series: &[Second], f: impl Fn(&Second) -> Option<f64>) -> Vec<(f64, f64)> {
    series
        .iter()
        .filter_map(|s| f(s).map(|v| (s.t, v)))
        .collect()
}

fn x_end(series: &[Second]) -> f64 {
    series.iter().map(|s| s.t + s.secs).fold(1.0, f64::max)
}

/// A chart over the window's seconds (x) of a linear `0..top` (y), its mesh drawn.
fn over_time<'a, 'b>(
    root: &'a Area<'b>,
    r: &Report,
    top: f64,
    y_desc: &str,
) -> Result<ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>, String> {
    let mut chart = ChartBuilder::on(root)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_end(&r.series), 0.0..top)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the window")
        .y_desc(y_desc)
        .y_label_formatter(&|v| short(*v))
        .draw()
        .map_err(fail)?;
    Ok(chart)
}

fn throughput(root: &Area, r: &Report) -> Drawn {
    let churn = r.mode == "churn";
    let per_s = |n: u64, s: &Second| n as f64 / s.secs.max(1e-3);
    let msgs = points(&r.series, |s| Some(per_s(s.messages, s)));
    let conns = points(&r.series, |s| Some(per_s(s.connects, s)));
    if msgs.is_empty() {
        return nothing(root, "seconds");
    }
    let top = msgs.iter().chain(&conns).map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let mut chart = over_time(root, r, top, "per second")?;
    chart
        .draw_series(LineSeries::new(msgs, BLUE.stroke_width(2)))
        .map_err(fail)?
        .label("messages/s")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLUE.stroke_width(2)));
    if churn || conns.iter().any(|p| p.1 > 0.0) {
        chart
            .draw_series(LineSeries::new(conns, ORANGE.stroke_width(2)))
            .map_err(fail)?
            .label("connects/s")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], ORANGE.stroke_width(2)));
    }
    legend(&mut chart)
}

fn legend<'a, 'b: 'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, Y>>,
) -> Drawn
where
    X: Ranged,
    Y: Ranged,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(GREY)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(fail)
}

fn latency(root: &Area, r: &Report) -> Drawn {
    type Pick = fn(&super::hist::Spot) -> f64;
    let lines: [(&str, Pick, RGBColor); 3] = [
        ("p50", |s| s.p50, BLUE),
        ("p99", |s| s.p99, ORANGE),
        ("p99.9", |s| s.p999, RED),
    ];
    let all: Vec<Vec<(f64, f64)>> = lines
        .iter()
        .map(|(_, f, _)| points(&r.series, |s| s.latency_us.as_ref().map(f)))
        .collect();
    let most = all.iter().flatten().map(|p| p.1).fold(0.0, f64::max);
    if most <= 0.0 {
        return nothing(root, "latency");
    }
    let least = all
        .iter()
        .flatten()
        .map(|p| p.1)
        .fold(f64::INFINITY, f64::min)
        .max(0.1);
    let mut chart = ChartBuilder::on(root)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_end(&r.series), (least / 1.5..most * 1.5).log_scale())
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the window")
        .y_desc("latency (log)")
        .y_label_formatter(&|v| super::expr::show_us(*v))
        .draw()
        .map_err(fail)?;
    for ((name, _, color), pts) in lines.iter().zip(all) {
        let c = *color;
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(fail)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    legend(&mut chart)
}

/// HdrHistogram's percentile plot: latency against 1/(1-q) on a log axis, so p90, p99, p99.9
/// and p99.99 are equally spaced.
fn spectrum(root: &Area, hist: &Histogram<u64>) -> Drawn {
    if hist.is_empty() {
        return nothing(root, "latency");
    }
    let max_x = 1e6;
    let pts: Vec<(f64, f64)> = hist
        .iter_quantiles(5)
        .map(|v| {
            let q = v.quantile_iterated_to();
            let x = if q >= 1.0 {
                max_x
            } else {
                (1.0 / (1.0 - q)).min(max_x)
            };
            (x, v.value_iterated_to() as f64 / 1000.0)
        })
        .collect();
    let top = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let last_x = pts.iter().map(|p| p.0).fold(10.0, f64::max);
    let mut chart = ChartBuilder::on(root)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d((1.0..last_x).log_scale(), 0.0..top)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("percentile (log axis of 1/(1-q))")
        .y_desc("latency")
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|v| super::expr::show_us(*v))
        .draw()
        .map_err(fail)?;
    chart
        .draw_series(LineSeries::new(pts, PURPLE.stroke_width(2)))
        .map_err(fail)?;
    Ok(())
}

/// `1/(1-q)` as the percentile it stands for: 10 → 90%, 1000 → 99.9%.
fn percentile_label(x: f64) -> String {
    if x < 1.5 {
        return "0%".into();
    }
    let q = (1.0 - 1.0 / x) * 100.0;
    let s = format!("{q:.4}");
    format!("{}%", s.trim_end_matches('0').trim_end_matches('.'))
}

fn errors(root: &Area, r: &Report) -> Drawn {
    type Pick = fn(&Second) -> u64;
    let kinds: [(&str, Pick, RGBColor); 5] = [
        ("refused", |s| s.error_kinds.refused, RED),
        ("reset", |s| s.error_kinds.reset, ORANGE),
        ("closed", |s| s.error_kinds.closed, PURPLE),
        ("timeout", |s| s.error_kinds.timeout, BLUE),
        ("other", |s| s.error_kinds.other, GREY),
    ];
    if r.series.is_empty() {
        return nothing(root, "seconds");
    }
    let top = r.series.iter().map(|s| s.errors).max().unwrap_or(0).max(1) as f64 * 1.2;
    let mut chart = over_time(root, r, top, "errors in the second")?;
    for (name, f, color) in kinds {
        let pts = points(&r.series, |s| Some(f(s) as f64));
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(fail)?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    legend(&mut chart)
}

/// Latency at each step's offered rate, passes filled and failures hollow, and the answer
/// marked.
fn knee(root: &Area, s: &SearchReport) -> Drawn {
    let with: Vec<_> = s
        .steps
        .iter()
        .filter_map(|st| st.latency_us.map(|l| (st, l)))
        .collect();
    if with.is_empty() {
        return nothing(root, "step with latency");
    }
    let (lo_x, hi_x) = with
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(a, b), (st, _)| {
            (a.min(st.offered), b.max(st.offered))
        });
    let (lo_y, hi_y) = with.iter().fold((f64::INFINITY, 0.0f64), |(a, b), (_, l)| {
        (a.min(l.p50), b.max(l.p999))
    });
    let mut chart = ChartBuilder::on(root)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (lo_x / 1.3..hi_x * 1.3).log_scale(),
            (lo_y.max(0.1) / 1.5..hi_y * 1.5).log_scale(),
        )
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("offered rate per second (log)")
        .y_desc("latency (log)")
        .x_label_formatter(&|v| short(*v))
        .y_label_formatter(&|v| super::expr::show_us(*v))
        .draw()
        .map_err(fail)?;
    let mut sorted = with.clone();
    sorted.sort_by(|a, b| a.0.offered.total_cmp(&b.0.offered));
    type Pick = fn(&super::hist::Latency) -> f64;
    let lines: [(&str, Pick, RGBColor); 3] = [
        ("p50", |l| l.p50, BLUE),
        ("p99", |l| l.p99, ORANGE),
        ("p99.9", |l| l.p999, RED),
    ];
    for (name, f, color) in lines {
        chart
            .draw_series(LineSeries::new(
                sorted.iter().map(|(st, l)| (st.offered, f(l))),
                color.stroke_width(1),
            ))
            .map_err(fail)?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(sorted.iter().map(|(st, l)| {
                let style = if st.pass {
                    color.filled()
                } else {
                    color.stroke_width(2)
                };
                Circle::new((st.offered, f(l)), 4, style)
            }))
            .map_err(fail)?;
    }
    if let Some(a) = s.answer {
        chart
            .draw_series(LineSeries::new(
                [(a, lo_y.max(0.1) / 1.4), (a, hi_y * 1.4)],
                GREEN.stroke_width(2),
            ))
            .map_err(fail)?
            .label(format!("answer {}/s", short(a)))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], GREEN.stroke_width(2)));
    }
    legend(&mut chart)
}

/// 1234567 → 1.23M.
fn short(v: f64) -> String {
    let (n, unit) = if v.abs() >= 1e9 {
        (v / 1e9, "G")
    } else if v.abs() >= 1e6 {
        (v / 1e6, "M")
    } else if v.abs() >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let s = format!("{n:.2}");
    format!("{}{unit}", s.trim_end_matches('0').trim_end_matches('.'))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// What the page says about the machine: read from `/proc` when the page is written.
fn machine() -> Vec<(String, String)> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    let mut rows = Vec::new();
    rows.extend(read("/proc/sys/kernel/hostname").map(|h| ("host".into(), h)));
    let os = read("/proc/sys/kernel/ostype").unwrap_or_default();
    rows.extend(read("/proc/sys/kernel/osrelease").map(|k| ("kernel".into(), format!("{os} {k}"))));
    if let Some(cpu) = read("/proc/cpuinfo").and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    }) {
        rows.push(("cpu".into(), cpu));
    }
    if let Ok(n) = std::thread::available_parallelism() {
        rows.push(("cpus available".into(), n.to_string()));
    }
    if let Some(m) = read("/proc/meminfo").and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .map(|l| l.trim_start_matches("MemTotal:").trim().to_string())
    }) {
        rows.push(("memory".into(), m));
    }
    if let Some(l) = read("/proc/loadavg") {
        let three: Vec<&str> = l.split_whitespace().take(3).collect();
        rows.push(("load average (1, 5, 15 min)".into(), three.join(" ")));
    }
    rows.push(("upecho".into(), env!("CARGO_PKG_VERSION").into()));
    rows
}

fn parameters(r: &Report) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = vec![
        ("mode".into(), format!("{} {}", r.mode, r.proto)),
        ("server".into(), r.addr.clone()),
        ("connections".into(), r.connections.to_string()),
        ("message size".into(), format!("{} B", r.size)),
        ("depth".into(), r.depth.to_string()),
        (
            "threads × processes".into(),
            format!("{} × {}", r.threads, r.processes),
        ),
        (
            "rate".into(),
            r.rate
                .map(|v| format!("{v}/s (open loop)"))
                .unwrap_or_else(|| "closed loop".into()),
        ),
        ("window".into(), format!("{:.2} s", r.window_s)),
        ("messages".into(), r.messages.to_string()),
        (
            "throughput".into(),
            format!("{:.0} msg/s, {:.2} MB/s", r.msgs_per_s, r.mb_per_s),
        ),
        ("errors".into(), r.errors.total.to_string()),
        ("mismatches".into(), r.mismatches.to_string()),
        (
            "result".into(),
            if r.ok {
                "ok".into()
            } else {
                format!("FAILED: {}", r.failures.join("; "))
            },
        ),
    ];
    if let Some(l) = &r.latency_us {
        rows.push((
            "latency".into(),
            format!(
                "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                super::expr::show_us(l.p50),
                super::expr::show_us(l.p90),
                super::expr::show_us(l.p99),
                super::expr::show_us(l.p999),
                super::expr::show_us(l.max)
            ),
        ));
    }
    if r.proto == "udp" {
        rows.push(("losses".into(), r.losses.to_string()));
    }
    rows
}

fn table(page: &mut String, rows: &[(String, String)]) {
    page.push_str("<table>\n");
    for (k, v) in rows {
        let _ = writeln!(page, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    page.push_str("</table>\n");
}

fn section(page: &mut String, title: &str, body: &str) {
    let id = title.to_lowercase().replace([' ', ':'], "-");
    let _ = writeln!(
        page,
        "<section id=\"{}\"><h2>{}</h2>\n{body}</section>",
        esc(&id),
        esc(title)
    );
}

/// The whole page. `report` and `hist` are the run's (for a search: the confirmation's, at
/// the answer).
pub fn page(
    report: &Report,
    hist: &Histogram<u64>,
    search: Option<&SearchReport>,
) -> Result<String, String> {
    let mut page = String::new();
    let heading = match search {
        Some(s) => match s.answer {
            Some(a) => format!("upecho load --search '{}': {:.0}/s", s.target, a),
            None => format!("upecho load --search '{}': no rate meets it", s.target),
        },
        None => format!(
            "upecho load: {} {} to {}",
            report.mode, report.proto, report.addr
        ),
    };
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{t}</title><style>\
         body{{font-family:sans-serif;margin:24px auto;max-width:920px;color:#222}}\
         h1{{font-size:22px}}h2{{font-size:17px;margin-top:28px}}\
         table{{border-collapse:collapse;font-size:14px}}\
         th,td{{text-align:left;padding:3px 12px 3px 0;vertical-align:top}}th{{color:#555;font-weight:normal}}\
         td.pass{{color:#2e8b57}}td.fail{{color:#c0392b}}svg{{max-width:100%;height:auto}}\
         </style></head><body>\n<h1>{t}</h1>\n",
        t = esc(&heading)
    );
    if let Some(s) = search {
        section(&mut page, KNEE_TITLE, &svg(|a| knee(a, s))?);
        let mut t = String::from(
            "<table><tr><th>#</th><th>step</th><th>offered/s</th><th>achieved/s</th>\
             <th>p50</th><th>p99</th><th>p99.9</th><th>errors</th><th>result</th></tr>\n",
        );
        for (i, st) in s.steps.iter().enumerate() {
            let l = |f| st.shown(f);
            let (class, res) = if st.pass {
                ("pass", "pass".to_string())
            } else {
                ("fail", format!("fail: {}", st.why.join("; ")))
            };
            let _ = writeln!(
                t,
                "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td class=\"{class}\">{}</td></tr>",
                i + 1,
                st.kind.name(),
                st.offered,
                st.achieved,
                l(|l| l.p50),
                l(|l| l.p99),
                l(|l| l.p999),
                st.errors + st.losses,
                esc(&res)
            );
        }
        t.push_str("</table>\n");
        section(&mut page, "Steps", &t);
    }
    section(&mut page, TITLES[0], &svg(|a| throughput(a, report))?);
    section(&mut page, TITLES[1], &svg(|a| latency(a, report))?);
    section(&mut page, TITLES[2], &svg(|a| spectrum(a, hist))?);
    section(&mut page, TITLES[3], &svg(|a| errors(a, report))?);
    let mut t = String::new();
    table(&mut t, &parameters(report));
    section(&mut page, TITLES[4], &t);
    let mut t = String::new();
    table(&mut t, &machine());
    section(&mut page, TITLES[5], &t);
    page.push_str("</body></html>\n");
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_as_people_write_them() {
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(short(1_234_567.0), "1.23M");
        assert_eq!(short(950.0), "950");
        assert_eq!(esc("<a&\"b\">"), "&lt;a&amp;&quot;b&quot;&gt;");
    }
}
