//! Prometheus text exposition (format 0.0.4), written by hand: the server's metrics are read
//! from the database at scrape time, so there is no registry of live counters to keep — a
//! few gauges per pool, grouped by name with one `# HELP`/`# TYPE` each.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Gauges collected for one scrape.
#[derive(Debug, Default)]
pub struct Metrics {
    /// name → (help, samples)
    families: BTreeMap<&'static str, (&'static str, Vec<String>)>,
}

/// Escapes a label value (`\`, `"`, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Adds one sample of gauge `name`.
    pub fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect::<Vec<_>>()
            .join(",");
        let sample = if labels.is_empty() {
            format!("{name} {value}")
        } else {
            format!("{name}{{{labels}}} {value}")
        };
        self.families
            .entry(name)
            .or_insert_with(|| (help, Vec::new()))
            .1
            .push(sample);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, (help, samples)) in &self.families {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for s in samples {
                let _ = writeln!(out, "{s}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_grouped_and_labels_escaped() {
        let mut m = Metrics::default();
        m.gauge("b_x", "X.", &[("pool", "a\"b")], 2.0);
        m.gauge("a_y", "Y.", &[], 1.5);
        m.gauge("b_x", "X.", &[("pool", "c")], 3.0);
        assert_eq!(
            m.render(),
            "# HELP a_y Y.\n# TYPE a_y gauge\na_y 1.5\n# HELP b_x X.\n# TYPE b_x gauge\nb_x{pool=\"a\\\"b\"} 2\nb_x{pool=\"c\"} 3\n"
        );
    }
}
