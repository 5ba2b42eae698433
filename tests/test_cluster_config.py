"""The Ray cluster launcher configs (cluster.yaml, cluster-local.yaml).

Each file is checked offline against Ray's own schema (``prepare_config`` fills Ray's
defaults, ``validate_config`` runs ray-schema.json; nothing here contacts a cloud), and for
the farm's own promises: dashboard on 127.0.0.1, token auth on every node, GPU worker types
that declare their GPUs, the project and the model cache set up on the nodes.
"""

from __future__ import annotations

import pathlib
import re
import shlex
import tomllib

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
AWS_CONFIG = "cluster.yaml"
LOCAL_CONFIG = "cluster-local.yaml"
CONFIGS = [AWS_CONFIG, LOCAL_CONFIG]
RAY_PUBLIC_PORTS = (8265, 10001, 6379)  # dashboard/Jobs, Ray client, GCS
ENV_FILE = "~/disco-farm.env"

# (GPUs, vCPUs) of the EC2 types a render farm would use; extend when cluster.yaml uses another.
EC2_TYPES = {
    "g5.xlarge": (1, 4),
    "g5.2xlarge": (1, 8),
    "g5.4xlarge": (1, 16),
    "g5.12xlarge": (4, 48),
    "g5.48xlarge": (8, 192),
    "g6.xlarge": (1, 4),
    "g6.2xlarge": (1, 8),
    "g6.4xlarge": (1, 16),
    "g6.12xlarge": (4, 48),
    "g6.48xlarge": (8, 192),
    "p4d.24xlarge": (8, 96),
    "p4de.24xlarge": (8, 96),
    "p5.48xlarge": (8, 192),
    "m6i.xlarge": (0, 4),
    "m6i.2xlarge": (0, 8),
    "m6i.4xlarge": (0, 16),
}


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def prepared(name: str) -> dict:
    """The config as `ray up` sees it before contacting the cloud: Ray's defaults filled in."""
    return prepare_config(load(name))


def all_commands(config: dict) -> list[str]:
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    return [command for key in keys for command in config.get(key, [])]


def shell_words(command: str) -> list[str]:
    """Shell words of a command, with `;` split off the word it ends."""
    words = []
    for word in shlex.split(command):
        if word.endswith(";") and word != ";":
            words.extend([word[:-1], ";"])
        else:
            words.append(word)
    return words


SEPARATORS = {"&&", "||", ";", "|", "{", "}"}


def ray_start(command: str) -> tuple[list[str], list[str]] | None:
    """``(words before `ray start`, its arguments)``, or None when the command has none."""
    words = shell_words(command)
    for i in range(len(words) - 1):
        if words[i] == "ray" and words[i + 1] == "start":
            args = []
            for word in words[i + 2 :]:
                if word in SEPARATORS:
                    break
                args.append(word)
            return words[:i], args
    return None


def flag_values(args: list[str], flag: str) -> list[str]:
    """Every value given to ``--flag`` as ``--flag=V`` or ``--flag V``."""
    values = []
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
        elif arg == flag and i + 1 < len(args):
            values.append(args[i + 1])
    return values


def start_commands(config: dict, key: str) -> list[tuple[list[str], list[str]]]:
    found = [ray_start(command) for command in config[key]]
    return [item for item in found if item is not None]


def env_file_lines(config: dict) -> list[str]:
    """The lines that setup_commands write to ~/disco-farm.env (``printf '%s\\n' LINE... > FILE``)."""
    for command in config["setup_commands"]:
        words = shell_words(command)
        if words[:2] == ["printf", "%s\\n"] and ">" in words:
            redirect = words.index(">")
            if words[redirect + 1] == ENV_FILE:
                return words[2:redirect]
    raise AssertionError(f"no setup command writes {ENV_FILE}")


def exported(lines: list[str]) -> dict[str, str]:
    result = {}
    for line in lines:
        match = re.fullmatch(r"export (\w+)=(.*)", line)
        if match:
            result[match.group(1)] = match.group(2).strip('"')
    return result


