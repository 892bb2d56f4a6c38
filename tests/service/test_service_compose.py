"""docker-compose.yml, checked without a Docker engine: every service of ours runs a real
`gistnet` command line, sets only variables the settings read, and the pieces agree."""

from __future__ import annotations

import os
import re
import tomllib
from importlib import import_module

import pytest
import yaml
from sqlalchemy.engine import make_url

from service.settings import Settings, env_name
from tests.service_stack import REPO
from tools.cli import build_parser

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
OURS = {name: s for name, s in SERVICES.items() if "build" in s}
SETTINGS_VARIABLES = {env_name(field) for field in Settings.model_fields}
# Read by botocore (for s3fs), as by any S3 client: the object store's credentials.
CREDENTIAL_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
WORKERS = ("worker-prep", "worker-train")


def interpolated(value: str) -> str:
    """A compose value with `${NAME:-default}` replaced by its default, as compose does
    when the variable is unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def test_the_stack_has_every_service():
    assert {
        "redis",
        "postgres",
        "minio",
        "createbuckets",
        "migrate",
        "api",
        "worker-prep",
        "worker-train",
    } <= set(SERVICES)
    assert set(OURS) == {"migrate", "api", "worker-prep", "worker-train"}


@pytest.mark.parametrize("name", sorted(OURS))
def test_each_command_is_a_real_entry_point(name):
    command = OURS[name]["command"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert command[0] in scripts, f"{name}: {command[0]!r} is not a console script"
    module, function = scripts[command[0]].split(":")
    assert callable(getattr(import_module(module), function))
    build_parser().parse_args(command[1:])  # exits (fails the test) on an unknown option


@pytest.mark.parametrize("name", sorted(OURS))
def test_each_variable_set_is_one_the_settings_read(name):
    environment = OURS[name].get("environment", {})
    assert environment, f"{name} sets no environment"
    unknown = set(environment) - SETTINGS_VARIABLES - CREDENTIAL_VARIABLES
    assert not unknown, f"{name} sets variables no setting reads: {sorted(unknown)}"


def test_the_database_url_matches_the_postgres_service():
    postgres = SERVICES["postgres"]
    url = make_url(OURS["api"]["environment"]["GISTNET_DATABASE_URL"])
    assert url.drivername == "postgresql+psycopg"
    assert url.host == "postgres"
    env = postgres["environment"]
    assert (url.username, url.password, url.database) == (
        env["POSTGRES_USER"],
        env["POSTGRES_PASSWORD"],
        env["POSTGRES_DB"],
    )
    assert "healthcheck" in postgres
    broker = OURS["api"]["environment"]["GISTNET_BROKER_URL"]
    assert re.match(r"redis://redis:6379/\d+$", broker)


def test_api_and_workers_keep_artifacts_in_the_bucket_createbuckets_makes(monkeypatch):
    minio = SERVICES["minio"]
    user = interpolated(minio["environment"]["MINIO_ROOT_USER"])
    password = interpolated(minio["environment"]["MINIO_ROOT_PASSWORD"])
    make_bucket = " ".join(SERVICES["createbuckets"]["entrypoint"])
    (bucket,) = re.findall(r"mc mb --ignore-existing local/([a-z0-9.-]+)", make_bucket)
    assert "http://minio:9000" in make_bucket
    assert SERVICES["createbuckets"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "healthcheck" in minio and "9000:9000" in minio["ports"]
    for name in ("api", *WORKERS):
        env = {k: interpolated(v) for k, v in OURS[name]["environment"].items()}
        # Read as the container reads them: from its environment.
        for key in [k for k in os.environ if k.startswith("GISTNET_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        for root in (settings.artifact_root, settings.data_root):
            assert str(root).startswith(f"s3://{bucket}/"), (name, root)
        assert settings.storage_options["endpoint_url"] == "http://minio:9000", name
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (user, password), name
        store = settings.artifact_store()
        assert not store.is_local and store.cache.root == settings.cache_dir.resolve() / "artifacts"
        assert SERVICES[name]["depends_on"]["createbuckets"]["condition"] == (
            "service_completed_successfully"
        ), name
        # No folder is shared between containers any more: only each host's cache volume.
        assert [v.split(":")[1] for v in OURS[name]["volumes"]] == [env["GISTNET_CACHE_DIR"]]


def test_workers_scale_out_with_no_fixed_name_or_port():
    for name in WORKERS:
        service = SERVICES[name]
        assert "container_name" not in service and "hostname" not in service, name
        assert "ports" not in service, name
        # Each replica names itself (gistnet-<pid>@<container id>) when it starts.
        assert "--hostname" not in service["command"], name


def test_migration_runs_first_and_the_training_worker_gets_a_gpu():
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker-prep", "worker-train"):
        condition = SERVICES[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name
    assert "--no-upgrade" in SERVICES["api"]["command"]  # only `migrate` migrates
    assert "--no-worker" in SERVICES["api"]["command"]  # workers are their own services
    train = SERVICES["worker-train"]
    (device,) = train["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert train["environment"]["GISTNET_DEVICE"].startswith("cuda")
    assert train["command"][-1] == "train" and SERVICES["worker-prep"]["command"][-1] == "prep"


def test_the_dockerfile_default_command_is_a_real_one():
    dockerfile = (REPO / "Dockerfile").read_text()
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, flags=re.MULTILINE)
    command = yaml.safe_load(cmd)
    assert command[0] == "gistnet"
    build_parser().parse_args(command[1:])
    for variable in re.findall(r"\b(GISTNET_[A-Z_]+)=", dockerfile):
        assert variable in SETTINGS_VARIABLES, variable
    assert re.search(r"^RUN pip install \.$", dockerfile, flags=re.MULTILINE)
