//! `vanectl rollout start|status|pause|resume|promote|abort`, and following
//! a rollout until it ends (`rollout status -w`).

use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use vane_proto as pb;

use crate::args::{Cli, ControlArgs, DEFAULT_TIMEOUT, OutputFormat, RolloutCommand, StartArgs};
use crate::client::Admin;
use crate::commands::follow::{self, Outage, POLL};
use crate::error::CliError;
use crate::output::{self, RolloutView};

/// Runs one `rollout` subcommand.
pub(crate) async fn run(
    admin: &mut Admin,
    cli: &Cli,
    url: &str,
    command: &RolloutCommand,
    pushed: Option<pb::Snapshot>,
    live: &mut dyn FnMut(&str),
) -> Result<String, CliError> {
    let fmt = cli.output;
    let refused = |status: tonic::Status| CliError::from_status(&status, url);
    let now = || output::unix_ms(SystemTime::now());
    match command {
        RolloutCommand::Start(args) => {
            let request = start_request(args, pushed);
            let resp = admin
                .start_rollout(request)
                .await
                .map_err(refused)?
                .into_inner();
            let view = view_of(resp, &args.group)?;
            Ok(output::rollout_started(&view, fmt, now()))
        }
        RolloutCommand::Status {
            group,
            watch: false,
        } => {
            let request = pb::GetRolloutRequest {
                group: group.clone(),
            };
            let resp = admin
                .get_rollout(request)
                .await
                .map_err(refused)?
                .into_inner();
            Ok(output::rollout(&view_of(resp, group)?, fmt, now()))
        }
        RolloutCommand::Status { group, watch: true } => {
            watch(admin, url, group, cli.timeout, fmt, live).await
        }
        RolloutCommand::Pause(args) => control(admin, url, args, Action::Pause, fmt).await,
        RolloutCommand::Resume(args) => control(admin, url, args, Action::Resume, fmt).await,
        RolloutCommand::Promote(args) => control(admin, url, args, Action::Promote, fmt).await,
        RolloutCommand::Abort(args) => control(admin, url, args, Action::Abort, fmt).await,
    }
}

/// The request of `rollout start`; flags not given are sent as 0/empty,
/// which the server reads as its documented defaults.
fn start_request(args: &StartArgs, snapshot: Option<pb::Snapshot>) -> pb::StartRolloutRequest {
    let ms =
        |d: Option<Duration>| d.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    pb::StartRolloutRequest {
        group: args.group.clone(),
        snapshot,
        spec: Some(pb::RolloutSpec {
            steps: args.steps.0.clone(),
            bake_ms: ms(args.bake),
            selector: args.select.clone().unwrap_or_default(),
            max_nacks: args.max_nacks.unwrap_or(0),
            max_disconnects: args.max_disconnects.unwrap_or(0),
            min_agents: args.min_agents.unwrap_or(0),
            progress_deadline_ms: ms(args.progress_deadline),
            max_degraded: args.max_degraded.unwrap_or(0),
        }),
        message: args.message.clone().unwrap_or_default(),
        expected_version: args.expect_version,
    }
}

fn view_of(resp: pb::RolloutResponse, group: &str) -> Result<RolloutView, CliError> {
    resp.rollout.as_ref().map(RolloutView::from).ok_or_else(|| {
        CliError::refused(format!(
            "the server answered without the rollout of group {group:?}"
        ))
    })
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Pause,
    Resume,
    Promote,
    Abort,
}

async fn control(
    admin: &mut Admin,
    url: &str,
    args: &ControlArgs,
    action: Action,
    fmt: OutputFormat,
) -> Result<String, CliError> {
    let (proto, done) = match action {
        Action::Pause => (pb::RolloutAction::Pause, "paused"),
        Action::Resume => (pb::RolloutAction::Resume, "resumed"),
        Action::Promote => (pb::RolloutAction::Promote, "promoted to 100%"),
        Action::Abort => (pb::RolloutAction::Abort, "aborted"),
    };
    let request = pb::ControlRolloutRequest {
        group: args.group.clone(),
        action: proto as i32,
        reason: args.reason.clone().unwrap_or_default(),
    };
    let resp = admin
        .control_rollout(request)
        .await
        .map_err(|s| CliError::from_status(&s, url))?
        .into_inner();
    let view = view_of(resp, &args.group)?;
    if fmt != OutputFormat::Table {
        return Ok(output::encode(&view, fmt));
    }
    let now = output::unix_ms(SystemTime::now());
    Ok(format!(
        "{done} rollout {} of {}\n{}\n",
        view.id,
        view.group,
        view.header(now)
    ))
}

/// What `rollout status -w` prints as it follows: one line per change.
#[derive(Debug, Default)]
pub(crate) struct Follower {
    last: Option<String>,
}

