//! Capacity search: open-loop steps of increasing offered rate until the server stops
//! keeping up (achieved below offered), errors appear, or the corrected p99 passes the SLO.
//! The highest rate that met all three is the capacity.

use crate::config::{Config, Error};
use crate::report::{Report, SweepReport, SweepStep};
use crate::{run_plan, Control, Progress};

pub(crate) fn run(
    config: &Config,
    progress: &mut dyn FnMut(&Progress) -> Control,
) -> Result<Report, Error> {
    let Some(sw) = config.sweep.clone() else {
        return Err(Error::Input("no sweep configured".into()));
    };
    let rates: Vec<f64> = if sw.rates.is_empty() {
        (0..sw.max_steps)
            .map(|k| sw.start * sw.factor.powi(k as i32))
            .collect()
    } else {
        sw.rates
            .iter()
            .copied()
            .take(sw.max_steps as usize)
            .collect()
    };
    let mut steps = Vec::new();
    let mut last: Option<Report> = None;
    let mut stop_reason = "all steps met the SLO".to_string();
    for (k, &rate) in rates.iter().enumerate() {
        let mut step_cfg = config.clone();
        step_cfg.rate = Some(rate);
        step_cfg.sweep = None;
        let plan = step_cfg.resolve(false)?;
        let r = run_plan(&step_cfg, &plan, Some((k + 1, rate)), progress)?;
        let unc = r
            .latency_uncorrected
            .as_ref()
            .map_or(r.latency.p99_ms, |l| l.p99_ms);
        let kept_up = r.achieved_rps >= (1.0 - sw.tolerance) * rate && r.backlog == 0;
        let no_errors = r.errors_total == 0;
        let in_slo = r.latency.p99_ms <= sw.slo_p99_ms;
        steps.push(SweepStep {
            offered_rps: rate,
            achieved_rps: r.achieved_rps,
            errors: r.errors_total,
            p50_ms: r.latency.p50_ms,
            p99_ms: r.latency.p99_ms,
            p99_uncorrected_ms: unc,
            max_ms: r.latency.max_ms,
            met_slo: kept_up && no_errors && in_slo && !r.interrupted,
        });
        let interrupted = r.interrupted;
        last = Some(r);
        if interrupted {
            stop_reason = "interrupted".into();
            break;
        }
        let mut why = Vec::new();
        if !kept_up {
            why.push(format!(
                "achieved {:.0} < offered {rate:.0}",
                steps[k].achieved_rps
            ));
        }
        if !no_errors {
            why.push(format!("{} errors", steps[k].errors));
        }
        if !in_slo {
            why.push(format!(
                "p99 {:.2}ms > SLO {:.2}ms",
                steps[k].p99_ms, sw.slo_p99_ms
            ));
        }
        if !why.is_empty() {
            stop_reason = format!("at {rate:.0} req/s: {}", why.join(", "));
            break;
        }
    }
    let capacity_rps = steps
        .iter()
        .filter(|s| s.met_slo)
        .map(|s| s.offered_rps)
        .reduce(f64::max);
    let mut report = last.ok_or_else(|| Error::Input("sweep has no steps".into()))?;
    report.config = config.clone();
    report.sweep = Some(SweepReport {
        slo_p99_ms: sw.slo_p99_ms,
        steps,
        capacity_rps,
        stop_reason,
    });
    Ok(report)
}
