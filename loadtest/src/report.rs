//! Output: the results table on stdout, CSV rows (`--csv`, appended, one
//! header per new file), and the latency distribution chart (`--svg`,
//! latency against percentile on a "nines" axis, drawn with plotters).

use std::io::Write;
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

/// The results of one run: ordered (name, value) rows.
pub struct Report {
    pub scenario: String,
    rows: Vec<(String, String)>,
}

impl Report {
    pub fn new(scenario: &str) -> Report {
        Report {
            scenario: scenario.to_owned(),
            rows: Vec::new(),
        }
    }

    pub fn add(&mut self, name: &str, value: impl ToString) {
        self.rows.push((name.to_owned(), value.to_string()));
    }

    /// Adds p50/p90/p99/p99.9/max/mean of a µs histogram, in ms.
    pub fn add_latency(&mut self, h: &Histogram<u64>) {
        self.add("latency_samples", h.len());
        if h.is_empty() {
            return;
        }
        let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
        self.add("latency_p50_ms", ms(h.value_at_quantile(0.5)));
        self.add("latency_p90_ms", ms(h.value_at_quantile(0.9)));
        self.add("latency_p99_ms", ms(h.value_at_quantile(0.99)));
        self.add("latency_p999_ms", ms(h.value_at_quantile(0.999)));
        self.add("latency_max_ms", ms(h.max()));
        self.add("latency_mean_ms", format!("{:.3}", h.mean() / 1000.0));
    }

    /// The table, as printed to stdout.
    pub fn table(&self) -> String {
        let w = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut s = format!("== haoshuo-load {} ==\n", self.scenario);
        for (k, v) in &self.rows {
            s.push_str(&format!("{k:<w$}  {v}\n"));
        }
        s
    }

    /// Appends a CSV row, preceded by a header line unless the file's last
    /// header is already this one (scenarios have different columns).
    pub fn write_csv(&self, path: &Path) -> std::io::Result<()> {
        let old = std::fs::read_to_string(path).unwrap_or_default();
        let last_head = old.lines().rev().find(|l| l.starts_with("scenario,"));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let esc = |s: &str| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_owned()
            }
        };
        let head: Vec<String> = std::iter::once("scenario".to_owned())
            .chain(self.rows.iter().map(|(k, _)| esc(k)))
            .collect();
        let head = head.join(",");
        if last_head != Some(head.as_str()) {
            writeln!(f, "{head}")?;
        }
        let row: Vec<String> = std::iter::once(esc(&self.scenario))
            .chain(self.rows.iter().map(|(_, v)| esc(v)))
            .collect();
        writeln!(f, "{}", row.join(","))
    }
}

/// The nearest-rank `q` quantile (0 < q <= 1) of ascending `sorted`: a
/// value that was measured, so the p99 of 100 readers is the 99th slowest.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// Writes the latency-by-percentile chart of a µs histogram as SVG.
pub fn write_svg(path: &Path, title: &str, h: &Histogram<u64>) -> Result<(), String> {
    if h.is_empty() {
        return Err("no latency samples to chart".into());
    }
    // x = "nines": 1 at 90 %, 2 at 99 %, 3 at 99.9 % ...
    let mut points: Vec<(f64, f64)> = Vec::new();
    for v in h.iter_quantiles(4) {
        let q = v.quantile_iterated_to();
        if q >= 1.0 {
            break;
        }
        points.push((-(1.0 - q).log10(), v.value_iterated_to() as f64 / 1000.0));
    }
    let top = h.max() as f64 / 1000.0;
    let max_x = points.last().map_or(1.0, |p| p.0).clamp(1.0, 6.0).ceil();
    points.push((max_x, top));
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_x, 0.0..top * 1.05)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(max_x as usize + 1)
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            let decimals = (x.round() as usize).saturating_sub(2);
            format!("{p:.decimals$}%")
        })
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(points, &BLUE))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&[7.0], 0.5), Some(7.0));
        assert_eq!(quantile(&[7.0], 0.0), Some(7.0));
        assert_eq!(quantile(&[1.0, 2.0, 3.0], 0.5), Some(2.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn table_and_csv() {
        let mut r = Report::new("idle");
        r.add("conns", 5);
        r.add("note", "a,b");
        assert!(r.table().contains("conns  5\n"));
        let dir = std::env::temp_dir().join(format!("hl-csv-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        r.write_csv(&dir).unwrap();
        r.write_csv(&dir).unwrap();
        let s = std::fs::read_to_string(&dir).unwrap();
        assert_eq!(s, "scenario,conns,note\nidle,5,\"a,b\"\nidle,5,\"a,b\"\n");
        let mut other = Report::new("chat");
        other.add("users", 2);
        other.write_csv(&dir).unwrap();
        let s = std::fs::read_to_string(&dir).unwrap();
        assert!(s.ends_with("scenario,users\nchat,2\n"), "{s}");
        std::fs::remove_file(&dir).unwrap();
    }
}
