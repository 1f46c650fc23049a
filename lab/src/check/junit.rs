//! `lab check --junit FILE`: the result as JUnit XML, the format CI systems (GitHub
//! Actions reporters, GitLab, Jenkins) display. One `<testsuite>` per server, one
//! `<testcase>` per limit of each endpoint (a `<failure>` when exceeded); an endpoint or
//! server that could not be measured is one `<testcase>` with an `<error>`.

use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::Writer;

use crate::results::check::{CheckReport, ServerCheck};

pub fn render(report: &CheckReport) -> anyhow::Result<String> {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let (tests, failures, errors) = report
        .servers
        .iter()
        .map(counts)
        .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
    let time: f64 = report.servers.iter().map(seconds).sum();
    w.create_element("testsuites")
        .with_attribute(("name", "lab check"))
        .with_attribute(("tests", tests.to_string().as_str()))
        .with_attribute(("failures", failures.to_string().as_str()))
        .with_attribute(("errors", errors.to_string().as_str()))
        .with_attribute(("time", format!("{time:.1}").as_str()))
        .write_inner_content(|w| {
            for server in &report.servers {
                suite(w, report, server)?;
            }
            Ok(())
        })?;
    let mut text = String::from_utf8(w.into_inner())?;
    text.push('\n');
    Ok(text)
}

/// (test cases, failures, errors) of a server.
fn counts(s: &ServerCheck) -> (usize, usize, usize) {
    let mut n = (0, 0, 0);
    for e in &s.endpoints {
        if e.error.is_some() {
            n.0 += 1;
            n.2 += 1;
        } else {
            n.0 += e.limits.len();
            n.1 += e.limits.iter().filter(|l| !l.passed).count();
        }
    }
    if s.error.is_some() {
        n.0 += 1;
        n.2 += 1;
    }
    n
}

fn seconds(s: &ServerCheck) -> f64 {
    s.endpoints
        .iter()
        .map(|e| e.warmup_s + e.duration_s * e.windows.len().max(1) as f64)
        .sum()
}

type W = Writer<Vec<u8>>;

fn suite(w: &mut W, report: &CheckReport, s: &ServerCheck) -> quick_xml::Result<()> {
    let (tests, failures, errors) = counts(s);
    w.create_element("testsuite")
        .with_attribute(("name", s.server.as_str()))
        .with_attribute(("tests", tests.to_string().as_str()))
        .with_attribute(("failures", failures.to_string().as_str()))
        .with_attribute(("errors", errors.to_string().as_str()))
        .with_attribute(("time", format!("{:.1}", seconds(s)).as_str()))
        .write_inner_content(|w| {
            w.create_element("properties").write_inner_content(|w| {
                let mut props = vec![("tracer", report.tracer.clone())];
                if let Some(b) = &report.budget {
                    props.push(("budget", b.clone()));
                }
                if let Some(pid) = s.pid {
                    props.push(("pid", pid.to_string()));
                }
                for (name, value) in props {
                    w.create_element("property")
                        .with_attribute(("name", name))
                        .with_attribute(("value", value.as_str()))
                        .write_empty()?;
                }
                Ok(())
            })?;
            for e in &s.endpoints {
                if let Some(error) = &e.error {
                    w.create_element("testcase")
                        .with_attribute(("classname", s.server.as_str()))
                        .with_attribute(("name", e.name.as_str()))
                        .write_inner_content(|w| {
                            w.create_element("error")
                                .with_attribute(("message", error.as_str()))
                                .with_attribute(("type", "not measured"))
                                .write_text_content(BytesText::new(error))?;
                            Ok(())
                        })?;
                    continue;
                }
                for l in &e.limits {
                    let case = w
                        .create_element("testcase")
                        .with_attribute(("classname", s.server.as_str()))
                        .with_attribute((
                            "name",
                            format!("{}: {} per request", e.name, l.metric.label()).as_str(),
                        ));
                    if l.passed {
                        case.write_empty()?;
                        continue;
                    }
                    let message = l.describe();
                    let behind: Vec<String> = e
                        .calls_behind(&l.metric)
                        .iter()
                        .map(|c| c.describe())
                        .collect();
                    let detail = format!(
                        "{} {}: {message}\nbudget line {}\ncalls: {}",
                        s.server,
                        e.name,
                        l.line.map_or("-".into(), |n| n.to_string()),
                        behind.join(", ")
                    );
                    case.write_inner_content(|w| {
                        w.create_element("failure")
                            .with_attribute(("message", message.as_str()))
                            .with_attribute(("type", "budget exceeded"))
                            .write_text_content(BytesText::new(&detail))?;
                        Ok(())
                    })?;
                }
            }
            if let Some(error) = &s.error {
                w.create_element("testcase")
                    .with_attribute(("classname", s.server.as_str()))
                    .with_attribute(("name", "server"))
                    .write_inner_content(|w| {
                        w.create_element("error")
                            .with_attribute(("message", error.as_str()))
                            .with_attribute(("type", "could not check"))
                            .write_text_content(BytesText::new(
                                &[error.as_str(), s.log_tail.as_deref().unwrap_or("")].join("\n"),
                            ))?;
                        Ok(())
                    })?;
            }
            Ok(())
        })?;
    Ok(())
}
