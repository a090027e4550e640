#!/usr/bin/env python3
"""Checks of the Helm chart, through Helm's Go SDK (helm-python-sdk).

    chart.py check [--update]   lint and render every value set of
                                deploy/helm/floe/ci/, compare with the golden
                                files (rewrite them with --update), validate
                                every manifest with kubernetes-validate
                                --strict for two Kubernetes versions, and
                                check that bad values fail with the schema's
                                or the chart's message
    chart.py pods VALUES        render VALUES and print, as JSON, what the
                                e2e test needs to run each workload as
                                processes: kind, name, replicas, args, env,
                                and the files its volumes mount

Exits non-zero with a message on stderr when a check fails.
"""

from __future__ import annotations

import argparse
import difflib
import json
import pathlib
import sys

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "floe"
GOLDEN = CHART / "golden"
RELEASE = "floe"
NAMESPACE = "streaming"
# The oldest Kubernetes the chart supports (pod-index label, 1.28) is past
# kubernetes-validate's schemas' support window on some releases; two
# versions apart that it has strict schemas for.
KUBE_VERSIONS = ["1.30.0", "1.34.0"]
# Kinds whose schemas are not Kubernetes' own (CRDs): ServiceMonitor is
# checked for shape only; a FloeCluster against the chart's own CRD.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "FloeCluster"}
CRDS = CHART / "crds"
# What the operator renders (operator/src/render.rs golden files): valid
# Kubernetes objects as well.
OPERATOR_GOLDEN = ROOT / "operator" / "tests" / "golden"

# Value sets that must fail, and a piece of the message each must give.
BAD = [
    ("brokers: -1", {"broker": {"replicas": -1}}, "at '/broker/replicas': minimum: got -1, want 1"),
    ("no storage targets", {"storage": {"targets": []}}, "at '/storage/targets'"),
    ("a storage URL of another scheme",
     {"storage": {"targets": [{"url": "gs://bucket"}]}}, "at '/storage/targets/0/url'"),
    ("no etcd", {"etcd": {"endpoints": []}},
     "set etcd.endpoints (an external etcd) or etcd.bundled.enabled=true"),
    ("W above R", {"storage": {"writeQuorum": 2}},
     "storage: writeQuorum (2) cannot exceed replicas (1)"),
    ("R above the targets", {"storage": {"replicas": 2, "writeQuorum": 1}},
     "storage: replicas (2) needs at least that many targets (1 given)"),
    ("a typo", {"brokers": {"replicas": 3}}, "'brokers'"),
    ("the operator with storage.env", {"operator": {"enabled": True}, "storage": {"env": {"A": "b"}}},
     "operator: storage.env is not carried to a FloeCluster"),
    ("the operator without an admin token", {"operator": {"enabled": True}, "admin": {"existingSecret": ""}},
     "operator: the operator needs the admin token"),
    ("the console without the admin API", {"admin": {"console": True, "existingSecret": ""}},
     "admin: the console needs the admin API: set admin.token or admin.existingSecret"),
]


def fail(msg: str) -> None:
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def value_sets() -> dict[str, dict]:
    return {
        p.stem: yaml.safe_load(p.read_text()) for p in sorted((CHART / "ci").glob("*.yaml"))
    }


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def render(values: dict) -> str:
    """The release's manifests, as `helm template` prints them."""
    chart = helm.Chart.load(CHART)
    chart.validate_schema(values)
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    out = []
    for path in sorted(manifests):
        text = manifests[path].strip()
        if not text or path.endswith("NOTES.txt"):
            continue
        if not any(line.strip() and not line.strip().startswith("#") for line in text.splitlines()):
            continue
        out.append(f"---\n# Source: {path}\n{text}\n")
    return "".join(out)


def notes(values: dict) -> str:
    chart = helm.Chart.load(CHART)
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(v for k, v in manifests.items() if k.endswith("NOTES.txt"))


