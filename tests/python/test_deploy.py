"""The deployment files in deploy/: the systemd unit, the Dockerfile, compose, the image.

- The unit must pass `systemd-analyze verify` with no complaint and score a low exposure in
  `systemd-analyze security --offline` (skipped, saying so, without systemd-analyze).
- The Dockerfile and compose file are checked for what the image promises: an empty base,
  a non-root user, the /data volume, the health check, listening on all interfaces inside
  the container only, loopback-only publishing in compose.
- Where a static binary and buildah (or podman, or a docker daemon) exist, the image is built
  with deploy/build-image.sh, its config inspected, its root filesystem unpacked and the
  binary run from it as the image would run it: as uid 65532, chrooted into that filesystem
  (nothing else in it), answering /readyz, healthy by its own `health` command, stopping
  cleanly on SIGTERM. Without those, the test says what is missing and skips.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import BINARY, LISTEN_PREFIX, ROOT

DEPLOY = ROOT / "deploy"
STATIC_BINARY = Path(os.environ.get("MEMORYROUTER_STATIC_BIN",
                                    ROOT / "target" / "x86_64-unknown-linux-gnu" / "release" / "memoryrouter"))
EXPOSURE_MAX = 2.0
APP_UID = 65532


def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    text = (DEPLOY / "memoryrouter.service").read_text()
    for directive in ["ProtectSystem=strict", "NoNewPrivileges=yes", "StateDirectory=memoryrouter",
                      "DynamicUser=yes", "Restart=on-failure", "User=memoryrouter"]:
        assert re.search(rf"^{re.escape(directive)}$", text, re.M), directive
    # verify checks that ExecStart exists: point it at the binary under test.
    unit = tmp_path / "memoryrouter.service"
    unit.write_text(text.replace("ExecStart=/usr/local/bin/memoryrouter", f"ExecStart={BINARY}"))
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    # Unknown keys and bad values are warnings with exit status 0: any output fails.
    assert verify.returncode == 0 and (verify.stdout + verify.stderr).strip() == "", verify.stdout + verify.stderr
    security = subprocess.run([analyze, "security", "--offline=true", str(unit)], capture_output=True, text=True)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout + security.stderr)
    if found is None:
        pytest.skip(f"this systemd-analyze has no offline security report: {security.stderr.strip()[:200]}")
    assert float(found.group(1)) <= EXPOSURE_MAX, security.stdout


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), " ".join(rest.split())))
    return out


def test_dockerfile_promises_a_minimal_non_root_image() -> None:
    instructions = dockerfile_instructions()
    keywords = [k for k, _ in instructions]
    assert instructions[0] == ("FROM", "scratch"), "nothing but the static binary"
    assert "RUN" not in keywords, "a scratch image has no shell to run anything with"
    user = next(v for k, v in instructions if k == "USER")
    assert user.split(":")[0] not in ("0", "root"), user
    assert user == f"{APP_UID}:{APP_UID}"
    env = " ".join(v for k, v in instructions if k == "ENV")
    assert "MEMORYROUTER_LISTEN=0.0.0.0:8787" in env and "MEMORYROUTER_DATA_DIR=/data" in env
    assert next(v for k, v in instructions if k == "VOLUME") == '["/data"]'
    health = next(v for k, v in instructions if k == "HEALTHCHECK")
    assert '"health", "--url", "http://127.0.0.1:8787/readyz"' in health, health
    copies = [v for k, v in instructions if k == "COPY"]
    assert f"--chown={APP_UID}:{APP_UID} volume/ /" in copies, copies
    assert next(v for k, v in instructions if k == "ENTRYPOINT") == '["/usr/local/bin/memoryrouter"]'


def test_compose_publishes_on_loopback_and_keeps_data_in_a_volume() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    service = compose["services"]["memoryrouter"]
    assert service["ports"] == ["127.0.0.1:8787:8787"]
    assert "memoryrouter-data:/data" in service["volumes"]
    assert service["restart"] == "unless-stopped"
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    assert "memoryrouter-data" in compose["volumes"]


def image_builder() -> str | None:
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return "docker"
    return next((tool for tool in ("podman", "buildah") if shutil.which(tool)), None)


def unpack_oci(layout: Path, rootfs: Path) -> None:
    """Unpacks an OCI image layout's layers into `rootfs`, owners and modes kept."""
    index = json.loads((layout / "index.json").read_text())
    blob = lambda digest: layout / "blobs" / digest.replace(":", "/")  # noqa: E731
    manifest = json.loads(blob(index["manifests"][0]["digest"]).read_bytes())
    for layer in manifest["layers"]:
        data = blob(layer["digest"])
        opener = gzip.open if layer["mediaType"].endswith("gzip") else open
        with opener(data, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            tar.extractall(rootfs, numeric_owner=True, filter="fully_trusted")


def test_the_image_builds_and_runs_as_its_config_says(tmp_path: Path) -> None:
    if not STATIC_BINARY.exists():
        pytest.skip(f"no static binary at {STATIC_BINARY}: build it with `bash .ci/build-static`")
    builder = image_builder()
    if builder is None:
        pytest.skip("no image builder: install buildah or podman, or run a docker daemon")
    if builder != "buildah":
        pytest.skip(f"the unpack-and-run half uses buildah's OCI export; found only {builder}")
    if os.geteuid() != 0:
        pytest.skip("running the image's filesystem needs chroot, so root")
    tag = f"memoryrouter-test:{uuid.uuid4().hex[:12]}"
    build = subprocess.run(["bash", str(DEPLOY / "build-image.sh"), str(STATIC_BINARY), tag],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    try:
        layout = tmp_path / "oci"
        push = subprocess.run(["buildah", "push", tag, f"oci:{layout}:latest"], capture_output=True, text=True)
        assert push.returncode == 0, push.stderr
        rootfs = tmp_path / "rootfs"
        rootfs.mkdir()
        unpack_oci(layout, rootfs)
        # The Docker-format config (an OCI config has no place for the health check).
        inspect = subprocess.run(["buildah", "inspect", "--type", "image", tag], capture_output=True, text=True)
        assert inspect.returncode == 0, inspect.stderr
        config = json.loads(inspect.stdout)["Docker"]["config"]
    finally:
        subprocess.run(["buildah", "rmi", tag], capture_output=True)

    assert config["User"] == f"{APP_UID}:{APP_UID}"
    assert "/data" in config["Volumes"]
    assert config["Entrypoint"] == ["/usr/local/bin/memoryrouter"] and config["Cmd"] == ["serve"]
    health = config["Healthcheck"]["Test"]
    assert health[0] == "CMD"
    files = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*"))  # before /dev is added
    assert files == ["data", "etc", "etc/passwd", "usr", "usr/local", "usr/local/bin", "usr/local/bin/memoryrouter"], files
    data = rootfs / "data"
    assert (data.stat().st_uid, data.stat().st_mode & 0o777) == (APP_UID, 0o700)

    # A container runtime gives every container these devices (the static binary reads its
    # randomness from /dev/urandom after polling /dev/random); the image itself has no /dev.
    dev = rootfs / "dev"
    dev.mkdir()
    for name, minor in [("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)]:
        try:
            os.mknod(dev / name, 0o20666, os.makedev(1, minor))
        except PermissionError as error:
            pytest.skip(f"cannot create /dev/{name} for the container's filesystem: {error}")
        os.chmod(dev / name, 0o666)

    # Run it as the image would, but on loopback with a free port (the test's rule).
    env = dict(item.split("=", 1) for item in config["Env"])
    env["MEMORYROUTER_LISTEN"] = "127.0.0.1:0"
    chroot = ["chroot", f"--userspec={APP_UID}:{APP_UID}", str(rootfs)]
    process = subprocess.Popen([*chroot, *config["Entrypoint"], *config["Cmd"]], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        address = None
        for line in process.stdout:
            if line.startswith(LISTEN_PREFIX):
                address = line[len(LISTEN_PREFIX):].strip()
                break
        assert address, process.stderr.read() if process.stderr else ""
        port = address.rsplit(":", 1)[1]
        check = [*health[1:-1], health[-1].replace("8787", port)]
        healthy = subprocess.run([*chroot, *check], capture_output=True, text=True, timeout=30)
        assert healthy.returncode == 0, healthy.stderr
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    admin_key = data / "admin.key"
    assert admin_key.stat().st_uid == APP_UID and admin_key.stat().st_mode & 0o777 == 0o600
