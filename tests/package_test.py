"""Package-wide rules: flags are read by the CLI alone; configs validate."""

import ast
import pathlib

import pytest

from scalable_agent2 import config

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'scalable_agent2'


def _imports_absl_flags(path: pathlib.Path) -> bool:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == 'absl':
            if any(alias.name == 'flags' for alias in node.names):
                return True
        if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('absl.flags'):
            return True
        if isinstance(node, ast.Import):
            if any(alias.name.startswith('absl.flags') for alias in node.names):
                return True
    return False


def test_only_cli_imports_absl_flags():
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob('*.py')
        if p.name != 'cli.py' and _imports_absl_flags(p)
    ]
    assert offenders == []


def test_flag_detector_detects(tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text('from absl import flags\n')
    assert _imports_absl_flags(bad)
    good = tmp_path / 'good.py'
    good.write_text('from absl import logging\n')
    assert not _imports_absl_flags(good)


def test_learner_config_defaults_are_the_originals():
    c = config.LearnerConfig().validate()
    assert (c.batch_size, c.unroll_length, c.num_action_repeats) == (2, 100, 4)
    assert (c.entropy_cost, c.baseline_cost, c.discounting) == (0.00025, 0.5, 0.99)
    assert (c.learning_rate, c.decay, c.momentum, c.epsilon) == (0.00048, 0.99, 0.0, 0.1)
    assert c.total_environment_frames == 10**9
    assert c.reward_clipping == 'abs_one'


@pytest.mark.parametrize(
    'kwargs, field',
    [
        ({'batch_size': 0}, 'batch_size'),
        ({'learning_rate': -1.0}, 'learning_rate'),
        ({'reward_clipping': 'nope'}, 'reward_clipping'),
        ({'discounting': 1.5}, 'discounting'),
    ],
)
def test_learner_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        config.LearnerConfig(**kwargs).validate()


def test_agent_and_environment_config_validate():
    with pytest.raises(ValueError, match='torso'):
        config.AgentConfig(num_actions=4, torso='wide').validate()
    with pytest.raises(ValueError, match='num_actions'):
        config.AgentConfig(num_actions=0).validate()
    with pytest.raises(ValueError, match='sticky'):
        config.EnvironmentConfig(atari_sticky_action_prob=1.0).validate()
    assert config.EnvironmentConfig().validate().width == 96


def _requirement_lines(text: str) -> list[str]:
    return sorted(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith('#')
    )


def test_requirements_txt_matches_setup_cfg():
    import configparser

    root = PACKAGE.parent
    parser = configparser.ConfigParser()
    parser.read(root / 'setup.cfg')
    install_requires = parser['options']['install_requires']
    assert _requirement_lines(install_requires) == _requirement_lines(
        (root / 'requirements.txt').read_text()
    )


def test_ci_runs_the_readme_test_command():
    import subprocess

    root = PACKAGE.parent
    script = (root / '.ci' / 'run').read_text()
    awk = script.split('cmd=$(', 1)[1].split(' README.md)', 1)[0]
    cmd = subprocess.run(
        ['bash', '-c', f'{awk} README.md'], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert 'pytest' in cmd and 'ruff check' in cmd and 'ruff format --check' in cmd
    assert cmd in (root / 'README.md').read_text()


# Known exceptions: (module, 'other_module._name'), each to be removed when the name goes public.
PRIVATE_NAME_EXCEPTIONS: set[tuple[str, str]] = set()


# The private-looking names of namedtuples' public API.
_NAMEDTUPLE_API = {'_replace', '_asdict', '_fields', '_make', '_field_defaults'}


def _own_private_names(tree: ast.AST) -> set[str]:
    """The private names a file defines: functions, classes, attributes it assigns, globals."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return {name for name in names if name.startswith('_')}


def _private_uses(path: pathlib.Path) -> set[str]:
    """Private names of the package used outside the file that defines them.

    `module._name` uses (and `from module import _name`) of the package's own modules, and
    attribute reach-ins `obj._attr` (obj not `self`/`cls`) into private attributes that this file
    does not define itself (e.g. `env._wait_packed()` on another module's class). Attributes of
    modules from outside the package (`os._exit`) and namedtuples' `_replace` & co. are not ours.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    modules: set[str] = set()  # Local names bound to scalable_agent2 modules.
    foreign: set[str] = set()  # Local names bound to modules from outside the package.
    uses: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('scalable_agent2'):
            for alias in node.names:
                if alias.name.startswith('_'):
                    uses.add(f'{node.module.rsplit(".", 1)[-1]}.{alias.name}')
                modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom):
            foreign.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith('scalable_agent2') and alias.asname:
                    modules.add(alias.asname)
                elif not alias.name.startswith('scalable_agent2'):
                    foreign.add(alias.asname or alias.name.split('.')[0])
    own = _own_private_names(tree)
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Attribute)
            and node.attr.startswith('_')
            and not node.attr.startswith('__')
        ):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in modules:
            uses.add(f'{node.value.id}.{node.attr}')
        elif isinstance(node.value, ast.Name) and node.value.id in ('self', 'cls', *foreign):
            continue
        elif node.attr not in own and node.attr not in _NAMEDTUPLE_API:
            uses.add(f'{ast.unparse(node.value)}.{node.attr}')
    return uses


def test_no_module_uses_another_modules_private_names():
    found = {
        (str(p.relative_to(PACKAGE)), use)
        for p in PACKAGE.rglob('*.py')
        for use in _private_uses(p)
    }
    assert found - PRIVATE_NAME_EXCEPTIONS == set()
    assert PRIVATE_NAME_EXCEPTIONS - found == set(), 'an exception is no longer needed'


def test_private_name_detector_detects(tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text(
        'from scalable_agent2 import train as t\n'
        'from scalable_agent2.train import _hidden\n'
        'import scalable_agent2.runtime as rt\n'
        't._Workers(None)\nrt._x\nself._fine\nt.__doc__\n'
        'import os\nos._exit(0)\nenv._wait_packed()\nout._replace(a=1)\n'
        'class A:\n    def _own(self, other):\n        return other._own, other._v\n'
        '    def set(self):\n        self._v = 1\n'
    )
    assert _private_uses(bad) == {'t._Workers', 'train._hidden', 'rt._x', 'env._wait_packed'}
