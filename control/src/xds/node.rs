//! Who an xDS client is: [`node_info`] reads `node.id`, the group from
//! `node.metadata["vane.group"]`, labels from the node's other string
//! metadata, and the client kind from `user_agent_name`; every refusal names
//! the field and fits on one line.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{Node, node::UserAgentVersionType};
use envoy_types::pb::google::protobuf::value::Kind;
use vane_xds::Client;

use crate::agents::NodeInfo;

/// The node metadata key naming the group.
pub const GROUP_METADATA_KEY: &str = "vane.group";

/// The longest node id, group, label key or value, and build string.
const MAX_FIELD_LEN: usize = 256;
/// The most labels taken from a node's metadata.
const MAX_LABELS: usize = 64;

/// Why a node cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NodeError(String);

/// The node of a stream's first request as the agent registry records it.
pub(crate) fn node_info(node: Option<&Node>) -> Result<NodeInfo, NodeError> {
    let err = |m: String| Err(NodeError(m));
    let Some(node) = node else {
        return err("node: the first request has no node".into());
    };
    if node.id.is_empty() {
        return err("node.id: is empty; every xDS client needs a node id".into());
    }
    if node.id.len() > MAX_FIELD_LEN {
        return err(format!(
            "node.id: is {} bytes long, over the limit of {MAX_FIELD_LEN}",
            node.id.len()
        ));
    }
    let fields = node.metadata.as_ref().map(|m| &m.fields);
    let group = match fields
        .and_then(|f| f.get(GROUP_METADATA_KEY))
        .and_then(|v| v.kind.as_ref())
    {
        Some(Kind::StringValue(g)) => g.clone(),
        Some(_) => {
            return err(format!(
                "node.metadata[\"{GROUP_METADATA_KEY}\"]: must be a string naming the node's Vane group"
            ));
        }
        None => {
            return err(format!(
                "node.metadata[\"{GROUP_METADATA_KEY}\"]: missing; set it to the node's Vane group"
            ));
        }
    };
    if let Err(e) = vane_model::names::check_group(&group) {
        return err(format!("node.metadata[\"{GROUP_METADATA_KEY}\"]: {e}"));
    }
    let mut labels = BTreeMap::new();
    for (key, value) in fields.into_iter().flatten() {
        if key == GROUP_METADATA_KEY {
            continue;
        }
        let Some(Kind::StringValue(value)) = &value.kind else {
            continue;
        };
        if key.len() > MAX_FIELD_LEN || value.len() > MAX_FIELD_LEN {
            return err(format!(
                "node.metadata[{key:?}]: key or value over {MAX_FIELD_LEN} bytes"
            ));
        }
        labels.insert(key.clone(), value.clone());
    }
    if labels.len() > MAX_LABELS {
        return err(format!(
            "node.metadata: {} string entries, over the limit of {MAX_LABELS}",
            labels.len()
        ));
    }
    let version = match &node.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentVersion(v)) => v.clone(),
        Some(UserAgentVersionType::UserAgentBuildVersion(b)) => b
            .version
            .as_ref()
            .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch))
            .unwrap_or_default(),
        None => String::new(),
    };
    let mut agent_build = if version.is_empty() {
        node.user_agent_name.clone()
    } else {
        format!("{}/{version}", node.user_agent_name)
    };
    crate::text::cut(&mut agent_build, MAX_FIELD_LEN);
    Ok(NodeInfo {
        id: node.id.clone(),
        group,
        labels,
        agent_build,
        client: Client::from_user_agent(&node.user_agent_name)
            .as_str()
            .to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::{Struct, Value};

    use super::*;

    fn node(id: &str, meta: &[(&str, Kind)], agent: &str) -> Node {
        Node {
            id: id.into(),
            user_agent_name: agent.into(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion("1.40.0".into())),
            metadata: Some(Struct {
                fields: meta
                    .iter()
                    .map(|(k, v)| {
                        (
                            (*k).to_owned(),
                            Value {
                                kind: Some(v.clone()),
                            },
                        )
                    })
                    .collect(),
            }),
            ..Node::default()
        }
    }

    #[test]
    fn an_envoy_node_names_its_group_and_labels() {
        let n = node(
            "envoy-1",
            &[
                ("vane.group", Kind::StringValue("edge".into())),
                ("zone", Kind::StringValue("a".into())),
                ("weight", Kind::NumberValue(3.0)),
            ],
            "envoy",
        );
        let info = node_info(Some(&n)).unwrap();
        assert_eq!(info.id, "envoy-1");
        assert_eq!(info.group, "edge");
        assert_eq!(info.client, "envoy");
        assert_eq!(info.agent_build, "envoy/1.40.0");
        assert_eq!(info.labels.len(), 1);
        assert_eq!(info.labels["zone"], "a");
    }

    #[test]
    fn a_missing_or_bad_group_is_refused_naming_the_key() {
        let missing = node("n", &[], "grpc-node-js");
        let e = node_info(Some(&missing)).unwrap_err().to_string();
        assert!(
            e.starts_with("node.metadata[\"vane.group\"]: missing"),
            "{e}"
        );
        let number = node("n", &[("vane.group", Kind::NumberValue(1.0))], "envoy");
        let e = node_info(Some(&number)).unwrap_err().to_string();
        assert!(e.contains("must be a string"), "{e}");
        let bad = node(
            "n",
            &[("vane.group", Kind::StringValue("no/slash".into()))],
            "envoy",
        );
        let e = node_info(Some(&bad)).unwrap_err().to_string();
        assert!(e.starts_with("node.metadata[\"vane.group\"]: "), "{e}");
        let e = node_info(None).unwrap_err().to_string();
        assert!(e.starts_with("node:"), "{e}");
        let no_id = node(
            "",
            &[("vane.group", Kind::StringValue("g".into()))],
            "envoy",
        );
        assert!(
            node_info(Some(&no_id))
                .unwrap_err()
                .to_string()
                .starts_with("node.id")
        );
    }

    #[test]
    fn grpc_clients_are_told_apart() {
        let n = node(
            "n",
            &[("vane.group", Kind::StringValue("g".into()))],
            "gRPC Python",
        );
        assert_eq!(node_info(Some(&n)).unwrap().client, "grpc");
        let n = node(
            "n",
            &[("vane.group", Kind::StringValue("g".into()))],
            "my-xds",
        );
        assert_eq!(node_info(Some(&n)).unwrap().client, "xds");
    }
}
