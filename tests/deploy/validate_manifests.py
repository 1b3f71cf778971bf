"""Offline validation of the Kubernetes manifests under a directory, for
tests/it/deploy.rs: every document against the Kubernetes JSON schemas
that the pinned `kubernetes-validate` package bundles (strict: an unknown
field is an error), ServiceMonitors against the Prometheus Operator's CRD
schema vendored beside this script, and every kustomization's resources.

Usage: validate_manifests.py --crd CRD.yaml --versions 1.29,1.37 DIR

Prints one JSON object on stdout: `errors` (each "file: kind/name: path:
message"), `resources` (how many documents were validated), `containers`
(command, args, env and probes of every container, so the caller can run the
binaries with the same flags) and `config_maps` (their data). Exits 0
whatever it found (the caller judges), 2 when it cannot run.
"""

import argparse
import copy
import json
import os
import sys

import jsonschema
import kubernetes_validate
import yaml

# Kinds checked by a vendored CRD schema rather than the bundled ones.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
KUSTOMIZATION = ("kustomize.config.k8s.io/v1beta1", "Kustomization")


def closed(schema):
    """The CRD schema with unknown fields refused, as the API server's
    strict field validation does: every object schema that lists its
    properties (and does not keep unknown fields) gets
    `additionalProperties: false`."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def crd_schema(path):
    with open(path) as f:
        crd = yaml.safe_load(f)
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    for version in crd["spec"]["versions"]:
        if version["name"] == "v1":
            schema = closed(version["schema"]["openAPIV3Schema"])
            return (f"{group}/v1", kind), schema
    raise SystemExit(f"{path}: no v1 version in the CRD")


def where(error):
    return ".".join(str(p) for p in error.absolute_path) or "(document)"


def check_kustomization(path, doc, errors):
    base = os.path.dirname(path)
    for entry in doc.get("resources", []):
        target = os.path.normpath(os.path.join(base, entry))
        if os.path.isdir(target):
            if not os.path.isfile(os.path.join(target, "kustomization.yaml")):
                errors.append(f"{path}: resources: {entry} has no kustomization.yaml")
        elif not os.path.isfile(target):
            errors.append(f"{path}: resources: {entry} does not exist")
    return {
        os.path.normpath(os.path.join(base, e))
        for e in doc.get("resources", [])
    }


def containers_of(doc):
    spec = doc.get("spec", {})
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        spec = spec.get("template", {}).get("spec", {})
    elif doc["kind"] != "Pod":
        return []
    return spec.get("initContainers", []) + spec.get("containers", [])


def env_of(container):
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            # Filled in by the kubelet (downward API, Secrets): a stand-in.
            env[var["name"]] = f"example-{var['name'].lower().replace('_', '-')}"
    return env


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--crd", action="append", default=[])
    parser.add_argument("--versions", required=True)
    parser.add_argument("dir")
    args = parser.parse_args()
    versions = args.versions.split(",")
    crds = dict(crd_schema(p) for p in args.crd)

    errors, containers, config_maps = [], [], []
    listed, files = set(), []
    count = 0
    for root, _, names in os.walk(args.dir):
        for name in sorted(names):
            if name.endswith((".yaml", ".yml")):
                files.append(os.path.normpath(os.path.join(root, name)))
    for path in sorted(files):
        shown = os.path.relpath(path, args.dir)
        try:
            with open(path) as f:
                docs = [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            errors.append(f"{shown}: not YAML: {e}")
            continue
        for doc in docs:
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                errors.append(f"{shown}: a document without apiVersion and kind")
                continue
            key = (doc["apiVersion"], doc["kind"])
            name = f"{doc['kind']}/{doc.get('metadata', {}).get('name', '?')}"
            count += 1
            if key == KUSTOMIZATION:
                listed |= check_kustomization(path, doc, errors)
                continue
            if key in crds:
                validator = jsonschema.Draft7Validator(crds[key])
                for e in sorted(validator.iter_errors(doc), key=str):
                    errors.append(f"{shown}: {name}: {where(e)}: {e.message}")
                if not doc.get("metadata", {}).get("name"):
                    errors.append(f"{shown}: {name}: metadata.name: missing")
            else:
                for version in versions:
                    try:
                        kubernetes_validate.validate(doc, version, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        errors.append(
                            f"{shown}: {name}: {where(e)}: {e.message} (Kubernetes {version})"
                        )
                    except kubernetes_validate.SchemaNotFoundError as e:
                        errors.append(f"{shown}: {name}: {e.message}")
            if doc["kind"] == "ConfigMap":
                config_maps.append({"name": name, "data": doc.get("data", {})})
            for c in containers_of(doc):
                containers.append(
                    {
                        "file": shown,
                        "resource": name,
                        "container": c.get("name", "?"),
                        "command": c.get("command", []),
                        "args": c.get("args", []),
                        "env": env_of(c),
                        "probes": {
                            k: c[k]
                            for k in ("startupProbe", "readinessProbe", "livenessProbe")
                            if k in c
                        },
                    }
                )
    for path in sorted(files):
        if os.path.basename(path) != "kustomization.yaml" and path not in listed:
            shown = os.path.relpath(path, args.dir)
            errors.append(f"{shown}: listed in no kustomization.yaml")
    json.dump(
        {
            "errors": errors,
            "resources": count,
            "containers": containers,
            "config_maps": config_maps,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
