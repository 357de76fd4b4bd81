"""k8s/: every manifest is valid. The agent-sandbox examples against the CRDs'
own schemas (copied in tests/data/agent-sandbox/, with their licence), every
other manifest against Kubernetes' schemas (kubernetes-validate, strict: an
unknown field is an error)."""

from __future__ import annotations

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
CRDS = REPO / "tests" / "data" / "agent-sandbox"
K8S_VERSION = "1.30.0"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> openAPIV3Schema, for every served version."""
    out = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                out[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return out


def unknown_fields(obj, schema: dict, path: str = "") -> list[str]:
    """Fields the structural schema does not declare (the API server would prune them silently)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(obj, dict) and "properties" in schema:
        for key, value in obj.items():
            if key in schema["properties"]:
                found += unknown_fields(value, schema["properties"][key], f"{path}.{key}")
            elif not schema.get("additionalProperties"):
                found.append(f"{path}.{key}")
    elif isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in obj.items():
            found += unknown_fields(value, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for i, value in enumerate(obj):
            found += unknown_fields(value, schema["items"], f"{path}[{i}]")
    return found


def crd_problems(doc: dict) -> list[str]:
    schemas = _crd_schemas()
    schema = schemas.get((doc.get("apiVersion"), doc.get("kind")))
    if schema is None:
        return [f"no CRD serves {doc.get('apiVersion')} {doc.get('kind')}"]
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())
    problems = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
    return problems + [f"{p}: unknown field" for p in unknown_fields(doc, schema)]


EXAMPLES = sorted((K8S / "agent-sandbox").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_agent_sandbox_examples_match_the_crds(path):
    for doc in _docs(path):
        assert crd_problems(doc) == [], path


def test_the_examples_chain_template_pool_claim_under_zentry():
    docs = {d["kind"]: d for path in EXAMPLES for d in _docs(path)}
    assert set(docs) == {"SandboxTemplate", "SandboxWarmPool", "SandboxClaim"}
    template, pool, claim = docs["SandboxTemplate"], docs["SandboxWarmPool"], docs["SandboxClaim"]
    runtime_class = _docs(K8S / "runtimeclass.yaml")[0]
    assert template["spec"]["podTemplate"]["spec"]["runtimeClassName"] == runtime_class["metadata"]["name"] == "zentry"
    assert pool["spec"]["sandboxTemplateRef"]["name"] == template["metadata"]["name"]
    assert claim["spec"]["warmPoolRef"]["name"] == pool["metadata"]["name"]


def test_the_crd_check_can_fail():
    doc = _docs(K8S / "agent-sandbox" / "sandboxwarmpool.yaml")[0]
    doc["spec"]["replicas"] = "ten"
    doc["spec"]["sandboxTemplateRefs"] = doc["spec"].pop("sandboxTemplateRef")  # a typo
    problems = crd_problems(doc)
    assert any("replicas" in p for p in problems) and any("sandboxTemplateRefs: unknown field" in p for p in problems)
    assert any("sandboxTemplateRef" in p and "required" in p for p in problems)


OTHERS = sorted(p for p in K8S.glob("*.yaml"))


@pytest.mark.parametrize("path", OTHERS, ids=lambda p: p.name)
def test_manifests_are_valid_kubernetes(path):
    kv = pytest.importorskip("kubernetes_validate")
    for doc in _docs(path):
        kv.validate(doc, K8S_VERSION, strict=True)  # raises on any error


def test_kubernetes_validation_can_fail():
    kv = pytest.importorskip("kubernetes_validate")
    doc = _docs(K8S / "runtimeclass.yaml")[0]
    doc["overhead"]["podFixd"] = doc["overhead"].pop("podFixed")
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, K8S_VERSION, strict=True)


def test_the_runtimeclass_overhead_and_the_pool_service():
    runtime_class = _docs(K8S / "runtimeclass.yaml")[0]
    assert runtime_class["overhead"]["podFixed"]["memory"] == "24Mi"
    docs = {d["kind"]: d for d in _docs(K8S / "pool-agent.yaml")}
    assert docs["Service"]["spec"]["clusterIP"] == "None"
    installer = _docs(K8S / "node-installer.yaml")[0]
    pod = installer["spec"]["template"]
    assert docs["Service"]["spec"]["selector"] == pod["metadata"]["labels"]
    agent = next(c for c in pod["spec"]["containers"] if c["name"] == "pool-agent")
    assert "pool serve" in agent["args"][0] and {"secret": {"secretName": "zentry-pool-keys", "defaultMode": 0o400}, "name": "keys"} in pod["spec"]["volumes"]
