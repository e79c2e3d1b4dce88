"""deploy/kubernetes/ and the Dockerfile, checked offline (no cluster, no container engine, no network).

- Every core manifest against Kubernetes' own JSON schemas, strictly (an unknown field is an error), for the
  oldest Kubernetes we target and the newest that the kubernetes-validate package ships.
- The RayService against schemas/rayservice-ray.io-v1.json (KubeRay v1.6.2's fields), whose pod templates are
  Kubernetes' PodTemplateSpec from the same schemas; its serveConfigV2 against Ray Serve 2.60's own models.
- What no schema sees: selectors that select, ports that exist, Secrets and ConfigMaps (and their keys) that are
  defined, $(VAR)s that are set, the front end's --ray naming the RayService's head Service, NetworkPolicies that
  keep Ray's ports to the front end and the Ray pods, the kustomization listing every manifest, placeholder-only
  example Secrets, and the commands the pods run parsing with our command line.
- The Dockerfile's structure: pinned base, non-root user, only the package copied, the extras that exist.

Each checker returns a list of problems, so the tests at the end can break a copy of the folder on purpose and see
the problem named.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
RAYSERVICE_SCHEMA = DEPLOY / "schemas" / "rayservice-ray.io-v1.json"
# The oldest Kubernetes the manifests are written for, and the newest kubernetes-validate ships (pinned in
# pyproject.toml's test extra, so this list does not move under us).
KUBERNETES = ("1.30", ".".join(kubernetes_validate.latest_version().split(".")[:2]))
TOMAAT_COMPONENTS = {"frontend", "registry", "ray"}  # the pods that run our image
RAY_DASHBOARD, RAY_CLIENT = 8265, 10001
VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


# ---- loading -----------------------------------------------------------------------------------------------------


@dataclass
class Manifest:
    file: str
    doc: dict

    @property
    def kind(self) -> str:
        return self.doc.get("kind", "?")

    @property
    def name(self) -> str:
        return self.doc.get("metadata", {}).get("name", "?")

    def __str__(self) -> str:
        return f"{self.file}: {self.kind}/{self.name}"


def load(folder: Path) -> list[Manifest]:
    found = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append(Manifest(path.name, doc))
    return found


@dataclass
class Pods:
    """One pod template: of a Deployment, a StatefulSet, or a RayService's head or worker group."""

    owner: str
    template: dict
    ray_start_params: dict | None = None
    claims: frozenset[str] = frozenset()  # a StatefulSet's volumeClaimTemplates

    @property
    def labels(self) -> dict:
        return self.template.get("metadata", {}).get("labels", {})

    @property
    def spec(self) -> dict:
        return self.template.get("spec", {})

    @property
    def containers(self) -> list[dict]:
        return self.spec.get("containers", [])


def pod_templates(manifests: list[Manifest]) -> list[Pods]:
    found = []
    for m in manifests:
        if m.kind in ("Deployment", "StatefulSet"):
            claims = frozenset(claim["metadata"]["name"] for claim in m.doc["spec"].get("volumeClaimTemplates", []))
            found.append(Pods(str(m), m.doc["spec"]["template"], claims=claims))
        elif m.kind == "RayService":
            cluster = m.doc["spec"]["rayClusterConfig"]
            head = cluster["headGroupSpec"]
            found.append(Pods(f"{m} head", head["template"], head.get("rayStartParams", {})))
            for group in cluster.get("workerGroupSpecs", []):
                found.append(Pods(f"{m} worker group {group['groupName']}", group["template"], group["rayStartParams"]))
    return found


def selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels / matchExpressions with In, or a Service's plain map) against labels."""
    if "matchLabels" in selector or "matchExpressions" in selector:
        plain = selector.get("matchLabels", {})
        for expression in selector.get("matchExpressions", []):
            if expression["operator"] != "In" or labels.get(expression["key"]) not in expression["values"]:
                return False
    else:
        plain = selector
    return all(labels.get(key) == value for key, value in plain.items())


def rayservice(manifests: list[Manifest]) -> dict:
    (found,) = [m.doc for m in manifests if m.kind == "RayService"]
    return found


def serve_config(manifests: list[Manifest]) -> dict:
    return yaml.safe_load(rayservice(manifests)["spec"]["serveConfigV2"])


