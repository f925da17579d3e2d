//! Input files of the simulator: latency samples (one number a line), cumulative
//! distributions (`value,probability` a line) and Azure 2021-format traces
//! (`app,func,end_timestamp,duration`). Every problem names the file and the line.

use std::collections::HashMap;

use super::rng::Rng;

/// A problem with a scenario or one of its files: `FILE:LINE: problem` on one line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}{}: {problem}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct SimError {
    pub file: String,
    pub line: Option<usize>,
    pub problem: String,
}

impl SimError {
    pub fn at(file: &str, line: Option<usize>, problem: impl Into<String>) -> Self {
        SimError {
            file: file.to_string(),
            line,
            problem: problem.into(),
        }
    }
}

/// Lines that carry data: trimmed, without blanks and `#` comments, with 1-based numbers.
fn data_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

fn number(file: &str, line: usize, s: &str, what: &str) -> Result<f64, SimError> {
    let v: f64 = s.trim().parse().map_err(|_| {
        SimError::at(
            file,
            Some(line),
            format!("{what} {:?} is not a number", s.trim()),
        )
    })?;
    if !v.is_finite() {
        return Err(SimError::at(
            file,
            Some(line),
            format!("{what} {v} is not finite"),
        ));
    }
    Ok(v)
}

/// Round-trip samples in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    values: Vec<f64>,
}

impl Samples {
    pub fn parse(file: &str, text: &str) -> Result<Self, SimError> {
        let mut values = Vec::new();
        for (n, l) in data_lines(text) {
            let v = number(file, n, l, "sample")?;
            if v < 0.0 {
                return Err(SimError::at(
                    file,
                    Some(n),
                    format!("sample {v} is negative"),
                ));
            }
            values.push(v);
        }
        if values.is_empty() {
            return Err(SimError::at(
                file,
                None,
                "no samples (one number of milliseconds a line)",
            ));
        }
        Ok(Samples { values })
    }

    pub fn from_values(values: Vec<f64>) -> Self {
        Samples { values }
    }

