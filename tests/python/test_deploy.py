"""Every manifest and configuration in deploy/, parsed and checked against the server's own
parsers: each astroflight.toml (the example, compose's, the Kubernetes ConfigMap's) through
`astroflight check --offline`; the Secret's tokens and users files through a real `astroflight
check` (which loads them); then the wiring: ports, probes, mounts and paths agree between the
config, the Deployment, the Service, the compose file, the Dockerfile and the systemd unit; the
replicas: the builder publishes where the followers load, the followers' names are what
`advertise` lists. Every Kubernetes object is validated against the Kubernetes API schemas
(kubernetes-validate, strict), and the compose file against the Compose specification's JSON
schema. (No container is built or run here: this machine has no Docker engine.)"""
import configparser
import json
import pathlib
import re
import subprocess

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def offline(binary, config_path):
    r = subprocess.run([binary, "check", "--offline", "--config", str(config_path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, f"{config_path}: {r.stderr}"
    return json.loads(r.stdout.splitlines()[0])


def port(addr):
    return int(addr.rsplit(":", 1)[1])


def k8s():
    docs = {}
    for f in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                docs[(d["kind"], d.get("metadata", {}).get("name"))] = d
    return docs


def test_every_deploy_file_parses():
    files = sorted(p for p in DEPLOY.rglob("*") if p.is_file())
    names = {p.relative_to(DEPLOY).as_posix() for p in files}
    assert {"Dockerfile", "compose.yaml", "astroflight.service", "astroflight.toml", "compose/astroflight.toml",
            "compose/follower.toml", "compose/nginx.conf", "k8s/deployment.yaml", "k8s/follower.yaml",
            "k8s/service.yaml", "k8s/configmap.yaml", "k8s/secret.yaml", "k8s/persistentvolume.yaml",
            "k8s/kustomization.yaml"} <= names, names
    for p in files:
        if p.suffix == ".yaml":
            assert list(yaml.safe_load_all(p.read_text())), p


def test_example_and_compose_configs(binary):
    example = offline(binary, DEPLOY / "astroflight.toml")
    assert example["health_listen"] == "0.0.0.0:8816" and port(example["listen"]) == 8815
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    svc = compose["services"]["astroflight"]
    mount = next(v for v in svc["volumes"] if v.endswith(":/etc/astroflight/astroflight.toml:ro"))
    cfg_path = (DEPLOY / mount.split(":")[0]).resolve()
    cfg = offline(binary, cfg_path)
    assert {d["kind"] for d in cfg["datasets"]} == {"ztf"}
    roots = {d["root"] for d in cfg["datasets"]}
    assert any(r.startswith("s3://") for r in roots) and any(r.startswith("hdfs://namenode:8020/") for r in roots)
    # The store and the cluster the datasets name are services of the compose file.
    assert {"minio", "namenode", "datanode", "seed", "load-s3", "load-hdfs"} <= set(compose["services"])
    published = {p.split(":")[-1] for p in svc["ports"]}
    assert str(port(cfg["listen"])) in published
    assert str(port(cfg["telemetry"]["prometheus_listen"])) in published
    assert all(p.startswith("127.0.0.1:") for p in svc["ports"]), "published on the host's loopback only"
    assert svc["healthcheck"]["test"][-1].endswith(str(port(cfg["health_listen"])))
    assert any(v.endswith(":/var/lib/astroflight") for v in svc["volumes"]) and cfg["index_dir"].startswith(
        "/var/lib/astroflight/")
    assert svc["build"]["dockerfile"] == "deploy/Dockerfile"


def test_kubernetes_manifests_agree_with_their_config(binary, tmp_path):
    docs = k8s()
    cm = docs[("ConfigMap", "astroflight-config")]
    cfg_file = tmp_path / "astroflight.toml"
    cfg_file.write_text(cm["data"]["astroflight.toml"])
    cfg = offline(binary, cfg_file)
    dep = docs[("Deployment", "astroflight")]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["flight"] == port(cfg["listen"]) and ports["health"] == port(cfg["health_listen"])
    assert ports["metrics"] == port(cfg["telemetry"]["prometheus_listen"])
    # Probes: the standard gRPC health service on the plain health port (k8s probes speak no TLS).
    assert c["readinessProbe"]["grpc"] == {"port": ports["health"], "service": ""}
    assert c["livenessProbe"]["grpc"] == {"port": ports["health"], "service": "liveness"}
    # Non-root, and a stop longer than the server's grace.
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["terminationGracePeriodSeconds"] > cfg["shutdown_grace_secs"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    # Every file the config names is mounted, from the volume that holds it.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    def source_of(path):
        d = str(pathlib.PurePosixPath(path).parent)
        return volumes[mounts[d]], pathlib.PurePosixPath(path).name

    for path in [*cfg["tls"].values(), *cfg["auth"].values()]:
        if path is None:
            continue
        vol, key = source_of(path)
        secret = docs[("Secret", vol["secret"]["secretName"])]
        assert key in secret["stringData"], (path, vol)
    assert mounts["/etc/astroflight/astroflight.toml"] == "config"
    assert volumes["config"]["configMap"]["name"] == "astroflight-config"
    # The index on the persistent volume claim, which a PersistentVolume can satisfy.
    index_mount = next(m for m in mounts if cfg["index_dir"].startswith(m + "/"))
    claim = volumes[mounts[index_mount]]["persistentVolumeClaim"]["claimName"]
    pvc = docs[("PersistentVolumeClaim", claim)]
    pv = docs[("PersistentVolume", "astroflight-index")]
    assert pv["spec"]["storageClassName"] == pvc["spec"]["storageClassName"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    # The Service reaches the named ports.
    svc = docs[("Service", "astroflight")]
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)
    assert svc["spec"]["selector"].items() <= dep["spec"]["selector"]["matchLabels"].items()
    # S3 keys come from a Secret, as AWS_* variables.
    (ref,) = c["envFrom"]
    assert set(docs[("Secret", ref["secretRef"]["name"])]["stringData"]) == {"AWS_ACCESS_KEY_ID",
                                                                             "AWS_SECRET_ACCESS_KEY"}
    kustomize = docs[("Kustomization", None)]
    assert sorted(kustomize["resources"]) == sorted(p.name for p in (DEPLOY / "k8s").glob("*.yaml")
                                                    if p.name != "kustomization.yaml")


def test_the_secrets_credentials_load_with_the_servers_parser(binary, tmp_path):
    auth = k8s()[("Secret", "astroflight-auth")]["stringData"]
    for name, text in auth.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "lake").mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'index_dir = "{tmp_path}/index"\n[[dataset]]\nname = "ztf"\nkind = "ztf"\nroot = "lake"\n'
                   f'[auth]\ntokens_file = "tokens.toml"\nusers_file = "users.toml"\nsession_key_file = "session.key"\n')
    r = subprocess.run([binary, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^ok   auth: tokens, users and session key load", r.stdout, re.M), r.stdout


def test_dockerfile_is_multi_stage_and_runs_as_non_root(binary):
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(stages) >= 2, stages
    final = text[text.rindex("\nFROM "):]
    user = re.search(r"^USER\s+(\S+)", final, re.M).group(1)
    assert user.split(":")[0] not in ("root", "0")
    assert "COPY --from=build" in final
    exposed = set(map(int, re.search(r"^EXPOSE\s+(.+)$", final, re.M).group(1).split()))
    cfg = offline(binary, DEPLOY / "astroflight.toml")
    assert {port(cfg["listen"]), port(cfg["health_listen"]), 9464} <= exposed
    for src in re.findall(r"^COPY\s+(?!--from)(\S+)\s", final, re.M):
        assert (REPO / src).exists(), src
    # The image's health check uses the binary's own health command on the health port.
    assert re.search(r'HEALTHCHECK .*"astroflight", "health", "--server", "grpc://127.0.0.1:8816"', text, re.S)
    rust = re.search(r"FROM rust:(\d+\.\d+)", text).group(1)
    cargo = (REPO / "Cargo.toml").read_text()
    msrv = re.search(r'rust-version = "(\d+\.\d+)"', cargo).group(1)
    assert tuple(map(int, rust.split("."))) >= tuple(map(int, msrv.split(".")))
    ignore = (REPO / ".dockerignore").read_text().split()
    assert "target" in ignore and ".venv" in ignore


def test_systemd_unit(binary):
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string((DEPLOY / "astroflight.service").read_text())
    exec_start = unit["Service"]["ExecStart"].split()
    assert exec_start[0] == "/usr/local/bin/astroflight" and exec_start[1] == "serve"
    assert exec_start[exec_start.index("--config") + 1] == "/etc/astroflight/astroflight.toml"
    cfg = offline(binary, DEPLOY / "astroflight.toml")
    assert cfg["index_dir"].startswith(unit["Service"]["ReadWritePaths"])
    assert int(unit["Service"]["TimeoutStopSec"]) > cfg["shutdown_grace_secs"]
    assert unit["Service"]["User"] != "root"


def test_kubernetes_followers_load_what_the_builder_publishes(binary, tmp_path):
    docs = k8s()

    def config(name):
        f = tmp_path / f"{name}.toml"
        f.write_text(docs[("ConfigMap", name)]["data"]["astroflight.toml"])
        return offline(binary, f)

    builder, follower = config("astroflight-config"), config("astroflight-follower-config")
    assert builder["index_role"] == "build" and follower["index_role"] == "follow"
    roots = {d["name"]: d["index_root"] for d in builder["datasets"]}
    assert all(roots.values()) and roots == {d["name"]: d["index_root"] for d in follower["datasets"]}
    sts = docs[("StatefulSet", "astroflight-follower")]
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["podManagementPolicy"] == "Parallel"
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["grpc"] == {"port": 8816, "service": ""}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    cache = next(m for m in mounts if follower["index_dir"].startswith(m + "/"))
    assert "emptyDir" in volumes[mounts[cache]], "the followers' index is a cache on an emptyDir"
    assert volumes["config"]["configMap"]["name"] == "astroflight-follower-config"
    # The session key from the same Secret as the builder's, so that tokens work on every replica.
    key = follower["auth"]["session_key_file"]
    assert key == builder["auth"]["session_key_file"]
    assert volumes[mounts[str(pathlib.PurePosixPath(key).parent)]]["secret"]["secretName"] == "astroflight-auth"
    # advertise names every follower pod through the headless Service.
    headless = docs[("Service", sts["spec"]["serviceName"])]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= sts["spec"]["selector"]["matchLabels"].items()
    want = [f"grpc+tls://{sts['metadata']['name']}-{i}.{headless['metadata']['name']}:8815" for i in range(3)]
    assert builder["advertise"] == follower["advertise"] == want
    # The builder's pods and the followers' are told apart: no workload selects the other's pods.
    dep = docs[("Deployment", "astroflight")]
    assert not dep["spec"]["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert not sts["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_kubernetes_manifests_validate_against_the_api_schemas():
    import kubernetes_validate

    checked = 0
    for (kind, name), d in k8s().items():
        if kind == "Kustomization":  # kustomize's own file, not an API object
            continue
        kubernetes_validate.validate(d, "1.33.0", strict=True)
        checked += 1
    assert checked >= 10
    # The validation is real: a wrong field or type is refused.
    bad = json.loads(json.dumps(k8s()[("StatefulSet", "astroflight-follower")]))
    bad["spec"]["replicas"] = "three"
    try:
        kubernetes_validate.validate(bad, "1.33.0", strict=True)
        raise AssertionError("a StatefulSet with replicas: 'three' passed")
    except kubernetes_validate.ValidationError:
        pass


def compose_schema():
    import sys
    import zipfile

    wheels = sorted((pathlib.Path(sys.prefix) / "schemas").glob("docker_compose-*.whl"))
    assert wheels, f"the Compose schema's wheel is missing from {sys.prefix}/schemas: run tests/setup_python.sh"
    return json.loads(zipfile.ZipFile(wheels[-1]).read("compose/config/compose_spec.json"))


def test_compose_runs_a_builder_two_followers_and_a_load_balancer(binary):
    import jsonschema

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    validator = jsonschema.Draft201909Validator(compose_schema())
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == [], errors
    assert list(validator.iter_errors({"services": {"x": {"ports": 8815}}})), "the schema refuses a wrong type"
    services = compose["services"]
    assert {"astroflight", "follower-1", "follower-2", "lb", "minio"} <= set(services)

    def cfg(svc):
        mount = next(v for v in services[svc]["volumes"] if v.endswith(":/etc/astroflight/astroflight.toml:ro"))
        return offline(binary, (DEPLOY / mount.split(":")[0]).resolve())

    builder = cfg("astroflight")
    followers = [cfg(f"follower-{i}") for i in (1, 2)]
    roots = {d["name"]: d["index_root"] for d in builder["datasets"]}
    assert all(roots.values())
    for f in followers:
        assert f["index_role"] == "follow" and {d["name"]: d["index_root"] for d in f["datasets"]} == roots
    # advertise names the followers by their published ports.
    published = sorted(services[f"follower-{i}"]["ports"][0].rsplit(":", 1)[0] for i in (1, 2))
    assert sorted(a.removeprefix("grpc://") for a in builder["advertise"]) == published
    # The load balancer reaches every astroflight process on its Flight port.
    conf = (DEPLOY / "compose" / "nginx.conf").read_text()
    upstream = re.findall(r"server\s+([\w-]+):(\d+);", conf)
    assert sorted(h for h, _ in upstream) == ["astroflight", "follower-1", "follower-2"]
    assert {int(p) for _, p in upstream} == {port(builder["listen"])}
    assert "grpc_pass" in conf
