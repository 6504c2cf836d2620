//! The bench's result: rows of Bramble against a peer (median, min, max and
//! the ratio), a header saying where and when it ran, and notes; rendered as
//! a markdown table or JSON. Pure: no I/O.

use serde::Serialize;

/// Median, min and max of a set of measurements.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Summary {
    /// `None` for no samples. The median of an even count is the upper middle
    /// one (a measured value, never an average of two).
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Summary {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
            runs: v.len(),
        })
    }

    /// One reading (memory at the end of the idle window, say).
    pub fn one(value: f64) -> Summary {
        Summary {
            median: value,
            min: value,
            max: value,
            runs: 1,
        }
    }
}

/// `"1 run"`, `"20 runs"`.
pub fn runs(n: usize) -> String {
    if n == 1 {
        "1 run".into()
    } else {
        format!("{n} runs")
    }
}

/// The `p`-th quantile (0..=1) of sorted samples, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Ms,
    Seconds,
    MiB,
    Percent,
    KiBPerHour,
    RequestsPerSecond,
}

impl Unit {
    fn suffix(self) -> &'static str {
        match self {
            Unit::Ms => " ms",
            Unit::Seconds => " s",
            Unit::MiB => " MiB",
            Unit::Percent => " %",
            Unit::KiBPerHour => " KiB/h",
            Unit::RequestsPerSecond => " req/s",
        }
    }

    fn number(self, v: f64) -> String {
        match self {
            Unit::Ms if v < 10.0 => format!("{v:.1}"),
            Unit::Ms | Unit::KiBPerHour | Unit::RequestsPerSecond => format!("{v:.0}"),
            Unit::Seconds if v < 1.0 => format!("{v:.3}"),
            Unit::Seconds | Unit::Percent => format!("{v:.2}"),
            Unit::MiB => format!("{v:.1}"),
        }
    }

    /// `median (min–max)`, or the bare value for a single reading.
    pub fn show(self, s: &Summary) -> String {
        let m = self.number(s.median);
        if s.runs <= 1 || s.min == s.max {
            format!("{m}{}", self.suffix())
        } else {
            format!(
                "{m}{} ({}–{})",
                self.suffix(),
                self.number(s.min),
                self.number(s.max)
            )
        }
    }
}

/// A measurement, or why there is none.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Measured(Summary),
    Skipped(String),
}

impl Outcome {
    fn summary(&self) -> Option<&Summary> {
        match self {
            Outcome::Measured(s) => Some(s),
            Outcome::Skipped(_) => None,
        }
    }

    fn show(&self, unit: Unit) -> String {
        match self {
            Outcome::Measured(s) => unit.show(s),
            Outcome::Skipped(why) => format!("skipped: {why}"),
        }
    }
}

impl From<Option<Summary>> for Outcome {
    fn from(s: Option<Summary>) -> Outcome {
        match s {
            Some(s) => Outcome::Measured(s),
            None => Outcome::Skipped("no samples".into()),
        }
    }
}

/// One figure: Bramble's side, the peer's, and Bramble ÷ peer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub figure: String,
    pub unit: Unit,
    pub bramble_setup: String,
    pub bramble: Outcome,
    pub peer_setup: String,
    pub peer: Outcome,
    /// Bramble's median over the peer's; `None` when either is missing.
    pub ratio: Option<f64>,
}

impl Row {
    pub fn new(
        figure: impl Into<String>,
        unit: Unit,
        bramble_setup: impl Into<String>,
        bramble: Outcome,
        peer_setup: impl Into<String>,
        peer: Outcome,
    ) -> Row {
        let ratio = match (bramble.summary(), peer.summary()) {
            (Some(b), Some(p)) if p.median != 0.0 => Some(b.median / p.median),
            _ => None,
        };
        Row {
            figure: figure.into(),
            unit,
            bramble_setup: bramble_setup.into(),
            bramble,
            peer_setup: peer_setup.into(),
            peer,
            ratio,
        }
    }
}

/// Where, when and how the bench ran.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Header {
    pub date: String,
    pub command: String,
    pub mode: String,
    pub machine: String,
    pub kernel: String,
    pub bramble_version: String,
    pub peers: Vec<String>,
    pub load_at_start: String,
    pub load_at_end: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    pub header: Header,
    pub rows: Vec<Row>,
    /// How a figure was taken, what a skipped peer lacked.
    pub notes: Vec<String>,
    /// What the peers' shutdown left on the host, if anything.
    pub left_behind: Vec<String>,
}

impl Report {
    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into())
    }

    pub fn to_markdown(&self) -> String {
        let h = &self.header;
        let mut out = String::new();
        out.push_str(&format!("- Command: `{}` ({})\n", h.command, h.mode));
        out.push_str(&format!("- Date: {}\n", h.date));
        out.push_str(&format!("- Machine: {}; kernel {}\n", h.machine, h.kernel));
        out.push_str(&format!(
            "- Load average (1/5/15 min): {} at the start, {} at the end\n",
            h.load_at_start, h.load_at_end
        ));
        out.push_str(&format!("- Bramble: {}\n", h.bramble_version));
        for p in &h.peers {
            out.push_str(&format!("- Peer: {p}\n"));
        }
        out.push('\n');
        out.push_str("| figure | Bramble: what | Bramble | peer: what | peer | Bramble ÷ peer |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for r in &self.rows {
            let ratio = r
                .ratio
                .map(|x| {
                    if x != 0.0 && x < 0.1 {
                        format!("{x:.3}×")
                    } else {
                        format!("{x:.2}×")
                    }
                })
                .unwrap_or_else(|| "–".into());
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.figure,
                r.bramble_setup,
                r.bramble.show(r.unit),
                r.peer_setup,
                r.peer.show(r.unit),
                ratio
            ));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                out.push_str(&format!("- {n}\n"));
            }
        }
        out.push('\n');
        if self.left_behind.is_empty() {
            out.push_str("Left on the host after the peers' shutdown: nothing.\n");
        } else {
            out.push_str("Left on the host after the peers' shutdown:\n");
            for l in &self.left_behind {
                out.push_str(&format!("- {l}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_takes_a_measured_median() {
        let s = Summary::of(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.runs), (3.0, 1.0, 10.0, 4));
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn rows_render_with_ratio_or_skip_reason() {
        let mut r = Report::default();
        r.push(Row::new(
            "start",
            Unit::Ms,
            "apply",
            Outcome::Measured(Summary::of(&[100.0, 200.0, 300.0]).unwrap()),
            "docker run",
            Outcome::Measured(Summary::one(400.0)),
        ));
        r.push(Row::new(
            "rss",
            Unit::MiB,
            "up",
            Outcome::Measured(Summary::one(30.0)),
            "dockerd",
            Outcome::Skipped("dockerd not installed".into()),
        ));
        let md = r.to_markdown();
        assert!(md.contains("| start | apply | 200 ms (100–300) | docker run | 400 ms | 0.50× |"));
        assert!(md.contains("| skipped: dockerd not installed | – |"));
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["rows"][0]["ratio"], 0.5);
        assert_eq!(json["rows"][1]["peer"]["skipped"], "dockerd not installed");
    }
}
