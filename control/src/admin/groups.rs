//! The group-level Admin calls: `ListGroups` (heads and agents by state),
//! `DeleteGroup` (refused while agents are connected unless forced; a
//! tombstone keeps the numbers), `WatchGroup` (an observer's stream of
//! versions), and what `Status` shares with them: the agents a caller may
//! see, the label selector, and "unknown group, did you mean".

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::Status;
use vane_proto as pb;
use vane_store::{AuditRecord, DeleteGroup, Deleted};

use crate::admin::convert::{agent_status, check_group, check_message, store_status};
use crate::admin::service::AdminService;
use crate::auth::{Action, Caller};
use crate::hub::Published;
use crate::rollout::selector::Selector;

/// What `WatchGroup` streams.
pub(crate) type VersionStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchGroupResponse, Status>> + Send>>;

impl AdminService {
    /// Every agent of `filter` (or of every group) the caller may see, with
    /// its state relative to the version it should run, selected by
    /// `selector`.
    pub(crate) async fn agent_statuses(
        &self,
        filter: Option<&str>,
        visible: &(dyn Fn(&str) -> bool + Sync),
        selector: Option<&Selector>,
    ) -> Vec<pb::AgentStatus> {
        // With a clustered store, the other replicas' agents too; when the
        // store cannot say, this replica's own, and the store shows degraded.
        let others = match self.store.agent_directory() {
            Some(directory) => match directory.others(filter).await {
                Ok(others) => others,
                Err(e) => {
                    tracing::debug!(error = %e, "status without the other replicas' agents");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        // During a rollout an agent's state is relative to its cohort's
        // version, and its role says which cohort.
        crate::replication::merge(self.agents.list(filter), &self.replica, others)
            .iter()
            .filter(|a| visible(&a.record.group))
            .filter(|a| selector.is_none_or(|s| s.matches(&a.record.labels)))
            .map(|a| {
                let group = &a.record.group;
                let head = self.hub.head(group);
                let head_version = head.as_ref().map_or(0, |h| h.version);
                let cohort = self.rollouts.cohorts.get(group);
                let target = crate::targets::target(&head, &cohort, &a.record.node_id)
                    .map_or(head_version, |t| t.version);
                let mut status = agent_status(a, target);
                status.target_version = target;
                status.role = crate::targets::role(&head, &cohort, &a.record.node_id).to_owned();
                status
            })
            .collect()
    }

    /// The refusal of a group that has no version, no agent and no
    /// corrupt head: "unknown group", with the nearest name the caller may
    /// read.
    pub(crate) fn unknown_group(&self, caller: &Caller, group: &str, known: &[String]) -> Status {
        let readable: Vec<&str> = known
            .iter()
            .map(String::as_str)
            .filter(|g| self.auth.allows(caller, Action::Read, g))
            .collect();
        Status::not_found(match nearest(group, &readable) {
            Some(near) => format!("unknown group {group:?}; did you mean {near}?"),
            None => format!("unknown group {group:?}"),
        })
    }

    /// Every group this server knows of: with a head (here or in the
    /// store), a corrupt head, or agents.
    pub(crate) async fn known_groups(&self) -> Result<Vec<String>, Status> {
        let mut known: BTreeSet<String> = self
            .store
            .groups()
            .await
            .map_err(store_status)?
            .into_iter()
            .collect();
        known.extend(self.hub.heads().iter().map(|h| h.group.clone()));
        known.extend(self.hub.corrupt().heads().into_iter().map(|c| c.group));
        known.extend(self.agents.list(None).into_iter().map(|a| a.group));
        Ok(known.into_iter().collect())
    }

    /// `ListGroups`: the groups the caller may read (the others are left
    /// out, not refused).
    pub(crate) async fn list_groups_as(
        &self,
        caller: &Caller,
    ) -> Result<pb::ListGroupsResponse, Status> {
        let everything = self.auth.allowed_everywhere(caller, Action::Read)?;
        let visible = |group: &str| everything || self.auth.allows(caller, Action::Read, group);
        // The store says which groups exist (on every replica alike); the
        // hub has their heads without a read.
        let groups: Vec<String> = self
            .store
            .groups()
            .await
            .map_err(store_status)?
            .into_iter()
            .filter(|g| visible(g))
            .collect();
        let mut counts: BTreeMap<String, pb::AgentCounts> = BTreeMap::new();
        for agent in self.agent_statuses(None, &visible, None).await {
            let c = counts.entry(agent.group.clone()).or_default();
            c.total += 1;
            if !agent.connected {
                c.disconnected += 1;
            }
            match agent.state() {
                pb::AgentState::Synced => c.synced += 1,
                pb::AgentState::Stale => c.stale += 1,
                pb::AgentState::Nacked => c.nacked += 1,
                pb::AgentState::NotSent => c.not_sent += 1,
                pb::AgentState::Unacked => c.unacked += 1,
                pb::AgentState::Unspecified => {}
            }
        }
        let mut out = Vec::with_capacity(groups.len());
        for group in groups {
            let (version, hash, at) = match self.hub.head(&group) {
                Some(h) => (h.version, h.hash.clone(), h.created_at_unix_ms),
                None => match self
                    .store
                    .history(&group, 1)
                    .await
                    .map_err(store_status)?
                    .first()
                {
                    Some(v) => (v.version, v.hash.clone(), v.created_at_unix_ms),
                    // Deleted between the two reads.
                    None => continue,
                },
            };
            out.push(pb::GroupSummary {
                agents: Some(counts.remove(&group).unwrap_or_default()),
                group,
                head_version: version,
                head_hash: hash,
                head_created_at_unix_ms: at,
            });
        }
        Ok(pb::ListGroupsResponse { groups: out })
    }

    /// `DeleteGroup` by `caller` (authorized for writes): the checks, the
    /// store's delete, then the hub forgets the head without waking any
    /// stream, so connected agents keep what they run.
    pub(crate) async fn delete_group_as(
        &self,
        caller: &Caller,
        request: pb::DeleteGroupRequest,
    ) -> Result<pb::DeleteGroupResponse, Status> {
        let group = request.group.as_str();
        check_group(group)?;
        check_message(&request.message)?;
        // Without --force, agents the other replicas serve count too: when
        // the store cannot list them, the delete is refused rather than
        // risk deleting under agents this replica cannot see.
        if !request.force
            && let Some(directory) = self.store.agent_directory()
            && let Err(e) = directory.others(Some(group)).await
        {
            return Err(Status::unavailable(format!(
                "cannot tell which agents of group {group:?} the other replicas serve ({e}); \
                 retry, or delete with --force"
            )));
        }
        let connected: Vec<pb::AgentStatus> = self
            .agent_statuses(Some(group), &|_| true, None)
            .await
            .into_iter()
            .filter(|a| a.connected)
            .collect();
        if !connected.is_empty() && !request.force {
            return Err(Status::failed_precondition(format!(
                "group {group:?} has {} connected agent{} ({}); they would keep the version they run \
                 and get nothing new: use --force to delete it anyway",
                connected.len(),
                if connected.len() == 1 { "" } else { "s" },
                connected
                    .iter()
                    .take(3)
                    .map(|a| a.node_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
                    + if connected.len() > 3 { ", …" } else { "" }
            )));
        }
        let ended = if request.force {
            self.rollouts
                .ended_by_delete(group, &caller.identity)
                .await?
        } else {
            if let Some(known) = self.rollouts.running_known(group) {
                return Err(Status::failed_precondition(format!(
                    "group {group:?} has rollout {} in progress; abort it (vanectl rollout abort) \
                     or delete with --force, which ends it",
                    known.rollout.id
                )));
            }
            None
        };
        let (ended_id, rollout) = match ended {
            Some((id, put)) => (id, Some(put)),
            None => (String::new(), None),
        };
        let deleted = self
            .store
            .delete_group(DeleteGroup {
                group: group.to_owned(),
                expected_version: request.expected_version,
                rollout,
            })
            .await
            .map_err(store_status)?;
        let Deleted::Deleted {
            last_version,
            versions,
        } = deleted
        else {
            let known = self.known_groups().await?;
            return Err(self.unknown_group(caller, group, &known));
        };
        self.hub.forget(group, last_version);
        if !ended_id.is_empty() {
            self.rollouts.reread(group).await;
        }
        tracing::info!(
            group,
            last_version,
            versions,
            connected = connected.len(),
            identity = %caller.identity,
            peer = %caller.peer,
            "group deleted"
        );
        Ok(pb::DeleteGroupResponse {
            group: group.to_owned(),
            last_version,
            versions,
            connected_agents: u32::try_from(connected.len()).unwrap_or(u32::MAX),
            ended_rollout: ended_id,
        })
    }

    /// Records a delete in the audit log (a refusal goes through
    /// [`crate::audit::AuditLog::refused`]).
    pub(crate) async fn audit_delete(
        &self,
        caller: &Caller,
        message: &str,
        deleted: &pb::DeleteGroupResponse,
    ) {
        let Some(audit) = &self.audit else { return };
        let entry = AuditRecord {
            identity: caller.identity.clone(),
            peer: caller.peer.clone(),
            action: "delete".to_owned(),
            group: deleted.group.clone(),
            version: deleted.last_version,
            message: message.to_owned(),
            result: "deleted".to_owned(),
            ..AuditRecord::default()
        };
        if let Err(e) = audit.record(entry).await {
            tracing::error!(error = %e, group = %deleted.group, "audit entry of a delete not written");
        }
    }

    /// `WatchGroup`: the head now, then every head the hub publishes,
    /// until the caller goes or the server stops. Latest-wins like every
    /// stream of the hub: nothing queues here, a reader that falls behind
    /// skips to the newest version (and reads the skipped ones with
    /// `History`).
    pub(crate) async fn watch_group_as(
        &self,
        caller: &Caller,
        group: String,
    ) -> Result<VersionStream, Status> {
        check_group(&group)?;
        let mut heads = self.hub.subscribe(&group);
        let first = heads.borrow_and_update().clone();
        if first.is_none()
            && self
                .store
                .history(&group, 1)
                .await
                .map_err(store_status)?
                .is_empty()
        {
            let known = self.known_groups().await?;
            return Err(self.unknown_group(caller, &group, &known));
        }
        let follower = Follower {
            heads,
            first,
            stop: self.stop.clone(),
            store: Arc::clone(&self.store),
            group,
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(follower, Follower::next)))
    }
}

/// Where a `WatchGroup` stream is.
struct Follower {
    heads: tokio::sync::watch::Receiver<crate::hub::Head>,
    /// The head when the stream started, sent first.
    first: crate::hub::Head,
    stop: tokio_util::sync::CancellationToken,
    store: Arc<dyn vane_store::Store>,
    group: String,
    /// Set once the stream said the server stops: the next poll ends it.
    done: bool,
}

impl Follower {
    async fn next(mut self) -> Option<(Result<pb::WatchGroupResponse, Status>, Self)> {
        if self.done {
            return None;
        }
        let published = match self.first.take() {
            Some(first) => first,
            None => loop {
                tokio::select! {
                    () = self.stop.cancelled() => {
                        self.done = true;
                        return Some((Err(Status::unavailable("the server is shutting down")), self));
                    }
                    changed = self.heads.changed() => {
                        // The hub is gone: only at shutdown.
                        changed.ok()?;
                        // A deleted group's head is forgotten without a
                        // wake-up; a `None` here is nothing to send.
                        if let Some(head) = self.heads.borrow_and_update().clone() {
                            break head;
                        }
                    }
                }
            },
        };
        let info = version_info_of(&published, self.store.as_ref()).await;
        let response = pb::WatchGroupResponse {
            group: self.group.clone(),
            version: Some(info),
        };
        Some((Ok(response), self))
    }
}

/// The version's metadata: message and author are read from the store
/// (the hub keeps only what streams send); a store that cannot say leaves
/// them empty rather than holding the stream.
async fn version_info_of(published: &Published, store: &dyn vane_store::Store) -> pb::VersionInfo {
    let meta = store
        .get(&published.group, Some(published.version))
        .await
        .ok()
        .flatten()
        .map(|r| r.meta());
    match meta {
        Some(meta) => crate::admin::convert::version_info(&meta),
        None => pb::VersionInfo {
            version: published.version,
            hash: published.hash.clone(),
            created_at_unix_ms: published.created_at_unix_ms,
            size_bytes: published.snapshot.len() as u64,
            ..pb::VersionInfo::default()
        },
    }
}

/// The name among `names` nearest to `wanted` by edit distance (ties: the
/// first in sorted order); `None` when there is none.
pub(crate) fn nearest<'a>(wanted: &str, names: &[&'a str]) -> Option<&'a str> {
    let mut sorted: Vec<&str> = names.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
        .into_iter()
        .filter(|n| *n != wanted)
        .min_by_key(|n| edit_distance(wanted, n))
}

/// Levenshtein distance over chars.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Parses a `StatusRequest.selector`; empty: none.
pub(crate) fn parse_selector(text: &str) -> Result<Option<Selector>, Status> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    Selector::parse(text)
        .map(Some)
        .map_err(|e| Status::invalid_argument(format!("selector: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("edge", "edge"), 0);
        assert_eq!(edit_distance("egde", "edge"), 2);
        assert_eq!(edit_distance("edg", "edge"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn nearest_picks_the_closest_name() {
        assert_eq!(nearest("egde", &["core", "edge", "payments"]), Some("edge"));
        assert_eq!(nearest("cor", &["edge", "core"]), Some("core"));
        assert_eq!(nearest("x", &[]), None);
        assert_eq!(nearest("edge", &["edge"]), None);
    }

    #[test]
    fn selectors_parse_or_name_the_field() {
        assert!(parse_selector("").unwrap().is_none());
        assert!(parse_selector("env=prod").unwrap().is_some());
        let err = parse_selector("env in (").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("selector: "), "{}", err.message());
    }
}
