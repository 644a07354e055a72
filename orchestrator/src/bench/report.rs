//! What every bench reports: host facts, then series of samples (one per
//! runtime and phase or metric) with their summaries; as a table, as JSON,
//! and as an SVG plot.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::facts::HostFacts;
use super::stats::Summary;

/// One distribution: a runtime's samples of one phase or metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub runtime: String,
    pub phase: String,
    pub unit: String,
    pub samples: Vec<f64>,
    pub summary: Option<Summary>,
}

impl Series {
    pub fn new(runtime: &str, phase: &str, unit: &str, samples: Vec<f64>) -> Series {
        Series {
            runtime: runtime.into(),
            phase: phase.into(),
            unit: unit.into(),
            summary: Summary::of(&samples),
            samples,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageFacts {
    pub name: String,
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// boot, density or overhead.
    pub bench: String,
    /// What the reader must know first (emulated microVMs, ...).
    pub notes: Vec<String>,
    pub host: HostFacts,
    /// Where the microVMs ran, when not on `host` (the nested test host).
    #[serde(default)]
    pub microvm_host: Option<HostFacts>,
    #[serde(default)]
    pub image: Option<ImageFacts>,
    #[serde(default)]
    pub command: Vec<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub runs: usize,
    pub warmup: usize,
    /// How the samples were taken, in a sentence.
    pub method: String,
    pub series: Vec<Series>,
    /// Ratios of medians between runtimes (boot).
    #[serde(default)]
    pub ratios: Vec<Ratio>,
}

/// `numerator / denominator` of one phase's medians.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    pub phase: String,
    pub numerator: String,
    pub denominator: String,
    pub value: f64,
    /// False where the two ran on different kinds of machine (emulated
    /// microVMs against native containers).
    pub representative: bool,
}

impl Ratio {
    /// Every pair of `pairs` that both have `phase`.
    pub fn of(series: &[Series], phase: &str, pairs: &[(String, String, bool)]) -> Vec<Ratio> {
        let median = |rt: &str| {
            series
                .iter()
                .find(|s| s.runtime == rt && s.phase == phase)
                .and_then(|s| s.summary)
                .map(|m| m.median)
        };
        pairs
            .iter()
            .filter_map(|(a, b, representative)| {
                let (x, y) = (median(a)?, median(b)?);
                (y > 0.0).then(|| Ratio {
                    phase: phase.into(),
                    numerator: a.clone(),
                    denominator: b.clone(),
                    value: x / y,
                    representative: *representative,
                })
            })
            .collect()
    }
}

impl Report {
    /// The header lines: notes, host facts, image, VM size.
    pub fn header(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.notes.iter().map(|n| format!("NOTE: {n}")).collect();
        lines.push(format!("host: {}", self.host.describe()));
        if let Some(m) = &self.microvm_host {
            lines.push(format!("microVMs ran in: {}", m.describe()));
        }
        if let Some(i) = &self.image {
            lines.push(format!("image: {} ({})", i.name, i.digest));
        }
        if !self.command.is_empty() {
            lines.push(format!("command: {}", self.command.join(" ")));
        }
        lines.push(format!(
            "per VM: {} vCPU(s), {} MiB; {} runs per runtime after {} warm-up run(s)",
            self.vcpus, self.memory_mib, self.runs, self.warmup
        ));
        lines.push(self.method.clone());
        lines
    }

    pub fn table(&self) -> String {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::NOTHING);
        let what = if self.bench == "boot" {
            "PHASE"
        } else {
            "METRIC"
        };
        t.set_header(["RUNTIME", what, "UNIT", "N", "MEDIAN", "P90", "MIN", "MAX"]);
        for s in &self.series {
            let mut row = vec![s.runtime.clone(), s.phase.clone(), s.unit.clone()];
            match &s.summary {
                Some(m) => row.extend([
                    m.n.to_string(),
                    num(m.median),
                    num(m.p90),
                    num(m.min),
                    num(m.max),
                ]),
                None => row.extend(["0", "-", "-", "-", "-"].map(String::from)),
            }
            t.add_row(row);
        }
        for c in 3..8 {
            if let Some(col) = t.column_mut(c) {
                col.set_cell_alignment(comfy_table::CellAlignment::Right);
            }
        }
        t.to_string()
    }

    pub fn text(&self) -> String {
        let mut out = format!("{}\n\n{}\n", self.header().join("\n"), self.table());
        if !self.ratios.is_empty() {
            out.push_str("\nratios of medians:\n");
            for r in &self.ratios {
                let mark = if r.representative {
                    ""
                } else {
                    "   NOT representative (emulated microVMs vs native containers)"
                };
                out.push_str(&format!(
                    "  {:<13} {} / {} = {:.2}x{mark}\n",
                    r.phase, r.numerator, r.denominator, r.value
                ));
            }
        }
        out
    }

    /// One line under the plot's title.
    fn subtitle(&self) -> String {
        match &self.microvm_host {
            Some(_) => "microVMs ran emulated in the nested test host: compare VMM with VMM only; microVM-vs-container ratios are NOT representative".into(),
            None => format!("host: {}", self.host.describe()),
        }
    }

    /// One horizontal box plot per series, a panel per unit.
    pub fn plot(&self, path: &Path) -> Result<(), String> {
        plot(self, path).map_err(|e| format!("plot {}: {e}", path.display()))
    }
}

fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// min, p25, median, p75, max of the finite samples.
fn five_numbers(samples: &[f64]) -> Option<[f64; 5]> {
    let m = Summary::of(samples)?;
    let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    let rank = |p: usize| s[(p * s.len()).div_ceil(100).clamp(1, s.len()) - 1];
    Some([m.min, rank(25), m.median, rank(75), m.max])
}

fn segment_label(v: &plotters::prelude::SegmentValue<&String>) -> String {
    match v {
        plotters::prelude::SegmentValue::CenterOf(s) => (*s).clone(),
        _ => String::new(),
    }
}

fn plot(r: &Report, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let mut units: Vec<&str> = Vec::new();
    for s in &r.series {
        if s.summary.is_some() && !units.contains(&s.unit.as_str()) {
            units.push(&s.unit);
        }
    }
    if units.is_empty() {
        return Err("no samples to plot".into());
    }
    let rows: Vec<usize> = units
        .iter()
        .map(|u| {
            r.series
                .iter()
                .filter(|s| s.unit == *u && s.summary.is_some())
                .count()
        })
        .collect();
    let row_height = |n: &usize| 80 + 28 * u32::try_from(*n).unwrap_or(1000);
    let height = 90 + rows.iter().map(row_height).sum::<u32>();
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(50);
    let below = top.titled(&format!("bulkhead bench {}", r.bench), ("sans-serif", 18))?;
    below.draw_text(
        &r.subtitle(),
        &("sans-serif", 13).into_text_style(&below),
        (10, 4),
    )?;
    let heights: Vec<u32> = rows.iter().map(row_height).collect();
    let mut rest = body;
    for (i, unit) in units.iter().enumerate() {
        let (area, below) = rest.split_vertically(heights[i]);
        rest = below;
        let series: Vec<&Series> = r
            .series
            .iter()
            .filter(|s| s.unit == *unit && s.summary.is_some())
            .collect();
        let mut labels: Vec<String> = series
            .iter()
            .map(|s| format!("{} {}", s.runtime, s.phase))
            .collect();
        let min = series
            .iter()
            .filter_map(|s| s.summary.map(|m| m.min))
            .fold(f64::INFINITY, f64::min);
        let max = series
            .iter()
            .filter_map(|s| s.summary.map(|m| m.max))
            .fold(0.0, f64::max);
        // Seconds next to milliseconds: a log axis keeps both readable.
        let log = min > 0.0 && max / min > 20.0;
        let (lo, hi) = if log {
            (plot_f32(min / 1.5), plot_f32(max * 1.5))
        } else {
            (0.0, plot_f32((max * 1.1).max(1e-3)))
        };
        let mut b = ChartBuilder::on(&area);
        b.margin(8).x_label_area_size(36).y_label_area_size(260);
        // Box: the middle half (p25 to p75) with the median; whiskers: min and max.
        let boxes: Vec<(String, [f64; 5])> = series
            .iter()
            .zip(&labels)
            .filter_map(|(s, l)| Some((l.clone(), five_numbers(&s.samples)?)))
            .collect();
        // plotters puts the first segment at the bottom: first series on top.
        labels.reverse();
        if labels.len() == 1 {
            // plotters labels no segment of a one-segment axis.
            labels.push(String::new());
        }
        let mut shapes = Vec::new();
        if log {
            let mut mesh =
                b.build_cartesian_2d((lo..hi).log_scale(), labels[..].into_segmented())?;
            mesh.configure_mesh()
                .x_desc(format!("{unit} (log scale)"))
                .y_labels(labels.len() * 2 + 1)
                .y_label_formatter(&segment_label)
                .label_style(("sans-serif", 13))
                .light_line_style(WHITE)
                .draw()?;
            for (l, v) in &boxes {
                shapes
                    .push(v.map(|x| mesh.backend_coord(&(plot_f32(x), SegmentValue::CenterOf(l)))));
            }
        } else {
            let mut mesh = b.build_cartesian_2d(lo..hi, labels[..].into_segmented())?;
            mesh.configure_mesh()
                .x_desc(unit.to_string())
                .y_labels(labels.len() * 2 + 1)
                .y_label_formatter(&segment_label)
                .label_style(("sans-serif", 13))
                .light_line_style(WHITE)
                .draw()?;
            for (l, v) in &boxes {
                shapes
                    .push(v.map(|x| mesh.backend_coord(&(plot_f32(x), SegmentValue::CenterOf(l)))));
            }
        }
        // Drawn in backend pixels on the root area (at 0,0).
        let style = ShapeStyle::from(&BLACK).stroke_width(1);
        for [min, q1, med, q3, max] in shapes {
            let y = med.1;
            root.draw(&PathElement::new(vec![(min.0, y), (max.0, y)], style))?;
            for x in [min.0, max.0] {
                root.draw(&PathElement::new(vec![(x, y - 5), (x, y + 5)], style))?;
            }
            root.draw(&Rectangle::new(
                [(q1.0, y - 7), (q3.0.max(q1.0 + 1), y + 7)],
                ShapeStyle::from(&WHITE).filled(),
            ))?;
            root.draw(&Rectangle::new(
                [(q1.0, y - 7), (q3.0.max(q1.0 + 1), y + 7)],
                style,
            ))?;
            root.draw(&PathElement::new(
                vec![(med.0, y - 7), (med.0, y + 7)],
                ShapeStyle::from(&BLACK).stroke_width(2),
            ))?;
        }
    }
    root.present()?;
    Ok(())
}

/// A measurement as a plot coordinate: f32 precision is plenty on a chart.
#[allow(clippy::cast_possible_truncation)]
fn plot_f32(x: f64) -> f32 {
    x as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            bench: "boot".into(),
            notes: vec!["emulated".into()],
            host: HostFacts::of_this_host(),
            microvm_host: None,
            image: Some(ImageFacts {
                name: "demo".into(),
                digest: "sha256:00".into(),
            }),
            command: vec!["echo".into(), "hi".into()],
            vcpus: 1,
            memory_mib: 256,
            runs: 3,
            warmup: 1,
            method: "alternating".into(),
            ratios: vec![Ratio {
                phase: "exit".into(),
                numerator: "microvm".into(),
                denominator: "crun".into(),
                value: 100.0,
                representative: false,
            }],
            series: vec![
                Series::new("microvm", "exit", "ms", vec![6000.0, 6500.0, 5900.0]),
                Series::new("crun", "exit", "ms", vec![60.0, 55.0, 70.0]),
                Series::new("crun", "kernel-entry", "ms", vec![]),
                Series::new("crun", "rate", "workloads/s", vec![3.0]),
            ],
        }
    }

    #[test]
    fn text_json_and_svg() {
        let r = report();
        let text = r.text();
        assert!(text.starts_with("NOTE: emulated\nhost: "), "{text}");
        assert!(
            text.contains("microvm") && text.contains("6000") && text.contains("workloads/s"),
            "{text}"
        );
        assert!(
            text.contains("exit          microvm / crun = 100.00x   NOT representative"),
            "{text}"
        );
        let r2 = Ratio::of(
            &r.series,
            "exit",
            &[
                ("microvm".into(), "crun".into(), true),
                ("crun".into(), "nobody".into(), true),
            ],
        );
        assert_eq!(r2.len(), 1);
        assert!((r2[0].value - 6000.0 / 60.0).abs() < 1e-9 && r2[0].representative);
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("p.svg");
        r.plot(&svg).unwrap();
        let body = std::fs::read_to_string(&svg).unwrap();
        assert!(
            body.starts_with("<svg") && body.contains("microvm exit") && body.contains("crun rate"),
            "{body}"
        );
        assert!(
            !body.contains("crun kernel-entry"),
            "a series without samples is not plotted"
        );
        let mut empty = report();
        empty.series.clear();
        assert!(empty.plot(&svg).is_err());
    }
}