def publicly_open_ports(rules: list[dict], ports=RAY_PUBLIC_PORTS) -> set[int]:
    """Ports among ``ports`` that EC2 ingress ``rules`` open to any address."""
    opened = set()
    for rule in rules:
        world = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", [])) or any(
            r.get("CidrIpv6") == "::/0" for r in rule.get("Ipv6Ranges", [])
        )
        if not world:
            continue
        low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
        for port in ports:
            if rule.get("IpProtocol") == "-1" or low == -1 or low <= port <= high:
                opened.add(port)
    return opened


# --- Ray's own schema -----------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_config_passes_rays_schema(name):
    validate_config(prepared(name))


@pytest.mark.parametrize("name", CONFIGS)
def test_unknown_top_level_field_is_rejected(name):
    config = load(name)
    config["dashboard_host"] = "0.0.0.0"
    with pytest.raises(jsonschema.ValidationError, match="dashboard_host"):
        validate_config(prepare_config(config))


def test_misspelt_node_type_field_is_rejected():
    config = load(AWS_CONFIG)
    node_type = config["available_node_types"]["gpu.a10g"]
    node_type["max_worker"] = node_type.pop("max_workers")
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config(prepare_config(config))


# --- security ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_head_keeps_dashboard_on_loopback(name):
    config = prepared(name)
    heads = [args for _, args in start_commands(config, "head_start_ray_commands") if "--head" in args]
    assert len(heads) == 1, "exactly one `ray start --head` in head_start_ray_commands"
    assert flag_values(heads[0], "--dashboard-host") == ["127.0.0.1"]
    assert not any("0.0.0.0" in command for command in all_commands(config))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_ray_start_has_token_auth(name):
    config = prepared(name)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = start_commands(config, key)
        assert starts, f"{key} starts no Ray"
        for before, _ in starts:
            modes = [w.split("=", 1)[1] for w in before if w.startswith("RAY_AUTH_MODE=")]
            assert modes and modes[-1] == "token", f"{key}: RAY_AUTH_MODE=token not set before ray start"
    assert not any("RAY_AUTH_MODE=disabled" in command for command in all_commands(config))
    # Interactive shells on the nodes (ray status, ray job ...) have it too.
    assert exported(env_file_lines(config))["RAY_AUTH_MODE"] == "token"


@pytest.mark.parametrize("name", CONFIGS)
def test_auth_token_is_shipped_to_every_node(name):
    config = prepared(name)
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert "chmod 600 ~/.ray/auth_token" in config["setup_commands"]


def test_no_security_group_rule_opens_ray_ports():
    provider = prepared(AWS_CONFIG)["provider"]
    rules = provider.get("security_group", {}).get("IpPermissions", [])
    assert publicly_open_ports(rules) == set()
    for node_type in load(AWS_CONFIG)["available_node_types"].values():
        assert "NetworkInterfaces" not in node_type["node_config"]


