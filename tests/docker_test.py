"""The Dockerfile and its build script: hadolint, shellcheck, pinned source, the steps wired up."""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / 'Dockerfile'
SCRIPT = ROOT / 'docker' / 'build_dmlab.sh'
STEPS = ('python', 'dmlab', 'dataset', 'runtime', 'package', 'smoke')


def _tool(name: str) -> str:
    """A linter installed by the `test` extras (next to this Python, else on PATH)."""
    path = pathlib.Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f'{name} not found; install the test extras: pip install -e ".[test]"')
    return found


def _run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kwargs)


def test_hadolint_passes():
    result = _run([_tool('hadolint'), '--config', str(ROOT / '.hadolint.yaml'), str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / 'Dockerfile'
    bad.write_text('FROM ubuntu:latest\nRUN cd /tmp && echo hi\n')
    result = _run([_tool('hadolint'), '--config', str(ROOT / '.hadolint.yaml'), str(bad)])
    assert result.returncode != 0
    assert 'DL3007' in result.stdout  # `latest` tag.


def test_shellcheck_passes():
    result = _run([_tool('shellcheck'), '--severity=style', str(SCRIPT)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_script_is_strict_and_executable():
    text = SCRIPT.read_text()
    assert text.startswith('#!/usr/bin/env bash\n')
    assert '\nset -euo pipefail\n' in text
    assert os.access(SCRIPT, os.X_OK)


def _dockerfile() -> str:
    return DOCKERFILE.read_text()


def test_multi_stage_ubuntu_lts_and_python_311():
    text = _dockerfile()
    assert 'ARG UBUNTU_VERSION=24.04' in text
    stages = re.findall(r'^FROM (\S+) AS (\S+)$', text, re.M)
    assert stages == [
        ('ubuntu:${UBUNTU_VERSION}', 'base'),
        ('base', 'dmlab'),
        ('base', 'dataset'),
        ('base', 'final'),
    ]
    assert 'ARG PYTHON_VERSION=3.11' in text
    # The final image takes the wheel and the data from the build stages, not their tools.
    assert 'COPY --from=dmlab /opt/wheels /opt/wheels' in text
    assert 'COPY --from=dataset /opt/dmlab_data /opt/dmlab_data' in text


def test_dockerfile_runs_every_step_of_the_script():
    text = _dockerfile()
    assert 'COPY docker/build_dmlab.sh /usr/local/bin/build_dmlab.sh' in text
    run_steps = re.findall(r'^RUN build_dmlab\.sh (\w+)$', text, re.M)
    assert run_steps == ['python', 'dmlab', 'dataset', 'runtime', 'package']
    assert re.search(r'^CMD \["build_dmlab\.sh", "smoke"\]$', text, re.M)
    script = SCRIPT.read_text()
    for step in STEPS:
        assert f'    {step}) step_{step} ;;' in script
        assert f'step_{step}() {{' in script


def test_dmlab_commit_is_pinned_in_both_places():
    dockerfile_commit = re.search(r'^ARG DMLAB_COMMIT=([0-9a-f]+)$', _dockerfile(), re.M)
    script_commit = re.search(r'DMLAB_COMMIT="\$\{DMLAB_COMMIT:-([0-9a-f]+)\}"', SCRIPT.read_text())
    assert dockerfile_commit and script_commit
    assert len(dockerfile_commit.group(1)) == 40  # A full commit hash, not a branch or tag.
    assert dockerfile_commit.group(1) == script_commit.group(1)
    script = SCRIPT.read_text()
    assert 'git checkout --quiet "${DMLAB_COMMIT}"' in script
    assert '//python/pip_package:build_pip_package' in script


def test_build_args_for_gpu_and_dataset():
    text = _dockerfile()
    assert 'ARG TF_VARIANT=cpu' in text and 'ARG WITH_PSYCHLAB_DATASET=0' in text
    script = SCRIPT.read_text()
    assert '"tensorflow[and-cuda]==${tf#tensorflow==}"' in script
    # The GPU TensorFlow is the version the package pins.
    assert re.search(r'^tensorflow==\S+$', (ROOT / 'requirements.txt').read_text(), re.M)


def test_default_command_tests_then_trains():
    script = SCRIPT.read_text()
    body = script.split('step_smoke() {', 1)[1].split('\n}\n', 1)[0]
    assert body.index('-m pytest') < body.index('experiments/experiment.py')
    assert '--total_environment_frames=' in body


def _bash(*args, env=None):
    return _run(['bash', str(SCRIPT), *args], env={**os.environ, **(env or {})})


def test_unknown_step_is_a_usage_error():
    result = _bash('nope')
    assert result.returncode == 2
    assert 'unknown step: nope' in result.stderr
    assert _bash().returncode == 2


def test_dataset_step_is_optional(tmp_path):
    target = tmp_path / 'bko'
    result = _bash('dataset', env={'WITH_PSYCHLAB_DATASET': '0', 'DATASET_DIR': str(target)})
    assert result.returncode == 0, result.stderr
    assert target.is_dir() and not any(target.iterdir())
    assert 'WITH_PSYCHLAB_DATASET=1' in result.stderr


def _pin_program() -> str:
    """The Python program that build_dmlab.sh runs on DeepMind Lab's WORKSPACE."""
    script = SCRIPT.read_text()
    body = script.split('pin_workspace_dependencies() {', 1)[1]
    return body.split("<<'PY'\n", 1)[1].split('\nPY\n', 1)[0]


_WORKSPACE = """workspace(name = "org_deepmind_lab")

http_archive(
    name = "com_google_absl",
    strip_prefix = "abseil-cpp-master",
    urls = ["https://github.com/abseil/abseil-cpp/archive/master.zip"],
)

http_archive(
    name = "tree_archive",
    build_file = "@//bazel:tree.BUILD",
    strip_prefix = "tree-master",
    urls = ["https://github.com/deepmind/tree/archive/master.zip"],
)

http_archive(
    name = "lua_archive",
    build_file = "@//bazel:lua.BUILD",
    sha256 = "2640fc56a795f29d28ef15e13c34a47e223960b0240e8cb0a82d9b0738695333",
    strip_prefix = "lua-5.1.5/src",
    urls = ["https://www.lua.org/ftp/lua-5.1.5.tar.gz"],
)

http_archive(
    name = "pybind11_archive",
    strip_prefix = "pybind11-2.10.0",
    urls = ["https://example.invalid/pybind11-2.10.0.tar.gz"],
)
"""


def test_workspace_pinning(tmp_path):
    workspace = tmp_path / 'WORKSPACE'
    workspace.write_text(_WORKSPACE)
    result = _run([sys.executable, '-', str(workspace)], input=_pin_program())
    assert result.returncode == 0, result.stderr
    text = workspace.read_text()
    assert 'master' not in text
    assert 'strip_prefix = "abseil-cpp-20260107.1"' in text
    assert 'abseil-cpp/archive/refs/tags/20260107.1.tar.gz' in text
    assert 'strip_prefix = "tree-0.1.9"' in text
    assert 'build_file = "@//bazel:tree.BUILD"' in text  # Other attributes are kept.
    # Fixed archives are left alone, even those named in the pin table.
    assert 'strip_prefix = "pybind11-2.10.0"' in text
    assert text.count('lua-5.1.5') == 2
    assert sorted(result.stdout.split('\n')[:-1]) == [
        'pinned com_google_absl -> abseil-cpp-20260107.1',
        'pinned tree_archive -> tree-0.1.9',
    ]


# ------------------------------------------------------------------- The offline build script.

OFFLINE = ROOT / 'docker' / 'build_dmlab_offline.sh'
OFFLINE_STEPS = ('apt', 'source', 'placeholders', 'deps', 'build', 'install')


def _offline(*args, env=None):
    return _run(['bash', str(OFFLINE), *args], env={**os.environ, **(env or {})})


def test_offline_script_passes_shellcheck_and_is_strict():
    result = _run([_tool('shellcheck'), '--severity=style', str(OFFLINE)])
    assert result.returncode == 0, result.stdout + result.stderr
    text = OFFLINE.read_text()
    assert text.startswith('#!/usr/bin/env bash\n') and '\nset -euo pipefail\n' in text
    assert os.access(OFFLINE, os.X_OK)
    for step in OFFLINE_STEPS:
        assert f'    {step}) step_{step} ;;' in text
    result = _offline('nope')
    assert result.returncode == 2 and 'unknown step: nope' in result.stderr


def _git(*args, cwd):
    subprocess.run(['git', *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def test_offline_source_skips_missing_blobs_and_placeholders_replace_textures(tmp_path):
    # A bare repository whose texture blob is gone, as in the snapshots of lab.
    work = tmp_path / 'w'
    work.mkdir()
    (work / 'BUILD').write_text('# lab\n')
    (work / 'assets').mkdir()
    (work / 'assets' / 'wall_d.tga').write_bytes(b'real texture')
    (work / 'assets' / 'lg_wall_dblue_d.tga').write_bytes(b'real blue wall')
    (work / 'assets' / 'map.bsp').write_bytes(b'real map')
    _git('init', '-q', cwd=work)
    _git('add', '.', cwd=work)
    _git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'lab', cwd=work)
    bare = tmp_path / 'lab.git'
    _git('clone', '-q', '--bare', str(work), str(bare), cwd=tmp_path)
    for name in ('wall_d.tga', 'lg_wall_dblue_d.tga', 'map.bsp'):
        sha = subprocess.run(
            ['git', 'rev-parse', f'HEAD:assets/{name}'],
            cwd=bare,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        (bare / 'objects' / sha[:2] / sha[2:]).unlink()
    env = {'WORK': str(tmp_path / 'build'), 'LAB_GIT': str(bare)}
    result = _offline('source', env=env)
    assert result.returncode == 0, result.stderr
    lab = tmp_path / 'build' / 'lab'
    assert (lab / 'BUILD').read_text() == '# lab\n'
    assert not (lab / 'assets' / 'wall_d.tga').exists()
    missing = (tmp_path / 'build' / 'missing.txt').read_text().split()
    assert sorted(missing) == ['assets/lg_wall_dblue_d.tga', 'assets/map.bsp', 'assets/wall_d.tga']

    result = _offline('placeholders', env=env)
    assert result.returncode == 0, result.stderr
    data = (lab / 'assets' / 'wall_d.tga').read_bytes()
    # An uncompressed 1024x1024 RGBA TGA (the real files' size), one opaque colour.
    assert len(data) == 18 + 1024 * 1024 * 4
    assert data[2] == 2 and data[12:16] == bytes([0, 4, 0, 4]) and data[16] == 32
    pixels = np.frombuffer(data[18:], np.uint8).reshape(-1, 4)
    assert (pixels == pixels[0]).all() and pixels[0, 3] == 255
    # A colour word in the name gives the colour (TGA pixels are BGRA): dark blue.
    blue, green, red, _ = np.frombuffer(
        (lab / 'assets' / 'lg_wall_dblue_d.tga').read_bytes()[18:22], np.uint8
    )
    assert blue > 90 and red < 40 and green < 60
    assert not (lab / 'assets' / 'map.bsp').exists()  # Maps get no placeholder.
    manifest = (lab / 'PLACEHOLDER_TEXTURES.txt').read_text()
    assert 'NOT the real visuals' in manifest and 'assets/wall_d.tga #' in manifest