    /// The sample a uniform `u` in [0, 1) picks.
    pub fn pick(&self, u: f64) -> f64 {
        self.values[((u * self.values.len() as f64) as usize).min(self.values.len() - 1)]
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The `q` quantile (0..=1).
    pub fn quantile(&self, q: f64) -> f64 {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        v[((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)]
    }
}

/// An empirical cumulative distribution, sampled by inverting it.
#[derive(Debug, Clone, PartialEq)]
pub struct Cdf {
    points: Vec<(f64, f64)>,
}

impl Cdf {
    pub fn parse(file: &str, text: &str) -> Result<Self, SimError> {
        let mut points: Vec<(f64, f64)> = Vec::new();
        for (n, l) in data_lines(text) {
            let Some((v, p)) = l.split_once(',') else {
                return Err(SimError::at(
                    file,
                    Some(n),
                    "expected `value,cumulative_probability`",
                ));
            };
            let v = number(file, n, v, "value")?;
            let p = number(file, n, p, "probability")?;
            if !(0.0..=1.0).contains(&p) {
                return Err(SimError::at(
                    file,
                    Some(n),
                    format!("probability {p} is outside 0..=1"),
                ));
            }
            if let Some((pv, pp)) = points.last() {
                if v < *pv || p < *pp {
                    return Err(SimError::at(
                        file,
                        Some(n),
                        "values and probabilities must not decrease",
                    ));
                }
            }
            points.push((v, p));
        }
        if points.len() < 2 {
            return Err(SimError::at(
                file,
                None,
                "a distribution needs at least two points",
            ));
        }
        Ok(Cdf { points })
    }

    /// The value at cumulative probability `u`, interpolated linearly.
    pub fn inverse(&self, u: f64) -> f64 {
        let i = self.points.partition_point(|(_, p)| *p < u);
        if i == 0 {
            return self.points[0].0;
        }
        if i >= self.points.len() {
            return self.points[self.points.len() - 1].0;
        }
        let (v0, p0) = self.points[i - 1];
        let (v1, p1) = self.points[i];
        if p1 - p0 < 1e-12 {
            v1
        } else {
            v0 + (v1 - v0) * (u - p0) / (p1 - p0)
        }
    }

    pub fn sample(&self, rng: &mut Rng) -> f64 {
        self.inverse(rng.f64())
    }
}

/// One invocation of a trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceCall {
    pub function: u32,
    /// Start, ms from the trace's first start.
    pub start_ms: f64,
    /// Its duration as recorded, ms.
    pub exec_ms: f64,
}

/// A trace in the Azure Functions 2021 format: `app,func,end_timestamp,duration`, times in
/// seconds, with or without that header line.
pub fn parse_trace(file: &str, text: &str) -> Result<(Vec<TraceCall>, Vec<String>), SimError> {
    let mut names: HashMap<String, u32> = HashMap::new();
    let mut list = Vec::new();
    let mut calls = Vec::new();
    for (n, l) in data_lines(text) {
        let cols: Vec<&str> = l.split(',').map(str::trim).collect();
        if cols.len() != 4 {
            return Err(SimError::at(
                file,
                Some(n),
                format!(
                    "expected 4 columns (app,func,end_timestamp,duration), found {}",
                    cols.len()
                ),
            ));
        }
        if n == 1 && cols[2].parse::<f64>().is_err() {
            continue; // the header
        }
        let end = number(file, n, cols[2], "end_timestamp")?;
        let dur = number(file, n, cols[3], "duration")?;
        if dur < 0.0 {
            return Err(SimError::at(
                file,
                Some(n),
                format!("duration {dur} is negative"),
            ));
        }
        let key = format!("{}/{}", cols[0], cols[1]);
        let id = match names.get(&key) {
            Some(id) => *id,
            None => {
                let id = list.len() as u32;
                names.insert(key.clone(), id);
                list.push(key);
                id
            }
        };
        calls.push(TraceCall {
            function: id,
            start_ms: (end - dur) * 1e3,
            exec_ms: dur * 1e3,
        });
    }
    if calls.is_empty() {
        return Err(SimError::at(file, None, "the trace has no invocations"));
    }
    calls.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    let t0 = calls[0].start_ms;
    for c in &mut calls {
        c.start_ms -= t0;
    }
    Ok((calls, list))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_skip_comments_and_name_bad_lines() {
        let s = Samples::parse("rtt.txt", "# ms\n1.5\n\n2.5\n").unwrap();
        assert_eq!(s.len(), 2);
        let e = Samples::parse("rtt.txt", "1\n2\nfast\n").unwrap_err();
        assert_eq!(e.to_string(), "rtt.txt:3: sample \"fast\" is not a number");
        let e = Samples::parse("rtt.txt", "# nothing\n").unwrap_err();
        assert!(e.to_string().starts_with("rtt.txt: no samples"), "{e}");
        let e = Samples::parse("rtt.txt", "-4\n").unwrap_err();
        assert_eq!(e.to_string(), "rtt.txt:1: sample -4 is negative");
    }

    #[test]
    fn a_cdf_inverts_and_checks_its_lines() {
        let c = Cdf::parse("c.csv", "0,0\n10,0.5\n20,1\n").unwrap();
        assert_eq!(c.inverse(0.25), 5.0);
        assert_eq!(c.inverse(0.75), 15.0);
        assert_eq!(c.inverse(1.0), 20.0);
        let e = Cdf::parse("c.csv", "0,0\n10,0.5\n5,0.7\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.csv:3: values and probabilities must not decrease"
        );
        let e = Cdf::parse("c.csv", "0,0\n10;0.5\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.csv:2: expected `value,cumulative_probability`"
        );
    }

    #[test]
    fn traces_parse_with_or_without_a_header() {
        let (calls, names) = parse_trace(
            "t.csv",
            "app,func,end_timestamp,duration\na,f,10.5,0.5\na,g,10.2,0.1\na,f,11.0,0.2\n",
        )
        .unwrap();
        assert_eq!(names, vec!["a/f", "a/g"]);
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].start_ms, 0.0);
        assert_eq!(calls[0].function, 0);
        assert!((calls[1].start_ms - 100.0).abs() < 1e-6);
        let e = parse_trace("t.csv", "a,f,10\n").unwrap_err();
        assert!(
            e.to_string().starts_with("t.csv:1: expected 4 columns"),
            "{e}"
        );
        let e = parse_trace("t.csv", "a,f,10,1\na,f,x,1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.csv:2: end_timestamp \"x\" is not a number"
        );
    }
}