impl Follower {
    /// The line to print for `view` seen at `now_ms`, if anything changed
    /// since the last one. The first names the group, the rollout and
    /// the versions.
    pub(crate) fn observe(&mut self, view: &RolloutView, now_ms: i64) -> Option<String> {
        let change = view.change_line();
        let time = output::rfc3339_seconds(now_ms).unwrap_or_else(|| "-".into());
        let line = match &self.last {
            Some(last) if *last == change => return None,
            Some(_) => format!("{time}  {change}\n"),
            None => format!("{time}  {} rollout {}: {change}\n", view.group, view.id),
        };
        self.last = Some(change);
        Some(line)
    }
}

/// Follows the group's rollout until it ends (exit 0 COMPLETE, 1
/// ROLLED_BACK or SUPERSEDED) or `timeout` passes (exit 4). Each call is
/// limited to 10s (less near the end); a server that is away for a while
/// (restarting) is asked again.
async fn watch(
    admin: &mut Admin,
    url: &str,
    group: &str,
    timeout: Option<Duration>,
    fmt: OutputFormat,
    live: &mut dyn FnMut(&str),
) -> Result<String, CliError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut follower = Follower::default();
    let mut outage = Outage::default();
    let mut last: Option<RolloutView> = None;
    loop {
        let call_timeout = deadline.map_or(DEFAULT_TIMEOUT, |d| {
            DEFAULT_TIMEOUT.min(d.saturating_duration_since(Instant::now()).max(POLL))
        });
        let request = pb::GetRolloutRequest {
            group: group.to_owned(),
        };
        match follow::bounded(call_timeout, url, admin.get_rollout(request)).await {
            Ok(resp) => {
                outage.answered();
                let view = view_of(resp, group)?;
                if fmt == OutputFormat::Table
                    && let Some(line) = follower.observe(&view, output::unix_ms(SystemTime::now()))
                {
                    live(&line);
                }
                if view.ended() {
                    return ended(&view, fmt);
                }
                last = Some(view);
            }
            Err(e) => outage.failed(e, Instant::now())?,
        }
        if let (Some(deadline), Some(timeout)) = (deadline, timeout)
            && Instant::now() >= deadline
        {
            return Err(still_running(group, last.as_ref(), timeout, fmt));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The result of a rollout that ended: its object (JSON, YAML) or a
/// sentence; exit 1 unless COMPLETE.
fn ended(view: &RolloutView, fmt: OutputFormat) -> Result<String, CliError> {
    let text = if fmt == OutputFormat::Table {
        String::new()
    } else {
        output::encode(view, fmt)
    };
    if view.state == "COMPLETE" {
        return Ok(if fmt == OutputFormat::Table {
            format!(
                "rollout {} of {} COMPLETE: version {} runs on every agent\n",
                view.id, view.group, view.candidate_version
            )
        } else {
            text
        });
    }
    let mut message = format!("rollout {} of {} ended {}", view.id, view.group, view.state);
    if view.restored_version != 0 {
        message.push_str(&format!(
            " (stable content restored as version {})",
            view.restored_version
        ));
    }
    if !view.reason.is_empty() {
        message.push_str(": ");
        message.push_str(&output::one_line(&view.reason));
    }
    Err(CliError::refused(message).with_output(text))
}

fn still_running(
    group: &str,
    last: Option<&RolloutView>,
    timeout: Duration,
    fmt: OutputFormat,
) -> CliError {
    let after = humantime::format_duration(timeout);
    match last {
        Some(view) => {
            let text = if fmt == OutputFormat::Table {
                String::new()
            } else {
                output::encode(view, fmt)
            };
            CliError::timed_out(format!(
                "rollout {} of {group} is still {} (step {} at {}%) after {after} (--timeout)",
                view.id, view.state, view.step, view.percent
            ))
            .with_output(text)
        }
        None => CliError::timed_out(format!(
            "could not learn the state of the rollout of {group} within {after} (--timeout)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Steps;
    use crate::error::Failure;

    fn rollout(state: pb::RolloutState, step: u32, percent: u32, synced: u32) -> pb::Rollout {
        pb::Rollout {
            id: "r-1".into(),
            group: "edge".into(),
            state: state as i32,
            step,
            percent,
            stable_version: 3,
            candidate_version: 4,
            cohort: Some(pb::RolloutCohort {
                total: 3,
                synced,
                target: 3,
                matching: 10,
                ..pb::RolloutCohort::default()
            }),
            spec: Some(pb::RolloutSpec {
                steps: vec![25, 100],
                ..pb::RolloutSpec::default()
            }),
            ..pb::Rollout::default()
        }
    }

    #[test]
    fn start_sends_the_flags_and_zero_for_the_servers_defaults() {
        let args = StartArgs {
            group: "edge".into(),
            file: "c.yaml".into(),
            steps: Steps(vec![10, 50, 100]),
            bake: Some(Duration::from_secs(60)),
            select: Some("zone=a".into()),
            max_nacks: Some(2),
            max_disconnects: None,
            min_agents: Some(3),
            progress_deadline: Some(Duration::from_secs(600)),
            max_degraded: None,
            expect_version: Some(7),
            message: Some("why".into()),
        };
        let r = start_request(&args, None);
        assert_eq!(r.group, "edge");
        assert_eq!(r.expected_version, Some(7));
        assert_eq!(r.message, "why");
        assert_eq!(
            r.spec,
            Some(pb::RolloutSpec {
                steps: vec![10, 50, 100],
                bake_ms: 60_000,
                selector: "zone=a".into(),
                max_nacks: 2,
                max_disconnects: 0,
                min_agents: 3,
                progress_deadline_ms: 600_000,
                max_degraded: 0,
            })
        );
    }

    #[test]
    fn the_follower_prints_each_change_once() {
        let mut f = Follower::default();
        let t = 1_735_787_045_678;
        let first = f
            .observe(
                &RolloutView::from(&rollout(pb::RolloutState::Progressing, 1, 25, 1)),
                t,
            )
            .unwrap();
        assert_eq!(
            first,
            "2025-01-02T03:04:05Z  edge rollout r-1: PROGRESSING, step 1/2 at 25%, stable v3 → candidate v4; \
             cohort 3 of 10 matching (target 3): 1 synced, 0 nacked, 0 degraded, 0 disconnected\n"
        );
        // The same again, later: nothing to print.
        let same = RolloutView::from(&rollout(pb::RolloutState::Progressing, 1, 25, 1));
        assert_eq!(f.observe(&same, t + 500), None);
        let more = f
            .observe(
                &RolloutView::from(&rollout(pb::RolloutState::Progressing, 1, 25, 2)),
                t + 1000,
            )
            .unwrap();
        assert!(
            more.starts_with("2025-01-02T03:04:06Z  PROGRESSING"),
            "{more}"
        );
        assert!(more.contains("2 synced"), "{more}");
        // A bake ends at a fixed instant: its countdown is no change.
        let mut baking = rollout(pb::RolloutState::Baking, 1, 25, 3);
        baking.bake_ends_at_unix_ms = t + 60_000;
        let line = f.observe(&RolloutView::from(&baking), t + 1500).unwrap();
        assert!(line.contains("BAKING"), "{line}");
        assert!(line.contains("bake ends at 2025-01-02T03:05:05Z"), "{line}");
        assert_eq!(f.observe(&RolloutView::from(&baking), t + 30_000), None);
    }

    #[test]
    fn endings_and_their_exit_codes() {
        let done = RolloutView::from(&rollout(pb::RolloutState::Complete, 2, 100, 3));
        assert_eq!(
            ended(&done, OutputFormat::Table).unwrap(),
            "rollout r-1 of edge COMPLETE: version 4 runs on every agent\n"
        );
        let json = ended(&done, OutputFormat::Json).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["state"], "COMPLETE");

        let mut back = rollout(pb::RolloutState::RolledBack, 1, 25, 0);
        back.restored_version = 5;
        back.reason = "2 NACKs of the candidate (max 0)".into();
        let e = ended(&RolloutView::from(&back), OutputFormat::Json).unwrap_err();
        assert_eq!(e.kind, Failure::Refused);
        assert_eq!(
            e.message,
            "rollout r-1 of edge ended ROLLED_BACK (stable content restored as version 5): \
             2 NACKs of the candidate (max 0)"
        );
        let v: serde_json::Value = serde_json::from_str(&e.output).unwrap();
        assert_eq!(v["state"], "ROLLED_BACK");
        assert_eq!(v["restored_version"], 5);

        let gone = RolloutView::from(&rollout(pb::RolloutState::Superseded, 1, 25, 0));
        assert_eq!(
            ended(&gone, OutputFormat::Table).unwrap_err().kind,
            Failure::Refused
        );

        let running = RolloutView::from(&rollout(pb::RolloutState::Baking, 1, 25, 3));
        let e = still_running(
            "edge",
            Some(&running),
            Duration::from_secs(5),
            OutputFormat::Table,
        );
        assert_eq!(e.kind, Failure::TimedOut);
        assert_eq!(
            e.message,
            "rollout r-1 of edge is still BAKING (step 1 at 25%) after 5s (--timeout)"
        );
        assert_eq!(
            still_running("edge", None, Duration::from_secs(5), OutputFormat::Json).kind,
            Failure::TimedOut
        );
    }
}