def test_open_port_check_sees_a_public_dashboard_rule():
    rule = {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 9000, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    private = {"IpProtocol": "tcp", "FromPort": 6379, "ToPort": 6379, "IpRanges": [{"CidrIp": "10.0.0.0/16"}]}
    assert publicly_open_ports([rule, private]) == {8265}


# --- node types -------------------------------------------------------------------------


def test_gpu_worker_types_declare_their_gpus():
    config = prepared(AWS_CONFIG)
    head = config["head_node_type"]
    workers = {name: t for name, t in config["available_node_types"].items() if name != head}
    assert len(workers) >= 2, "a small-GPU and a big-GPU worker type"
    for name, node_type in workers.items():
        instance = node_type["node_config"]["InstanceType"]
        assert instance in EC2_TYPES, f"{name}: add {instance} to EC2_TYPES"
        gpus, vcpus = EC2_TYPES[instance]
        assert node_type["resources"]["GPU"] == gpus >= 1, name
        assert node_type["resources"]["CPU"] == vcpus, name
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
        assert node_type["max_workers"] >= 1, name
    sizes = {t["resources"]["GPU"] for t in workers.values()}
    assert min(sizes) == 1 and max(sizes) > 1


def test_head_is_a_cpu_node():
    config = prepared(AWS_CONFIG)
    head = config["available_node_types"][config["head_node_type"]]
    gpus, vcpus = EC2_TYPES[head["node_config"]["InstanceType"]]
    assert gpus == 0 and head["resources"] == {"CPU": vcpus, "GPU": 0}
    assert head["max_workers"] == 0


def test_local_provider_has_hosts_and_ssh_user():
    config = load(LOCAL_CONFIG)
    provider = config["provider"]
    assert provider["type"] == "local"
    assert provider["head_ip"] and provider["worker_ips"]
    assert provider["head_ip"] not in provider["worker_ips"]
    assert config["auth"]["ssh_user"]
    assert "available_node_types" not in config  # Ray's on-premise provider refuses them
    node_type = prepared(LOCAL_CONFIG)["available_node_types"]["local.cluster.node"]
    assert node_type["min_workers"] <= node_type["max_workers"] == len(provider["worker_ips"])


# --- the project and the model cache on the nodes ---------------------------------------


def setup_for_gpu_nodes(name: str) -> list[str]:
    """Setup commands that GPU nodes run, in order (Ray merges setup_commands in first)."""
    config = prepared(name)
    return config["worker_setup_commands"] if name == AWS_CONFIG else config["setup_commands"]


@pytest.mark.parametrize("name", CONFIGS)
def test_project_sources_are_mounted_and_installed(name):
    config = prepared(name)
    mounts = config["file_mounts"]
    for remote, local in mounts.items():
        if not local.startswith("~"):
            assert (ROOT / local).exists(), f"file_mounts {remote}: {local} does not exist"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = ["pyproject.toml", pyproject["project"]["readme"]]
    needed += [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    for path in needed:
        assert mounts.get(f"~/disco-farm/{path}") == f"./{path}", f"{path} is not synced to the nodes"
    installs = [shell_words(c) for c in config["setup_commands"] if "-e" in shell_words(c)]
    assert any(w[w.index("-e") + 1] == "~/disco-farm" for w in installs), "no `pip install -e ~/disco-farm`"


@pytest.mark.parametrize("name", CONFIGS)
def test_cluster_ray_matches_local_ray(name):
    pins = {
        match
        for command in all_commands(prepared(name))
        for match in re.findall(r"ray\[default\]==([\w.]+)", command)
    }
    assert pins == {ray.__version__}


@pytest.mark.parametrize("name", CONFIGS)
def test_ray_runs_with_the_farm_environment(name):
    config = prepared(name)
    env = exported(env_file_lines(config))
    assert env["DISCO_FARM_MODELS"].startswith(("$HOME/", "/"))
    assert env["PATH"].startswith("$HOME/disco-farm-venv/bin:")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for before, _ in start_commands(config, key):
            assert before[:2] == ["source", ENV_FILE], f"{key}: ray start without {ENV_FILE}"


@pytest.mark.parametrize("name", CONFIGS)
def test_gpu_nodes_download_known_models(name):
    from engine.catalogue import lookup_model_file, parse_clip_name

    commands = setup_for_gpu_nodes(name)
    downloads = [
        (i, shell_words(c)) for i, c in enumerate(commands) if "farm models download" in " ".join(shell_words(c))
    ]
    assert len(downloads) == 1, "one `farm models download` on GPU nodes"
    index, words = downloads[0]
    install = next(i for i, c in enumerate(commands) if "-e ~/disco-farm" in c)
    assert install < index, "models are downloaded after the project is installed"
    assert words[:2] == ["source", ENV_FILE], "the download must see DISCO_FARM_MODELS"
    start = words.index("download") + 1
    names = [w for w in words[start:] if not w.startswith("-") and w not in SEPARATORS]
    assert "512x512_diffusion_uncond_finetune_008100" in names
    for model in names:
        if "::" in model:
            parse_clip_name(model)
        else:
            lookup_model_file(model)


def test_cpu_head_downloads_no_models():
    config = prepared(AWS_CONFIG)
    assert not any("farm models download" in c for c in config["head_setup_commands"])