def documents(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def validate(where: str, doc: dict, version: str) -> None:
    """kubernetes-validate --strict of one manifest, failing with where it is."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        fail(f"{where}: {doc['kind']}/{doc['metadata']['name']} for Kubernetes {version}: "
             f"{e.message} at {list(e.path)}")


def check(update: bool) -> None:
    sets = value_sets()
    if len(sets) < 3:
        fail(f"expected at least three value sets in {CHART / 'ci'}, found {sorted(sets)}")
    GOLDEN.mkdir(exist_ok=True)
    for name, values in sets.items():
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE,
                           kube_version="v" + KUBE_VERSIONS[0])
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        if problems or report.get("errors"):
            fail(f"lint of {name}: {problems or report.get('errors')}")
        text = render(values)
        golden = GOLDEN / f"{name}.yaml"
        if update:
            golden.write_text(text)
        elif not golden.exists():
            fail(f"no golden file {golden}; run deploy/test/chart.py check --update")
        elif golden.read_text() != text:
            diff = "".join(difflib.unified_diff(
                golden.read_text().splitlines(True), text.splitlines(True),
                str(golden), f"rendered {name}", n=2))
            fail(f"{name} renders differently from {golden}:\n{diff[:6000]}")
        docs = documents(text)
        kinds = sorted({d["kind"] for d in docs})
        for version in KUBE_VERSIONS:
            for d in docs:
                if d["kind"] == "FloeCluster":
                    check_floecluster(name, d)
                    continue
                if d["kind"] in CRD_KINDS:
                    if not d.get("apiVersion", "").startswith("monitoring.coreos.com/"):
                        fail(f"{name}: {d['kind']} of {d.get('apiVersion')}")
                    continue
                validate(name, d, version)
        print(f"ok {name}: lint, golden, {len(docs)} manifests valid for Kubernetes "
              f"{' and '.join(KUBE_VERSIONS)} ({', '.join(kinds)})")
    check_crds_and_operator_objects()
    base = sets["minimal-external-etcd"]
    for what, over, message in BAD:
        values = merge(base, over)
        try:
            render(values)
        except helm.HelmError as e:
            if message not in str(e):
                fail(f"{what}: failed, but without {message!r}: {e}")
            print(f"ok bad values ({what}) fail: {str(e).strip().splitlines()[-1][:200]}")
            continue
        fail(f"{what}: rendered without an error")
    text = notes(sets["multi-zone-irsa"])
    for want in ("floe-proxy.streaming.svc:9092", "floectl --controller http://127.0.0.1:9647 status"):
        if want not in text:
            fail(f"NOTES.txt lacks {want!r}:\n{text}")
    if "/console/" in text:
        fail(f"NOTES.txt names a console that is off:\n{text}")
    text = notes(sets["bundled-etcd"])
    if "http://127.0.0.1:9647/console/" not in text:
        fail(f"NOTES.txt lacks the console's address:\n{text}")
    print("ok NOTES.txt gives the bootstrap address, the first floectl command and the console")


def floecluster_schema() -> dict:
    crd = yaml.safe_load((CRDS / "floeclusters.floe.dev.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    return version["schema"]["openAPIV3Schema"]


def check_floecluster(name: str, doc: dict) -> None:
    """A FloeCluster against the CRD's structural schema (jsonschema, which
    kubernetes-validate brings; `nullable` and the x-kubernetes extensions
    are Kubernetes' own and ignored here)."""
    import jsonschema
    if doc.get("apiVersion") != "floe.dev/v1alpha1":
        fail(f"{name}: FloeCluster of {doc.get('apiVersion')}")
    errors = sorted(jsonschema.Draft4Validator(floecluster_schema()).iter_errors(doc), key=str)
    if errors:
        e = errors[0]
        fail(f"{name}: FloeCluster {doc['metadata']['name']}: {e.message} at {list(e.path)}")
    if doc["spec"]["storage"]["writeQuorum"] > doc["spec"]["storage"]["replicas"]:
        fail(f"{name}: FloeCluster with W > R")


def check_crds_and_operator_objects() -> None:
    crds = sorted(CRDS.glob("*.yaml"))
    if not crds:
        fail(f"no CRD in {CRDS}")
    goldens = sorted(OPERATOR_GOLDEN.glob("*.yaml"))
    if not goldens:
        fail(f"no operator golden files in {OPERATOR_GOLDEN}")
    for path in crds + goldens:
        docs = documents(path.read_text())
        for version in KUBE_VERSIONS:
            for d in docs:
                validate(str(path.relative_to(ROOT)), d, version)
        print(f"ok {path.relative_to(ROOT)}: {len(docs)} manifests valid for Kubernetes "
              f"{' and '.join(KUBE_VERSIONS)}")


def pods(values_file: str) -> None:
    values = yaml.safe_load(pathlib.Path(values_file).read_text())
    docs = documents(render(values))
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"]: d.get("stringData", {}) for d in docs if d["kind"] == "Secret"}
    services = [
        {"name": d["metadata"]["name"], "selector": d["spec"].get("selector", {}),
         "ports": d["spec"]["ports"]}
        for d in docs if d["kind"] == "Service"
    ]
    out = []
    for d in docs:
        if d["kind"] not in ("Deployment", "StatefulSet"):
            continue
        spec = d["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            files = {}
            for m in c.get("volumeMounts", []):
                v = volumes.get(m["name"], {})
                if "configMap" in v:
                    for k, text in config_maps[v["configMap"]["name"]].items():
                        files[f"{m['mountPath']}/{k}"] = text
                elif "secret" in v:
                    data = secrets.get(v["secret"]["secretName"], {})
                    for item in v["secret"].get("items", [{"key": k, "path": k} for k in data]):
                        files[f"{m['mountPath']}/{item['path']}"] = data.get(item["key"])
            out.append({
                "kind": d["kind"],
                "name": d["metadata"]["name"],
                "component": d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component"),
                "labels": d["spec"]["template"]["metadata"]["labels"],
                "replicas": d["spec"].get("replicas", 1),
                "image": c["image"],
                "command": c.get("command"),
                "args": c.get("args", []),
                "env": c.get("env", []),
                "envFrom": c.get("envFrom", []),
                "ports": c.get("ports", []),
                "files": files,
            })
    json.dump({"workloads": out, "services": services}, sys.stdout, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("--update", action="store_true")
    p = sub.add_parser("pods")
    p.add_argument("values")
    args = ap.parse_args()
    if args.cmd == "check":
        check(args.update)
    else:
        pods(args.values)


if __name__ == "__main__":
    main()