# ---- schemas -------------------------------------------------------------------------------------------------------


def schema_problems(manifests: list[Manifest], version: str) -> list[str]:
    problems = []
    for m in manifests:
        if m.kind == "RayService":
            errors = rayservice_validator(version).iter_errors(m.doc)
            problems += [f"{m}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
            continue
        try:
            kubernetes_validate.validate(m.doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{m}: {'.'.join(map(str, error.path))}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{m}: {error.message}")
    return problems


def rayservice_validator(version: str) -> jsonschema.Draft202012Validator:
    """Our RayService schema, its Kubernetes types resolved in kubernetes-validate's strict definitions."""
    schemas = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    (folder,) = [f for f in schemas.iterdir() if f.name == f"v{version}.0-local-strict"]
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    schema = json.loads(RAYSERVICE_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def serve_config_problems(manifests: list[Manifest]) -> list[str]:
    """serveConfigV2 through Ray Serve's models (which accept unknown keys, so those are looked for here)."""
    with warnings.catch_warnings():  # Ray 2.60's own models warn of pydantic deprecations as they are imported
        warnings.simplefilter("ignore", DeprecationWarning)
        from ray.serve.config import AutoscalingConfig
        from ray.serve.schema import (
            DeploymentSchema,
            HTTPOptionsSchema,
            RayActorOptionsSchema,
            ServeApplicationSchema,
            ServeDeploySchema,
        )

    config = serve_config(manifests)
    problems = []

    def known(where: str, given: dict, model) -> None:
        fields = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
        problems.extend(f"serveConfigV2 {where}: unknown key {key!r}" for key in set(given) - fields)

    try:
        ServeDeploySchema.model_validate(config)
    except ValueError as error:  # pydantic's ValidationError
        return [f"serveConfigV2: {error}"]
    known("", config, ServeDeploySchema)
    known("http_options", config.get("http_options", {}), HTTPOptionsSchema)
    for application in config["applications"]:
        known(f"application {application['name']}", application, ServeApplicationSchema)
        for deployment in application.get("deployments", []):
            where = f"deployment {deployment['name']}"
            known(where, deployment, DeploymentSchema)
            known(f"{where} ray_actor_options", deployment.get("ray_actor_options", {}), RayActorOptionsSchema)
            if "autoscaling_config" in deployment:
                known(f"{where} autoscaling_config", deployment["autoscaling_config"], AutoscalingConfig)
                AutoscalingConfig(**deployment["autoscaling_config"])
    return problems


# ---- what schemas cannot see ----------------------------------------------------------------------------------------


def reference_problems(manifests: list[Manifest]) -> list[str]:
    problems: list[str] = []
    defined = {(m.kind, m.name): m.doc for m in manifests}
    if len(defined) != len(manifests):
        problems.append("two objects of the same kind share a name")
    pods = pod_templates(manifests)
    workloads = [p for p in pods if "RayService" not in p.owner]

    def keys_of(kind: str, name: str) -> set[str] | None:
        doc = defined.get((kind, name))
        return None if doc is None else set(doc.get("data", {})) | set(doc.get("stringData", {}))

    def needs(where: str, kind: str, name: str, key: str | None = None) -> None:
        keys = keys_of(kind, name)
        if keys is None:
            problems.append(f"{where}: names {kind} {name!r}, which no manifest here defines")
        elif key is not None and key not in keys:
            problems.append(f"{where}: reads key {key!r} of {kind} {name!r}, which has {sorted(keys)}")

    # Workloads select their own pods; Services select some workload's pods, on ports those pods have.
    for m in manifests:
        if m.kind in ("Deployment", "StatefulSet"):
            if not selects(m.doc["spec"]["selector"], m.doc["spec"]["template"]["metadata"].get("labels", {})):
                problems.append(f"{m}: its selector does not select its own pod template")
            if m.kind == "StatefulSet" and ("Service", m.doc["spec"]["serviceName"]) not in defined:
                problems.append(f"{m}: serviceName {m.doc['spec']['serviceName']!r} names no Service here")
        if m.kind == "Service":
            chosen = [p for p in workloads if selects(m.doc["spec"].get("selector", {}), p.labels)]
            if not chosen:
                problems.append(f"{m}: its selector {m.doc['spec'].get('selector')} matches no pod template here")
            for port in m.doc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                for p in chosen:
                    offered = [(c.get("name"), c["containerPort"]) for k in p.containers for c in k.get("ports", [])]
                    if not any(target in pair for pair in offered):
                        problems.append(f"{m}: targetPort {target!r} is no container port of {p.owner} {offered}")

    # Secrets, ConfigMaps and their keys; $(VAR)s that are set.
    for p in pods:
        for volume in p.spec.get("volumes", []):
            where = f"{p.owner} volume {volume['name']}"
            sources = volume.get("projected", {}).get("sources", [])
            if "secret" in volume:
                sources = [{"secret": {**volume["secret"], "name": volume["secret"]["secretName"]}}]
            if "configMap" in volume:
                sources = [{"configMap": volume["configMap"]}]
            for source in sources:
                for kind, field in (("Secret", "secret"), ("ConfigMap", "configMap")):
                    if field in source:
                        needs(where, kind, source[field]["name"])
                        for item in source[field].get("items", []):
                            needs(where, kind, source[field]["name"], item["key"])
        for c in p.containers:
            where = f"{p.owner} container {c['name']}"
            env = [e["name"] for e in c.get("env", [])]
            for i, e in enumerate(c.get("env", [])):
                ref = e.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    needs(where, "Secret", ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
                if "configMapKeyRef" in ref:
                    needs(where, "ConfigMap", ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"])
                for name in VAR.findall(e.get("value", "")):
                    if name not in env[:i]:
                        problems.append(f"{where}: env {e['name']} uses $({name}), not set before it")
            for source in c.get("envFrom", []):
                for kind, field in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                    if field in source:
                        needs(where, kind, source[field]["name"])
            for text in c.get("command", []) + c.get("args", []) + list((p.ray_start_params or {}).values()):
                for name in VAR.findall(text):
                    if name not in env:
                        problems.append(f"{where}: uses $({name}), which its env does not set")
            mounts = {v["name"] for v in p.spec.get("volumes", [])} | p.claims
            for mount in c.get("volumeMounts", []):
                if mount["name"] not in mounts:
                    problems.append(f"{where}: mounts volume {mount['name']!r}, which the pod does not have")

    # The RayService: its auth Secret, its head Service as the front end's --ray, its replicas and its GPUs.
    ray = rayservice(manifests)
    cluster = ray["spec"]["rayClusterConfig"]
    auth = cluster.get("authOptions", {})
    if auth.get("mode") != "token" or not auth.get("secretName"):
        problems.append("RayService: Ray's token authentication is not on with a Secret (authOptions)")
    else:
        needs("RayService authOptions", "Secret", auth["secretName"], "auth_token")
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    client = [port["containerPort"] for port in head.get("ports", []) if port.get("name") == "client"]
    wanted = f"ray://{ray['metadata']['name']}-head-svc:{client[0] if client else RAY_CLIENT}"
    addresses = [
        c["args"][c["args"].index("--ray") + 1] for p in pods for c in p.containers if "--ray" in c.get("args", [])
    ]
    if not addresses:
        problems.append("no container runs `tomaat serve --ray`")
    problems += [
        f"the front end's --ray {a} is not the RayService's head Service, {wanted}" for a in addresses if a != wanted
    ]
    for group in cluster.get("workerGroupSpecs", []):
        if not group.get("minReplicas", 0) <= group.get("replicas", 0) <= group.get("maxReplicas", 0):
            problems.append(f"RayService worker group {group['groupName']}: not minReplicas <= replicas <= maxReplicas")
    gpus = sum(
        group["maxReplicas"]
        * int(group["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
        for group in cluster.get("workerGroupSpecs", [])
    )
    for application in serve_config(manifests)["applications"]:
        for deployment in application.get("deployments", []):
            most = deployment.get("autoscaling_config", {}).get("max_replicas", deployment.get("num_replicas", 1))
            need = most * deployment.get("ray_actor_options", {}).get("num_gpus", 0)
            if float(application.get("args", {}).get("gpus", 0)) != deployment.get("ray_actor_options", {}).get(
                "num_gpus", 0
            ):
                problems.append(f"Serve application {application['name']}: args.gpus is not its replicas' num_gpus")
            if need > gpus:
                problems.append(
                    f"Serve deployment {deployment['name']}: up to {need} GPUs, the worker groups have {gpus}"
                )
    pinned = re.search(r'"ray\[serve\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    if pinned and cluster.get("rayVersion") != pinned.group(1):
        problems.append(f"RayService rayVersion {cluster.get('rayVersion')} is not the ray extra's {pinned.group(1)}")

    # Every pod runs with limits, as non-root, without privilege escalation; our image everywhere, one version.
    images = set()
    for p in pods:
        if p.spec.get("securityContext", {}).get("runAsNonRoot") is not True:
            problems.append(f"{p.owner}: the pod does not require runAsNonRoot")
        for c in p.containers:
            where = f"{p.owner} container {c['name']}"
            for bound in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(c.get("resources", {}).get(bound, {}))
                if missing:
                    problems.append(f"{where}: no {bound} for {sorted(missing)}")
            if c.get("securityContext", {}).get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            image = c["image"]
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                problems.append(f"{where}: image {image} is not pinned to a tag")
            if p.labels.get("app.kubernetes.io/component") in TOMAAT_COMPONENTS:
                images.add(image)
    if len(images) != 1:
        problems.append(
            f"the front end, registry and Ray pods must run one image (Ray Client needs it): {sorted(images)}"
        )
    problems += network_problems(manifests, pods)
    return problems


def network_problems(manifests: list[Manifest], pods: list[Pods]) -> list[str]:
    """Every pod is under a NetworkPolicy; Ray's ports open only to Ray pods, the front end (Ray Client) and the operator."""
    problems = []
    policies = [m for m in manifests if m.kind == "NetworkPolicy"]
    role = {id(p): p.labels.get("app.kubernetes.io/component") for p in pods}
    for policy in policies:
        if not any(selects(policy.doc["spec"]["podSelector"], p.labels) for p in pods):
            problems.append(f"{policy}: its podSelector selects no pods here")
    for p in pods:
        covering = [n for n in policies if selects(n.doc["spec"]["podSelector"], p.labels)]
        if not covering:
            problems.append(f"{p.owner}: no NetworkPolicy selects these pods")
        if role[id(p)] != "ray":
            continue
        for policy in covering:
            for rule in policy.doc["spec"].get("ingress", []):
                ports = sorted(port.get("port") for port in rule.get("ports", []))
                if not rule.get("from"):
                    problems.append(f"{policy}: Ray pods open to every pod and address on ports {ports or 'all'}")
                for peer in rule.get("from", []):
                    peers = [q for q in pods if "podSelector" in peer and selects(peer["podSelector"], q.labels)]
                    if "ipBlock" in peer or ("namespaceSelector" in peer and "podSelector" not in peer):
                        problems.append(f"{policy}: Ray pods open to {peer} on ports {ports or 'all'}")
                    elif "namespaceSelector" in peer:  # the KubeRay operator, in its own namespace
                        if ports != [RAY_DASHBOARD]:
                            problems.append(f"{policy}: another namespace's pods reach Ray on {ports or 'all'} ports")
                    elif not peers:
                        problems.append(f"{policy}: a rule's podSelector {peer['podSelector']} matches no pods here")
                    elif any(role[id(q)] not in ("ray", "frontend") for q in peers):
                        problems.append(f"{policy}: pods other than the front end and Ray's reach Ray: {peer}")
                    elif any(role[id(q)] == "frontend" for q in peers) and ports != [RAY_CLIENT]:
                        problems.append(
                            f"{policy}: the front end reaches Ray on {ports or 'all'} ports, not only Ray Client"
                        )
    return problems


def kustomization_problems(folder: Path, manifests: list[Manifest]) -> list[str]:
    problems = []
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    listed = kustomization.get("resources", [])
    wanted = sorted({m.file for m in manifests if not m.file.endswith(".example.yaml")})
    if sorted(listed) != wanted:
        problems.append(f"kustomization.yaml lists {sorted(listed)}, the folder has {wanted}")
    applied = [m for m in manifests if m.file in listed]
    problems += [f"{m}: a Secret would be applied by `kubectl apply -k`" for m in applied if m.kind == "Secret"]
    ours = {c["image"].rsplit(":", 1)[0] for p in pod_templates(applied) for c in p.containers}
    named = {entry["name"] for entry in kustomization.get("images", [])}
    if not named or not named <= ours:
        problems.append(f"kustomization.yaml's images {sorted(named)} name none of the images {sorted(ours)}")
    return problems


def secret_problems(manifests: list[Manifest]) -> list[str]:
    problems = []
    for m in manifests:
        if m.kind == "Secret":
            if not m.file.endswith(".example.yaml"):
                problems.append(f"{m}: Secrets belong in *.example.yaml only, as placeholders")
            for key, value in {**m.doc.get("stringData", {}), **m.doc.get("data", {})}.items():
                if "REPLACE-ME" not in str(value):
                    problems.append(f"{m}: {key} is not an obvious placeholder (REPLACE-ME...)")
    return problems


# ---- the tests -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[Manifest]:
    return load(DEPLOY)


@pytest.mark.parametrize("version", KUBERNETES)
def test_every_manifest_validates_against_its_schema(manifests, version):
    assert {m.kind for m in manifests} >= {
        "RayService",
        "Deployment",
        "StatefulSet",
        "Service",
        "Secret",
        "NetworkPolicy",
    }
    assert schema_problems(manifests, version) == []


def test_serve_config_is_what_ray_serve_accepts(manifests):
    assert serve_config_problems(manifests) == []
    (application,) = serve_config(manifests)["applications"]
    assert application["route_prefix"] is None  # the front end is the only way in
    assert application["import_path"] == "tomaat.server.ray_runner:build_app"


def test_references_that_schemas_cannot_check(manifests):
    assert reference_problems(manifests) == []
    assert kustomization_problems(DEPLOY, manifests) == []
    assert secret_problems(manifests) == []


def test_the_pods_commands_parse_with_our_command_line(manifests, tmp_path):
    """The front end's and the registry's args, as `tomaat serve` and `tomaat-registry serve` parse them."""
    from tomaat.cli import main as tomaat_main
    from tomaat.registry.cli import main as registry_main

    def parse(group, args: list[str]) -> dict:
        files = {}
        for arg in args:
            if arg.startswith(("/secrets/", "/app/")):  # the mounted files, for click's File and Path(exists=True)
                files[arg] = tmp_path / arg.strip("/").replace("/", "_")
                files[arg].write_text("placeholder\n")
        args = [str(files.get(arg, arg)) for arg in args]
        args = [VAR.sub("value", arg) for arg in args]
        command = group.commands[args[0]]
        return command.make_context(args[0], args[1:]).params

    commands = {c["name"]: c for p in pod_templates(manifests) for c in p.containers}
    frontend = parse(tomaat_main, commands["tomaat"]["args"])
    assert frontend["ray_address"].startswith("ray://") and frontend["registry"] == "https://tomaat-registry:8001"
    assert frontend["port"] == 9000 and frontend["cert"] and frontend["api_key_file"]
    assert commands["registry"]["command"] == ["tomaat-registry"]
    registry = parse(registry_main, commands["registry"]["args"])
    assert registry["port"] == 8001 and registry["cert"] and registry["key"]


def test_the_app_in_the_configmap_loads(manifests, tmp_path):
    from tomaat import TomaatApp
    from tomaat.server.loader import load as load_app

    (app,) = [m.doc for m in manifests if m.kind == "ConfigMap" and m.name == "tomaat-app"]
    path = tmp_path / "my_app.py"
    path.write_text(app["data"]["my_app.py"])
    assert isinstance(load_app(str(path)), TomaatApp)


def test_the_serve_application_builder_matches_the_contract(manifests, tmp_path):
    """rayservice.yaml's import_path and args, against tomaat/server/ray_runner.py (the contract of issue 16)."""
    import importlib

    (application,) = serve_config(manifests)["applications"]
    module, _, name = application["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), name, None)
    assert callable(builder), f"{application['import_path']}: rayservice.yaml's Serve application builder is missing"
    (app,) = [m.doc for m in manifests if m.kind == "ConfigMap" and m.name == "tomaat-app"]
    path = tmp_path / "my_app.py"
    path.write_text(app["data"]["my_app.py"])
    from ray.serve import Application

    built = builder({**application["args"], "app": str(path)})
    assert isinstance(built, Application)
    # serveConfigV2's deployment options apply to the deployment of that name (ray is pinned: a private attribute)
    assert [d["name"] for d in application["deployments"]] == [built._bound_deployment.name] == ["steps"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its kustomize) is not installed")
def test_kustomize_renders_and_sets_every_image(tmp_path):
    """`kubectl kustomize` (offline) on a copy whose kustomization names another tag: it must reach every pod,
    the RayService's head and workers included, so the kustomization is the one place to set the image."""
    copy = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, copy)
    text = (copy / "kustomization.yaml").read_text()
    (copy / "kustomization.yaml").write_text(re.sub(r'newTag: "[^"]+"', 'newTag: "probe-tag"', text))
    done = subprocess.run(["kubectl", "kustomize", str(copy)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rendered = [Manifest("rendered", d) for d in yaml.safe_load_all(done.stdout) if d]
    assert {m.doc["metadata"].get("namespace") for m in rendered if m.kind != "Namespace"} == {"tomaat"}
    ours = [c["image"] for p in pod_templates(rendered) for c in p.containers if "tomaat" in c["image"]]
    assert len(ours) == 4 and set(ours) == {"registry.example.org/tomaat:probe-tag"}


# ---- the checkers fail when they should -----------------------------------------------------------------------------


def broken(tmp_path: Path, file: str, old: str, new: str) -> list[Manifest]:
    copy = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, copy)
    text = (copy / file).read_text()
    assert old in text, f"{old!r} is not in {file}"
    (copy / file).write_text(text.replace(old, new, 1))
    return load(copy)


@pytest.mark.parametrize(
    ("file", "old", "new", "named"),
    [
        (
            "frontend.yaml",
            "containerPort: 9000",
            "containerPort: 9000\n              protocols: TCP",
            "'protocols' was unexpected",
        ),
        ("postgres.yaml", "storage: 10Gi", "storage: [10Gi]", "storage: ['10Gi'] is not valid"),
        ("rayservice.yaml", "maxReplicas: 4", "maxReplica: 4", "'maxReplica' was unexpected"),
        ("rayservice.yaml", 'num-cpus: "0"', "num-cpus: 0", "0 is not of type 'string'"),
        ("rayservice.yaml", "type: NewCluster", "type: BlueGreen", "'BlueGreen' is not one of"),
        ("rayservice.yaml", "nvidia.com/gpu: 1  #", "nvidia.com/gpu: [1]  #", "workerGroupSpecs.0.template.spec"),
    ],
)
def test_a_wrong_field_is_caught(tmp_path, file, old, new, named):
    problems = schema_problems(broken(tmp_path, file, old, new), KUBERNETES[0])
    assert any(named in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("file", "old", "new", "named"),
    [
        ("rayservice.yaml", "max_ongoing_requests: 8", "max_ongoing_request: 8", "unknown key 'max_ongoing_request'"),
        ("rayservice.yaml", "target_ongoing_requests: 4", "target_ongoing_request: 4", "unknown key"),
        (
            "rayservice.yaml",
            "num_cpus: 1\n              num_gpus: 1",
            "num_cpus: 1\n              num_gpus: one",
            "num_gpus",
        ),
    ],
)
def test_a_wrong_serve_option_is_caught(tmp_path, file, old, new, named):
    problems = serve_config_problems(broken(tmp_path, file, old, new))
    assert any(named in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("file", "old", "new", "named"),
    [  # a selector that selects nothing (the Service's, which comes first in the file)
        ("registry.yaml", "component: registry\n  ports", "component: registy\n  ports", "matches no pod template"),
        ("frontend.yaml", "targetPort: https", "targetPort: http", "targetPort 'http' is no container port"),
        ("frontend.yaml", "name: tomaat-registry-api-key", "name: tomaat-api-key", "'tomaat-api-key', which no"),
        ("registry.yaml", "key: password", "key: passwd", "reads key 'passwd'"),
        ("frontend.yaml", "ray://tomaat-ray-head-svc:10001", "ray://tomaat-head-svc:10001", "not the RayService"),
        ("frontend.yaml", "- $(POD_IP)", "- $(MY_POD_IP)", "uses $(MY_POD_IP)"),
        ("rayservice.yaml", "secretName: tomaat-ray-auth", "secretName: ray-token", "'ray-token', which no"),
        ("rayservice.yaml", "max_replicas: 4", "max_replicas: 8", "up to 8 GPUs"),
        ("rayservice.yaml", "mode: token", "mode: disabled", "token authentication is not on"),
        ("rayservice.yaml", "gpus: 1  #", "gpus: 0  #", "args.gpus is not its replicas' num_gpus"),
        ("registry.yaml", "tomaat:0.2.0", "tomaat:0.1.9", "must run one image"),
        # Ray's ports opened wider than the front end and Ray pods
        ("networkpolicies.yaml", "port: 10001", "port: 6379", "not only Ray Client"),
        ("networkpolicies.yaml", "component: frontend\n      ports", "component: registry\n      ports", "other than"),
        ("networkpolicies.yaml", "port: 8265", "port: 6379", "another namespace's pods reach Ray"),
        (
            "networkpolicies.yaml",
            "          podSelector:\n            matchLabels:\n              app.kubernetes.io/name: kuberay-operator",
            "",
            "Ray pods open to",
        ),  # fmt: skip
    ],
)
def test_a_broken_reference_is_caught(tmp_path, file, old, new, named):
    problems = reference_problems(broken(tmp_path, file, old, new))
    assert any(named in problem for problem in problems), problems


def test_a_secret_that_is_real_or_applied_is_caught(tmp_path):
    manifests = broken(tmp_path, "secrets.example.yaml", "REPLACE-ME-with-openssl-rand-hex-32", "3f9a0c1d2e4b")
    assert any("auth_token is not an obvious placeholder" in p for p in secret_problems(manifests))
    copy = tmp_path / "kubernetes"
    kustomization = copy / "kustomization.yaml"
    kustomization.write_text(
        kustomization.read_text().replace("  - namespace.yaml", "  - namespace.yaml\n  - secrets.example.yaml")
    )
    problems = kustomization_problems(copy, manifests)
    assert any("a Secret would be applied" in p for p in problems), problems
    (copy / "extra.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\n")
    assert any("the folder has" in p for p in kustomization_problems(copy, load(copy)))


# ---- the Dockerfile -------------------------------------------------------------------------------------------------


def dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continued lines joined."""
    instructions, pending = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        instructions.append((word.upper(), " ".join(rest.split())))
        pending = ""
    return instructions


def ignored(path: str, rules: list[str]) -> bool:
    """Whether .dockerignore's rules (last match wins, `!` lets back in, a match on a folder covers what is in it)
    leave `path` out of the build context."""
    parts = path.split("/")
    state = False
    for rule in rules:
        negate, pattern = rule.startswith("!"), rule.lstrip("!").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[: i + 1])) for i in range(len(parts))):
            state = not negate
    return state


def dockerfile_problems(text: str, ignore: str) -> list[str]:
    problems = []
    steps = dockerfile(text)
    args = dict(re.match(r"([A-Z_]+)=?(.*)", value).groups() for word, value in steps if word == "ARG")
    stages = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    final = steps[stages[-1] :]
    for _, value in [s for s in steps if s[0] == "FROM"]:
        image = re.sub(r"\$\{(\w+)\}", lambda match: args.get(match.group(1), ""), value.split()[0])
        name, _, tag = image.partition(":")
        if not re.fullmatch(r"\d+\.\d+\.\d+[-\w.]*", tag.split("@")[0]):
            problems.append(f"FROM {image}: not pinned to a full version tag")
    users = [value for word, value in final if word == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"the final stage runs as {users[-1] if users else 'root'}: expected a non-root USER")
    elif [word for word, _ in final].index("USER") < max(i for i, (w, _) in enumerate(final) if w == "RUN"):
        problems.append("a RUN after USER: the image's last steps should not need root")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    rules = [line.strip() for line in ignore.splitlines() if line.strip() and not line.startswith("#")]
    for word, value in steps:
        if word == "COPY" and not value.startswith("--from"):
            for source in value.split()[:-1]:
                if source not in ("pyproject.toml", "README.md", "LICENSE", "tomaat"):
                    problems.append(f"COPY {source}: the image needs only the package's files")
                elif ignored(source, rules):
                    problems.append(f"COPY {source}: .dockerignore leaves it out of the build context")
        if word == "RUN" and "apt-get install" in value and "--no-install-recommends" not in value:
            problems.append("apt-get install without --no-install-recommends")
        if word == "RUN" and "pip install" in value and "--no-cache-dir" not in value:
            problems.append("pip install without --no-cache-dir")
        if word in ("ENV", "ARG") and re.search(r"TOKEN|PASSWORD|SECRET|API_KEY", value):
            problems.append(f"{word} {value}: no secret belongs in an image")
    extras = set(args.get("EXTRAS", "").split(","))
    if not {"ray", "postgres"} <= extras <= set(pyproject["project"]["optional-dependencies"]):
        problems.append(f"EXTRAS={args.get('EXTRAS')}: expected ray,postgres, extras that pyproject.toml defines")
    if not any(word == "RUN" and "[${EXTRAS}]" in value for word, value in steps):
        problems.append("no RUN installs the package with [${EXTRAS}]")
    exposed = {port for word, value in final if word == "EXPOSE" for port in value.split()}
    if exposed != {"9000", "8001"}:
        problems.append(f"EXPOSE {sorted(exposed)}: expected 9000 (tomaat serve) and 8001 (tomaat-registry serve)")
    entry = [json.loads(value) for word, value in final if word == "ENTRYPOINT"]
    if not entry or entry[-1][0] not in pyproject["project"]["scripts"]:
        problems.append(f"ENTRYPOINT {entry}: expected the exec form of one of the package's console scripts")
    for path in (".venv/bin/python", ".git/HEAD", "demo-output/labels.nii.gz", "tests/test_deploy.py",
                 "tomaat/__pycache__/cli.cpython-311.pyc", ".pytest_cache/v/cache", "tomaat.egg-info/PKG-INFO"):  # fmt: skip
        if not ignored(path, rules):
            problems.append(f".dockerignore lets {path} into the build context")
    return problems


def test_the_dockerfile_builds_what_the_manifests_run(manifests):
    problems = dockerfile_problems((ROOT / "Dockerfile").read_text(), (ROOT / ".dockerignore").read_text())
    assert problems == []
    # the package's files are in the context, what the pods mount is not baked in
    rules = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert not ignored("tomaat/server/static/app.js", rules) and not ignored("README.md", rules)
    user = [value for word, value in dockerfile((ROOT / "Dockerfile").read_text()) if word == "USER"][-1]
    for p in pod_templates(manifests):
        if p.labels.get("app.kubernetes.io/component") in TOMAAT_COMPONENTS:
            assert f"{p.spec['securityContext']['runAsUser']}:{p.spec['securityContext']['runAsGroup']}" == user


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ("python:3.11.13-slim-bookworm", "python:3.11-slim", "not pinned to a full version tag"),
        ("USER 10001:10001", "USER root", "runs as root"),
        ("COPY tomaat ./tomaat", "COPY . /src", "COPY .: the image needs only"),
        ("ARG EXTRAS=ray,postgres", "ARG EXTRAS=ray,postgresql", "EXTRAS=ray,postgresql"),
        ("EXPOSE 9000 8001", "EXPOSE 9000", "EXPOSE ['9000']"),
        ('ENTRYPOINT ["tomaat"]', 'ENTRYPOINT ["tomaatd"]', "ENTRYPOINT [['tomaatd']]"),
    ],
)
def test_a_wrong_dockerfile_is_caught(old, new, named):
    text = (ROOT / "Dockerfile").read_text()
    assert old in text
    problems = dockerfile_problems(text.replace(old, new), (ROOT / ".dockerignore").read_text())
    assert any(named in problem for problem in problems), problems


def test_a_leaky_dockerignore_is_caught():
    ignore = (ROOT / ".dockerignore").read_text()
    problems = dockerfile_problems((ROOT / "Dockerfile").read_text(), ignore.replace("**/__pycache__\n", ""))
    assert any("tomaat/__pycache__" in p for p in problems), problems
    problems = dockerfile_problems((ROOT / "Dockerfile").read_text(), ignore.replace("!tomaat\n", ""))
    assert any("COPY tomaat: .dockerignore leaves it out" in p for p in problems), problems
