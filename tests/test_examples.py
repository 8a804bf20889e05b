"""examples/: each schedule parses as its own format and runs a command vtok's own parser and config accept.

No Ray, no cluster, no Kubernetes, no Airflow: the crontab's time fields, the manifests' fields and the DAG's
source are read here, and the vtok command each one runs goes through jobs.cli's parser and the scan's config.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.cli import build_parser
from jobs.submit_scan import prepare_scan_submission

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
"""minute, hour, day of month, month, day of week (0 and 7: Sunday)."""
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def valid_cron_field(text: str, low: int, high: int) -> bool:
    """One cron time field: `*`, `N`, `A-B`, any of them `/STEP`, comma-separated; every number in [low, high]."""
    for part in text.split(","):
        base, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) >= 1):
            return False
        if base == "*":
            continue
        bounds = base.split("-")
        if len(bounds) > 2 or not all(b.isdigit() for b in bounds):
            return False
        numbers = [int(b) for b in bounds]
        if not all(low <= n <= high for n in numbers) or numbers != sorted(numbers):
            return False
    return True


def valid_schedule(schedule: str) -> bool:
    fields = schedule.split()
    return len(fields) == 5 and all(valid_cron_field(f, lo, hi) for f, (lo, hi) in zip(fields, CRON_RANGES))


def test_cron_field_check_refuses_what_cron_refuses() -> None:
    assert valid_schedule("5 * * * *") and valid_schedule("*/15 0-6,22 1 */2 0-7")
    for bad in ("60 * * * *", "5 24 * * *", "5 * 0 * *", "5 * * 13 *", "5 * * * 8", "5 * * *", "5-1 * * * *",
                "*/0 * * * *", "a * * * *"):
        assert not valid_schedule(bad), bad


def submit_argv(command: str) -> list[str]:
    """The `vtok ...` arguments of a shell command line: from the word that runs vtok to a redirection."""
    words = shlex.split(command)
    start = next(i for i, w in enumerate(words) if w == "vtok" or w.endswith("/bin/vtok"))
    argv = []
    for word in words[start + 1:]:
        if word in (">>", ">", "2>&1", "|", "&&", ";"):
            break
        argv.append(word)
    return argv


def check_eval_scan_submit(argv: list[str]) -> Any:
    """argv parses as `vtok submit ... eval-scan ...`, and the scan it submits passes every local check."""
    ns = build_parser().parse_args(argv)
    assert (ns.command, ns.job) == ("submit", "eval-scan")
    submission, submission_id = prepare_scan_submission(list(ns.args))
    assert submission.entrypoint.startswith("python -m jobs.cli eval scan ray.address=auto run=s3://")
    assert re.fullmatch(r"vtok-eval-scan-[0-9a-f]{12}-\d{8}T\d{4}", submission_id)
    return submission


def test_crontab_runs_eval_scan_hourly_under_a_lock_with_a_log() -> None:
    lines = [line for line in (EXAMPLES / "cron" / "eval-scan.crontab").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    env = dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_]+=", line))
    jobs = [line for line in lines if not re.match(r"^[A-Z_]+=", line)]
    assert len(jobs) == 1 and env["CRON_TZ"] == "UTC" and env["RAY_ADDRESS"].startswith("http://")
    fields = jobs[0].split(None, 5)
    assert valid_schedule(" ".join(fields[:5])) and fields[1] == "*"  # every hour
    command = fields[5]
    assert "%" not in command  # cron would cut the line at it
    words = shlex.split(command)
    assert words[words.index("flock") + 1] == "-n" and words[words.index(">>") + 1].endswith(".log")
    argv = submit_argv(command)
    assert "--follow" in argv
    check_eval_scan_submit(argv)


@pytest.fixture(scope="module")
def k8s() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((EXAMPLES / "k8s" / "eval-scan-cronjob.yaml").read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs)
    return by_kind


def test_k8s_cronjob_forbids_overlap_and_creates_the_rayjob_of_its_hour(k8s: dict[str, Any]) -> None:
    assert {k: d["apiVersion"] for k, d in k8s.items()} == {
        "ServiceAccount": "v1", "Role": "rbac.authorization.k8s.io/v1", "RoleBinding": "rbac.authorization.k8s.io/v1",
        "ConfigMap": "v1", "CronJob": "batch/v1"}
    cron = k8s["CronJob"]["spec"]
    assert valid_schedule(cron["schedule"]) and cron["concurrencyPolicy"] == "Forbid"
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    assert pod["serviceAccountName"] == k8s["ServiceAccount"]["metadata"]["name"]
    [container] = pod["containers"]
    script = "\n".join(container["args"])
    assert "kubectl create -f" in script and "kubectl get rayjob" in script
    [mount] = container["volumeMounts"]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == k8s["ConfigMap"]["metadata"]["name"]
    assert f"{mount['mountPath']}/rayjob.yaml" in script and "rayjob.yaml" in k8s["ConfigMap"]["data"]
    # The pod may create and read RayJobs, nothing else.
    [rule] = k8s["Role"]["rules"]
    assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"] and {"create", "get"} <= set(
        rule["verbs"])
    assert k8s["RoleBinding"]["roleRef"]["name"] == k8s["Role"]["metadata"]["name"]
    # The name the script gives the RayJob (date -u +%Y%m%d%H) is a DNS label KubeRay can extend.
    prefix = re.search(r'name="([a-z0-9-]+)\$\(date -u \+%Y%m%d%H\)"', script).group(1)
    assert DNS_LABEL.fullmatch(prefix + "2026120118") and len(prefix + "2026120118") <= 40


def _rayjob(k8s: dict[str, Any]) -> dict[str, Any]:
    text = k8s["ConfigMap"]["data"]["rayjob.yaml"]
    assert "__NAME__" in text
    return yaml.safe_load(text.replace("__NAME__", "vtok-eval-scan-2026120118"))


def test_k8s_rayjob_has_the_fields_kuberay_requires_and_runs_the_scan(k8s: dict[str, Any]) -> None:
    job = _rayjob(k8s)
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and isinstance(spec["ttlSecondsAfterFinished"], int)
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode")
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    groups = cluster["workerGroupSpecs"]
    for group in [head, *groups]:
        # ray start flags: KubeRay takes string values only.
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        containers = group["template"]["spec"]["containers"]
        assert containers and all(c["name"] and c["image"] for c in containers)
    for group in groups:
        assert group["groupName"] and isinstance(group["replicas"], int)
        assert group.get("minReplicas", 0) <= group["replicas"] <= group.get("maxReplicas", group["replicas"])
    gpus = [g for g in groups if str(g["template"]["spec"]["containers"][0]["resources"]["limits"].get(
        "nvidia.com/gpu", "0")) != "0"]
    assert [g["groupName"] for g in gpus] == ["gpu"]

    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["vtok", "eval", "scan"]
    ns = build_parser().parse_args(argv[1:])
    assert ns.command == "eval" and ns.overrides[0] == "scan"
    from jobs.eval_scan import load_scan_config

    cfg = load_scan_config(ns.overrides[1:], None)
    assert cfg.run.startswith("s3://") and cfg.data.startswith("s3://") and cfg.suites == ["tv_align", "vbench"]
    assert cfg.ray.address == "auto" and cfg.num_gpus == 1 and cfg.decoder
    assert cfg.num_actors <= sum(g["maxReplicas"] for g in gpus)


def test_airflow_dag_compiles_and_submits_the_scan_once_at_a_time() -> None:
    source = (EXAMPLES / "airflow" / "eval_scan_dag.py").read_text()
    tree = ast.parse(source)
    compile(tree, "eval_scan_dag.py", "exec")
    calls = {n.func.id: n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    dag = {k.arg: k.value for k in calls["DAG"].keywords}
    assert ast.literal_eval(dag["max_active_runs"]) == 1 and "max_active_runs=1 is the second guard" in source
    assert valid_schedule(ast.literal_eval(dag["schedule"])) and ast.literal_eval(dag["catchup"]) is False
    bash = {k.arg: k.value for k in calls["BashOperator"].keywords}
    check_eval_scan_submit(submit_argv(ast.literal_eval(bash["bash_command"])))
    assert len(source.splitlines()) <= 20


def test_readme_names_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    linked = set(re.findall(r"\]\(([^)]+)\)", readme))
    files = {str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*") if p.is_file() and p.name != "README.md"}
    assert files == linked
